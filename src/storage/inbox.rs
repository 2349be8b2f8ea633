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
use super::key_store::Vault;
use super::on_backend;
use super::raw_keys::{DayKey, RawKeys};
use super::schema::{inbox, webhook_events};
use super::{DbConn, StorageError};
use crate::crypto::{Keyring, Place, SealKey};
use crate::ids::{PhoneNumberId, TenantId};
use crate::whatsapp::{Event, EventKind};

/// A routable event on its way in, with its identity in clear: in memory only, the
/// inbox stores it as keyed hashes ([`FreshRow`]).
#[derive(Debug, Clone)]
pub struct FreshEvent {
    pub keys: EventKeys,
    pub event: Arc<Event>,
}

/// What identifies an event: the key Meta's redeliveries of it share, and the key of
/// the conversation it belongs to. Both name the user (a phone number, a BSUID, a
/// wamid), so they never reach the database in clear.
#[derive(Debug, Clone)]
pub struct EventKeys {
    pub dedupe_key: String,
    pub route_key: String,
    pub phone_number_id: PhoneNumberId,
    pub kind: EventKind,
}

impl EventKeys {
    /// The event's inbox row in `tenant_id`'s inbox: its keys as keyed hashes.
    pub fn row(&self, keyring: &Keyring, tenant_id: &TenantId) -> FreshRow {
        FreshRow {
            dedupe_bidx: keyring.blind_index(tenant_id.as_str(), "inbox.dedupe", &self.dedupe_key),
            phone_number_id: self.phone_number_id.clone(),
            route_bidx: route_index(keyring, tenant_id, &self.route_key),
            kind: self.kind,
        }
    }
}

/// A conversation's routing key as the inbox stores it.
pub fn route_index(keyring: &Keyring, tenant_id: &TenantId, route_key: &str) -> String {
    keyring.blind_index(tenant_id.as_str(), "inbox.route", route_key)
}

/// Where an inbox row's payload lives: its row is named by its dedupe hash, which
/// is known before the row is inserted.
pub(super) fn payload_place<'a>(tenant_id: &'a str, dedupe_bidx: &'a str) -> Place<'a> {
    Place::new(tenant_id, "inbox", "payload_ct", dedupe_bidx)
}

/// Where a `webhook_events` row's payload lives (tenant empty for one of no tenant).
pub(super) fn raw_place<'a>(tenant_id: &'a str, id: &'a str) -> Place<'a> {
    Place::new(tenant_id, "webhook_events", "payload_ct", id)
}

/// An inbox row as stored: written processed and without payload for an event
/// applied as it arrives (in the transaction that applies it, so a redelivery
/// collides on its dedupe hash), or with the sealed event ([`PreparedEvent`]).
#[derive(Debug, Clone)]
pub struct FreshRow {
    pub dedupe_bidx: String,
    pub phone_number_id: PhoneNumberId,
    pub route_bidx: String,
    pub kind: EventKind,
}

impl FreshEvent {
    /// `None` for an event that names no contact (it cannot be routed).
    pub fn new(event: Event) -> Option<FreshEvent> {
        let route_key = event.identity.route_key()?;
        Some(FreshEvent {
            keys: EventKeys {
                dedupe_key: event.dedupe_key(),
                phone_number_id: event.phone_number_id.clone(),
                route_key,
                kind: event.kind,
            },
            event: Arc::new(event),
        })
    }

    /// Seals the event for `tenant_id`'s inbox, under the day's key, for when it could
    /// not be applied as it arrived.
    pub fn seal(
        &self,
        keyring: &Keyring,
        tenant_id: &TenantId,
        day: &DayKey,
    ) -> Result<PreparedEvent, StorageError> {
        let row = self.keys.row(keyring, tenant_id);
        let plain = serde_json::to_vec(self.event.as_ref())
            .map_err(|e| StorageError::Corrupt(format!("event does not serialise: {e}")))?;
        let payload_ct = day
            .key
            .seal(&plain, &payload_place(tenant_id.as_str(), &row.dedupe_bidx))?;
        Ok(PreparedEvent {
            row,
            payload_ct,
            key_day: day.day.clone(),
            event: self.event.clone(),
        })
    }
}

/// A routable event, sealed for its tenant's inbox and ready to insert.
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    pub row: FreshRow,
    pub payload_ct: Vec<u8>,
    /// The day whose key sealed `payload_ct`.
    pub key_day: String,
    pub event: Arc<Event>,
}

