//! The CRM's items under their old path; each lives in the module of what it stores.

pub use super::apply::{
    apply_batch, ApplyOp, JobApplied, MessageBundle, NewInbound, NewPreference, NewStatus, Origin,
    ProfileUpdate,
};
pub use super::contacts::{
    contacts_exist, list_contacts, resolve_contact, ContactIdentifiers, ResolvedContact,
};
pub use super::conversations::{conversation_exists, list_conversations};
pub use super::keys::{insert_data_key, insert_data_keys};
#[cfg(any(test, feature = "testing"))]
pub use super::messages::count_messages;
pub use super::messages::{list_messages, status_history};
