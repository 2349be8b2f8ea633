-- Erasure and rectification. The contact erased keeps its row, emptied of every identifier and sealed
-- value (a contact without identifiers is one being erased), until its last other row
-- has gone in batches; nothing finds it or writes to it meanwhile. A request keeps the
-- keyed hash of its subject's routing key (the raw inbox rows it finds), and what it
-- did (counts, never content). A rectification's changes wait sealed under the
-- contact's key, and are emptied once applied, so no old or new value stays on it.
ALTER TABLE privacy_requests ADD COLUMN route_bidx TEXT;
ALTER TABLE privacy_requests ADD COLUMN outcome_json TEXT;
ALTER TABLE privacy_requests ADD COLUMN changes_ct BLOB;
ALTER TABLE privacy_requests ADD COLUMN changes_key_id TEXT;
-- The erasure records live with the keys, not the data: a data backup restored after
-- an erasure is reconciled against them (`converra erasure reapply`). Identifiers
-- only as keyed hashes. Never dropped with the data's migrations: they outlive it.
CREATE TABLE IF NOT EXISTS keystore.erasures (
    request_id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL,
    contact_id TEXT,
    subject_bidx TEXT NOT NULL,
    route_bidxs TEXT NOT NULL,
    erased_at BIGINT NOT NULL
);
-- An erasure deletes the idempotency keys of the sends it deletes.
CREATE INDEX idempotency_keys_outbox ON idempotency_keys (outbox_id);
