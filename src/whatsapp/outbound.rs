//! Outbound messages as the tenant API takes them and as Meta's Cloud API wants them
//! (`POST /{phone_number_id}/messages`). A request is checked against Meta's own
//! limits before it is stored, so that what Meta would refuse is refused at once with
//! the field named (`text.body`, `interactive.action.buttons`), not minutes later from
//! the outbox. The message object of each type is kept as Meta spells it: the body
//! sent to Meta is the request's own object, with the recipient and the message's id
//! (`biz_opaque_callback_data`) added.

use serde_json::{json, Map, Value};

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
    pub from_phone_number_id: String,
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

/// A request Meta would refuse: the field, as a dotted path, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

// Meta's documented limits (Cloud API reference, messages).
const TEXT_BODY_MAX: usize = 4096;
const CAPTION_MAX: usize = 1024;
const FILENAME_MAX: usize = 240;
const REPLY_BUTTONS_MAX: usize = 3;
const BUTTON_TITLE_MAX: usize = 20;
const BUTTON_ID_MAX: usize = 256;
const LIST_SECTIONS_MAX: usize = 10;
const LIST_ROWS_MAX: usize = 10;
const LIST_BUTTON_MAX: usize = 20;
const ROW_TITLE_MAX: usize = 24;
const ROW_DESCRIPTION_MAX: usize = 72;
const ROW_ID_MAX: usize = 200;
const SECTION_TITLE_MAX: usize = 24;
const INTERACTIVE_BODY_MAX: usize = 1024;
const LIST_BODY_MAX: usize = 4096;
const HEADER_TEXT_MAX: usize = 60;
const FOOTER_TEXT_MAX: usize = 60;
const TEMPLATE_NAME_MAX: usize = 512;

/// A plain text message from `phone_number_id` to `to` (an automation's reply).
pub fn text_request(phone_number_id: &str, to: Recipient, body: &str) -> SendRequest {
    SendRequest {
        from_phone_number_id: phone_number_id.to_string(),
        kind: OutboundKind::Text,
        to: Target::Recipient(to),
        message: json!({"body": body, "preview_url": false}),
        context: None,
    }
}

