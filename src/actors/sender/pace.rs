//! Sending at the number's pace: which sends go now, making them ready (opened and
//! marked in flight ahead of their tokens), and the call to Meta.

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::{json, Value};

use super::outcome::{storage_error_json, Settle};
use super::{Held, Primed, SenderActor, HELD_MAX};
use crate::crypto::SealKey;
use crate::ids::{ContactId, MessageId, TenantId};
use crate::storage::messaging_limits;
use crate::storage::outbox::{self, OutboxRow, OutboxState};
use crate::storage::tenants::SendingNumber;
use crate::storage::StorageError;
use crate::whatsapp::graph::GraphClient;

/// Opens each of `rows` with its contact's key: Meta's body, and the key for Meta's
/// wamid; `None` for a row whose key is gone (the contact was erased).
fn open_rows(
    conn: &mut crate::storage::DbConn,
    keyring: &crate::storage::key_store::Vault,
    rows: Vec<OutboxRow>,
) -> Result<HashMap<MessageId, Option<(SealKey, Value)>>, StorageError> {
    let mut keys: HashMap<(TenantId, String), Option<SealKey>> = HashMap::new();
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
                let place = outbox::request_place(row.tenant_id.as_str(), row.id.as_str());
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

impl SenderActor {
    /// Paces at `rate` messages a second from now on.
    pub(super) fn set_rate(&mut self, rate: f64) {
        self.core
            .metrics
            .outbound_pace
            .with_label_values(&[self.number.as_str()])
            .set(rate);
        if rate != self.rate {
            self.rate = rate;
            self.burst = (rate * 0.05).max(1.0);
            self.tokens = self.tokens.min(self.burst);
        }
    }

    /// Takes a token of the pace; `None` when there is one, else how long until there is.
    pub(super) fn take_token(&mut self) -> Option<Duration> {
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

    /// Starts the sends that may go now, contact by contact in turn, as the pace allows,
    /// and reports how many wait.
    pub(super) fn dispatch(&mut self, ctx: &mut Context<Self>) {
        self.dispatch_ready(ctx);
        self.count_waiting();
    }

    fn dispatch_ready(&mut self, ctx: &mut Context<Self>) {
        if self.held_through.is_some() && self.held.len() < HELD_MAX / 2 {
            // More sends wait in the outbox.
            self.scan(ctx);
        }
        self.arm_later(ctx);
        if self.paused {
            return;
        }
        if self.finishing {
            // The sends made ready go as the pace allows; no more are made ready.
            self.release(ctx);
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
    pub(super) fn release(&mut self, ctx: &mut Context<Self>) {
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
    pub(super) fn pace_after(&mut self, wait: Duration, ctx: &mut Context<Self>) {
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
    pub(super) fn start(
        &mut self,
        batch: Vec<Held>,
        credentials: Rc<SendingNumber>,
        ctx: &mut Context<Self>,
    ) {
        let count = batch.len();
        let core = self.core.clone();
        let tenant_id = credentials.tenant_id.clone();
        let contacts: Vec<ContactId> = batch
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
            let ids: Vec<MessageId> = ready.iter().map(|(row, _, _)| row.id.clone()).collect();
            // A template may count against its portfolio's enforced messaging limit;
            // the tenant's writes run one at a time (one writer takes them all), so
            // two counts of one budget never overlap.
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
            let limited: HashSet<&MessageId> = marking.limited.iter().collect();
            let marked: HashSet<&MessageId> = marking.marked.iter().collect();
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
    pub(super) fn call(
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
                .send_message(&number, &credentials.access_token, &body)
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
                        let sealed =
                            outbox::seal_wamid(&actor.core.keyring, &key, &row.tenant_id, &wamid);
                        match sealed {
                            Ok((bidx, ct)) => actor.settle(&row, Settle::Accepted(bidx, ct), ctx),
                            Err(e) => actor.settle(&row, Settle::Fail(storage_error_json(&e)), ctx),
                        }
                    }
                    Err(error) => actor.failed(&row, error, &used.access_token, ctx),
                }),
        );
    }

    pub(super) fn client(&mut self) -> Result<Rc<GraphClient>, String> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let client = Rc::new(GraphClient::from_settings(&self.core.settings)?);
        self.client = Some(client.clone());
        Ok(client)
    }

    pub(super) fn count_sent(&self) {
        self.core
            .metrics
            .outbound_sends
            .with_label_values(&["sent"])
            .inc();
    }
}
