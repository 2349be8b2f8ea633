//! The writer: the threads that own every database write and commit them in groups
//! (one on SQLite, by default two on PostgreSQL, each with its own queue). A tenant's
//! generic writes ([`WriterHandle::write`]) always go to the same one, so they run in
//! the order they were queued; ingest and the conversation actors' resolves and
//! applies (each actor has one in flight) go to the writer with the shortest queue, so
//! one busy tenant's traffic still uses every writer.
//! Inbox inserts (ingest) and actor work (resolve contacts, apply events, the webhook's
//! own events among them) queue here; each cycle takes all waiting ingest jobs and,
//! round-robin across tenants, actor jobs up to `database.write_batch_max`, commits
//! them in one transaction, then answers each job. So a webhook is acknowledged only
//! after its batch is durable, one fsync serves many requests, and a flood from one
//! tenant cannot starve the others.
//!
//! A job whose work fails is retried alone, so one bad job never fails its neighbours.
//!
//! The writer's parts: [`queue`] (the jobs, how they wait and are taken in batches),
//! [`batch`] (a batch's transaction), [`replies`] (answering each job once its batch
//! is durable); SQLite's checkpointer and conversation index are in `storage::sqlite`.

mod batch;
mod queue;
mod replies;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::apply::ApplyOp;
use super::contacts::NewContact;
use super::contacts::{ContactIdentifiers, ResolvedContact};
use super::inbox::{FreshEvent, InboxItem};
use super::key_store::Vault;
use super::raw_keys::{self, DayKey, RawKeys};
use super::report::WriterReport;
use super::routes::RouteCache;
use super::sqlite::{spawn_checkpointer, spawn_index_reader, ConversationIndexer, IndexShared};
use super::{DbConn, Pool, PooledConn, StorageError};
use crate::clock::SharedClock;
use crate::ids::{ContactId, ConversationId, TenantId};
use crate::storage::handoff::{self, Reply};
use crate::whatsapp::OtherChange;

pub(in crate::storage) use queue::Job;
use queue::{WriteOutput, WriteWork};

/// What an ingest job committed.
#[derive(Debug, Default)]
pub struct IngestReceipt {
    pub accepted: Vec<InboxItem>,
    pub duplicates: usize,
    pub unrouted: usize,
    pub others: usize,
}

/// What an apply job committed.
#[derive(Debug, Default)]
pub struct ApplyReceipt {
    /// The conversation the job's inbound messages went to, for the actor to cache.
    pub conversation: Option<ConversationId>,
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

/// Contacts merged into others, or erased, since the writers started: a write naming
/// one is refused as [`StorageError::ContactStale`], and its actor resolves again.
pub(in crate::storage) type MergedAway = Arc<std::sync::RwLock<std::collections::HashSet<String>>>;

/// Receives committed inbox rows (the actor registry).
pub type Dispatcher = Box<dyn Fn(Vec<InboxItem>) + Send + Sync>;

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
    /// One queue per writer thread. A tenant's generic writes always go to the same
    /// writer, so they are serialised even where several writers run (PostgreSQL);
    /// the rest go to the writer with the shortest queue.
    queues: Arc<[flume::Sender<Job>]>,
    /// Where the search for the shortest queue starts, turning, so that equal queues
    /// share the work.
    next_queue: Arc<AtomicUsize>,
    health: Arc<WriterHealth>,
    raw_keys: Arc<RawKeys>,
    dispatcher: Arc<OnceLock<Dispatcher>>,
    /// Set by [`WriterHandle::stop`]; the writer threads end once their queues are empty.
    stopping: Arc<AtomicBool>,
    writers: usize,
    /// Shared with the writers (see [`MergedAway`]).
    gone_contacts: MergedAway,
}

pub(super) fn gone() -> StorageError {
    StorageError::Unavailable("the writer has stopped".into())
}

type WriteReply = tokio::sync::oneshot::Receiver<Result<WriteOutput, StorageError>>;

/// A generic write as the writer's job, and where its answer comes.
fn write_job<T: Send + 'static>(
    tenant_id: Option<TenantId>,
    mut work: impl FnMut(&mut DbConn) -> Result<T, StorageError> + Send + 'static,
) -> (Job, WriteReply) {
    let (reply, rx) = handoff::channel();
    let work: WriteWork = Box::new(move |conn| Ok(Box::new(work(conn)?) as WriteOutput));
    let job = Job::Write {
        tenant_id,
        work,
        reply,
    };
    (job, rx)
}

/// A generic write's answer, as the type its work returned.
fn written<T: 'static>(answer: Result<WriteOutput, StorageError>) -> Result<T, StorageError> {
    answer?
        .downcast::<T>()
        .map(|value| *value)
        .map_err(|_| StorageError::Corrupt("a write returned another type".into()))
}

