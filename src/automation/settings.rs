//! A tenant's own settings over the operator's defaults (`GET|PUT /v1/settings`): the
//! time zone and weekly business hours the away message reads, and the opt-out and
//! opt-in keywords with their confirmations. Stored as the API shows them; checked
//! here, before they are stored.

use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::FieldError;
use crate::config::OutboundSettings;
use crate::rules::Rule;

const DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];
const KEYWORDS_MAX: usize = 50;
const KEYWORD_CHARS_MAX: usize = 100;
const REPLY_CHARS_MAX: usize = 4096;
const INTERVALS_PER_DAY_MAX: usize = 8;

/// The settings a tenant gave; what it left out is the operator's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Weekday name → its open intervals (`{"open": "09:00", "close": "17:00"}`); a
    /// day left out is closed. Absent: always open (no away message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_hours: Option<Vec<(String, Vec<Interval>)>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_out_keywords: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_in_keywords: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_out_reply: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_in_reply: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interval {
    pub open: String,
    pub close: String,
}

impl TenantSettings {
    /// Checks a `PUT /v1/settings` body, naming the field that is wrong.
    pub fn from_json(body: &Value) -> Result<TenantSettings, FieldError> {
        let Some(object) = body.as_object() else {
            return Err(FieldError::new(Rule::Type, "body", "must be a JSON object"));
        };
        let mut settings = TenantSettings::default();
        for (key, value) in object {
            if value.is_null() {
                continue;
            }
            match key.as_str() {
                "time_zone" => {
                    let name = value.as_str().ok_or_else(|| {
                        FieldError::new(Rule::Type, "time_zone", "must be a string")
                    })?;
                    TimeZone::get(name).map_err(|_| {
                        FieldError::new(
                            Rule::Unknown,
                            "time_zone",
                            format!(
                                "{name:?} is not an IANA time zone (such as \"Europe/Berlin\")"
                            ),
                        )
                    })?;
                    settings.time_zone = Some(name.to_string());
                }
                "business_hours" => settings.business_hours = Some(business_hours(value)?),
                "opt_out_keywords" | "opt_in_keywords" => {
                    let words = keywords(key, value)?;
                    if key == "opt_out_keywords" {
                        settings.opt_out_keywords = Some(words);
                    } else {
                        settings.opt_in_keywords = Some(words);
                    }
                }
                "opt_out_reply" | "opt_in_reply" => {
                    let reply = value
                        .as_str()
                        .filter(|r| !r.trim().is_empty() && r.chars().count() <= REPLY_CHARS_MAX)
                        .ok_or_else(|| {
                            FieldError::new(
                                Rule::Length,
                                key,
                                format!("must be a text of 1 to {REPLY_CHARS_MAX} characters"),
                            )
                        })?;
                    if key == "opt_out_reply" {
                        settings.opt_out_reply = Some(reply.to_string());
                    } else {
                        settings.opt_in_reply = Some(reply.to_string());
                    }
                }
                _ => {
                    return Err(FieldError::new(
                        Rule::Unknown,
                        key,
                        "is not a setting (time_zone, business_hours, opt_out_keywords, \
                         opt_in_keywords, opt_out_reply, opt_in_reply)",
                    ))
                }
            }
        }
        Ok(settings)
    }

    /// The settings in effect: the tenant's, else the operator's.
    pub fn effective(&self, defaults: &OutboundSettings) -> Effective {
        let time_zone = self
            .time_zone
            .as_deref()
            .and_then(|name| TimeZone::get(name).ok())
            .unwrap_or(TimeZone::UTC);
        let hours = self.business_hours.as_ref().map(|days| {
            let mut week: [Vec<(u16, u16)>; 7] = Default::default();
            for (day, intervals) in days {
                if let Some(index) = DAYS.iter().position(|d| d == day) {
                    week[index] = intervals
                        .iter()
                        .filter_map(|i| Some((minutes(&i.open)?, minutes(&i.close)?)))
                        .collect();
                }
            }
            week
        });
        Effective {
            time_zone,
            hours,
            opt_out_keywords: self
                .opt_out_keywords
                .clone()
                .unwrap_or_else(|| defaults.opt_out_keywords.clone()),
            opt_in_keywords: self
                .opt_in_keywords
                .clone()
                .unwrap_or_else(|| defaults.opt_in_keywords.clone()),
            opt_out_reply: self
                .opt_out_reply
                .clone()
                .unwrap_or_else(|| defaults.opt_out_reply.clone()),
            opt_in_reply: self
                .opt_in_reply
                .clone()
                .unwrap_or_else(|| defaults.opt_in_reply.clone()),
        }
    }

