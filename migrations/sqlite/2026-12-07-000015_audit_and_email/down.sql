DROP TABLE email_outbox;
DROP TABLE notices;
DROP TABLE audit_log;
