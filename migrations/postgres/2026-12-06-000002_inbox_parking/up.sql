-- An inbox row whose event keeps failing for a reason retrying cannot cure is parked
-- after a bounded number of attempts: kept (sealed) with its last error, left out of
-- the backlog and the sweeps, listed and retried by the operator.
ALTER TABLE inbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE inbox ADD COLUMN last_error TEXT;
ALTER TABLE inbox ADD COLUMN parked_at BIGINT;
