DROP INDEX conversations_closed;
ALTER TABLE conversations DROP COLUMN closed_at;
DROP TABLE contact_labels;
ALTER TABLE contacts DROP COLUMN crm_ct;