impl WriterHandle {
    /// From now on a write naming `contact_id` (held by an actor from before its
    /// erasure) is refused, so the actor drops what it held and resolves again.
    pub fn contact_gone(&self, contact_id: &ContactId) {
        if let Ok(mut gone) = self.gone_contacts.write() {
            gone.insert(contact_id.to_string());
        }
    }

    /// How many writer threads run (each keeps a pooled connection).
    pub fn writers(&self) -> usize {
        self.writers
    }

    /// The queue of the writer that takes `tenant_id`'s generic writes: always the
    /// same one for a tenant; `None`: the shortest.
    fn queue(&self, tenant_id: Option<&TenantId>) -> &flume::Sender<Job> {
        let count = self.queues.len();
        let index = match tenant_id {
            Some(tenant) => {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(tenant, &mut hasher);
                (std::hash::Hasher::finish(&hasher) % count as u64) as usize
            }
            None => {
                let start = self.next_queue.fetch_add(1, Ordering::Relaxed);
                (0..count)
                    .map(|offset| (start + offset) % count)
                    .min_by_key(|index| self.queues[*index].len())
                    .unwrap_or(0)
            }
        };
        &self.queues[index]
    }

    /// Commits a webhook's events and other content, sealed under `day`'s key (see
    /// [`WriterHandle::day_key`]); resolves once they are durable.
    pub async fn ingest(
        &self,
        day: DayKey,
        events: Vec<FreshEvent>,
        others: Vec<OtherChange>,
    ) -> Result<IngestReceipt, StorageError> {
        let (reply, rx) = handoff::channel();
        self.queue(None)
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
        self.queue(None)
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
    /// before; first creates `new_contact`, the contact they belong to, if given (its
    /// key committed to the key store before the batch). A contact that another
    /// conversation created meanwhile refuses the write as
    /// [`StorageError::ContactStale`]. The webhooks in `waiters` hear straight from the
    /// writer once the write is durable, without waiting for the actor's turn.
    pub async fn apply(
        &self,
        tenant_id: TenantId,
        new_contact: Option<Box<NewContact>>,
        ops: Vec<ApplyOp>,
        waiters: Waiters,
    ) -> Result<ApplyReceipt, StorageError> {
        let (reply, rx) = handoff::channel();
        self.queue(None)
            .send_async(Job::Apply {
                tenant_id,
                new_contact,
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
        work: impl FnMut(&mut DbConn) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let queue = self.queue(tenant_id.as_ref()).clone();
        let (job, rx) = write_job(tenant_id, work);
        queue.send_async(job).await.map_err(|_| gone())?;
        written(rx.await.map_err(|_| gone())?)
    }

    /// [`WriterHandle::write`] for a thread that may block (never an async one): the
    /// retention sweep's, which runs beside the runtime.
    pub fn write_blocking<T: Send + 'static>(
        &self,
        tenant_id: Option<TenantId>,
        work: impl FnMut(&mut DbConn) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let queue = self.queue(tenant_id.as_ref()).clone();
        let (job, rx) = write_job(tenant_id, work);
        queue.send(job).map_err(|_| gone())?;
        written(rx.blocking_recv().map_err(|_| gone())?)
    }

    /// Waits until everything queued so far is written, by every writer.
    pub async fn flush(&self) {
        for queue in self.queues.iter() {
            let (reply, rx) = handoff::channel();
            if queue.send_async(Job::Flush(reply)).await.is_ok() {
                let _ = rx.await;
            }
        }
    }

    /// Asks the writer threads to finish what is queued and end. The actors keep
    /// handles (and the dispatcher keeps the actors) until the process ends, so the
    /// threads cannot wait for every handle to go.
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for queue in self.queues.iter() {
            // Wakes a writer waiting for work.
            let (reply, _) = handoff::channel();
            let _ = queue.send_async(Job::Flush(reply)).await;
        }
    }

    /// Where committed inbox rows go; set once the actors are running.
    pub fn set_dispatcher(&self, dispatcher: Dispatcher) {
        let _ = self.dispatcher.set(dispatcher);
    }

    pub fn queue_len(&self) -> usize {
        self.queues.iter().map(|queue| queue.len()).sum()
    }

    /// The cache of raw payloads' day keys, for their expiry to evict destroyed ones.
    pub fn raw_keys(&self) -> &Arc<RawKeys> {
        &self.raw_keys
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
#[cfg(feature = "testing")]
pub type BatchHook = Arc<dyn Fn(usize) + Send + Sync>;

pub struct WriterConfig {
    pub batch_max: usize,
    /// Writer threads; 0 = 1 for SQLite, 2 for PostgreSQL.
    pub writers: usize,
    /// SQLite: WAL pages (of 4 KiB) past which the WAL starts over.
    pub wal_restart_pages: i64,
    /// SQLite: the pause between two background checkpoints.
    pub checkpoint_interval: Duration,
    #[cfg(feature = "testing")]
    pub before_batch: Option<BatchHook>,
}

/// A thread of the storage layer's background work, by name, for shutdown to await.
pub struct BackgroundThread {
    pub name: String,
    pub handle: JoinHandle<()>,
}

impl BackgroundThread {
    pub(in crate::storage) fn spawn(
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
    let (queues, receivers): (Vec<_>, Vec<_>) =
        (0..writers).map(|_| flume::bounded(capacity)).unzip();
    let handle = WriterHandle {
        queues: queues.into(),
        next_queue: Arc::new(AtomicUsize::new(0)),
        health: health.clone(),
        raw_keys: raw_keys.clone(),
        dispatcher: dispatcher.clone(),
        stopping: stopping.clone(),
        writers,
        gone_contacts: merged_away.clone(),
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
    for (index, rx) in receivers.into_iter().enumerate() {
        let mut writer = Writer {
            pool: pool.clone(),
            conn: None,
            keyring: keyring.clone(),
            clock: clock.clone(),
            report: report.clone(),
            batch_max: config.batch_max,
            log: log.new(slog::o!("writer" => index)),
            index,
            health: health.clone(),
            #[cfg(feature = "testing")]
            before_batch: config.before_batch.clone(),
            merged_away: merged_away.clone(),
            connect_failed: false,
            dispatcher: dispatcher.clone(),
            restart_wanted: restart_wanted.clone(),
            stopping: stopping.clone(),
            routes: routes.clone(),
            ingest: VecDeque::new(),
            lanes: VecDeque::new(),
            queued: 0,
            max_queued: capacity,
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

pub(in crate::storage) struct Writer {
    pub(in crate::storage) pool: Pool,
    pub(in crate::storage) conn: Option<PooledConn>,
    pub(in crate::storage) keyring: Arc<Vault>,
    pub(in crate::storage) clock: SharedClock,
    pub(in crate::storage) report: Arc<dyn WriterReport>,
    pub(in crate::storage) batch_max: usize,
    pub(in crate::storage) log: slog::Logger,
    /// This writer's place in [`WriterHealth`].
    pub(in crate::storage) index: usize,
    pub(in crate::storage) health: Arc<WriterHealth>,
    #[cfg(feature = "testing")]
    pub(in crate::storage) before_batch: Option<BatchHook>,
    pub(in crate::storage) merged_away: MergedAway,
    /// The last attempt to get a connection failed: the database is unreachable.
    pub(in crate::storage) connect_failed: bool,
    pub(in crate::storage) dispatcher: Arc<OnceLock<Dispatcher>>,
    /// Set by the checkpointer when the WAL should start over (SQLite).
    pub(in crate::storage) restart_wanted: Arc<AtomicBool>,
    /// Set by [`WriterHandle::stop`].
    pub(in crate::storage) stopping: Arc<AtomicBool>,
    /// phone_number_id → owning tenant (only owned numbers are cached).
    pub(in crate::storage) routes: Arc<RouteCache>,
    pub(in crate::storage) ingest: VecDeque<Job>,
    /// Actor jobs waiting, one queue per tenant, served round-robin.
    pub(in crate::storage) lanes: VecDeque<(TenantId, VecDeque<Job>)>,
    /// Jobs in `ingest` and `lanes`, and how many they may hold.
    pub(in crate::storage) queued: usize,
    pub(in crate::storage) max_queued: usize,
    /// SQLite, one writer: fills the conversation index in bulk.
    pub(in crate::storage) conversation_index: Option<ConversationIndexer>,
    pub(in crate::storage) arrivals: Arrivals,
}

/// Jobs counted since a moment, and the rate of the last whole second before it.
pub(super) struct Arrivals {
    pub(super) since: Instant,
    pub(super) jobs: usize,
    pub(super) rate: f64,
}

/// Woken from idle by a job, the writer waits up to [`GATHER_FOR`] for more, until it
/// holds [`GATHER_JOBS`], before it writes, when jobs have been arriving at
/// [`GATHER_FROM_RATE`] a second or more: at a moderate rate each batch would
/// otherwise carry a few webhooks, and a batch's fixed costs (its commit and sync, the
/// pages every batch writes) would be most of the writer's CPU. Below that rate the
/// wait would only add itself to every webhook. Under full load the writer is never
/// idle, so it never waits. The figures are in docs/performance.md.
const GATHER_FOR: Duration = Duration::from_micros(500);
const GATHER_JOBS: usize = 16;
/// About two jobs expected within [`GATHER_FOR`].
const GATHER_FROM_RATE: f64 = 4_000.0;
/// A write that took this long is logged: the disk (or the database server) is
/// struggling, and webhooks wait.
pub(in crate::storage) const SLOW_WRITE: Duration = Duration::from_millis(100);

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
                    let reason = crate::storage::panic_message(&*panic);
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
}
