//! A retention sweep: for each tenant and category, what is past the tenant's period
//! goes, a bounded batch per transaction with a pause between batches, so live traffic
//! keeps its pace. Each tenant's media goes first; then, when more than a batch of
//! messages is due, one pass over every tenant's messages ([`messages_pass`]); then
//! each tenant's other categories. Each batch adds what it deleted to the run's record
//! in its own transaction; a sweep interrupted (a crash, a stop) leaves its record
//! unfinished and the next sweep of the tenant carries on under it, so the end result
//! and the counts are those of an uninterrupted sweep. A dry run deletes nothing and
//! records what a real run would delete.
//!
//! The same sweep runs in the daemon (the scheduler, through the writer: a tenant's
//! batches in its lane between its other writes, the pass in the lane of work that
//! spans tenants) and in `converra retention run` (on a connection of its own);
//! [`Lane`] is where its transactions run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{self as store, RunRecord};
use crate::config::{RetentionSettings, Settings};
use crate::ids::TenantId;
use crate::retention::{Category, Deleted, Policies, DAY_MS};
use crate::storage::{DbConn, StorageError};

/// Where a sweep's transactions run. Called from a thread that may block.
pub trait Lane {
    /// Runs `work` in a transaction of the tenant's; `work` may run again if its
    /// transaction failed and was retried.
    fn write<T: Send + 'static>(
        &self,
        tenant_id: &TenantId,
        work: impl FnMut(&mut DbConn) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError>;

    /// Runs `work` in a transaction that spans tenants.
    fn write_across<T: Send + 'static>(
        &self,
        work: impl FnMut(&mut DbConn) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError>;
}

/// How a sweep runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub dry_run: bool,
    pub batch_size: u32,
    pub batch_pause: Duration,
}

impl Options {
    pub fn from_settings(settings: &RetentionSettings, dry_run: bool) -> Options {
        Options {
            dry_run,
            batch_size: settings.batch_size,
            batch_pause: Duration::from_millis(settings.batch_pause_ms),
        }
    }
}

/// What a sweep tells as it goes: the tenant, the category, the rows so far.
pub trait Progress {
    fn batch(&mut self, tenant_id: &TenantId, category: Category, rows: u64);
}

impl Progress for () {
    fn batch(&mut self, _: &TenantId, _: Category, _: u64) {}
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Asked to stop between two batches; the run stays unfinished, for the next sweep.
    #[error("the sweep was stopped before it finished")]
    Stopped,
}

/// A tenant's sweep under way: its periods and the record its counts go to.
struct Opened {
    tenant_id: TenantId,
    policies: Policies,
    run_id: String,
}

/// Finds the tenant's run a crash interrupted, else records a new one.
fn open_run<L: Lane>(
    lane: &L,
    tenant_id: &TenantId,
    dry_run: bool,
    started: i64,
) -> Result<Opened, StorageError> {
    let tenant = tenant_id.clone();
    let (policies, run_id) = lane.write(tenant_id, move |conn| {
        let policies = store::policies(conn, &tenant)?;
        let interrupted = match dry_run {
            true => None,
            false => store::unfinished_run(conn, &tenant)?,
        };
        let run_id = match interrupted {
            Some(run) => run.id,
            None => {
                let id = uuid::Uuid::now_v7().to_string();
                store::start_run(conn, &tenant, &id, dry_run, started)?;
                id
            }
        };
        Ok((policies, run_id))
    })?;
    Ok(Opened {
        tenant_id: tenant_id.clone(),
        policies,
        run_id,
    })
}

fn cutoff(now_ms: i64, days: u32) -> i64 {
    now_ms.saturating_sub(i64::from(days).saturating_mul(DAY_MS))
}

