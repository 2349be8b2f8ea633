//! The scheduler: one supervised actor that runs the daemon's timed duties. Today
//! that is the retention sweep, every `retention.sweep_interval_secs` (the first a
//! minute at most after start, so that a sweep a crash interrupted is finished soon).
//! The sweep runs on a thread of its own, writing through the writer in each tenant's
//! lane, a bounded batch at a time; one sweep runs at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::Core;
use crate::ids::TenantId;
use crate::retention::sweep::{self, Lane, Options, SweepError};
use crate::retention::Category;
use crate::storage::{writer::WriterHandle, DbConn, StorageError};

/// The longest wait for the first sweep after start.
const FIRST_SWEEP_WITHIN: Duration = Duration::from_secs(60);

pub struct Scheduler {
    core: Arc<Core>,
    /// The sweep running now, for shutdown to await.
    sweeping: Option<actix_web::rt::task::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Scheduler {
    pub fn new(core: Arc<Core>) -> Scheduler {
        Scheduler {
            core,
            sweeping: None,
            stop: Arc::new(AtomicBool::new(false)),
        }
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
        let every = Duration::from_secs(self.core.settings.retention.sweep_interval_secs);
        ctx.run_later(every.min(FIRST_SWEEP_WITHIN), |actor, _| {
            actor.start_sweep()
        });
        ctx.run_interval(every, |actor, _| actor.start_sweep());
    }
}

impl Supervised for Scheduler {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        slog::warn!(self.core.log, "the scheduler restarts");
    }
}

/// Stops the scheduler's duties; answers with the sweep still running, for shutdown to
/// await (it stops after its current batch).
#[derive(Message)]
#[rtype(result = "Option<actix_web::rt::task::JoinHandle<()>>")]
pub struct StopScheduler;

impl Handler<StopScheduler> for Scheduler {
    type Result = Option<actix_web::rt::task::JoinHandle<()>>;
    fn handle(&mut self, _msg: StopScheduler, _ctx: &mut Context<Self>) -> Self::Result {
        self.stop.store(true, Ordering::Release);
        self.sweeping.take()
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
    let settings = &core.settings.retention;
    let options = Options::from_settings(settings, false);
    let clock = core.clock.clone();
    let swept = sweep::sweep_all(
        &WriterLane(core.writer.clone()),
        settings,
        &tenants,
        || clock.now_ms(),
        &options,
        stop,
        &mut Counted(core),
        &core.log,
    );
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
