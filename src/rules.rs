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

/// The rule a valid request breaks against what is stored: the `code` of a 409 answer
/// (and of a send that failed for it later, where the same rule applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Conflict {
    /// `tenant create`: another tenant has the name.
    TenantNameTaken,
    /// `number add`: the number is another tenant's (or this one's already).
    NumberRegistered,
    /// The tenant's account is closed.
    TenantClosed,
    /// A tenant's automations are at their maximum.
    TooManyAutomations,
    /// A policy version published before.
    PolicyVersionPublished,
    /// An enquiry answered before.
    EnquiryAnswered,
    /// A disclosure whose account holders were told: no bar to lift.
    DisclosureTold,
    /// A lift of a request that is not a restriction or objection in force.
    NotLiftable,
    /// An extension of a request no longer open.
    NotOpen,
    /// A second extension.
    AlreadyExtended,
    /// An extension after the original due day.
    ExtensionTooLate,
    /// A free-form send without an open customer-service window.
    OutsideWindow,
    /// A send to a contact whose processing is restricted.
    Restricted,
    /// A marketing send to a contact who opted out.
    OptedOut,
    /// A marketing send to a contact who objected.
    Objected,
    /// An automation's cooldown for the contact has not passed, or its welcome was sent
    /// already: nothing is stored, and no run recorded.
    AutomationHeldBack,
    /// An export asked for before its request completed.
    ExportNotReady,
    /// Media asked for while it is still being fetched from Meta.
    MediaPending,
    /// Media Meta would not give.
    MediaFailed,
    /// Media held but no longer readable (its key destroyed).
    MediaUnreadable,
}

impl Conflict {
    /// Every code, for the test that each is produced and for the documentation.
    pub const ALL: [Conflict; 20] = [
        Conflict::TenantNameTaken,
        Conflict::NumberRegistered,
        Conflict::TenantClosed,
        Conflict::TooManyAutomations,
        Conflict::PolicyVersionPublished,
        Conflict::EnquiryAnswered,
        Conflict::DisclosureTold,
        Conflict::NotLiftable,
        Conflict::NotOpen,
        Conflict::AlreadyExtended,
        Conflict::ExtensionTooLate,
        Conflict::OutsideWindow,
        Conflict::Restricted,
        Conflict::OptedOut,
        Conflict::Objected,
        Conflict::AutomationHeldBack,
        Conflict::ExportNotReady,
        Conflict::MediaPending,
        Conflict::MediaFailed,
        Conflict::MediaUnreadable,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Conflict::TenantNameTaken => "tenant_name_taken",
            Conflict::NumberRegistered => "number_registered",
            Conflict::TenantClosed => "tenant_closed",
            Conflict::TooManyAutomations => "too_many_automations",
            Conflict::PolicyVersionPublished => "policy_version_published",
            Conflict::EnquiryAnswered => "enquiry_answered",
            Conflict::DisclosureTold => "disclosure_told",
            Conflict::NotLiftable => "not_liftable",
            Conflict::NotOpen => "not_open",
            Conflict::AlreadyExtended => "already_extended",
            Conflict::ExtensionTooLate => "extension_too_late",
            Conflict::OutsideWindow => "outside_window",
            Conflict::Restricted => "restricted",
            Conflict::OptedOut => "opted_out",
            Conflict::Objected => "objected",
            Conflict::AutomationHeldBack => "automation_held_back",
            Conflict::ExportNotReady => "export_not_ready",
            Conflict::MediaPending => "media_pending",
            Conflict::MediaFailed => "media_failed",
            Conflict::MediaUnreadable => "media_unreadable",
        }
    }
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
