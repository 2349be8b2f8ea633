//! One actor per (business number, contact): applies that conversation's events in
//! order. It keeps at most one write in flight; events that arrive meanwhile are
//! batched into the next write. Content is sealed here, under the contact's data key,
//! before it reaches the writer.
//!
//! A panic while handling an event is caught at this boundary and turned into a stop,
//! so the supervisor restarts the actor; the restarted actor re-reads its pending
//! inbox rows (nothing was marked processed), so no message is lost. An event that
//! panics three times is set aside (it stays unprocessed in the inbox, visible in the
//! backlog metric) so it cannot wedge the conversation.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::{json, Value};

use super::tenant::{Idle, TenantActor};
use super::Core;
use crate::crypto::SealKey;
use crate::ids::{MessageId, TenantId};
use crate::storage::crm::{
    ApplyOp, ContactIdentifiers, MessageBundle, NewInbound, NewPreference, NewStatus,
    ProfileUpdate, ResolvedContact,
};
use crate::storage::inbox::{self, InboxItem};
use crate::storage::StorageError;
use crate::whatsapp::webhook::{InboundMessage, MessageContent, Status, UserPreference};
use crate::whatsapp::{EventKind, Identity};

/// An inbox row for this conversation.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Process(pub InboxItem);

/// Pending rows re-read from the inbox after a restart.
#[derive(Message)]
#[rtype(result = "()")]
struct Reloaded(Vec<InboxItem>);

const MAX_BATCH: usize = 256;
const MAX_PANICS_PER_EVENT: u32 = 3;
const SEEN_GRANULARITY_MS: i64 = 60_000;

pub struct ConversationActor {
    core: Arc<Core>,
    tenant: Addr<TenantActor>,
    tenant_id: TenantId,
    phone_number_id: String,
    key: String,
    contact: Option<ResolvedContact>,
    /// The conversation of the cached contact on this number, once known.
    conversation_id: Option<String>,
    /// The profile name and username last written, to write them only on change.
    written_profile: Option<(Option<String>, Option<String>)>,
    /// When `last_seen_at` was last written for the cached contact.
    seen_written_at: Option<i64>,
    pending: VecDeque<InboxItem>,
    pending_ids: HashSet<i64>,
    route_keys: HashSet<String>,
    panics: HashMap<i64, u32>,
    in_flight: bool,
    /// An idle report is on its way to the tenant.
    releasing: bool,
    received: u64,
    last_active: Instant,
    restarted: bool,
    log: slog::Logger,
}

enum Step {
    Resolve(ContactIdentifiers),
    Apply(Vec<i64>, Vec<ApplyOp>),
}

impl ConversationActor {
    pub fn new(
        core: Arc<Core>,
        tenant: Addr<TenantActor>,
        tenant_id: TenantId,
        phone_number_id: String,
        key: String,
    ) -> ConversationActor {
        let log = core.log.new(slog::o!(
            "tenant" => tenant_id.to_string(),
            "phone_number_id" => phone_number_id.clone()
        ));
        ConversationActor {
            core,
            tenant,
            tenant_id,
            phone_number_id,
            key,
            contact: None,
            conversation_id: None,
            written_profile: None,
            seen_written_at: None,
            pending: VecDeque::new(),
            pending_ids: HashSet::new(),
            route_keys: HashSet::new(),
            panics: HashMap::new(),
            in_flight: false,
            releasing: false,
            received: 0,
            last_active: Instant::now(),
            restarted: false,
            log,
        }
    }

    fn push(&mut self, item: InboxItem) {
        if self.pending_ids.insert(item.id) {
            self.route_keys.insert(item.route_key.clone());
            self.pending.push_back(item);
        }
    }

    /// Whether the cached contact is the one `identity` names (and knows all its names).
    fn covers(&self, identity: &Identity) -> bool {
        let Some(contact) = &self.contact else {
            return false;
        };
        let same = |seen: &Option<String>, known: &Option<String>| match seen {
            None => true,
            Some(_) => seen == known,
        };
        same(&identity.user_id, &contact.user_id) && same(&identity.wa_id, &contact.wa_id)
    }

