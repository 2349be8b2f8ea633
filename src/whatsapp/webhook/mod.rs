//! Meta's webhook payloads. [`parse`] walks **every** `entry[] × changes[]` and every
//! `messages[]`, `statuses[]` and `user_preferences[]` item of a POST (Meta batches up
//! to 1,000 updates in one request) and turns each into an [`Event`]: the item exactly
//! as Meta sent it plus the routing facts (business number, contact identity). What it
//! cannot route (other fields, malformed values) comes back as [`OtherChange`] to be
//! stored raw, never dropped.
//!
//! The typed views ([`InboundMessage`], [`Status`], ...) parse every field Meta
//! documents; a message type this code does not know becomes
//! [`MessageContent::Unknown`] with its raw JSON, never an error. Likewise a documented
//! part of an item in a shape the docs do not give (a timestamp that is no number, a
//! `context` that is no object, ...) reads as absent instead of failing the item: the
//! item is applied and the part is kept as sent, so nothing Meta sent is dropped.

mod account;
mod envelope;
mod identity;
mod lenient;
mod message;
mod status;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::ids::PhoneNumberId;

pub use account::{account_update, AccountUpdate, UPGRADED_MPS};
pub use envelope::{ChangeValue, ErrorData, MetaError, Metadata, Profile, WebhookContact};
pub use identity::Identity;
pub use lenient::lenient_i64;
pub use message::*;
pub use status::*;

use envelope::{Envelope, RawChange};
use identity::{message_identity, preference_identity, status_identity};

/// What one webhook body carried.
#[derive(Debug, Default)]
pub struct ParsedWebhook {
    pub events: Vec<Event>,
    pub others: Vec<OtherChange>,
    /// Account-level updates to act on (their changes are in `others` too).
    pub account: Vec<AccountUpdate>,
}

/// A change (or a whole body) that is not a routable event: stored raw and counted.
#[derive(Debug, Clone)]
pub struct OtherChange {
    /// `changes[].field`, when the body got that far.
    pub field: Option<String>,
    pub phone_number_id: Option<PhoneNumberId>,
    /// Why it is not an event: `not_json`, `not_envelope`, `other_field`,
    /// `malformed_value`, `malformed_item`.
    pub reason: &'static str,
    pub raw: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Message,
    Status,
    Preference,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::Status => "status",
            EventKind::Preference => "preference",
        }
    }
}

/// One routable update: an inbound message, a status of an outbound message, or a
/// marketing-preference change. This is also the inbox payload format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub phone_number_id: PhoneNumberId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_phone_number: Option<String>,
    /// `entry[].id`: the WhatsApp Business Account.
    pub waba_id: String,
    pub identity: Identity,
    /// The `messages[]`, `statuses[]` or `user_preferences[]` item as Meta sent it.
    pub item: Value,
}

impl Event {
    /// The id under which Meta's redeliveries of this same update collide.
    pub fn dedupe_key(&self) -> String {
        let str_field = |name: &str| self.item.get(name).map(value_text).unwrap_or_default();
        match self.kind {
            EventKind::Message => format!("m:{}:{}", self.phone_number_id, str_field("id")),
            EventKind::Status => format!(
                "s:{}:{}:{}:{}",
                self.phone_number_id,
                str_field("id"),
                str_field("status"),
                str_field("timestamp")
            ),
            EventKind::Preference => format!(
                "p:{}:{}:{}:{}:{}",
                self.phone_number_id,
                self.identity.route_key().unwrap_or_default(),
                str_field("category"),
                str_field("value"),
                str_field("timestamp")
            ),
        }
    }
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Walks a webhook body. Never fails: what cannot be understood is returned in
/// [`ParsedWebhook::others`] to be stored raw.
pub fn parse(body: &[u8]) -> ParsedWebhook {
    let mut parsed = ParsedWebhook::default();
    let stored_raw = |reason: &'static str| OtherChange {
        field: None,
        phone_number_id: None,
        reason,
        raw: body.to_vec(),
    };
    let envelope: Envelope<'_> = match serde_json::from_slice(body) {
        Ok(envelope) => envelope,
        Err(_) => {
            let is_json = serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
            let reason = if is_json { "not_envelope" } else { "not_json" };
            parsed.others.push(stored_raw(reason));
            return parsed;
        }
    };
    if envelope.object != "whatsapp_business_account" {
        parsed.others.push(stored_raw("not_envelope"));
        return parsed;
    }
    for entry in envelope.entry {
        for change in entry.changes {
            parse_change(&entry.id, change, &mut parsed);
        }
    }
    parsed
}

