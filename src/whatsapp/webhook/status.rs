//! A status of an outbound message, and a user's marketing preference.

use serde::{Deserialize, Serialize};

use super::envelope::MetaError;
use super::lenient::*;
use crate::ids::Wamid;

/// A status of an outbound message.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Status {
    pub id: Wamid,
    pub status: String,
    #[serde(default, deserialize_with = "timestamp_or_zero")]
    pub timestamp: i64,
    #[serde(default, deserialize_with = "or_absent")]
    pub recipient_id: Option<String>,
    #[serde(default, deserialize_with = "or_absent")]
    pub recipient_user_id: Option<String>,
    #[serde(default, deserialize_with = "or_absent")]
    pub recipient_parent_user_id: Option<String>,
    #[serde(default, deserialize_with = "or_absent")]
    pub recipient_type: Option<String>,
    #[serde(default, deserialize_with = "or_absent")]
    pub biz_opaque_callback_data: Option<String>,
    /// Present in older API versions (conversation-based pricing).
    #[serde(default, deserialize_with = "or_absent")]
    pub conversation: Option<StatusConversation>,
    #[serde(default, deserialize_with = "or_absent")]
    pub pricing: Option<Pricing>,
    #[serde(default, deserialize_with = "each_or_absent")]
    pub errors: Vec<MetaError>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct StatusConversation {
    pub id: String,
    #[serde(default, deserialize_with = "lenient_opt_i64")]
    pub expiration_timestamp: Option<i64>,
    #[serde(default)]
    pub origin: Option<ConversationOrigin>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ConversationOrigin {
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Pricing {
    #[serde(default)]
    pub billable: Option<bool>,
    #[serde(default)]
    pub pricing_model: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

/// A `user_preferences[]` item: marketing messages stopped or resumed.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct UserPreference {
    #[serde(default, deserialize_with = "or_absent")]
    pub wa_id: Option<String>,
    #[serde(default, deserialize_with = "or_absent")]
    pub user_id: Option<String>,
    #[serde(default, deserialize_with = "or_absent")]
    pub detail: Option<String>,
    #[serde(default, deserialize_with = "or_absent")]
    pub category: Option<String>,
    #[serde(default, deserialize_with = "or_absent")]
    pub value: Option<String>,
    #[serde(default, deserialize_with = "timestamp_or_zero")]
    pub timestamp: i64,
}

impl UserPreference {
    /// `Some(true)` when the user stopped marketing messages, `Some(false)` when they
    /// resumed, `None` for a category or value this code does not act on.
    pub fn marketing_opt_out(&self) -> Option<bool> {
        if self.category.as_deref() != Some("marketing_messages") {
            return None;
        }
        match self.value.as_deref()? {
            "stop" => Some(true),
            "resume" => Some(false),
            _ => None,
        }
    }
}
