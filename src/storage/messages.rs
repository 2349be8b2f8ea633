//! Messages (`messages`) and their statuses (`status_events`). Meta's message ids are
//! stored as keyed hashes (`wamid_bidx`, for lookups and uniqueness) beside their
//! sealed form (`wamid_ct`, under the contact's key). Inbound messages are
//! inserted so that a redelivery collides on (tenant, wamid) and changes nothing; a
//! revoke that arrives before its message leaves a tombstone, which the late original
//! completes without content; statuses only move forward. A conversation's messages
//! move with it when contacts merge. Also the tenant API's message listing, which
//! opens each message's content under the data key it names ([`super::keys`]), and
//! the counts and status histories tests and operators read. Lookups and listings are
//! scoped by tenant.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;
use serde_json::Value;

use super::apply::{content_place, wamid_place, MessageBundle, NewInbound};
use super::fixed::{fixed_statement, Bind, ReturnedId, Sql};
use super::key_store::Vault;
use super::keys::load_keys;
use super::on_backend;
use super::schema::messages;
use super::{DbConn, StorageError};
use crate::ids::{ContactId, ConversationId, MessageId, TenantId, Wamid};

/// `messages.direction`: from the contact, or to them.
pub const INBOUND: &str = "inbound";
pub const OUTBOUND: &str = "outbound";

/// Where a message stands (`messages.status`, the API's `status` and `state`), in the
/// order a message moves through them; `failed` is apart from that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MessageState {
    /// Accepted, not yet accepted by Meta.
    Queued,
    Sent,
    Delivered,
    Read,
    /// A voice message listened to.
    Played,
    Failed,
}

impl MessageState {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Queued => "queued",
            MessageState::Sent => "sent",
            MessageState::Delivered => "delivered",
            MessageState::Read => "read",
            MessageState::Played => "played",
            MessageState::Failed => "failed",
        }
    }

    /// A state by its name; `None` for a status that moves no message (Meta's
    /// `deleted`, or one it adds later).
    pub fn parse(name: &str) -> Option<MessageState> {
        [
            MessageState::Queued,
            MessageState::Sent,
            MessageState::Delivered,
            MessageState::Read,
            MessageState::Played,
            MessageState::Failed,
        ]
        .into_iter()
        .find(|state| state.as_str() == name)
    }

    /// The state a message in `current` (`None`: no status yet) moves to when
    /// `incoming` arrives, or `None` to stay: states only move forward (read never
    /// becomes delivered), `failed` is final, and a message that got past `sent` does
    /// not become failed.
    pub fn after(current: Option<MessageState>, incoming: MessageState) -> Option<MessageState> {
        let current = current.unwrap_or(MessageState::Queued);
        match (current, incoming) {
            (MessageState::Failed, _) => None,
            (_, MessageState::Failed) => {
                (current <= MessageState::Sent).then_some(MessageState::Failed)
            }
            _ => (incoming > current).then_some(incoming),
        }
    }
}

/// Gives every message of `conversation_id` the conversation `target` and the contact
/// `contact`. On SQLite the messages of a conversation are those its index and
/// unindexed tail name (see [`super::conversation_index`]); a trigger moves their
/// index rows.
pub(super) fn move_conversation_messages(
    conn: &mut DbConn,
    conversation_id: &ConversationId,
    target: &ConversationId,
    contact: &ContactId,
) -> Result<(), StorageError> {
    use diesel::sql_types::Text;
    match conn {
        DbConn::Sqlite(c) => {
            const MOVE: &str = concat!(
                "UPDATE messages SET conversation_id = ?4, contact_id = ?5 WHERE id IN (",
                super::conversation_index::message_ids_of_conversation!(),
                ")"
            );
            diesel::sql_query(MOVE)
                .bind::<Text, _>(conversation_id.as_str())
                .bind::<Text, _>("")
                .bind::<diesel::sql_types::BigInt, _>(-1_i64)
                .bind::<Text, _>(target.as_str())
                .bind::<Text, _>(contact.as_str())
                .execute(c)?;
        }
        DbConn::Pg(c) => {
            diesel::update(
                messages::table.filter(messages::conversation_id.eq(conversation_id.as_str())),
            )
            .set((
                messages::conversation_id.eq(target.as_str()),
                messages::contact_id.eq(contact.as_str()),
            ))
            .execute(c)?;
        }
    }
    Ok(())
}

fixed_statement!(
    InsertInboundOne = "INSERT INTO messages \
    (id, tenant_id, conversation_id, contact_id, wamid_bidx, wamid_ct, direction, msg_type, \
     sent_at, received_at, key_id, content_ct) \
    VALUES (?, ?, ?, ?, ?, ?, 'inbound', ?, ?, ?, ?, ?) \
    ON CONFLICT (wamid_bidx) DO NOTHING"
);

