//! The writer's queue: the jobs it takes (ingest, resolve, apply, any other write,
//! flush), how it gathers them, and how it takes a batch: every waiting ingest job,
//! then actor jobs round-robin across tenants up to `database.write_batch_max`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{
    ApplyReceipt, IngestReceipt, Waiters, Writer, GATHER_FOR, GATHER_FROM_RATE, GATHER_JOBS,
};
use crate::ids::TenantId;
use crate::storage::apply::ApplyOp;
use crate::storage::contacts::NewContact;
use crate::storage::contacts::{ContactIdentifiers, ResolvedContact};
use crate::storage::handoff::Reply;
use crate::storage::inbox::FreshEvent;
use crate::storage::raw_keys::DayKey;
use crate::storage::{DbConn, StorageError};
use crate::whatsapp::OtherChange;

/// A unit of work for the writers, with the reply its caller waits on.
pub(in crate::storage) enum Job {
    /// A webhook's content for the inbox and `webhook_events`, sealed here, where
    /// each event's tenant is known, under `day`'s key.
    Ingest {
        day: DayKey,
        events: Vec<FreshEvent>,
        others: Vec<OtherChange>,
        reply: Reply<Result<IngestReceipt, StorageError>>,
    },
    Resolve {
        tenant_id: TenantId,
        ids: ContactIdentifiers,
        reply: Reply<Result<ResolvedContact, StorageError>>,
    },
    Apply {
        tenant_id: TenantId,
        /// The contact the ops belong to, when this write creates it.
        new_contact: Option<Box<NewContact>>,
        ops: Vec<ApplyOp>,
        waiters: Waiters,
        reply: Reply<Result<ApplyReceipt, StorageError>>,
    },
    /// Any other write (see [`WriterHandle::write`]).
    Write {
        tenant_id: Option<TenantId>,
        work: WriteWork,
        reply: Reply<Result<WriteOutput, StorageError>>,
    },
    /// Answered once every job queued before it is done.
    Flush(Reply<()>),
}

/// What a generic write returns, boxed for its trip back through the writer.
pub(super) type WriteOutput = Box<dyn std::any::Any + Send>;

/// A generic write: run inside the batch's transaction, and run again alone when its
/// batch fails and is retried job by job (so it is `FnMut`, not `FnOnce`).
pub(super) type WriteWork = Box<dyn FnMut(&mut DbConn) -> Result<WriteOutput, StorageError> + Send>;

const RESOLVE_WORK: usize = 4;

impl Job {
    /// Rows of work, for sizing batches. Resolving a contact takes several statements
    /// one by one (lookups by each identifier, the new contact, its data key): on
    /// PostgreSQL several round trips, where a row of a set costs a fraction of one.
    /// Counted as one row, a cold start that meets many new contacts at once makes
    /// batches of hundreds of them and every webhook waits behind them; 4 gave the
    /// lowest first-second p99 of the weights measured (docs/performance.md).
    pub(super) fn work(&self) -> usize {
        match self {
            Job::Ingest { events, others, .. } => events.len() + others.len(),
            // A new contact: its key, its row and its first conversation, each a row
            // of the batch's multi-row statements.
            Job::Apply {
                ops, new_contact, ..
            } => ops.len() + usize::from(new_contact.is_some()),
            Job::Resolve { .. } => RESOLVE_WORK,
            Job::Write { .. } | Job::Flush(_) => 1,
        }
        .max(1)
    }

    pub(super) fn tenant(&self) -> Option<&TenantId> {
        match self {
            Job::Resolve { tenant_id, .. } | Job::Apply { tenant_id, .. } => Some(tenant_id),
            Job::Write { tenant_id, .. } => tenant_id.as_ref(),
            _ => None,
        }
    }
}

impl Writer {
    /// Whether jobs arrive fast enough for waiting to gather more (see [`GATHER_FOR`]),
    /// judged by the last full second. Each writer counts the jobs it took itself.
    pub(super) fn gathering(&mut self) -> bool {
        let elapsed = self.arrivals.since.elapsed();
        if elapsed >= Duration::from_secs(1) {
            self.arrivals.rate = self.arrivals.jobs as f64 / elapsed.as_secs_f64();
            self.arrivals.since = Instant::now();
            self.arrivals.jobs = 0;
        }
        self.arrivals.rate >= GATHER_FROM_RATE
    }

    /// Takes jobs until [`GATHER_JOBS`] are waiting or [`GATHER_FOR`] has passed.
    pub(super) fn gather(&mut self, rx: &flume::Receiver<Job>) {
        let until = Instant::now() + GATHER_FOR;
        let mut waiting = 1;
        while waiting < GATHER_JOBS {
            let Ok(job) = rx.recv_deadline(until) else {
                break;
            };
            self.enqueue(job);
            waiting += 1;
        }
    }

    pub(super) fn enqueue(&mut self, job: Job) {
        self.arrivals.jobs += 1;
        self.queued += 1;
        match job.tenant().cloned() {
            None => self.ingest.push_back(job),
            Some(tenant) => match self.lanes.iter_mut().find(|(t, _)| *t == tenant) {
                Some((_, lane)) => lane.push_back(job),
                None => self.lanes.push_back((tenant, VecDeque::from([job]))),
            },
        }
    }

    /// Waiting ingest jobs first (a webhook's sender is waiting), then one job per
    /// tenant in turn, until the batch holds `batch_max` events of work. Capping by
    /// work, not jobs, keeps a cycle short however much one tenant has queued, so
    /// another tenant's job waits one short cycle, not the whole flood.
    pub(super) fn take_batch(&mut self) -> Vec<Job> {
        let max = self.batch_max;
        let mut batch = Vec::new();
        let mut work = 0;
        while work < max {
            match self.ingest.pop_front() {
                Some(job) => {
                    work += job.work();
                    batch.push(job);
                }
                None => break,
            }
        }
        while work < max && !self.lanes.is_empty() {
            let Some((tenant, mut lane)) = self.lanes.pop_front() else {
                break;
            };
            if let Some(job) = lane.pop_front() {
                work += job.work();
                batch.push(job);
            }
            if !lane.is_empty() {
                self.lanes.push_back((tenant, lane));
            }
        }
        self.queued = self.queued.saturating_sub(batch.len());
        batch
    }
}