/// Every category of one tenant not in `done`, in [`Category::ALL`]'s order; then
/// the run is finished.
#[allow(clippy::too_many_arguments)]
fn sweep_categories<L: Lane>(
    lane: &L,
    settings: &Settings,
    opened: Opened,
    done: &[Category],
    now_ms: &impl Fn() -> i64,
    options: &Options,
    stop: &AtomicBool,
    progress: &mut dyn Progress,
) -> Result<RunRecord, SweepError> {
    for category in Category::ALL {
        if !done.contains(&category) {
            sweep_category(
                lane,
                settings,
                &opened,
                category,
                now_ms(),
                options,
                stop,
                progress,
            )?;
        }
    }
    let (finished, run_id) = (now_ms(), opened.run_id);
    Ok(lane.write(&opened.tenant_id, move |conn| {
        store::finish_run(conn, &run_id, finished)
    })?)
}

/// One category of one tenant: counted (dry), or deleted a batch at a time.
#[allow(clippy::too_many_arguments)]
fn sweep_category<L: Lane>(
    lane: &L,
    settings: &Settings,
    opened: &Opened,
    category: Category,
    now_ms: i64,
    options: &Options,
    stop: &AtomicBool,
    progress: &mut dyn Progress,
) -> Result<(), SweepError> {
    let tenant_id = &opened.tenant_id;
    let cutoff = cutoff(now_ms, opened.policies.days(category, settings));
    if options.dry_run {
        let (tenant, run) = (tenant_id.clone(), opened.run_id.clone());
        let rows = lane.write(tenant_id, move |conn| {
            let rows = store::count_expired(conn, &tenant, category, cutoff)?;
            store::count_into_run(conn, &run, category, rows)?;
            Ok(rows)
        })?;
        progress.batch(tenant_id, category, rows);
        return Ok(());
    }
    let limit = i64::from(options.batch_size.max(1));
    loop {
        if stop.load(Ordering::Acquire) {
            return Err(SweepError::Stopped);
        }
        let (tenant, run) = (tenant_id.clone(), opened.run_id.clone());
        let rows = lane.write(tenant_id, move |conn| {
            let rows = store::delete_expired(conn, &tenant, category, cutoff, limit)?;
            if rows > 0 {
                store::count_into_run(conn, &run, category, rows)?;
            }
            Ok(rows)
        })?;
        if rows == 0 {
            return Ok(());
        }
        progress.batch(tenant_id, category, rows);
        pause(options, stop);
    }
}