fixed_statement!(
    InsertInboundManyPg = "INSERT INTO messages \
    (id, tenant_id, conversation_id, contact_id, wamid_bidx, wamid_ct, direction, msg_type, \
     sent_at, received_at, key_id, content_ct) \
    SELECT i, t, cv, ct, w, wc, 'inbound', ty, s, ?, k, c \
    FROM unnest(?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::bytea[], \
                ?::text[], ?::bigint[], ?::text[], ?::bytea[]) \
        AS v (i, t, cv, ct, w, wc, ty, s, k, c) \
    ON CONFLICT (wamid_bidx) DO NOTHING RETURNING id"
);

/// An inbound message row, with the conversation it goes to.
pub(super) struct InboundRow<'a> {
    pub(super) tenant_id: &'a str,
    pub(super) conversation_id: &'a str,
    pub(super) message: &'a NewInbound,
}

/// Inserts inbound messages; a redelivered one collides on (tenant, wamid) and changes
/// nothing. Returns the ids of the messages inserted.
pub(super) fn insert_inbound(
    conn: &mut DbConn,
    rows: &[InboundRow<'_>],
    now_ms: i64,
) -> Result<HashSet<String>, StorageError> {
    let mut inserted = HashSet::with_capacity(rows.len());
    if rows.is_empty() {
        return Ok(inserted);
    }
    match conn {
        DbConn::Sqlite(c) => {
            for row in rows {
                let m = row.message;
                let count = InsertInboundOne::with(vec![
                    Bind::Text(m.message_id.as_str()),
                    Bind::Text(row.tenant_id),
                    Bind::Text(row.conversation_id),
                    Bind::Text(m.contact_id.as_str()),
                    Bind::Text(&m.wamid_bidx),
                    Bind::Blob(&m.wamid_ct),
                    Bind::Text(&m.msg_type),
                    Bind::BigInt(m.sent_at),
                    Bind::BigInt(now_ms),
                    Bind::Text(m.key_id.as_str()),
                    Bind::Blob(&m.content_ct),
                ])
                .execute(c)?;
                if count == 1 {
                    inserted.insert(m.message_id.0.clone());
                }
            }
        }
        DbConn::Pg(c) => {
            let messages = || rows.iter().map(|row| row.message);
            let returned: Vec<ReturnedId> = InsertInboundManyPg::with(vec![
                Bind::BigInt(now_ms),
                Bind::TextArray(messages().map(|m| m.message_id.as_str()).collect()),
                Bind::TextArray(rows.iter().map(|row| row.tenant_id).collect()),
                Bind::TextArray(rows.iter().map(|row| row.conversation_id).collect()),
                Bind::TextArray(messages().map(|m| m.contact_id.as_str()).collect()),
                Bind::TextArray(messages().map(|m| m.wamid_bidx.as_str()).collect()),
                Bind::BlobArray(messages().map(|m| &m.wamid_ct[..]).collect()),
                Bind::TextArray(messages().map(|m| m.msg_type.as_str()).collect()),
                Bind::BigIntArray(messages().map(|m| m.sent_at).collect()),
                Bind::TextArray(messages().map(|m| m.key_id.as_str()).collect()),
                Bind::BlobArray(messages().map(|m| &m.content_ct[..]).collect()),
            ])
            .load(c)?;
            inserted.extend(returned.into_iter().map(|row| row.id));
        }
    }
    Ok(inserted)
}

/// An inbound message that collided: rarely a duplicate, sometimes a tombstone (see
/// [`apply`](super::apply::apply)), which learns what kind of message it stands for,
/// never its content.
pub(super) fn complete_tombstone(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    m: &NewInbound,
) -> Result<usize, StorageError> {
    let tenant = tenant_id.as_str();
    Ok(on_backend!(conn, c => diesel::update(messages::table
        .filter(messages::tenant_id.eq(tenant))
        .filter(messages::wamid_bidx.eq(&m.wamid_bidx))
        .filter(messages::msg_type.is_null())
        .filter(messages::revoked_at.is_not_null()))
        .set((messages::msg_type.eq(&m.msg_type), messages::sent_at.eq(m.sent_at)))
        .execute(c))?)
}

// ---------------------------------------------------------------------------------
// Reads for the tenant API

/// A message as the tenant API reads it, its sealed parts opened (`None` where absent
/// or unreadable: a deleted message's content, anything of a contact whose key is
/// destroyed), Meta's timestamp in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub id: MessageId,
    pub wamid: Option<Wamid>,
    pub direction: String,
    pub msg_type: Option<String>,
    pub sent_at: i64,
    pub status: Option<MessageState>,
    pub content: Option<Value>,
    pub context: Option<Value>,
    pub referral: Option<Value>,
    pub errors: Option<Value>,
    pub error: Option<Value>,
    pub revoked: bool,
}

