DROP INDEX idempotency_keys_created;
DROP INDEX outbox_finished;
