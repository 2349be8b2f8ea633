//! Retention: how long each category of data is kept, per tenant over the operator's
//! defaults. The privacy policy promises personal data is kept only as long as
//! necessary; this module is where "necessary" becomes a number of days. The sweep
//! that deletes what is past its period is storage's
//! ([`crate::storage::retention::sweep`]).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::config::RetentionSettings;
use crate::rules::{FieldError, Rule};

/// The longest period accepted anywhere: a hundred years.
pub const MAX_DAYS: u32 = crate::config::MAX_RETENTION_DAYS;
pub const DAY_MS: i64 = 86_400_000;

/// A category of data with its own retention period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Messages, with their statuses and media, by their timestamp.
    Messages,
    /// Downloaded media files of inbound messages.
    Media,
    /// Raw webhook payloads: processed inbox rows and content stored raw.
    RawPayloads,
    /// Automation runs and the daily usage counts.
    AutomationRuns,
    /// Finished sends (with their delivery errors), idempotency keys and the
    /// sweeps' own records.
    Technical,
    /// Conversations closed through the API, with their messages.
    ClosedConversations,
    /// Access and portability exports.
    Exports,
    /// Audit records.
    Audit,
}

impl Category {
    /// In the order a sweep deletes them: media before the messages that would take
    /// them along, messages before the closed conversations that would, so each row is
    /// counted under its own category and a dry run counts what a real run deletes.
    pub const ALL: [Category; 8] = [
        Category::Media,
        Category::Messages,
        Category::ClosedConversations,
        Category::RawPayloads,
        Category::AutomationRuns,
        Category::Technical,
        Category::Exports,
        Category::Audit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Messages => "messages",
            Category::Media => "media",
            Category::RawPayloads => "raw_payloads",
            Category::AutomationRuns => "automation_runs",
            Category::Technical => "technical",
            Category::ClosedConversations => "closed_conversations",
            Category::Exports => "exports",
            Category::Audit => "audit",
        }
    }

    /// What the category holds, as the processing record tells tenants.
    pub fn description(self) -> &'static str {
        match self {
            Category::Messages => "messages to and from your contacts, with their statuses",
            Category::Media => "media files your contacts sent",
            Category::RawPayloads => "Meta's webhook payloads as received, sealed",
            Category::AutomationRuns => "automation runs and daily usage counts",
            Category::Technical => "finished sends, their delivery errors and idempotency keys",
            Category::ClosedConversations => "conversations you closed, with their messages",
            Category::Exports => "access and portability exports",
            Category::Audit => "the audit log of compliance steps and operator actions",
        }
    }

    pub fn parse(name: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == name)
    }

    pub fn operator_default(self, settings: &RetentionSettings) -> u32 {
        let days = &settings.days;
        match self {
            Category::Messages => days.messages,
            Category::Media => days.media,
            Category::RawPayloads => days.raw_payloads,
            Category::AutomationRuns => days.automation_runs,
            Category::Technical => days.technical,
            Category::ClosedConversations => days.closed_conversations,
            Category::Exports => days.exports,
            Category::Audit => days.audit,
        }
    }
}

/// A tenant's own periods; a category it has not set follows the operator's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policies {
    pub days: BTreeMap<Category, u32>,
}

/// The bounds a tenant's periods must keep, from the configuration.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// The operator's minimum for audit records.
    pub audit_min_days: u32,
    /// Raw payloads' day keys are destroyed after this many days for every tenant.
    pub raw_payloads_max_days: u32,
}

/// What a `PUT /v1/retention` body changes: `Some(days)` sets a category, `None`
/// (JSON null) returns it to the operator's default.
pub type Changes = BTreeMap<Category, Option<u32>>;

impl Policies {
    /// The period in force for `category`: the tenant's own, else the operator's,
    /// within the operator's bounds as they stand now (a period set before the
    /// operator changed them follows them).
    pub fn days(&self, category: Category, settings: &crate::config::Settings) -> u32 {
        let days = self
            .days
            .get(&category)
            .copied()
            .unwrap_or_else(|| category.operator_default(&settings.retention));
        match category {
            Category::RawPayloads => days.min(settings.inbox.keep_raw_days),
            Category::Audit => days.max(settings.retention.audit_min_days),
            _ => days,
        }
    }

