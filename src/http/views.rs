//! What the tenant API shows of stored rows: the JSON shapes of the design's API
//! tables, built from storage's records, times as RFC 3339.

use serde::Serialize;
use serde_json::Value;

use crate::clock::rfc3339;
use crate::ids::{ContactId, ConversationId, MessageId, PhoneNumberId, Wamid};
use crate::storage::contacts::Contact;
use crate::storage::conversations::Conversation;
use crate::storage::messages::{MessageState, StoredMessage};
use crate::storage::outbox::{OutboxState, SendRecord, SendStage};

#[derive(Debug, Serialize)]
pub struct ContactItem {
    pub id: String,
    pub wa_id: Option<String>,
    pub user_id: Option<String>,
    pub username: Option<String>,
    pub profile_name: Option<String>,
    pub marketing_opt_out: bool,
    pub first_seen_at: String,
    pub last_seen_at: String,
    /// The business's own record of the contact.
    pub display_name: Option<String>,
    pub tags: Vec<String>,
    pub attributes: std::collections::BTreeMap<String, Value>,
}

impl From<Contact> for ContactItem {
    fn from(c: Contact) -> Self {
        ContactItem {
            id: c.id,
            wa_id: c.wa_id,
            user_id: c.user_id,
            username: c.username,
            profile_name: c.profile_name,
            marketing_opt_out: c.marketing_opt_out,
            first_seen_at: rfc3339(c.first_seen_at),
            last_seen_at: rfc3339(c.last_seen_at),
            display_name: c.record.display_name,
            tags: c.record.tags,
            attributes: c.record.attributes,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ConversationItem {
    pub id: ConversationId,
    pub contact_id: ContactId,
    pub phone_number_id: PhoneNumberId,
    pub opened_at: String,
    pub last_inbound_at: Option<String>,
    /// When the customer-service window closes (24 hours after the last inbound).
    pub window_ends_at: Option<String>,
    pub last_message_at: String,
    /// Set while the business has it closed.
    pub closed_at: Option<String>,
}

impl From<Conversation> for ConversationItem {
    fn from(c: Conversation) -> Self {
        ConversationItem {
            id: c.id,
            contact_id: c.contact_id,
            phone_number_id: c.phone_number_id,
            opened_at: rfc3339(c.opened_at),
            last_inbound_at: c.last_inbound_at.map(rfc3339),
            window_ends_at: c.window_ends_at.map(rfc3339),
            last_message_at: rfc3339(c.last_message_at),
            closed_at: c.closed_at.map(rfc3339),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct MessageItem {
    pub id: MessageId,
    pub wamid: Option<Wamid>,
    pub direction: String,
    #[serde(rename = "type")]
    pub msg_type: Option<String>,
    pub timestamp: String,
    pub status: Option<&'static str>,
    /// The type's object as Meta sent it, e.g. `{"body": "hi"}` for text.
    pub content: Option<Value>,
    pub context: Option<Value>,
    pub referral: Option<Value>,
    pub errors: Option<Value>,
    pub error: Option<Value>,
    pub revoked: bool,
}

impl From<StoredMessage> for MessageItem {
    fn from(m: StoredMessage) -> Self {
        MessageItem {
            id: m.id,
            wamid: m.wamid,
            direction: m.direction,
            msg_type: m.msg_type,
            timestamp: rfc3339(m.sent_at),
            status: m.status.map(|s| s.as_str()),
            content: m.content,
            context: m.context,
            referral: m.referral,
            errors: m.errors,
            error: m.error,
            revoked: m.revoked,
        }
    }
}

/// A send as `GET /v1/messages/{id}` shows it: its message's state, or for a read
/// receipt its outbox row's in the same words (handed to Meta is still `queued` until
/// Meta accepts it).
#[derive(Debug, Serialize)]
pub struct SendView {
    pub id: MessageId,
    pub state: &'static str,
    pub wamid: Option<Wamid>,
    pub error: Option<Value>,
}

impl From<SendRecord> for SendView {
    fn from(send: SendRecord) -> Self {
        let state = match send.stage {
            SendStage::Message(state) => state.unwrap_or(MessageState::Queued),
            SendStage::Outbox(OutboxState::Done) => MessageState::Sent,
            SendStage::Outbox(OutboxState::Failed) => MessageState::Failed,
            SendStage::Outbox(OutboxState::Queued | OutboxState::Sending) => MessageState::Queued,
        };
        SendView {
            id: send.id,
            state: state.as_str(),
            wamid: send.wamid,
            error: send
                .error_json
                .as_deref()
                .and_then(|e| serde_json::from_str(e).ok()),
        }
    }
}
