-- What a business records about a contact: its display name, tags and attributes,
-- sealed under the contact's data key, and each tag and attribute as a keyed hash
-- for search (deleted with the contact).
ALTER TABLE contacts ADD COLUMN crm_ct BYTEA;
CREATE TABLE contact_labels (
    tenant_id TEXT COLLATE "C" NOT NULL,
    label_bidx TEXT COLLATE "C" NOT NULL,
    contact_id TEXT COLLATE "C" NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    PRIMARY KEY (tenant_id, label_bidx, contact_id)
);
CREATE INDEX contact_labels_contact ON contact_labels (contact_id);
-- A conversation the business closed; a new message from the contact opens it again.
ALTER TABLE conversations ADD COLUMN closed_at BIGINT;
CREATE INDEX conversations_closed ON conversations (closed_at) WHERE closed_at IS NOT NULL;
