//! The writer: one thread that owns every database write and commits them in groups.
//! Inbox inserts (ingest) and actor work (resolve contacts, apply events, the webhook's
//! own events among them) queue here; each cycle takes all waiting ingest jobs and,
//! round-robin across tenants, actor jobs up to `database.write_batch_max`, commits
//! them in one transaction, then answers each job. So a webhook is acknowledged only
//! after its batch is durable, one fsync serves many requests, and a flood from one
//! tenant cannot starve the others.
//!
//! A job whose work fails is retried alone, so one bad job never fails its neighbours.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::Connection;

use super::conversation_index;
use super::crm::{self, ApplyOp, ContactIdentifiers, ResolvedContact};
use super::inbox::{self, FreshEvent, InboxItem, PreparedEvent, PreparedOther};
use super::key_store::Vault;
use super::raw_keys::{self, DayKey, RawKeys};
use super::report::{EventCounts, WriterReport};
use super::routes::RouteCache;
use super::{DbConn, Pool, PooledConn, StorageError};
use crate::clock::SharedClock;
use crate::crypto::{Keyring, NewDataKey};
use crate::handoff::{self, Outbox, Reply};
use crate::ids::{KeyId, TenantId};
use crate::whatsapp::{EventKind, OtherChange};

/// What an ingest job committed.
#[derive(Debug, Default)]
pub struct IngestReceipt {
    pub accepted: Vec<InboxItem>,
    pub duplicates: usize,
    pub unrouted: usize,
    pub others: usize,
}

impl IngestReceipt {
    fn counts(&self) -> EventCounts {
        let of_kind = |kind: EventKind| {
            self.accepted
                .iter()
                .filter(|item| item.event.kind == kind)
                .count() as u64
        };
        EventCounts {
            messages: of_kind(EventKind::Message),
            statuses: of_kind(EventKind::Status),
            preferences: of_kind(EventKind::Preference),
            duplicates: self.duplicates as u64,
            unrouted: self.unrouted as u64,
            stored_raw: self.others as u64,
            applied: 0,
        }
    }
}

/// What an apply job's ops did: its fresh events as stored or as duplicates (inbox
/// rows were counted when they were stored), and the ops applied.
fn applied_counts(ops: &[ApplyOp], duplicate: &[bool]) -> EventCounts {
    let mut counts = EventCounts::default();
    for (op, dup) in ops.iter().zip(duplicate) {
        if *dup {
            counts.duplicates += 1;
            continue;
        }
        counts.applied += 1;
        match op.fresh_kind() {
            Some(EventKind::Message) => counts.messages += 1,
            Some(EventKind::Status) => counts.statuses += 1,
            Some(EventKind::Preference) => counts.preferences += 1,
            None => {}
        }
    }
    counts
}

/// What an apply job committed.
#[derive(Debug, Default)]
pub struct ApplyReceipt {
    /// The conversation the job's inbound messages went to, for the actor to cache.
    pub conversation: Option<String>,
    /// Per op: skipped because its fresh event had been delivered before.
    pub duplicate: Vec<bool>,
}

/// What became of an event applied as it arrived, told to the webhook that carried it
/// once the write is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    New,
    /// Delivered before: nothing changed.
    Duplicate,
}

/// Webhooks waiting on an apply job: the index of the op that applies their event, and
/// where to tell them. Dropped unanswered when the write fails.
pub type Waiters = Vec<(usize, Reply<Delivered>)>;

/// Contacts merged into others since the writers started: a write naming one is
/// refused as [`StorageError::ContactGone`].
type MergedAway = Arc<std::sync::RwLock<std::collections::HashSet<String>>>;

/// Receives committed inbox rows (the actor registry).
pub type Dispatcher = Box<dyn Fn(Vec<InboxItem>) + Send + Sync>;

enum Job {
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
type WriteOutput = Box<dyn std::any::Any + Send>;

/// A generic write: run inside the batch's transaction, and run again alone when its
/// batch fails and is retried job by job (so it is `FnMut`, not `FnOnce`).
type WriteWork = Box<dyn FnMut(&mut DbConn) -> Result<WriteOutput, StorageError> + Send>;

const RESOLVE_WORK: usize = 4;

impl Job {
    /// Rows of work, for sizing batches. Resolving a contact takes several statements
    /// one by one (lookups by each identifier, the new contact, its data key): on
    /// PostgreSQL several round trips, where a row of a set costs a fraction of one.
    /// Counted as one row, a cold start that meets a thousand new contacts at once made
    /// batches of hundreds of them, and every webhook waited behind them (p99 over the
    /// first 12 s at 4,200/s: 150-200 ms); counted as 32, 30-35 ms. Measured again
    /// once a batch asked which of its contacts exist, and stored their new data keys,
    /// in one statement each (on a faster hour of the machine), 32 was the slowest
    /// weight: the first second's p99 at 12,500/s on SQLite 76-394 ms counting 32,
    /// 30-54 counting 4; on PostgreSQL at 8,000/s 502-808 against 340-431 ms, at
    /// 4,200/s 263-322 against 149-232 ms (two runs each; 1 and 8 close to 4).
    fn work(&self) -> usize {
        match self {
            Job::Ingest { events, others, .. } => events.len() + others.len(),
            Job::Apply { ops, .. } => ops.len(),
            Job::Resolve { .. } => RESOLVE_WORK,
            Job::Write { .. } | Job::Flush(_) => 1,
        }
        .max(1)
    }

