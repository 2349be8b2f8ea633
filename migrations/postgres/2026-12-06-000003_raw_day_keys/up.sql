-- Raw payloads (inbox events, unrouted updates, content stored raw) are sealed under a
-- key of the day they arrived, kept in the key store and destroyed once that day is
-- older than inbox.keep_raw_days: no backup holds them readable for longer. key_day
-- names the key; NULL marks a payload sealed under the master key's inbox key.
CREATE TABLE keystore.raw_keys (
    day TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    wrapped_key BYTEA,
    created_at BIGINT NOT NULL,
    destroyed_at BIGINT
);
ALTER TABLE inbox ADD COLUMN key_day TEXT COLLATE "C";
ALTER TABLE webhook_events ADD COLUMN key_day TEXT COLLATE "C";
