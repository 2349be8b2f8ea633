//! One automation as a tenant defines it (`/v1/automations`): its trigger (a keyword
//! rule, the welcome, the away message), its reply, its cooldown. Checked here before
//! it is stored, and compiled once when its tenant's automations are loaded.

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::FieldError;
use crate::ids::PhoneNumberId;
use crate::rules::Rule as FieldRule;
use crate::whatsapp::outbound::{self, OutboundKind, Recipient, SendRequest, Target};

const NAME_CHARS_MAX: usize = 100;
const PATTERN_CHARS_MAX: usize = 500;
/// The most a keyword rule's compiled regex may take: matching stays linear in the
/// text whatever the pattern; this bounds the memory a pattern can ask for.
const REGEX_SIZE_MAX: usize = 256 * 1024;
const COOLDOWN_SECS_MAX: u64 = 365 * 86_400;
/// An away message repeats at most this often to one contact unless the rule says.
const AWAY_COOLDOWN_DEFAULT_SECS: u64 = 86_400;

/// What starts an automation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// An inbound text that matches `pattern`.
    Keyword {
        #[serde(rename = "match")]
        match_kind: MatchKind,
        pattern: String,
        #[serde(default)]
        case_sensitive: bool,
    },
    /// A contact's first inbound message.
    Welcome,
    /// An inbound message outside the tenant's business hours.
    Away,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchKind {
    /// The whole message, surrounding spaces and punctuation aside.
    Exact,
    /// Anywhere in the message.
    Contains,
    /// A regular expression (Rust's `regex` syntax) found in the message.
    Regex,
}

/// An automation as stored and shown (without its id and times).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub name: String,
    pub enabled: bool,
    pub trigger: Trigger,
    /// The message sent: `{"type": "text", "text": {...}}`, any free-form kind.
    pub reply: Value,
    /// The least time between two runs of this rule for one contact; a welcome runs
    /// once per contact.
    pub cooldown_secs: u64,
}

impl Definition {
    /// Checks a `POST`/`PUT /v1/automations` body, naming the field that is wrong.
    pub fn from_json(body: &Value) -> Result<Definition, FieldError> {
        let Some(object) = body.as_object() else {
            return Err(FieldError::new(
                FieldRule::Type,
                "body",
                "must be a JSON object",
            ));
        };
        for key in object.keys() {
            if !matches!(
                key.as_str(),
                "name" | "enabled" | "trigger" | "reply" | "cooldown_secs" | "position"
            ) {
                return Err(FieldError::new(FieldRule::Unknown,
                    key,
                    "is not a field of an automation (name, enabled, trigger, reply, cooldown_secs, position)",
                ));
            }
        }
        let name = object
            .get("name")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|n| !n.is_empty() && n.chars().count() <= NAME_CHARS_MAX)
            .ok_or_else(|| {
                FieldError::new(
                    FieldRule::Length,
                    "name",
                    format!("is required: a text of 1 to {NAME_CHARS_MAX} characters"),
                )
            })?;
        let enabled = match object.get("enabled") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(FieldError::new(
                    FieldRule::Type,
                    "enabled",
                    "must be true or false",
                ))
            }
        };
        let trigger_value = object.get("trigger").ok_or_else(|| {
            FieldError::new(FieldRule::Required,
                "trigger",
                "is required: {\"type\": \"keyword\", \"match\", \"pattern\"}, {\"type\": \"welcome\"} or {\"type\": \"away\"}",
            )
        })?;
        let trigger: Trigger = serde_json::from_value(trigger_value.clone())
            .map_err(|e| FieldError::new(FieldRule::OneOf, "trigger", format!("{e}")))?;
        if let Trigger::Keyword {
            match_kind,
            pattern,
            case_sensitive,
        } = &trigger
        {
            if pattern.trim().is_empty() || pattern.chars().count() > PATTERN_CHARS_MAX {
                return Err(FieldError::new(
                    FieldRule::Length,
                    "trigger.pattern",
                    format!("must be a text of 1 to {PATTERN_CHARS_MAX} characters"),
                ));
            }
            if *match_kind == MatchKind::Regex {
                compile(pattern, *case_sensitive).map_err(|e| {
                    FieldError::new(
                        FieldRule::Format,
                        "trigger.pattern",
                        format!("is not a usable regex: {e}"),
                    )
                })?;
            }
        }
        let reply = object.get("reply").ok_or_else(|| {
            FieldError::new(
                FieldRule::Required,
                "reply",
                "is required: the message to send",
            )
        })?;
        check_reply(reply)?;
        let cooldown_secs = match object.get("cooldown_secs") {
            None | Some(Value::Null) => match trigger {
                Trigger::Away => AWAY_COOLDOWN_DEFAULT_SECS,
                _ => 0,
            },
            Some(value) => value
                .as_u64()
                .filter(|secs| *secs <= COOLDOWN_SECS_MAX)
                .ok_or_else(|| {
                    FieldError::new(
                        FieldRule::Range,
                        "cooldown_secs",
                        format!("must be a whole number of seconds from 0 to {COOLDOWN_SECS_MAX}"),
                    )
                })?,
        };
        Ok(Definition {
            name: name.to_string(),
            enabled,
            trigger,
            reply: reply.clone(),
            cooldown_secs,
        })
    }
}

