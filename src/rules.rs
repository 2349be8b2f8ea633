//! The rules a refused request can break: the vocabulary of every 422 answer's `rule`
//! and every 409 answer's `code`, shared by the places that check input (the HTTP
//! layer, the outbound checks, storage's own validation and its conflicts), so a script
//! can tell "missing" from "too long", or a closed window from a restriction, without
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

/// Declares [`Conflict`] with its codes: every variant is in [`Conflict::ALL`] and
/// has its code, by construction.
macro_rules! conflicts {
    ($($(#[$doc:meta])* $name:ident => $code:literal,)*) => {
        /// The rule a valid request breaks against what is stored: the `code` of a 409
        /// answer (and of a send that failed for it later, where the same rule applies).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Conflict {
            $($(#[$doc])* $name,)*
        }

        impl Conflict {
            /// Every code, for the test that each is produced and for the documentation.
            pub const ALL: &'static [Conflict] = &[$(Conflict::$name),*];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Conflict::$name => $code,)*
                }
            }
        }
    };
}

conflicts! {
    /// `tenant create`: another tenant has the name.
    TenantNameTaken => "tenant_name_taken",
    /// `number add`: the number is another tenant's (or this one's already).
    NumberRegistered => "number_registered",
    /// The tenant's account is closed.
    TenantClosed => "tenant_closed",
    /// A tenant's automations are at their maximum.
    TooManyAutomations => "too_many_automations",
    /// A policy version published before.
    PolicyVersionPublished => "policy_version_published",
    /// An enquiry answered before.
    EnquiryAnswered => "enquiry_answered",
    /// A disclosure whose account holders were told: no bar to lift.
    DisclosureTold => "disclosure_told",
    /// A lift of a request that is not a restriction or objection in force.
    NotLiftable => "not_liftable",
    /// An extension of a request no longer open.
    NotOpen => "not_open",
    /// A second extension.
    AlreadyExtended => "already_extended",
    /// An extension after the original due day.
    ExtensionTooLate => "extension_too_late",
    /// A free-form send without an open customer-service window.
    OutsideWindow => "outside_window",
    /// A send to a contact whose processing is restricted.
    Restricted => "restricted",
    /// A marketing send to a contact who opted out.
    OptedOut => "opted_out",
    /// A marketing send to a contact who objected.
    Objected => "objected",
    /// An automation's cooldown for the contact has not passed, or its welcome was sent
    /// already: nothing is stored, and no run recorded.
    AutomationHeldBack => "automation_held_back",
    /// An export asked for before its request completed.
    ExportNotReady => "export_not_ready",
    /// Media asked for while it is still being fetched from Meta.
    MediaPending => "media_pending",
    /// Media Meta would not give.
    MediaFailed => "media_failed",
    /// Media held but no longer readable (its key destroyed).
    MediaUnreadable => "media_unreadable",
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
