//! Updates of a WhatsApp Business Account as a whole (`entry[].id` is the account, not
//! a number) that Converra acts on: a message template's new status
//! (`message_template_status_update`) or category (`template_category_update`, once the
//! change is made), a number's higher throughput (`phone_number_quality_update`,
//! `THROUGHPUT_UPGRADE`), and the business portfolio's messaging limit
//! (`business_capability_update`'s integer `max_daily_conversations_per_business`, or
//! the same field of `phone_number_quality_update` as a tier, `TIER_2K`). The change is
//! also kept raw, like every change that is not a conversation's event.

use serde_json::Value;

use super::opt_str;

/// Messages a second Meta allows a number after a throughput upgrade.
pub const UPGRADED_MPS: i32 = 1_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountUpdate {
    /// A template of account `waba_id` is now `status` (`APPROVED`, `REJECTED`,
    /// `PAUSED`, `DISABLED`, ...); `language` when Meta names it.
    TemplateStatus {
        waba_id: String,
        name: String,
        language: Option<String>,
        status: String,
    },
    /// A template of account `waba_id` is now of `category` (`MARKETING`, `UTILITY`,
    /// `AUTHENTICATION`).
    TemplateCategory {
        waba_id: String,
        name: String,
        language: Option<String>,
        category: String,
    },
    /// The number of account `waba_id` shown as `display_phone_number` may send
    /// `mps` messages a second.
    Throughput {
        waba_id: String,
        display_phone_number: String,
        mps: i32,
    },
    /// The portfolio of account `waba_id` may reach `limit` unique users in a moving
    /// 24 hours with business-initiated messages (-1: unlimited).
    MessagingLimit { waba_id: String, limit: i64 },
}

/// A messaging limit as Meta writes it: an integer (-1 unlimited), or a tier.
fn messaging_limit(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().filter(|n| *n >= -1),
        Value::String(tier) => match tier.as_str() {
            "TIER_50" => Some(50),
            "TIER_250" => Some(250),
            "TIER_1K" => Some(1_000),
            "TIER_2K" => Some(2_000),
            "TIER_10K" => Some(10_000),
            "TIER_100K" => Some(100_000),
            "TIER_UNLIMITED" => Some(-1),
            digits => digits.parse().ok().filter(|n: &i64| *n >= -1),
        },
        _ => None,
    }
}

