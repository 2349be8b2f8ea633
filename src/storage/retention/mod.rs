//! Retention in the database: each tenant's own periods (`retention_policies`), the
//! rows of a category past its period (counted, or deleted a bounded batch at a time)
//! and the record of every sweep (`retention_runs`), and the sweep itself ([`sweep`]).

pub mod sweep;

use diesel::prelude::*;

use super::on_backend;
use super::schema::{
    audit_log, automation_runs, conversations, disclosures, email_outbox, idempotency_keys, inbox,
    media_downloads, messages, outbox, retention_policies, retention_runs, tenants, usage_daily,
    webhook_events,
};
use super::{DbConn, StorageError};
use crate::ids::TenantId;
use crate::retention::{Category, Changes, Deleted, Policies};

/// The tenant's own periods (a category missing follows the operator's default).
pub fn policies(conn: &mut DbConn, tenant_id: &TenantId) -> Result<Policies, StorageError> {
    let rows: Vec<(String, i64)> = on_backend!(conn, c => retention_policies::table
        .filter(retention_policies::tenant_id.eq(tenant_id.as_str()))
        .select((retention_policies::category, retention_policies::days))
        .load(c))?;
    let mut policies = Policies::default();
    for (name, days) in rows {
        // A category this build does not know (written by a newer one) is left alone.
        if let (Some(category), Ok(days)) = (Category::parse(&name), u32::try_from(days)) {
            policies.days.insert(category, days);
        }
    }
    Ok(policies)
}

/// Sets the categories in `changes`; `None` returns one to the operator's default.
/// The tenant's audit log records the change.
pub fn change_policies(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    changes: &Changes,
    now_ms: i64,
) -> Result<(), StorageError> {
    let detail: serde_json::Map<String, serde_json::Value> = changes
        .iter()
        .map(|(category, days)| (category.as_str().to_string(), serde_json::json!(days)))
        .collect();
    super::audit::append(
        conn,
        &super::audit::NewEntry {
            tenant_id,
            actor: super::audit::Actor::Api,
            action: "retention_policy_changed",
            request_id: None,
            contact_id: None,
            detail: serde_json::Value::Object(detail),
        },
        now_ms,
    )?;
    for (category, days) in changes {
        let name = category.as_str();
        match days {
            Some(days) => {
                let days = i64::from(*days);
                on_backend!(conn, c => diesel::insert_into(retention_policies::table)
                    .values((
                        retention_policies::tenant_id.eq(tenant_id.as_str()),
                        retention_policies::category.eq(name),
                        retention_policies::days.eq(days),
                        retention_policies::updated_at.eq(now_ms),
                    ))
                    .on_conflict((retention_policies::tenant_id, retention_policies::category))
                    .do_update()
                    .set((
                        retention_policies::days.eq(days),
                        retention_policies::updated_at.eq(now_ms),
                    ))
                    .execute(c))?;
            }
            None => {
                on_backend!(conn, c => diesel::delete(retention_policies::table
                    .filter(retention_policies::tenant_id.eq(tenant_id.as_str()))
                    .filter(retention_policies::category.eq(name)))
                    .execute(c))?;
            }
        }
    }
    Ok(())
}