/// Checks a send request (`POST /v1/messages`): Meta's fields for its type, or Meta's
/// own mark-as-read shape `{"status": "read", "message_id"}`.
pub fn parse_send(body: &Value) -> Result<SendRequest, Invalid> {
    let Value::Object(fields) = body else {
        return Err(invalid("body", "must be a JSON object"));
    };
    let from = required_str(fields, "from_phone_number_id", "from_phone_number_id")?;
    if from.is_empty() || !from.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            "from_phone_number_id",
            "must be the id of one of your WhatsApp phone numbers (digits)",
        ));
    }
    if let Some(product) = fields.get("messaging_product") {
        if product != "whatsapp" {
            return Err(invalid(
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
        invalid(
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
                key.as_str(),
                format!("is not a field of a {kind_name} message"),
            ));
        }
    }
    let to = parse_recipient(fields)?;
    let message = fields.get(kind_name).ok_or_else(|| {
        invalid(
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
        from_phone_number_id: from.to_string(),
        kind,
        to: Target::Recipient(to),
        message: message.clone(),
        context,
    })
}

fn parse_read(fields: &Map<String, Value>, from: &str) -> Result<SendRequest, Invalid> {
    if fields.get("status") != Some(&Value::from("read")) {
        return Err(invalid(
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
                key.as_str(),
                "is not a field of a mark-as-read request",
            ));
        }
    }
    let message_id = non_empty_str(fields, "message_id", "message_id", 512)?;
    Ok(SendRequest {
        from_phone_number_id: from.to_string(),
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
fn parse_recipient(fields: &Map<String, Value>) -> Result<Recipient, Invalid> {
    let to = required_str(fields, "to", "to")?.trim();
    if is_bsuid(to) {
        return Ok(Recipient::UserId(to.to_string()));
    }
    let digits = to.strip_prefix('+').unwrap_or(to);
    if (6..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Recipient::WaId(digits.to_string()));
    }
    Err(invalid(
        "to",
        "must be a phone number in international format (digits) or a user_id (BSUID)",
    ))
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

fn check_text(message: &Value) -> Result<(), Invalid> {
    let text = as_object(message, "text")?;
    only_fields(text, "text", &["body", "preview_url"])?;
    non_empty_str(text, "body", "text.body", TEXT_BODY_MAX)?;
    optional_bool(text, "preview_url", "text.preview_url")
}

fn check_template(message: &Value) -> Result<(), Invalid> {
    let template = as_object(message, "template")?;
    only_fields(template, "template", &["name", "language", "components"])?;
    non_empty_str(template, "name", "template.name", TEMPLATE_NAME_MAX)?;
    let language = template
        .get("language")
        .ok_or_else(|| invalid("template.language", "is required ({\"code\": \"en_US\"})"))?;
    let language = as_object(language, "template.language")?;
    only_fields(language, "template.language", &["code", "policy"])?;
    non_empty_str(language, "code", "template.language.code", 16)?;
    let Some(components) = template.get("components") else {
        return Ok(());
    };
    let components = as_array(components, "template.components")?;
    for (i, component) in components.iter().enumerate() {
        let path = format!("template.components[{i}]");
        let component = as_object(component, &path)?;
        let kind = non_empty_str(component, "type", &format!("{path}.type"), 32)?;
        if !["header", "body", "button", "footer"].contains(&kind) {
            return Err(invalid(
                format!("{path}.type"),
                "must be header, body, button or footer",
            ));
        }
        if kind == "button" {
            non_empty_str(component, "sub_type", &format!("{path}.sub_type"), 32)?;
            let index = component.get("index").ok_or_else(|| {
                invalid(
                    format!("{path}.index"),
                    "a button component names its index",
                )
            })?;
            let index = match index {
                Value::String(s) => s.parse::<u64>().ok(),
                other => other.as_u64(),
            };
            if index.is_none_or(|i| i > 9) {
                return Err(invalid(
                    format!("{path}.index"),
                    "must be a button index, 0 to 9",
                ));
            }
        }
        if let Some(parameters) = component.get("parameters") {
            for (j, parameter) in as_array(parameters, &format!("{path}.parameters"))?
                .iter()
                .enumerate()
            {
                let path = format!("{path}.parameters[{j}]");
                let parameter = as_object(parameter, &path)?;
                let kind = non_empty_str(parameter, "type", &format!("{path}.type"), 32)?;
                if !parameter.contains_key(kind) {
                    return Err(invalid(
                        format!("{path}.{kind}"),
                        format!("a {kind} parameter carries its {kind} value"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Checks a template send against the template as Meta lists it (`components`, with
/// `{{1}}` or `{{name}}` placeholders in its header and body texts): each of those
/// components gets as many parameters as it has placeholders.
pub fn check_template_fits(message: &Value, components: &Value) -> Result<(), Invalid> {
    let given = message.get("components").and_then(Value::as_array);
    for part in ["header", "body"] {
        let Some(text) = components.as_array().and_then(|all| {
            all.iter()
                .find(|c| {
                    c.get("type")
                        .and_then(Value::as_str)
                        .is_some_and(|t| t.eq_ignore_ascii_case(part))
                })
                .and_then(|c| c.get("text"))
                .and_then(Value::as_str)
        }) else {
            continue;
        };
        let wanted = placeholders(text);
        let (index, count) = given
            .and_then(|given| {
                given
                    .iter()
                    .enumerate()
                    .find(|(_, c)| c.get("type").and_then(Value::as_str) == Some(part))
            })
            .map(|(i, c)| {
                let count = c
                    .get("parameters")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                (Some(i), count)
            })
            .unwrap_or((None, 0));
        if count != wanted {
            let field = match index {
                Some(i) => format!("template.components[{i}].parameters"),
                None => "template.components".to_string(),
            };
            return Err(invalid(
                field,
                format!("the template's {part} takes {wanted} parameter(s), {count} given"),
            ));
        }
    }
    Ok(())
}

/// The distinct `{{...}}` placeholders of a template text.
fn placeholders(text: &str) -> usize {
    let mut names = std::collections::HashSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        names.insert(after[..end].trim());
        rest = &after[end + 2..];
    }
    names.len()
}

fn check_media(kind: &str, message: &Value, caption: bool, filename: bool) -> Result<(), Invalid> {
    let media = as_object(message, kind)?;
    let mut allowed = vec!["id", "link"];
    if caption {
        allowed.push("caption");
    }
    if filename {
        allowed.push("filename");
    }
    only_fields(media, kind, &allowed)?;
    match (media.get("id"), media.get("link")) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                format!("{kind}.link"),
                "give the media's id or its link, not both",
            ))
        }
        (None, None) => {
            return Err(invalid(
                format!("{kind}.id"),
                "a media message needs an uploaded media id or a link",
            ))
        }
        (Some(_), None) => {
            non_empty_str(media, "id", &format!("{kind}.id"), 256)?;
        }
        (None, Some(_)) => {
            let link = non_empty_str(media, "link", &format!("{kind}.link"), 2048)?;
            let parsed = url::Url::parse(link).ok();
            if !parsed.is_some_and(|u| u.scheme() == "https" || u.scheme() == "http") {
                return Err(invalid(format!("{kind}.link"), "must be an http(s) URL"));
            }
        }
    }
    if media.contains_key("caption") {
        non_empty_str(media, "caption", &format!("{kind}.caption"), CAPTION_MAX)?;
    }
    if media.contains_key("filename") {
        non_empty_str(media, "filename", &format!("{kind}.filename"), FILENAME_MAX)?;
    }
    Ok(())
}

fn check_location(message: &Value) -> Result<(), Invalid> {
    let location = as_object(message, "location")?;
    only_fields(
        location,
        "location",
        &["latitude", "longitude", "name", "address"],
    )?;
    for (key, bound) in [("latitude", 90.0), ("longitude", 180.0)] {
        let value = location.get(key).and_then(|v| match v {
            Value::String(s) => s.parse::<f64>().ok(),
            other => other.as_f64(),
        });
        if !value.is_some_and(|v| (-bound..=bound).contains(&v)) {
            return Err(invalid(
                format!("location.{key}"),
                format!("is required, a number from -{bound} to {bound}"),
            ));
        }
    }
    for key in ["name", "address"] {
        if location.contains_key(key) {
            non_empty_str(location, key, &format!("location.{key}"), 1024)?;
        }
    }
    Ok(())
}

fn check_contacts(message: &Value) -> Result<(), Invalid> {
    let contacts = as_array(message, "contacts")?;
    if contacts.is_empty() {
        return Err(invalid("contacts", "needs at least one contact card"));
    }
    for (i, contact) in contacts.iter().enumerate() {
        let path = format!("contacts[{i}]");
        let contact = as_object(contact, &path)?;
        let name = contact
            .get("name")
            .ok_or_else(|| invalid(format!("{path}.name"), "a contact card needs a name"))?;
        let name = as_object(name, &format!("{path}.name"))?;
        non_empty_str(
            name,
            "formatted_name",
            &format!("{path}.name.formatted_name"),
            1024,
        )?;
    }
    Ok(())
}

fn check_interactive(message: &Value) -> Result<(), Invalid> {
    let interactive = as_object(message, "interactive")?;
    only_fields(
        interactive,
        "interactive",
        &["type", "header", "body", "footer", "action"],
    )?;
    let kind = non_empty_str(interactive, "type", "interactive.type", 32)?;
    let text_of = |key: &str, max: usize, required: bool| -> Result<(), Invalid> {
        match interactive.get(key) {
            None if required => Err(invalid(
                format!("interactive.{key}.text"),
                format!("a {kind} message needs its {key} text"),
            )),
            None => Ok(()),
            Some(part) => {
                let part = as_object(part, &format!("interactive.{key}"))?;
                if key == "header" && part.get("type").is_some_and(|t| t != "text") {
                    return Ok(());
                }
                non_empty_str(part, "text", &format!("interactive.{key}.text"), max).map(|_| ())
            }
        }
    };
    text_of("header", HEADER_TEXT_MAX, false)?;
    text_of("footer", FOOTER_TEXT_MAX, false)?;
    let action = interactive
        .get("action")
        .ok_or_else(|| invalid("interactive.action", "is required"))?;
    let action = as_object(action, "interactive.action")?;
    match kind {
        "button" => {
            text_of("body", INTERACTIVE_BODY_MAX, true)?;
            let buttons = action
                .get("buttons")
                .ok_or_else(|| invalid("interactive.action.buttons", "is required"))?;
            let buttons = as_array(buttons, "interactive.action.buttons")?;
            if buttons.is_empty() || buttons.len() > REPLY_BUTTONS_MAX {
                return Err(invalid(
                    "interactive.action.buttons",
                    format!("takes 1 to {REPLY_BUTTONS_MAX} reply buttons"),
                ));
            }
            let mut ids = std::collections::HashSet::new();
            let mut titles = std::collections::HashSet::new();
            for (i, button) in buttons.iter().enumerate() {
                let path = format!("interactive.action.buttons[{i}]");
                let button = as_object(button, &path)?;
                if button.get("type") != Some(&Value::from("reply")) {
                    return Err(invalid(format!("{path}.type"), "must be \"reply\""));
                }
                let reply = button
                    .get("reply")
                    .ok_or_else(|| invalid(format!("{path}.reply"), "is required"))?;
                let reply = as_object(reply, &format!("{path}.reply"))?;
                let id = non_empty_str(reply, "id", &format!("{path}.reply.id"), BUTTON_ID_MAX)?;
                let title = non_empty_str(
                    reply,
                    "title",
                    &format!("{path}.reply.title"),
                    BUTTON_TITLE_MAX,
                )?;
                if !ids.insert(id) {
                    return Err(invalid(
                        format!("{path}.reply.id"),
                        "button ids must differ",
                    ));
                }
                if !titles.insert(title) {
                    return Err(invalid(
                        format!("{path}.reply.title"),
                        "button titles must differ",
                    ));
                }
            }
        }
        "list" => {
            text_of("body", LIST_BODY_MAX, true)?;
            non_empty_str(
                action,
                "button",
                "interactive.action.button",
                LIST_BUTTON_MAX,
            )?;
            let sections = action
                .get("sections")
                .ok_or_else(|| invalid("interactive.action.sections", "is required"))?;
            let sections = as_array(sections, "interactive.action.sections")?;
            if sections.is_empty() || sections.len() > LIST_SECTIONS_MAX {
                return Err(invalid(
                    "interactive.action.sections",
                    format!("takes 1 to {LIST_SECTIONS_MAX} sections"),
                ));
            }
            let mut rows_total = 0;
            let mut row_ids = std::collections::HashSet::new();
            for (i, section) in sections.iter().enumerate() {
                let path = format!("interactive.action.sections[{i}]");
                let section = as_object(section, &path)?;
                if sections.len() > 1 || section.contains_key("title") {
                    non_empty_str(
                        section,
                        "title",
                        &format!("{path}.title"),
                        SECTION_TITLE_MAX,
                    )?;
                }
                let rows = section
                    .get("rows")
                    .ok_or_else(|| invalid(format!("{path}.rows"), "is required"))?;
                let rows = as_array(rows, &format!("{path}.rows"))?;
                if rows.is_empty() {
                    return Err(invalid(format!("{path}.rows"), "needs at least one row"));
                }
                for (j, row) in rows.iter().enumerate() {
                    let path = format!("{path}.rows[{j}]");
                    let row = as_object(row, &path)?;
                    let id = non_empty_str(row, "id", &format!("{path}.id"), ROW_ID_MAX)?;
                    non_empty_str(row, "title", &format!("{path}.title"), ROW_TITLE_MAX)?;
                    if row.contains_key("description") {
                        non_empty_str(
                            row,
                            "description",
                            &format!("{path}.description"),
                            ROW_DESCRIPTION_MAX,
                        )?;
                    }
                    if !row_ids.insert(id) {
                        return Err(invalid(format!("{path}.id"), "row ids must differ"));
                    }
                }
                rows_total += rows.len();
            }
            if rows_total > LIST_ROWS_MAX {
                return Err(invalid(
                    "interactive.action.sections",
                    format!("hold at most {LIST_ROWS_MAX} rows in all"),
                ));
            }
        }
        "cta_url" => {
            text_of("body", INTERACTIVE_BODY_MAX, true)?;
            if action.get("name") != Some(&Value::from("cta_url")) {
                return Err(invalid("interactive.action.name", "must be \"cta_url\""));
            }
            let parameters = action
                .get("parameters")
                .ok_or_else(|| invalid("interactive.action.parameters", "is required"))?;
            let parameters = as_object(parameters, "interactive.action.parameters")?;
            non_empty_str(
                parameters,
                "display_text",
                "interactive.action.parameters.display_text",
                BUTTON_TITLE_MAX,
            )?;
            let link = non_empty_str(parameters, "url", "interactive.action.parameters.url", 2048)?;
            if !url::Url::parse(link).is_ok_and(|u| u.scheme() == "https" || u.scheme() == "http") {
                return Err(invalid(
                    "interactive.action.parameters.url",
                    "must be an http(s) URL",
                ));
            }
        }
        other => {
            return Err(invalid(
                "interactive.type",
                format!("{other:?} is not sent by this API (button, list, cta_url)"),
            ))
        }
    }
    Ok(())
}

fn check_reaction(message: &Value) -> Result<(), Invalid> {
    let reaction = as_object(message, "reaction")?;
    only_fields(reaction, "reaction", &["message_id", "emoji"])?;
    non_empty_str(reaction, "message_id", "reaction.message_id", 512)?;
    // An empty emoji takes a reaction back.
    match reaction.get("emoji") {
        Some(Value::String(emoji)) if emoji.chars().count() <= 8 => Ok(()),
        _ => Err(invalid(
            "reaction.emoji",
            "is required: one emoji, or \"\" to remove the reaction",
        )),
    }
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

fn as_object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, Invalid> {
    value
        .as_object()
        .ok_or_else(|| invalid(path, "must be a JSON object"))
}

fn as_array<'a>(value: &'a Value, path: &str) -> Result<&'a Vec<Value>, Invalid> {
    value
        .as_array()
        .ok_or_else(|| invalid(path, "must be a JSON array"))
}

fn only_fields(object: &Map<String, Value>, path: &str, allowed: &[&str]) -> Result<(), Invalid> {
    match object.keys().find(|key| !allowed.contains(&key.as_str())) {
        Some(key) => Err(invalid(
            format!("{path}.{key}"),
            format!("is not a field of {path} ({})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn required_str<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a str, Invalid> {
    match object.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(path, "must be a string")),
        None => Err(invalid(path, "is required")),
    }
}

/// A string of 1 to `max` characters (Meta counts characters, not bytes).
fn non_empty_str<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    path: &str,
    max: usize,
) -> Result<&'a str, Invalid> {
    let text = required_str(object, key, path)?;
    if text.trim().is_empty() {
        return Err(invalid(path, "must not be empty"));
    }
    if text.chars().count() > max {
        return Err(invalid(path, format!("is longer than {max} characters")));
    }
    Ok(text)
}

fn optional_bool(object: &Map<String, Value>, key: &str, path: &str) -> Result<(), Invalid> {
    match object.get(key) {
        None | Some(Value::Bool(_)) => Ok(()),
        Some(_) => Err(invalid(path, "must be true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(body: Value) -> Result<SendRequest, Invalid> {
        parse_send(&body)
    }

    fn field_of(body: Value) -> String {
        send(body).expect_err("refused").field
    }

    #[test]
    fn a_text_goes_to_meta_as_meta_spells_it() {
        let request = send(json!({
            "from_phone_number_id": "100", "to": "+4915100000001", "type": "text",
            "text": {"body": "hello", "preview_url": true}
        }))
        .expect("valid");
        assert_eq!(
            graph_body(&request, "m-1"),
            json!({
                "messaging_product": "whatsapp", "recipient_type": "individual",
                "to": "4915100000001", "biz_opaque_callback_data": "m-1",
                "type": "text", "text": {"body": "hello", "preview_url": true}
            })
        );
        let to_user = send(json!({
            "from_phone_number_id": "100", "to": "US.13491208655302741918", "type": "text",
            "text": {"body": "hello"}
        }))
        .expect("valid");
        assert_eq!(
            graph_body(&to_user, "m-2")["recipient"],
            json!("US.13491208655302741918")
        );
        assert!(graph_body(&to_user, "m-2").get("to").is_none());
    }

    #[test]
    fn a_template_send_gives_each_placeholder_its_parameter() {
        let listed = json!([
            {"type": "HEADER", "format": "TEXT", "text": "Order {{1}}"},
            {"type": "BODY", "text": "Hi {{1}}, order {{2}} ships {{2}} on {{3}}."},
            {"type": "FOOTER", "text": "Reply STOP to opt out"}
        ]);
        let send = |components: Value| json!({"name": "t", "language": {"code": "en"}, "components": components});
        let text = |n: usize| {
            (0..n)
                .map(|i| json!({"type": "text", "text": i.to_string()}))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            check_template_fits(
                &send(
                    json!([{"type": "header", "parameters": text(1)}, {"type": "body", "parameters": text(3)}])
                ),
                &listed
            ),
            Ok(())
        );
        assert_eq!(
            check_template_fits(
                &send(json!([{"type": "header", "parameters": text(1)}, {"type": "body", "parameters": text(2)}])),
                &listed
            )
            .expect_err("one missing")
            .field,
            "template.components[1].parameters"
        );
        assert_eq!(
            check_template_fits(&json!({"name": "t", "language": {"code": "en"}}), &listed)
                .expect_err("none given")
                .field,
            "template.components"
        );
        assert_eq!(
            check_template_fits(
                &send(json!([])),
                &json!([{"type": "BODY", "text": "Thanks!"}])
            ),
            Ok(())
        );
    }

    #[test]
    fn mark_as_read_keeps_metas_shape() {
        let request = send(json!({
            "from_phone_number_id": "100", "status": "read", "message_id": "wamid.IN"
        }))
        .expect("valid");
        assert_eq!(request.kind, OutboundKind::Read);
        assert_eq!(
            graph_body(&request, "m-1"),
            json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.IN"})
        );
    }

    #[test]
    fn each_refusal_names_its_field() {
        let base = |kind: &str, object: Value| json!({"from_phone_number_id": "100", "to": "4915100000001", "type": kind, kind: object});
        let cases = [
            (json!({"to": "1", "type": "text"}), "from_phone_number_id"),
            (base("text", json!({"body": "x".repeat(4097)})), "text.body"),
            (base("text", json!({"body": ""})), "text.body"),
            (
                base("text", json!({"body": "x", "preview_url": "yes"})),
                "text.preview_url",
            ),
            (
                base("text", json!({"body": "x", "bold": true})),
                "text.bold",
            ),
            (base("fax", json!({})), "type"),
            (
                json!({"from_phone_number_id": "100", "to": "not a number", "type": "text", "text": {"body": "x"}}),
                "to",
            ),
            (base("template", json!({"name": "hi"})), "template.language"),
            (
                base(
                    "template",
                    json!({"name": "hi", "language": {"code": "en"}, "components": [{"type": "body", "parameters": [{"type": "text"}]}]}),
                ),
                "template.components[0].parameters[0].text",
            ),
            (base("image", json!({})), "image.id"),
            (
                base("image", json!({"id": "1", "link": "https://x"})),
                "image.link",
            ),
            (
                base("image", json!({"link": "ftp://x/y.png"})),
                "image.link",
            ),
            (
                base("image", json!({"id": "1", "caption": "c".repeat(1025)})),
                "image.caption",
            ),
            (
                base("audio", json!({"id": "1", "caption": "no"})),
                "audio.caption",
            ),
            (
                base("document", json!({"id": "1", "filename": "f".repeat(241)})),
                "document.filename",
            ),
            (
                base("location", json!({"latitude": 91, "longitude": 0})),
                "location.latitude",
            ),
            (base("contacts", json!([])), "contacts"),
            (
                base("contacts", json!([{"name": {}}])),
                "contacts[0].name.formatted_name",
            ),
            (
                base(
                    "interactive",
                    json!({"type": "button", "body": {"text": "pick"}, "action": {"buttons": [
                        {"type": "reply", "reply": {"id": "1", "title": "a"}},
                        {"type": "reply", "reply": {"id": "2", "title": "b"}},
                        {"type": "reply", "reply": {"id": "3", "title": "c"}},
                        {"type": "reply", "reply": {"id": "4", "title": "d"}}]}}),
                ),
                "interactive.action.buttons",
            ),
            (
                base(
                    "interactive",
                    json!({"type": "button", "body": {"text": "pick"}, "action": {"buttons": [
                        {"type": "reply", "reply": {"id": "1", "title": "a button title too long"}}]}}),
                ),
                "interactive.action.buttons[0].reply.title",
            ),
            (
                base(
                    "interactive",
                    json!({"type": "list", "body": {"text": "pick"}, "action": {"button": "Menu", "sections": [
                        {"title": "s", "rows": (0..11).map(|i| json!({"id": i.to_string(), "title": "t"})).collect::<Vec<_>>()}]}}),
                ),
                "interactive.action.sections",
            ),
            (
                base(
                    "interactive",
                    json!({"type": "cta_url", "body": {"text": "see"}, "action": {"name": "cta_url", "parameters": {"display_text": "Open", "url": "nope"}}}),
                ),
                "interactive.action.parameters.url",
            ),
            (
                base("reaction", json!({"message_id": "wamid.1"})),
                "reaction.emoji",
            ),
            (
                json!({"from_phone_number_id": "100", "status": "delivered", "message_id": "w"}),
                "status",
            ),
        ];
        for (body, field) in cases {
            assert_eq!(field_of(body.clone()), field, "{body}");
        }
    }

    #[test]
    fn every_kind_meta_documents_is_accepted() {
        let base = |kind: &str, object: Value| json!({"from_phone_number_id": "100", "to": "4915100000001", "type": kind, kind: object});
        for body in [
            base(
                "template",
                json!({"name": "order_update", "language": {"code": "en_US"}, "components": [
                    {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://x.example/a.png"}}]},
                    {"type": "body", "parameters": [{"type": "text", "text": "42"}]},
                    {"type": "button", "sub_type": "quick_reply", "index": "0", "parameters": [{"type": "payload", "payload": "p"}]}]}),
            ),
            base(
                "image",
                json!({"link": "https://x.example/a.png", "caption": "a"}),
            ),
            base("audio", json!({"id": "1234"})),
            base("video", json!({"id": "1234", "caption": "v"})),
            base(
                "document",
                json!({"id": "1234", "filename": "a.pdf", "caption": "d"}),
            ),
            base("sticker", json!({"id": "1234"})),
            base(
                "location",
                json!({"latitude": 52.5, "longitude": 13.4, "name": "Office"}),
            ),
            base(
                "contacts",
                json!([{"name": {"formatted_name": "Ana"}, "phones": [{"phone": "+1"}]}]),
            ),
            base(
                "interactive",
                json!({"type": "list", "header": {"type": "text", "text": "Menu"}, "body": {"text": "pick"},
                    "footer": {"text": "f"}, "action": {"button": "Open", "sections": [
                    {"title": "A", "rows": [{"id": "a1", "title": "One", "description": "d"}]},
                    {"title": "B", "rows": [{"id": "b1", "title": "Two"}]}]}}),
            ),
            base(
                "interactive",
                json!({"type": "cta_url", "body": {"text": "see"}, "action": {"name": "cta_url",
                    "parameters": {"display_text": "Open", "url": "https://x.example"}}}),
            ),
            base(
                "reaction",
                json!({"message_id": "wamid.1", "emoji": "\u{1F44D}"}),
            ),
            base("reaction", json!({"message_id": "wamid.1", "emoji": ""})),
        ] {
            let request = send(body.clone()).unwrap_or_else(|e| panic!("{body}: {e}"));
            let kind = request.kind.as_str();
            assert_eq!(graph_body(&request, "m")[kind], body[kind]);
        }
    }
}
