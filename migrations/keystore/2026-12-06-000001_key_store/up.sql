-- A key store in a PostgreSQL database of its own (database.key_store_url): the same
-- tables as the keystore schema of the data's database, and nothing else.
CREATE SCHEMA keystore;
CREATE TABLE keystore.data_keys (
    id TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    tenant_id TEXT COLLATE "C" NOT NULL,
    wrapped_key BYTEA,
    created_at BIGINT NOT NULL,
    destroyed_at BIGINT
);
CREATE TABLE keystore.raw_keys (
    day TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    wrapped_key BYTEA,
    created_at BIGINT NOT NULL,
    destroyed_at BIGINT
);
