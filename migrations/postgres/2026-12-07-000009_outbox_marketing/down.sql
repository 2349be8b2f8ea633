ALTER TABLE outbox DROP COLUMN marketing;