/// What Converra acts on in change `field` of account `waba_id` (nothing for
/// everything else, which is kept raw all the same).
pub fn account_update(waba_id: &str, field: &str, value: &Value) -> Vec<AccountUpdate> {
    let waba = || waba_id.to_string();
    let limit = || {
        value
            .get("max_daily_conversations_per_business")
            .and_then(messaging_limit)
            .map(|limit| AccountUpdate::MessagingLimit {
                waba_id: waba(),
                limit,
            })
    };
    match field {
        "message_template_status_update" => (|| {
            Some(AccountUpdate::TemplateStatus {
                waba_id: waba(),
                name: opt_str(value, "message_template_name")?,
                language: opt_str(value, "message_template_language"),
                status: opt_str(value, "event")?.to_ascii_uppercase(),
            })
        })()
        .into_iter()
        .collect(),
        // A change made (`previous_category` given); a coming one is only announced.
        "template_category_update" if opt_str(value, "previous_category").is_some() => (|| {
            Some(AccountUpdate::TemplateCategory {
                waba_id: waba(),
                name: opt_str(value, "message_template_name")?,
                language: opt_str(value, "message_template_language"),
                category: opt_str(value, "new_category")?.to_ascii_uppercase(),
            })
        })()
        .into_iter()
        .collect(),
        "business_capability_update" => limit().into_iter().collect(),
        "phone_number_quality_update" => {
            // A throughput event is about the number's pace: its limit fields (and
            // `TIER_UNLIMITED`) are the throughput, not the portfolio's messaging limit.
            if opt_str(value, "event").is_some_and(|e| e.starts_with("THROUGHPUT")) {
                return match opt_str(value, "display_phone_number") {
                    Some(display_phone_number)
                        if opt_str(value, "event").as_deref() == Some("THROUGHPUT_UPGRADE") =>
                    {
                        vec![AccountUpdate::Throughput {
                            waba_id: waba(),
                            display_phone_number,
                            mps: UPGRADED_MPS,
                        }]
                    }
                    _ => Vec::new(),
                };
            }
            // A messaging-limit event: the portfolio's limit, or (an older event) the
            // field it replaced.
            limit()
                .or_else(|| {
                    value
                        .get("current_limit")
                        .and_then(messaging_limit)
                        .map(|limit| AccountUpdate::MessagingLimit {
                            waba_id: waba(),
                            limit,
                        })
                })
                .into_iter()
                .collect()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn template_statuses_and_throughput_upgrades_are_read_as_meta_sends_them() {
        let status = json!({"event": "APPROVED", "message_template_id": 123456,
            "message_template_name": "order_update", "message_template_language": "en_US",
            "reason": "NONE"});
        assert_eq!(
            account_update("WABA", "message_template_status_update", &status),
            vec![AccountUpdate::TemplateStatus {
                waba_id: "WABA".into(),
                name: "order_update".into(),
                language: Some("en_US".into()),
                status: "APPROVED".into(),
            }]
        );
        let upgrade = json!({"display_phone_number": "15550783881",
            "event": "THROUGHPUT_UPGRADE", "current_limit": "TIER_UNLIMITED",
            "max_daily_conversations_per_business": "TIER_UNLIMITED"});
        assert_eq!(
            account_update("WABA", "phone_number_quality_update", &upgrade),
            vec![AccountUpdate::Throughput {
                waba_id: "WABA".into(),
                display_phone_number: "15550783881".into(),
                mps: UPGRADED_MPS,
            }]
        );
        let moved = json!({"message_template_id": 1, "message_template_name": "order_update",
            "message_template_language": "en_US", "previous_category": "UTILITY",
            "new_category": "MARKETING"});
        assert_eq!(
            account_update("WABA", "template_category_update", &moved),
            vec![AccountUpdate::TemplateCategory {
                waba_id: "WABA".into(),
                name: "order_update".into(),
                language: Some("en_US".into()),
                category: "MARKETING".into(),
            }]
        );
        let coming = json!({"message_template_id": 1, "message_template_name": "order_update",
            "message_template_language": "en_US", "correct_category": "MARKETING",
            "new_category": "UTILITY", "category_update_timestamp": 1764000000});
        assert_eq!(
            account_update("WABA", "template_category_update", &coming),
            vec![]
        );
        // A messaging-limit change is not a throughput change; a status without a name
        // names nothing.
        let limit = json!({"display_phone_number": "15550783881", "event": "UPGRADE",
            "old_limit": "TIER_1K", "current_limit": "TIER_10K"});
        assert_eq!(
            account_update("WABA", "phone_number_quality_update", &limit),
            vec![AccountUpdate::MessagingLimit {
                waba_id: "WABA".into(),
                limit: 10_000
            }]
        );
        let tiered = json!({"display_phone_number": "15550783881", "event": "UPGRADE",
            "old_limit": "TIER_1K", "current_limit": "TIER_10K",
            "max_daily_conversations_per_business": "TIER_2K"});
        assert_eq!(
            account_update("WABA", "phone_number_quality_update", &tiered),
            vec![AccountUpdate::MessagingLimit {
                waba_id: "WABA".into(),
                limit: 2_000
            }]
        );
        let capability = json!({"max_daily_conversation_per_phone": 1000,
            "max_phone_numbers_per_business": 2, "max_daily_conversations_per_business": -1});
        assert_eq!(
            account_update("WABA", "business_capability_update", &capability),
            vec![AccountUpdate::MessagingLimit {
                waba_id: "WABA".into(),
                limit: -1
            }]
        );
        assert_eq!(
            account_update(
                "WABA",
                "message_template_status_update",
                &json!({"event": "APPROVED"})
            ),
            vec![]
        );
    }
}