/// A table's rows of the tenant past the cutoff, written once for the count (a dry
/// run) and for the delete (a real run), so the two never disagree.
macro_rules! expired {
    (messages, $tenant:expr, $cutoff:expr) => {
        messages::table
            .filter(messages::tenant_id.eq($tenant))
            .filter(messages::sent_at.lt($cutoff))
            // A send still queued or in flight keeps its message until it ends.
            .filter(diesel::dsl::not(diesel::dsl::exists(
                outbox::table
                    .filter(outbox::id.eq(messages::id))
                    .filter(outbox::state.eq_any(super::outbox::UNFINISHED)),
            )))
    };
    (media_downloads, $tenant:expr, $cutoff:expr) => {
        media_downloads::table
            .filter(media_downloads::tenant_id.eq($tenant))
            // A download still pending is in use: only its outcome can go.
            .filter(media_downloads::state.ne(super::media::PENDING))
            .filter(media_downloads::created_at.lt($cutoff))
    };
    (conversations, $tenant:expr, $cutoff:expr) => {
        conversations::table
            .filter(conversations::tenant_id.eq($tenant))
            .filter(conversations::closed_at.lt($cutoff))
    };
    (inbox, $tenant:expr, $cutoff:expr) => {
        inbox::table
            .filter(inbox::tenant_id.eq($tenant))
            .filter(inbox::processed_at.is_not_null())
            .filter(inbox::received_at.lt($cutoff))
    };
    (webhook_events, $tenant:expr, $cutoff:expr) => {
        webhook_events::table
            .filter(webhook_events::tenant_id.eq($tenant))
            .filter(webhook_events::received_at.lt($cutoff))
    };
    (automation_runs, $tenant:expr, $cutoff:expr) => {
        automation_runs::table
            .filter(automation_runs::tenant_id.eq($tenant))
            .filter(automation_runs::ran_at.lt($cutoff))
    };
    (usage_daily, $tenant:expr, $cutoff:expr) => {
        usage_daily::table
            .filter(usage_daily::tenant_id.eq($tenant))
            .filter(usage_daily::day.lt(whole_days_before($cutoff)))
    };
    (outbox, $tenant:expr, $cutoff:expr) => {
        outbox::table
            .filter(outbox::tenant_id.eq($tenant))
            .filter(outbox::state.eq_any(super::outbox::FINISHED))
            .filter(outbox::accepted_at.lt($cutoff))
    };
    (idempotency_keys, $tenant:expr, $cutoff:expr) => {
        idempotency_keys::table
            .filter(idempotency_keys::tenant_id.eq($tenant))
            .filter(idempotency_keys::created_at.lt($cutoff))
            // A key whose send still waits stays: a client's retry must not send it
            // twice.
            .filter(diesel::dsl::not(diesel::dsl::exists(
                outbox::table
                    .filter(outbox::id.eq(idempotency_keys::outbox_id))
                    .filter(outbox::state.eq_any(super::outbox::UNFINISHED)),
            )))
    };
    (audit_log, $tenant:expr, $cutoff:expr) => {
        audit_log::table
            .filter(audit_log::tenant_id.eq($tenant))
            .filter(audit_log::at.lt($cutoff))
    };
    (disclosures, $tenant:expr, $cutoff:expr) => {
        disclosures::table
            .filter(disclosures::tenant_id.eq($tenant))
            .filter(disclosures::recorded_at.lt($cutoff))
            // One whose account holders are still not to be told stays until the
            // operator lifts the bar (and they are told).
            .filter(
                disclosures::notify
                    .eq(true)
                    .or(disclosures::lifted_at.is_not_null()),
            )
    };
    (email_outbox, $tenant:expr, $cutoff:expr) => {
        email_outbox::table
            .filter(email_outbox::tenant_id.eq($tenant))
            .filter(email_outbox::state.eq_any(super::email::FINISHED))
            .filter(email_outbox::created_at.lt($cutoff))
    };
    (retention_runs, $tenant:expr, $cutoff:expr) => {
        retention_runs::table
            .filter(retention_runs::tenant_id.eq($tenant))
            // A real run never finished is the next sweep's to finish (perhaps this
            // one's); a dry run never finished (stopped) goes by its start.
            .filter(
                retention_runs::finished_at
                    .lt($cutoff)
                    .or(retention_runs::finished_at
                        .is_null()
                        .and(retention_runs::dry_run.eq(true))
                        .and(retention_runs::started_at.lt($cutoff))),
            )
    };
}

/// How many rows of `category` of the tenant are older than `cutoff_ms`.
pub fn count_expired(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    category: Category,
    cutoff_ms: i64,
) -> Result<u64, StorageError> {
    let tenant = tenant_id.as_str();
    macro_rules! count {
        ($table:ident) => {{
            let rows: i64 =
                on_backend!(conn, c => expired!($table, tenant, cutoff_ms).count().get_result(c))?;
            rows
        }};
    }
    let count = match category {
        Category::Messages => count!(messages),
        Category::Media => count!(media_downloads),
        Category::ClosedConversations => count!(conversations),
        Category::RawPayloads => count!(inbox) + count!(webhook_events),
        Category::AutomationRuns => count!(automation_runs) + count!(usage_daily),
        Category::Technical => count!(outbox) + count!(idempotency_keys) + count!(email_outbox),
        // The audit log, and the sweeps' own records (what was deleted when).
        Category::Audit => count!(audit_log) + count!(disclosures) + count!(retention_runs),
        // Kept by the compliance work, which does not store them yet.
        Category::Exports => 0,
    };
    Ok(count.max(0) as u64)
}

