//! One actor per (business number, contact): applies that conversation's events in
//! order. It keeps at most one write in flight; events that arrive meanwhile are
//! batched into the next write. Content is sealed here, under the contact's data key,
//! before it reaches the writer.
//!
//! Its contact is found before the first write: by reads alone when the contact exists
//! and its identifiers need no linking (the contact readers' batches,
//! [`crate::storage::readers`]), and created by the write of its first events when it
//! does not ([`NewContact`]: the key and the
//! conversation id made here, so that the events are sealed under the key and go in
//! with the writer's set-based statements). Only linking an identifier to a contact or
//! merging two contacts takes a write of its own (the writer's resolve).
//!
//! Events reach it two ways. A webhook's events are delivered as they arrive
//! ([`ApplyArrival`]): the write that applies them also writes their inbox rows, already
//! processed, and the webhook is answered once it commits. Rows already in the inbox
//! (left by a crash, or stored there because delivery failed) come as [`ApplyInboxRow`] and
//! are marked processed by the write that applies them.
//!
//! Sends to the contact come as [`Submit`]: accepted into the outbox one at a time, in
//! the order they came (see [`super::submit`]), beside the events, under the contact
//! this actor holds when it is stored.
//!
//! A panic while handling an event is caught at this boundary and turned into a stop,
//! so the supervisor restarts the actor. A delivered event that panicked, or whose
//! write failed, is handed back (its reply is dropped) and its webhook stores it in
//! the inbox instead. An inbox row is retried: the restarted actor re-reads its
//! pending rows (nothing was marked processed); one that panics three times is set
//! aside (it stays unprocessed in the inbox, visible in the backlog metric) so it
//! cannot wedge the conversation.
//!
//! Its parts: `contact` (finding the contact), `ops` (events into the writer's
//! ops, sealed), `submits` (sends into the outbox), `recovery` (failed writes,
//! panics, re-reading the inbox), `answers` (automations' replies).

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

mod answers;
mod contact;
mod ops;
mod recovery;
mod submits;

use ops::{build_op, message_time, OpContext};

use super::submit::Submit;
use super::tenant::{Idle, TenantActor};
use super::Core;
use crate::automation::TenantAutomations;
use crate::ids::{ContactId, ConversationId, PhoneNumberId, TenantId};
use crate::storage::apply::{ApplyOp, NewPreference, Origin, ProfileUpdate};
use crate::storage::contacts::{contact_field, NewContact};
use crate::storage::contacts::{ContactIdentifiers, ResolvedContact};
use crate::storage::handoff::Reply;
use crate::storage::inbox::{FreshEvent, FreshRow, InboxItem};
use crate::storage::media;
use crate::storage::writer::{ApplyReceipt, Delivered, Waiters};
use crate::storage::StorageError;
use crate::whatsapp::webhook::InboundMessage;
use crate::whatsapp::{Event, EventKind, Identity};

/// An inbox row for this conversation.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyInboxRow(pub InboxItem);

/// A webhook's event, delivered as it arrives. `reply` hears once the event is
/// durable; dropped unanswered, it tells the webhook to store the event in the inbox.
#[derive(Debug)]
pub struct Delivery {
    pub tenant_id: TenantId,
    pub event: FreshEvent,
    pub reply: Reply<Delivered>,
}

/// A delivery for this conversation.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyArrival(pub Delivery);

/// Its tenant needs room (`actors.max_conversation_actors`): stop if there is nothing
/// to do, as when idle for `actors.idle_timeout_secs`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release;

/// The contact was erased: drop it, its key included, if it is the one held (the
/// next event finds its contact again, a new one), and stop if idle.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ForgetContact(pub ContactId);

/// Restriction or objection is in force for the contact: if it is the one held, the
/// number's sender judges its waiting sends again now, so that one held for the
/// messaging limit or the pace is refused at once rather than when its turn comes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RestrictContact(pub ContactId);

/// What a look-up gives the actor.
enum Found {
    /// The contact, and its conversation on this number if it has one.
    Known(ResolvedContact, Option<ConversationId>),
    /// None yet: this one, created by the next write.
    New(Box<NewContact>, ResolvedContact),
    /// Its identifiers need linking, or two contacts merging: the writer's resolve.
    NeedsWriter,
}

