//! One sender per business phone number: sends the number's outbox rows to Meta in the
//! order they were accepted, at most one in flight per contact (so a contact's
//! messages leave in order, and one contact's backlog takes its turn beside the
//! others', round robin), paced evenly at the number's throughput with a burst of at
//! most 5% of it (Meta counts per second: a whole second of burst on top of the rate
//! would exceed it). Each outcome is written before the contact's next message goes:
//! Meta's wamid, a retry's time (backoff with jitter, by what Meta's code means), the
//! failure, or a pause of the number when its token or account is the problem.
//!
//! The sender holds the number's pending sends in memory, by contact: a send its
//! conversation actor has just stored arrives with its body ([`queue`]), and a scan of
//! the outbox (at start, every `outbound.paused_recheck_secs` as a safety net, and
//! whenever it holds fewer than half of [`HELD_MAX`] after more were waiting) adds the
//! ones it does not hold. A send then costs no read of the database: two writes (in
//! flight, then its outcome), group-committed with the writer's other work. Past
//! [`HELD_MAX`] sends, the rest wait in the outbox, in order, for a later scan.
//!
//! A row marked `sending` when the sender starts was in flight when the daemon
//! stopped: Meta may have accepted it. It waits `outbound.reconcile_secs` for Meta's
//! status webhook, which echoes its id and records it as sent; only then is it sent
//! again.
//!
//! Its parts: `held` (the sends it holds and their turns), `pace` (which go now,
//! and the call to Meta), `outcome` (what Meta's answer means for the send and the
//! number), `account` (templates and limits of the business account).

mod account;
mod held;
mod outcome;
mod pace;

pub use account::apply_account_updates;
use account::SyncTemplates;
pub(in crate::actors) use outcome::jittered;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use serde_json::Value;

use super::{when_idle, Core, FinishWork};
use crate::crypto::SealKey;
use crate::ids::{ContactId, MessageId, PhoneNumberId};
use crate::storage::outbox::OutboxRow;
use crate::storage::tenants::SendingNumber;
use crate::whatsapp::graph::GraphClient;

/// The most sends a sender holds in memory (about a kilobyte each when scanned).
const HELD_MAX: usize = 5_000;
/// Meta's code for a user who stopped marketing messages.
const MARKETING_STOPPED: i64 = 131_050;
/// Spam and ecosystem limits: Meta asks for hours, not seconds.
const DEFERRED_MS: i64 = 3 * 3600 * 1000;
/// A send waiting for room in its portfolio's messaging limit looks again this often
/// (the moving window frees room as the users reached 24 hours ago drop out).
const LIMIT_RECHECK_MS: i64 = 30_000;

/// Look at the outbox now (the sender starts if it is not running).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake;

/// A send just stored, with Meta's body and the key it is sealed under.
pub struct Fresh {
    pub row: OutboxRow,
    pub key: SealKey,
    pub body: Value,
}

/// A send just stored, to hold and send in its turn.
#[derive(Message)]
#[rtype(result = "()")]
struct Queue(Box<Fresh>);

/// The running senders, by number.
pub struct Senders {
    running: Mutex<HashMap<PhoneNumberId, Addr<SenderActor>>>,
    /// Where senders run: the daemon's own thread, which outlives the HTTP workers, so
    /// that shutdown can wait for the sends in flight.
    home: ArbiterHandle,
    /// Set at shutdown: no sender starts again; what is queued waits in the outbox.
    closed: AtomicBool,
}

impl Senders {
    pub fn new(home: ArbiterHandle) -> Senders {
        Senders {
            running: Mutex::default(),
            home,
            closed: AtomicBool::new(false),
        }
    }

    fn running(&self) -> Vec<Addr<SenderActor>> {
        match self.running.lock() {
            Ok(running) => running.values().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().values().cloned().collect(),
        }
    }