    /// The names to resolve `identity` by: together with the cached contact's when
    /// they do not contradict each other (a phone number gaining its BSUID).
    fn identifiers_for(&self, identity: &Identity) -> ContactIdentifiers {
        let mut ids = ContactIdentifiers {
            user_id: identity.user_id.clone(),
            wa_id: identity.wa_id.clone(),
        };
        if let Some(contact) = &self.contact {
            let compatible = |seen: &Option<String>, known: &Option<String>| {
                seen.is_none() || known.is_none() || seen == known
            };
            if compatible(&identity.user_id, &contact.user_id)
                && compatible(&identity.wa_id, &contact.wa_id)
            {
                ids.user_id = ids.user_id.or_else(|| contact.user_id.clone());
                ids.wa_id = ids.wa_id.or_else(|| contact.wa_id.clone());
            }
        }
        ids
    }

    /// Decides the next write: resolve the contact, or apply the longest run of
    /// pending events the cached contact covers.
    fn next_step(&mut self) -> Option<Result<Step, i64>> {
        let first = self.pending.front()?;
        if !self.covers(&first.event.identity) {
            return Some(Ok(Step::Resolve(
                self.identifiers_for(&first.event.identity),
            )));
        }
        let contact = self.contact.clone()?;
        let mut ids = Vec::new();
        let mut ops = Vec::new();
        let mut profile: Option<(Option<String>, Option<String>)> = None;
        for item in self.pending.iter().take(MAX_BATCH) {
            if !self.covers(&item.event.identity) {
                break;
            }
            let built = catch_unwind(AssertUnwindSafe(|| {
                if let Some(hook) = &self.core.hooks.before_apply {
                    hook(&item.event);
                }
                build_op(
                    item,
                    &contact,
                    self.conversation_id.as_deref(),
                    self.core.clock.now_ms(),
                )
            }));
            match built {
                Ok(op) => ops.push(op),
                Err(_) => return Some(Err(item.id)),
            }
            ids.push(item.id);
            let identity = &item.event.identity;
            if item.event.kind == EventKind::Message
                && (identity.profile_name.is_some() || identity.username.is_some())
            {
                profile = Some((identity.profile_name.clone(), identity.username.clone()));
            }
        }
        let now = self.core.clock.now_ms();
        let changed = profile
            .as_ref()
            .filter(|p| self.written_profile.as_ref() != Some(*p));
        let seal = |value: &Option<String>| {
            value.as_deref().and_then(|v| {
                contact
                    .key
                    .seal(v.as_bytes(), contact.contact_id.as_str().as_bytes())
                    .ok()
            })
        };
        // "Last seen" is kept to the minute: writing it with every message would cost
        // a statement per message for no one's benefit.
        let seen_stale = self
            .seen_written_at
            .is_none_or(|at| now - at >= SEEN_GRANULARITY_MS);
        if changed.is_some() || seen_stale {
            ops.push(ApplyOp::Profile(ProfileUpdate {
                contact_id: contact.contact_id.clone(),
                profile_name_ct: changed.and_then(|p| seal(&p.0)),
                username_ct: changed.and_then(|p| seal(&p.1)),
                seen_at: now,
            }));
            self.seen_written_at = Some(now);
        }
        if let Some(profile) = profile {
            self.written_profile = Some(profile);
        }
        Some(Ok(Step::Apply(ids, ops)))
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight {
            return;
        }
        let step = match self.next_step() {
            None => return,
            Some(Ok(step)) => step,
            Some(Err(panicked_id)) => {
                self.on_panic(panicked_id, ctx);
                return;
            }
        };
        self.in_flight = true;
        self.last_active = Instant::now();
        let writer = self.core.writer.clone();
        let tenant_id = self.tenant_id.clone();
        match step {
            Step::Resolve(ids) => {
                let fut = async move { writer.resolve(tenant_id, ids).await };
                ctx.spawn(fut.into_actor(self).map(|result, actor, ctx| {
                    actor.in_flight = false;
                    match result {
                        Ok(contact) => {
                            let same = actor.contact.as_ref().map(|c| &c.contact_id)
                                == Some(&contact.contact_id);
                            if !same {
                                actor.conversation_id = None;
                            }
                            actor.contact = Some(contact);
                            actor.written_profile = None;
                            actor.seen_written_at = None;
                            actor.pump(ctx);
                        }
                        Err(e) => actor.retry_later(e, ctx),
                    }
                }));
            }
            Step::Apply(ids, ops) => {
                let fut = async move { writer.apply(tenant_id, ops).await };
                ctx.spawn(fut.into_actor(self).map(move |result, actor, ctx| {
                    actor.in_flight = false;
                    match result {
                        Ok(conversation) => {
                            if conversation.is_some() {
                                actor.conversation_id = conversation;
                            }
                            let done: HashSet<i64> = ids.into_iter().collect();
                            actor.pending.retain(|item| !done.contains(&item.id));
                            actor.pending_ids.retain(|id| !done.contains(id));
                            actor.panics.retain(|id, _| !done.contains(id));
                            actor.pump(ctx);
                        }
                        Err(e) => {
                            // What we cached may be stale (the contact merged away by
                            // another conversation): resolve again before retrying.
                            if !e.is_transient() {
                                actor.contact = None;
                                actor.conversation_id = None;
                            }
                            actor.written_profile = None;
                            actor.seen_written_at = None;
                            actor.retry_later(e, ctx)
                        }
                    }
                }));
            }
        }
    }

