//! The envelope of a webhook body: `entry[] × changes[]`, each change's value, its
//! metadata and contacts, and the error objects Meta sends in several places.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::lenient::{each_or_absent, items_or_empty, lenient_string, or_absent};
use crate::ids::PhoneNumberId;

// The envelope is read straight from the body, each change's value kept as the raw
// text it came in, so that every item is parsed once, into the value its event owns.
#[derive(Debug, Deserialize)]
pub(super) struct Envelope<'a> {
    pub(super) object: String,
    #[serde(borrow)]
    pub(super) entry: Vec<Entry<'a>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Entry<'a> {
    #[serde(default, deserialize_with = "lenient_string")]
    pub(super) id: String,
    #[serde(default, borrow)]
    pub(super) changes: Vec<RawChange<'a>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawChange<'a> {
    #[serde(default)]
    pub(super) field: Option<String>,
    #[serde(default, borrow)]
    pub(super) value: Option<&'a RawValue>,
}

/// `changes[].value` for the `messages` and `user_preferences` fields. Only the number
/// is required: a list in another shape reads as empty (a change left with no items is
/// kept raw whole), a contact or error in another shape as absent.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ChangeValue {
    #[serde(default, deserialize_with = "or_absent")]
    pub messaging_product: Option<String>,
    pub metadata: Metadata,
    #[serde(default, deserialize_with = "each_or_absent")]
    pub contacts: Vec<WebhookContact>,
    #[serde(default, deserialize_with = "items_or_empty")]
    pub messages: Vec<Value>,
    #[serde(default, deserialize_with = "items_or_empty")]
    pub statuses: Vec<Value>,
    #[serde(default, deserialize_with = "items_or_empty")]
    pub user_preferences: Vec<Value>,
    #[serde(default, deserialize_with = "each_or_absent")]
    pub errors: Vec<MetaError>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Metadata {
    #[serde(default, deserialize_with = "or_absent")]
    pub display_phone_number: Option<String>,
    #[serde(deserialize_with = "lenient_phone_number_id")]
    pub phone_number_id: PhoneNumberId,
}

fn lenient_phone_number_id<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<PhoneNumberId, D::Error> {
    lenient_string(deserializer).map(PhoneNumberId)
}

/// `contacts[]`: the sender's identity and profile.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct WebhookContact {
    #[serde(default)]
    pub wa_id: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub parent_user_id: Option<String>,
    #[serde(default)]
    pub identity_key_hash: Option<String>,
    #[serde(default)]
    pub profile: Option<Profile>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct Profile {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
}

/// An error object as Meta sends it in messages, statuses and change values.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct MetaError {
    pub code: i64,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub error_data: Option<ErrorData>,
    #[serde(default)]
    pub href: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ErrorData {
    #[serde(default)]
    pub details: Option<String>,
}