    /// As `GET /v1/settings` shows them: every setting in effect, the operator's where
    /// the tenant gave none.
    pub fn to_json(&self, defaults: &OutboundSettings) -> Value {
        let effective = self.effective(defaults);
        serde_json::json!({
            "time_zone": self.time_zone.clone().unwrap_or_else(|| "UTC".to_string()),
            "business_hours": self.business_hours.as_ref().map(|days| {
                days.iter()
                    .map(|(day, intervals)| (day.clone(), serde_json::json!(intervals)))
                    .collect::<serde_json::Map<_, _>>()
            }),
            "opt_out_keywords": effective.opt_out_keywords,
            "opt_in_keywords": effective.opt_in_keywords,
            "opt_out_reply": effective.opt_out_reply,
            "opt_in_reply": effective.opt_in_reply,
        })
    }
}

/// The settings in effect for a tenant, ready to use.
#[derive(Debug, Clone)]
pub struct Effective {
    pub time_zone: TimeZone,
    /// Open intervals by weekday from Monday, in minutes of the day; `None`: always
    /// open.
    pub hours: Option<[Vec<(u16, u16)>; 7]>,
    pub opt_out_keywords: Vec<String>,
    pub opt_in_keywords: Vec<String>,
    pub opt_out_reply: String,
    pub opt_in_reply: String,
}

impl Effective {
    /// Whether the business is open at `at_ms`, in its own time zone.
    pub fn is_open(&self, at_ms: i64) -> bool {
        let Some(week) = &self.hours else {
            return true;
        };
        let Ok(at) = jiff::Timestamp::from_millisecond(at_ms) else {
            return true;
        };
        let local = at.to_zoned(self.time_zone.clone());
        let day = local.weekday().to_monday_zero_offset() as usize;
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        week[day]
            .iter()
            .any(|(open, close)| (*open..*close).contains(&minute))
    }

    /// Whether a whole message is an opt-out keyword (`Some(true)`), an opt-in one
    /// (`Some(false)`), or neither; case and surrounding punctuation aside ("Stop."
    /// and "STOP!" mean STOP).
    pub fn preference_keyword(&self, text: &str) -> Option<bool> {
        let text = text
            .trim_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace())
            .to_lowercase();
        let says = |words: &[String]| words.iter().any(|w| w.trim().to_lowercase() == text);
        if says(&self.opt_out_keywords) {
            Some(true)
        } else if says(&self.opt_in_keywords) {
            Some(false)
        } else {
            None
        }
    }
}

/// `"HH:MM"` (00:00 to 24:00) in minutes of the day.
fn minutes(text: &str) -> Option<u16> {
    let (hours, mins) = text.split_once(':')?;
    if hours.len() != 2 || mins.len() != 2 {
        return None;
    }
    let (hours, mins): (u16, u16) = (hours.parse().ok()?, mins.parse().ok()?);
    let total = hours * 60 + mins;
    (hours <= 24 && mins < 60 && total <= 24 * 60).then_some(total)
}

fn business_hours(value: &Value) -> Result<Vec<(String, Vec<Interval>)>, FieldError> {
    let Some(days) = value.as_object() else {
        return Err(FieldError::new(
            Rule::Type,
            "business_hours",
            "must be an object of weekdays (monday ... sunday) to open intervals",
        ));
    };
    let mut week = Vec::new();
    for (day, intervals) in days {
        if !DAYS.contains(&day.as_str()) {
            return Err(FieldError::new(
                Rule::Unknown,
                format!("business_hours.{day}"),
                "is not a weekday (monday, tuesday, ... sunday)",
            ));
        }
        let field = format!("business_hours.{day}");
        let intervals: Vec<Interval> = serde_json::from_value(intervals.clone()).map_err(|_| {
            FieldError::new(
                Rule::Type,
                &field,
                "must be a list of {\"open\": \"HH:MM\", \"close\": \"HH:MM\"}",
            )
        })?;
        if intervals.len() > INTERVALS_PER_DAY_MAX {
            return Err(FieldError::new(
                Rule::Count,
                &field,
                format!("at most {INTERVALS_PER_DAY_MAX} intervals a day"),
            ));
        }
        for (n, interval) in intervals.iter().enumerate() {
            let (open, close) = (minutes(&interval.open), minutes(&interval.close));
            match (open, close) {
                (Some(open), Some(close)) if open < close => {}
                (None, _) => {
                    return Err(FieldError::new(
                        Rule::Format,
                        format!("{field}[{n}].open"),
                        "must be a time of day as \"HH:MM\" (00:00 to 24:00)",
                    ))
                }
                (_, None) => {
                    return Err(FieldError::new(
                        Rule::Format,
                        format!("{field}[{n}].close"),
                        "must be a time of day as \"HH:MM\" (00:00 to 24:00)",
                    ))
                }
                _ => {
                    return Err(FieldError::new(
                        Rule::Range,
                        format!("{field}[{n}].close"),
                        "must be later than open (split hours past midnight over two days)",
                    ))
                }
            }
        }
        week.push((day.clone(), intervals));
    }
    Ok(week)
}

