-- The media of inbound messages, fetched from Meta (its download URL expires within
-- minutes) and kept sealed under the message's contact key. A row is written with
-- the message it belongs to, and goes with it.
CREATE TABLE media_downloads (
    message_id TEXT PRIMARY KEY NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL,
    phone_number_id TEXT NOT NULL,
    -- Meta's type: image, audio, video, document or sticker.
    kind TEXT NOT NULL,
    -- pending, done or failed.
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    mime_type TEXT,
    file_size BIGINT,
    content_ct BLOB,
    error_json TEXT,
    fetched_at BIGINT
);
CREATE INDEX media_downloads_due ON media_downloads (state, next_attempt_at);
CREATE INDEX media_downloads_tenant ON media_downloads (tenant_id);
