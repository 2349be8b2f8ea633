//! Upgrades of stored data that SQL cannot make because they need the master key. They
//! run at start, after the migrations and the master key check and before anything is
//! served; each runs in one transaction and is recorded in `storage_upgrades`, so a
//! crash leaves it undone, to run whole at the next start.
//!
//! `sealed-places` (1) turns the identifiers that sat in clear into keyed hashes:
//! messages' wamids (each sealed beside its hash, under its contact's key) and the
//! inbox's dedupe and routing keys; (2) seals again, bound to its place (tenant,
//! table, column, row), every value sealed in the first format, whose associated data
//! was a bare row id, and wraps every key again likewise; (3) moves raw payloads
//! sealed under the master key's inbox key under the key of the day they arrived, so
//! they expire with it.

use std::collections::HashMap;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use super::apply::{content_place, wamid_place};
use super::contacts::contact_field;
use super::inbox::{payload_place, raw_place};
use super::key_store::Vault;
use super::keys::load_data_key;
use super::on_backend;
use super::raw_keys::{day_of, make_day_key, RawKeys};
use super::schema::{
    contacts, data_keys, inbox, messages, phone_numbers, raw_keys, storage_upgrades, webhook_events,
};
use super::tenants::access_token_place;
use super::{without_statement_timeout, write_transaction, DbConn, StorageError};
use crate::crypto::{is_legacy, Place, SealKey};
use crate::ids::{TenantId, Wamid};

const SEALED_PLACES: &str = "sealed-places";
const PAGE: i64 = 1_000;

/// What an upgrade changed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Upgraded {
    pub keys: usize,
    pub contacts: usize,
    pub messages: usize,
    pub inbox_rows: usize,
    pub raw_payloads: usize,
    pub numbers: usize,
}

/// Runs the upgrades this database has not had; `None` when there were none to run.
/// Afterwards, as a step of its own (recorded, so one that fails or is interrupted is
/// run again at the next start), the tables are rewritten whole so the database keeps
/// no copy of a replaced value in its free space: SQLite's file is vacuumed (its WAL
/// emptied; the space of a second copy of the file is needed meanwhile), PostgreSQL's
/// tables rebuilt and their statistics taken again (`VACUUM (FULL, ANALYZE)`). That
/// takes a while on a large database, once. Meanwhile SQLite overwrites what it frees.
pub fn run(
    conn: &mut DbConn,
    keyring: &Vault,
    now_ms: i64,
) -> Result<Option<Upgraded>, StorageError> {
    if let DbConn::Sqlite(c) = conn {
        c.batch_execute("PRAGMA main.secure_delete = ON")?;
    }
    let upgraded = upgrade_once(conn, keyring, now_ms);
    if let DbConn::Sqlite(c) = conn {
        c.batch_execute("PRAGMA main.secure_delete = OFF")?;
    }
    let upgraded = upgraded?;
    if !is_done(conn, VACUUMED)? {
        match conn {
            DbConn::Sqlite(c) => c.batch_execute("VACUUM main")?,
            DbConn::Pg(c) => without_statement_timeout(c, |c| {
                c.batch_execute(
                    "VACUUM (FULL, ANALYZE) messages, inbox, contacts, webhook_events, \
                     phone_numbers",
                )
            })?,
        }
        mark_done(conn, VACUUMED, now_ms)?;
        if let DbConn::Sqlite(c) = conn {
            c.batch_execute("PRAGMA wal_checkpoint(TRUNCATE)")?;
        }
    }
    Ok(upgraded)
}

/// The rewrite that follows `sealed-places`.
const VACUUMED: &str = "sealed-places-vacuumed";

fn is_done(conn: &mut DbConn, name: &str) -> Result<bool, StorageError> {
    let done: Option<String> = on_backend!(conn, c => storage_upgrades::table
        .find(name)
        .select(storage_upgrades::name)
        .get_result(c)
        .optional())?;
    Ok(done.is_some())
}

