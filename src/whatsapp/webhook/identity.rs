//! Who a WhatsApp user is, as one event tells it: from the item itself and the
//! change's `contacts[]` entry that names the same user.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::envelope::WebhookContact;
use super::opt_str;

/// Who a WhatsApp user is, as far as one event tells. Since April 2026 `user_id` (the
/// business-scoped user id) is always sent and `wa_id` (the phone number) may be
/// withheld for users who adopted a username.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wa_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_name: Option<String>,
}

impl Identity {
    /// The key a conversation is routed by: the BSUID when known, else the phone number.
    pub fn route_key(&self) -> Option<String> {
        self.route_key_parts()
            .next()
            .map(|(prefix, id)| format!("{prefix}{id}"))
    }

    /// Every routing key this identity answers to, as (prefix, id): the key is the two
    /// joined, for callers that build it into a buffer of their own.
    pub fn route_key_parts(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let user = self.user_id.as_deref().map(|id| ("u:", id));
        let phone = self.wa_id.as_deref().map(|id| ("w:", id));
        user.into_iter().chain(phone)
    }
}

/// Finds the `contacts[]` entry for a user: by BSUID, else by phone number, else the
/// only entry (Meta sends one contact per message change).
fn find_contact<'a>(
    contacts: &'a [WebhookContact],
    user_id: Option<&str>,
    wa_id: Option<&str>,
) -> Option<&'a WebhookContact> {
    contacts
        .iter()
        .find(|c| user_id.is_some() && c.user_id.as_deref() == user_id)
        .or_else(|| {
            contacts
                .iter()
                .find(|c| wa_id.is_some() && c.wa_id.as_deref() == wa_id)
        })
        .or_else(|| (contacts.len() == 1).then(|| &contacts[0]))
}

fn merge_identity(mut identity: Identity, contact: Option<&WebhookContact>) -> Identity {
    if let Some(contact) = contact {
        identity.user_id = identity.user_id.or_else(|| contact.user_id.clone());
        identity.wa_id = identity.wa_id.or_else(|| contact.wa_id.clone());
        identity.parent_user_id = identity
            .parent_user_id
            .or_else(|| contact.parent_user_id.clone());
        if let Some(profile) = &contact.profile {
            identity.username = identity.username.or_else(|| profile.username.clone());
            identity.profile_name = identity.profile_name.or_else(|| profile.name.clone());
        }
    }
    identity
}

pub(super) fn message_identity(message: &Value, contacts: &[WebhookContact]) -> Identity {
    let identity = Identity {
        user_id: opt_str(message, "from_user_id"),
        wa_id: opt_str(message, "from"),
        parent_user_id: opt_str(message, "from_parent_user_id"),
        ..Identity::default()
    };
    let contact = find_contact(
        contacts,
        identity.user_id.as_deref(),
        identity.wa_id.as_deref(),
    );
    let mut identity = identity;
    // The sender's `contacts[]` entry names its canonical WhatsApp id, which `from` may
    // write differently (Brazilian and Mexican numbers with or without their extra
    // digit): the contact is keyed by the canonical one, so the same person is one
    // contact whichever form a message carries.
    if let Some(wa_id) = contact.and_then(|c| c.wa_id.clone()) {
        identity.wa_id = Some(wa_id);
    }
    merge_identity(identity, contact)
}

pub(super) fn status_identity(status: &Value, contacts: &[WebhookContact]) -> Identity {
    let identity = Identity {
        user_id: opt_str(status, "recipient_user_id"),
        wa_id: opt_str(status, "recipient_id"),
        parent_user_id: opt_str(status, "recipient_parent_user_id"),
        ..Identity::default()
    };
    let contact = find_contact(
        contacts,
        identity.user_id.as_deref(),
        identity.wa_id.as_deref(),
    );
    let mut merged = merge_identity(identity, contact);
    // Statuses do not carry a profile worth overwriting the contact's with.
    merged.profile_name = None;
    merged
}

pub(super) fn preference_identity(preference: &Value, contacts: &[WebhookContact]) -> Identity {
    let identity = Identity {
        user_id: opt_str(preference, "user_id"),
        wa_id: opt_str(preference, "wa_id"),
        parent_user_id: opt_str(preference, "parent_user_id"),
        ..Identity::default()
    };
    let contact = find_contact(
        contacts,
        identity.user_id.as_deref(),
        identity.wa_id.as_deref(),
    );
    merge_identity(identity, contact)
}
