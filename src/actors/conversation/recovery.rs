//! What a conversation does when a write fails or an event panics: retry, hand a
//! delivery back to the inbox, set aside an event that keeps panicking, and re-read
//! its pending inbox rows.

use std::time::Duration;

use actix::prelude::*;

use super::{ConversationActor, Pending, Source, MAX_PANICS_PER_EVENT};
use crate::storage::inbox::{self};
use crate::storage::StorageError;

/// Pending rows re-read from the inbox after a restart.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Reloaded(inbox::PendingPage);

impl ConversationActor {
    /// Event `seq` failed for a reason retrying cannot cure. An inbox row counts the
    /// attempt (in the database, so a restart does not reset it) and is parked after
    /// `actors.park_after_attempts`, out of the conversation's way; a delivered event
    /// goes back to its webhook, which stores it in the inbox, where it is counted.
    pub(super) fn count_failure(&mut self, seq: u64, error: StorageError, ctx: &mut Context<Self>) {
        let inbox_id = self
            .pending
            .iter()
            .find(|item| item.seq == seq)
            .and_then(|item| match item.source {
                Source::Inbox(id) => Some(id),
                Source::Fresh { .. } => None,
            });
        let Some(inbox_id) = inbox_id else {
            self.retry_later(error, ctx);
            return;
        };
        let reason = error.to_string();
        let park_after =
            i32::try_from(self.core.settings.actors.park_after_attempts).unwrap_or(i32::MAX);
        let now = self.core.clock.now_ms();
        let writer = self.core.writer.clone();
        let tenant_id = self.tenant_id.clone();
        self.in_flight = true;
        let recorded = async move {
            writer
                .write(Some(tenant_id), move |conn| {
                    let parked = inbox::record_failure(conn, inbox_id, &reason, park_after, now)?;
                    Ok((parked, inbox::parked_count(conn)?))
                })
                .await
        };
        ctx.spawn(recorded.into_actor(self).map(move |recorded, actor, ctx| {
            actor.in_flight = false;
            match recorded {
                Ok((true, parked)) => {
                    slog::error!(actor.log, "event keeps failing; parked for the operator";
                        "inbox_id" => inbox_id, "error" => %error);
                    actor.core.metrics.inbox_parked.set(parked);
                    actor.pending.retain(|item| item.seq != seq);
                    actor.pending_ids.remove(&inbox_id);
                    actor.pump(ctx);
                }
                _ => actor.retry_later(error, ctx),
            }
        }));
    }

    pub(super) fn retry_later(&mut self, error: StorageError, ctx: &mut Context<Self>) {
        slog::warn!(self.log, "conversation write failed; will retry"; "error" => %error);
        self.hand_back_deliveries();
        let delay = Duration::from_millis(self.core.settings.actors.retry_delay_ms.max(10));
        ctx.run_later(delay, |actor, ctx| actor.pump(ctx));
    }

    pub(super) fn on_panic(&mut self, seq: u64, ctx: &mut Context<Self>) {
        self.core.metrics.actor_restarts.inc();
        let Some(position) = self.pending.iter().position(|item| item.seq == seq) else {
            ctx.stop();
            return;
        };
        match self.pending[position].source {
            Source::Fresh { .. } => {
                slog::error!(self.log, "conversation actor panicked on a delivered event; restarting, the event goes to the inbox");
                self.pending.remove(position);
            }
            Source::Inbox(inbox_id) => {
                let count = self.panics.entry(inbox_id).or_insert(0);
                *count += 1;
                if *count >= MAX_PANICS_PER_EVENT {
                    slog::error!(self.log, "event keeps crashing its actor; parked for the operator";
                        "inbox_id" => inbox_id);
                    crate::actors::park_inbox_rows(
                        &self.core,
                        vec![(
                            inbox_id,
                            format!("the conversation actor panicked {count} times on it"),
                        )],
                    );
                    self.pending.remove(position);
                    self.pending_ids.remove(&inbox_id);
                    self.panics.remove(&inbox_id);
                } else {
                    slog::error!(self.log, "conversation actor panicked; restarting"; "inbox_id" => inbox_id);
                }
            }
        }
        // Stopping hands the actor to its supervisor, which restarts it.
        ctx.stop();
    }

    pub(super) fn reload_pending(&mut self, ctx: &mut Context<Self>) {
        let core = self.core.clone();
        let tenant_id = self.tenant_id.clone();
        let phone_number_id = self.phone_number_id.clone();
        let route_keys: Vec<String> = self.route_keys.iter().cloned().collect();
        let me = ctx.address();
        actix_web::rt::task::spawn_blocking(move || {
            let rows = core
                .pool
                .get()
                .map_err(StorageError::from)
                .and_then(|mut conn| {
                    inbox::pending_for_routes(
                        &mut conn,
                        &core.keyring,
                        &tenant_id,
                        &phone_number_id,
                        &route_keys,
                    )
                });
            match rows {
                Ok(rows) => me.do_send(Reloaded(rows)),
                Err(e) => {
                    slog::warn!(core.log, "re-reading pending inbox rows failed"; "error" => %e)
                }
            }
        });
    }
}

impl Handler<Reloaded> for ConversationActor {
    type Result = ();

    fn handle(&mut self, msg: Reloaded, ctx: &mut Context<Self>) {
        let page = msg.0;
        if !page.unreadable.is_empty() {
            crate::actors::park_inbox_rows(&self.core, page.unreadable);
        }
        for item in page.items {
            self.push(
                Source::Inbox(item.id),
                &item.route_key,
                item.received_at,
                item.event,
            );
        }
        self.pending.make_contiguous().sort_by_key(Pending::order);
        self.pump(ctx);
    }
}
