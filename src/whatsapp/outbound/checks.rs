//! Each message type's fields checked against Meta's documented limits (Cloud API
//! reference, messages), each refusal naming the field as the request spells it.

use serde_json::{Map, Value};

use super::invalid;
use crate::rules::{FieldError, Rule};

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

pub(super) fn check_text(message: &Value) -> Result<(), FieldError> {
    let text = as_object(message, "text")?;
    only_fields(text, "text", &["body", "preview_url"])?;
    non_empty_str(text, "body", "text.body", TEXT_BODY_MAX)?;
    optional_bool(text, "preview_url", "text.preview_url")
}

pub(super) fn check_template(message: &Value) -> Result<(), FieldError> {
    let template = as_object(message, "template")?;
    only_fields(template, "template", &["name", "language", "components"])?;
    non_empty_str(template, "name", "template.name", TEMPLATE_NAME_MAX)?;
    let language = template.get("language").ok_or_else(|| {
        invalid(
            Rule::Required,
            "template.language",
            "is required ({\"code\": \"en_US\"})",
        )
    })?;
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
                Rule::OneOf,
                format!("{path}.type"),
                "must be header, body, button or footer",
            ));
        }
        if kind == "button" {
            non_empty_str(component, "sub_type", &format!("{path}.sub_type"), 32)?;
            let index = component.get("index").ok_or_else(|| {
                invalid(
                    Rule::Required,
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
                    Rule::Range,
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
                        Rule::Required,
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
pub fn check_template_fits(message: &Value, components: &Value) -> Result<(), FieldError> {
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
                Rule::Count,
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

pub(super) fn check_media(
    kind: &str,
    message: &Value,
    caption: bool,
    filename: bool,
) -> Result<(), FieldError> {
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
                Rule::Combination,
                format!("{kind}.link"),
                "give the media's id or its link, not both",
            ))
        }
        (None, None) => {
            return Err(invalid(
                Rule::Required,
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
                return Err(invalid(
                    Rule::Format,
                    format!("{kind}.link"),
                    "must be an http(s) URL",
                ));
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

pub(super) fn check_location(message: &Value) -> Result<(), FieldError> {
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
                Rule::Range,
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

pub(super) fn check_contacts(message: &Value) -> Result<(), FieldError> {
    let contacts = as_array(message, "contacts")?;
    if contacts.is_empty() {
        return Err(invalid(
            Rule::Count,
            "contacts",
            "needs at least one contact card",
        ));
    }
    for (i, contact) in contacts.iter().enumerate() {
        let path = format!("contacts[{i}]");
        let contact = as_object(contact, &path)?;
        let name = contact.get("name").ok_or_else(|| {
            invalid(
                Rule::Required,
                format!("{path}.name"),
                "a contact card needs a name",
            )
        })?;
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

pub(super) fn check_interactive(message: &Value) -> Result<(), FieldError> {
    let interactive = as_object(message, "interactive")?;
    only_fields(
        interactive,
        "interactive",
        &["type", "header", "body", "footer", "action"],
    )?;
    let kind = non_empty_str(interactive, "type", "interactive.type", 32)?;
    let text_of = |key: &str, max: usize, required: bool| -> Result<(), FieldError> {
        match interactive.get(key) {
            None if required => Err(invalid(
                Rule::Required,
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
        .ok_or_else(|| invalid(Rule::Required, "interactive.action", "is required"))?;
    let action = as_object(action, "interactive.action")?;
    match kind {
        "button" => {
            text_of("body", INTERACTIVE_BODY_MAX, true)?;
            let buttons = action.get("buttons").ok_or_else(|| {
                invalid(Rule::Required, "interactive.action.buttons", "is required")
            })?;
            let buttons = as_array(buttons, "interactive.action.buttons")?;
            if buttons.is_empty() || buttons.len() > REPLY_BUTTONS_MAX {
                return Err(invalid(
                    Rule::Count,
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
                    return Err(invalid(
                        Rule::OneOf,
                        format!("{path}.type"),
                        "must be \"reply\"",
                    ));
                }
                let reply = button.get("reply").ok_or_else(|| {
                    invalid(Rule::Required, format!("{path}.reply"), "is required")
                })?;
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
                        Rule::Unique,
                        format!("{path}.reply.id"),
                        "button ids must differ",
                    ));
                }
                if !titles.insert(title) {
                    return Err(invalid(
                        Rule::Unique,
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
            let sections = action.get("sections").ok_or_else(|| {
                invalid(Rule::Required, "interactive.action.sections", "is required")
            })?;
            let sections = as_array(sections, "interactive.action.sections")?;
            if sections.is_empty() || sections.len() > LIST_SECTIONS_MAX {
                return Err(invalid(
                    Rule::Count,
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
                let rows = section.get("rows").ok_or_else(|| {
                    invalid(Rule::Required, format!("{path}.rows"), "is required")
                })?;
                let rows = as_array(rows, &format!("{path}.rows"))?;
                if rows.is_empty() {
                    return Err(invalid(
                        Rule::Count,
                        format!("{path}.rows"),
                        "needs at least one row",
                    ));
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
                        return Err(invalid(
                            Rule::Unique,
                            format!("{path}.id"),
                            "row ids must differ",
                        ));
                    }
                }
                rows_total += rows.len();
            }
            if rows_total > LIST_ROWS_MAX {
                return Err(invalid(
                    Rule::Count,
                    "interactive.action.sections",
                    format!("hold at most {LIST_ROWS_MAX} rows in all"),
                ));
            }
        }
        "cta_url" => {
            text_of("body", INTERACTIVE_BODY_MAX, true)?;
            if action.get("name") != Some(&Value::from("cta_url")) {
                return Err(invalid(
                    Rule::OneOf,
                    "interactive.action.name",
                    "must be \"cta_url\"",
                ));
            }
            let parameters = action.get("parameters").ok_or_else(|| {
                invalid(
                    Rule::Required,
                    "interactive.action.parameters",
                    "is required",
                )
            })?;
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
                    Rule::Format,
                    "interactive.action.parameters.url",
                    "must be an http(s) URL",
                ));
            }
        }
        other => {
            return Err(invalid(
                Rule::OneOf,
                "interactive.type",
                format!("{other:?} is not sent by this API (button, list, cta_url)"),
            ))
        }
    }
    Ok(())
}

pub(super) fn check_reaction(message: &Value) -> Result<(), FieldError> {
    let reaction = as_object(message, "reaction")?;
    only_fields(reaction, "reaction", &["message_id", "emoji"])?;
    non_empty_str(reaction, "message_id", "reaction.message_id", 512)?;
    // An empty emoji takes a reaction back.
    match reaction.get("emoji") {
        Some(Value::String(emoji)) if emoji.chars().count() <= 8 => Ok(()),
        _ => Err(invalid(
            Rule::Required,
            "reaction.emoji",
            "is required: one emoji, or \"\" to remove the reaction",
        )),
    }
}

pub(super) fn as_object<'a>(
    value: &'a Value,
    path: &str,
) -> Result<&'a Map<String, Value>, FieldError> {
    value
        .as_object()
        .ok_or_else(|| invalid(Rule::Type, path, "must be a JSON object"))
}

fn as_array<'a>(value: &'a Value, path: &str) -> Result<&'a Vec<Value>, FieldError> {
    value
        .as_array()
        .ok_or_else(|| invalid(Rule::Type, path, "must be a JSON array"))
}

fn only_fields(
    object: &Map<String, Value>,
    path: &str,
    allowed: &[&str],
) -> Result<(), FieldError> {
    match object.keys().find(|key| !allowed.contains(&key.as_str())) {
        Some(key) => Err(invalid(
            Rule::Unknown,
            format!("{path}.{key}"),
            format!("is not a field of {path} ({})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

pub(super) fn required_str<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a str, FieldError> {
    match object.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(Rule::Type, path, "must be a string")),
        None => Err(invalid(Rule::Required, path, "is required")),
    }
}

/// A string of 1 to `max` characters (Meta counts characters, not bytes).
pub(super) fn non_empty_str<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    path: &str,
    max: usize,
) -> Result<&'a str, FieldError> {
    let text = required_str(object, key, path)?;
    if text.trim().is_empty() {
        return Err(invalid(Rule::Length, path, "must not be empty"));
    }
    if text.chars().count() > max {
        return Err(invalid(
            Rule::Length,
            path,
            format!("is longer than {max} characters"),
        ));
    }
    Ok(text)
}

fn optional_bool(object: &Map<String, Value>, key: &str, path: &str) -> Result<(), FieldError> {
    match object.get(key) {
        None | Some(Value::Bool(_)) => Ok(()),
        Some(_) => Err(invalid(Rule::Type, path, "must be true or false")),
    }
}