/// Tenants whose row is gone (purged after their account closed) while their audit
/// entries, emails or disclosures are kept for their periods.
pub fn gone_tenants(conn: &mut DbConn) -> Result<Vec<TenantId>, StorageError> {
    let mut named = std::collections::BTreeSet::new();
    macro_rules! named_in {
        ($table:ident) => {
            named.extend(on_backend!(conn, c => $table::table
                .select($table::tenant_id)
                .distinct()
                .load::<String>(c))?)
        };
    }
    named_in!(audit_log);
    named_in!(email_outbox);
    named_in!(disclosures);
    let live: std::collections::HashSet<String> =
        on_backend!(conn, c => tenants::table.select(tenants::id).load::<String>(c))?
            .into_iter()
            .collect();
    Ok(named
        .into_iter()
        .filter(|tenant| !live.contains(tenant))
        .map(TenantId)
        .collect())
}

/// A usage day counts as past `cutoff_ms` once all of it is.
fn whole_days_before(cutoff_ms: i64) -> i64 {
    super::usage::day_of(cutoff_ms)
}

/// Deletes at most `limit` of `$table`'s expired rows of the tenant: their `$key`s
/// read first, then deleted by key, since a `DELETE` cannot carry a `LIMIT` on both
/// backends. Returns how many.
macro_rules! delete_expired_rows {
    ($conn:expr, $table:ident, $key:ident: $ty:ty, $tenant:expr, $cutoff:expr, $limit:expr) => {{
        let mut keys: Vec<$ty> = on_backend!($conn, c => expired!($table, $tenant, $cutoff)
            .select($table::$key)
            .limit($limit)
            .load(c))?;
        // In key order, as the pass over messages takes them: two sweeps at once (the
        // daemon's and an operator's) then lock rows in the same order.
        keys.sort_unstable();
        let mut deleted = 0;
        // A few hundred keys a statement keep every backend's limit on bound values.
        for chunk in keys.chunks(500) {
            // The tenant again: idempotency keys are unique only within one.
            deleted += on_backend!($conn, c => diesel::delete($table::table
                .filter($table::tenant_id.eq($tenant))
                .filter($table::$key.eq_any(chunk)))
                .execute(c))?;
        }
        deleted
    }};
}

/// Deletes at most `limit` rows of `category` of the tenant older than `cutoff_ms`
/// (what goes with them by foreign key, a message's statuses and media, a
/// conversation's messages, is not counted); returns how many. 0: none are left.
/// A category of two tables empties the first before the second.
pub fn delete_expired(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    category: Category,
    cutoff_ms: i64,
    limit: i64,
) -> Result<u64, StorageError> {
    let tenant = tenant_id.as_str();
    macro_rules! delete {
        ($table:ident, $key:ident: $ty:ty) => {
            delete_expired_rows!(conn, $table, $key: $ty, tenant, cutoff_ms, limit)
        };
    }
    let deleted = match category {
        Category::Messages => delete!(messages, id: String),
        Category::Media => delete!(media_downloads, message_id: String),
        Category::ClosedConversations => delete!(conversations, id: String),
        Category::RawPayloads => match delete!(inbox, id: i64) {
            0 => delete!(webhook_events, id: String),
            processed => processed,
        },
        Category::AutomationRuns => match delete!(automation_runs, id: String) {
            // A handful of rows a day per tenant: one statement.
            0 => on_backend!(conn, c => diesel::delete(expired!(usage_daily, tenant, cutoff_ms))
                .execute(c))?,
            runs => runs,
        },
        Category::Technical => match delete!(outbox, id: String) {
            0 => match delete!(idempotency_keys, key_bidx: String) {
                0 => delete!(email_outbox, id: String),
                keys => keys,
            },
            sends => sends,
        },
        Category::Audit => match delete!(audit_log, id: String) {
            0 => match delete!(disclosures, id: String) {
                0 => delete!(retention_runs, id: String),
                disclosures => disclosures,
            },
            entries => entries,
        },
        Category::Exports => 0,
    };
    Ok(deleted as u64)
}

