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

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// What one webhook body carried.
#[derive(Debug, Default)]
pub struct ParsedWebhook {
    pub events: Vec<Event>,
    pub others: Vec<OtherChange>,
}

/// A change (or a whole body) that is not a routable event: stored raw and counted.
#[derive(Debug, Clone)]
pub struct OtherChange {
    /// `changes[].field`, when the body got that far.
    pub field: Option<String>,
    pub phone_number_id: Option<String>,
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

/// Who a WhatsApp user is, as far as one event tells. Since April 2026 `user_id` (the
/// business-scoped user id) is always sent and `wa_id` (the phone number) may be
/// withheld for users who adopted a username.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wa_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_name: Option<String>,
}

impl Identity {
    /// The key a conversation is routed by: the BSUID when known, else the phone number.
    pub fn route_key(&self) -> Option<String> {
        self.route_key_parts()
            .next()
            .map(|(prefix, id)| format!("{prefix}{id}"))
    }

    /// Every routing key this identity answers to, as (prefix, id): the key is the two
    /// joined, for callers that build it into a buffer of their own.
    pub fn route_key_parts(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let user = self.user_id.as_deref().map(|id| ("u:", id));
        let phone = self.wa_id.as_deref().map(|id| ("w:", id));
        user.into_iter().chain(phone)
    }
}

/// One routable update: an inbound message, a status of an outbound message, or a
/// marketing-preference change. This is also the inbox payload format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub phone_number_id: String,
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

// ---------------------------------------------------------------------------------
// The envelope

// The envelope is read straight from the body, each change's value kept as the raw
// text it came in, so that every item is parsed once, into the value its event owns.
#[derive(Debug, Deserialize)]
struct Envelope<'a> {
    object: String,
    #[serde(borrow)]
    entry: Vec<Entry<'a>>,
}

#[derive(Debug, Deserialize)]
struct Entry<'a> {
    #[serde(default, deserialize_with = "lenient_string")]
    id: String,
    #[serde(default, borrow)]
    changes: Vec<RawChange<'a>>,
}

#[derive(Debug, Deserialize)]
struct RawChange<'a> {
    #[serde(default)]
    field: Option<String>,
    #[serde(default, borrow)]
    value: Option<&'a RawValue>,
}

/// `changes[].value` for the `messages` and `user_preferences` fields. Only the number
/// is required: a list in another shape reads as empty (a change left with no items is
/// kept raw whole), a contact or error in another shape as absent.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ChangeValue {
    #[serde(default, deserialize_with = "or_absent")]
    pub messaging_product: Option<String>,
    pub metadata: Metadata,
    #[serde(default, deserialize_with = "each_or_absent")]
    pub contacts: Vec<WebhookContact>,
    #[serde(default, deserialize_with = "items_or_empty")]
    pub messages: Vec<Value>,
    #[serde(default, deserialize_with = "items_or_empty")]
    pub statuses: Vec<Value>,
    #[serde(default, deserialize_with = "items_or_empty")]
    pub user_preferences: Vec<Value>,
    #[serde(default, deserialize_with = "each_or_absent")]
    pub errors: Vec<MetaError>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Metadata {
    #[serde(default, deserialize_with = "or_absent")]
    pub display_phone_number: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub phone_number_id: String,
}

/// `contacts[]`: the sender's identity and profile.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct WebhookContact {
    #[serde(default)]
    pub wa_id: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub parent_user_id: Option<String>,
    #[serde(default)]
    pub identity_key_hash: Option<String>,
    #[serde(default)]
    pub profile: Option<Profile>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct Profile {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
}

