-- PostgreSQL has declared the foreign key from messages to conversations since the
-- first migration (messages_conversation_id_fkey); SQLite keeps the same rules with
-- triggers in its migration of this name. Both backends carry the same migrations.
SELECT 1;