/// The pause between batches, cut short by a stop.
fn pause(options: &Options, stop: &AtomicBool) {
    let until = std::time::Instant::now() + options.batch_pause;
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || stop.load(Ordering::Acquire) {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// The messages of every tenant swept in one pass, in id order (ids are time-ordered,
/// so this is arrival order, the order rows lie in): a window of messages at a time,
/// each checked against its own tenant's period. Tenants' messages lie interleaved,
/// so deleting them tenant by tenant would write most pages once per tenant; a
/// window writes each page once. The pass covers messages that arrived before the
/// latest of the tenants' cutoffs; a message whose timestamp is older than its
/// arrival by more than that (a late delivery) is left to the tenant's own sweep,
/// which follows and finds it through the index by age.
///
/// The pass reads every message older than the latest cutoff, kept ones included, so
/// it runs only when more than a batch of messages is due; a sweep that finds a
/// trickle (the hourly sweep after the first) leaves it to the tenants' own sweeps.
fn messages_pass<L: Lane>(
    lane: &L,
    settings: &Settings,
    opened: &[Opened],
    now_ms: &impl Fn() -> i64,
    options: &Options,
    stop: &AtomicBool,
    progress: &mut dyn Progress,
) -> Result<(), SweepError> {
    let now_ms = now_ms();
    let mut due = 0;
    for o in opened {
        let (tenant, cutoff) = (
            o.tenant_id.clone(),
            cutoff(now_ms, o.policies.days(Category::Messages, settings)),
        );
        due += lane.write(&o.tenant_id, move |conn| {
            store::count_expired(conn, &tenant, Category::Messages, cutoff)
        })?;
    }
    if due <= u64::from(options.batch_size) {
        return Ok(());
    }
    let cutoffs: HashMap<String, (i64, String)> = opened
        .iter()
        .map(|o| {
            let days = o.policies.days(Category::Messages, settings);
            (
                o.tenant_id.0.clone(),
                (cutoff(now_ms, days), o.run_id.clone()),
            )
        })
        .collect();
    let Some(latest) = cutoffs.values().map(|(cutoff, _)| *cutoff).max() else {
        return Ok(());
    };
    let cutoffs = std::sync::Arc::new(cutoffs);
    let below = store::first_id_at(latest);
    let size = i64::from(options.batch_size.max(1));
    let mut after = String::new();
    loop {
        if stop.load(Ordering::Acquire) {
            return Err(SweepError::Stopped);
        }
        let (from, below, cutoffs) = (after.clone(), below.clone(), cutoffs.clone());
        let window = lane.write_across(move |conn| {
            let window = store::delete_expired_messages(conn, &from, &below, size, &cutoffs)?;
            for (tenant, rows) in &window.deleted {
                if let Some((_, run)) = cutoffs.get(tenant) {
                    store::count_into_run(conn, run, Category::Messages, *rows)?;
                }
            }
            Ok(window)
        })?;
        for (tenant, rows) in window.deleted {
            progress.batch(&TenantId(tenant), Category::Messages, rows);
        }
        match window.last {
            Some(last) => after = last,
            None => return Ok(()),
        }
        pause(options, stop);
    }
}

/// What a sweep over several tenants did.
#[derive(Debug)]
pub struct Report {
    pub runs: Vec<RunRecord>,
    /// Summed over the runs.
    pub deleted: Deleted,
    /// Tenants whose sweep failed (the next sweep carries on with them).
    pub failed: Vec<(TenantId, StorageError)>,
}

/// Sweeps each tenant in turn. A tenant whose sweep fails is logged and skipped: the
/// others still get theirs.
#[allow(clippy::too_many_arguments)]
pub fn sweep_all<L: Lane>(
    lane: &L,
    settings: &Settings,
    tenants: &[TenantId],
    now_ms: impl Fn() -> i64,
    options: &Options,
    stop: &AtomicBool,
    progress: &mut dyn Progress,
    log: &slog::Logger,
) -> Result<Report, SweepError> {
    let mut report = Report {
        runs: Vec::with_capacity(tenants.len()),
        deleted: Deleted::zero(),
        failed: Vec::new(),
    };
    let started = now_ms();
    let mut opened = Vec::with_capacity(tenants.len());
    for tenant_id in tenants {
        match open_run(lane, tenant_id, options.dry_run, started) {
            Ok(run) => opened.push(run),
            Err(e) => {
                slog::warn!(log, "the retention sweep of a tenant failed; the next sweep tries again";
                    "tenant" => tenant_id.as_str(), "error" => %e);
                report.failed.push((tenant_id.clone(), e));
            }
        }
    }
    // Media before the messages that would take it along, so each row is counted
    // under its own category, as a dry run counts it.
    let mut ready = Vec::with_capacity(opened.len());
    for run in opened {
        match sweep_category(
            lane,
            settings,
            &run,
            Category::Media,
            now_ms(),
            options,
            stop,
            progress,
        ) {
            Ok(()) => ready.push(run),
            Err(SweepError::Stopped) => return Err(SweepError::Stopped),
            Err(SweepError::Storage(e)) => {
                slog::warn!(log, "the retention sweep of a tenant failed; the next sweep tries again";
                    "tenant" => run.tenant_id.as_str(), "error" => %e);
                report.failed.push((run.tenant_id, e));
            }
        }
    }
    if !options.dry_run {
        // A failed pass leaves its rows to each tenant's own sweep below.
        match messages_pass(lane, settings, &ready, &now_ms, options, stop, progress) {
            Err(SweepError::Stopped) => return Err(SweepError::Stopped),
            Err(SweepError::Storage(e)) => {
                slog::warn!(log, "the retention sweep's pass over messages failed; each tenant's own sweep goes on";
                    "error" => %e);
            }
            Ok(()) => {}
        }
    }
    for run in ready {
        let tenant_id = run.tenant_id.clone();
        match sweep_categories(
            lane,
            settings,
            run,
            &[Category::Media],
            &now_ms,
            options,
            stop,
            progress,
        ) {
            Ok(run) => {
                report.deleted.merge(&run.deleted);
                report.runs.push(run);
            }
            Err(SweepError::Stopped) => return Err(SweepError::Stopped),
            Err(SweepError::Storage(e)) => {
                slog::warn!(log, "the retention sweep of a tenant failed; the next sweep tries again";
                    "tenant" => tenant_id.as_str(), "error" => %e);
                report.failed.push((tenant_id, e));
            }
        }
    }
    Ok(report)
}

/// The categories kept of a tenant whose data was purged (its account closed): its
/// audit entries and disclosures, and the emails it was sent.
const KEPT_AFTER_PURGE: [Category; 2] = [Category::Technical, Category::Audit];

/// What is left of the tenants in `gone` (purged: [`store::gone_tenants`], read off
/// the writer by the caller) goes once past the operator's periods, in batches as any
/// tenant's; no run is recorded (no tenant is left to read it). A tenant whose batch
/// fails is logged and left to the next sweep; the others go on. Returns what went
/// (or, dry, would go) and the tenants that failed.
#[allow(clippy::too_many_arguments)]
pub fn sweep_gone<L: Lane>(
    lane: &L,
    settings: &Settings,
    gone: &[TenantId],
    now_ms: impl Fn() -> i64,
    options: &Options,
    stop: &AtomicBool,
    progress: &mut dyn Progress,
    log: &slog::Logger,
) -> Result<(Deleted, Vec<(TenantId, StorageError)>), SweepError> {
    let mut deleted = Deleted::zero();
    let mut failed = Vec::new();
    let limit = i64::from(options.batch_size.max(1));
    'tenants: for tenant_id in gone {
        for category in KEPT_AFTER_PURGE {
            let cutoff = cutoff(now_ms(), Policies::default().days(category, settings));
            loop {
                if stop.load(Ordering::Acquire) {
                    return Err(SweepError::Stopped);
                }
                let tenant = tenant_id.clone();
                let dry_run = options.dry_run;
                let rows = match lane.write(tenant_id, move |conn| match dry_run {
                    true => store::count_expired(conn, &tenant, category, cutoff),
                    false => store::delete_expired(conn, &tenant, category, cutoff, limit),
                }) {
                    Ok(rows) => rows,
                    Err(e) => {
                        slog::warn!(log, "the retention sweep of a purged tenant's records failed; the next sweep tries again";
                            "tenant" => tenant_id.as_str(), "error" => %e);
                        failed.push((tenant_id.clone(), e));
                        continue 'tenants;
                    }
                };
                deleted.add(category, rows);
                if rows > 0 {
                    progress.batch(tenant_id, category, rows);
                }
                if rows == 0 || dry_run {
                    break;
                }
                pause(options, stop);
            }
        }
    }
    Ok((deleted, failed))
}

/// A connection of its own as a sweep's lane (the operator command): each batch is a
/// write transaction, which on SQLite waits its turn behind the daemon's writes.
pub struct ConnectionLane<C>(std::sync::Mutex<C>);

impl<C> ConnectionLane<C> {
    pub fn new(conn: C) -> ConnectionLane<C> {
        ConnectionLane(std::sync::Mutex::new(conn))
    }
}

impl<C: std::ops::DerefMut<Target = DbConn>> Lane for ConnectionLane<C> {
    fn write<T: Send + 'static>(
        &self,
        _tenant_id: &TenantId,
        mut work: impl FnMut(&mut DbConn) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let mut conn = self
            .0
            .lock()
            .map_err(|_| StorageError::Panicked("a sweep's connection".into()))?;
        crate::storage::write_transaction(&mut conn, |conn| work(conn))
    }

    fn write_across<T: Send + 'static>(
        &self,
        work: impl FnMut(&mut DbConn) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        self.write(&TenantId(String::new()), work)
    }
}