/// An error object as Meta sends it in messages, statuses and change values.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct MetaError {
    pub code: i64,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub error_data: Option<ErrorData>,
    #[serde(default)]
    pub href: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ErrorData {
    #[serde(default)]
    pub details: Option<String>,
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
    let other = |reason: &'static str, phone_number_id: Option<String>, raw: Vec<u8>| OtherChange {
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
                    .map(value_text)
            });
        other(reason, phone_number_id, raw.as_bytes().to_vec())
    };
    if field != "messages" && field != "user_preferences" {
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

fn opt_str(value: &Value, name: &str) -> Option<String> {
    value
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Finds the `contacts[]` entry for a user: by BSUID, else by phone number, else the
/// only entry (Meta sends one contact per message change).
fn find_contact<'a>(
    contacts: &'a [WebhookContact],
    user_id: Option<&str>,
    wa_id: Option<&str>,
) -> Option<&'a WebhookContact> {
    contacts
        .iter()
        .find(|c| user_id.is_some() && c.user_id.as_deref() == user_id)
        .or_else(|| {
            contacts
                .iter()
                .find(|c| wa_id.is_some() && c.wa_id.as_deref() == wa_id)
        })
        .or_else(|| (contacts.len() == 1).then(|| &contacts[0]))
}

fn merge_identity(mut identity: Identity, contact: Option<&WebhookContact>) -> Identity {
    if let Some(contact) = contact {
        identity.user_id = identity.user_id.or_else(|| contact.user_id.clone());
        identity.wa_id = identity.wa_id.or_else(|| contact.wa_id.clone());
        identity.parent_user_id = identity
            .parent_user_id
            .or_else(|| contact.parent_user_id.clone());
        if let Some(profile) = &contact.profile {
            identity.username = identity.username.or_else(|| profile.username.clone());
            identity.profile_name = identity.profile_name.or_else(|| profile.name.clone());
        }
    }
    identity
}

fn message_identity(message: &Value, contacts: &[WebhookContact]) -> Identity {
    let identity = Identity {
        user_id: opt_str(message, "from_user_id"),
        wa_id: opt_str(message, "from"),
        parent_user_id: opt_str(message, "from_parent_user_id"),
        ..Identity::default()
    };
    let contact = find_contact(
        contacts,
        identity.user_id.as_deref(),
        identity.wa_id.as_deref(),
    );
    let mut identity = identity;
    // The sender's `contacts[]` entry names its canonical WhatsApp id, which `from` may
    // write differently (Brazilian and Mexican numbers with or without their extra
    // digit): the contact is keyed by the canonical one, so the same person is one
    // contact whichever form a message carries.
    if let Some(wa_id) = contact.and_then(|c| c.wa_id.clone()) {
        identity.wa_id = Some(wa_id);
    }
    merge_identity(identity, contact)
}

fn status_identity(status: &Value, contacts: &[WebhookContact]) -> Identity {
    let identity = Identity {
        user_id: opt_str(status, "recipient_user_id"),
        wa_id: opt_str(status, "recipient_id"),
        parent_user_id: opt_str(status, "recipient_parent_user_id"),
        ..Identity::default()
    };
    let contact = find_contact(
        contacts,
        identity.user_id.as_deref(),
        identity.wa_id.as_deref(),
    );
    let mut merged = merge_identity(identity, contact);
    // Statuses do not carry a profile worth overwriting the contact's with.
    merged.profile_name = None;
    merged
}

fn preference_identity(preference: &Value, contacts: &[WebhookContact]) -> Identity {
    let identity = Identity {
        user_id: opt_str(preference, "user_id"),
        wa_id: opt_str(preference, "wa_id"),
        parent_user_id: opt_str(preference, "parent_user_id"),
        ..Identity::default()
    };
    let contact = find_contact(
        contacts,
        identity.user_id.as_deref(),
        identity.wa_id.as_deref(),
    );
    merge_identity(identity, contact)
}

// ---------------------------------------------------------------------------------
// Typed views of the items

/// Meta sends Unix timestamps as strings; some newer objects send numbers.
pub fn lenient_i64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| serde::de::Error::custom("timestamp is not an integer")),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom("timestamp is not an integer")),
        _ => Err(serde::de::Error::custom(
            "timestamp is not a string or number",
        )),
    }
}

fn lenient_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(serde::de::Error::custom("expected a string")),
    }
}