    /// Starts no sender again and waits until every running one has ended the sends in
    /// its hands (their outcomes written); what has not left stays in the outbox.
    pub async fn finish(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let finishing = self.running().into_iter().map(|sender| async move {
            if let Ok(done) = sender.send(FinishWork).await {
                let _ = done.await;
            }
        });
        futures_util::future::join_all(finishing).await;
    }
}

/// The sender of `phone_number_id`, started when it is not running; none after
/// shutdown began.
fn sender(core: &Arc<Core>, phone_number_id: &PhoneNumberId) -> Option<Addr<SenderActor>> {
    if core.senders.closed.load(Ordering::SeqCst) {
        return None;
    }
    let mut running = match core.senders.running.lock() {
        Ok(running) => running,
        Err(poisoned) => poisoned.into_inner(),
    };
    let start = || {
        let core = core.clone();
        let number = phone_number_id.clone();
        let home = core.senders.home.clone();
        Supervisor::start_in_arbiter(&home, move |_| SenderActor::new(core, number))
    };
    let addr = running.entry(phone_number_id.clone()).or_insert_with(start);
    if !addr.connected() {
        // Its actor is gone (a panic past its supervisor): started again here.
        *addr = start();
    }
    Some(addr.clone())
}

/// Tells the sender of `phone_number_id` to look at its outbox.
pub fn wake(core: &Arc<Core>, phone_number_id: &PhoneNumberId) {
    if let Some(sender) = sender(core, phone_number_id) {
        sender.do_send(Wake);
    }
}

/// Hands a send just stored to its number's sender.
pub fn queue(core: &Arc<Core>, fresh: Fresh, phone_number_id: &PhoneNumberId) {
    if let Some(sender) = sender(core, phone_number_id) {
        sender.do_send(Queue(Box::new(fresh)));
    }
}

/// A send opened and marked in flight, waiting for its token.
struct Primed {
    row: OutboxRow,
    key: SealKey,
    body: Value,
}

/// A pending send as held: its row, and its key and body once opened.
#[derive(Clone)]
struct Held {
    row: OutboxRow,
    opened: Option<(SealKey, Rc<Value>)>,
}

pub struct SenderActor {
    core: Arc<Core>,
    number: PhoneNumberId,
    client: Option<Rc<GraphClient>>,
    credentials: Option<Rc<SendingNumber>>,
    /// Messages a second, and the tokens the pace allows now (at most `burst`).
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled_at: std::time::Instant,
    /// Pending sends by contact, in the order they were accepted.
    queues: HashMap<ContactId, VecDeque<Held>>,
    /// The ids held in `queues`.
    held: HashSet<MessageId>,
    /// Contacts whose first send may go now, in turn (each at most once).
    ready: VecDeque<ContactId>,
    in_ready: HashSet<ContactId>,
    /// Contacts whose first send waits for a time, by that time.
    later: BTreeSet<(i64, ContactId)>,
    later_timer: Option<(i64, SpawnHandle)>,
    /// Set while the pace makes sends wait for a token.
    pace_timer: Option<SpawnHandle>,
    /// Sends being opened and marked in flight, and those marked, waiting for tokens.
    priming: usize,
    primed: VecDeque<Primed>,
    /// Contacts with a send in flight (its outcome not yet written).
    in_flight: HashSet<ContactId>,
    /// Sends with ids above this were not held when the outbox last had more than
    /// [`HELD_MAX`]: they wait for a scan, so that none goes before an earlier one.
    held_through: Option<MessageId>,
    scanning: bool,
    scan_again: bool,
    /// Sends handed over, or finished, while a scan reads: the scan's rows are older.
    during_scan: Vec<Fresh>,
    finished_during_scan: HashSet<MessageId>,
    paused: bool,
    /// Shutdown asked it to start nothing new ([`FinishWork`]).
    finishing: bool,
    /// A scan read the pause stored (`phone_numbers.paused_at`): once a later one finds
    /// it gone, the operator has updated the number.
    pause_recorded: bool,
    /// Meta's limits on the number (rate or spam): nothing goes before this time.
    held_until: Option<i64>,
    /// Rate-limit answers in a row: each makes the number wait longer.
    throttles: u32,
    /// When the account's templates were last synced (or tried).
    templates_synced_at: Option<i64>,
    /// Contacts whose first send waits for room in the portfolio's messaging limit.
    limited: HashSet<ContactId>,
}

