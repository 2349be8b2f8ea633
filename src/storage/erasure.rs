//! Erasure of a data subject: first the subject is made unreadable everywhere at once
//! ([`shred`]: the contact's data keys destroyed in the key store, its row emptied of
//! every identifier and sealed value, an erasure record kept with the keys), then its
//! rows go in bounded batches ([`erase_batch`]), so a subject with a long history
//! never holds a writer for long. The erasure records (keyed hashes only) let a data
//! backup restored afterwards be reconciled ([`reapply_all`]): the keys did not come
//! back with it, and its rows go again.

use std::collections::BTreeMap;

use diesel::prelude::*;

use super::audit::{self, Actor};
use super::inbox::route_index;
use super::key_store::Vault;
use super::on_backend;
use super::schema::{
    automation_runs, contact_labels, contacts, conversations, data_keys, erasures,
    idempotency_keys, inbox, messages, outbox, portfolio_reach,
};
use super::{DbConn, StorageError};
use crate::ids::{ContactId, TenantId};

/// An erasure as the key store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureRecord {
    pub request_id: String,
    pub tenant_id: TenantId,
    /// The contact erased; `None` for a subject the tenant never saw.
    pub contact_id: Option<ContactId>,
    pub subject_bidx: String,
    /// The keyed hashes of the subject's routing keys: its raw inbox rows carry them.
    pub route_bidxs: Vec<String>,
    pub erased_at: i64,
}

/// What [`shred`] did.
#[derive(Debug, Clone)]
pub struct Shredded {
    pub record: ErasureRecord,
    /// Data keys destroyed by this call (0 when a crash had it done before).
    pub keys_destroyed: usize,
}

/// The subject of an erasure, as its request names it.
pub struct Subject<'a> {
    pub request_id: &'a str,
    pub tenant_id: &'a TenantId,
    pub contact_id: Option<&'a ContactId>,
    pub subject_bidx: &'a str,
    /// The keyed hash of the routing key the request named (its wa_id or BSUID).
    pub route_bidx: Option<&'a str>,
}

type RecordRow = (String, String, Option<String>, String, String, i64);

fn record_of(row: RecordRow) -> Result<ErasureRecord, StorageError> {
    let (request_id, tenant, contact, subject_bidx, routes, erased_at) = row;
    let route_bidxs = serde_json::from_str(&routes)
        .map_err(|e| StorageError::Corrupt(format!("erasure {request_id}: route_bidxs: {e}")))?;
    Ok(ErasureRecord {
        request_id,
        tenant_id: TenantId(tenant),
        contact_id: contact.map(ContactId),
        subject_bidx,
        route_bidxs,
        erased_at,
    })
}

macro_rules! record_columns {
    () => {
        (
            erasures::request_id,
            erasures::tenant_id,
            erasures::contact_id,
            erasures::subject_bidx,
            erasures::route_bidxs,
            erasures::erased_at,
        )
    };
}

/// The erasure record of `request_id`, if it was written.
fn find_record(
    conn: &mut DbConn,
    vault: &Vault,
    request_id: &str,
) -> Result<Option<ErasureRecord>, StorageError> {
    let row: Option<RecordRow> = vault.with_store(conn, |ks| {
        Ok(on_backend!(ks, c => erasures::table
            .find(request_id)
            .select(record_columns!())
            .get_result(c)
            .optional())?)
    })?;
    row.map(record_of).transpose()
}

/// Whether the erasure of request `request_id` is recorded (its first step done).
pub fn recorded(conn: &mut DbConn, vault: &Vault, request_id: &str) -> Result<bool, StorageError> {
    Ok(find_record(conn, vault, request_id)?.is_some())
}

/// Every erasure record, oldest first, after `after` (a request id), at most `limit`.
pub fn records(
    conn: &mut DbConn,
    vault: &Vault,
    after: &str,
    limit: i64,
) -> Result<Vec<ErasureRecord>, StorageError> {
    let rows: Vec<RecordRow> = vault.with_store(conn, |ks| {
        Ok(on_backend!(ks, c => erasures::table
            .filter(erasures::request_id.gt(after))
            .order(erasures::request_id.asc())
            .limit(limit)
            .select(record_columns!())
            .load(c))?)
    })?;
    rows.into_iter().map(record_of).collect()
}

