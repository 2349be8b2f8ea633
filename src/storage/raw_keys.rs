//! The keys of raw payloads, one per day. Whatever is kept as Meta sent it (inbox
//! events waiting to be applied, updates for numbers no tenant owns, content that is
//! not an event) is sealed under the key of the day it arrived, held in the key store.
//! Once a day is older than `inbox.keep_raw_days`, its payloads in `webhook_events` are
//! deleted and its key destroyed, so no copy of them, in any backup, stays readable
//! for longer. An inbox row still waiting to be applied, or parked, keeps its day's key
//! alive until it is applied or retried, so nothing acknowledged becomes unreadable;
//! such rows are counted as overdue.

use std::collections::HashMap;
use std::sync::RwLock;

use diesel::prelude::*;

use super::key_store::Vault;
use super::on_backend;
use super::schema::{inbox, raw_keys, webhook_events};
use super::{DbConn, StorageError};
use crate::crypto::SealKey;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// A day's key, with the day it belongs to (stored beside what it sealed).
#[derive(Debug, Clone)]
pub struct DayKey {
    pub day: String,
    pub key: SealKey,
}

/// The UTC day of `ms` as `YYYY-MM-DD`.
pub fn day_of(ms: i64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .map(|t| t.date())
        .unwrap_or(time::Date::MIN);
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// The day keys in use, cached: sealing a payload must not cost a database read.
#[derive(Debug, Default)]
pub struct RawKeys {
    cache: RwLock<HashMap<String, SealKey>>,
}

impl RawKeys {
    pub fn cached(&self, day: &str) -> Option<DayKey> {
        let cache = self.cache.read().ok()?;
        cache.get(day).map(|key| DayKey {
            day: day.to_string(),
            key: key.clone(),
        })
    }

    fn remember(&self, day: &str, key: &SealKey) {
        if let Ok(mut cache) = self.cache.write() {
            cache.insert(day.to_string(), key.clone());
        }
    }

    fn forget(&self, days: &[String]) {
        if let Ok(mut cache) = self.cache.write() {
            for day in days {
                cache.remove(day);
            }
        }
    }

    /// The key of `day`, to open what it sealed; `None` once destroyed (or never made).
    pub fn for_day(
        &self,
        conn: &mut DbConn,
        keyring: &Vault,
        day: &str,
    ) -> Result<Option<SealKey>, StorageError> {
        if let Some(known) = self.cached(day) {
            return Ok(Some(known.key));
        }
        let wrapped: Option<Option<Vec<u8>>> = keyring.with_store(conn, |conn| {
            Ok(on_backend!(conn, c => raw_keys::table
                .find(day)
                .select(raw_keys::wrapped_key)
                .get_result::<Option<Vec<u8>>>(c)
                .optional())?)
        })?;
        match wrapped.flatten() {
            Some(wrapped) => {
                let key = keyring.unwrap_raw_key(day, &wrapped)?;
                self.remember(day, &key);
                Ok(Some(key))
            }
            None => Ok(None),
        }
    }

    /// Remembers a day's key once it is committed.
    pub fn remember_committed(&self, day: &DayKey) {
        self.remember(&day.day, &day.key);
    }
}

/// The key of `day`, made when it does not exist yet; inside the caller's transaction,
/// which must commit before anything is sealed under the key (the writer runs this as
/// a write of its own, and seals in a later one). Another process may have made the
/// day's key first: the stored one holds.
pub fn make_day_key(
    conn: &mut DbConn,
    keyring: &Vault,
    day: &str,
    now_ms: i64,
) -> Result<SealKey, StorageError> {
    keyring.with_store(conn, |conn| {
        make_day_key_in_store(conn, keyring, day, now_ms)
    })
}

fn make_day_key_in_store(
    conn: &mut DbConn,
    keyring: &Vault,
    day: &str,
    now_ms: i64,
) -> Result<SealKey, StorageError> {
    let stored = |conn: &mut DbConn| -> Result<Option<Option<Vec<u8>>>, StorageError> {
        Ok(on_backend!(conn, c => raw_keys::table
            .find(day)
            .select(raw_keys::wrapped_key)
            .get_result::<Option<Vec<u8>>>(c)
            .optional())?)
    };
    if stored(conn)?.is_none() {
        let fresh = keyring.new_raw_key(day)?;
        let values = (
            raw_keys::day.eq(day),
            raw_keys::wrapped_key.eq(&fresh.wrapped),
            raw_keys::created_at.eq(now_ms),
        );
        match conn {
            DbConn::Sqlite(c) => diesel::insert_into(raw_keys::table)
                .values(values)
                .on_conflict_do_nothing()
                .execute(c)?,
            DbConn::Pg(c) => diesel::insert_into(raw_keys::table)
                .values(values)
                .on_conflict_do_nothing()
                .execute(c)?,
        };
    }
    match stored(conn)?.flatten() {
        Some(wrapped) => Ok(keyring.unwrap_raw_key(day, &wrapped)?),
        None => Err(StorageError::Corrupt(format!(
            "the raw payload key of {day} is destroyed"
        ))),
    }
}

/// What [`expire`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expired {
    /// Raw payloads deleted from `webhook_events`.
    pub deleted: usize,
    /// Day keys destroyed.
    pub destroyed: Vec<String>,
    /// Inbox rows waiting (or parked) for longer than the period, keeping their day's
    /// key alive.
    pub overdue: i64,
}

