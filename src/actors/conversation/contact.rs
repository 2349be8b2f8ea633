//! Finding the conversation's contact before its first write: by the contact
//! readers' look-ups, or by a resolve of its own when identifiers need linking.

use std::sync::Arc;

use actix::prelude::*;

use super::{ConversationActor, Found};
use crate::ids::ConversationId;
use crate::storage::contacts::{ContactIdentifiers, ResolvedContact};
use crate::storage::contacts::{ContactQuestion, Lookup, NewContact};
use crate::storage::StorageError;

impl ConversationActor {
    /// Looks the contact of `ids` up with reads, in the contact readers' next batch
    /// (see [`crate::storage::readers`]); a new contact is made here.
    pub(super) fn look_up(&mut self, ids: ContactIdentifiers, ctx: &mut Context<Self>) {
        let core = self.core.clone();
        let now = core.clock.now_ms();
        let question = ContactQuestion {
            tenant_id: self.tenant_id.clone(),
            phone_number_id: self.phone_number_id.clone(),
            ids,
        };
        let fut = async move {
            let found = core.readers.look_up(question.clone()).await?;
            Ok(match found {
                Lookup::Absent => {
                    let (new, contact) = NewContact::prepare(
                        &core.keyring,
                        &question.tenant_id,
                        &question.ids,
                        now,
                    )?;
                    Found::New(Box::new(new), contact)
                }
                Lookup::Found(contact, conversation) => Found::Known(contact, conversation),
                Lookup::NeedsWriter => Found::NeedsWriter,
            })
        };
        ctx.spawn(fut.into_actor(self).map(|result, actor, ctx| {
            actor.in_flight = false;
            match result {
                Ok(Found::Known(contact, conversation)) => {
                    actor.use_contact(contact, conversation, None, ctx)
                }
                Ok(Found::New(new, contact)) => {
                    let conversation = new.conversation_id.clone();
                    actor.use_contact(contact, conversation, Some(new), ctx)
                }
                Ok(Found::NeedsWriter) => {
                    actor.resolve_in_writer = true;
                    actor.pump(ctx);
                }
                Err(e) => actor.contact_failed(e, ctx),
            }
        }));
    }

    /// Caches the contact found (and its conversation on this number, if known) and goes
    /// on; `new` when the next write creates it.
    pub(super) fn use_contact(
        &mut self,
        contact: ResolvedContact,
        conversation: Option<ConversationId>,
        new: Option<Box<NewContact>>,
        ctx: &mut Context<Self>,
    ) {
        self.conversation_id = conversation;
        self.contact = Some(Arc::new(contact));
        // A new contact's row is written seen now.
        self.seen_written_at = new.as_ref().map(|new| new.seen_at);
        self.contact_stored = new.is_none();
        self.creating = new;
        self.written_profile = None;
        self.pump(ctx);
    }

    /// Finding the contact failed: retried later when that may help; otherwise the
    /// first pending event names a contact that cannot be resolved, and that event
    /// fails, not the conversation.
    pub(super) fn contact_failed(&mut self, error: StorageError, ctx: &mut Context<Self>) {
        if let StorageError::ContactStale(_) = error {
            // Created or merged by another writer meanwhile: look it up again.
            self.resolve_in_writer = false;
            return self.pump(ctx);
        }
        if error.is_transient() {
            return self.retry_later(error, ctx);
        }
        match self.pending.front().map(|item| item.seq) {
            Some(seq) => self.count_failure(seq, error, ctx),
            None => self.retry_later(error, ctx),
        }
    }
}
