DROP INDEX contacts_tenant;
DROP INDEX contacts_wa_id;
DROP INDEX contacts_user_id;
CREATE UNIQUE INDEX contacts_wa_id ON contacts (tenant_id, wa_id_bidx);
CREATE UNIQUE INDEX contacts_user_id ON contacts (tenant_id, user_id_bidx);