/// A `position` given in the body: where the rule goes among its tenant's.
pub fn position(body: &Value) -> Result<Option<i64>, FieldError> {
    match body.get("position") {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_i64()
            .filter(|p| (0..=1_000_000).contains(p))
            .map(Some)
            .ok_or_else(|| {
                FieldError::new(
                    FieldRule::Range,
                    "position",
                    "must be a whole number from 0 to 1000000",
                )
            }),
    }
}

/// A reply is a free-form message as `POST /v1/messages` takes it, without its sender
/// and recipient (the contact who wrote, on the number they wrote to). A template
/// needs no automation (a reply is inside the window); a reaction or a read receipt
/// answers nothing.
fn check_reply(reply: &Value) -> Result<(), FieldError> {
    let Some(object) = reply.as_object() else {
        return Err(FieldError::new(
            FieldRule::Type,
            "reply",
            "must be a message object: {\"type\": \"text\", \"text\": {\"body\": ...}}",
        ));
    };
    let kind = object.get("type").and_then(Value::as_str).unwrap_or("");
    if matches!(kind, "template" | "reaction") {
        return Err(FieldError::new(
            FieldRule::OneOf,
            "reply.type",
            format!("an automation replies with a free-form message, not a {kind}"),
        ));
    }
    for key in object.keys() {
        if key != "type" && key != kind {
            return Err(FieldError::new(
                FieldRule::Unknown,
                format!("reply.{key}"),
                "is not part of a reply (type and the type's object)",
            ));
        }
    }
    let mut send = object.clone();
    send.insert("from_phone_number_id".into(), json!("0"));
    send.insert("to".into(), json!("15550000000"));
    outbound::parse_send(&Value::Object(send)).map_err(|e| {
        FieldError::new(
            e.rule,
            if e.field == "type" || e.field.starts_with(kind) && !kind.is_empty() {
                format!("reply.{}", e.field)
            } else {
                "reply".to_string()
            },
            e.message,
        )
    })?;
    Ok(())
}

fn compile(pattern: &str, case_sensitive: bool) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .case_insensitive(!case_sensitive)
        .size_limit(REGEX_SIZE_MAX)
        .dfa_size_limit(REGEX_SIZE_MAX)
        .build()
}

/// A stored automation, ready to match.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub definition: Definition,
    matcher: Option<Matcher>,
}

#[derive(Debug, Clone)]
enum Matcher {
    Exact(String),
    ExactCased(String),
    Contains(String),
    ContainsCased(String),
    Regex(Regex),
}

impl Rule {
    /// Compiles a stored definition; `None` if it no longer compiles (checked when it
    /// was stored, so only a change of engine could do that).
    pub fn compile(id: String, definition: Definition) -> Option<Rule> {
        let matcher = match &definition.trigger {
            Trigger::Keyword {
                match_kind,
                pattern,
                case_sensitive,
            } => Some(match (match_kind, case_sensitive) {
                (MatchKind::Exact, false) => Matcher::Exact(normalize(pattern).to_lowercase()),
                (MatchKind::Exact, true) => Matcher::ExactCased(normalize(pattern).to_string()),
                (MatchKind::Contains, false) => Matcher::Contains(pattern.to_lowercase()),
                (MatchKind::Contains, true) => Matcher::ContainsCased(pattern.clone()),
                (MatchKind::Regex, _) => Matcher::Regex(compile(pattern, *case_sensitive).ok()?),
            }),
            Trigger::Welcome | Trigger::Away => None,
        };
        Some(Rule {
            id,
            definition,
            matcher,
        })
    }