const MAX_BATCH: usize = 256;
const MAX_PANICS_PER_EVENT: u32 = 3;
const SEEN_GRANULARITY_MS: i64 = 60_000;

/// An event waiting to be applied.
struct Pending {
    /// Arrival order in this actor.
    seq: u64,
    source: Source,
    /// When its webhook arrived: Meta's timestamps are clamped to it.
    arrived_at: i64,
    event: Arc<Event>,
}

enum Source {
    /// A committed inbox row.
    Inbox(i64),
    /// A delivered event; its webhook waits on `reply`. `row` is the inbox row to
    /// write with it (none for an inbound message: see [`Origin::FreshMessage`]).
    Fresh {
        row: Option<FreshRow>,
        reply: Option<Reply<Delivered>>,
    },
}

impl Pending {
    fn origin(&self) -> Origin {
        match &self.source {
            Source::Inbox(id) => Origin::Inbox(*id),
            Source::Fresh { row: Some(row), .. } => Origin::Fresh(row.clone()),
            Source::Fresh { row: None, .. } => Origin::FreshMessage,
        }
    }

    /// Inbox rows first, in the order they were committed; then deliveries, in the
    /// order they came.
    fn order(&self) -> (bool, i64) {
        match &self.source {
            Source::Inbox(id) => (false, *id),
            Source::Fresh { .. } => (true, self.seq as i64),
        }
    }
}

pub struct ConversationActor {
    core: Arc<Core>,
    tenant: Addr<TenantActor>,
    tenant_id: TenantId,
    phone_number_id: PhoneNumberId,
    key: String,
    /// Shared, not copied, with each write built from it.
    contact: Option<Arc<ResolvedContact>>,
    /// `contact` is new: the next write creates it.
    creating: Option<Box<NewContact>>,
    /// `contact` is in the database (not only about to be created by a write).
    contact_stored: bool,
    /// A look-up found that the contact needs the writer (a link or a merge).
    resolve_in_writer: bool,
    /// The conversation of the cached contact on this number, once known.
    conversation_id: Option<ConversationId>,
    /// The profile name and username last written, to write them only on change.
    written_profile: Option<(Option<String>, Option<String>)>,
    /// When `last_seen_at` was last written for the cached contact.
    seen_written_at: Option<i64>,
    pending: VecDeque<Pending>,
    /// Sends to accept into the outbox, in the order they came; one at a time.
    submits: VecDeque<Submit>,
    submitting: bool,
    /// Inbound messages stored, waiting for their automation to be chosen (in order).
    answers: VecDeque<answers::Inbound>,
    /// A read for the welcome is in flight.
    answering: bool,
    /// Whether the next inbound message is the contact's first.
    welcome: answers::Welcome,
    /// A write in flight stores media to fetch: the fetcher is woken once it commits.
    stores_media: bool,
    /// The inbox rows among `pending`.
    pending_ids: HashSet<i64>,
    next_seq: u64,
    route_keys: HashSet<String>,
    panics: HashMap<i64, u32>,
    /// After a write failed for good, the events up to this seq are applied one at a
    /// time, so the one that fails is found and the others go on.
    isolate_through: u64,
    in_flight: bool,
    /// An idle report is on its way to the tenant.
    releasing: bool,
    received: u64,
    /// When it last received an event, on the daemon's clock (tests move it).
    last_active_ms: i64,
    restarted: bool,
    log: slog::Logger,
}

enum Step {
    /// Find the contact with reads alone (see [`crate::storage::contacts::look_up_contacts`]).
    LookUp(ContactIdentifiers),
    /// Resolve it in the writer: link its identifiers or merge two contacts.
    Resolve(ContactIdentifiers),
    /// The pending events applied (by seq; the i-th op applies the i-th), the ops, and
    /// the webhooks waiting on them.
    /// With it, the inbound messages an automation may answer, and the tenant's
    /// automations they are judged by.
    Apply(
        Vec<u64>,
        Vec<ApplyOp>,
        Waiters,
        Vec<answers::Inbound>,
        Arc<TenantAutomations>,
    ),
}

