-- A contact is found by the keyed hash of its phone number or BSUID. With the tenant
-- leading both indexes, a planner that takes a tenant's contacts to be few (a table
-- grown since its statistics were taken, as every new one is) could read the tenant's
-- part of the other index and filter it: every contact of the tenant for each lookup.
-- With the hash first, the index of the identifier asked for is the only one that
-- serves a lookup (which names the hash alone; see storage::contacts). Unique per
-- tenant as before. A tenant's contacts are listed, and deleted with it, through an
-- index of their own.
DROP INDEX contacts_wa_id;
DROP INDEX contacts_user_id;
CREATE UNIQUE INDEX contacts_wa_id ON contacts (wa_id_bidx, tenant_id);
CREATE UNIQUE INDEX contacts_user_id ON contacts (user_id_bidx, tenant_id);
CREATE INDEX contacts_tenant ON contacts (tenant_id, id);
