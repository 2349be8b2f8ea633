ALTER TABLE inbox DROP COLUMN parked_at;
ALTER TABLE inbox DROP COLUMN last_error;
ALTER TABLE inbox DROP COLUMN attempts;
