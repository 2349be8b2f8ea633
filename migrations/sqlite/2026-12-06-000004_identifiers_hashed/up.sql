-- Identifiers only as keyed hashes (per-tenant HMACs under a key derived from the
-- master key): Meta's message ids, and the inbox's dedupe and routing keys, which
-- name users (phone numbers, BSUIDs). A message's id is sealed beside its hash, under
-- the contact's key. These columns hold clear values until the daemon's next start
-- rewrites them (storage::upgrade, which needs the master key), before it serves.
-- The reply reference of a message stays only in its sealed content.
ALTER TABLE messages RENAME COLUMN wamid TO wamid_bidx;
-- The hash names its tenant, so it is unique on its own: the index every message
-- inserts into at a random place stays small.
DROP INDEX messages_wamid;
CREATE UNIQUE INDEX messages_wamid_bidx ON messages (wamid_bidx);
ALTER TABLE messages ADD COLUMN wamid_ct BLOB;
ALTER TABLE messages DROP COLUMN ref_wamid;
ALTER TABLE inbox RENAME COLUMN dedupe_key TO dedupe_bidx;
ALTER TABLE inbox RENAME COLUMN route_key TO route_bidx;
-- Upgrades of stored data made in Rust, each recorded once done.
CREATE TABLE storage_upgrades (
    name TEXT PRIMARY KEY NOT NULL,
    done_at BIGINT NOT NULL
);
-- Raw payloads expire by the day of their key (raw_keys::expire, every half minute).
CREATE INDEX webhook_events_key_day ON webhook_events (key_day);
