-- Identifiers compare byte by byte (COLLATE "C"), as everywhere else.
-- Outbound sends: committed here before any call to Meta, each with Meta's request
-- body sealed under its contact's key. A message's own row (messages, direction
-- outbound) carries what the API shows; this row carries the delivery: how often it
-- was tried, when it is next due, and until when it may be.
CREATE TABLE outbox (
    id TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    phone_number_id TEXT COLLATE "C" NOT NULL,
    contact_id TEXT COLLATE "C" NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    key_id TEXT NOT NULL,
    request_ct BYTEA NOT NULL,
    state TEXT COLLATE "C" NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    accepted_at BIGINT NOT NULL,
    deadline_at BIGINT NOT NULL,
    error_json TEXT
);
CREATE INDEX outbox_number ON outbox (phone_number_id, state, id);
-- A contact's earlier pending sends (a send goes only when it is its contact's first).
CREATE INDEX outbox_number_contact ON outbox (phone_number_id, contact_id, id);
CREATE INDEX outbox_contact ON outbox (contact_id);

-- A send request's Idempotency-Key (a keyed hash), scoped to the tenant: a replay
-- answers the first response; the same key with another body is refused.
CREATE TABLE idempotency_keys (
    tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key_bidx TEXT COLLATE "C" NOT NULL,
    request_hash TEXT NOT NULL,
    outbox_id TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, key_bidx)
);

-- Set by the compliance work: a restricted contact gets nothing, one who objected no
-- marketing and no automation.
ALTER TABLE contacts ADD COLUMN restricted_at BIGINT;
ALTER TABLE contacts ADD COLUMN objected_at BIGINT;
