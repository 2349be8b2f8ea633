//! Outbound messages as the tenant API takes them and as Meta's Cloud API wants them
//! (`POST /{phone_number_id}/messages`). A request is checked against Meta's own
//! limits before it is stored, so that what Meta would refuse is refused at once with
//! the field named (`text.body`, `interactive.action.buttons`), not minutes later from
//! the outbox. The message object of each type is kept as Meta spells it: the body
//! sent to Meta is the request's own object, with the recipient and the message's id
//! (`biz_opaque_callback_data`) added.

mod checks;
#[cfg(test)]
mod tests;

use serde_json::{json, Map, Value};

use crate::ids::PhoneNumberId;
use crate::rules::{FieldError, Rule};

pub use checks::check_template_fits;
use checks::{
    as_object, check_contacts, check_interactive, check_location, check_media, check_reaction,
    check_template, check_text, non_empty_str, required_str,
};

/// Meta's message types a tenant may send, and mark-as-read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundKind {
    Text,
    Template,
    Image,
    Audio,
    Video,
    Document,
    Sticker,
    Location,
    Contacts,
    Interactive,
    Reaction,
    /// Marks an inbound message (and those before it) as read: not a message of its own.
    Read,
}

impl OutboundKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            OutboundKind::Text => "text",
            OutboundKind::Template => "template",
            OutboundKind::Image => "image",
            OutboundKind::Audio => "audio",
            OutboundKind::Video => "video",
            OutboundKind::Document => "document",
            OutboundKind::Sticker => "sticker",
            OutboundKind::Location => "location",
            OutboundKind::Contacts => "contacts",
            OutboundKind::Interactive => "interactive",
            OutboundKind::Reaction => "reaction",
            OutboundKind::Read => "read",
        }
    }

    pub fn parse(name: &str) -> Option<OutboundKind> {
        Some(match name {
            "text" => OutboundKind::Text,
            "template" => OutboundKind::Template,
            "image" => OutboundKind::Image,
            "audio" => OutboundKind::Audio,
            "video" => OutboundKind::Video,
            "document" => OutboundKind::Document,
            "sticker" => OutboundKind::Sticker,
            "location" => OutboundKind::Location,
            "contacts" => OutboundKind::Contacts,
            "interactive" => OutboundKind::Interactive,
            "reaction" => OutboundKind::Reaction,
            _ => return None,
        })
    }

    /// Whether WhatsApp lets it reach a user outside a customer-service window: only
    /// a template opens a conversation (a read receipt is no message).
    pub fn needs_window(&self) -> bool {
        !matches!(self, OutboundKind::Template | OutboundKind::Read)
    }
}

/// Who a message goes to: a phone number (`wa_id`, Meta's `to`) or a business-scoped
/// user id (BSUID, Meta's `recipient`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    WaId(String),
    UserId(String),
}

/// A checked send request.
#[derive(Debug, Clone, PartialEq)]
pub struct SendRequest {
    pub from_phone_number_id: PhoneNumberId,
    pub kind: OutboundKind,
    /// For mark-as-read, the inbound message's wamid; else the recipient.
    pub to: Target,
    /// The type's object as Meta spells it (`{"body": ...}` for text); for
    /// mark-as-read, empty.
    pub message: Value,
    /// Meta's `context`: the message this one replies to.
    pub context: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Recipient(Recipient),
    ReadReceipt { message_id: String },
}

/// A request Meta would refuse: the field, as a dotted path, the rule and why.
fn invalid(rule: Rule, field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError::new(rule, field, message)
}

/// A plain text message from `phone_number_id` to `to` (an automation's reply).
pub fn text_request(phone_number_id: &PhoneNumberId, to: Recipient, body: &str) -> SendRequest {
    SendRequest {
        from_phone_number_id: phone_number_id.clone(),
        kind: OutboundKind::Text,
        to: Target::Recipient(to),
        message: json!({"body": body, "preview_url": false}),
        context: None,
    }
}

