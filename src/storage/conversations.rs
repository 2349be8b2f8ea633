//! Conversations (`conversations`): one per contact and business phone number, with
//! the customer-service window (`SERVICE_WINDOW_MS`) each inbound message moves,
//! never backwards. Opening a conversation, moving the windows of a batch's known
//! conversations (one statement per batch on PostgreSQL), joining two conversations'
//! times when their contacts merge, and the tenant API's conversation listing. Lookups
//! and listings are scoped by tenant.

use std::sync::atomic::{AtomicBool, Ordering};

use std::collections::HashSet;

use diesel::prelude::*;

use super::fixed::{fixed_statement, Bind, ReturnedId, Sql};
use super::on_backend;
use super::schema::conversations;
use super::{DbConn, StorageError};
use crate::ids::{ContactId, ConversationId, PhoneNumberId, TenantId};

/// The customer-service window Meta opens with each inbound message.
pub(super) const SERVICE_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

/// Gives conversation `target` the times of both: opened at the earlier, its last
/// inbound message, window and last message at the later.
pub(super) fn join_conversation_times(
    conn: &mut DbConn,
    source: &str,
    target: &str,
) -> Result<(), StorageError> {
    type Times = (i64, Option<i64>, Option<i64>, i64);
    let times = |conn: &mut DbConn, id: &str| -> Result<Times, StorageError> {
        Ok(on_backend!(conn, c => conversations::table
            .find(id)
            .select((
                conversations::opened_at,
                conversations::last_inbound_at,
                conversations::window_ends_at,
                conversations::last_message_at,
            ))
            .get_result::<Times>(c))?)
    };
    let (s, t) = (times(conn, source)?, times(conn, target)?);
    let later = |x: Option<i64>, y: Option<i64>| x.max(y);
    on_backend!(conn, c => diesel::update(conversations::table.find(target))
        .set((
            conversations::opened_at.eq(s.0.min(t.0)),
            conversations::last_inbound_at.eq(later(s.1, t.1)),
            conversations::window_ends_at.eq(later(s.2, t.2)),
            conversations::last_message_at.eq(s.3.max(t.3)),
        ))
        .execute(c))?;
    Ok(())
}

/// Finds or opens the conversation of `contact_id` on `phone_number_id`; an inbound
/// message at `inbound_at` moves the customer-service window (never backwards).
pub(super) fn upsert_conversation(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    phone_number_id: &PhoneNumberId,
    contact_id: &ContactId,
    inbound_at: Option<i64>,
    now_ms: i64,
) -> Result<ConversationId, StorageError> {
    let tenant = tenant_id.as_str();
    let existing: Option<(String, Option<i64>, i64)> = on_backend!(conn, c => conversations::table
        .filter(conversations::tenant_id.eq(tenant))
        .filter(conversations::phone_number_id.eq(phone_number_id.as_str()))
        .filter(conversations::contact_id.eq(contact_id.as_str()))
        .select((conversations::id, conversations::last_inbound_at, conversations::last_message_at))
        .get_result(c)
        .optional())?;
    let message_at = inbound_at.unwrap_or(now_ms);
    match existing {
        Some((id, last_inbound, last_message)) => {
            let last_inbound = match (last_inbound, inbound_at) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            on_backend!(conn, c => diesel::update(conversations::table.find(&id))
                .set((
                    conversations::last_inbound_at.eq(last_inbound),
                    conversations::window_ends_at.eq(last_inbound.map(|t| t.saturating_add(SERVICE_WINDOW_MS))),
                    conversations::last_message_at.eq(last_message.max(message_at)),
                ))
                .execute(c))?;
            Ok(ConversationId(id))
        }
        None => {
            let id = ConversationId::generate();
            on_backend!(conn, c => diesel::insert_into(conversations::table)
                .values((
                    conversations::id.eq(id.as_str()),
                    conversations::tenant_id.eq(tenant),
                    conversations::phone_number_id.eq(phone_number_id.as_str()),
                    conversations::contact_id.eq(contact_id.as_str()),
                    conversations::opened_at.eq(now_ms),
                    conversations::last_inbound_at.eq(inbound_at),
                    conversations::window_ends_at.eq(inbound_at.map(|t| t.saturating_add(SERVICE_WINDOW_MS))),
                    conversations::last_message_at.eq(message_at),
                ))
                .execute(c))?;
            Ok(id)
        }
    }
}

/// A conversation opened by the write that applies its first inbound messages.
pub(in crate::storage) struct Opened<'a> {
    pub id: &'a ConversationId,
    pub tenant_id: &'a TenantId,
    pub phone_number_id: &'a PhoneNumberId,
    pub contact_id: &'a ContactId,
    /// Its latest inbound message's time.
    pub inbound_at: i64,
}

