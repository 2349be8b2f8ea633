DROP TABLE IF EXISTS keystore.erasures;
DROP INDEX idempotency_keys_outbox;
ALTER TABLE privacy_requests DROP COLUMN changes_key_id;
ALTER TABLE privacy_requests DROP COLUMN changes_ct;
ALTER TABLE privacy_requests DROP COLUMN outcome_json;
ALTER TABLE privacy_requests DROP COLUMN route_bidx;
