-- SQLite's migration of this name adds the conversation index it fills in bulk
-- (conversation_messages). PostgreSQL lists a conversation's messages through an
-- index on messages and needs none of it. The migration exists so both backends carry
-- the same list.
SELECT 1;
