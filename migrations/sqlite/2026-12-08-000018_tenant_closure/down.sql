DROP TABLE IF EXISTS keystore.tenant_purges;
ALTER TABLE tenants DROP COLUMN purge_after;
ALTER TABLE tenants DROP COLUMN closed_at;
