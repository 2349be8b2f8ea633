//! The scheduler: one supervised actor that runs the daemon's timed duties, each on
//! its timer from the configuration, each idempotent (a restart in the middle, or a
//! duty that overlaps itself, does no harm):
//! - the retention sweep, every `retention.sweep_interval_secs` (the first a minute at
//!   most after start, so that a sweep a crash interrupted is finished soon), on a
//!   thread of its own, writing through the writer a bounded batch at a time; one
//!   runs at a time;
//! - the inbox sweep, every `actors.sweep_interval_secs`: the registry looks for
//!   inbox rows never processed;
//! - upkeep, every `scheduler.upkeep_interval_secs`: processed inbox rows past
//!   `inbox.keep_processed_secs`, finished sends past `outbound.keep_finished_secs`,
//!   users out of the messaging limit's 24 hours, raw payloads past
//!   `inbox.keep_raw_days` with their day keys, and the reminders of requests and
//!   enquiries nearing their due date ([`crate::compliance::reminders`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::registry::{Registry, SweepInbox};
use super::Core;
use crate::ids::TenantId;
use crate::retention::Category;
use crate::storage::retention::sweep::{self, Lane, Options, SweepError};
use crate::storage::{writer::WriterHandle, DbConn, StorageError};

/// The longest wait for the first sweep after start.
const FIRST_SWEEP_WITHIN: Duration = Duration::from_secs(60);

pub struct Scheduler {
    core: Arc<Core>,
    registry: Addr<Registry>,
    /// The sweep running now, for shutdown to await.
    sweeping: Option<actix_web::rt::task::JoinHandle<()>>,
    /// Upkeep is running: the next tick waits for it.
    upkeeping: bool,
    stop: Arc<AtomicBool>,
}

impl Scheduler {
    pub fn new(core: Arc<Core>, registry: Addr<Registry>) -> Scheduler {
        Scheduler {
            core,
            registry,
            sweeping: None,
            upkeeping: false,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    fn upkeep(&mut self, ctx: &mut Context<Self>) {
        if self.upkeeping || self.stop.load(Ordering::Acquire) {
            return;
        }
        self.upkeeping = true;
        let core = self.core.clone();
        ctx.spawn(
            upkeep(core)
                .into_actor(self)
                .map(|_, actor, _| actor.upkeeping = false),
        );
    }

    fn start_sweep(&mut self) {
        if self.stop.load(Ordering::Acquire) {
            return;
        }
        if self
            .sweeping
            .as_ref()
            .is_some_and(|task| !task.is_finished())
        {
            return;
        }
        let core = self.core.clone();
        let stop = self.stop.clone();
        self.sweeping = Some(actix_web::rt::task::spawn_blocking(move || {
            retention_sweep(&core, &stop)
        }));
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let settings = &self.core.settings;
        let every = Duration::from_secs(settings.retention.sweep_interval_secs);
        ctx.run_later(every.min(FIRST_SWEEP_WITHIN), |actor, _| {
            actor.start_sweep()
        });
        ctx.run_interval(every, |actor, _| actor.start_sweep());
        let every = Duration::from_secs(settings.actors.sweep_interval_secs.max(1));
        ctx.run_interval(every, |actor, _| {
            if !actor.stop.load(Ordering::Acquire) {
                actor.registry.do_send(SweepInbox);
            }
        });
        let every = Duration::from_secs(settings.scheduler.upkeep_interval_secs);
        ctx.run_interval(every, |actor, ctx| actor.upkeep(ctx));
    }
}

impl Supervised for Scheduler {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        slog::warn!(self.core.log, "the scheduler restarts");
        // The context's futures, upkeep among them, are gone with the old context.
        self.upkeeping = false;
    }
}

/// What shutdown awaits of the scheduler: the sweep still running (it stops after its
/// current batch), and the end of a round of upkeep in progress.
pub struct SchedulerWork {
    pub sweep: Option<actix_web::rt::task::JoinHandle<()>>,
    pub upkeep_done: tokio::sync::oneshot::Receiver<()>,
}

/// Stops the scheduler's duties; answers with the work still in hand.
#[derive(Message)]
#[rtype(result = "SchedulerWork")]
pub struct StopScheduler;

impl Handler<StopScheduler> for Scheduler {
    type Result = MessageResult<StopScheduler>;
    fn handle(&mut self, _msg: StopScheduler, ctx: &mut Context<Self>) -> Self::Result {
        self.stop.store(true, Ordering::Release);
        MessageResult(SchedulerWork {
            sweep: self.sweeping.take(),
            upkeep_done: super::when_idle(ctx, |scheduler: &Scheduler| !scheduler.upkeeping),
        })
    }
}

/// The daemon's writer as a sweep's lane: each batch waits its turn among the tenant's
/// other writes.
struct WriterLane(WriterHandle);

impl Lane for WriterLane {
    fn write<T: Send + 'static>(
        &self,
        tenant_id: &TenantId,
        work: impl FnMut(&mut DbConn) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        self.0.write_blocking(Some(tenant_id.clone()), work)
    }

