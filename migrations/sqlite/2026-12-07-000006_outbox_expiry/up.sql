-- Finished sends, by age: the writer deletes those past outbound.keep_finished_secs
-- (the message row keeps the send's state), and idempotency keys past the same age.
CREATE INDEX outbox_finished ON outbox (accepted_at) WHERE state IN ('done', 'failed');
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
