-- Back to the database default collation.
ALTER TABLE tenants ALTER COLUMN id TYPE text COLLATE "default";
ALTER TABLE api_keys
    ALTER COLUMN id TYPE text COLLATE "default",
    ALTER COLUMN tenant_id TYPE text COLLATE "default",
    ALTER COLUMN key_hash TYPE text COLLATE "default";
ALTER TABLE phone_numbers
    ALTER COLUMN phone_number_id TYPE text COLLATE "default",
    ALTER COLUMN tenant_id TYPE text COLLATE "default";
ALTER TABLE inbox
    ALTER COLUMN dedupe_key TYPE text COLLATE "default",
    ALTER COLUMN tenant_id TYPE text COLLATE "default";
ALTER TABLE webhook_events
    ALTER COLUMN id TYPE text COLLATE "default",
    ALTER COLUMN tenant_id TYPE text COLLATE "default";
ALTER TABLE contacts
    ALTER COLUMN id TYPE text COLLATE "default",
    ALTER COLUMN tenant_id TYPE text COLLATE "default",
    ALTER COLUMN wa_id_bidx TYPE text COLLATE "default",
    ALTER COLUMN user_id_bidx TYPE text COLLATE "default";
ALTER TABLE conversations
    ALTER COLUMN id TYPE text COLLATE "default",
    ALTER COLUMN tenant_id TYPE text COLLATE "default",
    ALTER COLUMN phone_number_id TYPE text COLLATE "default",
    ALTER COLUMN contact_id TYPE text COLLATE "default";
ALTER TABLE messages
    ALTER COLUMN id TYPE text COLLATE "default",
    ALTER COLUMN tenant_id TYPE text COLLATE "default",
    ALTER COLUMN conversation_id TYPE text COLLATE "default",
    ALTER COLUMN contact_id TYPE text COLLATE "default",
    ALTER COLUMN wamid TYPE text COLLATE "default";
ALTER TABLE status_events
    ALTER COLUMN id TYPE text COLLATE "default",
    ALTER COLUMN tenant_id TYPE text COLLATE "default",
    ALTER COLUMN message_id TYPE text COLLATE "default",
    ALTER COLUMN status TYPE text COLLATE "default";
ALTER TABLE keystore.data_keys
    ALTER COLUMN id TYPE text COLLATE "default",
    ALTER COLUMN tenant_id TYPE text COLLATE "default";