    fn write_across<T: Send + 'static>(
        &self,
        work: impl FnMut(&mut DbConn) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        self.0.write_blocking(None, work)
    }
}

/// Counts each batch in the metrics as it is deleted.
struct Counted<'a>(&'a Core);

impl sweep::Progress for Counted<'_> {
    fn batch(&mut self, _tenant_id: &TenantId, category: Category, rows: u64) {
        self.0
            .metrics
            .retention_deleted
            .with_label_values(&[category.as_str()])
            .inc_by(rows);
    }
}

/// One sweep of every tenant, on a thread that may block.
fn retention_sweep(core: &Core, stop: &AtomicBool) {
    let tenants = match crate::storage::with_conn(&core.pool, |conn| {
        crate::storage::tenants::list_tenants(conn)
    }) {
        Ok(tenants) => tenants
            .into_iter()
            .map(|t| TenantId(t.id))
            .collect::<Vec<_>>(),
        Err(e) => {
            slog::warn!(core.log, "the retention sweep could not list the tenants; the next one tries again";
                "error" => %e);
            core.metrics
                .retention_sweeps
                .with_label_values(&["incomplete"])
                .inc();
            return;
        }
    };
    let settings = &core.settings;
    let options = Options::from_settings(&settings.retention, false);
    let clock = core.clock.clone();
    let lane = WriterLane(core.writer.clone());
    let swept = sweep::sweep_all(
        &lane,
        settings,
        &tenants,
        || clock.now_ms(),
        &options,
        stop,
        &mut Counted(core),
        &core.log,
    )
    .and_then(|mut report| {
        // What is left of purged tenants, past the operator's periods; they are found
        // on a connection of the pool, not in the writer's transaction.
        let gone = match crate::storage::with_conn(&core.pool, crate::storage::retention::gone_tenants) {
            Ok(gone) => gone,
            Err(e) => {
                slog::warn!(core.log, "the retention sweep could not list purged tenants; the next one tries again";
                    "error" => %e);
                return Ok(report);
            }
        };
        let (deleted, failed) = sweep::sweep_gone(
            &lane,
            settings,
            &gone,
            || clock.now_ms(),
            &options,
            stop,
            &mut Counted(core),
            &core.log,
        )?;
        report.deleted.merge(&deleted);
        report.failed.extend(failed);
        Ok(report)
    });
    let outcome = match swept {
        Ok(report) => {
            if report.deleted.total() > 0 {
                slog::info!(core.log, "retention sweep deleted what was past its period";
                    "tenants" => report.runs.len(), "deleted" => ?report.deleted.0);
            }
            match report.failed.is_empty() {
                true => "finished",
                false => "incomplete",
            }
        }
        Err(SweepError::Stopped) => {
            slog::info!(core.log, "retention sweep stopped; the next one carries on");
            "stopped"
        }
        Err(SweepError::Storage(e)) => {
            slog::warn!(core.log, "retention sweep failed"; "error" => %e);
            "incomplete"
        }
    };
    core.metrics
        .retention_sweeps
        .with_label_values(&[outcome])
        .inc();
}

