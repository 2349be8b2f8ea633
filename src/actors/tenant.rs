//! One actor per tenant: routes each event (delivered, or an inbox row) and each send
//! ([`Submit`]) to the conversation actor of its (business number, contact), starting
//! it on demand. A contact may be named by its
//! BSUID, its phone number or both; the tenant actor remembers which names it saw
//! together so that all of a contact's events reach the same conversation actor.
//! Conversation actors stop when idle for `actors.idle_timeout_secs`, or sooner, least
//! recently used first, when more than `actors.max_conversation_actors` are running.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use actix::prelude::*;

use super::conversation::{
    self, ApplyInboxRow, ConversationActor, Delivery, ForgetContact, Release, RestrictContact,
};
use super::submit::Submit;
use super::Core;
use crate::ids::{PhoneNumberId, TenantId};
use crate::rules::Conflict;
use crate::storage::inbox::InboxItem;
use crate::storage::StorageError;
use crate::whatsapp::Identity;

/// Committed inbox rows of this tenant.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RouteInboxRows(pub Vec<InboxItem>);

/// Events of this tenant delivered as they arrive.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RouteArrivals(pub Vec<Delivery>);

/// A conversation actor reports it has been idle; `received` is how many events it
/// got, so one that was sent more in the meantime is kept. Answers whether the actor
/// was released (then it stops itself; with no address left it is not restarted).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Idle {
    pub key: String,
    pub received: u64,
}

struct Entry {
    addr: Addr<ConversationActor>,
    sent: u64,
    /// Tells this actor from an earlier one of the same conversation.
    generation: u64,
    /// Its names in `aliases`.
    names: Vec<String>,
}

/// A conversation in the eviction queue: its key, which actor, and how many events it
/// had been sent when queued.
struct Queued {
    key: String,
    generation: u64,
    sent: u64,
}

pub struct TenantActor {
    core: Arc<Core>,
    tenant_id: TenantId,
    conversations: HashMap<String, Entry>,
    /// "number|u:BSUID" or "number|w:PHONE" → the conversation key it belongs to.
    aliases: HashMap<String, String>,
    /// The running conversations, least recently queued first (see `make_room`).
    by_age: VecDeque<Queued>,
    next_generation: u64,
    /// The account is closed ([`StopConversations`]). What still arrives on an address
    /// taken before the registry forgot this actor: a webhook's events are applied
    /// under the tenant as before (its purge takes them; stored as unrouted, they
    /// could be handed to whoever registers the number next), inbox rows are parked,
    /// and a send is refused.
    closed: bool,
}

/// Why a closed tenant refuses what still reaches it.
fn tenant_closed() -> StorageError {
    StorageError::Conflict {
        code: Conflict::TenantClosed,
        message: "the account is closed".into(),
    }
}

impl TenantActor {
    pub fn new(core: Arc<Core>, tenant_id: TenantId) -> TenantActor {
        TenantActor {
            core,
            tenant_id,
            conversations: HashMap::new(),
            aliases: HashMap::new(),
            by_age: VecDeque::new(),
            next_generation: 0,
            closed: false,
        }
    }

    /// With `actors.max_conversation_actors` running (all tenants together), asks the
    /// least recently used of this tenant's conversation actors to stop, which it does
    /// if it has nothing to do (through [`Idle`], as when it times out). The queue
    /// gives each a second chance: one sent events since it was queued goes to the
    /// back instead, so finding a candidate costs a step per conversation at most once
    /// per use, not a scan of all of them.
    fn make_room(&mut self) {
        let limit = self.core.settings.actors.max_conversation_actors;
        if self.core.metrics.conversation_actors.get() < limit as i64 {
            return;
        }
        let mut chances = self.by_age.len();
        while let Some(mut queued) = self.by_age.pop_front() {
            let Some(entry) = self
                .conversations
                .get(&queued.key)
                .filter(|entry| entry.generation == queued.generation)
            else {
                continue;
            };
            if entry.sent != queued.sent && chances > 0 {
                chances -= 1;
                queued.sent = entry.sent;
                self.by_age.push_back(queued);
                continue;
            }
            entry.addr.do_send(Release);
            // It stays queued until it is gone: a busy one is asked again later.
            queued.sent = entry.sent;
            self.by_age.push_back(queued);
            return;
        }
    }

    /// The conversation an event belongs to, and the names of it not seen before
    /// (stored with the conversation's entry, so they go with it).
    fn conversation_key(
        &mut self,
        phone_number_id: &PhoneNumberId,
        route_key: &str,
        identity: &Identity,
    ) -> (String, Vec<String>) {
        // Every event looks its names up, built in one reusable buffer; only a name not
        // seen before is stored.
        let mut name = String::with_capacity(phone_number_id.as_str().len() + 80);
        let mut unseen = Vec::new();
        let mut key = None;
        for (prefix, id) in identity.route_key_parts() {
            name.clear();
            name.push_str(phone_number_id.as_str());
            name.push('|');
            name.push_str(prefix);
            name.push_str(id);
            match self.aliases.get(&name) {
                Some(known) => {
                    key.get_or_insert_with(|| known.clone());
                }
                None => unseen.push(name.clone()),
            }
        }
        let key = key.unwrap_or_else(|| format!("{phone_number_id}|{route_key}"));
        for name in &unseen {
            self.aliases.insert(name.clone(), key.clone());
        }
        (key, unseen)
    }

