-- Account closure. A closed tenant keeps its row until its data is purged: its API
-- keys and numbers go when it is closed, the rest a bounded batch at a time from
-- purge_after on (at once with --delete-data, else after compliance.closure_grace_days).
ALTER TABLE tenants ADD COLUMN closed_at BIGINT;
ALTER TABLE tenants ADD COLUMN purge_after BIGINT;
-- The purge records live with the keys: a data backup restored after a purge is
-- purged again (`converra erasure reapply`).
CREATE TABLE IF NOT EXISTS keystore.tenant_purges (
    tenant_id TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    purged_at BIGINT NOT NULL
);