fn mark_done(conn: &mut DbConn, name: &str, now_ms: i64) -> Result<(), StorageError> {
    on_backend!(conn, c => diesel::insert_into(storage_upgrades::table)
        .values((
            storage_upgrades::name.eq(name),
            storage_upgrades::done_at.eq(now_ms),
        ))
        .execute(c))?;
    Ok(())
}

fn upgrade_once(
    conn: &mut DbConn,
    keyring: &Vault,
    now_ms: i64,
) -> Result<Option<Upgraded>, StorageError> {
    write_transaction(conn, |conn| {
        if is_done(conn, SEALED_PLACES)? {
            return Ok(None);
        }
        let upgraded = sealed_places(conn, keyring, now_ms)?;
        mark_done(conn, SEALED_PLACES, now_ms)?;
        Ok(Some(upgraded))
    })
}

fn sealed_places(
    conn: &mut DbConn,
    keyring: &Vault,
    now_ms: i64,
) -> Result<Upgraded, StorageError> {
    let mut upgraded = Upgraded {
        keys: rewrap_keys(conn, keyring)?,
        ..Upgraded::default()
    };
    upgraded.numbers = reseal_tokens(conn, keyring)?;
    let mut keys = KeyCache::default();
    upgraded.contacts = reseal_contacts(conn, keyring, &mut keys)?;
    upgraded.messages = upgrade_messages(conn, keyring, &mut keys)?;
    upgraded.inbox_rows = upgrade_inbox(conn, keyring, now_ms)?;
    upgraded.raw_payloads = reseal_raw_payloads(conn, keyring, now_ms)?;
    Ok(upgraded)
}

/// Data keys and day keys, wrapped again bound to their place, wherever the key store
/// is (in a key store database of its own, committed before the data's upgrade: run
/// again, it finds them done and the data opens under them).
fn rewrap_keys(conn: &mut DbConn, keyring: &Vault) -> Result<usize, StorageError> {
    keyring.with_store(conn, |conn| rewrap_keys_in_store(conn, keyring))
}

fn rewrap_keys_in_store(conn: &mut DbConn, keyring: &Vault) -> Result<usize, StorageError> {
    let mut count = 0;
    type KeyRow = (String, String, Option<Vec<u8>>);
    let rows: Vec<KeyRow> = on_backend!(conn, c => data_keys::table
        .select((data_keys::id, data_keys::tenant_id, data_keys::wrapped_key))
        .load(c))?;
    for (id, tenant, wrapped) in rows {
        let Some(wrapped) = wrapped.filter(|w| is_legacy(w)) else {
            continue;
        };
        let place = Place::new(&tenant, "data_keys", "wrapped_key", &id);
        let rewrapped = keyring.rewrap_legacy(&id, &wrapped, &place)?.wrapped;
        on_backend!(conn, c => diesel::update(data_keys::table.find(&id))
            .set(data_keys::wrapped_key.eq(&rewrapped))
            .execute(c))?;
        count += 1;
    }
    let days: Vec<(String, Option<Vec<u8>>)> = on_backend!(conn, c => raw_keys::table
        .select((raw_keys::day, raw_keys::wrapped_key))
        .load(c))?;
    for (day, wrapped) in days {
        let Some(wrapped) = wrapped.filter(|w| is_legacy(w)) else {
            continue;
        };
        let place = Place::new("", "raw_keys", "wrapped_key", &day);
        let legacy_id = format!("raw-day:{day}");
        let rewrapped = keyring.rewrap_legacy(&legacy_id, &wrapped, &place)?.wrapped;
        on_backend!(conn, c => diesel::update(raw_keys::table.find(&day))
            .set(raw_keys::wrapped_key.eq(&rewrapped))
            .execute(c))?;
        count += 1;
    }
    Ok(count)
}