#[cfg(any(test, feature = "testing"))]
impl PreparedEvent {
    /// `event` sealed for `tenant_id`'s inbox; `None` for one that names no contact.
    pub fn seal(
        keyring: &Keyring,
        tenant_id: &TenantId,
        day: &DayKey,
        event: Event,
    ) -> Option<PreparedEvent> {
        FreshEvent::new(event)?.seal(keyring, tenant_id, day).ok()
    }
}

/// Signed content that is not a routable event, sealed and ready to insert.
#[derive(Debug, Clone)]
pub struct PreparedOther {
    pub id: String,
    pub reason: String,
    pub field: Option<String>,
    pub phone_number_id: Option<String>,
    pub payload_ct: Vec<u8>,
    /// The day whose key sealed `payload_ct`.
    pub key_day: String,
}

/// A committed inbox row, handed to the actors.
#[derive(Debug, Clone)]
pub struct InboxItem {
    pub id: i64,
    pub tenant_id: TenantId,
    pub phone_number_id: PhoneNumberId,
    /// The conversation's routing key, in clear (from the payload).
    pub route_key: String,
    /// When the webhook that carried it arrived (milliseconds).
    pub received_at: i64,
    pub event: Arc<Event>,
}

impl PreparedOther {
    /// Seals `raw` for a `webhook_events` row of `tenant_id` (`None`: of no tenant).
    pub fn seal(
        day: &DayKey,
        tenant_id: Option<&TenantId>,
        reason: &str,
        field: Option<String>,
        phone_number_id: Option<String>,
        raw: &[u8],
    ) -> Result<PreparedOther, StorageError> {
        let id = uuid::Uuid::now_v7().to_string();
        let tenant = tenant_id.map(TenantId::as_str).unwrap_or_default();
        let payload_ct = day.key.seal(raw, &raw_place(tenant, &id))?;
        Ok(PreparedOther {
            id,
            reason: reason.to_string(),
            field,
            phone_number_id,
            payload_ct,
            key_day: day.day.clone(),
        })
    }
}

fixed_statement!(
    InsertOne = "INSERT INTO inbox \
    (dedupe_bidx, tenant_id, phone_number_id, route_bidx, kind, payload_ct, received_at, \
     key_day) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dedupe_bidx) DO NOTHING RETURNING id"
);

fixed_statement!(
    InsertManyPg = "INSERT INTO inbox \
    (dedupe_bidx, tenant_id, phone_number_id, route_bidx, kind, payload_ct, received_at, \
     key_day) \
    SELECT d, t, p, r, k, c, ?, y \
    FROM unnest(?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::bytea[], \
        ?::text[]) AS v (d, t, p, r, k, c, y) \
    ON CONFLICT (dedupe_bidx) DO NOTHING RETURNING id, dedupe_bidx"
);

#[derive(QueryableByName)]
struct InsertedRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    dedupe_bidx: String,
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
        Bind::Text(&event.row.dedupe_bidx),
        Bind::Text(tenant_id.as_str()),
        Bind::Text(event.row.phone_number_id.as_str()),
        Bind::Text(&event.row.route_bidx),
        Bind::Text(event.row.kind.as_str()),
        Bind::Blob(&event.payload_ct),
        Bind::BigInt(now_ms),
        Bind::Text(&event.key_day),
    ]);
    let rows: Vec<InsertedId> = on_backend!(conn, c => statement.load(c))?;
    Ok(rows.first().map(|row| row.id))
}

/// Inserts many events, skipping those whose identity is already in the inbox;
/// returns the new row id of each inserted dedupe hash. PostgreSQL gets one statement
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
                    inserted.insert(event.row.dedupe_bidx.clone(), id);
                }
            }
        }
        DbConn::Pg(c) => {
            let statement = InsertManyPg::with(vec![
                Bind::BigInt(now_ms),
                Bind::TextArray(
                    rows.iter()
                        .map(|(_, e)| e.row.dedupe_bidx.as_str())
                        .collect(),
                ),
                Bind::TextArray(rows.iter().map(|(t, _)| t.as_str()).collect()),
                Bind::TextArray(
                    rows.iter()
                        .map(|(_, e)| e.row.phone_number_id.as_str())
                        .collect(),
                ),
                Bind::TextArray(
                    rows.iter()
                        .map(|(_, e)| e.row.route_bidx.as_str())
                        .collect(),
                ),
                Bind::TextArray(rows.iter().map(|(_, e)| e.row.kind.as_str()).collect()),
                Bind::BlobArray(rows.iter().map(|(_, e)| &e.payload_ct[..]).collect()),
                Bind::TextArray(rows.iter().map(|(_, e)| e.key_day.as_str()).collect()),
            ]);
            let new_rows: Vec<InsertedRow> = statement.load(c)?;
            inserted.extend(new_rows.into_iter().map(|row| (row.dedupe_bidx, row.id)));
        }
    }
    Ok(inserted)
}