/// The routing keys' hashes of `contact_id`, from its identifiers opened with its own
/// key (before that key is destroyed).
fn contact_route_bidxs(
    conn: &mut DbConn,
    vault: &Vault,
    tenant_id: &TenantId,
    contact_id: &ContactId,
) -> Result<Vec<String>, StorageError> {
    // The key id, and the wa_id and BSUID sealed.
    type Sealed = (String, Option<Vec<u8>>, Option<Vec<u8>>);
    let row: Option<Sealed> = on_backend!(conn, c => contacts::table
        .find(contact_id.as_str())
        .filter(contacts::tenant_id.eq(tenant_id.as_str()))
        .select((contacts::key_id, contacts::wa_id_ct, contacts::user_id_ct))
        .get_result(c)
        .optional())?;
    let Some((key_id, wa_id_ct, user_id_ct)) = row else {
        return Ok(Vec::new());
    };
    let Some(key) = super::keys::load_data_key(conn, vault, tenant_id, &key_id)? else {
        return Ok(Vec::new());
    };
    let mut routes = Vec::new();
    for (prefix, column, sealed) in [
        ("w:", "wa_id_ct", wa_id_ct),
        ("u:", "user_id_ct", user_id_ct),
    ] {
        let Some(sealed) = sealed else { continue };
        let place = super::contacts::contact_field(tenant_id.as_str(), column, contact_id.as_str());
        // One that does not open names no route: its rows are found through the other.
        if let Ok(id) = key.open_string(&sealed, &place) {
            routes.push(route_index(vault, tenant_id, &format!("{prefix}{id}")));
        }
    }
    Ok(routes)
}

/// The conversations of `contact_id`: its messages are found through them (messages
/// carry no index by contact).
fn conversation_ids(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    contact_id: &ContactId,
) -> Result<Vec<String>, StorageError> {
    // By contact alone, the tenant checked here: given both, SQLite's planner can take
    // the index that leads with the tenant and read all of the tenant's rows.
    let found: Vec<(String, String)> = on_backend!(conn, c => conversations::table
        .filter(conversations::contact_id.eq(contact_id.as_str()))
        .select((conversations::id, conversations::tenant_id))
        .load(c))?;
    Ok(found
        .into_iter()
        .filter(|(_, tenant)| tenant == tenant_id.as_str())
        .map(|(id, _)| id)
        .collect())
}

#[derive(QueryableByName)]
struct Found {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    value: Option<String>,
}

/// SQLite: the key ids of conversation ?1's messages (?2 empty and ?3 -1: all of
/// them), through the one "messages of a conversation" query.
const CONVERSATION_KEYS_SQLITE: &str = concat!(
    "SELECT DISTINCT key_id AS value FROM messages WHERE id IN (",
    super::sqlite::conversation_index::message_ids_of_conversation!(),
    ")"
);

/// SQLite: up to ?3 message ids of conversation ?1 (?2: after, empty for all).
const CONVERSATION_MESSAGES_SQLITE: &str = concat!(
    "SELECT message_id AS value FROM (",
    super::sqlite::conversation_index::message_ids_of_conversation!(),
    ")"
);

/// The key ids of the messages of `conversations`.
fn message_key_ids(
    conn: &mut DbConn,
    conversations: &[String],
) -> Result<Vec<String>, StorageError> {
    let mut keys = Vec::new();
    match conn {
        DbConn::Sqlite(c) => {
            for conversation in conversations {
                let found: Vec<Found> = diesel::sql_query(CONVERSATION_KEYS_SQLITE)
                    .bind::<diesel::sql_types::Text, _>(conversation)
                    .bind::<diesel::sql_types::Text, _>("")
                    .bind::<diesel::sql_types::BigInt, _>(-1_i64)
                    .load(c)?;
                keys.extend(found.into_iter().filter_map(|f| f.value));
            }
        }
        DbConn::Pg(c) => {
            let found: Vec<Option<String>> = messages::table
                .filter(messages::conversation_id.eq_any(conversations))
                .select(messages::key_id)
                .distinct()
                .load(c)?;
            keys.extend(found.into_iter().flatten());
        }
    }
    Ok(keys)
}

