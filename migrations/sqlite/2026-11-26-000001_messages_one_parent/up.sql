-- A message keeps one parent, its conversation. Deleting a tenant or a contact reaches
-- its messages through the conversations (tenant and contact cascade to those), so
-- the foreign keys from messages to tenants and contacts only cost work on every
-- insert, and the one to contacts needed an index of its own (messages_contact) that
-- every inbound message wrote at a random place: a third of the pages each message
-- dirtied. contact_id stays, kept equal to the conversation's contact by the code.
--
-- SQLite's procedure for changing a table's constraints: build the new table, copy,
-- drop the old one and rename, with foreign key enforcement off so that dropping the
-- old table does not cascade to status_events.
PRAGMA foreign_keys = OFF;
BEGIN;
CREATE TABLE messages_new (
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
INSERT INTO messages_new (id, tenant_id, conversation_id, contact_id, wamid, direction, msg_type, sent_at, received_at, key_id, content_ct, ref_wamid, status, status_at, error_json, revoked_at)
    SELECT id, tenant_id, conversation_id, contact_id, wamid, direction, msg_type, sent_at, received_at, key_id, content_ct, ref_wamid, status, status_at, error_json, revoked_at FROM messages;
DROP TABLE messages;
ALTER TABLE messages_new RENAME TO messages;
CREATE UNIQUE INDEX messages_wamid ON messages (tenant_id, wamid);
CREATE INDEX messages_conversation ON messages (conversation_id, id);
COMMIT;
PRAGMA foreign_keys = ON;
