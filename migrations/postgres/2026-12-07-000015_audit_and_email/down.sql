DROP TABLE email_outbox;
DROP TABLE notices;
DROP TABLE audit_log;
DROP FUNCTION audit_log_append_only();
