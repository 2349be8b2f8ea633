-- A conversation's messages, in order, are found through conversation_messages, which
-- the writer fills in bulk, sorted, a moment after the messages are stored, instead
-- of through an index on messages that every message wrote at its own conversation's
-- place: one B-tree leaf dirtied per message, three quarters of the bytes the writer
-- wrote. Messages above conversation_index_state.indexed_through (by rowid) are the
-- unindexed tail, which readers add to what the index table lists.
--
-- Without an index on messages.conversation_id, the foreign key from messages to
-- conversations would scan the whole table on every conversation delete, so it goes;
-- the triggers below keep what it did (deleting a conversation deletes its messages)
-- and keep the index table in step with deletes and moves (contact merges).
PRAGMA foreign_keys = OFF;
BEGIN;
CREATE TABLE messages_new (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
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
    SELECT id, tenant_id, conversation_id, contact_id, wamid, direction, msg_type, sent_at, received_at, key_id, content_ct, ref_wamid, status, status_at, error_json, revoked_at
    FROM messages ORDER BY rowid;
DROP TABLE messages;
ALTER TABLE messages_new RENAME TO messages;
CREATE UNIQUE INDEX messages_wamid ON messages (tenant_id, wamid);

CREATE TABLE conversation_messages (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    message_id TEXT NOT NULL,
    PRIMARY KEY (conversation_id, message_id)
) WITHOUT ROWID;
-- deletions counts message deletes, so that a bulk that began before one does not move
-- indexed_through past a rowid SQLite may since have given again.
CREATE TABLE conversation_index_state (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    indexed_through BIGINT NOT NULL,
    deletions BIGINT NOT NULL
);
INSERT INTO conversation_messages (conversation_id, message_id)
    SELECT conversation_id, id FROM messages ORDER BY conversation_id, id;
INSERT INTO conversation_index_state (id, indexed_through, deletions)
    SELECT 1, coalesce(max(rowid), 0), 0 FROM messages;

-- A deleted message leaves the index; when it was the newest row, SQLite may give its
-- rowid again, so the indexed mark comes down to the newest row left.
CREATE TRIGGER messages_deleted AFTER DELETE ON messages BEGIN
    DELETE FROM conversation_messages
        WHERE conversation_id = OLD.conversation_id AND message_id = OLD.id;
    UPDATE conversation_index_state SET
        indexed_through = min(indexed_through, (SELECT coalesce(max(rowid), 0) FROM messages)),
        deletions = deletions + 1;
END;
-- A message moved to another conversation (a contact merge) moves in the index.
CREATE TRIGGER messages_moved AFTER UPDATE OF conversation_id ON messages
    WHEN NEW.conversation_id <> OLD.conversation_id BEGIN
    UPDATE conversation_messages SET conversation_id = NEW.conversation_id
        WHERE conversation_id = OLD.conversation_id AND message_id = OLD.id;
END;
-- What the foreign key's cascade did: a conversation takes its messages with it
-- (tenant and contact deletes reach conversations by their own cascades).
CREATE TRIGGER conversations_deleted BEFORE DELETE ON conversations BEGIN
    DELETE FROM messages WHERE id IN
        (SELECT message_id FROM conversation_messages WHERE conversation_id = OLD.id);
    DELETE FROM messages
        WHERE rowid > (SELECT indexed_through FROM conversation_index_state)
        AND conversation_id = OLD.id;
END;
COMMIT;
PRAGMA foreign_keys = ON;
