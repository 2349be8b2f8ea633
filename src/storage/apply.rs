//! The apply step: the ops a conversation actor produces from the inbox ([`ApplyOp`]
//! and what each carries), and their application by the writer, many actor jobs in
//! one transaction ([`apply_batch`]). The ops live apart from the tables because one
//! op writes to several: an inbound message opens or moves its conversation and may
//! erase the message it revokes, a status may record the message it is about. The
//! batch's set-based statements (windows, inbound inserts) are with their tables; the
//! rest of each op is applied here, one op at a time.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;
use serde::Serialize;
use serde_json::Value;

use super::conversations::{reopen_conversations, touch_conversations, upsert_conversation, Touch};
use super::inbox::FreshRow;
use super::media;
use super::messages::{
    complete_tombstone, insert_inbound, InboundRow, MessageState, INBOUND, OUTBOUND,
};
use super::on_backend;
use super::outbox;
use super::schema::{contacts, messages, status_events};
use super::{DbConn, StorageError};
use crate::crypto::Place;
use crate::ids::{ContactId, ConversationId, KeyId, MessageId, PhoneNumberId, TenantId};
use crate::whatsapp::EventKind;

/// One unit of CRM work produced by a conversation actor; the writer applies a batch
/// of them in one transaction, in order.
#[derive(Debug, Clone)]
pub enum ApplyOp {
    Inbound(NewInbound),
    Status(NewStatus),
    Preference(NewPreference),
    Profile(ProfileUpdate),
    /// An event that needed nothing else (its inbox row is kept until purged).
    Done {
        origin: Origin,
    },
}

/// Where the event an op applies came from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A committed inbox row, marked processed in the transaction that applies it.
    Inbox(i64),
    /// An event applied as it arrives. Its inbox row is inserted already processed in
    /// the same transaction, and when that row exists already (a redelivery) the op is
    /// skipped.
    Fresh(FreshRow),
    /// An inbound message applied as it arrives. It needs no inbox row: its own key,
    /// (tenant, wamid), catches a redelivery, so the row would only cost a write.
    FreshMessage,
}

impl ApplyOp {
    /// The contact the op writes to; `None` for an op that writes none.
    pub fn contact_id(&self) -> Option<&ContactId> {
        match self {
            ApplyOp::Inbound(m) => Some(&m.contact_id),
            ApplyOp::Status(s) => Some(&s.contact_id),
            ApplyOp::Preference(p) => Some(&p.contact_id),
            ApplyOp::Profile(p) => Some(&p.contact_id),
            ApplyOp::Done { .. } => None,
        }
    }

    /// Where the op's event came from; `None` for work of the actor's own.
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            ApplyOp::Inbound(m) => Some(&m.origin),
            ApplyOp::Status(s) => Some(&s.origin),
            ApplyOp::Preference(p) => p.origin.as_ref(),
            ApplyOp::Done { origin } => Some(origin),
            ApplyOp::Profile(_) => None,
        }
    }

    /// The inbox row this op completes, if it came from one.
    pub fn inbox_id(&self) -> Option<i64> {
        match self.origin() {
            Some(Origin::Inbox(id)) => Some(*id),
            _ => None,
        }
    }

    /// The processed inbox row to write with this op, if its event is fresh.
    pub fn inbox_row_to_insert(&self) -> Option<&FreshRow> {
        match self.origin() {
            Some(Origin::Fresh(row)) => Some(row),
            _ => None,
        }
    }

    /// The kind of event a fresh op applies, for counting.
    pub fn fresh_kind(&self) -> Option<EventKind> {
        match self.origin()? {
            Origin::Fresh(row) => Some(row.kind),
            Origin::FreshMessage => Some(EventKind::Message),
            Origin::Inbox(_) => None,
        }
    }

    /// Whether the op's event is applied as it arrives.
    pub fn is_fresh(&self) -> bool {
        matches!(self.origin(), Some(Origin::Fresh(_) | Origin::FreshMessage))
    }
}

