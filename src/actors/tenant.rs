//! One actor per tenant: routes each event (delivered, or an inbox row) to the conversation actor of its
//! (business number, contact), starting it on demand. A contact may be named by its
//! BSUID, its phone number or both; the tenant actor remembers which names it saw
//! together so that all of a contact's events reach the same conversation actor.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;

use super::conversation::{self, ApplyInboxRow, ConversationActor, Delivery};
use super::Core;
use crate::ids::{PhoneNumberId, TenantId};
use crate::storage::inbox::InboxItem;
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
}

pub struct TenantActor {
    core: Arc<Core>,
    tenant_id: TenantId,
    conversations: HashMap<String, Entry>,
    /// "number|u:BSUID" or "number|w:PHONE" → the conversation key it belongs to.
    aliases: HashMap<String, String>,
}

impl TenantActor {
    pub fn new(core: Arc<Core>, tenant_id: TenantId) -> TenantActor {
        TenantActor {
            core,
            tenant_id,
            conversations: HashMap::new(),
            aliases: HashMap::new(),
        }
    }

    fn conversation_key(
        &mut self,
        phone_number_id: &PhoneNumberId,
        route_key: &str,
        identity: &Identity,
    ) -> String {
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
        for name in unseen {
            self.aliases.insert(name, key.clone());
        }
        key
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
        let key = self.conversation_key(phone_number_id, route_key, identity);
        if let Some(entry) = self.conversations.get_mut(&key) {
            entry.sent += 1;
            return entry.addr.clone();
        }
        let entry = self.conversations.entry(key.clone()).or_insert_with(|| {
            let core = self.core.clone();
            let tenant = ctx.address();
            let tenant_id = self.tenant_id.clone();
            let phone_number_id = phone_number_id.clone();
            Entry {
                addr: Supervisor::start(move |_| {
                    ConversationActor::new(core, tenant, tenant_id, phone_number_id, key)
                }),
                sent: 0,
            }
        });
        entry.sent += 1;
        entry.addr.clone()
    }
}

impl Actor for TenantActor {
    type Context = Context<Self>;
}

impl Supervised for TenantActor {}

impl Handler<RouteInboxRows> for TenantActor {
    type Result = ();

    fn handle(&mut self, msg: RouteInboxRows, ctx: &mut Context<Self>) {
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

impl Handler<Idle> for TenantActor {
    type Result = bool;

    fn handle(&mut self, msg: Idle, _ctx: &mut Context<Self>) -> bool {
        let idle = self
            .conversations
            .get(&msg.key)
            .is_some_and(|entry| entry.sent == msg.received);
        if idle {
            // Dropping the last address stops the actor for good (no restart).
            self.conversations.remove(&msg.key);
            self.aliases.retain(|_, key| *key != msg.key);
        }
        idle
    }
}
