//! Meta's events turned into the writer's ops: timestamps as Converra uses them, and
//! each message's content and wamid sealed under the contact's key.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::crypto::{Keyring, Place, SealKey};
use crate::ids::{ConversationId, MessageId, PhoneNumberId, TenantId, Wamid};
use crate::storage::apply::{content_place, wamid_place, Revoked};
use crate::storage::apply::{ApplyOp, MessageBundle, NewInbound, NewPreference, NewStatus, Origin};
use crate::storage::contacts::ResolvedContact;
use crate::whatsapp::webhook::{InboundMessage, MessageContent, Status, UserPreference};
use crate::whatsapp::{Event, EventKind};

/// Meta's timestamp (seconds) in milliseconds, kept as sent, however absurd.
fn ms(seconds: i64) -> i64 {
    seconds.saturating_mul(1000)
}

/// Meta's timestamp as Converra's own arithmetic uses it (the 24-hour window, the
/// message's age, which preference is the later): never after the webhook's arrival,
/// and the arrival itself when the timestamp is no moment at all (0 or before).
fn clamped(sent_ms: i64, arrived_at: i64) -> i64 {
    if sent_ms > 0 && sent_ms <= arrived_at {
        sent_ms
    } else {
        arrived_at
    }
}

/// What building an op needs besides its event.
pub(super) struct OpContext<'a> {
    pub(super) keyring: &'a Keyring,
    pub(super) tenant_id: &'a TenantId,
    pub(super) phone_number_id: &'a PhoneNumberId,
    pub(super) contact: &'a ResolvedContact,
    pub(super) conversation_id: Option<&'a ConversationId>,
    /// When the event's webhook arrived.
    pub(super) now: i64,
}

impl OpContext<'_> {
    /// Meta's id as stored: its keyed hash, and the id sealed for the record.
    fn wamid(&self, wamid: &Wamid) -> Option<(String, Vec<u8>)> {
        let tenant = self.tenant_id.as_str();
        let bidx = self.keyring.wamid_index(tenant, wamid);
        let sealed = self
            .contact
            .key
            .seal(wamid.as_str().as_bytes(), &wamid_place(tenant, &bidx))
            .ok()?;
        Some((bidx, sealed))
    }
}

/// Turns one event into the write that applies it.
/// When a message was sent by Meta's `timestamp`, never later than it arrived.
pub(super) fn message_time(item: &Value, arrived_at: i64) -> i64 {
    let sent = InboundMessage::from_item(item).map_or(arrived_at, |m| ms(m.timestamp));
    clamped(sent, arrived_at)
}

pub(super) fn build_op(origin: Origin, cx: &OpContext<'_>, event: &Event) -> ApplyOp {
    match event.kind {
        EventKind::Message => match InboundMessage::from_item(&event.item) {
            Ok(message) => inbound_op(origin, cx, event, &message),
            Err(_) => ApplyOp::Done { origin },
        },
        EventKind::Status => match Status::deserialize(&event.item) {
            Ok(status) => match status_op(origin.clone(), cx, &status, &event.item) {
                Some(op) => ApplyOp::Status(op),
                None => ApplyOp::Done { origin },
            },
            Err(_) => ApplyOp::Done { origin },
        },
        EventKind::Preference => match UserPreference::deserialize(&event.item) {
            Ok(preference) => ApplyOp::Preference(NewPreference {
                origin: Some(origin),
                contact_id: cx.contact.contact_id.clone(),
                marketing_opt_out: preference.marketing_opt_out(),
                occurred_at: clamped(ms(preference.timestamp), cx.now),
            }),
            Err(_) => ApplyOp::Done { origin },
        },
    }
}

fn inbound_op(
    origin: Origin,
    cx: &OpContext<'_>,
    event: &Event,
    message: &InboundMessage,
) -> ApplyOp {
    let message_id = MessageId::generate();
    let raw = &event.item;
    let optional = |name: &str| raw.get(name).filter(|v| !v.is_null());
    let bundle = MessageBundle {
        content: &message.content_raw,
        context: optional("context"),
        referral: optional("referral"),
        errors: optional("errors"),
    };
    let tenant = cx.tenant_id.as_str();
    let sealed = seal_json(
        &cx.contact.key,
        &bundle,
        &content_place(tenant, message_id.as_str()),
    );
    let (Some(content_ct), Some((wamid_bidx, wamid_ct))) = (sealed, cx.wamid(&message.id)) else {
        return ApplyOp::Done { origin };
    };
    // A reply's reference stays in its sealed context; a deletion's is needed to
    // find the message it deletes.
    let revokes = match (&message.content, message.refers_to()) {
        (MessageContent::Revoke(_), Some(original)) => match cx.wamid(original) {
            Some((wamid_bidx, wamid_ct)) => Some(Revoked {
                wamid_bidx,
                wamid_ct,
            }),
            None => return ApplyOp::Done { origin },
        },
        _ => None,
    };
    ApplyOp::Inbound(NewInbound {
        origin,
        phone_number_id: cx.phone_number_id.clone(),
        contact_id: cx.contact.contact_id.clone(),
        conversation_id: cx.conversation_id.cloned(),
        message_id,
        wamid_bidx,
        wamid_ct,
        msg_type: message.type_name.clone(),
        sent_at: ms(message.timestamp),
        inbound_at: clamped(ms(message.timestamp), cx.now),
        key_id: cx.contact.key_id.clone(),
        content_ct,
        revokes,
    })
}

fn seal_json(key: &SealKey, value: &impl serde::Serialize, place: &Place<'_>) -> Option<Vec<u8>> {
    let plain = serde_json::to_vec(value).ok()?;
    key.seal(&plain, place).ok()
}

/// `raw` is the status item as Meta sent it: its errors, pricing and conversation are
/// recorded from it, so a field the typed view does not know, or a part in a shape it
/// could not read, is kept too.
fn status_op(
    origin: Origin,
    cx: &OpContext<'_>,
    status: &Status,
    raw: &Value,
) -> Option<NewStatus> {
    let error_json = status
        .errors
        .first()
        .map(|e| json!({"code": e.code, "title": e.title, "message": e.message}).to_string());
    let detail: serde_json::Map<String, Value> = ["errors", "pricing", "conversation"]
        .into_iter()
        .filter_map(|part| Some((part.to_string(), raw.get(part)?.clone())))
        .filter(|(_, value)| !value.is_null())
        .collect();
    let (wamid_bidx, wamid_ct) = cx.wamid(&status.id)?;
    Some(NewStatus {
        origin,
        phone_number_id: cx.phone_number_id.clone(),
        contact_id: cx.contact.contact_id.clone(),
        wamid_bidx,
        wamid_ct,
        key_id: cx.contact.key_id.clone(),
        status: status.status.clone(),
        occurred_at: ms(status.timestamp),
        error_json,
        callback: status.biz_opaque_callback_data.clone(),
        detail_json: (!detail.is_empty()).then(|| Value::Object(detail).to_string()),
    })
}