fixed_statement!(
    InsertProcessedOne = "INSERT INTO inbox \
    (dedupe_bidx, tenant_id, phone_number_id, route_bidx, kind, payload_ct, received_at, \
     processed_at) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dedupe_bidx) DO NOTHING"
);

fixed_statement!(
    InsertProcessedManyPg = "INSERT INTO inbox \
    (dedupe_bidx, tenant_id, phone_number_id, route_bidx, kind, payload_ct, received_at, \
     processed_at) \
    SELECT d, t, p, r, k, ?, ?, ? \
    FROM unnest(?::text[], ?::text[], ?::text[], ?::text[], ?::text[]) AS v (d, t, p, r, k) \
    ON CONFLICT (dedupe_bidx) DO NOTHING RETURNING dedupe_bidx"
);

#[derive(QueryableByName)]
struct InsertedKey {
    #[diesel(sql_type = diesel::sql_types::Text)]
    dedupe_bidx: String,
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
                    Bind::Text(&row.dedupe_bidx),
                    Bind::Text(tenant_id.as_str()),
                    Bind::Text(row.phone_number_id.as_str()),
                    Bind::Text(&row.route_bidx),
                    Bind::Text(row.kind.as_str()),
                    Bind::Blob(empty),
                    Bind::BigInt(now_ms),
                    Bind::BigInt(now_ms),
                ])
                .execute(c)?;
                if count == 1 {
                    inserted.insert(row.dedupe_bidx.clone());
                }
            }
        }
        DbConn::Pg(c) => {
            let keys: Vec<InsertedKey> = InsertProcessedManyPg::with(vec![
                Bind::Blob(empty),
                Bind::BigInt(now_ms),
                Bind::BigInt(now_ms),
                Bind::TextArray(rows.iter().map(|(_, r)| r.dedupe_bidx.as_str()).collect()),
                Bind::TextArray(rows.iter().map(|(t, _)| t.as_str()).collect()),
                Bind::TextArray(
                    rows.iter()
                        .map(|(_, r)| r.phone_number_id.as_str())
                        .collect(),
                ),
                Bind::TextArray(rows.iter().map(|(_, r)| r.route_bidx.as_str()).collect()),
                Bind::TextArray(rows.iter().map(|(_, r)| r.kind.as_str()).collect()),
            ])
            .load(c)?;
            inserted.extend(keys.into_iter().map(|k| k.dedupe_bidx));
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
            webhook_events::key_day.eq(&other.key_day),
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
    keyring: &Vault,
    tenant_id: &TenantId,
    phone_number_id: &str,
) -> Result<usize, StorageError> {
    type Row = (String, i64, Vec<u8>, Option<String>);
    let rows: Vec<Row> = on_backend!(conn, c => webhook_events::table
        .filter(webhook_events::reason.eq("unrouted"))
        .filter(webhook_events::phone_number_id.eq(phone_number_id))
        .filter(webhook_events::tenant_id.is_null())
        .order((webhook_events::received_at, webhook_events::id))
        .select((webhook_events::id, webhook_events::received_at, webhook_events::payload_ct,
                 webhook_events::key_day))
        .load(c))?;
    let keys = RawKeys::default();
    let mut adopted = 0;
    for (id, received_at, payload_ct, key_day) in rows {
        // Sealed again for the inbox under the key of the day it arrived, so it expires
        // with that day. One that cannot be read back (its key destroyed) stays where
        // it is rather than keep the number from being registered.
        let Some(day) = key_day else {
            continue;
        };
        let Ok(Some(key)) = keys.for_day(conn, keyring, &day) else {
            continue;
        };
        let day = DayKey { day, key };
        let Some(event) = day
            .key
            .open(&payload_ct, &raw_place("", &id))
            .ok()
            .and_then(|plain| serde_json::from_slice::<Event>(&plain).ok())
            .and_then(FreshEvent::new)
        else {
            continue;
        };
        let prepared = event.seal(keyring, tenant_id, &day)?;
        if insert_event(conn, tenant_id, &prepared, received_at)?.is_some() {
            adopted += 1;
        }
        on_backend!(conn, c => diesel::delete(webhook_events::table.find(&id)).execute(c))?;
    }
    Ok(adopted)
}

