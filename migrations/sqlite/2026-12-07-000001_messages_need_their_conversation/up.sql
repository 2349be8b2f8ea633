-- A message belongs to a conversation that exists, as PostgreSQL's foreign key from
-- messages to conversations makes sure. SQLite cannot declare that key: without an
-- index on messages.conversation_id (which the bulk conversation index exists to
-- avoid, see 2026-11-28-000001_conversation_index) every conversation delete would
-- scan the whole messages table to find the children. These triggers keep the same
-- rules through the index instead: no message for a missing conversation, no
-- conversation renamed from under its messages, and (conversations_deleted, already
-- there) a deleted conversation takes its messages with it.
CREATE TRIGGER messages_conversation_exists BEFORE INSERT ON messages
    WHEN NOT EXISTS (SELECT 1 FROM conversations WHERE id = NEW.conversation_id) BEGIN
    SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: messages.conversation_id');
END;
CREATE TRIGGER messages_conversation_exists_on_move BEFORE UPDATE OF conversation_id ON messages
    WHEN NOT EXISTS (SELECT 1 FROM conversations WHERE id = NEW.conversation_id) BEGIN
    SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: messages.conversation_id');
END;
CREATE TRIGGER conversations_keep_their_id BEFORE UPDATE OF id ON conversations
    WHEN NEW.id <> OLD.id AND (
        EXISTS (SELECT 1 FROM conversation_messages WHERE conversation_id = OLD.id)
        OR EXISTS (SELECT 1 FROM messages
                   WHERE rowid > (SELECT indexed_through FROM conversation_index_state)
                   AND conversation_id = OLD.id)) BEGIN
    SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: messages.conversation_id');
END;