/// Deletes the raw payloads of days older than `keep_days` and destroys their keys,
/// except the keys of days whose inbox rows still wait to be applied.
pub fn expire(
    conn: &mut DbConn,
    keyring: &Vault,
    keys: &RawKeys,
    now_ms: i64,
    keep_days: u32,
) -> Result<Expired, StorageError> {
    let kept_from_ms = now_ms.saturating_sub(i64::from(keep_days).saturating_mul(DAY_MS));
    let kept_from_day = day_of(kept_from_ms);
    // A savepoint inside the writer's batch; a transaction of its own elsewhere.
    let expired = conn.transaction::<_, StorageError, _>(|conn| {
        let deleted = on_backend!(conn, c => diesel::delete(webhook_events::table.filter(
            webhook_events::key_day.lt(&kept_from_day).or(
                webhook_events::key_day.is_null().and(webhook_events::received_at.lt(kept_from_ms)),
            ),
        ))
        .execute(c))?;
        let waiting: Vec<Option<String>> = on_backend!(conn, c => inbox::table
            .filter(inbox::processed_at.is_null())
            .filter(inbox::key_day.lt(&kept_from_day))
            .select(inbox::key_day)
            .distinct()
            .load(c))?;
        let waiting: Vec<String> = waiting.into_iter().flatten().collect();
        // After the payloads are gone (in the same transaction when the key store
        // is the data's; otherwise a crash between leaves keys to destroy next time).
        let destroyed = keyring.with_store(conn, |conn| {
            let doomed: Vec<String> = on_backend!(conn, c => raw_keys::table
                .filter(raw_keys::day.lt(&kept_from_day))
                .filter(raw_keys::destroyed_at.is_null())
                .select(raw_keys::day)
                .load(c))?;
            let destroyed: Vec<String> = doomed
                .into_iter()
                .filter(|day| !waiting.contains(day))
                .collect();
            if !destroyed.is_empty() {
                on_backend!(conn, c => diesel::update(raw_keys::table.filter(raw_keys::day.eq_any(&destroyed)))
                    .set((
                        raw_keys::wrapped_key.eq(None::<Vec<u8>>),
                        raw_keys::destroyed_at.eq(Some(now_ms)),
                    ))
                    .execute(c))?;
            }
            Ok(destroyed)
        })?;
        let overdue: i64 = on_backend!(conn, c => inbox::table
            .filter(inbox::processed_at.is_null())
            .filter(inbox::received_at.lt(kept_from_ms))
            .count()
            .get_result(c))?;
        Ok(Expired {
            deleted,
            destroyed,
            overdue,
        })
    })?;
    keys.forget(&expired.destroyed);
    Ok(expired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_calendar_days() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(1_764_979_199_999), "2025-12-05");
        assert_eq!(day_of(1_764_979_200_000), "2025-12-06");
        assert_eq!(day_of(-1), "1969-12-31");
    }
}