/// Meta access tokens, sealed again bound to their place.
fn reseal_tokens(conn: &mut DbConn, keyring: &Vault) -> Result<usize, StorageError> {
    let rows: Vec<(String, String, Vec<u8>)> = on_backend!(conn, c => phone_numbers::table
        .select((phone_numbers::phone_number_id, phone_numbers::tenant_id,
                 phone_numbers::access_token_ct))
        .load(c))?;
    let mut count = 0;
    for (number, tenant, sealed) in rows {
        if !is_legacy(&sealed) {
            continue;
        }
        let plain = keyring.secrets().open_legacy(&sealed, number.as_bytes())?;
        let resealed = keyring
            .secrets()
            .seal(&plain, &access_token_place(&tenant, &number))?;
        on_backend!(conn, c => diesel::update(phone_numbers::table.find(&number))
            .set(phone_numbers::access_token_ct.eq(&resealed))
            .execute(c))?;
        count += 1;
    }
    Ok(count)
}

/// Unwrapped data keys, by id; bounded, since a database may hold millions.
#[derive(Default)]
struct KeyCache(HashMap<String, Option<SealKey>>);

impl KeyCache {
    fn get(
        &mut self,
        conn: &mut DbConn,
        keyring: &Vault,
        tenant: &str,
        key_id: &str,
    ) -> Result<Option<SealKey>, StorageError> {
        if let Some(known) = self.0.get(key_id) {
            return Ok(known.clone());
        }
        if self.0.len() >= 10_000 {
            self.0.clear();
        }
        let key = load_data_key(conn, keyring, &TenantId(tenant.to_string()), key_id)?;
        self.0.insert(key_id.to_string(), key.clone());
        Ok(key)
    }
}

/// Seals `sealed` again for `place` if it is in the first format (bound to
/// `legacy_aad`); `None` when it needs nothing.
fn reseal(
    key: &SealKey,
    sealed: &[u8],
    legacy_aad: &str,
    place: &Place<'_>,
) -> Result<Option<Vec<u8>>, StorageError> {
    if !is_legacy(sealed) {
        return Ok(None);
    }
    let plain = key.open_legacy(sealed, legacy_aad.as_bytes())?;
    Ok(Some(key.seal(&plain, place)?))
}

fn reseal_contacts(
    conn: &mut DbConn,
    keyring: &Vault,
    keys: &mut KeyCache,
) -> Result<usize, StorageError> {
    type Sealed = Option<Vec<u8>>;
    type Row = (String, String, String, Sealed, Sealed, Sealed, Sealed);
    const COLUMNS: [&str; 4] = ["wa_id_ct", "user_id_ct", "username_ct", "profile_name_ct"];
    let mut after = String::new();
    let mut count = 0;
    loop {
        let page: Vec<Row> = on_backend!(conn, c => contacts::table
            .filter(contacts::id.gt(&after))
            .order(contacts::id.asc())
            .limit(PAGE)
            .select((contacts::id, contacts::tenant_id, contacts::key_id,
                     contacts::wa_id_ct, contacts::user_id_ct, contacts::username_ct,
                     contacts::profile_name_ct))
            .load(c))?;
        let Some(last) = page.last() else {
            return Ok(count);
        };
        after = last.0.clone();
        for (id, tenant, key_id, wa, user, username, name) in page {
            let Some(key) = keys.get(conn, keyring, &tenant, &key_id)? else {
                continue;
            };
            let mut fields = [wa, user, username, name];
            for (column, field) in COLUMNS.into_iter().zip(fields.iter_mut()) {
                if let Some(sealed) = field {
                    let place = contact_field(&tenant, column, &id);
                    if let Some(new) = reseal(&key, sealed, &id, &place)? {
                        *sealed = new;
                    }
                }
            }
            let [wa, user, username, name] = fields;
            on_backend!(conn, c => diesel::update(contacts::table.find(&id))
                .set((
                    contacts::wa_id_ct.eq(wa),
                    contacts::user_id_ct.eq(user),
                    contacts::username_ct.eq(username),
                    contacts::profile_name_ct.eq(name),
                ))
                .execute(c))?;
            count += 1;
        }
    }
}

