-- Identifiers, keyed hashes and Meta's ids compare byte by byte. Under the database's
-- default collation (often a glibc locale such as C.UTF-8 or en_US.UTF-8) every
-- comparison in these columns' indexes went through the locale (strcoll, after
-- copying both strings), a tenth of PostgreSQL's CPU per ingested message. Their
-- values are ASCII, so the byte order sorts them as before; UUID v7 ids stay in time
-- order. Changing a column's collation rebuilds its indexes.
ALTER TABLE tenants ALTER COLUMN id TYPE text COLLATE "C";
ALTER TABLE api_keys
    ALTER COLUMN id TYPE text COLLATE "C",
    ALTER COLUMN tenant_id TYPE text COLLATE "C",
    ALTER COLUMN key_hash TYPE text COLLATE "C";
ALTER TABLE phone_numbers
    ALTER COLUMN phone_number_id TYPE text COLLATE "C",
    ALTER COLUMN tenant_id TYPE text COLLATE "C";
ALTER TABLE inbox
    ALTER COLUMN dedupe_key TYPE text COLLATE "C",
    ALTER COLUMN tenant_id TYPE text COLLATE "C";
ALTER TABLE webhook_events
    ALTER COLUMN id TYPE text COLLATE "C",
    ALTER COLUMN tenant_id TYPE text COLLATE "C";
ALTER TABLE contacts
    ALTER COLUMN id TYPE text COLLATE "C",
    ALTER COLUMN tenant_id TYPE text COLLATE "C",
    ALTER COLUMN wa_id_bidx TYPE text COLLATE "C",
    ALTER COLUMN user_id_bidx TYPE text COLLATE "C";
ALTER TABLE conversations
    ALTER COLUMN id TYPE text COLLATE "C",
    ALTER COLUMN tenant_id TYPE text COLLATE "C",
    ALTER COLUMN phone_number_id TYPE text COLLATE "C",
    ALTER COLUMN contact_id TYPE text COLLATE "C";
ALTER TABLE messages
    ALTER COLUMN id TYPE text COLLATE "C",
    ALTER COLUMN tenant_id TYPE text COLLATE "C",
    ALTER COLUMN conversation_id TYPE text COLLATE "C",
    ALTER COLUMN contact_id TYPE text COLLATE "C",
    ALTER COLUMN wamid TYPE text COLLATE "C";
ALTER TABLE status_events
    ALTER COLUMN id TYPE text COLLATE "C",
    ALTER COLUMN tenant_id TYPE text COLLATE "C",
    ALTER COLUMN message_id TYPE text COLLATE "C",
    ALTER COLUMN status TYPE text COLLATE "C";
ALTER TABLE keystore.data_keys
    ALTER COLUMN id TYPE text COLLATE "C",
    ALTER COLUMN tenant_id TYPE text COLLATE "C";
