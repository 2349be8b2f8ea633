//! Everything that knows Meta's JSON: the webhook envelope and its payload types, the
//! `X-Hub-Signature-256` check, and (later) the Graph API client. Nothing outside this
//! module looks inside Meta's payloads.

pub mod signature;
pub mod webhook;

pub use webhook::{Event, EventKind, Identity, OtherChange, ParsedWebhook};
