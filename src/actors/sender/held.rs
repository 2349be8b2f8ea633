//! The sends a sender holds, by contact: read from the outbox by a scan, handed over
//! as they are stored, queued in turn, or waiting for a time.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;

use super::{Fresh, Held, SenderActor, HELD_MAX};
use crate::ids::{ContactId, MessageId};
use crate::storage::outbox::{self, OutboxRow, OutboxState};
use crate::storage::tenants::{self, SendingNumber};

impl SenderActor {
    /// Reads the number's token and the outbox's pending sends, adding those not held.
    pub(super) fn scan(&mut self, ctx: &mut Context<Self>) {
        if self.finishing {
            return;
        }
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
                let credentials = tenants::sending_number(conn, keyring, &number)?;
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
    pub(super) fn use_credentials(
        &mut self,
        credentials: Option<SendingNumber>,
        ctx: &mut Context<Self>,
    ) {
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
    pub(super) fn merge_scan(&mut self, rows: Vec<OutboxRow>) {
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
    pub(super) fn add(&mut self, fresh: Fresh) {
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
    pub(super) fn hold(&mut self, held: Held) {
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
    pub(super) fn requeue(&mut self, contact: &ContactId) {
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
            if self.in_ready.insert(contact.clone()) {
                self.ready.push_back(contact.clone());
            }
        } else {
            let at = row.next_attempt_at.min(row.deadline_at);
            self.later.insert((at, contact.clone()));
        }
    }

    /// Arms the timer for the earliest contact waiting for its time.
    pub(super) fn arm_later(&mut self, ctx: &mut Context<Self>) {
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

    /// Drops a send from what is held (it is finished, or not this sender's).
    pub(super) fn forget(&mut self, contact: &ContactId, id: &MessageId) {
        if let Some(queue) = self.queues.get_mut(contact) {
            queue.retain(|held| held.row.id != *id);
            if queue.is_empty() {
                self.queues.remove(contact);
            }
        }
        self.held.remove(id);
        if self.scanning {
            self.finished_during_scan.insert(id.clone());
        }
    }
}