/// Up to `limit` ids of the messages of `conversations`.
fn message_ids(
    conn: &mut DbConn,
    conversations: &[String],
    limit: i64,
) -> Result<Vec<String>, StorageError> {
    match conn {
        DbConn::Sqlite(c) => {
            let mut ids = Vec::new();
            for conversation in conversations {
                let left = limit - ids.len() as i64;
                if left <= 0 {
                    break;
                }
                let found: Vec<Found> = diesel::sql_query(CONVERSATION_MESSAGES_SQLITE)
                    .bind::<diesel::sql_types::Text, _>(conversation)
                    .bind::<diesel::sql_types::Text, _>("")
                    .bind::<diesel::sql_types::BigInt, _>(left)
                    .load(c)?;
                ids.extend(found.into_iter().filter_map(|f| f.value));
            }
            Ok(ids)
        }
        DbConn::Pg(c) => Ok(messages::table
            .filter(messages::conversation_id.eq_any(conversations))
            .select(messages::id)
            .limit(limit)
            .load(c)?),
    }
}

/// The data keys anything of `contact_id` is sealed under: its own, and those of
/// contacts merged into it, which its messages and sends keep.
fn contact_key_ids(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    contact_id: &ContactId,
) -> Result<Vec<String>, StorageError> {
    let tenant = tenant_id.as_str();
    let contact = contact_id.as_str();
    let mut keys: Vec<String> = on_backend!(conn, c => contacts::table
        .find(contact)
        .filter(contacts::tenant_id.eq(tenant))
        .select(contacts::key_id)
        .load(c))?;
    let conversations = conversation_ids(conn, tenant_id, contact_id)?;
    keys.extend(message_key_ids(conn, &conversations)?);
    let of_sends: Vec<String> = on_backend!(conn, c => outbox::table
        .filter(outbox::contact_id.eq(contact))
        .filter(outbox::tenant_id.eq(tenant))
        .select(outbox::key_id)
        .distinct()
        .load(c))?;
    keys.extend(of_sends);
    keys.sort_unstable();
    keys.dedup();
    Ok(keys)
}

/// Makes the subject unreadable: records the erasure with the keys, destroys every
/// data key its data is sealed under, and empties its contact row of identifiers and
/// sealed values (a contact without identifiers is one being erased: nothing finds it
/// or writes to it), with its audit entry. Run again after a crash, it finds its record and does the rest.
pub fn shred(
    conn: &mut DbConn,
    vault: &Vault,
    subject: &Subject<'_>,
    now_ms: i64,
) -> Result<Shredded, StorageError> {
    let tenant_id = subject.tenant_id;
    let (record, recorded) = match find_record(conn, vault, subject.request_id)? {
        Some(record) => (record, false),
        None => {
            // The routes first: once the key is gone, the identifiers cannot be read.
            let mut route_bidxs: Vec<String> =
                subject.route_bidx.map(str::to_string).into_iter().collect();
            if let Some(contact_id) = subject.contact_id {
                route_bidxs.extend(contact_route_bidxs(conn, vault, tenant_id, contact_id)?);
            }
            route_bidxs.sort_unstable();
            route_bidxs.dedup();
            let record = ErasureRecord {
                request_id: subject.request_id.to_string(),
                tenant_id: tenant_id.clone(),
                contact_id: subject.contact_id.cloned(),
                subject_bidx: subject.subject_bidx.to_string(),
                route_bidxs,
                erased_at: now_ms,
            };
            let routes = serde_json::to_string(&record.route_bidxs)
                .map_err(|e| StorageError::Corrupt(e.to_string()))?;
            vault.with_store(conn, |ks| {
                on_backend!(ks, c => diesel::insert_into(erasures::table)
                    .values((
                        erasures::request_id.eq(&record.request_id),
                        erasures::tenant_id.eq(tenant_id.as_str()),
                        erasures::contact_id.eq(record.contact_id.as_ref().map(ContactId::as_str)),
                        erasures::subject_bidx.eq(&record.subject_bidx),
                        erasures::route_bidxs.eq(&routes),
                        erasures::erased_at.eq(now_ms),
                    ))
                    .execute(c))?;
                Ok(())
            })?;
            (record, true)
        }
    };
    let mut keys_destroyed = 0;
    if let Some(contact_id) = &record.contact_id {
        let keys = contact_key_ids(conn, tenant_id, contact_id)?;
        keys_destroyed = destroy_data_keys(conn, vault, tenant_id, &keys, now_ms)?;
        empty_contact(conn, tenant_id, contact_id)?;
    }
    // Once, with the record: a step resumed after a crash finds the keys gone.
    if recorded {
        audit::append(
            conn,
            &audit::NewEntry {
                tenant_id,
                actor: Actor::Compliance,
                action: "subject_keys_destroyed",
                request_id: Some(subject.request_id),
                contact_id: record.contact_id.as_ref().map(ContactId::as_str),
                detail: serde_json::json!({"keys_destroyed": keys_destroyed}),
            },
            now_ms,
        )?;
    }
    Ok(Shredded {
        record,
        keys_destroyed,
    })
}

