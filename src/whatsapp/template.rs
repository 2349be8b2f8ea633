//! A message template as Meta describes it: what the Graph API lists for an account,
//! what Converra stores of it, and what its API shows.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A message template: its name and language (together its identity), its category
/// (marketing, utility, authentication), its review status, and its components.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Template {
    pub name: String,
    pub language: String,
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub components: Value,
}
