//! The inbox: routable webhook updates, unique by Meta's event identity so redeliveries
//! collide. An update its conversation actor applies as it arrives gets a row already
//! processed and without payload, written with the rows it was applied to (an inbound
//! message needs none: the message's own key catches its redelivery). One that could
//! not be applied so is stored sealed and unprocessed before Meta hears 200, and the
//! actors process it later. Processed rows are deleted a configurable while after;
//! webhook content that is not routable goes to `webhook_events`, raw and sealed,
//! never dropped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use diesel::prelude::*;

use super::fixed::{fixed_statement, Bind, Sql};
use super::schema::{inbox, webhook_events};
use super::{DbConn, StorageError};
use crate::crypto::Keyring;
use crate::ids::TenantId;
use crate::on_backend;
use crate::whatsapp::Event;

/// A routable event on its way to its conversation actor, not (yet) in the inbox.
#[derive(Debug, Clone)]
pub struct FreshEvent {
    pub row: FreshRow,
    pub event: Arc<Event>,
}

/// The inbox row of an event applied as it arrives: written already processed, in the
/// transaction that applies it, so a redelivery collides on its dedupe key. It carries
/// no payload: the event's content is in the rows it was applied to.
#[derive(Debug, Clone)]
pub struct FreshRow {
    pub dedupe_key: String,
    pub phone_number_id: String,
    pub route_key: String,
    pub kind: &'static str,
}

impl FreshEvent {
    /// `None` for an event that names no contact (it cannot be routed).
    pub fn new(event: Event) -> Option<FreshEvent> {
        let route_key = event.identity.route_key()?;
        Some(FreshEvent {
            row: FreshRow {
                dedupe_key: event.dedupe_key(),
                phone_number_id: event.phone_number_id.clone(),
                route_key,
                kind: event.kind.as_str(),
            },
            event: Arc::new(event),
        })
    }

    /// Seals the event for the inbox, for when it could not be applied as it arrived.
    pub fn seal(&self, keyring: &Keyring) -> Option<PreparedEvent> {
        let plain = serde_json::to_vec(self.event.as_ref()).ok()?;
        let payload_ct = keyring
            .inbox()
            .seal(&plain, self.row.dedupe_key.as_bytes())
            .ok()?;
        Some(PreparedEvent {
            dedupe_key: self.row.dedupe_key.clone(),
            phone_number_id: self.row.phone_number_id.clone(),
            route_key: self.row.route_key.clone(),
            kind: self.row.kind,
            payload_ct,
            event: self.event.clone(),
        })
    }
}

/// A routable event, sealed and ready to insert.
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    pub dedupe_key: String,
    pub phone_number_id: String,
    pub route_key: String,
    pub kind: &'static str,
    pub payload_ct: Vec<u8>,
    pub event: Arc<Event>,
}

/// Signed content that is not a routable event.
#[derive(Debug, Clone)]
pub struct PreparedOther {
    pub id: String,
    pub reason: String,
    pub field: Option<String>,
    pub phone_number_id: Option<String>,
    pub payload_ct: Vec<u8>,
}

/// A committed inbox row, handed to the actors.
#[derive(Debug, Clone)]
pub struct InboxItem {
    pub id: i64,
    pub tenant_id: TenantId,
    pub phone_number_id: String,
    pub route_key: String,
    pub event: Arc<Event>,
}

impl PreparedEvent {
    pub fn seal(keyring: &Keyring, event: Event) -> Option<PreparedEvent> {
        FreshEvent::new(event)?.seal(keyring)
    }
}

impl PreparedOther {
    pub fn seal(
        keyring: &Keyring,
        reason: &str,
        field: Option<String>,
        phone_number_id: Option<String>,
        raw: &[u8],
    ) -> Result<PreparedOther, StorageError> {
        let id = uuid::Uuid::now_v7().to_string();
        let payload_ct = keyring.inbox().seal(raw, id.as_bytes())?;
        Ok(PreparedOther {
            id,
            reason: reason.to_string(),
            field,
            phone_number_id,
            payload_ct,
        })
    }
}

fixed_statement!(
    InsertOne = "INSERT INTO inbox \
    (dedupe_key, tenant_id, phone_number_id, route_key, kind, payload_ct, received_at) \
    VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dedupe_key) DO NOTHING RETURNING id"
);

fixed_statement!(
    InsertManyPg = "INSERT INTO inbox \
    (dedupe_key, tenant_id, phone_number_id, route_key, kind, payload_ct, received_at) \
    SELECT d, t, p, r, k, c, ? \
    FROM unnest(?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::bytea[]) \
        AS v (d, t, p, r, k, c) \
    ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, dedupe_key"
);

