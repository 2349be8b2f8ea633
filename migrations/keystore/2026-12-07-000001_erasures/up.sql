-- The erasure records, with the keys they go with (see the data migration
-- 2026-12-07-000017_erasure_and_rectification).
CREATE TABLE keystore.erasures (
    request_id TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    tenant_id TEXT COLLATE "C" NOT NULL,
    contact_id TEXT COLLATE "C",
    subject_bidx TEXT COLLATE "C" NOT NULL,
    route_bidxs TEXT NOT NULL,
    erased_at BIGINT NOT NULL
);