#[derive(Debug, Clone)]
pub struct NewInbound {
    pub origin: Origin,
    pub phone_number_id: PhoneNumberId,
    pub contact_id: ContactId,
    /// The conversation, when the actor already knows it (saves a lookup).
    pub conversation_id: Option<ConversationId>,
    pub message_id: MessageId,
    /// Meta's id as a keyed hash (see `Keyring::wamid_index`), and sealed for the
    /// record ([`wamid_place`]).
    pub wamid_bidx: String,
    pub wamid_ct: Vec<u8>,
    pub msg_type: String,
    /// Meta's timestamp, milliseconds, as sent.
    pub sent_at: i64,
    /// The same, never after the webhook's arrival: what the conversation's window
    /// counts from.
    pub inbound_at: i64,
    pub key_id: KeyId,
    /// Sealed [`MessageBundle`], bound to `message_id`.
    pub content_ct: Vec<u8>,
    /// For a deletion (Meta's `revoke`): the message it deletes.
    pub revokes: Option<Revoked>,
}

/// The message a deletion deletes: its id's keyed hash, and the id sealed for its
/// record, for the tombstone that stands in for a message not stored (yet).
#[derive(Debug, Clone)]
pub struct Revoked {
    pub wamid_bidx: String,
    pub wamid_ct: Vec<u8>,
}

impl NewInbound {
    pub fn is_revoke(&self) -> bool {
        self.revokes.is_some()
    }
}

/// Where a message's sealed Meta id lives: bound to its keyed hash, which names the
/// record as surely as its row id (unique per tenant) and is known to whoever knows
/// the id, so an actor can seal it for a record it has not seen (a tombstone, the
/// record a status leaves for a message sent elsewhere).
pub fn wamid_place<'a>(tenant_id: &'a str, wamid_bidx: &'a str) -> Place<'a> {
    Place::new(tenant_id, "messages", "wamid_ct", wamid_bidx)
}

/// Where a message's sealed content lives.
pub fn content_place<'a>(tenant_id: &'a str, message_id: &'a str) -> Place<'a> {
    Place::new(tenant_id, "messages", "content_ct", message_id)
}

#[derive(Debug, Clone)]
pub struct NewStatus {
    pub origin: Origin,
    pub phone_number_id: PhoneNumberId,
    pub contact_id: ContactId,
    pub wamid_bidx: String,
    /// The id sealed (under `key_id`, the contact's key) for the outbound record a
    /// status leaves when it comes before (or without) its message.
    pub wamid_ct: Vec<u8>,
    pub key_id: KeyId,
    pub status: String,
    pub occurred_at: i64,
    /// Meta's first error, `{"code","title","message"}`, for failed messages.
    pub error_json: Option<String>,
    /// Meta's echo of `biz_opaque_callback_data`: the id of the outbound send this
    /// status is about, when Converra sent it.
    pub callback: Option<String>,
    /// Errors, pricing and conversation objects of the event (no identifiers).
    pub detail_json: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewPreference {
    /// `None` for a preference the actor derived (an opt-out keyword in a message).
    pub origin: Option<Origin>,
    pub contact_id: ContactId,
    pub marketing_opt_out: Option<bool>,
    pub occurred_at: i64,
}

#[derive(Debug, Clone)]
pub struct ProfileUpdate {
    pub contact_id: ContactId,
    pub profile_name_ct: Option<Vec<u8>>,
    pub username_ct: Option<Vec<u8>>,
    pub seen_at: i64,
}

/// What is sealed as a message's content: the type's object as Meta sent it, and the
/// reply context, ad referral and errors that came with it. Sealed from borrowed
/// values (`MessageBundle<&Value>`), opened into owned ones.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct MessageBundle<V = Value> {
    pub content: V,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<V>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referral: Option<V>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<V>,
}

