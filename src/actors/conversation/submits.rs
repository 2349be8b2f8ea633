//! Sends to the contact, accepted into the outbox one at a time in the order they
//! came, under the contact this actor holds when it is the send's.

use std::sync::Arc;

use actix::prelude::*;

use super::ConversationActor;
use crate::actors::submit::{self, Submit};
use crate::storage::contacts::ResolvedContact;
use crate::storage::StorageError;

impl ConversationActor {
    /// Accepts the next send into the outbox once the one before it is stored, under
    /// the contact this actor holds when it is the send's and is stored.
    pub(super) fn pump_submits(&mut self, ctx: &mut Context<Self>) {
        if self.submitting {
            return;
        }
        let Some(Submit { order, reply }) = self.submits.pop_front() else {
            return;
        };
        self.submitting = true;
        self.last_active_ms = self.core.clock.now_ms();
        let known = self
            .contact
            .clone()
            .filter(|_| self.contact_stored && self.covers(&order.identity()));
        let used_known = known.is_some();
        let accept = submit::accept(self.core.clone(), order, known);
        // Its own task, not the actor's: if the actor restarts meanwhile, the send is
        // still stored and answered.
        let me = ctx.address();
        actix::spawn(async move {
            let (accepted, contact) = accept.await;
            let held_failed = used_known
                && matches!(&accepted, Err(e) if !matches!(e, StorageError::Conflict { .. }));
            reply.send(accepted);
            me.do_send(Submitted {
                contact,
                held_failed,
            });
        });
    }
}

/// A send was accepted into the outbox (or refused): the next may go.
#[derive(Message)]
#[rtype(result = "()")]
struct Submitted {
    /// The contact it was stored under.
    contact: Option<Arc<ResolvedContact>>,
    /// It failed under the contact this actor held, for another reason than a rule.
    held_failed: bool,
}

impl Handler<Submitted> for ConversationActor {
    type Result = ();

    fn handle(&mut self, msg: Submitted, ctx: &mut Context<Self>) {
        if !self.in_flight {
            match msg.contact {
                // A contact found for a send is kept for the next ones (and the
                // events), unless the actor has one already.
                Some(contact) if self.contact.is_none() => {
                    self.contact = Some(contact);
                    self.contact_stored = true;
                    self.conversation_id = None;
                    self.written_profile = None;
                    self.seen_written_at = None;
                }
                // The contact held may be stale: found again next time.
                None if msg.held_failed => {
                    self.contact = None;
                    self.contact_stored = false;
                }
                _ => {}
            }
        }
        self.submitting = false;
        self.pump_submits(ctx);
    }
}

impl Handler<Submit> for ConversationActor {
    type Result = ();

    fn handle(&mut self, msg: Submit, ctx: &mut Context<Self>) {
        self.received += 1;
        self.submits.push_back(msg);
        self.pump_submits(ctx);
    }
}