    fn tenant(&self) -> Option<&TenantId> {
        match self {
            Job::Resolve { tenant_id, .. } | Job::Apply { tenant_id, .. } => Some(tenant_id),
            Job::Write { tenant_id, .. } => tenant_id.as_ref(),
            _ => None,
        }
    }
}

/// The result of one job inside a batch, held until the batch commits.
enum Outcome {
    Ingest(IngestReceipt),
    Resolve(ResolvedContact),
    Apply(ApplyReceipt),
    Write(WriteOutput),
}

/// What the writer threads show of their health: whether they run, and since when
/// the batch each is writing started (a batch that never ends is a hung database).
pub struct WriterHealth {
    /// Writer threads whose loop is running (a panicked one is restarted in place).
    running: AtomicUsize,
    /// Per writer: milliseconds since `epoch` when its current batch began, 0 when it
    /// is between batches.
    busy_since: Vec<std::sync::atomic::AtomicU64>,
    epoch: Instant,
}

impl WriterHealth {
    fn new(writers: usize) -> WriterHealth {
        WriterHealth {
            running: AtomicUsize::new(0),
            busy_since: (0..writers)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            epoch: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        // Never 0, which means idle.
        (self.epoch.elapsed().as_millis() as u64).max(1)
    }

    fn begin(&self, writer: usize) {
        if let Some(slot) = self.busy_since.get(writer) {
            slot.store(self.now(), Ordering::SeqCst);
        }
    }

    fn end(&self, writer: usize) {
        if let Some(slot) = self.busy_since.get(writer) {
            slot.store(0, Ordering::SeqCst);
        }
    }

    /// Why the writer cannot take work, if it cannot: a thread is not running, or a
    /// batch has been writing for longer than `limit` (the database does not answer).
    pub fn problem(&self, limit: Duration) -> Option<String> {
        let expected = self.busy_since.len();
        let running = self.running.load(Ordering::SeqCst);
        if running < expected {
            return Some(format!(
                "{} of {expected} writer threads are down",
                expected - running
            ));
        }
        let now = self.now();
        let longest = self
            .busy_since
            .iter()
            .map(|slot| slot.load(Ordering::SeqCst))
            .filter(|since| *since != 0)
            .map(|since| now.saturating_sub(since))
            .max()?;
        (Duration::from_millis(longest) > limit)
            .then(|| format!("a write has been waiting for the database for {longest} ms"))
    }
}

#[derive(Clone)]
pub struct WriterHandle {
    tx: flume::Sender<Job>,
    health: Arc<WriterHealth>,
    raw_keys: Arc<RawKeys>,
    dispatcher: Arc<OnceLock<Dispatcher>>,
    /// Set by [`WriterHandle::stop`]; the writer threads end once their queues are empty.
    stopping: Arc<AtomicBool>,
    writers: usize,
}

fn gone() -> StorageError {
    StorageError::Unavailable("the writer has stopped".into())
}

impl WriterHandle {
    /// Commits a webhook's events and other content, sealed under `day`'s key (see
    /// [`WriterHandle::day_key`]); resolves once they are durable.
    pub async fn ingest(
        &self,
        day: DayKey,
        events: Vec<FreshEvent>,
        others: Vec<OtherChange>,
    ) -> Result<IngestReceipt, StorageError> {
        let (reply, rx) = handoff::channel();
        self.tx
            .send_async(Job::Ingest {
                day,
                events,
                others,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    pub async fn resolve(
        &self,
        tenant_id: TenantId,
        ids: ContactIdentifiers,
    ) -> Result<ResolvedContact, StorageError> {
        let (reply, rx) = handoff::channel();
        self.tx
            .send_async(Job::Resolve {
                tenant_id,
                ids,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Applies a conversation actor's ops in order, skipping fresh events delivered
    /// before. The webhooks in `waiters` hear straight from the writer once the write
    /// is durable, without waiting for the actor's turn.
    pub async fn apply(
        &self,
        tenant_id: TenantId,
        ops: Vec<ApplyOp>,
        waiters: Waiters,
    ) -> Result<ApplyReceipt, StorageError> {
        let (reply, rx) = handoff::channel();
        self.tx
            .send_async(Job::Apply {
                tenant_id,
                ops,
                waiters,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Runs `work` in the writer: in `tenant_id`'s serialised lane (after the writes
    /// of that tenant queued before it; `None`: in the ingest lane, served first),
    /// inside a transaction, grouped with other writes where it can be. `work` may run
    /// twice (its batch failed and is retried job by job); only the committed run
    /// counts.
    pub async fn write<T: Send + 'static>(
        &self,
        tenant_id: Option<TenantId>,
        mut work: impl FnMut(&mut DbConn) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let (reply, rx) = handoff::channel();
        let work: WriteWork = Box::new(move |conn| Ok(Box::new(work(conn)?) as WriteOutput));
        self.tx
            .send_async(Job::Write {
                tenant_id,
                work,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        let output = rx.await.map_err(|_| gone())??;
        output
            .downcast::<T>()
            .map(|value| *value)
            .map_err(|_| StorageError::Corrupt("a write returned another type".into()))
    }

    /// Waits until everything queued so far is written.
    pub async fn flush(&self) {
        let (reply, rx) = handoff::channel();
        if self.tx.send_async(Job::Flush(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Asks the writer threads to finish what is queued and end. The actors keep
    /// handles (and the dispatcher keeps the actors) until the process ends, so the
    /// threads cannot wait for every handle to go.
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for _ in 0..self.writers {
            // Wakes a writer waiting for work.
            let (reply, _) = handoff::channel();
            let _ = self.tx.send_async(Job::Flush(reply)).await;
        }
    }

    /// Where committed inbox rows go; set once the actors are running.
    pub fn set_dispatcher(&self, dispatcher: Dispatcher) {
        let _ = self.dispatcher.set(dispatcher);
    }

    pub fn queue_len(&self) -> usize {
        self.tx.len()
    }

    pub fn health(&self) -> &WriterHealth {
        &self.health
    }

    /// The key raw payloads arriving at `now_ms` are sealed under: the day's, made
    /// (and committed, by a write of its own) the first time the day needs it.
    pub async fn day_key(&self, keyring: &Arc<Vault>, now_ms: i64) -> Result<DayKey, StorageError> {
        let day = raw_keys::day_of(now_ms);
        if let Some(known) = self.raw_keys.cached(&day) {
            return Ok(known);
        }
        let (ring, wanted) = (keyring.clone(), day.clone());
        let key = self
            .write(None, move |conn| {
                raw_keys::make_day_key(conn, &ring, &wanted, now_ms)
            })
            .await?;
        let day_key = DayKey { day, key };
        self.raw_keys.remember_committed(&day_key);
        Ok(day_key)
    }
}

/// Called at the start of every write batch with the writer's index; tests make it
/// panic to show that a panicked writer is restarted.
pub type BatchHook = Arc<dyn Fn(usize) + Send + Sync>;

pub struct WriterConfig {
    pub batch_max: usize,
    pub keep_processed_ms: i64,
    /// Writer threads; 0 = 1 for SQLite, 2 for PostgreSQL.
    pub writers: usize,
    /// SQLite: WAL pages (of 4 KiB) past which the WAL starts over.
    pub wal_restart_pages: i64,
    /// SQLite: the pause between two background checkpoints.
    pub checkpoint_interval: Duration,
    pub before_batch: Option<BatchHook>,
    /// Raw payloads' days kept (`inbox.keep_raw_days`).
    pub keep_raw_days: u32,
}

/// A thread of the storage layer's background work, by name, for shutdown to await.
pub struct BackgroundThread {
    pub name: String,
    pub handle: JoinHandle<()>,
}

impl BackgroundThread {
    fn spawn(
        name: &str,
        log: &slog::Logger,
        work: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<BackgroundThread> {
        let log = log.new(slog::o!("background" => name.to_string()));
        let handle = std::thread::Builder::new()
            .name(format!("converra-{name}"))
            .spawn(move || {
                work();
                slog::info!(log, "background task stopped");
            })?;
        Ok(BackgroundThread {
            name: name.to_string(),
            handle,
        })
    }
}

/// Starts the writer threads and, on SQLite, the checkpointer and the conversation
/// index reader, returned by name. The writers stop after [`WriterHandle::stop`] once
/// what was queued is written; the others once every writer has stopped.
pub fn spawn(
    pool: Pool,
    keyring: Arc<Vault>,
    clock: SharedClock,
    report: Arc<dyn WriterReport>,
    routes: Arc<RouteCache>,
    config: WriterConfig,
    log: slog::Logger,
) -> std::io::Result<(WriterHandle, Vec<BackgroundThread>)> {
    // Bounded: when the database falls behind, webhook handlers wait here instead of
    // memory growing without limit.
    let capacity = config.batch_max.max(64) * 16;
    let (tx, rx) = flume::bounded(capacity);
    let dispatcher: Arc<OnceLock<Dispatcher>> = Arc::new(OnceLock::new());
    let sqlite = pool
        .get()
        .map(|conn| matches!(*conn, DbConn::Sqlite(_)))
        .unwrap_or(false);
    let writers = match (config.writers, sqlite) {
        (0, true) => 1,
        (0, false) => 2,
        (n, _) => n,
    };
    let stopping = Arc::new(AtomicBool::new(false));
    let health = Arc::new(WriterHealth::new(writers));
    let raw_keys = Arc::new(RawKeys::default());
    let merged_away = MergedAway::default();
    let handle = WriterHandle {
        tx,
        health: health.clone(),
        raw_keys: raw_keys.clone(),
        dispatcher: dispatcher.clone(),
        stopping: stopping.clone(),
        writers,
    };
    let stopped = Arc::new(AtomicUsize::new(0));
    let restart_wanted = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::with_capacity(writers + 2);
    if sqlite {
        threads.push(spawn_checkpointer(
            pool.clone(),
            stopped.clone(),
            restart_wanted.clone(),
            config.wal_restart_pages,
            config.checkpoint_interval,
            writers,
            log.clone(),
        )?);
    }
    let index_shared = sqlite.then(|| Arc::new(IndexShared::default()));
    if let Some(shared) = &index_shared {
        threads.push(spawn_index_reader(
            pool.clone(),
            shared.clone(),
            report.clone(),
            stopped.clone(),
            writers,
            log.clone(),
        )?);
    }
    for index in 0..writers {
        let mut writer = Writer {
            pool: pool.clone(),
            conn: None,
            keyring: keyring.clone(),
            clock: clock.clone(),
            report: report.clone(),
            batch_max: config.batch_max,
            keep_processed_ms: config.keep_processed_ms,
            // One writer purges; the others would only repeat it.
            maintains: index == 0,
            log: log.new(slog::o!("writer" => index)),
            index,
            health: health.clone(),
            before_batch: config.before_batch.clone(),
            merged_away: merged_away.clone(),
            raw_keys: raw_keys.clone(),
            keep_raw_days: config.keep_raw_days,
            connect_failed: false,
            dispatcher: dispatcher.clone(),
            restart_wanted: restart_wanted.clone(),
            stopping: stopping.clone(),
            routes: routes.clone(),
            ingest: VecDeque::new(),
            lanes: VecDeque::new(),
            queued: 0,
            max_queued: capacity,
            last_maintenance: Instant::now(),
            conversation_index: (index == 0)
                .then(|| index_shared.clone())
                .flatten()
                .map(|shared| ConversationIndexer { shared, bulk: None }),
            arrivals: Arrivals {
                since: Instant::now(),
                jobs: 0,
                rate: 0.0,
            },
        };
        let rx = rx.clone();
        let stopped = stopped.clone();
        threads.push(BackgroundThread::spawn(
            &format!("writer-{index}"),
            &log,
            move || {
                writer.supervise(rx);
                stopped.fetch_add(1, Ordering::SeqCst);
            },
        )?);
    }
    Ok((handle, threads))
}

struct Writer {
    pool: Pool,
    conn: Option<PooledConn>,
    keyring: Arc<Vault>,
    clock: SharedClock,
    report: Arc<dyn WriterReport>,
    batch_max: usize,
    keep_processed_ms: i64,
    maintains: bool,
    log: slog::Logger,
    /// This writer's place in [`WriterHealth`].
    index: usize,
    health: Arc<WriterHealth>,
    before_batch: Option<BatchHook>,
    merged_away: MergedAway,
    raw_keys: Arc<RawKeys>,
    keep_raw_days: u32,
    /// The last attempt to get a connection failed: the database is unreachable.
    connect_failed: bool,
    dispatcher: Arc<OnceLock<Dispatcher>>,
    /// Set by the checkpointer when the WAL should start over (SQLite).
    restart_wanted: Arc<AtomicBool>,
    /// Set by [`WriterHandle::stop`].
    stopping: Arc<AtomicBool>,
    /// phone_number_id → owning tenant (only owned numbers are cached).
    routes: Arc<RouteCache>,
    ingest: VecDeque<Job>,
    /// Actor jobs waiting, one queue per tenant, served round-robin.
    lanes: VecDeque<(TenantId, VecDeque<Job>)>,
    /// Jobs in `ingest` and `lanes`, and how many they may hold.
    queued: usize,
    max_queued: usize,
    last_maintenance: Instant,
    /// SQLite, one writer: fills the conversation index in bulk.
    conversation_index: Option<ConversationIndexer>,
    arrivals: Arrivals,
}

/// Jobs counted since a moment, and the rate of the last whole second before it.
struct Arrivals {
    since: Instant,
    jobs: usize,
    rate: f64,
}

/// The bulk the writer is indexing, and where the next one comes from.
struct ConversationIndexer {
    shared: Arc<IndexShared>,
    bulk: Option<conversation_index::Bulk>,
}

impl ConversationIndexer {
    /// The bulk in progress, or else the one the reader left, if any.
    fn current(&mut self) -> Option<&mut conversation_index::Bulk> {
        if self.bulk.is_none() {
            self.bulk = self
                .shared
                .next
                .lock()
                .ok()
                .and_then(|mut next| next.take());
            self.publish_busy();
        }
        self.bulk.as_mut()
    }

    /// After a slice: a finished bulk is done with; so is one whose slice failed (its
    /// messages stay in the tail, where readers find them, and the next bulk reads
    /// them again).
    fn after_slice(&mut self, indexed: bool) {
        if !indexed || self.bulk.as_ref().is_some_and(|bulk| bulk.is_done()) {
            self.bulk = None;
        }
        self.publish_busy();
    }

    /// The reader reads no new bulk while the writer is still indexing one (it would
    /// read the same messages again).
    fn publish_busy(&self) {
        self.shared
            .writer_busy
            .store(self.bulk.is_some(), Ordering::SeqCst);
    }
}

/// Between the index reader and the writer: the next bulk, read and sorted, and
/// whether the writer is still indexing one (the reader then waits, or it would read
/// the same messages again).
#[derive(Default)]
struct IndexShared {
    next: std::sync::Mutex<Option<conversation_index::Bulk>>,
    writer_busy: AtomicBool,
}

/// SQLite only: every [`conversation_index::BULK_EVERY`], reads the unindexed tail on
/// a connection of its own and leaves it, sorted, for the writer. Reading it is
/// milliseconds of page reads; on this thread a WAL reader, it never holds the write
/// lock, so no webhook waits for it.
fn spawn_index_reader(
    pool: Pool,
    shared: Arc<IndexShared>,
    report: Arc<dyn WriterReport>,
    stopped: Arc<AtomicUsize>,
    writers: usize,
    log: slog::Logger,
) -> std::io::Result<BackgroundThread> {
    BackgroundThread::spawn("conversation-index", &log.clone(), move || {
        while stopped.load(Ordering::SeqCst) < writers {
            std::thread::sleep(conversation_index::BULK_EVERY);
            let waiting = shared
                .next
                .lock()
                .map(|next| next.is_some())
                .unwrap_or(true);
            if waiting || shared.writer_busy.load(Ordering::SeqCst) {
                continue;
            }
            let read =
                pool.get()
                    .map_err(StorageError::from)
                    .and_then(|mut conn| match &mut *conn {
                        DbConn::Sqlite(c) => conversation_index::begin_bulk(c),
                        DbConn::Pg(_) => Ok(None),
                    });
            match read {
                Ok(Some(bulk)) => {
                    report.index_tail(bulk.remaining());
                    if let Ok(mut next) = shared.next.lock() {
                        *next = Some(bulk);
                    }
                }
                Ok(None) => report.index_tail(0),
                Err(e) => slog::debug!(log, "conversation index tail not read"; "error" => %e),
            }
        }
    })
}

const MAINTENANCE_EVERY: Duration = Duration::from_secs(30);
/// Woken from idle by a job, the writer waits up to [`GATHER_FOR`] for more, until it
/// holds [`GATHER_JOBS`], before it writes, when jobs have been arriving at
/// [`GATHER_FROM_RATE`] a second or more: at a moderate rate each batch otherwise
/// carried 2-5 webhooks, and a batch's fixed costs (its commit and sync, the pages every
/// batch writes) were most of the writer's CPU. At 10,000/s (SQLite FULL, eleven
/// interleaved pairs) the writer's CPU per message fell from 44-47 to 33-36 µs and the
/// server's from 100-104 to 85-95; p50 up to 0.9 ms higher; the client p99 is not
/// resolved (lower in seven of eleven pairs, medians 19.9 against 17.2 ms). At 1,000/s
/// waiting would only add its half millisecond to every webhook (p50 0.5-0.7 ms became
/// 1.0-1.2), hence the rate. Under full load the writer is never idle, so it never
/// waits.
const GATHER_FOR: Duration = Duration::from_micros(500);
const GATHER_JOBS: usize = 16;
/// About two jobs expected within [`GATHER_FOR`].
const GATHER_FROM_RATE: f64 = 4_000.0;
/// A write that took this long is logged: the disk (or the database server) is
/// struggling, and webhooks wait.
const SLOW_WRITE: Duration = Duration::from_millis(100);

impl Writer {
    /// Runs the writer loop, restarting it after a panic. The jobs in its hands when
    /// it panicked are dropped unanswered, which their callers see as "the writer is
    /// unavailable" (a webhook answers 503 and Meta retries, an actor retries); the
    /// connection it held is discarded, since it may be inside a transaction.
    fn supervise(&mut self, rx: flume::Receiver<Job>) {
        // Running from here to the loop's end, restarts included: only a thread that
        // has ended counts as down.
        self.health.running.fetch_add(1, Ordering::SeqCst);
        loop {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.run(rx.clone());
            }));
            self.health.end(self.index);
            match ran {
                Ok(()) => {
                    self.health.running.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
                Err(panic) => {
                    let reason = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    slog::error!(self.log, "writer panicked; restarting it, the jobs in hand failed";
                        "panic" => reason);
                    self.report.writer_restarted();
                    self.conn = None;
                    self.ingest.clear();
                    self.lanes.clear();
                    self.queued = 0;
                    if let Some(indexer) = self.conversation_index.as_mut() {
                        indexer.bulk = None;
                        indexer.publish_busy();
                    }
                    // A panic that repeats at once must not spin a core.
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn run(&mut self, rx: flume::Receiver<Job>) {
        loop {
            let idle = self.ingest.is_empty() && self.lanes.is_empty();
            if idle {
                match rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(job) => {
                        self.enqueue(job);
                        if self.gathering() {
                            self.gather(&rx);
                        }
                    }
                    Err(flume::RecvTimeoutError::Timeout) => {
                        self.maintenance();
                        // Nothing else to do: the whole tail, not one slice.
                        while self.index_conversations() {}
                        continue;
                    }
                    Err(flume::RecvTimeoutError::Disconnected) => break,
                }
            }
            // The writer's own queues hold at most as many jobs as the channel: past
            // that, jobs wait in the channel, whose senders (webhook handlers, actors)
            // then wait in turn, instead of memory growing without limit.
            let room = self.max_queued.saturating_sub(self.queued);
            for job in rx.try_iter().take(room) {
                self.enqueue(job);
            }
            let batch = self.take_batch();
            self.process(batch, &rx);
            if self.restart_wanted.swap(false, Ordering::SeqCst) {
                self.restart_wal();
            }
            if self.last_maintenance.elapsed() >= MAINTENANCE_EVERY {
                self.maintenance();
            }
            if self.stopping.load(Ordering::SeqCst)
                && self.ingest.is_empty()
                && self.lanes.is_empty()
                && rx.is_empty()
            {
                break;
            }
        }
        // Disconnected: everything queued has been taken; finish it.
        while !self.ingest.is_empty() || !self.lanes.is_empty() {
            let batch = self.take_batch();
            self.process(batch, &rx);
        }
        slog::info!(self.log, "writer stopped");
    }

    /// Whether jobs arrive fast enough for waiting to gather more (see [`GATHER_FOR`]),
    /// judged by the last full second. Each writer counts the jobs it took itself.
    fn gathering(&mut self) -> bool {
        let elapsed = self.arrivals.since.elapsed();
        if elapsed >= Duration::from_secs(1) {
            self.arrivals.rate = self.arrivals.jobs as f64 / elapsed.as_secs_f64();
            self.arrivals.since = Instant::now();
            self.arrivals.jobs = 0;
        }
        self.arrivals.rate >= GATHER_FROM_RATE
    }

    /// Takes jobs until [`GATHER_JOBS`] are waiting or [`GATHER_FOR`] has passed.
    fn gather(&mut self, rx: &flume::Receiver<Job>) {
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

    fn enqueue(&mut self, job: Job) {
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
    fn take_batch(&mut self) -> Vec<Job> {
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

    fn connection(&mut self) -> Result<&mut PooledConn, StorageError> {
        if self.conn.is_none() {
            let mut conn = match self.pool.get() {
                Ok(conn) => conn,
                Err(e) => {
                    self.connect_failed = true;
                    return Err(e.into());
                }
            };
            self.connect_failed = false;
            if let DbConn::Sqlite(c) = &mut *conn {
                // Checkpoints are the checkpointer thread's work, off the commit path.
                // The page cache keeps SQLite's default size (2 MiB) on purpose: at
                // every commit SQLite truncates the cache to the database's size, and
                // a B-tree rebalance parks pages at the lock-byte page number (1 GiB
                // in), so that truncation walks the whole cache's hash table. With a
                // 64 MiB cache it cost a tenth of the writer's time, more than the
                // reads it saved.
                c.batch_execute(
                    "PRAGMA main.wal_autocheckpoint = 0; PRAGMA keystore.wal_autocheckpoint = 0;",
                )?;
            }
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| StorageError::Unavailable("no connection".into()))
    }

    fn process(&mut self, batch: Vec<Job>, rx: &flume::Receiver<Job>) {
        if batch.is_empty() {
            return;
        }
        self.health.begin(self.index);
        if let Some(hook) = &self.before_batch {
            hook(self.index);
        }
        self.process_batch(batch, rx);
        self.health.end(self.index);
    }

    fn process_batch(&mut self, batch: Vec<Job>, rx: &flume::Receiver<Job>) {
        let started = Instant::now();
        let now = self.clock.now_ms();
        // Flush markers are answered after the work queued before them.
        let (flushes, mut jobs): (Vec<Job>, Vec<Job>) =
            batch.into_iter().partition(|j| matches!(j, Job::Flush(_)));
        let mut new_keys = match self.prepare_keys(&jobs, now) {
            Ok(keys) => keys,
            Err(e) => {
                self.fail_all(jobs, &e);
                self.answer_flushes(flushes);
                return;
            }
        };
        let batch_size = jobs.len();
        let slice = self.next_index_slice();
        let result = self.run_batch(&mut jobs, &mut new_keys, now, slice.as_ref());
        match result {
            Ok((outcomes, indexed)) => {
                if let Some(slice) = slice {
                    self.index_slice_committed(slice, indexed);
                }
                self.finish(jobs.drain(..).zip(outcomes.into_iter().map(Ok)));
            }
            Err(e) if jobs.len() == 1 && !e.is_transient() => {
                // The job's own error, as it is.
                self.conn = None;
                slog::warn!(self.log, "write failed"; "error" => %e);
                self.finish(jobs.drain(..).zip(std::iter::once(Err(e))));
            }
            Err(e) if e.is_transient() => {
                // The connection may be the casualty (a server restart, a terminated
                // backend): the pool hands out a fresh one for the next batch.
                self.conn = None;
                slog::warn!(self.log, "write batch failed"; "error" => %e, "jobs" => batch_size);
                self.fail_all(jobs, &e);
                if self.connect_failed {
                    // Each batch would wait out the pool's connect timeout in turn, and
                    // the last webhook in the queue would wait for all of them: while
                    // the database cannot be reached, everything waiting fails at once.
                    let mut waiting: Vec<Job> = self.ingest.drain(..).collect();
                    waiting.extend(self.lanes.drain(..).flat_map(|(_, lane)| lane));
                    self.queued = 0;
                    waiting.extend(rx.try_iter());
                    self.fail_all(waiting, &e);
                }
            }
            Err(e) => {
                self.conn = None;
                slog::warn!(self.log, "write batch failed, retrying its jobs one by one"; "error" => %e);
                let mut results = Vec::with_capacity(jobs.len());
                for job in jobs.iter_mut() {
                    let one = self.run_batch(std::slice::from_mut(job), &mut new_keys, now, None);
                    results.push(one.map(|(mut o, _)| o.remove(0)));
                }
                self.finish(jobs.drain(..).zip(results));
            }
        }
        let took = started.elapsed();
        if took >= SLOW_WRITE {
            // Every webhook and actor in the batch waited this long.
            slog::warn!(self.log, "slow write batch"; "ms" => took.as_millis(), "jobs" => batch_size);
        }
        self.report.batch_committed(took.as_secs_f64(), batch_size);
        self.answer_flushes(flushes);
    }

    fn answer_flushes(&self, flushes: Vec<Job>) {
        for job in flushes {
            if let Job::Flush(reply) = job {
                reply.send(());
            }
        }
    }

    /// Data keys for contacts that a resolve job will create are committed to the key
    /// store first, in a transaction of their own: a crash between the two leaves an
    /// unused key, never data without its key.
    fn prepare_keys(
        &mut self,
        jobs: &[Job],
        now: i64,
    ) -> Result<HashMap<usize, (KeyId, NewDataKey)>, StorageError> {
        let keyring = self.keyring.clone();
        let resolves: Vec<(usize, (&TenantId, &ContactIdentifiers))> = jobs
            .iter()
            .enumerate()
            .filter_map(|(index, job)| match job {
                Job::Resolve { tenant_id, ids, .. } => Some((index, (tenant_id, ids))),
                _ => None,
            })
            .collect();
        if resolves.is_empty() {
            return Ok(HashMap::new());
        }
        let asked: Vec<(&TenantId, &ContactIdentifiers)> =
            resolves.iter().map(|(_, asked)| *asked).collect();
        let exist = crm::contacts_exist(self.connection()?, &keyring, &asked)?;
        let mut keys = HashMap::new();
        for ((index, (tenant_id, _)), exists) in resolves.iter().zip(exist) {
            if !exists {
                let key_id = KeyId::generate();
                let data_key = keyring.new_data_key(tenant_id.as_str(), key_id.as_str())?;
                keys.insert(*index, ((*tenant_id).clone(), key_id, data_key));
            }
        }
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let conn = self.connection()?;
        let committed = conn.transaction::<_, StorageError, _>(|conn| {
            let rows: Vec<(&TenantId, &KeyId, &[u8])> = keys
                .values()
                .map(|(tenant_id, key_id, data_key)| (tenant_id, key_id, &data_key.wrapped[..]))
                .collect();
            crm::insert_data_keys(conn, &keyring, &rows, now)
        });
        if let Err(e) = committed {
            if e.is_transient() {
                self.conn = None;
            }
            return Err(e);
        }
        Ok(keys
            .into_iter()
            .map(|(index, (_, key_id, key))| (index, (key_id, key)))
            .collect())
    }

    /// Runs the jobs, and `slice` of the conversation index after them, in one
    /// transaction; the slice in a savepoint of its own, so that its failure (returned
    /// beside the outcomes) costs only the slice.
    fn run_batch(
        &mut self,
        jobs: &mut [Job],
        new_keys: &mut HashMap<usize, (KeyId, NewDataKey)>,
        now: i64,
        slice: Option<&conversation_index::Slice>,
    ) -> Result<(Vec<Outcome>, Result<(), StorageError>), StorageError> {
        let keyring = self.keyring.clone();
        let merged_away = self.merged_away.clone();
        let routes = self.routes.clone();
        let result = {
            let conn = match self.connection() {
                Ok(conn) => conn,
                Err(e) => {
                    return Err(e);
                }
            };
            conn.transaction::<_, StorageError, _>(|conn| {
                point_lookups_only(conn)?;
                // The inbox inserts of the batch first, then the actors' ops, each in
                // multi-row statements; resolves one by one.
                let parts: Vec<IngestPart<'_>> = jobs
                    .iter()
                    .filter_map(|job| match job {
                        Job::Ingest {
                            day,
                            events,
                            others,
                            ..
                        } => Some((day, &events[..], &others[..])),
                        _ => None,
                    })
                    .collect();
                let mut receipts = ingest(conn, &keyring, &routes, &parts, now)?.into_iter();
                let mut applied = apply_jobs(conn, jobs, &merged_away, now)?.into_iter();
                let mut outcomes = Vec::with_capacity(jobs.len());
                for (index, job) in jobs.iter_mut().enumerate() {
                    let outcome = match job {
                        Job::Ingest { .. } => Outcome::Ingest(receipts.next().unwrap_or_default()),
                        Job::Resolve { tenant_id, ids, .. } => {
                            // A key prepared for this job is used at most once; if
                            // another job in the batch created the contact, it stays
                            // unused in the key store.
                            let key = new_keys.remove(&index);
                            Outcome::Resolve(crm::resolve_contact(
                                conn, &keyring, tenant_id, ids, key, now,
                            )?)
                        }
                        Job::Apply { .. } => Outcome::Apply(applied.next().unwrap_or_default()),
                        Job::Write { work, .. } => Outcome::Write(work(conn)?),
                        Job::Flush(_) => Outcome::Apply(ApplyReceipt::default()),
                    };
                    outcomes.push(outcome);
                }
                let indexed = match slice {
                    Some(slice) => {
                        conn.transaction::<_, StorageError, _>(|conn| match &mut **conn {
                            DbConn::Sqlite(c) => conversation_index::index_in_transaction(c, slice),
                            DbConn::Pg(_) => Ok(()),
                        })
                    }
                    None => Ok(()),
                };
                Ok((outcomes, indexed))
            })
        };
        result
    }

    fn fail_all(&self, jobs: Vec<Job>, error: &StorageError) {
        // Each job hears the same kind of error: a transient one stays transient, a
        // permanent one permanent, so no caller retries for ever what cannot succeed.
        let copy = || match error {
            e if e.is_transient() => StorageError::Unavailable(e.to_string()),
            StorageError::ContactGone(contact) => StorageError::ContactGone(contact.clone()),
            e => StorageError::Rejected(e.to_string()),
        };
        let mut outbox = Outbox::default();
        for job in jobs {
            match job {
                Job::Ingest { reply, .. } => outbox.push(reply, Err(copy())),
                Job::Resolve { reply, .. } => outbox.push(reply, Err(copy())),
                Job::Apply { reply, .. } => outbox.push(reply, Err(copy())),
                Job::Write { reply, .. } => outbox.push(reply, Err(copy())),
                Job::Flush(reply) => outbox.push(reply, ()),
            }
        }
    }

    /// Answers a committed batch's jobs: one hand-off per receiving thread.
    fn finish(&self, results: impl Iterator<Item = (Job, Result<Outcome, StorageError>)>) {
        let mut dispatch = Vec::new();
        let mut outbox = Outbox::default();
        for (job, result) in results {
            match (job, result) {
                (Job::Ingest { reply, .. }, Ok(Outcome::Ingest(receipt))) => {
                    self.report.events_stored(receipt.counts());
                    dispatch.extend(receipt.accepted.iter().cloned());
                    outbox.push(reply, Ok(receipt));
                }
                (Job::Resolve { reply, .. }, Ok(Outcome::Resolve(contact))) => {
                    if let Some(removed) = &contact.merged_away {
                        if let Ok(mut gone) = self.merged_away.write() {
                            gone.insert(removed.to_string());
                        }
                    }
                    outbox.push(reply, Ok(contact));
                }
                (
                    Job::Apply {
                        reply,
                        ops,
                        waiters,
                        ..
                    },
                    Ok(Outcome::Apply(receipt)),
                ) => {
                    self.report
                        .events_stored(applied_counts(&ops, &receipt.duplicate));
                    for (index, waiter) in waiters {
                        let duplicate = receipt.duplicate.get(index).copied().unwrap_or(false);
                        let delivered = if duplicate {
                            Delivered::Duplicate
                        } else {
                            Delivered::New
                        };
                        outbox.push(waiter, delivered);
                    }
                    outbox.push(reply, Ok(receipt));
                }
                (Job::Ingest { reply, .. }, Err(e)) => outbox.push(reply, Err(e)),
                (Job::Resolve { reply, .. }, Err(e)) => outbox.push(reply, Err(e)),
                (Job::Apply { reply, .. }, Err(e)) => outbox.push(reply, Err(e)),
                (Job::Write { reply, .. }, Ok(Outcome::Write(output))) => {
                    outbox.push(reply, Ok(output));
                }
                (Job::Write { reply, .. }, Err(e)) => outbox.push(reply, Err(e)),
                (Job::Flush(reply), _) => outbox.push(reply, ()),
                (job, Ok(_)) => {
                    // Outcomes are produced in job order, so this cannot happen; answer
                    // with an error rather than leave the caller waiting.
                    self.fail_all(vec![job], &StorageError::Corrupt("outcome mismatch".into()));
                }
            }
        }
        if !dispatch.is_empty() {
            if let Some(dispatcher) = self.dispatcher.get() {
                dispatcher(dispatch);
            }
        }
    }

    /// See [`spawn_checkpointer`].
    fn restart_wal(&mut self) {
        let started = Instant::now();
        let result = self.connection().and_then(|conn| {
            checkpoint(conn, "main", "RESTART")?;
            checkpoint(conn, "keystore", "RESTART")
        });
        if let Err(e) = result {
            slog::debug!(self.log, "WAL restart skipped"; "error" => %e);
        }
        let took = started.elapsed();
        self.report.wal_restarted(took.as_secs_f64());
        if took >= SLOW_WRITE {
            slog::warn!(self.log, "WAL restart held the writer"; "ms" => took.as_millis());
        }
    }

    /// The next slice of the conversation index to write with a batch, when the reader
    /// has left a bulk or one is in progress (SQLite, writer 0).
    fn next_index_slice(&mut self) -> Option<conversation_index::Slice> {
        let indexer = self.conversation_index.as_mut()?;
        indexer.current().map(|bulk| bulk.next_slice())
    }

    /// After the batch that carried `slice` committed.
    fn index_slice_committed(
        &mut self,
        slice: conversation_index::Slice,
        indexed: Result<(), StorageError>,
    ) {
        let Some(indexer) = self.conversation_index.as_mut() else {
            return;
        };
        if let Err(e) = &indexed {
            slog::warn!(self.log, "conversation index slice failed"; "error" => %e);
        } else if let Some(bulk) = indexer.bulk.as_mut() {
            bulk.slice_committed(&slice);
        }
        indexer.after_slice(indexed.is_ok());
    }

    /// One slice of the conversation index in a transaction of its own, when the
    /// writer has no batch to carry it. Returns whether a bulk is in progress.
    fn index_conversations(&mut self) -> bool {
        let Some(mut indexer) = self.conversation_index.take() else {
            return false;
        };
        if let Some(bulk) = indexer.current() {
            let started = Instant::now();
            let step = self.connection().and_then(|conn| match &mut **conn {
                DbConn::Sqlite(c) => conversation_index::index_slice(c, bulk),
                DbConn::Pg(_) => Ok(()),
            });
            if let Err(e) = &step {
                self.conn = None;
                slog::warn!(self.log, "conversation index slice failed"; "error" => %e);
            }
            let took = started.elapsed();
            if took >= SLOW_WRITE {
                slog::warn!(self.log, "conversation index held the writer"; "ms" => took.as_millis());
            }
            indexer.after_slice(step.is_ok());
        }
        let in_progress = indexer.bulk.is_some();
        self.conversation_index = Some(indexer);
        in_progress
    }

    fn maintenance(&mut self) {
        self.last_maintenance = Instant::now();
        if !self.maintains {
            return;
        }
        let now = self.clock.now_ms();
        let cutoff = now - self.keep_processed_ms;
        let result = self.connection().and_then(|conn| {
            let purged = inbox::purge_processed(conn, cutoff)?;
            let backlog = inbox::backlog(conn)?;
            let parked = inbox::parked_count(conn)?;
            Ok((purged, backlog, parked))
        });
        let (keyring, keys, keep_days) = (
            self.keyring.clone(),
            self.raw_keys.clone(),
            self.keep_raw_days,
        );
        let expired = self
            .connection()
            .and_then(|conn| raw_keys::expire(conn, &keyring, &keys, now, keep_days));
        match expired {
            Ok(expired) => {
                self.report
                    .raw_payloads_expired(expired.deleted, expired.overdue);
                if expired.deleted > 0 || !expired.destroyed.is_empty() {
                    slog::info!(self.log, "raw payloads past inbox.keep_raw_days deleted";
                        "payloads" => expired.deleted, "keys_destroyed" => expired.destroyed.len());
                }
                if expired.overdue > 0 {
                    slog::warn!(self.log, "inbox events older than inbox.keep_raw_days still wait; their days' keys are kept";
                        "rows" => expired.overdue);
                }
            }
            Err(e) => {
                self.conn = None;
                slog::warn!(self.log, "raw payload expiry failed"; "error" => %e);
            }
        }
        match result {
            Ok((purged, backlog, parked)) => {
                self.report.inbox_levels(backlog, parked);
                if purged > 0 {
                    slog::debug!(self.log, "purged processed inbox rows"; "rows" => purged);
                }
            }
            Err(e) => {
                self.conn = None;
                slog::warn!(self.log, "inbox maintenance failed"; "error" => %e);
            }
        }
    }
}

/// PostgreSQL: plans the batch's statements with index lookups, never a sequential
/// scan. Every statement the writer runs reaches its rows by key, but joined to a batch
/// of unnested rows the planner judged a small, hot table (a thousand conversations)
/// cheaper to read whole and hash: two sequential scans per batch once it held about
/// fifteen conversations (seen with auto_explain), the largest part of PostgreSQL's
/// CPU per message. `SET LOCAL` ends with the transaction.
fn point_lookups_only(conn: &mut DbConn) -> Result<(), StorageError> {
    if let DbConn::Pg(c) = conn {
        c.batch_execute("SET LOCAL enable_seqscan = off")?;
    }
    Ok(())
}

/// SQLite only: the writer's connection does not checkpoint the WAL itself (that
/// would stall every commit that crosses the threshold); this thread copies the WAL
/// back into the database files in the background.
///
/// A passive checkpoint never catches up with a writer that commits all the time, and
/// SQLite rewinds the WAL only once every frame is copied back, so under steady load
/// the WAL would grow without bound (hundreds of MB a minute, every new block allocated
/// by the file system on the commit path). When it passes `wal_restart_pages`, this
/// thread raises `restart_wanted` and the writer takes a RESTART checkpoint itself,
/// between two batches: the passive ones have already copied almost everything, so it
/// pauses only for the remainder, and the WAL starts over in blocks the file already
/// has. Taken from this thread instead, the RESTART would hold the write lock while
/// the writer slept in its busy handler, which wakes at coarse steps (measured: p99
/// 15-47 ms instead of 7-18 ms at half load). The pause grows with the size of the WAL
/// and of the database; small and frequent restarts (the 16 MiB default: 1-2 ms, four
/// times a second at full speed) measured better on p99 than large and rare ones
/// (128 MiB: 12-32 ms every few seconds).
fn spawn_checkpointer(
    pool: Pool,
    stopped: Arc<AtomicUsize>,
    restart_wanted: Arc<AtomicBool>,
    wal_restart_pages: i64,
    interval: Duration,
    writers: usize,
    log: slog::Logger,
) -> std::io::Result<BackgroundThread> {
    BackgroundThread::spawn("checkpoint", &log.clone(), move || {
        while stopped.load(Ordering::SeqCst) < writers {
            std::thread::sleep(interval);
            let result = pool.get().map_err(StorageError::from).and_then(|mut conn| {
                for schema in ["main", "keystore"] {
                    if checkpoint(&mut conn, schema, "PASSIVE")? >= wal_restart_pages {
                        catch_up(&mut conn, schema)?;
                        // Only a head start for the restart's own sync: it
                        // goes ahead without it.
                        if let Err(e) = sync_database_file(&mut conn, schema) {
                            slog::warn!(log, "database file not synced before the WAL restart";
                                    "error" => %e);
                        }
                        // The sync took a while (tens of milliseconds under load),
                        // and the writer went on adding frames: copy those too, so
                        // the writer's RESTART is left only a few milliseconds'
                        // worth instead of the whole sync's.
                        catch_up(&mut conn, schema)?;
                        restart_wanted.store(true, Ordering::SeqCst);
                    }
                }
                Ok(())
            });
            if let Err(e) = result {
                slog::debug!(log, "WAL checkpoint skipped"; "error" => %e);
            }
        }
    })
}

const CATCH_UP_PASSES: usize = 3;

/// Passive checkpoints in a row: each copies what the writer added during the one
/// before, a shorter while each time.
fn catch_up(conn: &mut DbConn, schema: &str) -> Result<(), StorageError> {
    for _ in 0..CATCH_UP_PASSES {
        checkpoint(conn, schema, "PASSIVE")?;
    }
    Ok(())
}

/// Flushes to disk what the passive checkpoints copied into the database file. A
/// checkpoint syncs the file only when it has copied every frame, which under steady
/// load only the writer's RESTART does: its sync then flushes seconds of copied pages
/// while every webhook waits. Synced here first, off the writer's path, that sync finds
/// little left to do. Flushing is always safe: it only makes durable sooner what the
/// file already holds.
///
/// The database files themselves are never opened here: on Linux, closing any
/// descriptor of a file drops every POSIX lock the process holds on it, SQLite's locks
/// included, and another process (an operator command) could then delete the WAL
/// under the daemon and corrupt the database. `syncfs` on the file's directory flushes
/// the file system that holds it, through a descriptor of the directory, which holds
/// no SQLite lock.
fn sync_database_file(conn: &mut DbConn, schema: &str) -> Result<(), StorageError> {
    let DbConn::Sqlite(c) = conn else {
        return Ok(());
    };
    let Some(path) = super::sqlite_file(c, schema)? else {
        return Ok(());
    };
    let directory = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => parent.to_path_buf(),
        None => std::path::PathBuf::from("."),
    };
    super::sqlite::sync_file_system(&directory)
        .map_err(|e| StorageError::Unavailable(format!("syncing {}: {e}", directory.display())))
}

#[derive(diesel::QueryableByName)]
struct CheckpointResult {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    log: i64,
}

/// Runs one checkpoint of `schema` in `mode`; returns the WAL's length in pages.
fn checkpoint(conn: &mut DbConn, schema: &str, mode: &str) -> Result<i64, StorageError> {
    use diesel::RunQueryDsl;
    let DbConn::Sqlite(c) = conn else {
        return Ok(0);
    };
    let rows: Vec<CheckpointResult> =
        diesel::sql_query(format!("PRAGMA {schema}.wal_checkpoint({mode})")).load(c)?;
    Ok(rows.first().map(|r| r.log).unwrap_or(0))
}

/// Applies every actor job's ops of the batch together (see [`crm::apply_batch`]),
/// less the fresh events whose inbox row exists already (redeliveries), and marks the
/// inbox rows they came from processed; one receipt per apply job, in order.
fn apply_jobs(
    conn: &mut DbConn,
    jobs: &[Job],
    merged_away: &MergedAway,
    now: i64,
) -> Result<Vec<ApplyReceipt>, StorageError> {
    let apply_jobs: Vec<(&TenantId, &[ApplyOp])> = jobs
        .iter()
        .filter_map(|job| match job {
            Job::Apply { tenant_id, ops, .. } => Some((tenant_id, &ops[..])),
            _ => None,
        })
        .collect();
    // An actor may still hold a contact that a merge removed: its write fails as a
    // whole (the batch is then retried job by job) and the actor resolves again.
    // Merges happen only here, in the writers, so the ids they removed are known
    // without asking the database (a query per batch cost 6% of the throughput).
    if let Ok(gone) = merged_away.read() {
        if !gone.is_empty() {
            let stale = apply_jobs
                .iter()
                .flat_map(|(_, ops)| ops.iter().filter_map(|op| op.contact_id()))
                .find(|id| gone.contains(id.as_str()));
            if let Some(stale) = stale {
                return Err(StorageError::ContactGone(stale.to_string()));
            }
        }
    }
    let fresh: Vec<(&TenantId, &inbox::FreshRow)> = apply_jobs
        .iter()
        .flat_map(|(tenant_id, ops)| {
            ops.iter()
                .filter_map(move |op| Some((*tenant_id, op.inbox_row_to_insert()?)))
        })
        .collect();
    let mut new_rows = inbox::insert_processed(conn, &fresh, now)?;
    // Per job and op: a fresh event whose row was there already. The first of
    // identical fresh events in the batch takes the row.
    let row_taken: Vec<Vec<bool>> = apply_jobs
        .iter()
        .map(|(_, ops)| {
            ops.iter()
                .map(|op| {
                    op.inbox_row_to_insert()
                        .is_some_and(|row| !new_rows.remove(&row.dedupe_bidx))
                })
                .collect()
        })
        .collect();
    let applies: Vec<(&TenantId, Vec<&ApplyOp>)> = apply_jobs
        .iter()
        .zip(&row_taken)
        .map(|((tenant_id, ops), taken)| {
            let kept = ops
                .iter()
                .zip(taken)
                .filter(|(_, taken)| !**taken)
                .map(|(op, _)| op)
                .collect();
            (*tenant_id, kept)
        })
        .collect();
    let applied = crm::apply_batch(conn, &applies, now)?;
    let processed: Vec<i64> = applies
        .iter()
        .flat_map(|(_, ops)| ops.iter().filter_map(|op| op.inbox_id()))
        .collect();
    inbox::mark_processed_many(conn, &processed, now)?;
    Ok(apply_jobs
        .iter()
        .zip(row_taken)
        .zip(applied)
        .map(|(((_, ops), taken), done)| {
            // `done.redelivered` has one entry per op that was kept.
            let mut redelivered = done.redelivered.into_iter();
            let duplicate = ops
                .iter()
                .zip(taken)
                .map(|(op, taken)| taken || (redelivered.next().unwrap_or(false) && op.is_fresh()))
                .collect();
            ApplyReceipt {
                conversation: done.conversation,
                duplicate,
            }
        })
        .collect())
}

/// One webhook's content for [`ingest`]: the day key to seal it under, its events
/// and its other content.
type IngestPart<'a> = (&'a DayKey, &'a [FreshEvent], &'a [OtherChange]);

/// Inserts the events and other content of several webhooks inside the batch
/// transaction; one receipt per webhook, in order. Each is sealed for the tenant that
/// owns its number (an event of a number no tenant owns is stored as unrouted).
fn ingest(
    conn: &mut DbConn,
    keyring: &Keyring,
    routes: &RouteCache,
    parts: &[IngestPart<'_>],
    now: i64,
) -> Result<Vec<IngestReceipt>, StorageError> {
    if parts.is_empty() {
        return Ok(Vec::new());
    }
    let mut numbers: Vec<String> = parts
        .iter()
        .flat_map(|(_, events, others)| {
            events
                .iter()
                .map(|e| e.keys.phone_number_id.clone())
                .chain(others.iter().filter_map(|o| o.phone_number_id.clone()))
        })
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    let routes = routes.owners(conn, numbers, now)?;
    // Per webhook, per event: sealed for its tenant's inbox, or `None` (unrouted).
    let mut sealed: Vec<Vec<Option<(TenantId, PreparedEvent)>>> = Vec::with_capacity(parts.len());
    for (day, events, _) in parts {
        let mut of_part = Vec::with_capacity(events.len());
        for event in events.iter() {
            of_part.push(match routes.get(&event.keys.phone_number_id) {
                Some(tenant_id) => Some((tenant_id.clone(), event.seal(keyring, tenant_id, day)?)),
                None => None,
            });
        }
        sealed.push(of_part);
    }
    let routed: Vec<(&TenantId, &PreparedEvent)> = sealed
        .iter()
        .flatten()
        .flatten()
        .map(|(tenant_id, prepared)| (tenant_id, prepared))
        .collect();
    let mut inserted = inbox::insert_events(conn, &routed, now)?;
    let mut receipts = Vec::with_capacity(parts.len());
    for ((day, events, others), sealed) in parts.iter().zip(&sealed) {
        let mut receipt = IngestReceipt::default();
        for (event, sealed) in events.iter().zip(sealed) {
            match sealed {
                // The first of several identical events in the batch takes the row;
                // the rest are duplicates.
                Some((tenant_id, prepared)) => match inserted.remove(&prepared.row.dedupe_bidx) {
                    Some(id) => receipt.accepted.push(InboxItem {
                        id,
                        tenant_id: tenant_id.clone(),
                        phone_number_id: event.keys.phone_number_id.clone(),
                        route_key: event.keys.route_key.clone(),
                        received_at: now,
                        event: event.event.clone(),
                    }),
                    None => receipt.duplicates += 1,
                },
                None => {
                    let raw = serde_json::to_vec(event.event.as_ref())
                        .map_err(|e| StorageError::Corrupt(e.to_string()))?;
                    let other = PreparedOther::seal(
                        day,
                        None,
                        "unrouted",
                        Some(event.keys.kind.as_str().to_string()),
                        Some(event.keys.phone_number_id.clone()),
                        &raw,
                    )?;
                    inbox::insert_other(conn, None, &other, now)?;
                    receipt.unrouted += 1;
                }
            }
        }
        for other in others.iter() {
            let tenant = other.phone_number_id.as_ref().and_then(|p| routes.get(p));
            let prepared = PreparedOther::seal(
                day,
                tenant,
                other.reason,
                other.field.clone(),
                other.phone_number_id.clone(),
                &other.raw,
            )?;
            inbox::insert_other(conn, tenant, &prepared, now)?;
            receipt.others += 1;
        }
        receipts.push(receipt);
    }
    Ok(receipts)
}