/// Empties the contact row of every identifier and sealed value (a contact without
/// identifiers is one being erased); returns how many rows it emptied.
fn empty_contact(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    contact_id: &ContactId,
) -> Result<usize, StorageError> {
    Ok(on_backend!(conn, c => diesel::update(contacts::table
        .find(contact_id.as_str())
        .filter(contacts::tenant_id.eq(tenant_id.as_str())))
        .set((
            contacts::wa_id_bidx.eq(None::<String>),
            contacts::user_id_bidx.eq(None::<String>),
            contacts::wa_id_ct.eq(None::<Vec<u8>>),
            contacts::user_id_ct.eq(None::<Vec<u8>>),
            contacts::username_ct.eq(None::<Vec<u8>>),
            contacts::profile_name_ct.eq(None::<Vec<u8>>),
            contacts::crm_ct.eq(None::<Vec<u8>>),
        ))
        .execute(c))?)
}

/// Destroys the tenant's data keys `key_ids` (those not destroyed before); returns how
/// many it destroyed.
fn destroy_data_keys(
    conn: &mut DbConn,
    vault: &Vault,
    tenant_id: &TenantId,
    key_ids: &[String],
    now_ms: i64,
) -> Result<usize, StorageError> {
    vault.with_store(conn, |ks| {
        let mut destroyed = 0;
        for chunk in key_ids.chunks(500) {
            destroyed += on_backend!(ks, c => diesel::update(data_keys::table
                .filter(data_keys::id.eq_any(chunk))
                .filter(data_keys::tenant_id.eq(tenant_id.as_str()))
                .filter(data_keys::destroyed_at.is_null()))
                .set((
                    data_keys::wrapped_key.eq(None::<Vec<u8>>),
                    data_keys::destroyed_at.eq(Some(now_ms)),
                ))
                .execute(c))?;
        }
        Ok(destroyed)
    })
}

/// Where a pass of [`erase_batch`] stands: the raw inbox is gone through by id ranges,
/// since nothing indexes it by subject.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The inbox ids up to this one are done.
    pub inbox_after: i64,
    /// The highest inbox id when the pass over the inbox began.
    pub inbox_end: Option<i64>,
    /// Rows deleted so far, by what they were.
    pub deleted: BTreeMap<&'static str, u64>,
}

/// What [`Progress::deleted`] counts, by the names the counts are kept under.
const COUNTED: [&str; 7] = [
    "messages",
    "sends",
    "automation_runs",
    "raw_payloads",
    "labels",
    "conversations",
    "contacts",
];

/// The name [`Progress::deleted`] counts `what` under, if it is one.
pub fn counted(what: &str) -> Option<&'static str> {
    COUNTED.into_iter().find(|name| *name == what)
}