type MessageRow = (
    String,
    (String, Option<Vec<u8>>),
    String,
    Option<String>,
    i64,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    Option<String>,
    Option<i64>,
);

/// SQLite: a conversation's messages after a cursor (see
/// [`super::conversation_index`]). ?1 conversation, ?2 cursor, ?3 limit, ?4 tenant.
/// The tenant is checked on the rows found (`+tenant_id`): as an index constraint,
/// SQLite's planner takes the retention index that leads with it and reads every
/// message of the tenant for each page.
const LIST_MESSAGES_SQLITE: &str = concat!(
    "SELECT id, wamid_bidx, wamid_ct, direction, msg_type, sent_at, status, key_id, content_ct, \
            error_json, revoked_at \
     FROM messages WHERE id IN (",
    super::conversation_index::message_ids_of_conversation!(),
    ") AND +tenant_id = ?4 ORDER BY id"
);

#[derive(QueryableByName)]
struct ListedMessage {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    wamid_bidx: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Binary>)]
    wamid_ct: Option<Vec<u8>>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    direction: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    msg_type: Option<String>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    sent_at: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    status: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    key_id: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Binary>)]
    content_ct: Option<Vec<u8>>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    error_json: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    revoked_at: Option<i64>,
}

impl ListedMessage {
    fn into_row(self) -> MessageRow {
        (
            self.id,
            (self.wamid_bidx, self.wamid_ct),
            self.direction,
            self.msg_type,
            self.sent_at,
            self.status,
            self.key_id,
            self.content_ct,
            self.error_json,
            self.revoked_at,
        )
    }
}

