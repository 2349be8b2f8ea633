DROP TABLE keystore.tenant_purges;
