-- Each WhatsApp Business Account's message templates as the Graph API lists them,
-- synced by the senders; a template send is checked against them, and a template's
-- category decides whether a contact who opted out of marketing may get it.
CREATE TABLE templates (
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    waba_id TEXT NOT NULL,
    name TEXT NOT NULL,
    language TEXT NOT NULL,
    category TEXT NOT NULL,
    status TEXT NOT NULL,
    components_json TEXT NOT NULL,
    synced_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, waba_id, name, language)
);

-- When each account's templates were last synced: before the first sync nothing is
-- known, and a template send is left to Meta to judge.
CREATE TABLE template_syncs (
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    waba_id TEXT NOT NULL,
    synced_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, waba_id)
);
