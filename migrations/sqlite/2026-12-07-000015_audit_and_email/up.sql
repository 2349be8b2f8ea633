-- The audit log: every compliance step and operator action, with who, what, when and
-- the ids of its targets (a request, a contact, a notice), never a wa_id, a name or a
-- message text. Append-only: no caller updates an entry, and only the retention sweep
-- deletes entries past the tenant's audit period.
CREATE TABLE audit_log (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    request_id TEXT,
    contact_id TEXT,
    detail_json TEXT NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, id);
CREATE INDEX audit_log_age ON audit_log (tenant_id, at);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

-- A notice the operator sends to the account holders of every active tenant (a
-- merger, a change of sub-processors, any other notice); its emails are tracked in
-- the email outbox.
CREATE TABLE notices (
    id TEXT PRIMARY KEY NOT NULL,
    subject TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Every email to an account holder, committed before it is sent: rendered when
-- queued (its Message-ID fixed then), retried with backoff while the SMTP server is
-- away or refuses it for now, and sent once it has been accepted.
CREATE TABLE email_outbox (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL,
    notice_id TEXT REFERENCES notices (id) ON DELETE CASCADE,
    event TEXT NOT NULL,
    recipient TEXT NOT NULL,
    subject TEXT NOT NULL,
    text_body TEXT NOT NULL,
    html_body TEXT NOT NULL,
    message_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    sent_at BIGINT
);
CREATE INDEX email_outbox_due ON email_outbox (state, next_attempt_at);
CREATE INDEX email_outbox_notice ON email_outbox (notice_id);
CREATE INDEX email_outbox_tenant ON email_outbox (tenant_id, created_at);