/// Applies the ops of several actor jobs, in one transaction; returns, per job, the
/// conversation its inbound messages went to (for the actor to cache) and which of
/// them were stored already.
///
/// Nearly every op is a plain inbound message to a conversation its actor already
/// knows: those take set-based statements, a few for the whole batch. Every other op
/// is applied one by one, in its job's order, after them. That keeps each
/// conversation's order: the plain messages of a conversation are either all in the
/// set (when it exists) or all applied one by one; messages list by their
/// time-ordered ids, not by insertion; and the ops that refer to another message
/// (revokes) come after the messages they refer to.
pub fn apply_batch(
    conn: &mut DbConn,
    jobs: &[(&TenantId, Vec<&ApplyOp>)],
    now_ms: i64,
) -> Result<Vec<JobApplied>, StorageError> {
    // The latest inbound time of each known conversation.
    let mut latest: HashMap<(&str, &str), i64> = HashMap::new();
    for (tenant_id, ops) in jobs {
        for op in ops.iter().copied() {
            if let ApplyOp::Inbound(m) = op {
                if let (Some(conversation), false) = (&m.conversation_id, m.is_revoke()) {
                    let at = latest
                        .entry((tenant_id.as_str(), conversation.as_str()))
                        .or_insert(m.inbound_at);
                    *at = (*at).max(m.inbound_at);
                }
            }
        }
    }
    let touches: Vec<Touch<'_>> = latest
        .iter()
        .map(|((tenant_id, conversation_id), at)| Touch {
            tenant_id,
            conversation_id,
            inbound_at: *at,
        })
        .collect();
    let existing = touch_conversations(conn, &touches)?;
    // The conversation of an op that goes in the set.
    fn in_set<'o>(op: &'o ApplyOp, existing: &HashSet<String>) -> Option<&'o ConversationId> {
        match op {
            ApplyOp::Inbound(m) if !m.is_revoke() => m
                .conversation_id
                .as_ref()
                .filter(|id| existing.contains(id.as_str())),
            _ => None,
        }
    }
    let rows: Vec<InboundRow<'_>> = jobs
        .iter()
        .flat_map(|(tenant_id, ops)| ops.iter().map(move |op| (tenant_id, *op)))
        .filter_map(|(tenant_id, op)| match (op, in_set(op, &existing)) {
            (ApplyOp::Inbound(message), Some(conversation_id)) => Some(InboundRow {
                tenant_id: tenant_id.as_str(),
                conversation_id: conversation_id.as_str(),
                message,
            }),
            _ => None,
        })
        .collect();
    let inserted = insert_inbound(conn, &rows, now_ms)?;
    let mut outcomes = Vec::with_capacity(jobs.len());
    // The conversations new inbound messages went to.
    let mut written_to: Vec<String> = Vec::new();
    let mut new_media = Vec::new();
    for (tenant_id, ops) in jobs {
        let mut outcome = JobApplied {
            conversation: None,
            redelivered: Vec::with_capacity(ops.len()),
        };
        for op in ops.iter().copied() {
            let applied = match (op, in_set(op, &existing)) {
                (ApplyOp::Inbound(m), Some(conversation_id)) => {
                    let stored = inserted.contains(m.message_id.as_str());
                    let redelivered = !stored && complete_tombstone(conn, tenant_id, m)? == 0;
                    Applied {
                        conversation: Some(conversation_id.clone()),
                        redelivered,
                        stored,
                    }
                }
                _ => apply(conn, tenant_id, op, now_ms)?,
            };
            if let (ApplyOp::Inbound(m), Some(conversation), false) =
                (op, &applied.conversation, applied.redelivered)
            {
                if !m.is_revoke() {
                    written_to.push(conversation.as_str().to_string());
                }
            }
            // Media is fetched for a message stored now, not for a redelivery or a
            // message its sender deleted first (whose tombstone it completed).
            if let (ApplyOp::Inbound(m), true) = (op, applied.stored) {
                if media::is_media(&m.msg_type) {
                    new_media.push(media::NewMedia {
                        message_id: m.message_id.as_str(),
                        tenant_id: tenant_id.as_str(),
                        phone_number_id: m.phone_number_id.as_str(),
                        kind: &m.msg_type,
                    });
                }
            }
            if applied.conversation.is_some() {
                outcome.conversation = applied.conversation;
            }
            outcome.redelivered.push(applied.redelivered);
        }
        outcomes.push(outcome);
    }
    written_to.sort_unstable();
    written_to.dedup();
    let written_to: Vec<&str> = written_to.iter().map(String::as_str).collect();
    reopen_conversations(conn, &written_to)?;
    media::enqueue(conn, &new_media, now_ms)?;
    Ok(outcomes)
}

/// What applying one job's ops did.
#[derive(Debug, Default)]
pub struct JobApplied {
    /// The conversation its inbound messages went to, for the actor to cache.
    pub conversation: Option<ConversationId>,
    /// Per op: an inbound message that was stored already (a redelivery).
    pub redelivered: Vec<bool>,
}