/// An inbound message, every documented field typed.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    pub id: String,
    pub from: Option<String>,
    pub from_user_id: Option<String>,
    /// Unix seconds.
    pub timestamp: i64,
    /// Meta's type name (`text`, `image`, ...), as sent.
    pub type_name: String,
    pub context: Option<Context>,
    pub referral: Option<Referral>,
    pub errors: Vec<MetaError>,
    pub content: MessageContent,
    /// The object named by the type (`{"body": "hi"}` for text), as Meta sent it.
    pub content_raw: Value,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Context {
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub forwarded: Option<bool>,
    #[serde(default)]
    pub frequently_forwarded: Option<bool>,
    #[serde(default)]
    pub referred_product: Option<ReferredProduct>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ReferredProduct {
    pub catalog_id: String,
    pub product_retailer_id: String,
}

/// Click-to-WhatsApp ad referral.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Referral {
    #[serde(default)]
    pub source_url: Option<String>,
    #[serde(default)]
    pub source_id: Option<String>,
    #[serde(default)]
    pub source_type: Option<String>,
    #[serde(default)]
    pub headline: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub image_url: Option<String>,
    #[serde(default)]
    pub video_url: Option<String>,
    #[serde(default)]
    pub thumbnail_url: Option<String>,
    #[serde(default)]
    pub ctwa_clid: Option<String>,
    #[serde(default)]
    pub welcome_message: Option<WelcomeMessage>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct WelcomeMessage {
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MessageContent {
    Text(Text),
    Image(Media),
    Audio(Media),
    Video(Media),
    Document(Media),
    Sticker(Media),
    Location(Location),
    Contacts(Vec<SharedContact>),
    Interactive(Interactive),
    Button(Button),
    Reaction(Reaction),
    Order(Order),
    System(System),
    RequestWelcome,
    Edit(Edit),
    Revoke(Revoke),
    /// Meta could not show us the message (`errors` says why).
    Unsupported(Value),
    /// A type this code does not know yet: kept whole, never rejected.
    Unknown {
        type_name: String,
        raw: Value,
    },
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Text {
    pub body: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Media {
    pub id: String,
    #[serde(default)]
    pub mime_type: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub caption: Option<String>,
    #[serde(default)]
    pub filename: Option<String>,
    #[serde(default)]
    pub animated: Option<bool>,
    #[serde(default)]
    pub voice: Option<bool>,
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct SharedContact {
    #[serde(default)]
    pub name: Option<SharedName>,
    #[serde(default)]
    pub phones: Vec<SharedPhone>,
    #[serde(default)]
    pub emails: Vec<SharedEmail>,
    #[serde(default)]
    pub addresses: Vec<SharedAddress>,
    #[serde(default)]
    pub org: Option<SharedOrg>,
    #[serde(default)]
    pub urls: Vec<SharedUrl>,
    #[serde(default)]
    pub birthday: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct SharedName {
    #[serde(default)]
    pub formatted_name: Option<String>,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub middle_name: Option<String>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct SharedPhone {
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub wa_id: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct SharedEmail {
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct SharedAddress {
    #[serde(default)]
    pub street: Option<String>,
    #[serde(default)]
    pub city: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub zip: Option<String>,
    #[serde(default)]
    pub country: Option<String>,
    #[serde(default)]
    pub country_code: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct SharedOrg {
    #[serde(default)]
    pub company: Option<String>,
    #[serde(default)]
    pub department: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct SharedUrl {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Interactive {
    ButtonReply {
        button_reply: ReplyChoice,
    },
    ListReply {
        list_reply: ReplyChoice,
    },
    NfmReply {
        nfm_reply: NfmReply,
    },
    CallPermissionReply {
        call_permission_reply: CallPermissionReply,
    },
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ReplyChoice {
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// A WhatsApp Flow's answer; `response_json` is a JSON document in a string.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct NfmReply {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    pub response_json: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct CallPermissionReply {
    pub response: String,
    #[serde(default)]
    pub is_permanent: Option<bool>,
    #[serde(default, deserialize_with = "lenient_opt_i64")]
    pub expiration_timestamp: Option<i64>,
    #[serde(default)]
    pub response_source: Option<String>,
}

fn lenient_opt_i64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    lenient_i64(deserializer).map(Some)
}

/// An item's time, or 0 when it is unreadable (the actors then take the time it
/// arrived): an odd timestamp must not cost the item.
fn timestamp_or_zero<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    Ok(read_timestamp(&Value::deserialize(deserializer)?))
}

fn read_timestamp(value: &Value) -> i64 {
    lenient_i64(value).unwrap_or(0)
}

/// A documented part in a shape the docs do not give reads as absent; the raw item,
/// which is what is stored, still has it.
fn or_absent<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    Ok(T::deserialize(Value::deserialize(deserializer)?).ok())
}

/// A list in another shape reads as empty; its raw items are kept as they came (not
/// rebuilt).
fn items_or_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Value>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::Array(items) => items,
        _ => Vec::new(),
    })
}

/// [`or_absent`] for each element of a list: one odd element costs only itself.
fn each_or_absent<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    Ok(items_or_empty(deserializer)?
        .into_iter()
        .filter_map(|item| T::deserialize(item).ok())
        .collect())
}

/// A quick-reply button of a template.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Button {
    #[serde(default)]
    pub payload: Option<String>,
    pub text: String,
}

/// `emoji` is absent when the user removed their reaction.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Reaction {
    pub message_id: String,
    #[serde(default)]
    pub emoji: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Order {
    pub catalog_id: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub product_items: Vec<ProductItem>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ProductItem {
    pub product_retailer_id: String,
    pub quantity: serde_json::Number,
    pub item_price: serde_json::Number,
    pub currency: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct System {
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default)]
    pub wa_id: Option<String>,
    #[serde(default)]
    pub new_wa_id: Option<String>,
    #[serde(default)]
    pub customer: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub new_user_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Edit {
    pub original_message_id: String,
    /// The edited message (its type and content), as Meta sends it.
    #[serde(default)]
    pub message: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Revoke {
    pub original_message_id: String,
}

#[derive(Debug, thiserror::Error)]
#[error("message item: {0}")]
pub struct ItemError(String);

impl InboundMessage {
    pub fn from_item(item: &Value) -> Result<InboundMessage, ItemError> {
        let id = opt_str(item, "id").ok_or_else(|| ItemError("no id".into()))?;
        let type_name = opt_str(item, "type").unwrap_or_else(|| "unknown".to_string());
        let timestamp = item.get("timestamp").map_or(0, read_timestamp);
        // Typed straight from the borrowed item: nothing is copied to be read.
        let field = |name: &str| item.get(name).filter(|v| !v.is_null());
        let content_raw = field(&type_name).cloned().unwrap_or(Value::Null);
        let content = typed_content(&type_name, &content_raw);
        // Parts in a shape the docs do not give read as absent (see the module doc).
        let context = field("context").and_then(|v| Context::deserialize(v).ok());
        let referral = field("referral").and_then(|v| Referral::deserialize(v).ok());
        let errors = field("errors")
            .and_then(|v| Vec::<MetaError>::deserialize(v).ok())
            .unwrap_or_default();
        Ok(InboundMessage {
            id,
            from: opt_str(item, "from"),
            from_user_id: opt_str(item, "from_user_id"),
            timestamp,
            type_name,
            context,
            referral,
            errors,
            content,
            content_raw,
        })
    }

    /// The message this one acts on (the edited, revoked or reacted-to message).
    pub fn refers_to(&self) -> Option<&str> {
        match &self.content {
            MessageContent::Edit(edit) => Some(&edit.original_message_id),
            MessageContent::Revoke(revoke) => Some(&revoke.original_message_id),
            MessageContent::Reaction(reaction) => Some(&reaction.message_id),
            _ => None,
        }
    }
}

/// Types the content by Meta's type name. A known type whose object does not match
/// its documented shape is kept as `Unknown` with its raw JSON rather than rejected.
fn typed_content(type_name: &str, raw: &Value) -> MessageContent {
    fn de<T: serde::de::DeserializeOwned>(raw: &Value) -> Option<T> {
        T::deserialize(raw).ok()
    }
    let typed = match type_name {
        "text" => de(raw).map(MessageContent::Text),
        "image" => de(raw).map(MessageContent::Image),
        "audio" => de(raw).map(MessageContent::Audio),
        "video" => de(raw).map(MessageContent::Video),
        "document" => de(raw).map(MessageContent::Document),
        "sticker" => de(raw).map(MessageContent::Sticker),
        "location" => de(raw).map(MessageContent::Location),
        "contacts" => de(raw).map(MessageContent::Contacts),
        "interactive" => de(raw).map(MessageContent::Interactive),
        "button" => de(raw).map(MessageContent::Button),
        "reaction" => de(raw).map(MessageContent::Reaction),
        "order" => de(raw).map(MessageContent::Order),
        "system" => de(raw).map(MessageContent::System),
        "request_welcome" => Some(MessageContent::RequestWelcome),
        "edit" => de(raw).map(MessageContent::Edit),
        "revoke" => de(raw).map(MessageContent::Revoke),
        "unsupported" => Some(MessageContent::Unsupported(raw.clone())),
        _ => None,
    };
    typed.unwrap_or_else(|| MessageContent::Unknown {
        type_name: type_name.to_string(),
        raw: raw.clone(),
    })
}

/// A status of an outbound message.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Status {
    pub id: String,
    pub status: String,
    #[serde(default, deserialize_with = "timestamp_or_zero")]
    pub timestamp: i64,
    #[serde(default, deserialize_with = "or_absent")]
    pub recipient_id: Option<String>,
    #[serde(default, deserialize_with = "or_absent")]
    pub recipient_user_id: Option<String>,
    #[serde(default, deserialize_with = "or_absent")]
    pub recipient_parent_user_id: Option<String>,
    #[serde(default, deserialize_with = "or_absent")]
    pub recipient_type: Option<String>,
    #[serde(default, deserialize_with = "or_absent")]
    pub biz_opaque_callback_data: Option<String>,
    /// Present in older API versions (conversation-based pricing).
    #[serde(default, deserialize_with = "or_absent")]
    pub conversation: Option<StatusConversation>,
    #[serde(default, deserialize_with = "or_absent")]
    pub pricing: Option<Pricing>,
    #[serde(default, deserialize_with = "each_or_absent")]
    pub errors: Vec<MetaError>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct StatusConversation {
    pub id: String,
    #[serde(default, deserialize_with = "lenient_opt_i64")]
    pub expiration_timestamp: Option<i64>,
    #[serde(default)]
    pub origin: Option<ConversationOrigin>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ConversationOrigin {
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Pricing {
    #[serde(default)]
    pub billable: Option<bool>,
    #[serde(default)]
    pub pricing_model: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

/// A `user_preferences[]` item: marketing messages stopped or resumed.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct UserPreference {
    #[serde(default, deserialize_with = "or_absent")]
    pub wa_id: Option<String>,
    #[serde(default, deserialize_with = "or_absent")]
    pub user_id: Option<String>,
    #[serde(default, deserialize_with = "or_absent")]
    pub detail: Option<String>,
    #[serde(default, deserialize_with = "or_absent")]
    pub category: Option<String>,
    #[serde(default, deserialize_with = "or_absent")]
    pub value: Option<String>,
    #[serde(default, deserialize_with = "timestamp_or_zero")]
    pub timestamp: i64,
}

impl UserPreference {
    /// `Some(true)` when the user stopped marketing messages, `Some(false)` when they
    /// resumed, `None` for a category or value this code does not act on.
    pub fn marketing_opt_out(&self) -> Option<bool> {
        if self.category.as_deref() != Some("marketing_messages") {
            return None;
        }
        match self.value.as_deref()? {
            "stop" => Some(true),
            "resume" => Some(false),
            _ => None,
        }
    }
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
            .all(|o| o.phone_number_id.as_deref() == Some("PN1")));
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
        assert_eq!(parsed.others[0].phone_number_id.as_deref(), Some("42"));
        assert_eq!(parsed.others[1].phone_number_id.as_deref(), Some("PN2"));
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
        assert_eq!(revoke.refers_to(), Some("wamid.orig"));
        let status: Status = serde_json::from_value(json!({"id": "w", "status": "failed", "timestamp": 7,
            "errors": [{"code": 131047, "title": "Re-engagement message"}],
            "pricing": {"billable": false, "pricing_model": "PMP", "category": "service", "type": "free_customer_service"}}))
            .expect("status");
        assert_eq!(status.errors[0].code, 131047);
        assert_eq!(status.timestamp, 7);
    }
}