/// Inserts new conversations, in one statement.
pub(in crate::storage) fn open_conversations(
    conn: &mut DbConn,
    opened: &[Opened<'_>],
    now_ms: i64,
) -> Result<(), StorageError> {
    if opened.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = opened
        .iter()
        .map(|o| {
            (
                conversations::id.eq(o.id.as_str()),
                conversations::tenant_id.eq(o.tenant_id.as_str()),
                conversations::phone_number_id.eq(o.phone_number_id.as_str()),
                conversations::contact_id.eq(o.contact_id.as_str()),
                conversations::opened_at.eq(now_ms),
                conversations::last_inbound_at.eq(Some(o.inbound_at)),
                conversations::window_ends_at
                    .eq(Some(o.inbound_at.saturating_add(SERVICE_WINDOW_MS))),
                conversations::last_message_at.eq(o.inbound_at),
            )
        })
        .collect();
    on_backend!(conn, c => diesel::insert_into(conversations::table).values(&rows).execute(c))?;
    Ok(())
}

fixed_statement!(
    TouchOne = "UPDATE conversations SET \
    last_inbound_at = max(coalesce(last_inbound_at, ?), ?), \
    window_ends_at = max(coalesce(last_inbound_at, ?), ?) + ?, \
    last_message_at = max(last_message_at, ?) \
    WHERE id = ? AND tenant_id = ?"
);

// Rows whose window does not move are left alone: on PostgreSQL an update that changes
// nothing still writes a new row version and its WAL. Every conversation that exists
// is returned, moved or not.
fixed_statement!(
    TouchManyPg = "WITH v AS (SELECT * FROM unnest(?::text[], ?::text[], ?::bigint[]) \
        AS v (id, tenant, at)), \
    moved AS (UPDATE conversations AS c SET \
        last_inbound_at = GREATEST(c.last_inbound_at, v.at), \
        window_ends_at = GREATEST(c.last_inbound_at, v.at) + ?, \
        last_message_at = GREATEST(c.last_message_at, v.at) \
        FROM v WHERE c.id = v.id AND c.tenant_id = v.tenant \
        AND (c.last_inbound_at IS NULL OR c.last_inbound_at < v.at OR c.last_message_at < v.at)) \
    SELECT c.id FROM conversations AS c JOIN v ON c.id = v.id AND c.tenant_id = v.tenant"
);

/// One known conversation's window moved for an inbound message.
pub(super) struct Touch<'a> {
    pub(super) tenant_id: &'a str,
    pub(super) conversation_id: &'a str,
    pub(super) inbound_at: i64,
}

/// Moves known conversations' windows for inbound messages (never backwards); returns
/// the conversations that exist (one merged away is missing, and the caller falls back
/// to [`upsert_conversation`]). Each conversation appears once in `touches`.
pub(super) fn touch_conversations(
    conn: &mut DbConn,
    touches: &[Touch<'_>],
) -> Result<HashSet<String>, StorageError> {
    let mut existing = HashSet::with_capacity(touches.len());
    if touches.is_empty() {
        return Ok(existing);
    }
    match conn {
        DbConn::Sqlite(c) => {
            // A row rewritten with the values it holds is left as it was: SQLite
            // compares an overwritten cell before it dirties the page, so a window that
            // does not move costs no write.
            for t in touches {
                let at = t.inbound_at;
                let moved = TouchOne::with(vec![
                    Bind::BigInt(at),
                    Bind::BigInt(at),
                    Bind::BigInt(at),
                    Bind::BigInt(at),
                    Bind::BigInt(SERVICE_WINDOW_MS),
                    Bind::BigInt(at),
                    Bind::Text(t.conversation_id),
                    Bind::Text(t.tenant_id),
                ])
                .execute(c)?;
                if moved == 1 {
                    existing.insert(t.conversation_id.to_string());
                }
            }
        }
        DbConn::Pg(c) => {
            let rows: Vec<ReturnedId> = TouchManyPg::with(vec![
                Bind::TextArray(touches.iter().map(|t| t.conversation_id).collect()),
                Bind::TextArray(touches.iter().map(|t| t.tenant_id).collect()),
                Bind::BigIntArray(touches.iter().map(|t| t.inbound_at).collect()),
                Bind::BigInt(SERVICE_WINDOW_MS),
            ])
            .load(c)?;
            existing.extend(rows.into_iter().map(|row| row.id));
        }
    }
    Ok(existing)
}

// ---------------------------------------------------------------------------------
// Reads for the tenant API

/// A conversation as the tenant API reads it, times in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub id: ConversationId,
    pub contact_id: ContactId,
    pub phone_number_id: PhoneNumberId,
    pub opened_at: i64,
    pub last_inbound_at: Option<i64>,
    pub window_ends_at: Option<i64>,
    pub last_message_at: i64,
    /// When the business closed it (a new message from the contact opens it again).
    pub closed_at: Option<i64>,
}

type ConversationRow = (
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    i64,
    Option<i64>,
);