#[derive(QueryableByName)]
struct InsertedRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    dedupe_key: String,
}

#[derive(QueryableByName)]
struct InsertedId {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}

/// Inserts one event unless an event with the same identity is already in the inbox;
/// returns the new row id, or `None` for a duplicate.
pub fn insert_event(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    event: &PreparedEvent,
    now_ms: i64,
) -> Result<Option<i64>, StorageError> {
    let statement = InsertOne::with(vec![
        Bind::Text(&event.dedupe_key),
        Bind::Text(tenant_id.as_str()),
        Bind::Text(&event.phone_number_id),
        Bind::Text(&event.route_key),
        Bind::Text(event.kind),
        Bind::Blob(&event.payload_ct),
        Bind::BigInt(now_ms),
    ]);
    let rows: Vec<InsertedId> = on_backend!(conn, c => statement.load(c))?;
    Ok(rows.first().map(|row| row.id))
}

/// Inserts many events, skipping those whose identity is already in the inbox;
/// returns the new row id of each inserted dedupe key. PostgreSQL gets one statement
/// for them all (each statement is a round trip); SQLite, in-process, one prepared
/// statement run per row.
pub fn insert_events(
    conn: &mut DbConn,
    rows: &[(&TenantId, &PreparedEvent)],
    now_ms: i64,
) -> Result<HashMap<String, i64>, StorageError> {
    let mut inserted = HashMap::with_capacity(rows.len());
    if rows.is_empty() {
        return Ok(inserted);
    }
    match conn {
        DbConn::Sqlite(_) => {
            for (tenant_id, event) in rows {
                if let Some(id) = insert_event(conn, tenant_id, event, now_ms)? {
                    inserted.insert(event.dedupe_key.clone(), id);
                }
            }
        }
        DbConn::Pg(c) => {
            let statement = InsertManyPg::with(vec![
                Bind::BigInt(now_ms),
                Bind::TextArray(rows.iter().map(|(_, e)| e.dedupe_key.as_str()).collect()),
                Bind::TextArray(rows.iter().map(|(t, _)| t.as_str()).collect()),
                Bind::TextArray(
                    rows.iter()
                        .map(|(_, e)| e.phone_number_id.as_str())
                        .collect(),
                ),
                Bind::TextArray(rows.iter().map(|(_, e)| e.route_key.as_str()).collect()),
                Bind::TextArray(rows.iter().map(|(_, e)| e.kind).collect()),
                Bind::BlobArray(rows.iter().map(|(_, e)| &e.payload_ct[..]).collect()),
            ]);
            let new_rows: Vec<InsertedRow> = statement.load(c)?;
            inserted.extend(new_rows.into_iter().map(|row| (row.dedupe_key, row.id)));
        }
    }
    Ok(inserted)
}

fixed_statement!(
    InsertProcessedOne = "INSERT INTO inbox \
    (dedupe_key, tenant_id, phone_number_id, route_key, kind, payload_ct, received_at, \
     processed_at) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dedupe_key) DO NOTHING"
);

fixed_statement!(
    InsertProcessedManyPg = "INSERT INTO inbox \
    (dedupe_key, tenant_id, phone_number_id, route_key, kind, payload_ct, received_at, \
     processed_at) \
    SELECT d, t, p, r, k, ?, ?, ? \
    FROM unnest(?::text[], ?::text[], ?::text[], ?::text[], ?::text[]) AS v (d, t, p, r, k) \
    ON CONFLICT (dedupe_key) DO NOTHING RETURNING dedupe_key"
);

#[derive(QueryableByName)]
struct InsertedKey {
    #[diesel(sql_type = diesel::sql_types::Text)]
    dedupe_key: String,
}

