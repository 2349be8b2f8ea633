DROP TABLE template_syncs;
DROP TABLE templates;
