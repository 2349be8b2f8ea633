-- Each tenant's usage by UTC day (days since 1970-01-01): inbound messages, sends
-- accepted by kind (outbound:text, outbound:template, ...), automation runs and
-- failed sends. Counted as they happen; kept after the messages themselves expire.
CREATE TABLE usage_daily (
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    day BIGINT NOT NULL,
    metric TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, day, metric)
);
