-- A tenant's own retention periods, by data category, over the operator's defaults
-- (`retention.*` in the configuration). 0 days: not kept after processing.
CREATE TABLE retention_policies (
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    category TEXT NOT NULL,
    days BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, category)
);

-- One retention sweep of one tenant: when it ran and how many rows of each category
-- it deleted (or, dry, would delete). Counts only, never content. The counts are
-- written in the transaction of each batch they count, so a sweep a crash interrupted
-- (finished_at still empty) is finished by the next one under the same record.
CREATE TABLE retention_runs (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    dry_run BOOLEAN NOT NULL,
    deleted_json TEXT NOT NULL
);
CREATE INDEX retention_runs_tenant ON retention_runs (tenant_id, id);

-- The sweep finds a tenant's messages past their period by age.
CREATE INDEX messages_age ON messages (tenant_id, sent_at);
