-- Privacy enquiries: a tenant's question about Converra's processing, answered by the
-- operator within five business days. The question and the answer are sealed under
-- the secrets key (they may name people); only dates and state are in clear.
CREATE TABLE privacy_enquiries (
    id TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    subject_ct BYTEA NOT NULL,
    message_ct BYTEA NOT NULL,
    state TEXT COLLATE "C" NOT NULL,
    received_at BIGINT NOT NULL,
    due_on TEXT COLLATE "C" NOT NULL,
    answered_at BIGINT,
    answer_ct BYTEA
);
CREATE INDEX privacy_enquiries_tenant ON privacy_enquiries (tenant_id, id);
CREATE INDEX privacy_enquiries_open ON privacy_enquiries (state, due_on);
-- The reminders sent for a request or an enquiry nearing its due date: one each.
CREATE TABLE compliance_reminders (
    item_id TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    tenant_id TEXT COLLATE "C" NOT NULL,
    sent_at BIGINT NOT NULL
);
-- Versions of the privacy policy the operator published, each with the notice that
-- told every account holder of it.
CREATE TABLE policy_versions (
    version TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    effective_on TEXT NOT NULL,
    summary TEXT NOT NULL,
    published_at BIGINT NOT NULL,
    notice_id TEXT
);
-- Disclosures of a tenant's data to an authority: the account holder is told unless
-- the law bars it, then when the operator lifts the bar.
CREATE TABLE disclosures (
    id TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    tenant_id TEXT COLLATE "C" NOT NULL,
    authority TEXT NOT NULL,
    recorded_at BIGINT NOT NULL,
    notify BOOLEAN NOT NULL,
    notified_at BIGINT,
    lifted_at BIGINT
);
CREATE INDEX disclosures_tenant ON disclosures (tenant_id, id);
-- Each processing record (sub-processors and data locations) the daemon started with
-- that differed from the one before, with the notice that told the account holders.
CREATE TABLE processing_records (
    id TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    record_json TEXT NOT NULL,
    recorded_at BIGINT NOT NULL,
    notice_id TEXT
);
