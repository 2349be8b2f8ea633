ALTER TABLE contacts DROP COLUMN objected_at;
ALTER TABLE contacts DROP COLUMN restricted_at;
DROP TABLE idempotency_keys;
DROP TABLE outbox;
