ALTER TABLE phone_numbers DROP COLUMN held_until;
ALTER TABLE phone_numbers DROP COLUMN paused_at;
