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

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use serde_json::{json, Value};

use super::Core;
use crate::crypto::SealKey;
use crate::ids::{PhoneNumberId, TenantId};
use crate::storage::messaging_limits;
use crate::storage::outbox::{self, OutboxRow, OutboxState};
use crate::storage::templates::{self, TemplateChange};
use crate::storage::tenants::{self, SendingNumber};
use crate::storage::StorageError;
use crate::whatsapp::graph::{ErrorClass, GraphClient, GraphError};
use crate::whatsapp::webhook::AccountUpdate;

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
#[derive(Default)]
pub struct Senders {
    running: Mutex<HashMap<String, Addr<SenderActor>>>,
    /// Each tenant's turn to count against its messaging limits.
    marking_turns: Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<()>>>>,
}

/// The sender of `phone_number_id`, started (on the calling thread's arbiter) when it
/// is not running.
fn sender(core: &Arc<Core>, phone_number_id: &str) -> Addr<SenderActor> {
    let mut running = match core.senders.running.lock() {
        Ok(running) => running,
        Err(poisoned) => poisoned.into_inner(),
    };
    let start = || {
        let core = core.clone();
        let number = PhoneNumberId(phone_number_id.to_string());
        Supervisor::start(move |_| SenderActor::new(core, number))
    };
    let addr = running
        .entry(phone_number_id.to_string())
        .or_insert_with(start);
    if !addr.connected() {
        // Its thread is gone (a worker that stopped): started again here.
        *addr = start();
    }
    addr.clone()
}

/// The account's templates changed in a way a sync must pick up (a template Meta
/// announced that is not synced yet).
#[derive(Message)]
#[rtype(result = "()")]
struct SyncTemplates(String);

/// Acts on updates of business accounts from Meta's webhooks: a template's status is
/// stored (an unknown template makes the account's senders sync), a number's new
/// throughput is stored and its sender paces by it from its next look, a portfolio's
/// messaging limit is stored and the senders of its numbers try what waited for it.
pub async fn apply_account_updates(
    core: &Arc<Core>,
    updates: Vec<AccountUpdate>,
) -> Result<(), StorageError> {
    let now = core.clock.now_ms();
    let (unsynced, numbers, limited, changed_limits) = core
        .writer
        .write(None, move |conn| {
            let (mut unsynced, mut numbers) = (Vec::new(), Vec::new());
            let (mut limited, mut changed_limits) = (Vec::new(), Vec::new());
            for update in &updates {
                match update {
                    AccountUpdate::TemplateStatus {
                        waba_id,
                        name,
                        language,
                        status,
                    } => {
                        let changed = templates::update_template(
                            conn,
                            waba_id,
                            name,
                            language.as_deref(),
                            TemplateChange::Status(status),
                        )?;
                        if changed == 0 {
                            unsynced.push(waba_id.clone());
                        }
                    }
                    AccountUpdate::TemplateCategory {
                        waba_id,
                        name,
                        language,
                        category,
                    } => {
                        let changed = templates::update_template(
                            conn,
                            waba_id,
                            name,
                            language.as_deref(),
                            TemplateChange::Category(category),
                        )?;
                        if changed == 0 {
                            unsynced.push(waba_id.clone());
                        }
                    }
                    AccountUpdate::Throughput {
                        waba_id,
                        display_phone_number,
                        mps,
                    } => numbers.extend(tenants::set_throughput(
                        conn,
                        waba_id,
                        display_phone_number,
                        *mps,
                    )?),
                    AccountUpdate::MessagingLimit { waba_id, limit } => {
                        limited.extend(messaging_limits::set_limit_of_account(
                            conn, waba_id, *limit, now,
                        )?);
                        changed_limits.push((waba_id.clone(), *limit));
                    }
                }
            }
            Ok((unsynced, numbers, limited, changed_limits))
        })
        .await?;
    for number in numbers {
        slog::info!(core.log, "Meta raised a number's throughput"; "phone_number_id" => &number);
        wake(core, &number);
    }
    for (waba_id, limit) in changed_limits {
        slog::info!(core.log, "Meta set a business portfolio's messaging limit";
            "waba_id" => waba_id, "messaging_limit" => limit);
    }
    // Their senders try the sends waiting for room again.
    for number in limited {
        wake(core, &number);
    }
    if !unsynced.is_empty() {
        let running: Vec<Addr<SenderActor>> = match core.senders.running.lock() {
            Ok(running) => running.values().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().values().cloned().collect(),
        };
        for waba_id in unsynced {
            for sender in &running {
                sender.do_send(SyncTemplates(waba_id.clone()));
            }
        }
    }
    Ok(())
}

/// The turn a tenant's senders take to mark templates in flight, so that two counts
/// of one messaging-limit budget never run at once.
fn marking_turn(core: &Core, tenant_id: &TenantId) -> Arc<tokio::sync::Mutex<()>> {
    let mut turns = match core.senders.marking_turns.lock() {
        Ok(turns) => turns,
        Err(poisoned) => poisoned.into_inner(),
    };
    turns.entry(tenant_id.clone()).or_default().clone()
}

