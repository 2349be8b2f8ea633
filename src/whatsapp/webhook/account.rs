//! Updates of a WhatsApp Business Account as a whole (`entry[].id` is the account, not
//! a number) that Converra acts on: a message template's new status
//! (`message_template_status_update`) or category (`template_category_update`, once the
//! change is made) and a number's higher throughput
//! (`phone_number_quality_update`, `THROUGHPUT_UPGRADE`). The change is also kept raw,
//! like every change that is not a conversation's event.

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
}

/// What Converra acts on in change `field` of account `waba_id`; `None` for
/// everything else (kept raw all the same).
pub fn account_update(waba_id: &str, field: &str, value: &Value) -> Option<AccountUpdate> {
    match field {
        "message_template_status_update" => Some(AccountUpdate::TemplateStatus {
            waba_id: waba_id.to_string(),
            name: opt_str(value, "message_template_name")?,
            language: opt_str(value, "message_template_language"),
            status: opt_str(value, "event")?.to_ascii_uppercase(),
        }),
        // A change made (`previous_category` given); a coming one is only announced.
        "template_category_update" if opt_str(value, "previous_category").is_some() => {
            Some(AccountUpdate::TemplateCategory {
                waba_id: waba_id.to_string(),
                name: opt_str(value, "message_template_name")?,
                language: opt_str(value, "message_template_language"),
                category: opt_str(value, "new_category")?.to_ascii_uppercase(),
            })
        }
        "phone_number_quality_update"
            if opt_str(value, "event").as_deref() == Some("THROUGHPUT_UPGRADE") =>
        {
            Some(AccountUpdate::Throughput {
                waba_id: waba_id.to_string(),
                display_phone_number: opt_str(value, "display_phone_number")?,
                mps: UPGRADED_MPS,
            })
        }
        _ => None,
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
            Some(AccountUpdate::TemplateStatus {
                waba_id: "WABA".into(),
                name: "order_update".into(),
                language: Some("en_US".into()),
                status: "APPROVED".into(),
            })
        );
        let upgrade = json!({"display_phone_number": "15550783881",
            "event": "THROUGHPUT_UPGRADE", "current_limit": "TIER_UNLIMITED"});
        assert_eq!(
            account_update("WABA", "phone_number_quality_update", &upgrade),
            Some(AccountUpdate::Throughput {
                waba_id: "WABA".into(),
                display_phone_number: "15550783881".into(),
                mps: UPGRADED_MPS,
            })
        );
        let moved = json!({"message_template_id": 1, "message_template_name": "order_update",
            "message_template_language": "en_US", "previous_category": "UTILITY",
            "new_category": "MARKETING"});
        assert_eq!(
            account_update("WABA", "template_category_update", &moved),
            Some(AccountUpdate::TemplateCategory {
                waba_id: "WABA".into(),
                name: "order_update".into(),
                language: Some("en_US".into()),
                category: "MARKETING".into(),
            })
        );
        let coming = json!({"message_template_id": 1, "message_template_name": "order_update",
            "message_template_language": "en_US", "correct_category": "MARKETING",
            "new_category": "UTILITY", "category_update_timestamp": 1764000000});
        assert_eq!(
            account_update("WABA", "template_category_update", &coming),
            None
        );
        // A messaging-limit change is not a throughput change; a status without a name
        // names nothing.
        let limit = json!({"display_phone_number": "15550783881", "event": "UPGRADE",
            "old_limit": "TIER_1K", "current_limit": "TIER_10K"});
        assert_eq!(
            account_update("WABA", "phone_number_quality_update", &limit),
            None
        );
        assert_eq!(
            account_update(
                "WABA",
                "message_template_status_update",
                &json!({"event": "APPROVED"})
            ),
            None
        );
    }
}