/// Inserts the rows of events applied as they arrive, already processed; returns the
/// dedupe keys inserted (the others were delivered before: their events are
/// duplicates). Of identical rows in `rows`, the first inserts.
pub fn insert_processed(
    conn: &mut DbConn,
    rows: &[(&TenantId, &FreshRow)],
    now_ms: i64,
) -> Result<HashSet<String>, StorageError> {
    let mut inserted = HashSet::with_capacity(rows.len());
    if rows.is_empty() {
        return Ok(inserted);
    }
    let empty: &[u8] = &[];
    match conn {
        DbConn::Sqlite(c) => {
            for (tenant_id, row) in rows {
                let count = InsertProcessedOne::with(vec![
                    Bind::Text(&row.dedupe_key),
                    Bind::Text(tenant_id.as_str()),
                    Bind::Text(&row.phone_number_id),
                    Bind::Text(&row.route_key),
                    Bind::Text(row.kind),
                    Bind::Blob(empty),
                    Bind::BigInt(now_ms),
                    Bind::BigInt(now_ms),
                ])
                .execute(c)?;
                if count == 1 {
                    inserted.insert(row.dedupe_key.clone());
                }
            }
        }
        DbConn::Pg(c) => {
            let keys: Vec<InsertedKey> = InsertProcessedManyPg::with(vec![
                Bind::Blob(empty),
                Bind::BigInt(now_ms),
                Bind::BigInt(now_ms),
                Bind::TextArray(rows.iter().map(|(_, r)| r.dedupe_key.as_str()).collect()),
                Bind::TextArray(rows.iter().map(|(t, _)| t.as_str()).collect()),
                Bind::TextArray(
                    rows.iter()
                        .map(|(_, r)| r.phone_number_id.as_str())
                        .collect(),
                ),
                Bind::TextArray(rows.iter().map(|(_, r)| r.route_key.as_str()).collect()),
                Bind::TextArray(rows.iter().map(|(_, r)| r.kind).collect()),
            ])
            .load(c)?;
            inserted.extend(keys.into_iter().map(|k| k.dedupe_key));
        }
    }
    Ok(inserted)
}

/// Marks rows processed (a row keeps its first mark): one statement on PostgreSQL,
/// one prepared statement run per row on SQLite (see [`insert_events`]). The condition
/// names the key alone, so no generic plan can pick the state index instead.
pub fn mark_processed_many(
    conn: &mut DbConn,
    inbox_ids: &[i64],
    now_ms: i64,
) -> Result<(), StorageError> {
    if inbox_ids.is_empty() {
        return Ok(());
    }
    match conn {
        DbConn::Sqlite(c) => {
            for id in inbox_ids {
                MarkOne::with(vec![Bind::BigInt(now_ms), Bind::BigInt(*id)]).execute(c)?;
            }
        }
        DbConn::Pg(c) => {
            MarkManyPg::with(vec![
                Bind::BigInt(now_ms),
                Bind::BigIntArray(inbox_ids.to_vec()),
            ])
            .execute(c)?;
        }
    }
    Ok(())
}

fixed_statement!(
    MarkOne = "UPDATE inbox SET processed_at = coalesce(processed_at, ?) WHERE id = ?"
);
fixed_statement!(
    MarkManyPg = "UPDATE inbox SET processed_at = coalesce(processed_at, ?) WHERE id = ANY(?)"
);

pub fn insert_other(
    conn: &mut DbConn,
    tenant_id: Option<&TenantId>,
    other: &PreparedOther,
    now_ms: i64,
) -> Result<(), StorageError> {
    on_backend!(conn, c => diesel::insert_into(webhook_events::table)
        .values((
            webhook_events::id.eq(&other.id),
            webhook_events::received_at.eq(now_ms),
            webhook_events::reason.eq(&other.reason),
            webhook_events::field.eq(other.field.as_deref()),
            webhook_events::tenant_id.eq(tenant_id.map(TenantId::as_str)),
            webhook_events::phone_number_id.eq(other.phone_number_id.as_deref()),
            webhook_events::payload_ct.eq(&other.payload_ct),
        ))
        .execute(c))?;
    Ok(())
}

/// Moves the updates stored as unrouted for `phone_number_id` (they came before any
/// tenant owned the number) into `tenant_id`'s inbox, in the order they arrived and
/// with their arrival time, so the sweeper processes them like any row left over.
/// Returns how many went in; one already in the inbox (a redelivery) only leaves the
/// unrouted ones, and one that cannot be read back stays among them.
pub fn adopt_unrouted(
    conn: &mut DbConn,
    keyring: &Keyring,
    tenant_id: &TenantId,
    phone_number_id: &str,
) -> Result<usize, StorageError> {
    let rows: Vec<(String, i64, Vec<u8>)> = on_backend!(conn, c => webhook_events::table
        .filter(webhook_events::reason.eq("unrouted"))
        .filter(webhook_events::phone_number_id.eq(phone_number_id))
        .order((webhook_events::received_at, webhook_events::id))
        .select((webhook_events::id, webhook_events::received_at, webhook_events::payload_ct))
        .load(c))?;
    let mut adopted = 0;
    for (id, received_at, payload_ct) in rows {
        // One that cannot be read back (sealed under another master key, say) stays
        // where it is rather than keep the number from being registered.
        let Some(prepared) = keyring
            .inbox()
            .open(&payload_ct, id.as_bytes())
            .ok()
            .and_then(|plain| serde_json::from_slice::<Event>(&plain).ok())
            .and_then(|event| PreparedEvent::seal(keyring, event))
        else {
            continue;
        };
        if insert_event(conn, tenant_id, &prepared, received_at)?.is_some() {
            adopted += 1;
        }
        on_backend!(conn, c => diesel::delete(webhook_events::table.find(&id)).execute(c))?;
    }
    Ok(adopted)
}