impl Progress {
    fn count(&mut self, what: &'static str, rows: usize) -> bool {
        if rows > 0 {
            *self.deleted.entry(what).or_default() += rows as u64;
        }
        rows > 0
    }
}

/// How many inbox ids one statement goes through.
const INBOX_WINDOW: i64 = 20_000;
/// How many inbox ids one write goes through at most.
const INBOX_STEP: i64 = 200_000;

/// Deletes the next batch (a step of the pass over the inbox, or at most `limit` rows
/// of a table) of what `record` erases: the subject's raw inbox rows received up to
/// the erasure, the contact's messages (with their statuses, media and sends), its
/// remaining sends, automation runs, labels and reach, conversations, and last its
/// contact row. Returns
/// whether anything is left. On SQLite what it deletes is overwritten in place
/// (`secure_delete`).
pub fn erase_batch(
    conn: &mut DbConn,
    record: &ErasureRecord,
    progress: &mut Progress,
    limit: i64,
) -> Result<bool, StorageError> {
    overwriting_freed(conn, |conn| erase_some(conn, record, progress, limit))
}

/// Runs `f` with SQLite overwriting what it frees (`secure_delete`), so a deleted or
/// replaced value leaves no copy in the file's free space; PostgreSQL's dead rows go
/// with the vacuum.
pub fn overwriting_freed<T>(
    conn: &mut DbConn,
    f: impl FnOnce(&mut DbConn) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    use diesel::connection::SimpleConnection;
    if let DbConn::Sqlite(c) = conn {
        c.batch_execute("PRAGMA main.secure_delete = ON")?;
    }
    let done = f(conn);
    if let DbConn::Sqlite(c) = conn {
        c.batch_execute("PRAGMA main.secure_delete = OFF")?;
    }
    done
}

fn erase_some(
    conn: &mut DbConn,
    record: &ErasureRecord,
    progress: &mut Progress,
    limit: i64,
) -> Result<bool, StorageError> {
    let tenant = record.tenant_id.as_str();
    // The raw rows first: sealed under their day's key, not the contact's, they are
    // what stays readable until deleted.
    if !record.route_bidxs.is_empty() && erase_raw_rows(conn, record, progress)? {
        return Ok(true);
    }
    let Some(contact_id) = &record.contact_id else {
        return Ok(false);
    };
    let contact = contact_id.as_str();
    let conversations = conversation_ids(conn, &record.tenant_id, contact_id)?;
    let ids = message_ids(conn, &conversations, limit)?;
    if !ids.is_empty() {
        // The rows by their ids alone (the tenant's, found through its conversations):
        // with the tenant too, SQLite's planner can take the index that leads with it
        // and read every message of the tenant for each batch.
        for chunk in ids.chunks(500) {
            // A message's send has the message's id.
            delete_sends(conn, chunk, progress)?;
            // Statuses and media go with their message (foreign keys).
            let gone = on_backend!(conn, c => diesel::delete(messages::table
                .filter(messages::id.eq_any(chunk)))
                .execute(c))?;
            progress.count("messages", gone);
        }
        return Ok(true);
    }
    let sends: Vec<String> = on_backend!(conn, c => outbox::table
        .filter(outbox::contact_id.eq(contact))
        .filter(outbox::tenant_id.eq(tenant))
        .limit(limit)
        .select(outbox::id)
        .load(c))?;
    if !sends.is_empty() {
        for chunk in sends.chunks(500) {
            delete_sends(conn, chunk, progress)?;
        }
        return Ok(true);
    }
    // Contact ids are the tenant's own (UUIDs): by contact alone, for the planner.
    let runs: Vec<String> = on_backend!(conn, c => automation_runs::table
        .filter(automation_runs::contact_id.eq(contact))
        .limit(limit)
        .select(automation_runs::id)
        .load(c))?;
    if !runs.is_empty() {
        let gone = on_backend!(conn, c => diesel::delete(automation_runs::table
            .filter(automation_runs::id.eq_any(&runs)))
            .execute(c))?;
        progress.count("automation_runs", gone);
        return Ok(true);
    }
    let labels = on_backend!(conn, c => diesel::delete(contact_labels::table
        .filter(contact_labels::contact_id.eq(contact)))
        .execute(c))?;
    progress.count("labels", labels);
    on_backend!(conn, c => diesel::delete(portfolio_reach::table
        .filter(portfolio_reach::contact_id.eq(contact)))
        .execute(c))?;
    let conversations = on_backend!(conn, c => diesel::delete(conversations::table
        .filter(conversations::contact_id.eq(contact)))
        .execute(c))?;
    progress.count("conversations", conversations);
    let contacts = on_backend!(conn, c => diesel::delete(contacts::table
        .filter(contacts::tenant_id.eq(tenant))
        .filter(contacts::id.eq(contact)))
        .execute(c))?;
    progress.count("contacts", contacts);
    Ok(false)
}