/// Every message: its wamid hashed and sealed (under the key its content names, or
/// its contact's for a record without content), its content sealed again.
fn upgrade_messages(
    conn: &mut DbConn,
    keyring: &Vault,
    keys: &mut KeyCache,
) -> Result<usize, StorageError> {
    type Row = (
        String,
        String,
        String,
        Option<String>,
        Option<Vec<u8>>,
        Option<String>,
    );
    let mut after = String::new();
    let mut count = 0;
    loop {
        let page: Vec<Row> = on_backend!(conn, c => messages::table
            .left_join(contacts::table.on(contacts::id.eq(messages::contact_id)))
            .filter(messages::id.gt(&after))
            .order(messages::id.asc())
            .limit(PAGE)
            .select((messages::id, messages::tenant_id, messages::wamid_bidx,
                     messages::key_id, messages::content_ct, contacts::key_id.nullable()))
            .load(c))?;
        let Some(last) = page.last() else {
            return Ok(count);
        };
        after = last.0.clone();
        for (id, tenant, wamid, key_id, content_ct, contact_key_id) in page {
            let bidx = keyring.wamid_index(&tenant, &Wamid(wamid.clone()));
            let key_id = key_id.or(contact_key_id);
            let key = match &key_id {
                Some(key_id) => keys.get(conn, keyring, &tenant, key_id)?,
                None => None,
            };
            let (wamid_ct, content_ct) = match &key {
                Some(key) => {
                    let wamid_ct = key.seal(wamid.as_bytes(), &wamid_place(&tenant, &bidx))?;
                    let content = match &content_ct {
                        Some(sealed) => {
                            reseal(key, sealed, &id, &content_place(&tenant, &id))?.or(content_ct)
                        }
                        None => None,
                    };
                    (Some(wamid_ct), content)
                }
                // The contact's key is destroyed: nothing of it can be read, nor sealed.
                None => (None, content_ct),
            };
            on_backend!(conn, c => diesel::update(messages::table.find(&id))
                .set((
                    messages::wamid_bidx.eq(&bidx),
                    messages::wamid_ct.eq(&wamid_ct),
                    messages::key_id.eq(&key_id),
                    messages::content_ct.eq(&content_ct),
                ))
                .execute(c))?;
            count += 1;
        }
    }
}

/// The day key a raw payload goes under: its own day's, or for one from before day
/// keys the key of the day it arrived (made if need be), so it expires with that day.
/// Called only for a payload that opened, so a named day's key exists.
fn day_key(
    conn: &mut DbConn,
    keyring: &Vault,
    days: &RawKeys,
    key_day: Option<&str>,
    received_at: i64,
    now_ms: i64,
) -> Result<(String, SealKey), StorageError> {
    let day = match key_day {
        Some(day) => day.to_string(),
        None => day_of(received_at.min(now_ms)),
    };
    if let Some(key) = days.for_day(conn, keyring, &day)? {
        return Ok((day, key));
    }
    match make_day_key(conn, keyring, &day, now_ms) {
        Ok(key) => Ok((day, key)),
        // That day's key is destroyed already (its other payloads expired), yet this
        // one is still held: today's key keeps it readable.
        Err(_) => {
            let today = day_of(now_ms);
            let key = make_day_key(conn, keyring, &today, now_ms)?;
            Ok((today, key))
        }
    }
}

/// A raw payload in the first format, opened: under its day's key, or the master key's
/// inbox key for one from before day keys. `None` when it opens under neither (it was
/// unreadable before the upgrade too, and stays as it was).
fn open_legacy_raw(
    conn: &mut DbConn,
    keyring: &Vault,
    days: &RawKeys,
    key_day: Option<&str>,
    sealed: &[u8],
    legacy_aad: &str,
) -> Result<Option<Vec<u8>>, StorageError> {
    let key = match key_day {
        Some(day) => days.for_day(conn, keyring, day)?,
        None => Some(keyring.legacy_inbox().clone()),
    };
    Ok(key.and_then(|key| key.open_legacy(sealed, legacy_aad.as_bytes()).ok()))
}