impl ConversationActor {
    pub fn new(
        core: Arc<Core>,
        tenant: Addr<TenantActor>,
        tenant_id: TenantId,
        phone_number_id: PhoneNumberId,
        key: String,
    ) -> ConversationActor {
        let now = core.clock.now_ms();
        let log = core.log.new(slog::o!(
            "tenant" => tenant_id.to_string(),
            "phone_number_id" => phone_number_id.to_string()
        ));
        ConversationActor {
            core,
            tenant,
            tenant_id,
            phone_number_id,
            key,
            contact: None,
            creating: None,
            contact_stored: false,
            resolve_in_writer: false,
            conversation_id: None,
            written_profile: None,
            seen_written_at: None,
            pending: VecDeque::new(),
            submits: VecDeque::new(),
            submitting: false,
            answers: VecDeque::new(),
            answering: false,
            welcome: answers::Welcome::Unknown,
            stores_media: false,
            pending_ids: HashSet::new(),
            next_seq: 0,
            route_keys: HashSet::new(),
            panics: HashMap::new(),
            isolate_through: 0,
            in_flight: false,
            releasing: false,
            received: 0,
            last_active_ms: now,
            restarted: false,
            log,
        }
    }

    fn push(&mut self, source: Source, route_key: &str, arrived_at: i64, event: Arc<Event>) {
        if let Source::Inbox(id) = source {
            if !self.pending_ids.insert(id) {
                return;
            }
        }
        if !self.route_keys.contains(route_key) {
            self.route_keys.insert(route_key.to_string());
        }
        self.next_seq += 1;
        self.pending.push_back(Pending {
            seq: self.next_seq,
            source,
            arrived_at,
            event,
        });
    }

    /// Removes the pending events `done`, answering any delivered one whose webhook
    /// the writer did not answer already.
    fn complete(&mut self, done: &[u64], receipt: &ApplyReceipt) {
        // A write applies a few events as a rule: a scan of `done` is cheaper than a
        // map built for every write, and the queue is filtered in place.
        let duplicate_of = |seq: u64| {
            done.iter()
                .position(|s| *s == seq)
                .map(|i| receipt.duplicate.get(i).copied().unwrap_or(false))
        };
        let (pending_ids, panics) = (&mut self.pending_ids, &mut self.panics);
        self.pending.retain_mut(|item| {
            let Some(duplicate) = duplicate_of(item.seq) else {
                return true;
            };
            match &mut item.source {
                Source::Inbox(id) => {
                    pending_ids.remove(id);
                    panics.remove(id);
                }
                Source::Fresh { reply, .. } => {
                    if let Some(reply) = reply.take() {
                        reply.send(if duplicate {
                            Delivered::Duplicate
                        } else {
                            Delivered::New
                        });
                    }
                }
            }
            false
        });
    }

