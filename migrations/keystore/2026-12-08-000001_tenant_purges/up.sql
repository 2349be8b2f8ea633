-- The purge records of closed tenants, with the keys they go with (see the data
-- migration 2026-12-08-000018_tenant_closure).
CREATE TABLE keystore.tenant_purges (
    tenant_id TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    purged_at BIGINT NOT NULL
);