pub fn list_messages(
    conn: &mut DbConn,
    keyring: &Vault,
    tenant_id: &TenantId,
    conversation_id: &ConversationId,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<StoredMessage>, StorageError> {
    let conversation_id = conversation_id.as_str();
    let rows: Vec<MessageRow> = match conn {
        DbConn::Sqlite(c) => {
            use diesel::sql_types::{BigInt, Text};
            diesel::sql_query(LIST_MESSAGES_SQLITE)
                .bind::<Text, _>(conversation_id)
                .bind::<Text, _>(after.unwrap_or(""))
                .bind::<BigInt, _>(limit)
                .bind::<Text, _>(tenant_id.as_str())
                .load::<ListedMessage>(c)?
                .into_iter()
                .map(ListedMessage::into_row)
                .collect()
        }
        DbConn::Pg(c) => {
            let mut query = messages::table
                .filter(messages::tenant_id.eq(tenant_id.as_str()))
                .filter(messages::conversation_id.eq(conversation_id))
                .select((
                    messages::id,
                    (messages::wamid_bidx, messages::wamid_ct),
                    messages::direction,
                    messages::msg_type,
                    messages::sent_at,
                    messages::status,
                    messages::key_id,
                    messages::content_ct,
                    messages::error_json,
                    messages::revoked_at,
                ))
                .order(messages::id.asc())
                .limit(limit)
                .into_boxed();
            if let Some(after) = after {
                query = query.filter(messages::id.gt(after));
            }
            query.load(c)?
        }
    };
    let mut keys = HashMap::new();
    load_keys(
        conn,
        keyring,
        tenant_id,
        rows.iter().filter_map(|r| r.6.as_deref()),
        &mut keys,
    )?;
    let tenant = tenant_id.as_str();
    rows.into_iter()
        .map(
            |(
                id,
                (wamid_bidx, wamid_ct),
                direction,
                msg_type,
                sent_at,
                status,
                key_id,
                content_ct,
                error_json,
                revoked_at,
            )| {
                // What does not open (its key destroyed, or a value moved here from
                // another place) is shown as absent, as for contacts.
                let key = key_id.and_then(|k| keys.get(&k).cloned().flatten());
                let wamid = match (&key, wamid_ct) {
                    (Some(key), Some(ct)) => key
                        .open_string(&ct, &wamid_place(tenant, &wamid_bidx))
                        .ok()
                        .map(Wamid),
                    _ => None,
                };
                let bundle: Option<MessageBundle> = match (key, content_ct) {
                    (Some(key), Some(ct)) => match key.open(&ct, &content_place(tenant, &id)) {
                        Ok(plain) => Some(
                            serde_json::from_slice(&plain)
                                .map_err(|e| StorageError::Corrupt(format!("message {id}: {e}")))?,
                        ),
                        Err(_) => None,
                    },
                    _ => None,
                };
                let error = error_json.and_then(|e| serde_json::from_str(&e).ok());
                let bundle = bundle.unwrap_or_default();
                let has_content = !bundle.content.is_null();
                Ok(StoredMessage {
                    id: MessageId(id),
                    wamid,
                    direction,
                    msg_type,
                    sent_at,
                    status: status.as_deref().and_then(MessageState::parse),
                    content: has_content.then_some(bundle.content),
                    context: bundle.context,
                    referral: bundle.referral,
                    errors: bundle.errors,
                    error,
                    revoked: revoked_at.is_some(),
                })
            },
        )
        .collect()
}

/// A status Meta reported for a message: what it became, when, and Meta's detail
/// (errors, pricing, conversation; no identifiers).
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusEvent {
    pub status: String,
    pub occurred_at: i64,
    pub detail: Option<Value>,
}

/// The statuses recorded for each of `ids` (messages of `tenant_id`), oldest first.
pub fn statuses_of(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    ids: &[MessageId],
) -> Result<HashMap<MessageId, Vec<StatusEvent>>, StorageError> {
    use super::schema::status_events;
    let ids: Vec<&str> = ids.iter().map(MessageId::as_str).collect();
    let rows: Vec<(String, String, i64, Option<String>)> = on_backend!(conn, c => status_events::table
        .filter(status_events::message_id.eq_any(&ids))
        .filter(status_events::tenant_id.eq(tenant_id.as_str()))
        .select((status_events::message_id, status_events::status,
                 status_events::occurred_at, status_events::detail_json))
        .order((status_events::message_id, status_events::occurred_at))
        .load(c))?;
    let mut by_message: HashMap<MessageId, Vec<StatusEvent>> = HashMap::new();
    for (message_id, status, occurred_at, detail) in rows {
        by_message
            .entry(MessageId(message_id))
            .or_default()
            .push(StatusEvent {
                status,
                occurred_at,
                detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
            });
    }
    Ok(by_message)
}

/// Statuses recorded for a message (by wamid), oldest first; for the tests.
#[cfg(any(test, feature = "testing"))]
pub fn status_history(
    conn: &mut DbConn,
    keyring: &Vault,
    tenant_id: &TenantId,
    wamid: &Wamid,
) -> Result<Vec<(String, i64)>, StorageError> {
    let wamid_bidx = keyring.wamid_index(tenant_id.as_str(), wamid);
    use super::schema::status_events;
    Ok(on_backend!(conn, c => status_events::table
        .inner_join(messages::table.on(messages::id.eq(status_events::message_id)))
        .filter(messages::tenant_id.eq(tenant_id.as_str()))
        .filter(messages::wamid_bidx.eq(&wamid_bidx))
        .select((status_events::status, status_events::occurred_at))
        .order(status_events::occurred_at.asc())
        .load(c))?)
}

#[cfg(any(test, feature = "testing"))]
/// Total stored messages of a tenant.
pub fn count_messages(conn: &mut DbConn, tenant_id: &TenantId) -> Result<i64, StorageError> {
    Ok(on_backend!(conn, c => messages::table
        .filter(messages::tenant_id.eq(tenant_id.as_str()))
        .count()
        .get_result(c))?)
}

#[cfg(test)]
mod tests {
    use super::MessageState::{self, *};

    fn next(current: Option<&str>, incoming: &str) -> Option<&'static str> {
        let current = current.map(|name| MessageState::parse(name).expect("a state"));
        MessageState::after(current, MessageState::parse(incoming)?).map(MessageState::as_str)
    }

    #[test]
    fn statuses_only_move_forward() {
        assert_eq!(next(None, "sent"), Some("sent"));
        assert_eq!(next(Some("sent"), "read"), Some("read"));
        assert_eq!(next(Some("read"), "delivered"), None);
        assert_eq!(next(Some("read"), "played"), Some("played"));
        assert_eq!(next(Some("sent"), "failed"), Some("failed"));
        assert_eq!(next(Some("queued"), "failed"), Some("failed"));
        assert_eq!(next(Some("delivered"), "failed"), None);
        assert_eq!(next(Some("failed"), "read"), None);
        assert_eq!(next(Some("sent"), "deleted"), None);
        for state in [Queued, Sent, Delivered, Read, Played, Failed] {
            assert_eq!(MessageState::parse(state.as_str()), Some(state));
        }
    }
}