impl SenderActor {
    fn new(core: Arc<Core>, number: PhoneNumberId) -> SenderActor {
        let rate = f64::from(core.settings.outbound.default_mps);
        let burst = (rate * 0.05).max(1.0);
        SenderActor {
            core,
            number,
            client: None,
            credentials: None,
            rate,
            burst,
            tokens: burst,
            refilled_at: std::time::Instant::now(),
            queues: HashMap::new(),
            held: HashSet::new(),
            ready: VecDeque::new(),
            in_ready: HashSet::new(),
            later: BTreeSet::new(),
            later_timer: None,
            pace_timer: None,
            priming: 0,
            primed: VecDeque::new(),
            in_flight: HashSet::new(),
            held_through: None,
            scanning: false,
            scan_again: false,
            during_scan: Vec::new(),
            finished_during_scan: HashSet::new(),
            paused: false,
            finishing: false,
            pause_recorded: false,
            held_until: None,
            throttles: 0,
            templates_synced_at: None,
            limited: HashSet::new(),
        }
    }
}

impl Actor for SenderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.scan(ctx);
        // The safety net behind the sends handed over, and the paused number's look
        // for a replaced token.
        let every = Duration::from_secs(self.core.settings.outbound.paused_recheck_secs.max(1));
        ctx.run_interval(every, |actor, ctx| actor.scan(ctx));
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        // What it held stays in the outbox; sends in flight are reconciled at the
        // next start.
        slog::info!(self.core.log, "sender stopped";
            "phone_number_id" => self.number.as_str(), "held" => self.held.len(),
            "in_flight" => self.in_flight.len());
    }
}

impl Supervised for SenderActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        // Whatever was in flight is in `sending` and reconciled like after a restart;
        // everything held is read again.
        let number = self.number.clone();
        let core = self.core.clone();
        let (paused, finishing) = (self.paused, self.finishing);
        *self = SenderActor::new(core, number);
        self.paused = paused;
        self.finishing = finishing;
    }
}

impl Handler<FinishWork> for SenderActor {
    type Result = MessageResult<FinishWork>;

    fn handle(&mut self, _msg: FinishWork, ctx: &mut Context<Self>) -> Self::Result {
        self.finishing = true;
        // Done once no send is being opened, called or recorded. Sends made ready go
        // when their tokens come, unless the number is paused or held: then they stay
        // `sending` and are reconciled at the next start, as after a crash.
        MessageResult(when_idle(ctx, |sender: &SenderActor| {
            let blocked = sender.paused || sender.held_until.is_some();
            sender.priming == 0
                && (sender.in_flight.is_empty()
                    || (blocked && sender.in_flight.len() <= sender.primed.len()))
        }))
    }
}

impl Handler<Wake> for SenderActor {
    type Result = ();

    fn handle(&mut self, _msg: Wake, ctx: &mut Context<Self>) {
        // The portfolio's limit may have risen.
        self.retry_limited();
        self.scan(ctx);
    }
}

impl Handler<SyncTemplates> for SenderActor {
    type Result = ();

    fn handle(&mut self, msg: SyncTemplates, ctx: &mut Context<Self>) {
        let Some(credentials) = self.credentials.clone() else {
            return;
        };
        if credentials.waba_id != msg.0 {
            return;
        }
        self.templates_synced_at = None;
        if let Ok(client) = self.client() {
            self.sync_templates(client, credentials, ctx);
        }
    }
}

impl Handler<Queue> for SenderActor {
    type Result = ();

    fn handle(&mut self, msg: Queue, ctx: &mut Context<Self>) {
        if self.scanning {
            self.during_scan.push(*msg.0);
            return;
        }
        self.add(*msg.0);
        self.dispatch(ctx);
    }
}