/// The smallest time-ordered id (UUID v7, as Converra gives its rows) made at `ms`
/// or later: ids below it were made before.
pub fn first_id_at(ms: i64) -> String {
    let ms = ms.max(0);
    format!("{:08x}-{:04x}", ms >> 16, ms & 0xffff)
}

/// What one window of the pass over messages did.
pub struct Window {
    /// The last id looked at; None: the pass is done.
    pub last: Option<String>,
    /// Rows deleted, per tenant.
    pub deleted: Vec<(String, u64)>,
}

/// One window of the pass over every tenant's messages: at most `window` messages in
/// id order after `after` and below `below`; those past their tenant's cutoff (in
/// `cutoffs`, by tenant id; other tenants' are left alone) are deleted, except those
/// whose send is still queued or in flight.
pub fn delete_expired_messages<R>(
    conn: &mut DbConn,
    after: &str,
    below: &str,
    window: i64,
    cutoffs: &std::collections::HashMap<String, (i64, R)>,
) -> Result<Window, StorageError> {
    let rows: Vec<(String, String, i64)> = on_backend!(conn, c => messages::table
        .filter(messages::id.gt(after))
        .filter(messages::id.lt(below))
        .order(messages::id.asc())
        .limit(window)
        .select((messages::id, messages::tenant_id, messages::sent_at))
        .load(c))?;
    let Some(last) = rows.last().map(|(id, _, _)| id.clone()) else {
        return Ok(Window {
            last: None,
            deleted: Vec::new(),
        });
    };
    let doomed: Vec<String> = rows
        .into_iter()
        .filter(|(_, tenant, sent_at)| {
            cutoffs
                .get(tenant)
                .is_some_and(|(cutoff, _)| *sent_at < *cutoff)
        })
        .map(|(id, _, _)| id)
        .collect();
    // A send still queued or in flight keeps its message until it ends.
    let mut sending: std::collections::HashSet<String> = Default::default();
    for chunk in doomed.chunks(500) {
        let found: Vec<String> = on_backend!(conn, c => outbox::table
            .filter(outbox::id.eq_any(chunk))
            .filter(outbox::state.eq_any(super::outbox::UNFINISHED))
            .select(outbox::id)
            .load(c))?;
        sending.extend(found);
    }
    let doomed: Vec<String> = doomed
        .into_iter()
        .filter(|id| !sending.contains(id))
        .collect();
    // Counted by what the deletes return: a row another sweep took meanwhile is not
    // counted twice. A few hundred keys a statement keep every backend's limit on
    // bound values; in id order, as every deleter here takes rows.
    let mut per_tenant: std::collections::BTreeMap<String, u64> = Default::default();
    for chunk in doomed.chunks(500) {
        let gone: Vec<String> = on_backend!(conn, c => diesel::delete(messages::table
            .filter(messages::id.eq_any(chunk)))
            .returning(messages::tenant_id)
            .get_results(c))?;
        for tenant in gone {
            *per_tenant.entry(tenant).or_default() += 1;
        }
    }
    Ok(Window {
        last: Some(last),
        deleted: per_tenant.into_iter().collect(),
    })
}

/// One sweep of one tenant, as recorded.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub id: String,
    pub tenant_id: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub dry_run: bool,
    pub deleted: Deleted,
}

type RunRow = (String, String, i64, Option<i64>, bool, String);

fn run_record(row: RunRow) -> Result<RunRecord, StorageError> {
    let (id, tenant_id, started_at, finished_at, dry_run, json) = row;
    let deleted = serde_json::from_str(&json)
        .map_err(|e| StorageError::Corrupt(format!("retention run {id}: {e}")))?;
    Ok(RunRecord {
        id,
        tenant_id,
        started_at,
        finished_at,
        dry_run,
        deleted,
    })
}