/// Deletes the sends `ids` with their idempotency keys.
fn delete_sends(
    conn: &mut DbConn,
    ids: &[String],
    progress: &mut Progress,
) -> Result<(), StorageError> {
    on_backend!(conn, c => diesel::delete(idempotency_keys::table
        .filter(idempotency_keys::outbox_id.eq_any(ids)))
        .execute(c))?;
    let gone = on_backend!(conn, c => diesel::delete(outbox::table
        .filter(outbox::id.eq_any(ids)))
        .execute(c))?;
    progress.count("sends", gone);
    Ok(())
}

/// One step of the pass over the inbox by id (nothing indexes it by subject): windows
/// of [`INBOX_WINDOW`] ids from the oldest row, skipping those with none of the
/// subject's rows, until one had some or [`INBOX_STEP`] ids were looked at. Rows
/// received after the erasure are the subject writing again: new data, kept. Returns
/// whether the pass goes on.
fn erase_raw_rows(
    conn: &mut DbConn,
    record: &ErasureRecord,
    progress: &mut Progress,
) -> Result<bool, StorageError> {
    let tenant = record.tenant_id.as_str();
    let end = match progress.inbox_end {
        Some(end) => end,
        None => {
            let (first, last): (Option<i64>, Option<i64>) = on_backend!(conn, c => inbox::table
                .select((diesel::dsl::min(inbox::id), diesel::dsl::max(inbox::id)))
                .get_result(c))?;
            progress.inbox_after = first.map_or(0, |first| first - 1);
            *progress.inbox_end.insert(last.unwrap_or(0))
        }
    };
    let stop = progress.inbox_after + INBOX_STEP;
    while progress.inbox_after < end && progress.inbox_after < stop {
        let upto = (progress.inbox_after + INBOX_WINDOW).min(end);
        let gone = on_backend!(conn, c => diesel::delete(inbox::table
            .filter(inbox::id.gt(progress.inbox_after))
            .filter(inbox::id.le(upto))
            .filter(inbox::tenant_id.eq(tenant))
            .filter(inbox::route_bidx.eq_any(&record.route_bidxs))
            .filter(inbox::received_at.le(record.erased_at)))
            .execute(c))?;
        progress.inbox_after = upto;
        if progress.count("raw_payloads", gone) {
            break;
        }
    }
    Ok(progress.inbox_after < end)
}

/// Brings a restored data backup back in line with one erasure record: the contact it
/// erased loses its identifiers and sealed values again (its keys, in the key store,
/// stayed destroyed), and [`erase_batch`] then removes its rows. Returns whether the
/// contact was there.
pub fn reapply(conn: &mut DbConn, record: &ErasureRecord) -> Result<bool, StorageError> {
    let Some(contact_id) = &record.contact_id else {
        return Ok(false);
    };
    let found = empty_contact(conn, &record.tenant_id, contact_id)?;
    Ok(found > 0)
}