    /// The conversation actor for an event, started on demand; counts the event as
    /// sent to it.
    fn conversation(
        &mut self,
        phone_number_id: &PhoneNumberId,
        route_key: &str,
        identity: &Identity,
        ctx: &mut Context<Self>,
    ) -> Addr<ConversationActor> {
        let (key, names) = self.conversation_key(phone_number_id, route_key, identity);
        if let Some(entry) = self.conversations.get_mut(&key) {
            entry.sent += 1;
            entry.names.extend(names);
            return entry.addr.clone();
        }
        self.make_room();
        self.next_generation += 1;
        let generation = self.next_generation;
        let core = self.core.clone();
        let tenant = ctx.address();
        let tenant_id = self.tenant_id.clone();
        let phone_number_id = phone_number_id.clone();
        let actor_key = key.clone();
        let addr = Supervisor::start(move |_| {
            ConversationActor::new(core, tenant, tenant_id, phone_number_id, actor_key)
        });
        self.conversations.insert(
            key.clone(),
            Entry {
                addr: addr.clone(),
                sent: 1,
                generation,
                names,
            },
        );
        self.by_age.push_back(Queued {
            key,
            generation,
            sent: 1,
        });
        addr
    }
}

impl Actor for TenantActor {
    type Context = Context<Self>;
}

impl Supervised for TenantActor {}

impl Handler<RouteInboxRows> for TenantActor {
    type Result = ();

    fn handle(&mut self, msg: RouteInboxRows, ctx: &mut Context<Self>) {
        if self.closed {
            super::park_for_closed_tenant(&self.core, &msg.0);
            return;
        }
        for item in msg.0 {
            let addr = self.conversation(
                &item.phone_number_id,
                &item.route_key,
                &item.event.identity,
                ctx,
            );
            addr.do_send(ApplyInboxRow(item));
        }
    }
}

impl Handler<RouteArrivals> for TenantActor {
    type Result = ();

    fn handle(&mut self, msg: RouteArrivals, ctx: &mut Context<Self>) {
        for delivery in msg.0 {
            let row = &delivery.event.keys;
            let addr = self.conversation(
                &row.phone_number_id,
                &row.route_key,
                &delivery.event.event.identity,
                ctx,
            );
            addr.do_send(conversation::ApplyArrival(delivery));
        }
    }
}

impl Handler<Submit> for TenantActor {
    type Result = ();

    fn handle(&mut self, msg: Submit, ctx: &mut Context<Self>) {
        if self.closed {
            msg.reply.send(Err(tenant_closed()));
            return;
        }
        let identity = msg.order.identity();
        let Some(route_key) = identity.route_key() else {
            msg.reply.send(Err(StorageError::Validation {
                field: "to",
                rule: crate::rules::Rule::Required,
                message: "the send names no recipient".into(),
            }));
            return;
        };
        let number = msg.order.phone_number_id();
        let addr = self.conversation(&number, &route_key, &identity, ctx);
        addr.do_send(msg);
    }
}

impl Handler<ForgetContact> for TenantActor {
    type Result = ();

    /// Erasure is rare: every running conversation hears it, and the one holding the
    /// contact drops it.
    fn handle(&mut self, msg: ForgetContact, _ctx: &mut Context<Self>) {
        for entry in self.conversations.values() {
            entry.addr.do_send(ForgetContact(msg.0.clone()));
        }
    }
}

/// The tenant's account is closed: every running conversation actor is released
/// (each stops once its work in hand is done), and this actor stops with the last of
/// them, no address of it being left in the registry.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopConversations;

impl Handler<StopConversations> for TenantActor {
    type Result = ();

    fn handle(&mut self, _msg: StopConversations, _ctx: &mut Context<Self>) {
        self.closed = true;
        slog::info!(self.core.log, "tenant closed: its conversation actors stop";
            "tenant" => &self.tenant_id, "conversations" => self.conversations.len());
        for entry in self.conversations.values() {
            entry.addr.do_send(Release);
        }
    }
}

/// Restriction or objection is in force for a contact from now on: every running
/// conversation hears it, and the one holding the contact has its number's sender
/// judge the contact's waiting sends again at once.
impl Handler<RestrictContact> for TenantActor {
    type Result = ();

    fn handle(&mut self, msg: RestrictContact, _ctx: &mut Context<Self>) {
        for entry in self.conversations.values() {
            entry.addr.do_send(RestrictContact(msg.0.clone()));
        }
    }
}

impl Handler<Idle> for TenantActor {
    type Result = bool;

    fn handle(&mut self, msg: Idle, _ctx: &mut Context<Self>) -> bool {
        let idle = self
            .conversations
            .get(&msg.key)
            .is_some_and(|entry| entry.sent == msg.received);
        if idle {
            // Dropping the last address stops the actor for good (no restart).
            if let Some(entry) = self.conversations.remove(&msg.key) {
                for name in &entry.names {
                    self.aliases.remove(name);
                }
            }
            // Released ones leave the queue lazily; it is compacted before it can
            // hold many more of them than running conversations.
            if self.by_age.len() > 2 * self.conversations.len() + 64 {
                let conversations = &self.conversations;
                self.by_age.retain(|queued| {
                    conversations
                        .get(&queued.key)
                        .is_some_and(|entry| entry.generation == queued.generation)
                });
            }
        }
        idle
    }
}