    fn retry_later(&mut self, error: StorageError, ctx: &mut Context<Self>) {
        slog::warn!(self.log, "conversation write failed; will retry"; "error" => %error);
        let delay = Duration::from_millis(self.core.settings.actors.retry_delay_ms.max(10));
        ctx.run_later(delay, |actor, ctx| actor.pump(ctx));
    }

    fn on_panic(&mut self, inbox_id: i64, ctx: &mut Context<Self>) {
        self.core.metrics.actor_restarts.inc();
        let count = self.panics.entry(inbox_id).or_insert(0);
        *count += 1;
        if *count >= MAX_PANICS_PER_EVENT {
            slog::error!(self.log, "event keeps failing; set aside, left unprocessed in the inbox";
                "inbox_id" => inbox_id);
            self.pending.retain(|item| item.id != inbox_id);
            self.pending_ids.remove(&inbox_id);
            self.panics.remove(&inbox_id);
        } else {
            slog::error!(self.log, "conversation actor panicked; restarting"; "inbox_id" => inbox_id);
        }
        // Stopping hands the actor to its supervisor, which restarts it.
        ctx.stop();
    }

    fn reload_pending(&mut self, ctx: &mut Context<Self>) {
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

impl Actor for ConversationActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.core.metrics.conversation_actors.inc();
        if self.restarted {
            self.reload_pending(ctx);
            self.pump(ctx);
        }
        let idle_after = Duration::from_secs(self.core.settings.actors.idle_timeout_secs);
        let check_every =
            (idle_after / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
        ctx.run_interval(check_every, move |actor, ctx| {
            let idle = !actor.in_flight
                && actor.pending.is_empty()
                && actor.last_active.elapsed() >= idle_after;
            if !idle || actor.releasing {
                return;
            }
            actor.releasing = true;
            let ask = actor.tenant.send(Idle {
                key: actor.key.clone(),
                received: actor.received,
            });
            ctx.spawn(
                async move { ask.await.unwrap_or(false) }
                    .into_actor(actor)
                    .map(|released, actor, ctx| {
                        actor.releasing = false;
                        // The interval timer would keep the context alive forever, so an
                        // actor its tenant let go of stops itself.
                        if released {
                            ctx.stop();
                        }
                    }),
            );
        });
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.core.metrics.conversation_actors.dec();
    }
}

impl Supervised for ConversationActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        // In-flight futures died with the old context; forget what they were doing and
        // resolve the contact again from the database.
        self.in_flight = false;
        self.contact = None;
        self.conversation_id = None;
        self.written_profile = None;
        self.seen_written_at = None;
        self.restarted = true;
    }
}

impl Handler<Process> for ConversationActor {
    type Result = ();

    fn handle(&mut self, msg: Process, ctx: &mut Context<Self>) {
        self.received += 1;
        self.last_active = Instant::now();
        self.push(msg.0);
        self.pump(ctx);
    }
}

impl Handler<Reloaded> for ConversationActor {
    type Result = ();

