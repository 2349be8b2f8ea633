DROP TABLE tenant_settings;
DROP TABLE automation_runs;
DROP TABLE automations;
