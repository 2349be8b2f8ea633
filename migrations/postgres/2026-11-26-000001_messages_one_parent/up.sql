-- A message keeps one parent, its conversation. Deleting a tenant or a contact reaches
-- its messages through the conversations (tenant and contact cascade to those), so
-- the foreign keys from messages to tenants and contacts only cost a trigger on every
-- insert, and the one to contacts needed an index of its own (messages_contact) that
-- every inbound message wrote at a random place. contact_id stays, kept equal to the
-- conversation's contact by the code.
ALTER TABLE messages
    DROP CONSTRAINT messages_tenant_id_fkey,
    DROP CONSTRAINT messages_contact_id_fkey;
DROP INDEX messages_contact;
