//! The media of inbound messages (`media_downloads`): a row is written in the
//! transaction that stores its message (so no media is forgotten across a crash),
//! fetched from Meta by [`crate::actors::media`], and kept sealed under the
//! message's key. Deleting the message deletes its media (a foreign key).

use std::collections::HashMap;

use diesel::prelude::*;
use serde_json::Value;

use super::apply::{content_place, MessageBundle};
use super::key_store::Vault;
use super::keys::load_data_key;
use super::on_backend;
use super::schema::{media_downloads, messages};
use super::{tenants, DbConn, StorageError};
use crate::crypto::{Place, SealKey};
use crate::ids::{MessageId, PhoneNumberId, TenantId};

/// Meta's message types that carry a media id.
pub const MEDIA_KINDS: [&str; 5] = ["image", "audio", "video", "document", "sticker"];

pub const PENDING: &str = "pending";
pub const DONE: &str = "done";
pub const FAILED: &str = "failed";

pub fn is_media(kind: &str) -> bool {
    MEDIA_KINDS.contains(&kind)
}

fn media_place<'a>(tenant_id: &'a str, message_id: &'a str) -> Place<'a> {
    Place::new(tenant_id, "media_downloads", "content_ct", message_id)
}

/// An inbound media message just stored.
pub struct NewMedia<'a> {
    pub message_id: &'a str,
    pub tenant_id: &'a str,
    pub phone_number_id: &'a str,
    pub kind: &'a str,
}

/// Queues the media of messages stored in the same transaction, due at once.
pub(super) fn enqueue(
    conn: &mut DbConn,
    rows: &[NewMedia<'_>],
    now_ms: i64,
) -> Result<(), StorageError> {
    if rows.is_empty() {
        return Ok(());
    }
    let values: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                media_downloads::message_id.eq(r.message_id),
                media_downloads::tenant_id.eq(r.tenant_id),
                media_downloads::phone_number_id.eq(r.phone_number_id),
                media_downloads::kind.eq(r.kind),
                media_downloads::state.eq(PENDING),
                media_downloads::attempts.eq(0),
                media_downloads::next_attempt_at.eq(now_ms),
                media_downloads::created_at.eq(now_ms),
            )
        })
        .collect();
    on_backend!(conn, c => diesel::insert_into(media_downloads::table)
        .values(&values)
        .execute(c))?;
    Ok(())
}

/// A media download to do.
#[derive(Debug, Clone)]
pub struct MediaJob {
    pub message_id: MessageId,
    pub tenant_id: TenantId,
    pub phone_number_id: PhoneNumberId,
    pub kind: String,
    pub attempts: i32,
    pub created_at: i64,
}

/// Up to `limit` pending downloads due by `now_ms`, the longest waiting first.
pub fn due(conn: &mut DbConn, now_ms: i64, limit: i64) -> Result<Vec<MediaJob>, StorageError> {
    type Row = (String, String, String, String, i32, i64);
    let rows: Vec<Row> = on_backend!(conn, c => media_downloads::table
        .filter(media_downloads::state.eq(PENDING))
        .filter(media_downloads::next_attempt_at.le(now_ms))
        .order(media_downloads::next_attempt_at.asc())
        .limit(limit)
        .select((media_downloads::message_id, media_downloads::tenant_id,
                 media_downloads::phone_number_id, media_downloads::kind,
                 media_downloads::attempts, media_downloads::created_at))
        .load(c))?;
    Ok(rows
        .into_iter()
        .map(
            |(message_id, tenant_id, phone_number_id, kind, attempts, created_at)| MediaJob {
                message_id: MessageId(message_id),
                tenant_id: TenantId(tenant_id),
                phone_number_id: PhoneNumberId(phone_number_id),
                kind,
                attempts,
                created_at,
            },
        )
        .collect())
}

/// What fetching a job's media needs: Meta's media id (in the message's sealed
/// content), the key to seal the file under, and the number's token.
pub struct MediaSource {
    pub media_id: String,
    pub key: SealKey,
    pub access_token: String,
}

/// The source of `job`; `None` when there is nothing to fetch any more (the message
/// was deleted by its sender, its key destroyed, or the number removed).
pub fn source(
    conn: &mut DbConn,
    vault: &Vault,
    job: &MediaJob,
) -> Result<Option<MediaSource>, StorageError> {
    let tenant_id = job.tenant_id.clone();
    let row: Option<(Option<String>, Option<Vec<u8>>)> = on_backend!(conn, c => messages::table
        .find(job.message_id.as_str())
        .select((messages::key_id, messages::content_ct))
        .get_result(c)
        .optional())?;
    let Some((Some(key_id), Some(content_ct))) = row else {
        return Ok(None);
    };
    let Some(key) = load_data_key(conn, vault, &tenant_id, &key_id)? else {
        return Ok(None);
    };
    let plain = key.open(
        &content_ct,
        &content_place(job.tenant_id.as_str(), job.message_id.as_str()),
    )?;
    let bundle: MessageBundle = serde_json::from_slice(&plain)
        .map_err(|e| StorageError::Corrupt(format!("message {}: {e}", job.message_id)))?;
    let Some(media_id) = bundle.content.get("id").and_then(Value::as_str) else {
        return Ok(None);
    };
    let Some(number) = tenants::sending_number(conn, vault, &job.phone_number_id)? else {
        return Ok(None);
    };
    if number.tenant_id != job.tenant_id {
        return Ok(None);
    }
    Ok(Some(MediaSource {
        media_id: media_id.to_string(),
        key,
        access_token: number.access_token,
    }))
}

