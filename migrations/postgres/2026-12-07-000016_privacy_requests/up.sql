-- Data-subject requests a business forwards for one of its contacts, executed one at
-- a time per tenant in the order received (the order of their time-ordered ids).
-- The subject is named by the keyed hash of its identifier, never in clear; the
-- contact it resolved to, once found. Dates are days (YYYY-MM-DD): the deadline is a
-- calendar day.
CREATE TABLE privacy_requests (
    id TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind TEXT COLLATE "C" NOT NULL,
    state TEXT COLLATE "C" NOT NULL,
    subject_bidx TEXT COLLATE "C" NOT NULL,
    contact_id TEXT COLLATE "C",
    received_at BIGINT NOT NULL,
    due_on TEXT NOT NULL,
    extended_due_on TEXT,
    completed_at BIGINT,
    reason TEXT,
    lifted_at BIGINT
);
CREATE INDEX privacy_requests_open ON privacy_requests (state, id);
CREATE INDEX privacy_requests_tenant ON privacy_requests (tenant_id, id);