fn parse_change(waba_id: &str, change: RawChange<'_>, parsed: &mut ParsedWebhook) {
    let field = change.field.as_deref().unwrap_or_default();
    let raw = change.value.map_or("null", RawValue::get);
    let readable = without_nul(raw);
    // Kept raw, with the number it names when it names one.
    let other =
        |reason: &'static str, phone_number_id: Option<PhoneNumberId>, raw: Vec<u8>| OtherChange {
            field: change.field.as_deref().map(text_without_nul),
            phone_number_id,
            reason,
            raw,
        };
    let whole_change = |reason: &'static str| {
        let phone_number_id = serde_json::from_str::<Value>(&readable)
            .ok()
            .and_then(|value| {
                value
                    .get("metadata")
                    .and_then(|m| m.get("phone_number_id"))
                    .map(|id| PhoneNumberId(value_text(id)))
            });
        other(reason, phone_number_id, raw.as_bytes().to_vec())
    };
    if field != "messages" && field != "user_preferences" {
        if let Ok(value) = serde_json::from_str::<Value>(&readable) {
            parsed
                .account
                .extend(account_update(waba_id, field, &value));
        }
        parsed.others.push(whole_change("other_field"));
        return;
    }
    let mut value: ChangeValue = match serde_json::from_str(&readable) {
        Ok(value) => value,
        Err(_) => {
            parsed.others.push(whole_change("malformed_value"));
            return;
        }
    };
    let number = Some(value.metadata.phone_number_id.clone());
    let item_raw = |item: &Value| serde_json::to_vec(item).unwrap_or_default();
    let (messages, statuses, preferences) = (
        std::mem::take(&mut value.messages),
        std::mem::take(&mut value.statuses),
        std::mem::take(&mut value.user_preferences),
    );
    let had_items = !(messages.is_empty() && statuses.is_empty() && preferences.is_empty());
    let base = |kind: EventKind, identity: Identity, item: Value| Event {
        kind,
        phone_number_id: value.metadata.phone_number_id.clone(),
        display_phone_number: value.metadata.display_phone_number.clone(),
        waba_id: text_without_nul(waba_id),
        identity,
        item,
    };
    for message in messages {
        let has_id = message
            .get("id")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty());
        let identity = message_identity(&message, &value.contacts);
        // Without an id it cannot be deduplicated, without a sender not routed: such
        // an item is kept raw rather than refused (Meta would retry it forever).
        if !has_id || identity.route_key().is_none() {
            parsed
                .others
                .push(other("malformed_item", number.clone(), item_raw(&message)));
            continue;
        }
        parsed
            .events
            .push(base(EventKind::Message, identity, message));
    }
    for status in statuses {
        let has_id = status
            .get("id")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty());
        let has_status = status.get("status").and_then(Value::as_str).is_some();
        let identity = status_identity(&status, &value.contacts);
        if !has_id || !has_status || identity.route_key().is_none() {
            parsed
                .others
                .push(other("malformed_item", number.clone(), item_raw(&status)));
            continue;
        }
        parsed
            .events
            .push(base(EventKind::Status, identity, status));
    }
    for preference in preferences {
        let identity = preference_identity(&preference, &value.contacts);
        if identity.route_key().is_none() {
            parsed.others.push(other(
                "malformed_item",
                number.clone(),
                item_raw(&preference),
            ));
            continue;
        }
        parsed
            .events
            .push(base(EventKind::Preference, identity, preference));
    }
    // A change with only `errors` (or nothing routable) is still kept.
    if !had_items {
        parsed.others.push(whole_change("errors_only"));
    }
}

