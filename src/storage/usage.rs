//! Each tenant's usage by UTC day (`usage_daily`): inbound messages, sends accepted by
//! kind, automation runs and failed sends, counted in the transaction that does each
//! of them, so the counts are exact and survive the messages' own expiry.

use diesel::prelude::*;
use diesel::upsert::excluded;

use super::on_backend;
use super::schema::usage_daily;
use super::{DbConn, StorageError};
use crate::ids::TenantId;

/// Inbound messages applied.
pub const INBOUND: &str = "inbound";
/// Automation runs (a confirmation, a rule's reply), whether their reply was stored
/// or refused by a rule (an automation held back by its cooldown did not run).
pub const AUTOMATION_RUNS: &str = "automation_runs";
/// Sends that failed for good.
pub const FAILURES: &str = "failures";
/// Sends accepted, by Meta's type name: `outbound:text`, `outbound:template`, ...
pub const OUTBOUND_PREFIX: &str = "outbound:";

const DAY_MS: i64 = 86_400_000;

/// The UTC day (days since 1970-01-01) of a time in milliseconds.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// Adds `count` to `metric` of `tenant_id` on the day of `at_ms`.
pub fn add(
    conn: &mut DbConn,
    tenant_id: &str,
    at_ms: i64,
    metric: &str,
    count: i64,
) -> Result<(), StorageError> {
    if count == 0 {
        return Ok(());
    }
    on_backend!(conn, c => diesel::insert_into(usage_daily::table)
        .values((
            usage_daily::tenant_id.eq(tenant_id),
            usage_daily::day.eq(day_of(at_ms)),
            usage_daily::metric.eq(metric),
            usage_daily::count.eq(count),
        ))
        .on_conflict((usage_daily::tenant_id, usage_daily::day, usage_daily::metric))
        .do_update()
        .set(usage_daily::count.eq(usage_daily::count + excluded(usage_daily::count)))
        .execute(c))?;
    Ok(())
}

/// The counts of `tenant_id` from day `from` to day `to` (both included): (day,
/// metric, count), by day.
pub fn usage(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    from: i64,
    to: i64,
) -> Result<Vec<(i64, String, i64)>, StorageError> {
    Ok(on_backend!(conn, c => usage_daily::table
        .filter(usage_daily::tenant_id.eq(tenant_id.as_str()))
        .filter(usage_daily::day.between(from, to))
        .order((usage_daily::day.asc(), usage_daily::metric.asc()))
        .select((usage_daily::day, usage_daily::metric, usage_daily::count))
        .load(c))?)
}