    /// Hands every delivered event back to its webhook, which stores it in the inbox:
    /// a webhook must not wait on retries. (One whose write just failed was handed back
    /// already: the writer dropped its reply.)
    fn hand_back_deliveries(&mut self) {
        self.pending
            .retain(|item| !matches!(item.source, Source::Fresh { .. }));
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
    /// pending events the cached contact covers. `Err(seq)` names an event that
    /// panicked.
    fn next_step(&mut self, automations: &Arc<TenantAutomations>) -> Option<Result<Step, u64>> {
        let first = self.pending.front()?;
        if !self.covers(&first.event.identity) {
            let ids = self.identifiers_for(&first.event.identity);
            return Some(Ok(if self.resolve_in_writer {
                Step::Resolve(ids)
            } else {
                Step::LookUp(ids)
            }));
        }
        let contact = self.contact.clone()?;
        let mut seqs = Vec::new();
        let mut ops = Vec::new();
        let mut profile: Option<(Option<String>, Option<String>)> = None;
        let mut unusable = Vec::new();
        let mut waiting = Vec::new();
        let mut inbound = Vec::new();
        let mut derived = Vec::new();
        let most = if first.seq <= self.isolate_through {
            1
        } else {
            MAX_BATCH
        };
        for item in self.pending.iter().take(most) {
            if !self.covers(&item.event.identity) {
                break;
            }
            let built = catch_unwind(AssertUnwindSafe(|| {
                #[cfg(feature = "testing")]
                if let Some(hook) = &self.core.hooks.before_apply {
                    hook(&item.event);
                }
                build_op(
                    item.origin(),
                    &OpContext {
                        keyring: &self.core.keyring,
                        tenant_id: &self.tenant_id,
                        phone_number_id: &self.phone_number_id,
                        contact: &contact,
                        conversation_id: self.conversation_id.as_ref(),
                        now: item.arrived_at,
                    },
                    &item.event,
                )
            }));
            match built {
                // Nothing in it could be applied: a delivered event goes to the inbox
                // instead, where it is kept (sealed) until purged.
                Ok(ApplyOp::Done { .. }) if matches!(item.source, Source::Fresh { .. }) => {
                    unusable.push(item.seq);
                    continue;
                }
                Ok(op) => {
                    if matches!(&op, ApplyOp::Inbound(m) if media::is_media(&m.msg_type)) {
                        self.stores_media = true;
                    }
                    ops.push(op)
                }
                Err(_) => return Some(Err(item.seq)),
            }
            if item.event.kind == EventKind::Message {
                let text = InboundMessage::text_body(&item.event.item);
                let keyword = text.and_then(|t| automations.settings.preference_keyword(t));
                let sent_at = message_time(&item.event.item, item.arrived_at);
                if let Some(opted_out) = keyword {
                    derived.push(ApplyOp::Preference(NewPreference {
                        origin: None,
                        contact_id: contact.contact_id.clone(),
                        marketing_opt_out: Some(opted_out),
                        occurred_at: sent_at,
                    }));
                }
                if keyword.is_some() || automations.has_rules() {
                    inbound.push(answers::Inbound {
                        index: ops.len() - 1,
                        keyword,
                        text: text.map(str::to_string),
                        sent_at,
                        arrived_at: item.arrived_at,
                    });
                }
            }
            if matches!(item.source, Source::Fresh { .. }) {
                waiting.push((ops.len() - 1, item.seq));
            }
            seqs.push(item.seq);
            let identity = &item.event.identity;
            if item.event.kind == EventKind::Message
                && (identity.profile_name.is_some() || identity.username.is_some())
            {
                profile = Some((identity.profile_name.clone(), identity.username.clone()));
            }
        }
        if !unusable.is_empty() {
            self.pending.retain(|item| !unusable.contains(&item.seq));
            if seqs.is_empty() {
                return self.next_step(automations);
            }
        }
        // After the events' own ops, whose places match `seqs`.
        ops.extend(derived);
        let now = self.core.clock.now_ms();
        let changed = profile
            .as_ref()
            .filter(|p| self.written_profile.as_ref() != Some(*p));
        let tenant = self.tenant_id.as_str();
        let seal = |column, value: &Option<String>| {
            value.as_deref().and_then(|v| {
                let place = contact_field(tenant, column, contact.contact_id.as_str());
                contact.key.seal(v.as_bytes(), &place).ok()
            })
        };
        // "Last seen" is kept to the minute: writing it with every message would cost
        // a statement per message for no one's benefit.
        let seen_stale = self
            .seen_written_at
            .is_none_or(|at| now - at >= SEEN_GRANULARITY_MS);
        if let Some(new) = self.creating.as_mut() {
            // A contact this write creates is inserted with its profile, seen now.
            if let Some(p) = changed {
                new.profile_name_ct = seal("profile_name_ct", &p.0);
                new.username_ct = seal("username_ct", &p.1);
            }
        } else if changed.is_some() || seen_stale {
            ops.push(ApplyOp::Profile(ProfileUpdate {
                contact_id: contact.contact_id.clone(),
                profile_name_ct: changed.and_then(|p| seal("profile_name_ct", &p.0)),
                username_ct: changed.and_then(|p| seal("username_ct", &p.1)),
                seen_at: now,
            }));
            self.seen_written_at = Some(now);
        }
        if let Some(profile) = profile {
            self.written_profile = Some(profile);
        }
        // The webhooks' replies travel with the write: the writer answers them itself.
        let mut waiters = Vec::with_capacity(waiting.len());
        for item in self.pending.iter_mut() {
            if let Source::Fresh { reply, .. } = &mut item.source {
                let index = waiting.iter().find(|(_, seq)| *seq == item.seq);
                if let (Some((index, _)), Some(reply)) = (index, reply.take()) {
                    waiters.push((*index, reply));
                }
            }
        }
        Some(Ok(Step::Apply(
            seqs,
            ops,
            waiters,
            inbound,
            automations.clone(),
        )))
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight {
            return;
        }
        // The tenant's keywords and automations are known before its messages are
        // judged: loaded once, the first time.
        let Some(automations) = self.core.automations.peek(&self.tenant_id) else {
            if !self.pending.is_empty() {
                self.load_automations(ctx);
            }
            return;
        };
        let step = match self.next_step(&automations) {
            None => return,
            Some(Ok(step)) => step,
            Some(Err(panicked)) => {
                self.on_panic(panicked, ctx);
                return;
            }
        };
        self.in_flight = true;
        self.last_active_ms = self.core.clock.now_ms();
        let writer = self.core.writer.clone();
        let tenant_id = self.tenant_id.clone();
        match step {
            Step::LookUp(ids) => self.look_up(ids, ctx),
            Step::Resolve(ids) => {
                let fut = async move { writer.resolve(tenant_id, ids).await };
                ctx.spawn(fut.into_actor(self).map(|result, actor, ctx| {
                    actor.in_flight = false;
                    match result {
                        Ok(contact) => {
                            actor.resolve_in_writer = false;
                            let same = actor.contact.as_ref().map(|c| &c.contact_id)
                                == Some(&contact.contact_id);
                            let conversation = if same {
                                actor.conversation_id.take()
                            } else {
                                None
                            };
                            actor.use_contact(contact, conversation, None, ctx);
                        }
                        Err(e) => actor.contact_failed(e, ctx),
                    }
                }));
            }
            Step::Apply(seqs, ops, waiters, inbound, automations) => {
                let new_contact = self.creating.take();
                let creates = new_contact.is_some();
                let fut = async move { writer.apply(tenant_id, new_contact, ops, waiters).await };
                ctx.spawn(fut.into_actor(self).map(move |result, actor, ctx| {
                    actor.in_flight = false;
                    if result.is_err() && creates {
                        // The contact was not created: look it up again (another
                        // conversation may have created it), then retry.
                        actor.contact = None;
                        actor.conversation_id = None;
                    }
                    match result {
                        Ok(receipt) => {
                            actor.contact_stored = actor.contact.is_some();
                            if std::mem::take(&mut actor.stores_media) {
                                actor.core.media_wanted.store(true, Ordering::Release);
                            }
                            actor.answer(inbound, &receipt.duplicate, automations, creates, ctx);
                            if receipt.conversation.is_some() {
                                actor.conversation_id = receipt.conversation.clone();
                            }
                            actor.complete(&seqs, &receipt);
                            actor.pump(ctx);
                        }
                        Err(StorageError::ContactStale(_)) => {
                            // Merged into another contact by another conversation, or
                            // (the contact this write was to create) created first by
                            // another: the next step looks it up again, at once.
                            actor.contact = None;
                            actor.conversation_id = None;
                            actor.written_profile = None;
                            actor.seen_written_at = None;
                            actor.hand_back_deliveries();
                            actor.pump(ctx);
                        }
                        Err(e) if e.is_transient() => {
                            actor.written_profile = None;
                            actor.seen_written_at = None;
                            actor.retry_later(e, ctx)
                        }
                        Err(e) => {
                            // What is cached may be stale: resolve again before
                            // retrying. A write of several events is retried one event
                            // at a time, so only the one that fails is held back.
                            actor.contact = None;
                            actor.conversation_id = None;
                            actor.written_profile = None;
                            actor.seen_written_at = None;
                            match seqs[..] {
                                [seq] => actor.count_failure(seq, e, ctx),
                                _ => {
                                    actor.isolate_through =
                                        seqs.iter().copied().max().unwrap_or(actor.isolate_through);
                                    actor.retry_later(e, ctx)
                                }
                            }
                        }
                    }
                }));
            }
        }
    }
}

impl ConversationActor {
    /// With nothing to do, asks its tenant to let it go, and stops if the tenant does
    /// (it does not when events were sent meanwhile).
    fn offer_release(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight
            || !self.pending.is_empty()
            || self.submitting
            || !self.submits.is_empty()
            || self.releasing
        {
            return;
        }
        self.releasing = true;
        let ask = self.tenant.send(Idle {
            key: self.key.clone(),
            received: self.received,
        });
        ctx.spawn(
            async move { ask.await.unwrap_or(false) }
                .into_actor(self)
                .map(|released, actor, ctx| {
                    actor.releasing = false;
                    // The interval timer would keep the context alive forever, so an
                    // actor its tenant let go of stops itself.
                    if released {
                        ctx.stop();
                    }
                }),
        );
    }
}

impl Handler<ForgetContact> for ConversationActor {
    type Result = ();