/// PostgreSQL's text cannot hold NUL, and no identifier Meta documents has one. A NUL
/// in a change (JSON carries it only as the escape `\u0000`) becomes U+FFFD before the
/// change is read, so its items are stored alike on both backends instead of failing
/// every write that names them. The bytes kept for a change stored raw are untouched.
fn without_nul(raw: &str) -> Cow<'_, str> {
    if !raw.contains("\\u0000") {
        return Cow::Borrowed(raw);
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(mut value) => {
            replace_nul(&mut value);
            Cow::Owned(value.to_string())
        }
        Err(_) => Cow::Borrowed(raw),
    }
}

fn replace_nul(value: &mut Value) {
    match value {
        Value::String(text) if text.contains('\0') => *text = text_without_nul(text),
        Value::Array(items) => items.iter_mut().for_each(replace_nul),
        Value::Object(map) => {
            if map.keys().any(|key| key.contains('\0')) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(key, value)| (text_without_nul(&key), value))
                    .collect();
            }
            map.values_mut().for_each(replace_nul);
        }
        _ => {}
    }
}

fn text_without_nul(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

pub(super) fn opt_str(value: &Value, name: &str) -> Option<String> {
    value
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(values: Vec<Value>) -> Vec<u8> {
        let changes: Vec<Value> = values
            .into_iter()
            .map(|v| json!({"field": "messages", "value": v}))
            .collect();
        serde_json::to_vec(&json!({"object": "whatsapp_business_account",
            "entry": [{"id": "WABA1", "changes": changes}]}))
        .expect("json")
    }

    #[test]
    fn every_item_of_every_change_becomes_an_event() {
        let value = |n: u32| {
            json!({"messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550001", "phone_number_id": "PN1"},
                "contacts": [{"wa_id": "111", "profile": {"name": "Ann"}}],
                "messages": [
                    {"from": "111", "id": format!("wamid.{n}a"), "timestamp": "1700000000", "type": "text", "text": {"body": "a"}},
                    {"from": "111", "id": format!("wamid.{n}b"), "timestamp": "1700000001", "type": "text", "text": {"body": "b"}}
                ],
                "statuses": [{"id": "wamid.out", "status": "read", "timestamp": "1700000002", "recipient_id": "111"}]})
        };
        let parsed = parse(&envelope(vec![value(1), value(2)]));
        assert_eq!(parsed.events.len(), 6);
        assert!(parsed.others.is_empty());
        assert_eq!(
            parsed.events[0].identity.profile_name.as_deref(),
            Some("Ann")
        );
        assert_eq!(
            parsed.events[0].identity.route_key().as_deref(),
            Some("w:111")
        );
    }

    #[test]
    fn username_contacts_route_by_user_id() {
        let parsed = parse(&envelope(vec![json!({
            "metadata": {"phone_number_id": "PN1"},
            "contacts": [{"user_id": "US.123", "profile": {"name": "Bo", "username": "@bo"}}],
            "messages": [{"from_user_id": "US.123", "id": "wamid.x", "timestamp": "1", "type": "text", "text": {"body": "hi"}}]
        })]));
        let identity = &parsed.events[0].identity;
        assert_eq!(identity.wa_id, None);
        assert_eq!(identity.username.as_deref(), Some("@bo"));
        assert_eq!(identity.route_key().as_deref(), Some("u:US.123"));
    }

    #[test]
    fn garbage_and_unknown_fields_are_kept_not_dropped() {
        let parsed = parse(b"not json at all");
        assert_eq!(parsed.others[0].reason, "not_json");
        let parsed = parse(br#"{"hello": 1}"#);
        assert_eq!(parsed.others[0].reason, "not_envelope");
        let body = serde_json::to_vec(&json!({"object": "whatsapp_business_account", "entry": [
            {"id": "W", "changes": [{"field": "message_template_status_update", "value": {"event": "APPROVED"}}]}]}))
        .expect("json");
        let parsed = parse(&body);
        assert_eq!(parsed.others[0].reason, "other_field");
        assert_eq!(
            parsed.others[0].field.as_deref(),
            Some("message_template_status_update")
        );
    }

    #[test]
    fn parts_in_an_undocumented_shape_read_as_absent_and_cost_nothing_else() {
        let message = InboundMessage::from_item(&json!({"from": "111", "id": "wamid.odd",
            "timestamp": {}, "type": "text", "text": {"body": "still here"},
            "context": 5, "referral": "ad", "errors": "bad"}))
        .expect("the message is read");
        assert_eq!(message.timestamp, 0, "the actors take the arrival time");
        assert_eq!((message.context, message.referral), (None, None));
        assert!(message.errors.is_empty());
        assert_eq!(message.content_raw, json!({"body": "still here"}));

        let status = Status::deserialize(&json!({"id": "wamid.s", "status": "failed",
            "timestamp": null, "recipient_id": 111, "pricing": "free",
            "conversation": {"origin": 1}, "errors": [{"code": 131047}]}))
        .expect("the status is read");
        assert_eq!(status.timestamp, 0);
        assert_eq!(
            (status.recipient_id, status.pricing, status.conversation),
            (None, None, None)
        );
        assert_eq!(status.errors[0].code, 131047);

        let preference = UserPreference::deserialize(&json!({"wa_id": "111",
            "category": "marketing_messages", "value": 1, "timestamp": "soon"}))
        .expect("the preference is read");
        assert_eq!(preference.marketing_opt_out(), None);

        // A list or contact in another shape: the change's other items still count.
        let parsed = parse(&envelope(vec![json!({
            "metadata": {"phone_number_id": "PN1", "display_phone_number": 15550001},
            "contacts": [{"wa_id": 7}, {"wa_id": "111", "profile": {"name": "Ann"}}],
            "statuses": null, "errors": {"code": 1},
            "messages": [{"from": "111", "id": "wamid.1", "timestamp": "1", "type": "text", "text": {"body": "a"}}]
        })]));
        assert_eq!(parsed.events.len(), 1);
        assert!(parsed.others.is_empty());
        assert_eq!(
            parsed.events[0].identity.profile_name.as_deref(),
            Some("Ann")
        );
    }

    #[test]
    fn a_nul_becomes_a_replacement_character_before_anything_is_stored() {
        let body = br#"{"object": "whatsapp_business_account", "entry": [{"id": "W\u0000", "changes": [
            {"field": "messages", "value": {"metadata": {"phone_number_id": "PN\u0000"},
                "messages": [{"from": "1\u0000", "id": "wamid.\u0000", "timestamp": "1", "type": "text", "text": {"body": "a\u0000b"}}]}},
            {"field": "x\u0000", "value": {}}]}]}"#;
        let parsed = parse(body);
        let event = &parsed.events[0];
        assert_eq!(event.phone_number_id, "PN\u{FFFD}");
        assert_eq!(event.waba_id, "W\u{FFFD}");
        assert_eq!(event.item["id"], "wamid.\u{FFFD}");
        assert_eq!(event.item["text"]["body"], "a\u{FFFD}b");
        assert_eq!(event.identity.route_key().as_deref(), Some("w:1\u{FFFD}"));
        let other = &parsed.others[0];
        assert_eq!(other.field.as_deref(), Some("x\u{FFFD}"));
        assert_eq!(other.raw, b"{}", "what is kept raw stays as it came");
    }

    #[test]
    fn items_without_an_id_or_a_sender_are_kept_raw() {
        let parsed = parse(&envelope(vec![json!({
            "metadata": {"phone_number_id": "PN1"},
            "messages": [
                {"id": "wamid.nobody", "timestamp": "1", "type": "text", "text": {"body": "who?"}},
                {"from": "111", "timestamp": "1", "type": "text", "text": {"body": "no id"}}
            ],
            "statuses": [{"id": "wamid.s", "status": "sent", "timestamp": "1"}]
        })]));
        assert!(parsed.events.is_empty());
        assert_eq!(parsed.others.len(), 3);
        assert!(parsed.others.iter().all(|o| o.reason == "malformed_item"));
        assert!(parsed
            .others
            .iter()
            .all(|o| o.phone_number_id.as_ref().is_some_and(|p| p == "PN1")));
    }

    #[test]
    fn a_change_kept_raw_keeps_the_bytes_it_came_in_and_its_number() {
        let value = r#"{"metadata": {"phone_number_id": 42}, "event": "caf\u00e9 ☕"}"#;
        let body = format!(
            r#"{{"object": "whatsapp_business_account", "entry": [{{"id": "W", "changes": [
                {{"field": "account_update", "value": {value}}},
                {{"field": "messages", "value": {{"metadata": {{"phone_number_id": "PN2"}}}}}},
                {{"field": "messages", "value": {{"metadata": "not an object"}}}}]}}]}}"#
        );
        let parsed = parse(body.as_bytes());
        let reasons: Vec<_> = parsed.others.iter().map(|o| o.reason).collect();
        assert_eq!(reasons, ["other_field", "errors_only", "malformed_value"]);
        assert_eq!(parsed.others[0].raw, value.as_bytes());
        assert_eq!(parsed.others[0].phone_number_id, Some("42".into()));
        assert_eq!(parsed.others[1].phone_number_id, Some("PN2".into()));
        assert_eq!(parsed.others[2].phone_number_id, None);
    }

    #[test]
    fn unknown_and_malformed_types_are_kept_raw() {
        let msg = InboundMessage::from_item(
            &json!({"id": "w", "timestamp": "5", "type": "hologram", "hologram": {"x": 1}}),
        )
        .expect("parse");
        assert_eq!(
            msg.content,
            MessageContent::Unknown {
                type_name: "hologram".into(),
                raw: json!({"x": 1})
            }
        );
        let msg = InboundMessage::from_item(
            &json!({"id": "w", "timestamp": "5", "type": "text", "text": {"nobody": 1}}),
        )
        .expect("parse");
        assert!(matches!(msg.content, MessageContent::Unknown { .. }));
    }

    #[test]
    fn typed_content_of_documented_types() {
        let item = json!({"id": "w", "timestamp": "5", "type": "interactive",
            "interactive": {"type": "list_reply", "list_reply": {"id": "r1", "title": "T", "description": "D"}},
            "context": {"from": "155", "id": "wamid.ctx", "forwarded": true}});
        let msg = InboundMessage::from_item(&item).expect("parse");
        assert_eq!(
            msg.content,
            MessageContent::Interactive(Interactive::ListReply {
                list_reply: ReplyChoice {
                    id: "r1".into(),
                    title: "T".into(),
                    description: Some("D".into())
                }
            })
        );
        assert_eq!(msg.context.and_then(|c| c.forwarded), Some(true));
        let revoke =
            InboundMessage::from_item(&json!({"id": "w2", "timestamp": "6", "type": "revoke",
            "revoke": {"original_message_id": "wamid.orig"}}))
            .expect("parse");
        assert_eq!(revoke.refers_to().map(|w| w.as_str()), Some("wamid.orig"));
        let status: Status = serde_json::from_value(json!({"id": "w", "status": "failed", "timestamp": 7,
            "errors": [{"code": 131047, "title": "Re-engagement message"}],
            "pricing": {"billable": false, "pricing_model": "PMP", "category": "service", "type": "free_customer_service"}}))
            .expect("status");
        assert_eq!(status.errors[0].code, 131047);
        assert_eq!(status.timestamp, 7);
    }
}
