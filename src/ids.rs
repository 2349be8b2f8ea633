//! Id newtypes, so a tenant id is never passed where a contact id belongs.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// A new time-ordered id (UUID v7), so ids sort by creation.
            pub fn generate() -> Self {
                $name(uuid::Uuid::now_v7().to_string())
            }
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
    };
}

id_type!(
    /// A business customer of Converra.
    TenantId
);
id_type!(
    /// A WhatsApp user as one tenant knows them.
    ContactId
);
id_type!(
    /// One contact on one business phone number.
    ConversationId
);
id_type!(
    /// A stored message (inbound or outbound); not Meta's `wamid`.
    MessageId
);
id_type!(
    /// A per-contact data key in the key store.
    KeyId
);
