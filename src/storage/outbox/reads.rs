//! Reading the outbox: where a send stands, and the pending sends of a number
//! in the order they were accepted, for its sender.

use diesel::prelude::*;

use super::{OutboxState, QUEUED, SENDING, UNFINISHED};
use crate::crypto::SealKey;
use crate::ids::{ContactId, MessageId, PhoneNumberId, TenantId, Wamid};
use crate::storage::apply::wamid_place;
use crate::storage::key_store::Vault;
use crate::storage::keys::load_data_key;
use crate::storage::messages::{MessageState, OUTBOUND};
use crate::storage::on_backend;
use crate::storage::schema::{messages, outbox};
use crate::storage::{DbConn, StorageError};

/// A send as stored: where it stands, Meta's id once opened, and its error.
#[derive(Debug, Clone)]
pub struct SendRecord {
    pub id: MessageId,
    pub stage: SendStage,
    pub wamid: Option<Wamid>,
    pub error_json: Option<String>,
}

/// Where a send stands: its message's state (`None`: no status yet) where it has a
/// message row, else its outbox row's (a read receipt has no message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStage {
    Message(Option<MessageState>),
    Outbox(OutboxState),
}

/// Send `id` of `tenant_id`, or `None` when the tenant has no such send (an inbound
/// message, or a record a status left, is not one).
pub fn send_record(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    id: &str,
) -> Result<Option<SendRecord>, StorageError> {
    let row: Option<(String, Option<String>)> = on_backend!(conn, c => outbox::table
        .find(id)
        .filter(outbox::tenant_id.eq(tenant_id.as_str()))
        .select((outbox::state, outbox::error_json))
        .get_result(c)
        .optional())?;
    let message: Option<(Option<String>, Option<String>, String)> = on_backend!(conn, c => messages::table
        .find(id)
        .filter(messages::tenant_id.eq(tenant_id.as_str()))
        .select((messages::status, messages::error_json, messages::direction))
        .get_result(c)
        .optional())?;
    let (stage, error_json) = match (message, row) {
        // A finished send whose outbox row has expired is known by its message row.
        (Some((status, error_json, direction)), row) if row.is_some() || direction == OUTBOUND => {
            let state = status.as_deref().and_then(MessageState::parse);
            (SendStage::Message(state), error_json)
        }
        (None, Some((state, error_json))) => {
            (SendStage::Outbox(OutboxState::parse(&state)?), error_json)
        }
        _ => return Ok(None),
    };
    Ok(Some(SendRecord {
        id: MessageId(id.to_string()),
        stage,
        wamid: None,
        error_json,
    }))
}

/// [`send_record`] with Meta's wamid opened (under the contact's key).
pub fn send_record_opened(
    conn: &mut DbConn,
    vault: &Vault,
    tenant_id: &TenantId,
    id: &str,
) -> Result<Option<SendRecord>, StorageError> {
    let Some(mut record) = send_record(conn, tenant_id, id)? else {
        return Ok(None);
    };
    let sealed: Option<(Option<Vec<u8>>, String, Option<String>)> = on_backend!(conn, c => messages::table
            .find(id)
            .filter(messages::tenant_id.eq(tenant_id.as_str()))
            .select((messages::wamid_ct, messages::wamid_bidx, messages::key_id))
            .get_result(c)
            .optional())?;
    if let Some((Some(wamid_ct), bidx, Some(key_id))) = sealed {
        if let Some(key) = load_data_key(conn, vault, tenant_id, &key_id)? {
            record.wamid = key
                .open_string(&wamid_ct, &wamid_place(tenant_id.as_str(), &bidx))
                .ok()
                .map(Wamid);
        }
    }
    Ok(Some(record))
}

/// An outbox row as the sender takes it.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: MessageId,
    pub tenant_id: TenantId,
    pub contact_id: ContactId,
    pub kind: String,
    pub key_id: String,
    pub request_ct: Vec<u8>,
    pub state: OutboxState,
    pub attempts: i32,
    pub next_attempt_at: i64,
    pub deadline_at: i64,
    /// It waits for room in its portfolio's messaging limit.
    pub limit_held: bool,
}

/// The number's pending sends (queued, or in flight with their outcome unknown) in
/// the order they were accepted, at most `limit`.
pub fn pending_sends(
    conn: &mut DbConn,
    phone_number_id: &PhoneNumberId,
    limit: i64,
) -> Result<Vec<OutboxRow>, StorageError> {
    type Row = (
        String,
        String,
        String,
        String,
        String,
        Vec<u8>,
        String,
        i32,
        i64,
        i64,
        Option<i64>,
    );
    let rows: Vec<Row> = on_backend!(conn, c => outbox::table
        .filter(outbox::phone_number_id.eq(phone_number_id.as_str()))
        .filter(outbox::state.eq_any(UNFINISHED))
        .order(outbox::id.asc())
        .limit(limit)
        .select((
            outbox::id,
            outbox::tenant_id,
            outbox::contact_id,
            outbox::kind,
            outbox::key_id,
            outbox::request_ct,
            outbox::state,
            outbox::attempts,
            outbox::next_attempt_at,
            outbox::deadline_at,
            outbox::limit_held_since,
        ))
        .load(c))?;
    rows.into_iter()
        .map(
            |(
                id,
                tenant_id,
                contact_id,
                kind,
                key_id,
                request_ct,
                state,
                attempts,
                next,
                deadline,
                limit_held_since,
            )| {
                Ok(OutboxRow {
                    id: MessageId(id),
                    tenant_id: TenantId(tenant_id),
                    contact_id: ContactId(contact_id),
                    kind,
                    key_id,
                    request_ct,
                    state: OutboxState::parse(&state)?,
                    attempts,
                    next_attempt_at: next,
                    deadline_at: deadline,
                    limit_held: limit_held_since.is_some(),
                })
            },
        )
        .collect()
}

/// The data key a row is sealed under (`None` once destroyed: the contact was erased).
pub fn row_key(
    conn: &mut DbConn,
    vault: &Vault,
    row: &OutboxRow,
) -> Result<Option<SealKey>, StorageError> {
    load_data_key(conn, vault, &row.tenant_id, &row.key_id)
}

/// Whether send `id` of `tenant_id` waits for Meta's answer (queued, or sent with its
/// outcome unknown).
pub fn is_pending(conn: &mut DbConn, tenant_id: &TenantId, id: &str) -> Result<bool, StorageError> {
    let state: Option<String> = on_backend!(conn, c => outbox::table
        .find(id)
        .filter(outbox::tenant_id.eq(tenant_id.as_str()))
        .select(outbox::state)
        .get_result(c)
        .optional())?;
    Ok(state.is_some_and(|s| s == QUEUED || s == SENDING))
}