/// Checks a send request (`POST /v1/messages`): Meta's fields for its type, or Meta's
/// own mark-as-read shape `{"status": "read", "message_id"}`.
pub fn parse_send(body: &Value) -> Result<SendRequest, FieldError> {
    let Value::Object(fields) = body else {
        return Err(invalid(Rule::Type, "body", "must be a JSON object"));
    };
    let from = required_str(fields, "from_phone_number_id", "from_phone_number_id")?;
    if from.is_empty() || !from.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            Rule::Format,
            "from_phone_number_id",
            "must be the id of one of your WhatsApp phone numbers (digits)",
        ));
    }
    if let Some(product) = fields.get("messaging_product") {
        if product != "whatsapp" {
            return Err(invalid(
                Rule::OneOf,
                "messaging_product",
                "must be \"whatsapp\" when given",
            ));
        }
    }
    if fields.get("status").is_some() {
        return parse_read(fields, from);
    }
    let kind_name = required_str(fields, "type", "type")?;
    let kind = OutboundKind::parse(kind_name).ok_or_else(|| {
        invalid(Rule::OneOf,
            "type",
            format!("{kind_name:?} is not a type this API sends (text, template, image, audio, video, document, sticker, location, contacts, interactive, reaction)"),
        )
    })?;
    for key in fields.keys() {
        let known = matches!(
            key.as_str(),
            "from_phone_number_id" | "to" | "type" | "context" | "messaging_product"
        ) || key == "recipient_type" && fields[key] == "individual"
            || key == kind_name;
        if !known {
            return Err(invalid(
                Rule::Unknown,
                key.as_str(),
                format!("is not a field of a {kind_name} message"),
            ));
        }
    }
    let to = parse_recipient(fields)?;
    let message = fields.get(kind_name).ok_or_else(|| {
        invalid(
            Rule::Required,
            kind_name,
            format!("a {kind_name} message needs its {kind_name} object"),
        )
    })?;
    match kind {
        OutboundKind::Text => check_text(message)?,
        OutboundKind::Template => check_template(message)?,
        OutboundKind::Image | OutboundKind::Video => check_media(kind_name, message, true, false)?,
        OutboundKind::Document => check_media(kind_name, message, true, true)?,
        OutboundKind::Audio | OutboundKind::Sticker => {
            check_media(kind_name, message, false, false)?
        }
        OutboundKind::Location => check_location(message)?,
        OutboundKind::Contacts => check_contacts(message)?,
        OutboundKind::Interactive => check_interactive(message)?,
        OutboundKind::Reaction => check_reaction(message)?,
        OutboundKind::Read => unreachable!("mark-as-read is parsed above"),
    }
    let context = match fields.get("context") {
        None => None,
        Some(context) => {
            let object = as_object(context, "context")?;
            non_empty_str(object, "message_id", "context.message_id", 512)?;
            Some(context.clone())
        }
    };
    Ok(SendRequest {
        from_phone_number_id: from.into(),
        kind,
        to: Target::Recipient(to),
        message: message.clone(),
        context,
    })
}

fn parse_read(fields: &Map<String, Value>, from: &str) -> Result<SendRequest, FieldError> {
    if fields.get("status") != Some(&Value::from("read")) {
        return Err(invalid(
            Rule::OneOf,
            "status",
            "only \"read\" can be sent (mark as read)",
        ));
    }
    for key in fields.keys() {
        if !matches!(
            key.as_str(),
            "from_phone_number_id" | "status" | "message_id" | "messaging_product"
        ) {
            return Err(invalid(
                Rule::Unknown,
                key.as_str(),
                "is not a field of a mark-as-read request",
            ));
        }
    }
    let message_id = non_empty_str(fields, "message_id", "message_id", 512)?;
    Ok(SendRequest {
        from_phone_number_id: from.into(),
        kind: OutboundKind::Read,
        to: Target::ReadReceipt {
            message_id: message_id.to_string(),
        },
        message: Value::Object(Map::new()),
        context: None,
    })
}

/// `to`: a phone number in international format (digits, an optional leading `+`),
/// or a BSUID (a country code, a period, then Meta's id: `US.13491208655302741918`).
fn parse_recipient(fields: &Map<String, Value>) -> Result<Recipient, FieldError> {
    recipient_of(required_str(fields, "to", "to")?).ok_or_else(|| {
        invalid(
            Rule::Format,
            "to",
            "must be a phone number in international format (digits) or a user_id (BSUID)",
        )
    })
}

/// A WhatsApp user as a business names them: a phone number in international format
/// (digits, an optional `+`), which is the wa_id, or a BSUID (`user_id`).
pub fn recipient_of(text: &str) -> Option<Recipient> {
    let text = text.trim();
    if is_bsuid(text) {
        return Some(Recipient::UserId(text.to_string()));
    }
    let digits = text.strip_prefix('+').unwrap_or(text);
    ((6..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| Recipient::WaId(digits.to_string()))
}

fn is_bsuid(text: &str) -> bool {
    let mut parts = text.splitn(2, '.');
    let (Some(country), Some(rest)) = (parts.next(), parts.next()) else {
        return false;
    };
    country.len() == 2
        && country.bytes().all(|b| b.is_ascii_uppercase())
        && !rest.is_empty()
        && rest.len() <= 160
        && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
}

/// The JSON body of Meta's send call for `request`, tagged with Converra's message id
/// (`biz_opaque_callback_data`, which Meta echoes on that message's status webhooks).
pub fn graph_body(request: &SendRequest, message_id: &str) -> Value {
    let kind = request.kind.as_str();
    let mut body = Map::new();
    body.insert("messaging_product".into(), json!("whatsapp"));
    match &request.to {
        Target::ReadReceipt { message_id } => {
            body.insert("status".into(), json!("read"));
            body.insert("message_id".into(), json!(message_id));
            return Value::Object(body);
        }
        Target::Recipient(recipient) => {
            body.insert("recipient_type".into(), json!("individual"));
            match recipient {
                Recipient::WaId(wa_id) => body.insert("to".into(), json!(wa_id)),
                Recipient::UserId(user_id) => body.insert("recipient".into(), json!(user_id)),
            };
        }
    }
    if let Some(context) = &request.context {
        body.insert("context".into(), context.clone());
    }
    body.insert("biz_opaque_callback_data".into(), json!(message_id));
    body.insert("type".into(), json!(kind));
    body.insert(kind.into(), request.message.clone());
    Value::Object(body)
}
