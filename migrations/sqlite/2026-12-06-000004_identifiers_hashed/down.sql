-- The hashed values stay hashed: a hash cannot be turned back into its identifier.
DROP INDEX webhook_events_key_day;
DROP TABLE storage_upgrades;
ALTER TABLE inbox RENAME COLUMN route_bidx TO route_key;
ALTER TABLE inbox RENAME COLUMN dedupe_bidx TO dedupe_key;
ALTER TABLE messages ADD COLUMN ref_wamid TEXT;
ALTER TABLE messages DROP COLUMN wamid_ct;
ALTER TABLE messages RENAME COLUMN wamid_bidx TO wamid;
DROP INDEX messages_wamid_bidx;
CREATE UNIQUE INDEX messages_wamid ON messages (tenant_id, wamid);
