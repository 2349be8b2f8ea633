-- Each tenant's automations: keyword rules, the welcome and the away message. The
-- rule itself (trigger, reply, cooldown) is kept as the API shows it; `position`
-- orders the keyword rules (the first that matches answers).
CREATE TABLE automations (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    position BIGINT NOT NULL,
    definition_json TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX automations_tenant ON automations (tenant_id, position, id);

-- Every automation run: which rule (none for the opt-out and opt-in confirmations),
-- which contact, the send it stored, and its outcome (accepted, or the rule that
-- refused it). Usage data: no content. The cooldowns and the welcome read it.
CREATE TABLE automation_runs (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    automation_id TEXT,
    kind TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    message_id TEXT,
    outcome TEXT NOT NULL,
    ran_at BIGINT NOT NULL
);
CREATE INDEX automation_runs_contact ON automation_runs (contact_id, kind, ran_at);
CREATE INDEX automation_runs_tenant ON automation_runs (tenant_id, ran_at);

-- A tenant's own settings over the operator's defaults: time zone and business hours
-- (the away message), the opt-out and opt-in keywords and their confirmations.
CREATE TABLE tenant_settings (
    tenant_id TEXT PRIMARY KEY NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    settings_json TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
