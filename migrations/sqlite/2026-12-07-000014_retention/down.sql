DROP INDEX messages_age;
DROP TABLE retention_runs;
DROP TABLE retention_policies;