    fn handle(&mut self, msg: ForgetContact, ctx: &mut Context<Self>) {
        let held = self.contact.as_ref().map(|contact| &contact.contact_id);
        if held == Some(&msg.0) {
            self.contact = None;
            self.contact_stored = false;
            self.resolve_in_writer = false;
            self.conversation_id = None;
            self.written_profile = None;
            self.seen_written_at = None;
            self.offer_release(ctx);
        }
    }
}

impl Handler<RestrictContact> for ConversationActor {
    type Result = ();

    fn handle(&mut self, msg: RestrictContact, _ctx: &mut Context<Self>) {
        let held = self.contact.as_ref().map(|contact| &contact.contact_id);
        if held == Some(&msg.0) {
            crate::actors::sender::wake(&self.core, &self.phone_number_id);
        }
    }
}

impl Handler<Release> for ConversationActor {
    type Result = ();

    fn handle(&mut self, _msg: Release, ctx: &mut Context<Self>) {
        self.offer_release(ctx);
    }
}

impl Actor for ConversationActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.core.metrics.conversation_actors.inc();
        if self.restarted {
            self.reload_pending(ctx);
            self.pump(ctx);
            self.pump_submits(ctx);
        }
        let idle_after = Duration::from_secs(self.core.settings.actors.idle_timeout_secs);
        let check_every =
            (idle_after / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let idle_after_ms = idle_after.as_millis() as i64;
        ctx.run_interval(check_every, move |actor, ctx| {
            if actor.core.clock.now_ms() - actor.last_active_ms >= idle_after_ms {
                actor.offer_release(ctx);
            }
            actor
                .core
                .metrics
                .timed_duties
                .with_label_values(&["idle_check"])
                .inc();
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
        self.submitting = false;
        self.contact = None;
        self.contact_stored = false;
        self.creating = None;
        self.resolve_in_writer = false;
        self.conversation_id = None;
        self.written_profile = None;
        self.seen_written_at = None;
        self.restarted = true;
    }
}

impl Handler<ApplyInboxRow> for ConversationActor {
    type Result = ();

    fn handle(&mut self, msg: ApplyInboxRow, ctx: &mut Context<Self>) {
        self.received += 1;
        self.last_active_ms = self.core.clock.now_ms();
        let item = msg.0;
        self.push(
            Source::Inbox(item.id),
            &item.route_key,
            item.received_at,
            item.event,
        );
        self.pump(ctx);
    }
}

impl Handler<ApplyArrival> for ConversationActor {
    type Result = ();

    fn handle(&mut self, msg: ApplyArrival, ctx: &mut Context<Self>) {
        self.received += 1;
        self.last_active_ms = self.core.clock.now_ms();
        let Delivery { event, reply, .. } = msg.0;
        let route_key = event.keys.route_key.clone();
        // Keyed hashes cost: computed here, on the actors' threads, not the writer's.
        let row = (event.event.kind != EventKind::Message)
            .then(|| event.keys.row(&self.core.keyring, &self.tenant_id));
        let source = Source::Fresh {
            row,
            reply: Some(reply),
        };
        let now = self.core.clock.now_ms();
        self.push(source, &route_key, now, event.event);
        self.pump(ctx);
    }
}