/// Opens an inbox payload under its day's key; the error says why it cannot be read.
fn open_payload(
    conn: &mut DbConn,
    keyring: &Vault,
    keys: &RawKeys,
    key_day: Option<&str>,
    payload_ct: &[u8],
    place: &Place<'_>,
) -> Result<Vec<u8>, String> {
    let Some(day) = key_day else {
        return Err("it names no day key".into());
    };
    let key: SealKey = match keys.for_day(conn, keyring, day) {
        Ok(Some(key)) => key,
        Ok(None) => return Err(format!("the key of {day}'s raw payloads is destroyed")),
        Err(e) => return Err(e.to_string()),
    };
    key.open(payload_ct, place).map_err(|e| e.to_string())
}

type PendingRow = (i64, String, String, String, i64, Vec<u8>, Option<String>);

/// Pending rows read back: those that open, and those that do not (sealed under another
/// key, damaged), by id with the reason, for the caller to park.
#[derive(Debug, Default)]
pub struct PendingPage {
    pub items: Vec<InboxItem>,
    pub unreadable: Vec<(i64, String)>,
    /// The last row id of the page, readable or not: where the next page starts.
    pub last_id: Option<i64>,
}

fn open_rows(conn: &mut DbConn, keyring: &Vault, rows: Vec<PendingRow>) -> PendingPage {
    let mut page = PendingPage {
        last_id: rows.last().map(|row| row.0),
        ..PendingPage::default()
    };
    let keys = RawKeys::default();
    for (id, dedupe_bidx, tenant_id, phone_number_id, received_at, payload_ct, key_day) in rows {
        let place = payload_place(&tenant_id, &dedupe_bidx);
        let opened = open_payload(
            conn,
            keyring,
            &keys,
            key_day.as_deref(),
            &payload_ct,
            &place,
        )
        .and_then(|plain| {
            serde_json::from_slice::<Event>(&plain).map_err(|e| format!("not an event: {e}"))
        })
        .and_then(|event| match event.identity.route_key() {
            Some(route_key) => Ok((event, route_key)),
            None => Err("the event names no contact".into()),
        });
        match opened {
            Ok((event, route_key)) => page.items.push(InboxItem {
                id,
                tenant_id: TenantId(tenant_id),
                phone_number_id: PhoneNumberId(phone_number_id),
                route_key,
                received_at,
                event: Arc::new(event),
            }),
            Err(reason) => page.unreadable.push((id, reason)),
        }
    }
    page
}

/// Unprocessed rows received at or before `received_before`, oldest first, starting
/// after row `after_id`.
pub fn pending(
    conn: &mut DbConn,
    keyring: &Vault,
    after_id: i64,
    received_before: i64,
    limit: i64,
) -> Result<PendingPage, StorageError> {
    let rows: Vec<PendingRow> = on_backend!(conn, c => inbox::table
        .filter(inbox::processed_at.is_null())
        .filter(inbox::parked_at.is_null())
        .filter(inbox::id.gt(after_id))
        .filter(inbox::received_at.le(received_before))
        .order(inbox::id.asc())
        .limit(limit)
        .select((inbox::id, inbox::dedupe_bidx, inbox::tenant_id, inbox::phone_number_id,
                 inbox::received_at, inbox::payload_ct, inbox::key_day))
        .load(c))?;
    Ok(open_rows(conn, keyring, rows))
}

/// Unprocessed rows of one conversation actor (by its routing keys, in clear), oldest
/// first.
pub fn pending_for_routes(
    conn: &mut DbConn,
    keyring: &Vault,
    tenant_id: &TenantId,
    phone_number_id: &PhoneNumberId,
    route_keys: &[String],
) -> Result<PendingPage, StorageError> {
    let route_bidxs: Vec<String> = route_keys
        .iter()
        .map(|key| route_index(keyring, tenant_id, key))
        .collect();
    let rows: Vec<PendingRow> = on_backend!(conn, c => inbox::table
        .filter(inbox::processed_at.is_null())
        .filter(inbox::parked_at.is_null())
        .filter(inbox::tenant_id.eq(tenant_id.as_str()))
        .filter(inbox::phone_number_id.eq(phone_number_id.as_str()))
        .filter(inbox::route_bidx.eq_any(&route_bidxs))
        .order(inbox::id.asc())
        .select((inbox::id, inbox::dedupe_bidx, inbox::tenant_id, inbox::phone_number_id,
                 inbox::received_at, inbox::payload_ct, inbox::key_day))
        .load(c))?;
    Ok(open_rows(conn, keyring, rows))
}

