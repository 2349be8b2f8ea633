//! Everything that knows Meta's JSON: the webhook envelope and its payload types, the
//! `X-Hub-Signature-256` check, and outbound messages (checked against Meta's limits,
//! shaped for the Graph API). Nothing outside this module looks inside Meta's payloads.

pub mod graph;
pub mod media;
pub mod outbound;
pub mod signature;
pub mod template;
pub mod webhook;

pub use template::Template;
pub use webhook::{Event, EventKind, Identity, OtherChange, ParsedWebhook};
