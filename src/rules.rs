//! The rules a refused field can break: the vocabulary of every 422 answer's `rule`,
//! shared by the places that check input (the HTTP layer, the outbound checks,
//! storage's own validation), so a script can tell "missing" from "too long" without
//! reading the message.

use serde::Serialize;

/// Why a field was refused. The answer is `{"code": "invalid_field", "field", "rule",
/// "message"}`: `field` names the value, `rule` this, `message` the specifics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Absent or null where a value is needed.
    Required,
    /// Of the wrong kind: not JSON, a string for a number, an object for an array.
    Type,
    /// Of the right kind but malformed: an address, a URL, a date, an id, a pattern.
    Format,
    /// A string empty or longer than allowed.
    Length,
    /// A list with too few or too many items.
    Count,
    /// A number outside what is allowed.
    Range,
    /// Not one of the values allowed.
    OneOf,
    /// Items of a list that must differ and do not.
    Unique,
    /// A name that is not known: a field or parameter not taken, a tenant or
    /// template that does not exist.
    Unknown,
    /// Valid alone, but not together with another field given.
    Combination,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Required => "required",
            Rule::Type => "type",
            Rule::Format => "format",
            Rule::Length => "length",
            Rule::Count => "count",
            Rule::Range => "range",
            Rule::OneOf => "one_of",
            Rule::Unique => "unique",
            Rule::Unknown => "unknown",
            Rule::Combination => "combination",
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A value refused: the field as a dotted path (`text.body`,
/// `interactive.action.buttons`), the rule it breaks, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub rule: Rule,
    pub message: String,
}

impl FieldError {
    pub fn new(rule: Rule, field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            rule,
            message: message.into(),
        }
    }
}