/// How many rows wait to be processed (parked ones not counted).
pub fn backlog(conn: &mut DbConn) -> Result<i64, StorageError> {
    Ok(on_backend!(conn, c => inbox::table
        .filter(inbox::processed_at.is_null())
        .filter(inbox::parked_at.is_null())
        .count()
        .get_result(c))?)
}

/// How many rows are parked.
pub fn parked_count(conn: &mut DbConn) -> Result<i64, StorageError> {
    Ok(on_backend!(conn, c => inbox::table
        .filter(inbox::processed_at.is_null())
        .filter(inbox::parked_at.is_not_null())
        .count()
        .get_result(c))?)
}

/// Rows dispatched by a sweep that reached `through_id` and are not processed yet:
/// the sweep reads its next page only once these are few (its backpressure).
pub fn unprocessed_through(
    conn: &mut DbConn,
    through_id: i64,
    received_before: i64,
) -> Result<i64, StorageError> {
    Ok(on_backend!(conn, c => inbox::table
        .filter(inbox::processed_at.is_null())
        .filter(inbox::parked_at.is_null())
        .filter(inbox::id.le(through_id))
        .filter(inbox::received_at.le(received_before))
        .count()
        .get_result(c))?)
}

/// The longest error text kept with a row.
const ERROR_TEXT_MAX: usize = 1_000;

/// Counts a failed attempt at row `id` with its error; parks the row once it has
/// failed `park_after` times (0: at once). Returns whether it is parked now. A row
/// already processed is left alone.
/// Parks every unprocessed inbox row of `tenant_id` (its account is closed: nothing
/// will apply them, and the sweep must not wait for them); they go with its purge.
pub fn park_tenant(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    reason: &str,
    now_ms: i64,
) -> Result<usize, StorageError> {
    Ok(on_backend!(conn, c => diesel::update(inbox::table
        .filter(inbox::tenant_id.eq(tenant_id.as_str()))
        .filter(inbox::processed_at.is_null())
        .filter(inbox::parked_at.is_null()))
        .set((inbox::parked_at.eq(Some(now_ms)), inbox::last_error.eq(Some(reason))))
        .execute(c))?)
}

pub fn record_failure(
    conn: &mut DbConn,
    id: i64,
    error: &str,
    park_after: i32,
    now_ms: i64,
) -> Result<bool, StorageError> {
    let mut error = error.to_string();
    if error.len() > ERROR_TEXT_MAX {
        let mut cut = ERROR_TEXT_MAX;
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        error.truncate(cut);
    }
    let attempts: Option<i32> = on_backend!(conn, c => inbox::table
        .find(id)
        .filter(inbox::processed_at.is_null())
        .select(inbox::attempts)
        .get_result::<i32>(c)
        .optional())?;
    let Some(attempts) = attempts else {
        return Ok(false);
    };
    let attempts = attempts.saturating_add(1);
    let parked = attempts >= park_after;
    on_backend!(conn, c => diesel::update(inbox::table.find(id))
        .set((
            inbox::attempts.eq(attempts),
            inbox::last_error.eq(&error),
            inbox::parked_at.eq(parked.then_some(now_ms)),
        ))
        .execute(c))?;
    Ok(parked)
}

/// A parked row as the operator sees it: no identifiers, no content.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParkedRow {
    pub id: i64,
    pub tenant_id: String,
    pub phone_number_id: String,
    pub kind: String,
    pub received_at: i64,
    pub attempts: i32,
    pub parked_at: i64,
    pub error: String,
}