fn conversation_view(row: ConversationRow) -> Conversation {
    let (id, contact_id, phone_number_id, opened, last_inbound, window, last_message, closed) = row;
    Conversation {
        id: ConversationId(id),
        contact_id: ContactId(contact_id),
        phone_number_id: PhoneNumberId(phone_number_id),
        opened_at: opened,
        last_inbound_at: last_inbound,
        window_ends_at: window,
        last_message_at: last_message,
        closed_at: closed,
    }
}

pub fn list_conversations(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Conversation>, StorageError> {
    let rows: Vec<ConversationRow> = on_backend!(conn, c => {
        let mut query = conversations::table
            .filter(conversations::tenant_id.eq(tenant_id.as_str()))
            .select((conversations::id, conversations::contact_id, conversations::phone_number_id,
                     conversations::opened_at, conversations::last_inbound_at,
                     conversations::window_ends_at, conversations::last_message_at,
                     conversations::closed_at))
            .order(conversations::id.asc())
            .limit(limit)
            .into_boxed();
        if let Some(after) = after {
            query = query.filter(conversations::id.gt(after));
        }
        query.load(c)
    })?;
    Ok(rows.into_iter().map(conversation_view).collect())
}

/// The conversations of the tenant's contact `contact_id`, oldest first.
pub fn of_contact(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    contact_id: &ContactId,
) -> Result<Vec<Conversation>, StorageError> {
    // By contact alone, the tenant checked on the rows: given both, SQLite's planner
    // can take the index that leads with the tenant and read all of its conversations.
    let rows: Vec<(ConversationRow, String)> = on_backend!(conn, c => conversations::table
        .filter(conversations::contact_id.eq(contact_id.as_str()))
        .select(((conversations::id, conversations::contact_id, conversations::phone_number_id,
                 conversations::opened_at, conversations::last_inbound_at,
                 conversations::window_ends_at, conversations::last_message_at,
                 conversations::closed_at), conversations::tenant_id))
        .order(conversations::id.asc())
        .load(c))?;
    Ok(rows
        .into_iter()
        .filter(|(_, tenant)| tenant == tenant_id.as_str())
        .map(|(row, _)| conversation_view(row))
        .collect())
}

/// Closes conversation `conversation_id` of `tenant_id` at `closed_at`, or opens it
/// (`None`); the conversation as it now is, `None` when the tenant has no such one.
pub fn set_closed(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    conversation_id: &ConversationId,
    closed_at: Option<i64>,
) -> Result<Option<Conversation>, StorageError> {
    let tenant = tenant_id.as_str();
    let id = conversation_id.as_str();
    if closed_at.is_some() {
        ANY_CLOSED.store(true, Ordering::Relaxed);
    }
    let changed = on_backend!(conn, c => diesel::update(conversations::table
            .find(id)
            .filter(conversations::tenant_id.eq(tenant)))
        .set(conversations::closed_at.eq(closed_at))
        .execute(c))?;
    if changed == 0 {
        return Ok(None);
    }
    let row: ConversationRow = on_backend!(conn, c => conversations::table
        .find(id)
        .select((conversations::id, conversations::contact_id, conversations::phone_number_id,
                 conversations::opened_at, conversations::last_inbound_at,
                 conversations::window_ends_at, conversations::last_message_at,
                 conversations::closed_at))
        .get_result(c))?;
    Ok(Some(conversation_view(row)))
}

/// Whether any conversation may be closed (in any database this process opened):
/// until one is, a batch of messages costs no statement to open closed ones. Set when
/// a database with closed conversations is opened, and by every close.
static ANY_CLOSED: AtomicBool = AtomicBool::new(false);

/// Notes whether the database holds closed conversations (at start-up).
pub fn note_closed_conversations(conn: &mut DbConn) -> Result<(), StorageError> {
    let closed: bool = on_backend!(conn, c => diesel::select(diesel::dsl::exists(
            conversations::table.filter(conversations::closed_at.is_not_null())))
        .get_result(c))?;
    if closed {
        ANY_CLOSED.store(true, Ordering::Relaxed);
    }
    Ok(())
}

/// Opens the conversations among `ids` the business closed: their contacts wrote
/// again (a new message, not a redelivery).
pub(super) fn reopen_conversations(conn: &mut DbConn, ids: &[&str]) -> Result<(), StorageError> {
    if !ANY_CLOSED.load(Ordering::Relaxed) {
        return Ok(());
    }
    for chunk in ids.chunks(500) {
        on_backend!(conn, c => diesel::update(conversations::table
                .filter(conversations::id.eq_any(chunk))
                .filter(conversations::closed_at.is_not_null()))
            .set(conversations::closed_at.eq(None::<i64>))
            .execute(c))?;
    }
    Ok(())
}

/// Whether the conversation exists for this tenant (another tenant's is "not found").
pub fn conversation_exists(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    conversation_id: &ConversationId,
) -> Result<bool, StorageError> {
    let n: i64 = on_backend!(conn, c => conversations::table
        .filter(conversations::tenant_id.eq(tenant_id.as_str()))
        .filter(conversations::id.eq(conversation_id.as_str()))
        .count()
        .get_result(c))?;
    Ok(n > 0)
}