fn upgrade_inbox(conn: &mut DbConn, keyring: &Vault, now_ms: i64) -> Result<usize, StorageError> {
    type Row = (i64, String, String, String, Vec<u8>, Option<String>, i64);
    let days = RawKeys::default();
    let mut after = 0;
    let mut count = 0;
    loop {
        let page: Vec<Row> = on_backend!(conn, c => inbox::table
            .filter(inbox::id.gt(after))
            .order(inbox::id.asc())
            .limit(PAGE)
            .select((inbox::id, inbox::tenant_id, inbox::dedupe_bidx, inbox::route_bidx,
                     inbox::payload_ct, inbox::key_day, inbox::received_at))
            .load(c))?;
        let Some(last) = page.last() else {
            return Ok(count);
        };
        after = last.0;
        for (id, tenant, dedupe_key, route_key, payload_ct, key_day, received_at) in page {
            let dedupe_bidx = keyring.blind_index(&tenant, "inbox.dedupe", &dedupe_key);
            let route_bidx =
                super::inbox::route_index(keyring, &TenantId(tenant.clone()), &route_key);
            let mut payload = (payload_ct, key_day);
            if is_legacy(&payload.0) {
                let opened = open_legacy_raw(
                    conn,
                    keyring,
                    &days,
                    payload.1.as_deref(),
                    &payload.0,
                    &dedupe_key,
                )?;
                if let Some(plain) = opened {
                    let (day, key) = day_key(
                        conn,
                        keyring,
                        &days,
                        payload.1.as_deref(),
                        received_at,
                        now_ms,
                    )?;
                    let sealed = key.seal(&plain, &payload_place(&tenant, &dedupe_bidx))?;
                    payload = (sealed, Some(day));
                }
            }
            on_backend!(conn, c => diesel::update(inbox::table.find(id))
                .set((
                    inbox::dedupe_bidx.eq(&dedupe_bidx),
                    inbox::route_bidx.eq(&route_bidx),
                    inbox::payload_ct.eq(&payload.0),
                    inbox::key_day.eq(&payload.1),
                ))
                .execute(c))?;
            count += 1;
        }
    }
}

fn reseal_raw_payloads(
    conn: &mut DbConn,
    keyring: &Vault,
    now_ms: i64,
) -> Result<usize, StorageError> {
    type Row = (String, Option<String>, Vec<u8>, Option<String>, i64);
    let days = RawKeys::default();
    let mut after = String::new();
    let mut count = 0;
    loop {
        let page: Vec<Row> = on_backend!(conn, c => webhook_events::table
            .filter(webhook_events::id.gt(&after))
            .order(webhook_events::id.asc())
            .limit(PAGE)
            .select((webhook_events::id, webhook_events::tenant_id, webhook_events::payload_ct,
                     webhook_events::key_day, webhook_events::received_at))
            .load(c))?;
        let Some(last) = page.last() else {
            return Ok(count);
        };
        after = last.0.clone();
        for (id, tenant, payload_ct, key_day, received_at) in page {
            if !is_legacy(&payload_ct) {
                continue;
            }
            let Some(plain) =
                open_legacy_raw(conn, keyring, &days, key_day.as_deref(), &payload_ct, &id)?
            else {
                continue;
            };
            let (day, key) = day_key(
                conn,
                keyring,
                &days,
                key_day.as_deref(),
                received_at,
                now_ms,
            )?;
            let place = raw_place(tenant.as_deref().unwrap_or_default(), &id);
            let sealed = key.seal(&plain, &place)?;
            on_backend!(conn, c => diesel::update(webhook_events::table.find(&id))
                .set((
                    webhook_events::payload_ct.eq(&sealed),
                    webhook_events::key_day.eq(Some(&day)),
                ))
                .execute(c))?;
            count += 1;
        }
    }
}