/// The tenant's sweep a crash interrupted, if any: the next sweep finishes it.
pub fn unfinished_run(
    conn: &mut DbConn,
    tenant_id: &TenantId,
) -> Result<Option<RunRecord>, StorageError> {
    // Rare (once per sweep of a tenant): the limit's re-preparation does not matter.
    let row: Option<RunRow> = on_backend!(conn, c => retention_runs::table
        .filter(retention_runs::tenant_id.eq(tenant_id.as_str()))
        .filter(retention_runs::finished_at.is_null())
        .filter(retention_runs::dry_run.eq(false))
        .order(retention_runs::id.asc())
        .select((retention_runs::id, retention_runs::tenant_id, retention_runs::started_at,
                 retention_runs::finished_at, retention_runs::dry_run,
                 retention_runs::deleted_json))
        .limit(1)
        .load(c))?
    .into_iter()
    .next();
    row.map(run_record).transpose()
}

/// Records a sweep of the tenant starting.
pub fn start_run(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    id: &str,
    dry_run: bool,
    now_ms: i64,
) -> Result<(), StorageError> {
    let json = serde_json::to_string(&Deleted::zero())
        .map_err(|e| StorageError::Corrupt(e.to_string()))?;
    on_backend!(conn, c => diesel::insert_into(retention_runs::table)
        .values((
            retention_runs::id.eq(id),
            retention_runs::tenant_id.eq(tenant_id.as_str()),
            retention_runs::started_at.eq(now_ms),
            retention_runs::dry_run.eq(dry_run),
            retention_runs::deleted_json.eq(&json),
        ))
        .execute(c))?;
    Ok(())
}

/// Adds `rows` of `category` to the run's counts, in the transaction that deleted
/// them, so the record never disagrees with the data.
pub fn count_into_run(
    conn: &mut DbConn,
    run_id: &str,
    category: Category,
    rows: u64,
) -> Result<(), StorageError> {
    // Locked on PostgreSQL, so that two sweeps adding to one record (the daemon's and
    // an operator's) both count; SQLite's writes are serial already.
    let json: String = match conn {
        DbConn::Pg(c) => retention_runs::table
            .find(run_id)
            .select(retention_runs::deleted_json)
            .for_update()
            .get_result(c)?,
        DbConn::Sqlite(c) => retention_runs::table
            .find(run_id)
            .select(retention_runs::deleted_json)
            .get_result(c)?,
    };
    let mut deleted: Deleted = serde_json::from_str(&json)
        .map_err(|e| StorageError::Corrupt(format!("retention run {run_id}: {e}")))?;
    deleted.add(category, rows);
    let json = serde_json::to_string(&deleted).map_err(|e| StorageError::Corrupt(e.to_string()))?;
    on_backend!(conn, c => diesel::update(retention_runs::table.find(run_id))
        .set(retention_runs::deleted_json.eq(&json))
        .execute(c))?;
    Ok(())
}

/// Marks the run finished; returns its record.
pub fn finish_run(conn: &mut DbConn, run_id: &str, now_ms: i64) -> Result<RunRecord, StorageError> {
    on_backend!(conn, c => diesel::update(retention_runs::table.find(run_id))
        .set(retention_runs::finished_at.eq(Some(now_ms)))
        .execute(c))?;
    let row: RunRow = on_backend!(conn, c => retention_runs::table
        .find(run_id)
        .select((retention_runs::id, retention_runs::tenant_id, retention_runs::started_at,
                 retention_runs::finished_at, retention_runs::dry_run,
                 retention_runs::deleted_json))
        .get_result(c))?;
    run_record(row)
}

/// The tenant's sweeps, newest first, after `cursor` (a run id given out before).
pub fn runs(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<RunRecord>, StorageError> {
    let rows: Vec<RunRow> = on_backend!(conn, c => {
        let mut query = retention_runs::table
            .filter(retention_runs::tenant_id.eq(tenant_id.as_str()))
            .order(retention_runs::id.desc())
            .limit(limit)
            .select((retention_runs::id, retention_runs::tenant_id, retention_runs::started_at,
                     retention_runs::finished_at, retention_runs::dry_run,
                     retention_runs::deleted_json))
            .into_boxed();
        if let Some(cursor) = cursor {
            query = query.filter(retention_runs::id.lt(cursor));
        }
        query.load(c)
    })?;
    rows.into_iter().map(run_record).collect()
}
