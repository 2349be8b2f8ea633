//! One sender per business phone number: takes the number's outbox rows in the order
//! the API accepted them and sends them to Meta, at most one in flight per contact
//! (so a contact's messages leave in order, and one contact's backlog takes its turn
//! beside the others'), paced evenly at the number's throughput with a burst of at
//! most 5% of it (Meta counts per second: a whole second of burst on top of the rate
//! would exceed it). Each outcome is written before the contact's next message goes:
//! Meta's wamid, a retry's time (backoff with jitter, by what Meta's code means), the
//! failure, or a pause of the number when its token or account is the problem.
//!
//! A row marked `sending` when the sender starts was in flight when the daemon
//! stopped: Meta may have accepted it. It waits `outbound.reconcile_secs` for Meta's
//! status webhook, which echoes its id and records it as sent; only then is it sent
//! again.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use serde_json::json;

use super::Core;
use crate::ids::{PhoneNumberId, TenantId};
use crate::storage::outbox::{self, OutboxRow, SENDING};
use crate::storage::tenants::{self, SendingNumber};
use crate::storage::{self, StorageError};
use crate::whatsapp::graph::{ErrorClass, GraphClient, GraphError};

/// Sends read per scan of the outbox (each a different contact's).
const SCAN_ROWS: i64 = 1000;
/// Meta's code for a user who stopped marketing messages.
const MARKETING_STOPPED: i64 = 131_050;
/// Spam and ecosystem limits: Meta asks for hours, not seconds.
const DEFERRED_MS: i64 = 3 * 3600 * 1000;

/// New sends may be due.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake;

/// The running senders, by number.
#[derive(Default)]
pub struct Senders {
    running: Mutex<HashMap<String, Addr<SenderActor>>>,
}