/// What applying one op did.
#[derive(Debug, Default)]
pub(super) struct Applied {
    /// The conversation an inbound message went to.
    pub conversation: Option<ConversationId>,
    /// An inbound message that was stored already.
    pub redelivered: bool,
    /// An inbound message stored now, under its own id.
    pub stored: bool,
}

/// Applies one op; idempotent, so a redelivered or re-dispatched event changes nothing.
/// The op's inbox row is marked processed (or inserted) by the caller, in the same
/// transaction ([`ApplyOp::origin`]).
pub(super) fn apply(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    op: &ApplyOp,
    now_ms: i64,
) -> Result<Applied, StorageError> {
    let tenant = tenant_id.as_str();
    match op {
        ApplyOp::Inbound(m) => {
            let known = match &m.conversation_id {
                Some(id) => {
                    let touch = Touch {
                        tenant_id: tenant,
                        conversation_id: id.as_str(),
                        inbound_at: m.inbound_at,
                    };
                    touch_conversations(conn, &[touch])?.into_iter().next()
                }
                None => None,
            };
            let conversation_id = match known {
                Some(id) => ConversationId(id),
                None => upsert_conversation(
                    conn,
                    tenant_id,
                    &m.phone_number_id,
                    &m.contact_id,
                    Some(m.inbound_at),
                    now_ms,
                )?,
            };
            // A redelivered message collides on (tenant, wamid) and changes nothing; so
            // does a message its sender deleted before it arrived, whose tombstone (see
            // below) holds the place without content.
            let row = InboundRow {
                tenant_id: tenant,
                conversation_id: conversation_id.as_str(),
                message: m,
            };
            let inserted = insert_inbound(conn, &[row], now_ms)?.len();
            let redelivered = inserted == 0 && complete_tombstone(conn, tenant_id, m)? == 0;
            if let (1, Some(original)) = (inserted, &m.revokes) {
                let none: Option<Vec<u8>> = None;
                let erased = on_backend!(conn, c => diesel::update(messages::table
                    .filter(messages::tenant_id.eq(tenant))
                    .filter(messages::wamid_bidx.eq(&original.wamid_bidx)))
                    .set((messages::content_ct.eq(&none), messages::revoked_at.eq(Some(m.sent_at))))
                    .execute(c))?;
                if erased == 0 {
                    // Deleted before it arrived: a tombstone keeps the fact and makes the
                    // late original collide instead of storing its content.
                    on_backend!(conn, c => diesel::insert_into(messages::table)
                        .values((
                            messages::id.eq(MessageId::generate().as_str()),
                            messages::tenant_id.eq(tenant),
                            messages::conversation_id.eq(conversation_id.as_str()),
                            messages::contact_id.eq(m.contact_id.as_str()),
                            messages::wamid_bidx.eq(&original.wamid_bidx),
                            messages::wamid_ct.eq(&original.wamid_ct),
                            messages::key_id.eq(m.key_id.as_str()),
                            messages::direction.eq(INBOUND),
                            messages::sent_at.eq(m.sent_at),
                            messages::received_at.eq(now_ms),
                            messages::revoked_at.eq(Some(m.sent_at)),
                        ))
                        .on_conflict(messages::wamid_bidx)
                        .do_nothing()
                        .execute(c))?;
                }
            }
            Ok(Applied {
                conversation: Some(conversation_id),
                redelivered,
                stored: inserted == 1,
            })
        }
        ApplyOp::Status(s) => {
            if let Some(send_id) = &s.callback {
                // Meta's echo of a send whose own result may not be stored yet (or was
                // lost in a crash): it names the send, which takes the wamid now.
                if outbox::is_pending(conn, tenant_id, send_id)? {
                    outbox::record_accepted(
                        conn,
                        tenant_id,
                        &MessageId::from(send_id.as_str()),
                        &s.wamid_bidx,
                        &s.wamid_ct,
                        now_ms,
                    )?;
                }
            }
            let found: Option<(String, Option<String>)> = on_backend!(conn, c => messages::table
                .filter(messages::tenant_id.eq(tenant))
                .filter(messages::wamid_bidx.eq(&s.wamid_bidx))
                .select((messages::id, messages::status))
                .get_result(c)
                .optional())?;
            let (message_id, current) = match found {
                Some(found) => found,
                None => {
                    // A status can arrive before (or without) the message it is about:
                    // keep an outbound record so the state is not lost.
                    let conversation_id = upsert_conversation(
                        conn,
                        tenant_id,
                        &s.phone_number_id,
                        &s.contact_id,
                        None,
                        now_ms,
                    )?;
                    let id = MessageId::generate().0;
                    on_backend!(conn, c => diesel::insert_into(messages::table)
                        .values((
                            messages::id.eq(&id),
                            messages::tenant_id.eq(tenant),
                            messages::conversation_id.eq(conversation_id.as_str()),
                            messages::contact_id.eq(s.contact_id.as_str()),
                            messages::wamid_bidx.eq(&s.wamid_bidx),
                            messages::direction.eq(OUTBOUND),
                            messages::sent_at.eq(s.occurred_at),
                            messages::received_at.eq(now_ms),
                            messages::wamid_ct.eq(&s.wamid_ct),
                            messages::key_id.eq(s.key_id.as_str()),
                        ))
                        .execute(c))?;
                    (id, None)
                }
            };
            // A state the database does not know reads as none: the next one wins.
            let current = current.as_deref().and_then(MessageState::parse);
            let next = MessageState::parse(&s.status)
                .and_then(|incoming| MessageState::after(current, incoming));
            if let Some(next) = next {
                let error = if next == MessageState::Failed {
                    s.error_json.as_deref()
                } else {
                    None
                };
                on_backend!(conn, c => diesel::update(messages::table.find(&message_id))
                    .set((
                        messages::status.eq(next.as_str()),
                        messages::status_at.eq(s.occurred_at),
                        messages::error_json.eq(error),
                    ))
                    .execute(c))?;
            }
            let event_id = uuid::Uuid::now_v7().to_string();
            on_backend!(conn, c => diesel::insert_into(status_events::table)
                .values((
                    status_events::id.eq(&event_id),
                    status_events::tenant_id.eq(tenant),
                    status_events::message_id.eq(&message_id),
                    status_events::status.eq(&s.status),
                    status_events::occurred_at.eq(s.occurred_at),
                    status_events::detail_json.eq(s.detail_json.as_deref()),
                ))
                .on_conflict((status_events::message_id, status_events::status, status_events::occurred_at))
                .do_nothing()
                .execute(c))?;
            Ok(Applied::default())
        }
        ApplyOp::Preference(p) => {
            if let Some(opt_out) = p.marketing_opt_out {
                on_backend!(conn, c => diesel::update(contacts::table
                    .filter(contacts::id.eq(p.contact_id.as_str()))
                    .filter(contacts::tenant_id.eq(tenant))
                    .filter(contacts::marketing_pref_at.is_null()
                        .or(contacts::marketing_pref_at.le(p.occurred_at))))
                    .set((
                        contacts::marketing_opt_out.eq(opt_out),
                        contacts::marketing_pref_at.eq(p.occurred_at),
                    ))
                    .execute(c))?;
            }
            Ok(Applied::default())
        }
        ApplyOp::Profile(p) => {
            // One statement: the writer's clock only moves forward, so `seen_at` is the
            // latest sighting.
            let id = p.contact_id.as_str();
            match (&p.profile_name_ct, &p.username_ct) {
                (None, None) => on_backend!(conn, c => diesel::update(contacts::table.find(id))
                    .set(contacts::last_seen_at.eq(p.seen_at))
                    .execute(c))?,
                (Some(name), None) => {
                    on_backend!(conn, c => diesel::update(contacts::table.find(id))
                    .set((contacts::last_seen_at.eq(p.seen_at), contacts::profile_name_ct.eq(name)))
                    .execute(c))?
                }
                (None, Some(username)) => {
                    on_backend!(conn, c => diesel::update(contacts::table.find(id))
                    .set((contacts::last_seen_at.eq(p.seen_at), contacts::username_ct.eq(username)))
                    .execute(c))?
                }
                (Some(name), Some(username)) => {
                    on_backend!(conn, c => diesel::update(contacts::table.find(id))
                    .set((
                        contacts::last_seen_at.eq(p.seen_at),
                        contacts::profile_name_ct.eq(name),
                        contacts::username_ct.eq(username),
                    ))
                    .execute(c))?
                }
            };
            Ok(Applied::default())
        }
        ApplyOp::Done { .. } => Ok(Applied::default()),
    }
}