/// After an erasure's rows are gone, what the database still holds of them in its
/// files: SQLite's WAL is copied back and truncated (what it deleted was overwritten
/// in place); PostgreSQL's touched tables are vacuumed, so their dead rows' space is
/// reclaimed and reused; the key store's, where the destroyed keys were, likewise.
/// Runs on a connection of its own, outside any transaction.
pub fn compact(conn: &mut DbConn, vault: &Vault) -> Result<(), StorageError> {
    match conn {
        DbConn::Sqlite(c) => {
            #[derive(QueryableByName)]
            struct Checkpoint {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                busy: i64,
            }
            for schema in ["main", "keystore"] {
                let done: Vec<Checkpoint> =
                    diesel::sql_query(format!("PRAGMA {schema}.wal_checkpoint(TRUNCATE)"))
                        .load(c)?;
                if done.first().is_some_and(|row| row.busy != 0) {
                    return Err(StorageError::Unavailable(format!(
                        "the {schema} WAL checkpoint after an erasure was blocked by readers"
                    )));
                }
            }
            Ok(())
        }
        DbConn::Pg(c) => {
            super::without_statement_timeout(c, |c| {
                diesel::connection::SimpleConnection::batch_execute(
                    c,
                    "VACUUM messages, status_events, media_downloads, outbox, idempotency_keys, \
                     automation_runs, inbox, contact_labels, portfolio_reach, conversations, \
                     contacts",
                )
            })?;
            vault.with_store(conn, |ks| match ks {
                DbConn::Pg(c) => Ok(super::without_statement_timeout(c, |c| {
                    diesel::connection::SimpleConnection::batch_execute(
                        c,
                        "VACUUM keystore.data_keys",
                    )
                })?),
                DbConn::Sqlite(_) => Ok(()),
            })
        }
    }
}

/// What [`reapply_all`] found and did.
#[derive(Debug, Default)]
pub struct Reapplied {
    /// Erasure records gone through.
    pub records: usize,
    /// Of their contacts, those the database held again.
    pub contacts_found: usize,
    /// Closed tenants the key store records as purged that the database held again
    /// (purged anew).
    pub tenants_found: usize,
    /// Rows deleted, by what they were.
    pub deleted: BTreeMap<&'static str, u64>,
    /// Whether the database was compacted afterwards (SQLite: not while readers held
    /// the WAL back; its regular checkpoints then do it).
    pub compacted: bool,
}

/// Reconciles the data with every erasure record of the key store (after a data
/// backup was restored): each record's contact is emptied again and its rows deleted,
/// `batch` rows of a table per transaction; a closed tenant recorded as purged is
/// purged again; then the database is compacted. Rows of a
/// subject that wrote again after its erasure (a new contact) are not touched.
pub fn reapply_all(
    conn: &mut DbConn,
    vault: &Vault,
    batch: i64,
    now_ms: i64,
) -> Result<Reapplied, StorageError> {
    let mut done = Reapplied::default();
    let mut after = String::new();
    loop {
        let page = records(conn, vault, &after, 100)?;
        let Some(last) = page.last() else { break };
        after.clone_from(&last.request_id);
        for record in &page {
            done.records += 1;
            if super::write_transaction(conn, |conn| reapply(conn, record))? {
                done.contacts_found += 1;
            }
            let mut progress = Progress::default();
            while super::write_transaction(conn, |conn| {
                erase_batch(conn, record, &mut progress, batch)
            })? {}
            for (what, rows) in progress.deleted {
                *done.deleted.entry(what).or_default() += rows;
            }
        }
    }
    for tenant in super::closure::purged_tenants(conn, vault)? {
        if !super::closure::still_held(conn, &tenant)? {
            continue;
        }
        done.tenants_found += 1;
        let mut progress = 0;
        while let Some((table, rows)) = super::write_transaction(conn, |conn| {
            super::closure::purge_batch(conn, vault, &tenant, &mut progress, batch, now_ms)
        })? {
            *done.deleted.entry(table).or_default() += rows as u64;
        }
    }
    if done.deleted.values().any(|rows| *rows > 0) {
        done.compacted = match compact(conn, vault) {
            Ok(()) => true,
            Err(StorageError::Unavailable(_)) => false,
            Err(e) => return Err(e),
        };
    }
    Ok(done)
}
