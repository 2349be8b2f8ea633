//! An inbound message, every documented field typed; a type this code does not know
//! becomes [`MessageContent::Unknown`] with its raw JSON, never an error.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::envelope::MetaError;
use super::lenient::*;
use super::opt_str;
use crate::ids::Wamid;

/// An inbound message, every documented field typed.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    pub id: Wamid,
    pub from: Option<String>,
    pub from_user_id: Option<String>,
    /// Unix seconds.
    pub timestamp: i64,
    /// Meta's type name (`text`, `image`, ...), as sent.
    pub type_name: String,
    pub context: Option<Context>,
    pub referral: Option<Referral>,
    pub errors: Vec<MetaError>,
    pub content: MessageContent,
    /// The object named by the type (`{"body": "hi"}` for text), as Meta sent it.
    pub content_raw: Value,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Context {
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub id: Option<Wamid>,
    #[serde(default)]
    pub forwarded: Option<bool>,
    #[serde(default)]
    pub frequently_forwarded: Option<bool>,
    #[serde(default)]
    pub referred_product: Option<ReferredProduct>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ReferredProduct {
    pub catalog_id: String,
    pub product_retailer_id: String,
}

/// Click-to-WhatsApp ad referral.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Referral {
    #[serde(default)]
    pub source_url: Option<String>,
    #[serde(default)]
    pub source_id: Option<String>,
    #[serde(default)]
    pub source_type: Option<String>,
    #[serde(default)]
    pub headline: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub image_url: Option<String>,
    #[serde(default)]
    pub video_url: Option<String>,
    #[serde(default)]
    pub thumbnail_url: Option<String>,
    #[serde(default)]
    pub ctwa_clid: Option<String>,
    #[serde(default)]
    pub welcome_message: Option<WelcomeMessage>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct WelcomeMessage {
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MessageContent {
    Text(Text),
    Image(Media),
    Audio(Media),
    Video(Media),
    Document(Media),
    Sticker(Media),
    Location(Location),
    Contacts(Vec<SharedContact>),
    Interactive(Interactive),
    Button(Button),
    Reaction(Reaction),
    Order(Order),
    System(System),
    RequestWelcome,
    Edit(Edit),
    Revoke(Revoke),
    /// Meta could not show us the message (`errors` says why).
    Unsupported(Value),
    /// A type this code does not know yet: kept whole, never rejected.
    Unknown {
        type_name: String,
        raw: Value,
    },
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Text {
    pub body: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Media {
    pub id: String,
    #[serde(default)]
    pub mime_type: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub caption: Option<String>,
    #[serde(default)]
    pub filename: Option<String>,
    #[serde(default)]
    pub animated: Option<bool>,
    #[serde(default)]
    pub voice: Option<bool>,
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct SharedContact {
    #[serde(default)]
    pub name: Option<SharedName>,
    #[serde(default)]
    pub phones: Vec<SharedPhone>,
    #[serde(default)]
    pub emails: Vec<SharedEmail>,
    #[serde(default)]
    pub addresses: Vec<SharedAddress>,
    #[serde(default)]
    pub org: Option<SharedOrg>,
    #[serde(default)]
    pub urls: Vec<SharedUrl>,
    #[serde(default)]
    pub birthday: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct SharedName {
    #[serde(default)]
    pub formatted_name: Option<String>,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub middle_name: Option<String>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct SharedPhone {
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub wa_id: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct SharedEmail {
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct SharedAddress {
    #[serde(default)]
    pub street: Option<String>,
    #[serde(default)]
    pub city: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub zip: Option<String>,
    #[serde(default)]
    pub country: Option<String>,
    #[serde(default)]
    pub country_code: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct SharedOrg {
    #[serde(default)]
    pub company: Option<String>,
    #[serde(default)]
    pub department: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct SharedUrl {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Interactive {
    ButtonReply {
        button_reply: ReplyChoice,
    },
    ListReply {
        list_reply: ReplyChoice,
    },
    NfmReply {
        nfm_reply: NfmReply,
    },
    CallPermissionReply {
        call_permission_reply: CallPermissionReply,
    },
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ReplyChoice {
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// A WhatsApp Flow's answer; `response_json` is a JSON document in a string.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct NfmReply {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    pub response_json: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct CallPermissionReply {
    pub response: String,
    #[serde(default)]
    pub is_permanent: Option<bool>,
    #[serde(default, deserialize_with = "lenient_opt_i64")]
    pub expiration_timestamp: Option<i64>,
    #[serde(default)]
    pub response_source: Option<String>,
}

/// A quick-reply button of a template.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Button {
    #[serde(default)]
    pub payload: Option<String>,
    pub text: String,
}

/// `emoji` is absent when the user removed their reaction.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Reaction {
    pub message_id: Wamid,
    #[serde(default)]
    pub emoji: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Order {
    pub catalog_id: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub product_items: Vec<ProductItem>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ProductItem {
    pub product_retailer_id: String,
    pub quantity: serde_json::Number,
    pub item_price: serde_json::Number,
    pub currency: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct System {
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default)]
    pub wa_id: Option<String>,
    #[serde(default)]
    pub new_wa_id: Option<String>,
    #[serde(default)]
    pub customer: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub new_user_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Edit {
    pub original_message_id: Wamid,
    /// The edited message (its type and content), as Meta sends it.
    #[serde(default)]
    pub message: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Revoke {
    pub original_message_id: Wamid,
}

#[derive(Debug, thiserror::Error)]
#[error("message item: {0}")]
pub struct ItemError(String);

impl InboundMessage {
    /// The body of a text message item, as the user wrote it; `None` for other types.
    pub fn text_body(item: &Value) -> Option<&str> {
        match item.get("type").and_then(Value::as_str) {
            Some("text") => item.get("text")?.get("body")?.as_str(),
            _ => None,
        }
    }

    pub fn from_item(item: &Value) -> Result<InboundMessage, ItemError> {
        let id = opt_str(item, "id").ok_or_else(|| ItemError("no id".into()))?;
        let type_name = opt_str(item, "type").unwrap_or_else(|| "unknown".to_string());
        let timestamp = item.get("timestamp").map_or(0, read_timestamp);
        // Typed straight from the borrowed item: nothing is copied to be read.
        let field = |name: &str| item.get(name).filter(|v| !v.is_null());
        let content_raw = field(&type_name).cloned().unwrap_or(Value::Null);
        let content = typed_content(&type_name, &content_raw);
        // Parts in a shape the docs do not give read as absent (see the module doc).
        let context = field("context").and_then(|v| Context::deserialize(v).ok());
        let referral = field("referral").and_then(|v| Referral::deserialize(v).ok());
        let errors = field("errors")
            .and_then(|v| Vec::<MetaError>::deserialize(v).ok())
            .unwrap_or_default();
        Ok(InboundMessage {
            id: Wamid(id),
            from: opt_str(item, "from"),
            from_user_id: opt_str(item, "from_user_id"),
            timestamp,
            type_name,
            context,
            referral,
            errors,
            content,
            content_raw,
        })
    }

    /// The message this one acts on (the edited, revoked or reacted-to message).
    pub fn refers_to(&self) -> Option<&Wamid> {
        match &self.content {
            MessageContent::Edit(edit) => Some(&edit.original_message_id),
            MessageContent::Revoke(revoke) => Some(&revoke.original_message_id),
            MessageContent::Reaction(reaction) => Some(&reaction.message_id),
            _ => None,
        }
    }
}

/// Types the content by Meta's type name. A known type whose object does not match
/// its documented shape is kept as `Unknown` with its raw JSON rather than rejected.
fn typed_content(type_name: &str, raw: &Value) -> MessageContent {
    fn de<T: serde::de::DeserializeOwned>(raw: &Value) -> Option<T> {
        T::deserialize(raw).ok()
    }
    let typed = match type_name {
        "text" => de(raw).map(MessageContent::Text),
        "image" => de(raw).map(MessageContent::Image),
        "audio" => de(raw).map(MessageContent::Audio),
        "video" => de(raw).map(MessageContent::Video),
        "document" => de(raw).map(MessageContent::Document),
        "sticker" => de(raw).map(MessageContent::Sticker),
        "location" => de(raw).map(MessageContent::Location),
        "contacts" => de(raw).map(MessageContent::Contacts),
        "interactive" => de(raw).map(MessageContent::Interactive),
        "button" => de(raw).map(MessageContent::Button),
        "reaction" => de(raw).map(MessageContent::Reaction),
        "order" => de(raw).map(MessageContent::Order),
        "system" => de(raw).map(MessageContent::System),
        "request_welcome" => Some(MessageContent::RequestWelcome),
        "edit" => de(raw).map(MessageContent::Edit),
        "revoke" => de(raw).map(MessageContent::Revoke),
        "unsupported" => Some(MessageContent::Unsupported(raw.clone())),
        _ => None,
    };
    typed.unwrap_or_else(|| MessageContent::Unknown {
        type_name: type_name.to_string(),
        raw: raw.clone(),
    })
}