    /// Reads `{"categories": {"messages": {"days": 30}, "media": {"days": null}}}`;
    /// a category left out stays as it is.
    pub fn changes_from_json(body: &Value, bounds: &Bounds) -> Result<Changes, FieldError> {
        let Some(object) = body.as_object() else {
            return Err(FieldError::new(
                Rule::Type,
                "body",
                "the body must be a JSON object",
            ));
        };
        if let Some(unknown) = object.keys().find(|k| *k != "categories") {
            return Err(FieldError::new(
                Rule::Unknown,
                unknown.as_str(),
                "unknown field: only `categories` can be set",
            ));
        }
        let Some(categories) = object.get("categories").and_then(Value::as_object) else {
            return Err(FieldError::new(
                Rule::Type,
                "categories",
                "must be an object of categories, each {\"days\": N or null}",
            ));
        };
        let mut changes = Changes::new();
        for (name, policy) in categories {
            let field = format!("categories.{name}");
            let Some(category) = Category::parse(name) else {
                let known: Vec<&str> = Category::ALL.iter().map(|c| c.as_str()).collect();
                return Err(FieldError::new(
                    Rule::Unknown,
                    field,
                    format!("unknown category; known: {}", known.join(", ")),
                ));
            };
            let Some(policy) = policy.as_object() else {
                return Err(FieldError::new(
                    Rule::Type,
                    field,
                    "must be an object {\"days\": N or null}",
                ));
            };
            if let Some(unknown) = policy.keys().find(|k| *k != "days") {
                return Err(FieldError::new(
                    Rule::Unknown,
                    format!("{field}.{unknown}"),
                    "unknown field: a category has only `days`",
                ));
            }
            let field = format!("{field}.days");
            let days = match policy.get("days") {
                None => {
                    return Err(FieldError::new(
                        Rule::Required,
                        field,
                        "is required (null: the default)",
                    ))
                }
                Some(Value::Null) => None,
                Some(value) => Some(
                    value
                        .as_u64()
                        .filter(|d| *d <= u64::from(MAX_DAYS))
                        .map(|d| d as u32)
                        .ok_or_else(|| {
                            FieldError::new(
                                Rule::Range,
                                field.clone(),
                                format!("must be a whole number of days from 0 to {MAX_DAYS}"),
                            )
                        })?,
                ),
            };
            if let Some(days) = days {
                bounds.check(category, days, &field)?;
            }
            changes.insert(category, days);
        }
        Ok(changes)
    }
}

impl Bounds {
    pub fn from_settings(settings: &crate::config::Settings) -> Bounds {
        Bounds {
            audit_min_days: settings.retention.audit_min_days,
            raw_payloads_max_days: settings.inbox.keep_raw_days,
        }
    }

    fn check(&self, category: Category, days: u32, field: &str) -> Result<(), FieldError> {
        match category {
            Category::Audit if days < self.audit_min_days => Err(FieldError::new(
                Rule::Range,
                field,
                format!(
                    "audit records are kept at least {} days (the operator's minimum)",
                    self.audit_min_days
                ),
            )),
            Category::RawPayloads if days > self.raw_payloads_max_days => Err(FieldError::new(
                Rule::Range,
                field,
                format!(
                    "raw payloads are kept at most {} days (inbox.keep_raw_days: their \
                     day keys are destroyed then)",
                    self.raw_payloads_max_days
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Rows deleted (or, dry, that would be), per category.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Deleted(pub BTreeMap<String, u64>);

impl Deleted {
    /// Every category at zero, so a report always names them all.
    pub fn zero() -> Deleted {
        Deleted(
            Category::ALL
                .iter()
                .map(|c| (c.as_str().to_string(), 0))
                .collect(),
        )
    }

    pub fn add(&mut self, category: Category, rows: u64) {
        *self.0.entry(category.as_str().to_string()).or_default() += rows;
    }

    pub fn merge(&mut self, other: &Deleted) {
        for (category, rows) in &other.0 {
            *self.0.entry(category.clone()).or_default() += rows;
        }
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bounds() -> Bounds {
        Bounds {
            audit_min_days: 365,
            raw_payloads_max_days: 30,
        }
    }

    #[test]
    fn a_change_names_the_field_it_refuses() {
        let refused = |body: Value| Policies::changes_from_json(&body, &bounds()).unwrap_err();
        assert_eq!(
            refused(json!({"categories": {"messages": {"days": -1}}})).field,
            "categories.messages.days"
        );
        assert_eq!(
            refused(json!({"categories": {"messages": {"days": "30"}}})).field,
            "categories.messages.days"
        );
        assert_eq!(
            refused(json!({"categories": {"emails": {"days": 3}}})).field,
            "categories.emails"
        );
        assert_eq!(
            refused(json!({"categories": {"audit": {"days": 30}}})).field,
            "categories.audit.days"
        );
        assert_eq!(
            refused(json!({"categories": {"raw_payloads": {"days": 31}}})).field,
            "categories.raw_payloads.days"
        );
        assert_eq!(
            refused(json!({"categories": {"media": {"keep": 3}}})).field,
            "categories.media.keep"
        );
        assert_eq!(refused(json!({"messages": 3})).field, "messages");
    }

    #[test]
    fn null_returns_a_category_to_the_default() {
        let changes = Policies::changes_from_json(
            &json!({"categories": {"messages": {"days": 0}, "media": {"days": null}}}),
            &bounds(),
        )
        .unwrap();
        assert_eq!(changes.get(&Category::Messages), Some(&Some(0)));
        assert_eq!(changes.get(&Category::Media), Some(&None));
        assert_eq!(changes.len(), 2);
    }
}
