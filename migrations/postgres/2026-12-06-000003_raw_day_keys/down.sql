ALTER TABLE webhook_events DROP COLUMN key_day;
ALTER TABLE inbox DROP COLUMN key_day;
DROP TABLE keystore.raw_keys;
