-- A number's sender paused (Meta refused its token or account: until an operator
-- updates the number) or held (Meta's spam limit: until the time given), kept across
-- restarts.
ALTER TABLE phone_numbers ADD COLUMN paused_at BIGINT;
ALTER TABLE phone_numbers ADD COLUMN held_until BIGINT;