fn keywords(key: &str, value: &Value) -> Result<Vec<String>, FieldError> {
    let message = format!(
        "must be a list of 1 to {KEYWORDS_MAX} non-empty words of at most {KEYWORD_CHARS_MAX} characters"
    );
    let words = value
        .as_array()
        .filter(|w| !w.is_empty() && w.len() <= KEYWORDS_MAX)
        .ok_or_else(|| FieldError::new(Rule::Count, key, &message))?;
    words
        .iter()
        .map(|w| {
            w.as_str()
                .map(str::trim)
                .filter(|w| !w.is_empty() && w.chars().count() <= KEYWORD_CHARS_MAX)
                .map(str::to_string)
                .ok_or_else(|| FieldError::new(Rule::Length, key, &message))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn effective(body: Value) -> Effective {
        let defaults = Settings::defaults().expect("defaults").outbound;
        TenantSettings::from_json(&body)
            .expect("valid")
            .effective(&defaults)
    }

    #[test]
    fn hours_are_read_in_the_tenants_time_zone() {
        let settings = effective(serde_json::json!({
            "time_zone": "America/New_York",
            "business_hours": {"monday": [{"open": "09:00", "close": "17:00"}]},
        }));
        // Monday 2026-12-07 14:00 UTC is 09:00 in New York (EST, UTC-5): open.
        let monday_14_utc = 1_796_652_000_000;
        assert!(settings.is_open(monday_14_utc));
        // A minute earlier it is 08:59 there: closed.
        assert!(!settings.is_open(monday_14_utc - 60_000));
        // 22:00 UTC is 17:00 there: the close is not inside.
        assert!(!settings.is_open(monday_14_utc + 8 * 3_600_000));
        // Tuesday has no hours: closed all day.
        assert!(!settings.is_open(monday_14_utc + 24 * 3_600_000));
    }

    #[test]
    fn without_business_hours_the_business_is_always_open() {
        assert!(effective(serde_json::json!({})).is_open(0));
    }

    #[test]
    fn wrong_settings_name_their_field() {
        for (body, field) in [
            (
                serde_json::json!({"time_zone": "Mars/Olympus"}),
                "time_zone",
            ),
            (
                serde_json::json!({"business_hours": {"funday": []}}),
                "business_hours.funday",
            ),
            (
                serde_json::json!({"business_hours": {"monday": [{"open": "17:00", "close": "09:00"}]}}),
                "business_hours.monday[0].close",
            ),
            (
                serde_json::json!({"business_hours": {"monday": [{"open": "9", "close": "17:00"}]}}),
                "business_hours.monday[0].open",
            ),
            (
                serde_json::json!({"opt_out_keywords": []}),
                "opt_out_keywords",
            ),
            (serde_json::json!({"opt_in_reply": " "}), "opt_in_reply"),
            (serde_json::json!({"colour": "red"}), "colour"),
        ] {
            let err = TenantSettings::from_json(&body).expect_err("refused");
            assert_eq!(err.field, field, "{body}");
        }
    }

    #[test]
    fn a_tenants_keywords_replace_the_operators() {
        let settings = effective(serde_json::json!({"opt_out_keywords": ["HALT"]}));
        assert_eq!(settings.preference_keyword("halt!"), Some(true));
        assert_eq!(settings.preference_keyword("STOP"), None);
        assert_eq!(settings.preference_keyword("start"), Some(false));
        let russian = effective(serde_json::json!({"opt_out_keywords": ["СТОП", "ARRÊT"]}));
        assert_eq!(russian.preference_keyword("стоп"), Some(true));
        assert_eq!(russian.preference_keyword("Arrêt !"), Some(true));
    }
}