/// One round of upkeep, each part a write of its own; a part that fails is logged and
/// tried again next time.
async fn upkeep(core: Arc<Core>) {
    use crate::storage::{inbox, messaging_limits, outbox, raw_keys};
    let now = core.clock.now_ms();
    let settings = &core.settings;
    let processed_before = now - (settings.inbox.keep_processed_secs * 1000) as i64;
    let inbox_levels = core
        .writer
        .write(None, move |conn| {
            let purged = inbox::purge_processed(conn, processed_before)?;
            Ok((purged, inbox::backlog(conn)?, inbox::parked_count(conn)?))
        })
        .await;
    match inbox_levels {
        Ok((purged, backlog, parked)) => {
            core.metrics.inbox_backlog.set(backlog);
            core.metrics.inbox_parked.set(parked);
            if purged > 0 {
                slog::debug!(core.log, "processed inbox rows purged"; "rows" => purged);
            }
        }
        Err(e) => slog::warn!(core.log, "purging processed inbox rows failed"; "error" => %e),
    }
    let finished_before = now - (settings.outbound.keep_finished_secs * 1000) as i64;
    match core
        .writer
        .write(None, move |conn| {
            outbox::purge_finished(conn, finished_before)
        })
        .await
    {
        Ok((sends, keys)) if sends + keys > 0 => {
            slog::debug!(core.log, "finished sends and idempotency keys expired";
                "sends" => sends, "keys" => keys);
        }
        Ok(_) => {}
        Err(e) => slog::warn!(core.log, "expiring finished sends failed"; "error" => %e),
    }
    match core
        .writer
        .write(None, move |conn| messaging_limits::purge_reach(conn, now))
        .await
    {
        Ok(0) => {}
        Ok(users) => slog::debug!(core.log, "users out of the messaging limit's window forgotten";
            "users" => users),
        Err(e) => slog::warn!(core.log, "forgetting users out of the window failed"; "error" => %e),
    }
    let (keyring, keys, keep_days) = (
        core.keyring.clone(),
        core.writer.raw_keys().clone(),
        settings.inbox.keep_raw_days,
    );
    match core
        .writer
        .write(None, move |conn| {
            raw_keys::expire(conn, &keyring, &keys, now, keep_days)
        })
        .await
    {
        Ok(expired) => {
            core.metrics
                .raw_payloads_deleted
                .inc_by(expired.deleted as u64);
            core.metrics.inbox_overdue.set(expired.overdue);
            if expired.deleted > 0 || !expired.destroyed.is_empty() {
                slog::info!(core.log, "raw payloads past inbox.keep_raw_days deleted";
                    "payloads" => expired.deleted, "keys_destroyed" => expired.destroyed.len());
            }
            if expired.overdue > 0 {
                slog::warn!(core.log, "inbox events older than inbox.keep_raw_days still wait; their days' keys are kept";
                    "rows" => expired.overdue);
            }
        }
        Err(e) => slog::warn!(core.log, "raw payload expiry failed"; "error" => %e),
    }
    let (operator, domain) = (
        settings.compliance.operator_address(&settings.email.from),
        crate::email::message_domain(&settings.email.from),
    );
    match core
        .writer
        .write(None, move |conn| {
            crate::compliance::reminders::send_due(conn, &operator, &domain, now)
        })
        .await
    {
        Ok(reminded) => {
            if reminded.requests + reminded.enquiries > 0 {
                slog::info!(core.log, "deadline reminders queued";
                    "requests" => reminded.requests, "enquiries" => reminded.enquiries);
            }
            if !reminded.enquiries_untold.is_empty() {
                slog::warn!(core.log, "privacy enquiries are due within two days and not answered (set compliance.operator_email to be emailed)";
                    "enquiries" => ?reminded.enquiries_untold);
            }
            for (item, error) in &reminded.failed {
                slog::warn!(core.log, "a deadline reminder failed; the next upkeep tries again";
                    "item" => item, "error" => %error);
            }
        }
        Err(e) => slog::warn!(core.log, "deadline reminders failed"; "error" => %e),
    }
    core.metrics
        .timed_duties
        .with_label_values(&["upkeep"])
        .inc();
}
