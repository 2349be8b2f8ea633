//! What became of a send: Meta's answer read as a retry, a failure, a pause or a
//! hold of the number, each written before the contact's next send goes; and the
//! sends that wait for room in their portfolio's messaging limit.

use std::collections::VecDeque;
use std::time::Duration;

use actix::prelude::*;
use serde_json::json;

use super::{SenderActor, DEFERRED_MS, LIMIT_RECHECK_MS, MARKETING_STOPPED};
use crate::ids::{ContactId, MessageId};
use crate::storage::outbox::{self, OutboxRow, OutboxState};
use crate::storage::tenants::{self};
use crate::storage::StorageError;
use crate::whatsapp::graph::{ErrorClass, GraphError};

/// What stops a number's sends: a pause (since), or Meta's spam hold (until).
#[derive(Clone, Copy)]
pub(super) enum Hold {
    Paused(i64),
    Until(i64),
}

#[derive(Clone)]
pub(super) enum Settle {
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
pub(in crate::actors) fn jittered(base_ms: f64) -> i64 {
    let mut byte = [0u8; 1];
    rand::fill(&mut byte[..]);
    let factor = 0.75 + f64::from(byte[0]) / 255.0 * 0.5;
    (base_ms * factor) as i64
}

pub(super) fn storage_error_json(e: &StorageError) -> String {
    json!({"code": "internal", "message": e.to_string()}).to_string()
}

impl SenderActor {
    /// A business-initiated send its portfolio's budget has no room for: it stays
    /// first of its contact's queue and is tried again after [`LIMIT_RECHECK_MS`] (or
    /// at once when the limit rises), while the number's other contacts go on.
    pub(super) fn wait_for_budget(&mut self, row: &OutboxRow) {
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
    pub(super) fn retry_limited(&mut self) {
        let now = self.core.clock.now_ms();
        // In the order their waiting sends were accepted.
        let mut waiting: Vec<(Option<MessageId>, ContactId)> = std::mem::take(&mut self.limited)
            .into_iter()
            .map(|contact| {
                let first = self
                    .queues
                    .get(&contact)
                    .and_then(VecDeque::front)
                    .map(|held| held.row.id.clone());
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

    /// `converra_outbound_waiting` of the number: the sends it holds that are not in
    /// flight (each contact has at most one in flight).
    pub(super) fn count_waiting(&self) {
        let waiting = self.held.len().saturating_sub(self.in_flight.len());
        self.core
            .metrics
            .outbound_waiting
            .with_label_values(&[self.number.as_str()])
            .set(waiting as i64);
    }

    /// `converra_messaging_limit_waiting` of the number: the sends of contacts whose
    /// first send waits for the budget.
    pub(super) fn count_limited(&self) {
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

    /// What an error of Meta's (or the network's) does to the send and the number.
    /// `token` is the access token the call was made with.
    pub(super) fn failed(
        &mut self,
        row: &OutboxRow,
        error: GraphError,
        token: &str,
        ctx: &mut Context<Self>,
    ) {
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
    pub(super) fn record_hold(&mut self, hold: Hold, ctx: &mut Context<Self>) {
        let writer = self.core.writer.clone();
        let number = self.number.clone();
        let tenant_id = self.credentials.as_ref().map(|c| c.tenant_id.clone());
        let write = async move {
            writer
                .write(tenant_id, move |conn| match hold {
                    Hold::Paused(at) => tenants::set_number_paused(conn, &number, Some(at)),
                    Hold::Until(until) => tenants::set_number_held(conn, &number, until),
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
    pub(super) fn hold_number_until(&mut self, until_ms: i64, error: &GraphError) {
        self.count_deferral("number", error);
        self.held_until = Some(self.held_until.map_or(until_ms, |at| at.max(until_ms)));
    }

    pub(super) fn count_deferral(&self, scope: &str, error: &GraphError) {
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
    pub(super) fn settle(&mut self, row: &OutboxRow, settle: Settle, ctx: &mut Context<Self>) {
        self.in_flight.insert(row.contact_id.clone());
        self.write_outcome(row.clone(), settle, ctx);
    }

    pub(super) fn write_outcome(
        &mut self,
        row: OutboxRow,
        settle: Settle,
        ctx: &mut Context<Self>,
    ) {
        let writer = self.core.writer.clone();
        let now = self.core.clock.now_ms();
        let tenant_id = row.tenant_id.clone();
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
    pub(super) fn finish(&mut self, row: &OutboxRow, settle: &Settle) {
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
