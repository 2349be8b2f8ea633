PRAGMA foreign_keys = OFF;
BEGIN;
DROP TRIGGER conversations_deleted;
DROP TRIGGER messages_moved;
DROP TRIGGER messages_deleted;
DROP TABLE conversation_index_state;
DROP TABLE conversation_messages;
CREATE TABLE messages_old (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    contact_id TEXT NOT NULL,
    wamid TEXT NOT NULL,
    direction TEXT NOT NULL,
    msg_type TEXT,
    sent_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    key_id TEXT,
    content_ct BLOB,
    ref_wamid TEXT,
    status TEXT,
    status_at BIGINT,
    error_json TEXT,
    revoked_at BIGINT
);
INSERT INTO messages_old (id, tenant_id, conversation_id, contact_id, wamid, direction, msg_type, sent_at, received_at, key_id, content_ct, ref_wamid, status, status_at, error_json, revoked_at)
    SELECT id, tenant_id, conversation_id, contact_id, wamid, direction, msg_type, sent_at, received_at, key_id, content_ct, ref_wamid, status, status_at, error_json, revoked_at
    FROM messages ORDER BY rowid;
DROP TABLE messages;
ALTER TABLE messages_old RENAME TO messages;
CREATE UNIQUE INDEX messages_wamid ON messages (tenant_id, wamid);
CREATE INDEX messages_conversation ON messages (conversation_id, id);
COMMIT;
PRAGMA foreign_keys = ON;