/// The fetched file sealed under the message's key, for [`store_fetched`].
pub fn seal_file(job: &MediaJob, key: &SealKey, bytes: &[u8]) -> Result<Vec<u8>, StorageError> {
    Ok(key.seal(
        bytes,
        &media_place(job.tenant_id.as_str(), job.message_id.as_str()),
    )?)
}

/// Stores the fetched file, sealed by [`seal_file`].
pub fn store_fetched(
    conn: &mut DbConn,
    job: &MediaJob,
    mime_type: &str,
    file_size: usize,
    sealed: &[u8],
    now_ms: i64,
) -> Result<(), StorageError> {
    on_backend!(conn, c => diesel::update(media_downloads::table.find(job.message_id.as_str()))
        .set((
            media_downloads::state.eq(DONE),
            media_downloads::attempts.eq(job.attempts + 1),
            media_downloads::mime_type.eq(mime_type),
            media_downloads::file_size.eq(file_size as i64),
            media_downloads::content_ct.eq(sealed),
            media_downloads::error_json.eq(None::<String>),
            media_downloads::fetched_at.eq(now_ms),
        ))
        .execute(c))?;
    Ok(())
}

/// A failed attempt: tried again at `next_attempt_at`, or (`None`) given up.
pub fn attempt_failed(
    conn: &mut DbConn,
    job: &MediaJob,
    error_json: &str,
    next_attempt_at: Option<i64>,
) -> Result<(), StorageError> {
    let state = if next_attempt_at.is_some() {
        PENDING
    } else {
        FAILED
    };
    on_backend!(conn, c => diesel::update(media_downloads::table.find(job.message_id.as_str()))
        .set((
            media_downloads::state.eq(state),
            media_downloads::attempts.eq(job.attempts + 1),
            media_downloads::next_attempt_at.eq(next_attempt_at.unwrap_or(0)),
            media_downloads::error_json.eq(error_json),
        ))
        .execute(c))?;
    Ok(())
}

/// A message's media as the API gives it.
#[derive(Debug)]
pub struct StoredMedia {
    pub state: String,
    pub mime_type: Option<String>,
    /// The file, opened (when fetched and its key is kept).
    pub content: Option<Vec<u8>>,
    pub error_json: Option<String>,
}

/// What is held of a message's media, without the file: for an access export, which
/// points to the file's download instead of carrying it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MediaRecord {
    pub state: String,
    pub mime_type: Option<String>,
    pub file_size: Option<i64>,
    pub fetched_at: Option<i64>,
}

/// The media records of each of `ids` (messages of `tenant_id`) that has one.
pub fn media_of(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    ids: &[MessageId],
) -> Result<HashMap<MessageId, MediaRecord>, StorageError> {
    let ids: Vec<&str> = ids.iter().map(MessageId::as_str).collect();
    type Row = (String, String, Option<String>, Option<i64>, Option<i64>);
    let rows: Vec<Row> = on_backend!(conn, c => media_downloads::table
            .filter(media_downloads::message_id.eq_any(&ids))
            .filter(media_downloads::tenant_id.eq(tenant_id.as_str()))
            .select((media_downloads::message_id, media_downloads::state,
                     media_downloads::mime_type, media_downloads::file_size,
                     media_downloads::fetched_at))
            .load(c))?;
    Ok(rows
        .into_iter()
        .map(|(id, state, mime_type, file_size, fetched_at)| {
            let record = MediaRecord {
                state,
                mime_type,
                file_size,
                fetched_at,
            };
            (MessageId(id), record)
        })
        .collect())
}

/// The media of message `message_id` of `tenant_id`, if it has any.
pub fn stored_media(
    conn: &mut DbConn,
    vault: &Vault,
    tenant_id: &TenantId,
    message_id: &MessageId,
) -> Result<Option<StoredMedia>, StorageError> {
    let message_id = message_id.as_str();
    type Row = (
        String,
        Option<String>,
        Option<Vec<u8>>,
        Option<String>,
        Option<String>,
    );
    let row: Option<Row> = on_backend!(conn, c => media_downloads::table
        .inner_join(messages::table)
        .filter(media_downloads::message_id.eq(message_id))
        .filter(media_downloads::tenant_id.eq(tenant_id.as_str()))
        .select((media_downloads::state, media_downloads::mime_type,
                 media_downloads::content_ct, media_downloads::error_json, messages::key_id))
        .get_result(c)
        .optional())?;
    let Some((state, mime_type, content_ct, error_json, key_id)) = row else {
        return Ok(None);
    };
    let content = match (content_ct, key_id) {
        (Some(ct), Some(key_id)) => match load_data_key(conn, vault, tenant_id, &key_id)? {
            Some(key) => Some(key.open(&ct, &media_place(tenant_id.as_str(), message_id))?),
            None => None,
        },
        _ => None,
    };
    Ok(Some(StoredMedia {
        state,
        mime_type,
        content,
        error_json,
    }))
}
