//! Id newtypes, so a tenant id is never passed where a contact id belongs, nor a
//! conversation's id where Meta's message id (`wamid`) or phone number id does.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                $name(value)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                $name(value.to_string())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl slog::Value for $name {
            fn serialize(
                &self,
                _record: &slog::Record,
                key: slog::Key,
                serializer: &mut dyn slog::Serializer,
            ) -> slog::Result {
                serializer.emit_str(key, &self.0)
            }
        }
    };
}

/// An id Converra gives its own rows.
macro_rules! row_id_type {
    ($(#[$doc:meta])* $name:ident) => {
        id_type!($(#[$doc])* $name);

        impl $name {
            /// A new time-ordered id (UUID v7), so ids sort by creation.
            pub fn generate() -> Self {
                $name(uuid::Uuid::now_v7().to_string())
            }
        }
    };
}

row_id_type!(
    /// A business customer of Converra.
    TenantId
);
row_id_type!(
    /// A WhatsApp user as one tenant knows them.
    ContactId
);
row_id_type!(
    /// One contact on one business phone number.
    ConversationId
);
row_id_type!(
    /// A stored message (inbound or outbound); not Meta's `wamid`.
    MessageId
);
row_id_type!(
    /// A per-contact data key in the key store.
    KeyId
);
id_type!(
    /// A business phone number as Meta names it (`metadata.phone_number_id`).
    PhoneNumberId
);
id_type!(
    /// Meta's id of a WhatsApp message (`wamid...`), inbound or outbound.
    Wamid
);
row_id_type!(
    /// A tenant's automation (a keyword rule, the welcome, the away message).
    AutomationId
);