    /// Whether an inbound text sets this keyword rule off.
    pub fn matches(&self, text: &str) -> bool {
        match &self.matcher {
            None => false,
            Some(Matcher::Exact(word)) => normalize(text).to_lowercase() == *word,
            Some(Matcher::ExactCased(word)) => normalize(text) == word,
            Some(Matcher::Contains(part)) => text.to_lowercase().contains(part.as_str()),
            Some(Matcher::ContainsCased(part)) => text.contains(part.as_str()),
            Some(Matcher::Regex(regex)) => regex.is_match(text),
        }
    }

    /// The reply as a send from `phone_number_id` to `to`.
    pub fn reply_to(&self, phone_number_id: &PhoneNumberId, to: Recipient) -> Option<SendRequest> {
        let reply = &self.definition.reply;
        let kind_name = reply.get("type")?.as_str()?;
        Some(SendRequest {
            from_phone_number_id: phone_number_id.clone(),
            kind: OutboundKind::parse(kind_name)?,
            to: Target::Recipient(to),
            message: reply.get(kind_name)?.clone(),
            context: None,
        })
    }
}

/// A message as an exact keyword compares it: without surrounding spaces and
/// punctuation.
fn normalize(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(trigger: Value) -> Rule {
        let definition = Definition::from_json(&json!({
            "name": "r",
            "trigger": trigger,
            "reply": {"type": "text", "text": {"body": "hi"}},
        }))
        .expect("valid");
        Rule::compile("id".into(), definition).expect("compiles")
    }

    #[test]
    fn keyword_rules_match_as_their_kind_says() {
        let exact = rule(json!({"type": "keyword", "match": "exact", "pattern": "Price"}));
        assert!(exact.matches("  price? "));
        assert!(!exact.matches("the price"));
        let cased = rule(
            json!({"type": "keyword", "match": "exact", "pattern": "Price", "case_sensitive": true}),
        );
        assert!(!cased.matches("price"));
        let contains = rule(json!({"type": "keyword", "match": "contains", "pattern": "ÖFFNUNG"}));
        assert!(contains.matches("Wann ist die Öffnungszeit?"));
        let regex =
            rule(json!({"type": "keyword", "match": "regex", "pattern": r"^order\s+#?\d+"}));
        assert!(regex.matches("ORDER #1234 where is it"));
        assert!(!regex.matches("my order"));
    }

    #[test]
    fn a_pathological_pattern_stays_linear() {
        // Catastrophic for a backtracking engine; linear here.
        let regex = rule(json!({"type": "keyword", "match": "regex", "pattern": "(a+)+$"}));
        let text = format!("{}!", "a".repeat(4000));
        let started = std::time::Instant::now();
        assert!(!regex.matches(&text));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn wrong_definitions_name_their_field() {
        let reply = json!({"type": "text", "text": {"body": "hi"}});
        for (body, field) in [
            (
                json!({"trigger": {"type": "welcome"}, "reply": reply}),
                "name",
            ),
            (json!({"name": "x", "reply": reply}), "trigger"),
            (
                json!({"name": "x", "trigger": {"type": "keyword", "match": "regex", "pattern": "("}, "reply": reply}),
                "trigger.pattern",
            ),
            (
                json!({"name": "x", "trigger": {"type": "keyword", "match": "regex", "pattern": "\\w{1000}{1000}"}, "reply": reply}),
                "trigger.pattern",
            ),
            (
                json!({"name": "x", "trigger": {"type": "welcome"}, "reply": {"type": "text", "text": {"body": ""}}}),
                "reply.text.body",
            ),
            (
                json!({"name": "x", "trigger": {"type": "welcome"}, "reply": {"type": "template", "template": {}}}),
                "reply.type",
            ),
            (
                json!({"name": "x", "trigger": {"type": "welcome"}, "reply": reply, "cooldown_secs": -1}),
                "cooldown_secs",
            ),
            (
                json!({"name": "x", "trigger": {"type": "welcome"}, "reply": reply, "colour": 1}),
                "colour",
            ),
        ] {
            let err = Definition::from_json(&body).expect_err("refused");
            assert_eq!(err.field, field, "{body}: {err:?}");
        }
    }

    #[test]
    fn an_away_rule_repeats_daily_unless_told() {
        let away = rule(json!({"type": "away"}));
        assert_eq!(away.definition.cooldown_secs, 86_400);
    }
}