type PendingRow = (i64, String, String, String, String, Vec<u8>);

fn open_rows(keyring: &Keyring, rows: Vec<PendingRow>) -> Result<Vec<InboxItem>, StorageError> {
    rows.into_iter()
        .map(
            |(id, dedupe_key, tenant_id, phone_number_id, route_key, payload_ct)| {
                let plain = keyring.inbox().open(&payload_ct, dedupe_key.as_bytes())?;
                let event: Event = serde_json::from_slice(&plain)
                    .map_err(|e| StorageError::Corrupt(format!("inbox row {id}: {e}")))?;
                Ok(InboxItem {
                    id,
                    tenant_id: TenantId(tenant_id),
                    phone_number_id,
                    route_key,
                    event: Arc::new(event),
                })
            },
        )
        .collect()
}

/// Unprocessed rows received at or before `received_before`, oldest first, starting
/// after row `after_id`.
pub fn pending(
    conn: &mut DbConn,
    keyring: &Keyring,
    after_id: i64,
    received_before: i64,
    limit: i64,
) -> Result<Vec<InboxItem>, StorageError> {
    let rows: Vec<PendingRow> = on_backend!(conn, c => inbox::table
        .filter(inbox::processed_at.is_null())
        .filter(inbox::id.gt(after_id))
        .filter(inbox::received_at.le(received_before))
        .order(inbox::id.asc())
        .limit(limit)
        .select((inbox::id, inbox::dedupe_key, inbox::tenant_id, inbox::phone_number_id,
                 inbox::route_key, inbox::payload_ct))
        .load(c))?;
    open_rows(keyring, rows)
}

/// Unprocessed rows of one conversation actor (by its routing keys), oldest first.
pub fn pending_for_routes(
    conn: &mut DbConn,
    keyring: &Keyring,
    tenant_id: &TenantId,
    phone_number_id: &str,
    route_keys: &[String],
) -> Result<Vec<InboxItem>, StorageError> {
    let rows: Vec<PendingRow> = on_backend!(conn, c => inbox::table
        .filter(inbox::processed_at.is_null())
        .filter(inbox::tenant_id.eq(tenant_id.as_str()))
        .filter(inbox::phone_number_id.eq(phone_number_id))
        .filter(inbox::route_key.eq_any(route_keys))
        .order(inbox::id.asc())
        .select((inbox::id, inbox::dedupe_key, inbox::tenant_id, inbox::phone_number_id,
                 inbox::route_key, inbox::payload_ct))
        .load(c))?;
    open_rows(keyring, rows)
}

/// How many rows wait to be processed.
pub fn backlog(conn: &mut DbConn) -> Result<i64, StorageError> {
    Ok(on_backend!(conn, c => inbox::table
        .filter(inbox::processed_at.is_null())
        .count()
        .get_result(c))?)
}

/// Deletes processed rows older than `processed_before`; returns how many.
pub fn purge_processed(conn: &mut DbConn, processed_before: i64) -> Result<usize, StorageError> {
    Ok(on_backend!(conn, c => diesel::delete(
        inbox::table.filter(inbox::processed_at.lt(processed_before)))
        .execute(c))?)
}

/// Counts of stored non-event content by reason (for tests and operators).
pub fn count_webhook_events(conn: &mut DbConn, reason: &str) -> Result<i64, StorageError> {
    Ok(on_backend!(conn, c => webhook_events::table
        .filter(webhook_events::reason.eq(reason))
        .count()
        .get_result(c))?)
}

/// Opens the raw payload of stored non-event content, newest first.
pub fn webhook_event_payloads(
    conn: &mut DbConn,
    keyring: &Keyring,
    reason: &str,
) -> Result<Vec<Vec<u8>>, StorageError> {
    let rows: Vec<(String, Vec<u8>)> = on_backend!(conn, c => webhook_events::table
        .filter(webhook_events::reason.eq(reason))
        .order(webhook_events::id.desc())
        .select((webhook_events::id, webhook_events::payload_ct))
        .load(c))?;
    rows.into_iter()
        .map(|(id, ct)| Ok(keyring.inbox().open(&ct, id.as_bytes())?))
        .collect()
}