    fn handle(&mut self, msg: Reloaded, ctx: &mut Context<Self>) {
        for item in msg.0 {
            self.push(item);
        }
        let mut items: Vec<InboxItem> = self.pending.drain(..).collect();
        items.sort_by_key(|item| item.id);
        self.pending = items.into();
        self.pump(ctx);
    }
}

fn ms(seconds: i64, fallback: i64) -> i64 {
    if seconds > 0 {
        seconds.saturating_mul(1000)
    } else {
        fallback
    }
}

/// Turns one inbox row into the write that applies it.
fn build_op(
    item: &InboxItem,
    contact: &ResolvedContact,
    conversation_id: Option<&str>,
    now: i64,
) -> ApplyOp {
    let event = &item.event;
    match event.kind {
        EventKind::Message => match InboundMessage::from_item(&event.item) {
            Ok(message) => inbound_op(item, &message, contact, conversation_id, now),
            Err(_) => ApplyOp::Done { inbox_id: item.id },
        },
        EventKind::Status => match serde_json::from_value::<Status>(event.item.clone()) {
            Ok(status) => ApplyOp::Status(status_op(item, &status, contact, now)),
            Err(_) => ApplyOp::Done { inbox_id: item.id },
        },
        EventKind::Preference => match serde_json::from_value::<UserPreference>(event.item.clone())
        {
            Ok(preference) => ApplyOp::Preference(NewPreference {
                inbox_id: item.id,
                contact_id: contact.contact_id.clone(),
                marketing_opt_out: preference.marketing_opt_out(),
                occurred_at: ms(preference.timestamp, now),
            }),
            Err(_) => ApplyOp::Done { inbox_id: item.id },
        },
    }
}

fn inbound_op(
    item: &InboxItem,
    message: &InboundMessage,
    contact: &ResolvedContact,
    conversation_id: Option<&str>,
    now: i64,
) -> ApplyOp {
    let message_id = MessageId::generate();
    let raw = &item.event.item;
    let optional = |name: &str| raw.get(name).filter(|v| !v.is_null()).cloned();
    let bundle = MessageBundle {
        content: message.content_raw.clone(),
        context: optional("context"),
        referral: optional("referral"),
        errors: optional("errors"),
    };
    let sealed = seal_json(&contact.key, &bundle, message_id.as_str());
    let Some(content_ct) = sealed else {
        return ApplyOp::Done { inbox_id: item.id };
    };
    ApplyOp::Inbound(NewInbound {
        inbox_id: item.id,
        phone_number_id: item.phone_number_id.clone(),
        contact_id: contact.contact_id.clone(),
        conversation_id: conversation_id.map(str::to_string),
        message_id,
        wamid: message.id.clone(),
        msg_type: message.type_name.clone(),
        sent_at: ms(message.timestamp, now),
        key_id: contact.key_id.clone(),
        content_ct,
        ref_wamid: message.refers_to().map(str::to_string),
        is_revoke: matches!(message.content, MessageContent::Revoke(_)),
    })
}

fn seal_json(key: &SealKey, value: &impl serde::Serialize, aad: &str) -> Option<Vec<u8>> {
    let plain = serde_json::to_vec(value).ok()?;
    key.seal(&plain, aad.as_bytes()).ok()
}

fn status_op(item: &InboxItem, status: &Status, contact: &ResolvedContact, now: i64) -> NewStatus {
    let error_json = status
        .errors
        .first()
        .map(|e| json!({"code": e.code, "title": e.title, "message": e.message}).to_string());
    let mut detail = serde_json::Map::new();
    if !status.errors.is_empty() {
        detail.insert("errors".into(), json!(status.errors));
    }
    if let Some(pricing) = &status.pricing {
        detail.insert("pricing".into(), json!(pricing));
    }
    if let Some(conversation) = &status.conversation {
        detail.insert("conversation".into(), json!(conversation));
    }
    NewStatus {
        inbox_id: item.id,
        phone_number_id: item.phone_number_id.clone(),
        contact_id: contact.contact_id.clone(),
        wamid: status.id.clone(),
        status: status.status.clone(),
        occurred_at: ms(status.timestamp, now),
        error_json,
        detail_json: (!detail.is_empty()).then(|| Value::Object(detail).to_string()),
    }
}