/// Tells the sender of `phone_number_id` to look at its outbox, starting it (on the
/// calling thread's arbiter) when it is not running.
pub fn wake(core: &Arc<Core>, phone_number_id: &str) {
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
    addr.do_send(Wake);
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
    /// Contacts with a send in flight (its outcome not yet written).
    in_flight: HashSet<String>,
    scanning: bool,
    scan_again: bool,
    paused: bool,
    /// The next scan, if one is waiting for a time.
    timer: Option<(i64, SpawnHandle)>,
    /// When the account's templates were last synced (or tried).
    templates_synced_at: Option<i64>,
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
            in_flight: HashSet::new(),
            scanning: false,
            scan_again: false,
            paused: false,
            timer: None,
            templates_synced_at: None,
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

    /// Reads the outbox and the number's token.
    fn scan(&mut self, ctx: &mut Context<Self>) {
        if self.scanning {
            self.scan_again = true;
            return;
        }
        self.scanning = true;
        let core = self.core.clone();
        let number = self.number.clone();
        let now = core.clock.now_ms();
        let read = async move {
            let pool = core.pool.clone();
            let keyring = core.keyring.clone();
            actix_web::rt::task::spawn_blocking(move || {
                storage::with_conn(&pool, |conn| {
                    // Read at every look, so that a replaced token is used at once.
                    let credentials = tenants::sending_number(conn, &keyring, number.as_str())?;
                    let due = outbox::due_sends(conn, &number, now, SCAN_ROWS)?;
                    Ok((credentials, due))
                })
            })
            .await
            .map_err(|e| StorageError::Unavailable(e.to_string()))?
        };
        ctx.spawn(read.into_actor(self).map(|read, actor, ctx| {
            actor.scanning = false;
            match read {
                Ok((credentials, (rows, next_due))) => {
                    if let Some(credentials) = credentials {
                        let changed = actor
                            .credentials
                            .as_ref()
                            .is_none_or(|c| c.access_token != credentials.access_token);
                        if actor.paused && changed {
                            slog::info!(actor.core.log, "sender resumed with a new token";
                                "phone_number_id" => actor.number.as_str());
                            actor.paused = false;
                            actor.core.metrics.outbound_numbers_paused.dec();
                        }
                        actor.credentials = Some(Rc::new(credentials));
                    }
                    if actor.paused {
                        let recheck = actor.core.settings.outbound.paused_recheck_secs * 1000;
                        actor.scan_at(actor.core.clock.now_ms() + recheck as i64, ctx);
                    } else {
                        if let Some(next_due) = next_due {
                            actor.scan_at(next_due, ctx);
                        }
                        actor.start_sends(rows, ctx);
                    }
                }
                Err(e) => {
                    slog::warn!(actor.core.log, "reading the outbox failed";
                        "phone_number_id" => actor.number.as_str(), "error" => %e);
                    actor.scan_at(actor.core.clock.now_ms() + 1000, ctx);
                }
            }
            if std::mem::take(&mut actor.scan_again) {
                actor.scan(ctx);
            }
        }));
    }

    /// Schedules a scan at `at_ms` (unless one is due sooner).
    fn scan_at(&mut self, at_ms: i64, ctx: &mut Context<Self>) {
        if let Some((due, handle)) = self.timer {
            if due <= at_ms {
                return;
            }
            ctx.cancel_future(handle);
        }
        let wait = (at_ms - self.core.clock.now_ms()).max(1) as u64;
        let handle = ctx.run_later(Duration::from_millis(wait), |actor, ctx| {
            actor.timer = None;
            actor.scan(ctx);
        });
        self.timer = Some((at_ms, handle));
    }

    /// Syncs the account's message templates when they are due (at start, then every
    /// `outbound.template_sync_secs`), beside the sends.
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
        ctx.spawn(sync.into_actor(self).map(move |synced, actor, ctx| {
            match synced {
                Ok(count) => slog::info!(actor.core.log, "message templates synced";
                    "phone_number_id" => actor.number.as_str(), "templates" => count),
                Err(e) => slog::warn!(actor.core.log, "syncing message templates failed";
                    "phone_number_id" => actor.number.as_str(), "error" => e),
            }
            actor.scan_at(actor.core.clock.now_ms() + every, ctx);
        }));
    }

    /// Starts the sends due now, the first pending row of each contact with nothing in
    /// flight, in the order they were accepted, as the pace allows.
    fn start_sends(&mut self, rows: Vec<OutboxRow>, ctx: &mut Context<Self>) {
        let now = self.core.clock.now_ms();
        let recheck_ms = (self.core.settings.outbound.paused_recheck_secs * 1000) as i64;
        let Some(credentials) = self.credentials.clone() else {
            if !rows.is_empty() {
                slog::warn!(self.core.log, "outbox rows for a number no tenant has";
                    "phone_number_id" => self.number.as_str(), "rows" => rows.len());
                self.scan_at(now + recheck_ms, ctx);
            }
            return;
        };
        let client = match self.client() {
            Ok(client) => client,
            Err(e) => {
                slog::error!(self.core.log, "no Graph API client: nothing is sent";
                    "phone_number_id" => self.number.as_str(), "error" => e);
                self.scan_at(now + recheck_ms, ctx);
                return;
            }
        };
        let reconcile_ms = (self.core.settings.outbound.reconcile_secs * 1000) as i64;
        self.sync_templates(client.clone(), credentials.clone(), ctx);
        let mut seen = HashSet::new();
        for row in rows {
            if !seen.insert(row.contact_id.clone()) || self.in_flight.contains(&row.contact_id) {
                continue;
            }
            if row.tenant_id != credentials.tenant_id.as_str() {
                // Accepted for a tenant that no longer has this number: never under
                // another tenant's token.
                slog::warn!(self.core.log, "a send of a tenant that no longer has its number";
                    "phone_number_id" => self.number.as_str(), "send" => &row.id);
                continue;
            }
            if row.state == SENDING {
                // In flight when the daemon stopped: Meta may have it.
                self.settle(&row, Settle::RetryAt(now + reconcile_ms, None), ctx);
                continue;
            }
            if now >= row.deadline_at {
                let error = json!({
                    "code": "deadline_exceeded",
                    "message": "Meta did not accept the message before outbound.retry_deadline_secs",
                });
                self.settle(&row, Settle::Fail(error.to_string()), ctx);
                continue;
            }
            if row.next_attempt_at > now {
                self.scan_at(row.next_attempt_at, ctx);
                continue;
            }
            if let Some(wait) = self.take_token() {
                self.scan_at(now + wait.as_millis() as i64 + 1, ctx);
                break;
            }
            self.send(row, credentials.clone(), client.clone(), ctx);
        }
    }

    fn client(&mut self) -> Result<Rc<GraphClient>, String> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let settings = &self.core.settings;
        let client = Rc::new(GraphClient::new(
            &settings.whatsapp.graph_base_url,
            &settings.whatsapp.graph_api_version,
            Duration::from_secs(settings.outbound.request_timeout_secs),
            &settings.outbound.ca_file,
        )?);
        self.client = Some(client.clone());
        Ok(client)
    }

    fn send(
        &mut self,
        row: OutboxRow,
        credentials: Rc<SendingNumber>,
        client: Rc<GraphClient>,
        ctx: &mut Context<Self>,
    ) {
        self.in_flight.insert(row.contact_id.clone());
        let core = self.core.clone();
        let number = self.number.clone();
        let tenant_id = TenantId(row.tenant_id.clone());
        let written_for = tenant_id.clone();
        let id = row.id.clone();
        let marked = id.clone();
        let contact = row.contact_id.clone();
        let sent = async move {
            let (key, body) = {
                let pool = core.pool.clone();
                let keyring = core.keyring.clone();
                let row = row.clone();
                actix_web::rt::task::spawn_blocking(move || {
                    storage::with_conn(&pool, |conn| {
                        let Some(key) = outbox::row_key(conn, &keyring, &row)? else {
                            return Ok(None);
                        };
                        let place = outbox::request_place(&row.tenant_id, &row.id);
                        let body = key.open(&row.request_ct, &place)?;
                        let body: serde_json::Value = serde_json::from_slice(&body)
                            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
                        Ok(Some((key, body)))
                    })
                })
                .await
                .map_err(|e| StorageError::Unavailable(e.to_string()))??
                .ok_or(StorageError::NotFound)?
            };
            let queued = core
                .writer
                .write(Some(written_for), move |conn| {
                    outbox::mark_sending(conn, &marked)
                })
                .await?;
            if !queued {
                return Ok(None);
            }
            let result = client
                .send_message(number.as_str(), &credentials.access_token, &body)
                .await;
            Ok::<_, StorageError>(Some((result, key, row)))
        };
        ctx.spawn(
            sent.into_actor(self)
                .map(move |sent, actor, ctx| match sent {
                    Ok(Some((Ok(None), _, row))) => {
                        actor.count_sent();
                        actor.settle(&row, Settle::Done, ctx)
                    }
                    Ok(Some((Ok(Some(wamid)), key, row))) => {
                        actor.count_sent();
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
                    Ok(Some((Err(error), _, row))) => actor.failed(&row, error, ctx),
                    Ok(None) => {
                        // Recorded or failed meanwhile: nothing to send.
                        actor.in_flight.remove(&contact);
                        actor.scan(ctx);
                    }
                    Err(StorageError::NotFound) => {
                        // The contact's key is gone (erased): nothing of the send can go.
                        slog::info!(actor.core.log, "a send's contact was erased before it left";
                    "send" => %id);
                        let error = json!({"code": "erased", "message": "the contact was erased"});
                        actor.write_outcome(
                            tenant_id,
                            id,
                            Settle::Fail(error.to_string()),
                            Some(contact),
                            ctx,
                        );
                    }
                    Err(e) => {
                        slog::warn!(actor.core.log, "preparing a send failed";
                    "send" => %id, "error" => %e);
                        actor.in_flight.remove(&contact);
                        actor.scan_at(actor.core.clock.now_ms() + 1000, ctx);
                    }
                }),
        );
    }

    fn count_sent(&self) {
        self.core
            .metrics
            .outbound_sends
            .with_label_values(&["sent"])
            .inc();
    }

    /// What an error of Meta's (or the network's) does to the send and the number.
    fn failed(&mut self, row: &OutboxRow, error: GraphError, ctx: &mut Context<Self>) {
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
        // The row was read before this attempt was counted.
        let attempts = u32::try_from(row.attempts + 1).unwrap_or(1).max(1);
        let settle = match error.class {
            ErrorClass::Transient => {
                let base = outbound.retry_base_ms as f64 * 2f64.powi(attempts as i32 - 1);
                Settle::RetryAt(now + jittered(base.min(3_600_000.0)), Some(error.to_json()))
            }
            ErrorClass::PairLimit => {
                let wait = 4f64.powi(attempts as i32) * 1000.0;
                Settle::RetryAt(now + jittered(wait.min(3_600_000.0)), Some(error.to_json()))
            }
            ErrorClass::Deferred => {
                slog::warn!(self.core.log, "Meta deferred a send (spam or ecosystem limit)";
                    "phone_number_id" => self.number.as_str(), "code" => error.code);
                Settle::RetryAt(now + DEFERRED_MS, Some(error.to_json()))
            }
            ErrorClass::Unknown => Settle::RetryAt(
                now + (outbound.reconcile_secs * 1000) as i64,
                Some(error.to_json()),
            ),
            ErrorClass::Permanent if error.code == Some(MARKETING_STOPPED) => {
                Settle::FailOptedOut(error.to_json(), row.contact_id.clone())
            }
            ErrorClass::Permanent => Settle::Fail(error.to_json()),
            ErrorClass::Pause => {
                slog::error!(self.core.log, "number paused: Meta refused its token or account; replace the token to resume";
                    "phone_number_id" => self.number.as_str(), "code" => error.code,
                    "message" => &error.message);
                if !self.paused {
                    self.core.metrics.outbound_numbers_paused.inc();
                }
                self.paused = true;
                Settle::RetryAt(now, Some(error.to_json()))
            }
        };
        self.settle(row, settle, ctx);
    }

    /// Writes a send's outcome; its contact's next send waits until it is written.
    fn settle(&mut self, row: &OutboxRow, settle: Settle, ctx: &mut Context<Self>) {
        let contact = row.contact_id.clone();
        self.in_flight.insert(contact.clone());
        let tenant_id = TenantId(row.tenant_id.clone());
        let id = row.id.clone();
        self.write_outcome(tenant_id, id, settle, Some(contact), ctx);
    }

    fn write_outcome(
        &mut self,
        tenant_id: TenantId,
        id: String,
        settle: Settle,
        contact: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        let writer = self.core.writer.clone();
        let now = self.core.clock.now_ms();
        let again = (tenant_id.clone(), id.clone(), settle.clone());
        let write = async move {
            writer
                .write(Some(tenant_id.clone()), move |conn| match &settle {
                    Settle::Accepted(bidx, ct) => {
                        outbox::record_accepted(conn, &tenant_id, &id, bidx, ct, now)
                    }
                    Settle::Done => outbox::record_done(conn, &id),
                    Settle::RetryAt(at, error) => {
                        outbox::retry_at(conn, &id, *at, error.as_deref())
                    }
                    Settle::Fail(error) => outbox::record_failed(conn, &id, error, now),
                    Settle::FailOptedOut(error, contact) => {
                        outbox::record_failed(conn, &id, error, now)?;
                        outbox::record_marketing_stop(conn, &tenant_id, contact, now)
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
                    let (tenant_id, id, settle) = again;
                    ctx.run_later(Duration::from_secs(1), move |actor, ctx| {
                        actor.write_outcome(tenant_id, id, settle, contact, ctx)
                    });
                    return;
                }
            }
            if let Some(contact) = contact {
                actor.in_flight.remove(&contact);
            }
            actor.scan(ctx);
        }));
    }
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
    FailOptedOut(String, String),
}

/// `base_ms` give or take a quarter, so that sends failed together do not retry together.
fn jittered(base_ms: f64) -> i64 {
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
    }
}

impl Supervised for SenderActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        // Whatever was in flight is in `sending` and reconciled like after a restart.
        self.in_flight.clear();
        self.scanning = false;
        self.scan_again = false;
        self.timer = None;
        self.client = None;
    }
}

impl Handler<Wake> for SenderActor {
    type Result = ();

    fn handle(&mut self, _msg: Wake, ctx: &mut Context<Self>) {
        self.scan(ctx);
    }
}