/// Every parked row, oldest first.
pub fn list_parked(conn: &mut DbConn) -> Result<Vec<ParkedRow>, StorageError> {
    type Row = (
        i64,
        String,
        String,
        String,
        i64,
        i32,
        Option<i64>,
        Option<String>,
    );
    let rows: Vec<Row> = on_backend!(conn, c => inbox::table
        .filter(inbox::processed_at.is_null())
        .filter(inbox::parked_at.is_not_null())
        .order(inbox::id.asc())
        .select((inbox::id, inbox::tenant_id, inbox::phone_number_id, inbox::kind,
                 inbox::received_at, inbox::attempts, inbox::parked_at, inbox::last_error))
        .load(c))?;
    Ok(rows
        .into_iter()
        .map(
            |(id, tenant_id, phone_number_id, kind, received_at, attempts, parked_at, error)| {
                ParkedRow {
                    id,
                    tenant_id,
                    phone_number_id,
                    kind,
                    received_at,
                    attempts,
                    parked_at: parked_at.unwrap_or_default(),
                    error: error.unwrap_or_default(),
                }
            },
        )
        .collect())
}

/// Puts parked rows back in line with their attempts reset: row `id`, or every parked
/// row. Returns how many; `NotFound` for an `id` that is not parked.
pub fn retry_parked(conn: &mut DbConn, id: Option<i64>) -> Result<usize, StorageError> {
    let retried = on_backend!(conn, c => {
        let rows = inbox::table
            .filter(inbox::processed_at.is_null())
            .filter(inbox::parked_at.is_not_null())
            .into_boxed();
        let rows = match id {
            Some(id) => rows.filter(inbox::id.eq(id)),
            None => rows,
        };
        let ids: Vec<i64> = rows.select(inbox::id).load(c)?;
        diesel::update(inbox::table.filter(inbox::id.eq_any(&ids)))
            .set((inbox::parked_at.eq(None::<i64>), inbox::attempts.eq(0)))
            .execute(c)
    })?;
    if id.is_some() && retried == 0 {
        return Err(StorageError::NotFound);
    }
    Ok(retried)
}

/// Deletes processed rows older than `processed_before`; returns how many.
pub fn purge_processed(conn: &mut DbConn, processed_before: i64) -> Result<usize, StorageError> {
    Ok(on_backend!(conn, c => diesel::delete(
        inbox::table.filter(inbox::processed_at.lt(processed_before)))
        .execute(c))?)
}

#[cfg(any(test, feature = "testing"))]
/// Counts of stored non-event content by reason (for tests and operators).
pub fn count_webhook_events(conn: &mut DbConn, reason: &str) -> Result<i64, StorageError> {
    Ok(on_backend!(conn, c => webhook_events::table
        .filter(webhook_events::reason.eq(reason))
        .count()
        .get_result(c))?)
}

#[cfg(any(test, feature = "testing"))]
/// Opens the raw payload of stored non-event content, newest first.
pub fn webhook_event_payloads(
    conn: &mut DbConn,
    keyring: &Vault,
    reason: &str,
) -> Result<Vec<Vec<u8>>, StorageError> {
    type Row = (String, Option<String>, Vec<u8>, Option<String>);
    let rows: Vec<Row> = on_backend!(conn, c => webhook_events::table
        .filter(webhook_events::reason.eq(reason))
        .order(webhook_events::id.desc())
        .select((webhook_events::id, webhook_events::tenant_id, webhook_events::payload_ct,
                 webhook_events::key_day))
        .load(c))?;
    let keys = RawKeys::default();
    rows.into_iter()
        .map(|(id, tenant, ct, day)| {
            let place = raw_place(tenant.as_deref().unwrap_or_default(), &id);
            open_payload(conn, keyring, &keys, day.as_deref(), &ct, &place)
                .map_err(StorageError::Corrupt)
        })
        .collect()
}

#[cfg(any(test, feature = "testing"))]
/// Every inbox payload of `tenant_id` that still opens, processed or not.
pub fn readable_payloads(
    conn: &mut DbConn,
    keyring: &Vault,
    tenant_id: &TenantId,
) -> Result<Vec<Vec<u8>>, StorageError> {
    type Row = (String, Vec<u8>, Option<String>);
    let rows: Vec<Row> = on_backend!(conn, c => inbox::table
        .filter(inbox::tenant_id.eq(tenant_id.as_str()))
        .select((inbox::dedupe_bidx, inbox::payload_ct, inbox::key_day))
        .load(c))?;
    let keys = RawKeys::default();
    Ok(rows
        .into_iter()
        .filter_map(|(dedupe_bidx, ct, day)| {
            let place = payload_place(tenant_id.as_str(), &dedupe_bidx);
            open_payload(conn, keyring, &keys, day.as_deref(), &ct, &place).ok()
        })
        .collect())
}
