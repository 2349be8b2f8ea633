-- Timestamps are Unix milliseconds (BIGINT) on both backends, so the same code and the
-- same comparisons serve SQLite and PostgreSQL. Columns ending in _ct hold ciphertext
-- (XChaCha20-Poly1305); columns ending in _bidx hold keyed hashes for lookups.

CREATE TABLE tenants (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    holder_email TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE phone_numbers (
    phone_number_id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    display_phone_number TEXT NOT NULL,
    waba_id TEXT NOT NULL,
    access_token_ct BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX phone_numbers_tenant ON phone_numbers (tenant_id);

-- Every routable webhook update, committed before Meta gets its 200.
CREATE TABLE inbox (
    id BIGSERIAL PRIMARY KEY,
    dedupe_key TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    phone_number_id TEXT NOT NULL,
    route_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload_ct BYTEA NOT NULL,
    received_at BIGINT NOT NULL,
    processed_at BIGINT
);
-- Unprocessed rows (processed_at NULL) sort together, in id order; processed rows by
-- age for the purge. No partial indexes: SQLite re-prepares statements that write a
-- column a partial index's condition reads.
CREATE INDEX inbox_state ON inbox (processed_at, id);

-- Correctly signed content that is not a routable event: kept raw, never dropped.
CREATE TABLE webhook_events (
    id TEXT PRIMARY KEY NOT NULL,
    received_at BIGINT NOT NULL,
    reason TEXT NOT NULL,
    field TEXT,
    tenant_id TEXT REFERENCES tenants (id) ON DELETE CASCADE,
    phone_number_id TEXT,
    payload_ct BYTEA NOT NULL
);
CREATE INDEX webhook_events_received ON webhook_events (received_at);

CREATE TABLE contacts (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key_id TEXT NOT NULL,
    wa_id_bidx TEXT,
    user_id_bidx TEXT,
    wa_id_ct BYTEA,
    user_id_ct BYTEA,
    username_ct BYTEA,
    profile_name_ct BYTEA,
    marketing_opt_out BOOLEAN NOT NULL DEFAULT FALSE,
    marketing_pref_at BIGINT,
    first_seen_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX contacts_wa_id ON contacts (tenant_id, wa_id_bidx);
CREATE UNIQUE INDEX contacts_user_id ON contacts (tenant_id, user_id_bidx);

CREATE TABLE conversations (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    phone_number_id TEXT NOT NULL,
    contact_id TEXT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    opened_at BIGINT NOT NULL,
    last_inbound_at BIGINT,
    window_ends_at BIGINT,
    last_message_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX conversations_party ON conversations (tenant_id, phone_number_id, contact_id);
CREATE INDEX conversations_contact ON conversations (contact_id);

CREATE TABLE messages (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    contact_id TEXT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    wamid TEXT NOT NULL,
    direction TEXT NOT NULL,
    msg_type TEXT,
    sent_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    key_id TEXT,
    content_ct BYTEA,
    ref_wamid TEXT,
    status TEXT,
    status_at BIGINT,
    error_json TEXT,
    revoked_at BIGINT
);
CREATE UNIQUE INDEX messages_wamid ON messages (tenant_id, wamid);
CREATE INDEX messages_conversation ON messages (conversation_id, id);
CREATE INDEX messages_contact ON messages (contact_id);

-- Every status event of a message (with pricing and errors), the message keeps the
-- highest state reached.
CREATE TABLE status_events (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    status TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    detail_json TEXT
);
CREATE UNIQUE INDEX status_events_once ON status_events (message_id, status, occurred_at);

-- The key store: its own schema, so a dump of the data schema does not carry the keys.
CREATE SCHEMA keystore;
CREATE TABLE keystore.data_keys (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL,
    wrapped_key BYTEA,
    created_at BIGINT NOT NULL,
    destroyed_at BIGINT
);
