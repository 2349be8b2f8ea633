CREATE INDEX messages_contact ON messages (contact_id);
ALTER TABLE messages
    ADD CONSTRAINT messages_tenant_id_fkey
        FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE,
    ADD CONSTRAINT messages_contact_id_fkey
        FOREIGN KEY (contact_id) REFERENCES contacts (id) ON DELETE CASCADE;