/// Tells the sender of `phone_number_id` to look at its outbox.
pub fn wake(core: &Arc<Core>, phone_number_id: &str) {
    sender(core, phone_number_id).do_send(Wake);
}

/// Hands a send just stored to its number's sender.
pub fn queue(core: &Arc<Core>, fresh: Fresh, phone_number_id: &str) {
    sender(core, phone_number_id).do_send(Queue(Box::new(fresh)));
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
    queues: HashMap<String, VecDeque<Held>>,
    /// The ids held in `queues`.
    held: HashSet<String>,
    /// Contacts whose first send may go now, in turn (each at most once).
    ready: VecDeque<String>,
    in_ready: HashSet<String>,
    /// Contacts whose first send waits for a time, by that time.
    later: BTreeSet<(i64, String)>,
    later_timer: Option<(i64, SpawnHandle)>,
    /// Set while the pace makes sends wait for a token.
    pace_timer: Option<SpawnHandle>,
    /// Sends being opened and marked in flight, and those marked, waiting for tokens.
    priming: usize,
    primed: VecDeque<Primed>,
    /// Contacts with a send in flight (its outcome not yet written).
    in_flight: HashSet<String>,
    /// Sends with ids above this were not held when the outbox last had more than
    /// [`HELD_MAX`]: they wait for a scan, so that none goes before an earlier one.
    held_through: Option<String>,
    scanning: bool,
    scan_again: bool,
    /// Sends handed over, or finished, while a scan reads: the scan's rows are older.
    during_scan: Vec<Fresh>,
    finished_during_scan: HashSet<String>,
    paused: bool,
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
    limited: HashSet<String>,
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
            pause_recorded: false,
            held_until: None,
            throttles: 0,
            templates_synced_at: None,
            limited: HashSet::new(),
        }
    }

    /// Paces at `rate` messages a second from now on.
    fn set_rate(&mut self, rate: f64) {
        if rate != self.rate {
            self.rate = rate;
            self.burst = (rate * 0.05).max(1.0);
            self.tokens = self.tokens.min(self.burst);
        }
    }

    /// Takes a token of the pace; `None` when there is one, else how long until there is.
    fn take_token(&mut self) -> Option<Duration> {
        let now = std::time::Instant::now();
        let elapsed = now.duration_since(self.refilled_at).as_secs_f64();
        self.refilled_at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }

    /// Reads the number's token and the outbox's pending sends, adding those not held.
    fn scan(&mut self, ctx: &mut Context<Self>) {
        if self.scanning {
            self.scan_again = true;
            return;
        }
        self.scanning = true;
        self.finished_during_scan.clear();
        let number = self.number.clone();
        let core = self.core.clone();
        let read = async move {
            core.read(move |conn, keyring| {
                // Read at every scan, so that a replaced token is used.
                let credentials = tenants::sending_number(conn, keyring, number.as_str())?;
                let rows = outbox::pending_sends(conn, &number, HELD_MAX as i64)?;
                Ok((credentials, rows))
            })
            .await
        };
        ctx.spawn(read.into_actor(self).map(|read, actor, ctx| {
            actor.scanning = false;
            match read {
                Ok((credentials, rows)) => {
                    actor.use_credentials(credentials, ctx);
                    actor.merge_scan(rows);
                    actor.count_limited();
                }
                Err(e) => {
                    slog::warn!(actor.core.log, "reading the outbox failed";
                        "phone_number_id" => actor.number.as_str(), "error" => %e);
                    for fresh in std::mem::take(&mut actor.during_scan) {
                        actor.add(fresh);
                    }
                    ctx.run_later(Duration::from_secs(1), |actor, ctx| actor.scan(ctx));
                }
            }
            actor.dispatch(ctx);
            if std::mem::take(&mut actor.scan_again) {
                actor.scan(ctx);
            }
        }));
    }

    /// Takes the number's token and tenant as read; resumes a paused number whose
    /// token was replaced; syncs the templates when due.
    fn use_credentials(&mut self, credentials: Option<SendingNumber>, ctx: &mut Context<Self>) {
        let Some(credentials) = credentials else {
            if !self.queues.is_empty() {
                slog::warn!(self.core.log, "outbox rows for a number no tenant has";
                    "phone_number_id" => self.number.as_str(), "contacts" => self.queues.len());
            }
            self.credentials = None;
            return;
        };
        let changed = self
            .credentials
            .as_ref()
            .is_none_or(|c| c.access_token != credentials.access_token);
        if credentials.paused_at.is_some() {
            // Stored paused (before a restart, say): paused until the number is updated.
            if !self.paused {
                slog::warn!(self.core.log, "number paused: update it to resume";
                    "phone_number_id" => self.number.as_str());
                self.paused = true;
                self.core.metrics.outbound_numbers_paused.inc();
            }
            self.pause_recorded = true;
        } else if self.paused && (self.pause_recorded || changed) {
            // The operator updated the number (which clears the stored pause), or its
            // token.
            slog::info!(self.core.log, "sender resumed: the number was updated";
                "phone_number_id" => self.number.as_str());
            self.paused = false;
            self.pause_recorded = false;
            self.core.metrics.outbound_numbers_paused.dec();
        }
        if let Some(until) = credentials.held_until {
            self.held_until = Some(self.held_until.map_or(until, |at| at.max(until)));
        }
        let rate = credentials
            .throughput_mps
            .and_then(|mps| u32::try_from(mps).ok())
            .filter(|mps| *mps > 0)
            .unwrap_or(self.core.settings.outbound.default_mps);
        self.set_rate(f64::from(rate));
        let credentials = Rc::new(credentials);
        self.credentials = Some(credentials.clone());
        match self.client() {
            Ok(client) => self.sync_templates(client, credentials, ctx),
            Err(e) => slog::error!(self.core.log, "no Graph API client: nothing is sent";
                "phone_number_id" => self.number.as_str(), "error" => e),
        }
    }

    /// Adds the scanned rows not held (a row finished while the scan read is not one
    /// of them), then the sends handed over meanwhile.
    fn merge_scan(&mut self, rows: Vec<OutboxRow>) {
        let complete = rows.len() < HELD_MAX;
        // The last row looked at: every pending send up to it is held now.
        let mut last = None;
        let mut all_looked_at = true;
        for row in rows {
            if self.held.len() >= HELD_MAX {
                all_looked_at = false;
                break;
            }
            last = Some(row.id.clone());
            if self.held.contains(&row.id) || self.finished_during_scan.contains(&row.id) {
                continue;
            }
            self.hold(Held { row, opened: None });
        }
        self.finished_during_scan.clear();
        self.held_through = if complete && all_looked_at {
            None
        } else {
            last.or_else(|| self.held.iter().max().cloned())
        };
        for fresh in std::mem::take(&mut self.during_scan) {
            self.add(fresh);
        }
    }

    /// A send handed over by its conversation actor.
    fn add(&mut self, fresh: Fresh) {
        if self.held.contains(&fresh.row.id) {
            return;
        }
        let beyond = self
            .held_through
            .as_ref()
            .is_some_and(|through| fresh.row.id > *through);
        if beyond || self.held.len() >= HELD_MAX {
            // Earlier sends wait in the outbox: this one follows them there.
            if self.held_through.is_none() {
                self.held_through = self.held.iter().max().cloned();
            }
            return;
        }
        let Fresh { row, key, body } = fresh;
        self.hold(Held {
            row,
            opened: Some((key, Rc::new(body))),
        });
    }

    /// Puts a send in its contact's queue, in order of acceptance.
    fn hold(&mut self, held: Held) {
        let contact = held.row.contact_id.clone();
        if held.row.limit_held {
            // Found waiting for its portfolio's budget (before a restart, say).
            self.limited.insert(contact.clone());
        }
        self.held.insert(held.row.id.clone());
        let queue = self.queues.entry(contact.clone()).or_default();
        let at = queue
            .iter()
            .rposition(|other| other.row.id < held.row.id)
            .map_or(0, |i| i + 1);
        queue.insert(at, held);
        if at == 0 {
            self.requeue(&contact);
        }
    }

    /// Puts `contact` in turn when its first send may go now, or waits for its time.
    fn requeue(&mut self, contact: &str) {
        if self.in_flight.contains(contact) {
            return;
        }
        let Some(head) = self.queues.get(contact).and_then(VecDeque::front) else {
            self.queues.remove(contact);
            return;
        };
        let now = self.core.clock.now_ms();
        let row = &head.row;
        if row.state == OutboxState::Sending || row.next_attempt_at <= now || row.deadline_at <= now
        {
            if self.in_ready.insert(contact.to_string()) {
                self.ready.push_back(contact.to_string());
            }
        } else {
            let at = row.next_attempt_at.min(row.deadline_at);
            self.later.insert((at, contact.to_string()));
        }
    }

    /// Arms the timer for the earliest contact waiting for its time.
    fn arm_later(&mut self, ctx: &mut Context<Self>) {
        let Some((at, _)) = self.later.first() else {
            return;
        };
        let at = *at;
        if let Some((due, handle)) = self.later_timer {
            if due <= at {
                return;
            }
            ctx.cancel_future(handle);
        }
        let wait = (at - self.core.clock.now_ms()).max(1) as u64;
        let handle = ctx.run_later(Duration::from_millis(wait), |actor, ctx| {
            actor.later_timer = None;
            let now = actor.core.clock.now_ms();
            while let Some((at, contact)) = actor.later.first().cloned() {
                if at > now {
                    break;
                }
                actor.later.remove(&(at, contact.clone()));
                actor.requeue(&contact);
            }
            actor.dispatch(ctx);
        });
        self.later_timer = Some((at, handle));
    }

    /// Starts the sends that may go now, contact by contact in turn, as the pace allows.
    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        if self.held_through.is_some() && self.held.len() < HELD_MAX / 2 {
            // More sends wait in the outbox.
            self.scan(ctx);
        }
        self.arm_later(ctx);
        if self.paused {
            return;
        }
        let Some(credentials) = self.credentials.clone() else {
            return;
        };
        let now = self.core.clock.now_ms();
        if let Some(until) = self.held_until {
            if now < until {
                self.pace_after(Duration::from_millis((until - now) as u64), ctx);
                return;
            }
            self.held_until = None;
        }
        let reconcile_ms = (self.core.settings.outbound.reconcile_secs * 1000) as i64;
        // Sends are made ready (opened, marked in flight) ahead of the pace, a turn's
        // worth at a time, so that each leaves when its token comes, not a write later.
        let ahead = 2 * (self.burst as usize).max(1);
        let mut batch = Vec::new();
        while self.primed.len() + self.priming + batch.len() < ahead {
            let Some(contact) = self.ready.pop_front() else {
                break;
            };
            self.in_ready.remove(&contact);
            if self.in_flight.contains(&contact) {
                continue;
            }
            let Some(head) = self.queues.get(&contact).and_then(VecDeque::front).cloned() else {
                self.queues.remove(&contact);
                continue;
            };
            let row = &head.row;
            if row.tenant_id != credentials.tenant_id.as_str() {
                // Accepted for a tenant that no longer has this number: never under
                // another tenant's token. It stays in the outbox for the operator.
                slog::warn!(self.core.log, "a send of a tenant that no longer has its number";
                    "phone_number_id" => self.number.as_str(), "send" => &row.id);
                self.forget(&contact, &row.id);
                self.requeue(&contact);
                continue;
            }
            if row.state == OutboxState::Sending {
                // In flight when the daemon stopped: Meta may have it.
                self.settle(row, Settle::RetryAt(now + reconcile_ms, None), ctx);
                continue;
            }
            if now >= row.deadline_at {
                let error = if self.limited.remove(&contact) {
                    self.count_limited();
                    json!({
                        "code": messaging_limits::MESSAGING_LIMIT,
                        "message": "the business portfolio's messaging limit left no room for \
                            this user before outbound.retry_deadline_secs",
                    })
                } else {
                    json!({
                        "code": "deadline_exceeded",
                        "message": "Meta did not accept the message before outbound.retry_deadline_secs",
                    })
                };
                self.settle(row, Settle::Fail(error.to_string()), ctx);
                continue;
            }
            if row.next_attempt_at > now {
                self.requeue(&contact);
                continue;
            }
            self.in_flight.insert(contact);
            batch.push(head);
        }
        self.arm_later(ctx);
        if !batch.is_empty() {
            self.priming += batch.len();
            self.start(batch, credentials, ctx);
        }
        self.release(ctx);
    }

    /// Calls Meta with the sends made ready, each when the pace gives it a token.
    fn release(&mut self, ctx: &mut Context<Self>) {
        if self.primed.is_empty() || self.paused || self.held_until.is_some() {
            return;
        }
        let Some(credentials) = self.credentials.clone() else {
            return;
        };
        let client = match self.client() {
            Ok(client) => client,
            Err(e) => {
                slog::error!(self.core.log, "no Graph API client: nothing is sent";
                    "phone_number_id" => self.number.as_str(), "error" => e);
                return;
            }
        };
        while !self.primed.is_empty() {
            if let Some(wait) = self.take_token() {
                self.pace_after(wait, ctx);
                break;
            }
            if let Some(Primed { row, key, body }) = self.primed.pop_front() {
                self.call(row, key, body, client.clone(), credentials.clone(), ctx);
            }
        }
    }

    /// Dispatches again once the pace has a token.
    fn pace_after(&mut self, wait: Duration, ctx: &mut Context<Self>) {
        if self.pace_timer.is_some() {
            return;
        }
        let handle = ctx.run_later(wait, |actor, ctx| {
            actor.pace_timer = None;
            actor.dispatch(ctx);
        });
        self.pace_timer = Some(handle);
    }

    /// Opens the sends of `batch` not opened yet and marks them all in flight with one
    /// write; the ones marked wait for their tokens ([`Self::release`]).
    fn start(&mut self, batch: Vec<Held>, credentials: Rc<SendingNumber>, ctx: &mut Context<Self>) {
        let count = batch.len();
        let core = self.core.clone();
        let tenant_id = credentials.tenant_id.clone();
        let limit_enforced = credentials.limit_enforced;
        let contacts: Vec<String> = batch
            .iter()
            .map(|held| held.row.contact_id.clone())
            .collect();
        let prepared = async move {
            let closed: Vec<OutboxRow> = batch
                .iter()
                .filter(|held| held.opened.is_none())
                .map(|held| held.row.clone())
                .collect();
            let mut opened = if closed.is_empty() {
                HashMap::new()
            } else {
                core.read(move |conn, keyring| open_rows(conn, keyring, closed))
                    .await?
            };
            let mut ready = Vec::with_capacity(batch.len());
            let mut erased = Vec::new();
            for held in batch {
                let opened = match held.opened {
                    Some((key, body)) => Some((key, (*body).clone())),
                    None => opened.remove(&held.row.id).flatten(),
                };
                match opened {
                    Some((key, body)) => ready.push((held.row, key, body)),
                    None => erased.push(held.row),
                }
            }
            let ids: Vec<String> = ready.iter().map(|(row, _, _)| row.id.clone()).collect();
            // A template may count against its portfolio's enforced messaging limit:
            // where several writer threads could run two counts of one budget at once
            // (PostgreSQL), the tenant's numbers count one batch at a time.
            let _turn = match limit_enforced
                && core.writer.writers() > 1
                && ready.iter().any(|(row, _, _)| row.kind == "template")
            {
                true => Some(marking_turn(&core, &tenant_id).lock_owned().await),
                false => None,
            };
            let now = core.clock.now_ms();
            let marking = core
                .writer
                .write(Some(tenant_id), move |conn| {
                    outbox::mark_sending(conn, &ids, now)
                })
                .await?;
            Ok::<_, StorageError>((ready, erased, marking))
        };
        ctx.spawn(prepared.into_actor(self).map(move |prepared, actor, ctx| {
            actor.priming -= count;
            let (ready, erased, marking) = match prepared {
                Ok(prepared) => prepared,
                Err(e) => {
                    slog::warn!(actor.core.log, "preparing sends failed";
                        "phone_number_id" => actor.number.as_str(), "error" => %e);
                    ctx.run_later(Duration::from_secs(1), move |actor, ctx| {
                        for contact in &contacts {
                            actor.in_flight.remove(contact);
                            actor.requeue(contact);
                        }
                        actor.dispatch(ctx);
                    });
                    return;
                }
            };
            for row in erased {
                // The contact's key is gone (erased): nothing of the send can go.
                slog::info!(actor.core.log, "a send's contact was erased before it left";
                    "send" => &row.id);
                let error = json!({"code": "erased", "message": "the contact was erased"});
                actor.settle(&row, Settle::Fail(error.to_string()), ctx);
            }
            if let Some((portfolio, limit)) = &marking.reached {
                slog::warn!(actor.core.log,
                    "a business portfolio reached its messaging limit: business-initiated \
                     messages to new users wait for room";
                    "portfolio_id" => portfolio, "messaging_limit" => limit,
                    "phone_number_id" => actor.number.as_str());
            }
            let limited: HashSet<&String> = marking.limited.iter().collect();
            let marked: HashSet<&String> = marking.marked.iter().collect();
            for (mut row, key, body) in ready {
                if limited.contains(&row.id) {
                    actor.wait_for_budget(&row);
                    continue;
                }
                if !marked.contains(&row.id) {
                    // Recorded or failed meanwhile: nothing to send.
                    actor.in_flight.remove(&row.contact_id);
                    actor.forget(&row.contact_id, &row.id);
                    actor.requeue(&row.contact_id);
                    continue;
                }
                if actor.limited.remove(&row.contact_id) {
                    actor.count_limited();
                }
                row.attempts += 1;
                row.state = OutboxState::Sending;
                actor.primed.push_back(Primed { row, key, body });
            }
            actor.count_limited();
            actor.dispatch(ctx);
        }));
    }

    /// Calls Meta with one send (already marked in flight) and records the outcome.
    fn call(
        &mut self,
        row: OutboxRow,
        key: SealKey,
        body: Value,
        client: Rc<GraphClient>,
        credentials: Rc<SendingNumber>,
        ctx: &mut Context<Self>,
    ) {
        let number = self.number.clone();
        let used = credentials.clone();
        let sent = async move {
            client
                .send_message(number.as_str(), &credentials.access_token, &body)
                .await
        };
        ctx.spawn(
            sent.into_actor(self)
                .map(move |sent, actor, ctx| match sent {
                    Ok(None) => {
                        actor.count_sent();
                        actor.settle(&row, Settle::Done, ctx)
                    }
                    Ok(Some(wamid)) => {
                        actor.count_sent();
                        actor.throttles = 0;
                        let sealed = outbox::seal_wamid(
                            &actor.core.keyring,
                            &key,
                            &TenantId(row.tenant_id.clone()),
                            &wamid,
                        );
                        match sealed {
                            Ok((bidx, ct)) => actor.settle(&row, Settle::Accepted(bidx, ct), ctx),
                            Err(e) => actor.settle(&row, Settle::Fail(storage_error_json(&e)), ctx),
                        }
                    }
                    Err(error) => actor.failed(&row, error, &used.access_token, ctx),
                }),
        );
    }

    /// A business-initiated send its portfolio's budget has no room for: it stays
    /// first of its contact's queue and is tried again after [`LIMIT_RECHECK_MS`] (or
    /// at once when the limit rises), while the number's other contacts go on.
    fn wait_for_budget(&mut self, row: &OutboxRow) {
        let contact = row.contact_id.clone();
        self.in_flight.remove(&contact);
        let again = self.core.clock.now_ms() + LIMIT_RECHECK_MS;
        if let Some(head) = self
            .queues
            .get_mut(&contact)
            .and_then(VecDeque::front_mut)
            .filter(|head| head.row.id == row.id)
        {
            head.row.next_attempt_at = again;
        }
        self.limited.insert(contact.clone());
        self.requeue(&contact);
    }

    /// Tries the sends waiting for their portfolio's budget again now (its limit rose).
    fn retry_limited(&mut self) {
        let now = self.core.clock.now_ms();
        // In the order their waiting sends were accepted.
        let mut waiting: Vec<(String, String)> = std::mem::take(&mut self.limited)
            .into_iter()
            .map(|contact| {
                let first = self
                    .queues
                    .get(&contact)
                    .and_then(VecDeque::front)
                    .map(|held| held.row.id.clone())
                    .unwrap_or_default();
                (first, contact)
            })
            .collect();
        waiting.sort();
        for (_, contact) in waiting {
            self.later.retain(|(_, waiting)| *waiting != contact);
            if let Some(head) = self.queues.get_mut(&contact).and_then(VecDeque::front_mut) {
                head.row.next_attempt_at = head.row.next_attempt_at.min(now);
            }
            self.requeue(&contact);
        }
        self.count_limited();
    }

    /// `converra_messaging_limit_waiting` of the number: the sends of contacts whose
    /// first send waits for the budget.
    fn count_limited(&self) {
        let waiting: usize = self
            .limited
            .iter()
            .filter_map(|contact| self.queues.get(contact).map(VecDeque::len))
            .sum();
        self.core
            .metrics
            .messaging_limit_waiting
            .with_label_values(&[self.number.as_str()])
            .set(waiting as i64);
    }

    /// Drops a send from what is held (it is finished, or not this sender's).
    fn forget(&mut self, contact: &str, id: &str) {
        if let Some(queue) = self.queues.get_mut(contact) {
            queue.retain(|held| held.row.id != id);
            if queue.is_empty() {
                self.queues.remove(contact);
            }
        }
        self.held.remove(id);
        if self.scanning {
            self.finished_during_scan.insert(id.to_string());
        }
    }

    fn client(&mut self) -> Result<Rc<GraphClient>, String> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let client = Rc::new(GraphClient::from_settings(&self.core.settings)?);
        self.client = Some(client.clone());
        Ok(client)
    }

    fn count_sent(&self) {
        self.core
            .metrics
            .outbound_sends
            .with_label_values(&["sent"])
            .inc();
    }

    /// Syncs the account's message templates when they are due (at start, then every
    /// `outbound.template_sync_secs`, checked at each scan), beside the sends.
    fn sync_templates(
        &mut self,
        client: Rc<GraphClient>,
        credentials: Rc<SendingNumber>,
        ctx: &mut Context<Self>,
    ) {
        let now = self.core.clock.now_ms();
        let every = (self.core.settings.outbound.template_sync_secs * 1000) as i64;
        if self.templates_synced_at.is_some_and(|at| now - at < every) {
            return;
        }
        self.templates_synced_at = Some(now);
        let writer = self.core.writer.clone();
        let sync = async move {
            let listed = client
                .list_templates(&credentials.waba_id, &credentials.access_token)
                .await
                .map_err(|e| e.to_string())?;
            let count = listed.len();
            let tenant_id = credentials.tenant_id.clone();
            let waba_id = credentials.waba_id.clone();
            writer
                .write(Some(tenant_id.clone()), move |conn| {
                    crate::storage::templates::replace_templates(
                        conn, &tenant_id, &waba_id, &listed, now,
                    )
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(count)
        };
        ctx.spawn(
            sync.into_actor(self)
                .map(|synced, actor, _ctx| match synced {
                    Ok(count) => slog::info!(actor.core.log, "message templates synced";
                "phone_number_id" => actor.number.as_str(), "templates" => count),
                    Err(e) => slog::warn!(actor.core.log, "syncing message templates failed";
                "phone_number_id" => actor.number.as_str(), "error" => e),
                }),
        );
    }

    /// What an error of Meta's (or the network's) does to the send and the number.
    /// `token` is the access token the call was made with.
    fn failed(&mut self, row: &OutboxRow, error: GraphError, token: &str, ctx: &mut Context<Self>) {
        let outcome = match error.class {
            ErrorClass::Permanent => "failed",
            ErrorClass::Pause => "paused",
            ErrorClass::Unknown => "unknown",
            _ => "retried",
        };
        self.core
            .metrics
            .outbound_sends
            .with_label_values(&[outcome])
            .inc();
        let now = self.core.clock.now_ms();
        let outbound = &self.core.settings.outbound;
        // This attempt is counted in the row.
        let attempts = u32::try_from(row.attempts).unwrap_or(1).max(1);
        let settle = match error.class {
            ErrorClass::Transient => {
                let base = outbound.retry_base_ms as f64 * 2f64.powi(attempts as i32 - 1);
                Settle::RetryAt(now + jittered(base.min(3_600_000.0)), Some(error.to_json()))
            }
            ErrorClass::PairLimit => {
                let wait = 4f64.powi(attempts as i32) * 1000.0;
                Settle::RetryAt(now + jittered(wait.min(3_600_000.0)), Some(error.to_json()))
            }
            ErrorClass::Throttled => {
                // Meta counts the number's (or the account's, or the app's) calls: the
                // whole number waits, longer each time in a row.
                let wait = outbound.retry_base_ms as f64 * 2f64.powi(self.throttles.min(12) as i32);
                let until = now + jittered(wait.min(60_000.0));
                self.throttles += 1;
                self.hold_number_until(until, &error);
                Settle::RetryAt(until, Some(error.to_json()))
            }
            ErrorClass::NumberDeferred => {
                let until = now + DEFERRED_MS;
                slog::error!(self.core.log, "Meta's spam rate limit: the number's sends wait for hours";
                    "phone_number_id" => self.number.as_str(), "code" => error.code,
                    "message" => &error.message, "until_ms" => until);
                self.hold_number_until(until, &error);
                self.record_hold(Hold::Until(until), ctx);
                Settle::RetryAt(until, Some(error.to_json()))
            }
            ErrorClass::Deferred => {
                slog::warn!(self.core.log, "Meta deferred a send for hours (a limit on this user)";
                    "phone_number_id" => self.number.as_str(), "code" => error.code,
                    "send" => &row.id);
                self.count_deferral("send", &error);
                Settle::RetryAt(now + DEFERRED_MS, Some(error.to_json()))
            }
            ErrorClass::Unknown => Settle::RetryAt(
                now + (outbound.reconcile_secs * 1000) as i64,
                Some(error.to_json()),
            ),
            ErrorClass::Permanent if error.code == Some(MARKETING_STOPPED) => {
                Settle::FailOptedOut(error.to_json())
            }
            ErrorClass::Permanent => Settle::Fail(error.to_json()),
            ErrorClass::Pause
                if self
                    .credentials
                    .as_ref()
                    .is_some_and(|c| c.access_token != token) =>
            {
                // Refused under a token since replaced: tried again with the new one.
                Settle::RetryAt(now, Some(error.to_json()))
            }
            ErrorClass::Pause => {
                slog::error!(self.core.log, "number paused: Meta refused its token or account; replace the token to resume";
                    "phone_number_id" => self.number.as_str(), "code" => error.code,
                    "message" => &error.message);
                if !self.paused {
                    self.core.metrics.outbound_numbers_paused.inc();
                    self.paused = true;
                    self.pause_recorded = false;
                    self.record_hold(Hold::Paused(now), ctx);
                }
                Settle::RetryAt(now, Some(error.to_json()))
            }
        };
        self.settle(row, settle, ctx);
    }

    /// Stores a pause or a spam hold of the number, so that a restart keeps it. A pause
    /// is lifted only once a scan has read it stored and a later one finds it gone.
    fn record_hold(&mut self, hold: Hold, ctx: &mut Context<Self>) {
        let writer = self.core.writer.clone();
        let number = self.number.clone();
        let tenant_id = self.credentials.as_ref().map(|c| c.tenant_id.clone());
        let write = async move {
            writer
                .write(tenant_id, move |conn| match hold {
                    Hold::Paused(at) => tenants::set_number_paused(conn, number.as_str(), Some(at)),
                    Hold::Until(until) => tenants::set_number_held(conn, number.as_str(), until),
                })
                .await
        };
        ctx.spawn(write.into_actor(self).map(|written, actor, _ctx| {
            if let Err(e) = written {
                slog::warn!(actor.core.log, "storing the number's pause or hold failed";
                    "phone_number_id" => actor.number.as_str(), "error" => %e);
            }
        }));
    }

    /// Holds every send of the number until `until_ms` (Meta's limit on the number).
    fn hold_number_until(&mut self, until_ms: i64, error: &GraphError) {
        self.count_deferral("number", error);
        self.held_until = Some(self.held_until.map_or(until_ms, |at| at.max(until_ms)));
    }

    fn count_deferral(&self, scope: &str, error: &GraphError) {
        let code = error
            .code
            .map_or_else(|| "http".to_string(), |c| c.to_string());
        self.core
            .metrics
            .outbound_deferrals
            .with_label_values(&[scope, &code])
            .inc();
    }

    /// Writes a send's outcome; its contact's next send waits until it is written.
    fn settle(&mut self, row: &OutboxRow, settle: Settle, ctx: &mut Context<Self>) {
        self.in_flight.insert(row.contact_id.clone());
        self.write_outcome(row.clone(), settle, ctx);
    }

    fn write_outcome(&mut self, row: OutboxRow, settle: Settle, ctx: &mut Context<Self>) {
        let writer = self.core.writer.clone();
        let now = self.core.clock.now_ms();
        let tenant_id = TenantId(row.tenant_id.clone());
        let (id, contact) = (row.id.clone(), row.contact_id.clone());
        let written = settle.clone();
        let write = async move {
            writer
                .write(Some(tenant_id.clone()), move |conn| match &written {
                    Settle::Accepted(bidx, ct) => {
                        outbox::record_accepted(conn, &tenant_id, &id, bidx, ct, now)
                    }
                    Settle::Done => outbox::record_done(conn, &id),
                    Settle::RetryAt(at, error) => {
                        outbox::retry_at(conn, &id, *at, error.as_deref())
                    }
                    Settle::Fail(error) => outbox::record_failed(conn, &tenant_id, &id, error, now),
                    Settle::FailOptedOut(error) => {
                        outbox::record_failed(conn, &tenant_id, &id, error, now)?;
                        outbox::record_marketing_stop(conn, &tenant_id, &contact, now)
                    }
                })
                .await
        };
        ctx.spawn(write.into_actor(self).map(move |written, actor, ctx| {
            if let Err(e) = written {
                slog::warn!(actor.core.log, "recording a send's outcome failed";
                    "phone_number_id" => actor.number.as_str(), "error" => %e);
                if e.is_transient() {
                    // What Meta answered is known only here: written again, with the
                    // contact's next send waiting for it.
                    ctx.run_later(Duration::from_secs(1), move |actor, ctx| {
                        actor.write_outcome(row, settle, ctx)
                    });
                    return;
                }
            }
            actor.finish(&row, &settle);
            actor.dispatch(ctx);
        }));
    }

    /// Its outcome written, a send leaves what is held, or waits for its retry; its
    /// contact's next send takes its turn.
    fn finish(&mut self, row: &OutboxRow, settle: &Settle) {
        let contact = &row.contact_id;
        self.in_flight.remove(contact);
        match settle {
            Settle::RetryAt(at, _) => {
                let head = self
                    .queues
                    .get_mut(contact)
                    .and_then(|queue| queue.front_mut())
                    .filter(|head| head.row.id == row.id);
                if let Some(head) = head {
                    head.row.next_attempt_at = *at;
                    head.row.attempts = row.attempts;
                    head.row.state = OutboxState::Queued;
                }
            }
            _ => self.forget(contact, &row.id),
        }
        self.requeue(contact);
    }
}

/// Opens each of `rows` with its contact's key: Meta's body, and the key for Meta's
/// wamid; `None` for a row whose key is gone (the contact was erased).
fn open_rows(
    conn: &mut crate::storage::DbConn,
    keyring: &crate::storage::key_store::Vault,
    rows: Vec<OutboxRow>,
) -> Result<HashMap<String, Option<(SealKey, Value)>>, StorageError> {
    let mut keys: HashMap<(String, String), Option<SealKey>> = HashMap::new();
    let mut opened = HashMap::with_capacity(rows.len());
    for row in rows {
        let slot = (row.tenant_id.clone(), row.key_id.clone());
        let key = match keys.get(&slot) {
            Some(key) => key.clone(),
            None => {
                let key = outbox::row_key(conn, keyring, &row)?;
                keys.insert(slot, key.clone());
                key
            }
        };
        let body = match key {
            Some(key) => {
                let place = outbox::request_place(&row.tenant_id, &row.id);
                let body = key.open(&row.request_ct, &place)?;
                let body: Value = serde_json::from_slice(&body)
                    .map_err(|e| StorageError::Corrupt(e.to_string()))?;
                Some((key, body))
            }
            None => None,
        };
        opened.insert(row.id, body);
    }
    Ok(opened)
}

/// What stops a number's sends: a pause (since), or Meta's spam hold (until).
#[derive(Clone, Copy)]
enum Hold {
    Paused(i64),
    Until(i64),
}

#[derive(Clone)]
enum Settle {
    /// Meta's wamid, as its keyed hash and sealed.
    Accepted(String, Vec<u8>),
    /// Accepted without a wamid (a read receipt).
    Done,
    RetryAt(i64, Option<String>),
    Fail(String),
    /// Failed because the user stopped marketing messages: the contact opted out.
    FailOptedOut(String),
}

/// `base_ms` give or take a quarter, so that sends failed together do not retry together.
pub(super) fn jittered(base_ms: f64) -> i64 {
    let mut byte = [0u8; 1];
    rand::fill(&mut byte[..]);
    let factor = 0.75 + f64::from(byte[0]) / 255.0 * 0.5;
    (base_ms * factor) as i64
}

fn storage_error_json(e: &StorageError) -> String {
    json!({"code": "internal", "message": e.to_string()}).to_string()
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
        let paused = self.paused;
        *self = SenderActor::new(core, number);
        self.paused = paused;
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
