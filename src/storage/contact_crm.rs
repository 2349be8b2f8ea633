//! What a business records about a contact (`contacts.crm_ct`, `contact_labels`): a
//! display name, tags and attributes. The record is sealed under the contact's data
//! key, like everything else about the contact; each tag and each attribute's value is
//! also stored as a keyed hash (a label), so that the tenant's contacts can be searched
//! by them without opening every record. Labels go with their contact.

use std::collections::BTreeMap;

use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::contacts::contact_field;
use super::key_store::Vault;
use super::keys::load_data_key;
use super::on_backend;
use super::schema::{contact_labels, contacts};
use super::{DbConn, StorageError};
use crate::crypto::SealKey;
use crate::ids::TenantId;
use crate::rules::Rule;

/// The most tags, and attributes, a contact may have.
pub const MAX_TAGS: usize = 50;
pub const MAX_ATTRIBUTES: usize = 50;
const MAX_NAME_CHARS: usize = 256;
const MAX_TAG_CHARS: usize = 64;
const MAX_ATTRIBUTE_VALUE_CHARS: usize = 1024;

/// A contact's record as the business keeps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContactRecord {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Values are strings, numbers or booleans.
    #[serde(default)]
    pub attributes: BTreeMap<String, Value>,
}

/// A change to a record: each field given replaces the stored one (`display_name`
/// `Some(None)` clears it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordChange {
    pub display_name: Option<Option<String>>,
    pub tags: Option<Vec<String>>,
    pub attributes: Option<BTreeMap<String, Value>>,
}

fn invalid(rule: Rule, field: &'static str, message: impl Into<String>) -> StorageError {
    StorageError::Validation {
        field,
        rule,
        message: message.into(),
    }
}

impl RecordChange {
    /// Reads `{"display_name", "tags", "attributes"}` (any of them), refusing a value
    /// out of bounds with the field it is in.
    pub fn from_json(body: &Value) -> Result<RecordChange, StorageError> {
        let Some(object) = body.as_object() else {
            return Err(invalid(Rule::Type, "body", "must be a JSON object"));
        };
        let mut change = RecordChange::default();
        for (key, value) in object {
            match key.as_str() {
                "display_name" => {
                    change.display_name = Some(match value {
                        Value::Null => None,
                        Value::String(name) if name.trim().is_empty() => None,
                        Value::String(name)
                            if name.chars().count() <= MAX_NAME_CHARS
                                && !name.chars().any(char::is_control) =>
                        {
                            Some(name.trim().to_string())
                        }
                        _ => {
                            return Err(invalid(Rule::Length,
                                "display_name",
                                format!(
                                "must be a string of at most {MAX_NAME_CHARS} characters, without control characters, or null"
                            ),
                            ))
                        }
                    })
                }
                "tags" => change.tags = Some(tags(value)?),
                "attributes" => change.attributes = Some(attributes(value)?),
                _ => {
                    return Err(invalid(Rule::Unknown,
                        "body",
                        format!("unknown field {key:?} (display_name, tags, attributes)"),
                    ))
                }
            }
        }
        Ok(change)
    }
}

/// A tag as stored and searched: trimmed, 1 to 64 characters, no control characters.
pub fn normalize_tag(tag: &str) -> Result<String, StorageError> {
    let tag = tag.trim();
    if tag.is_empty() || tag.chars().count() > MAX_TAG_CHARS || tag.chars().any(char::is_control) {
        return Err(invalid(
            Rule::Length,
            "tags",
            format!("each tag must be 1 to {MAX_TAG_CHARS} characters, without control characters"),
        ));
    }
    Ok(tag.to_string())
}

fn tags(value: &Value) -> Result<Vec<String>, StorageError> {
    let Some(list) = value.as_array() else {
        return Err(invalid(Rule::Type, "tags", "must be an array of strings"));
    };
    let mut tags: Vec<String> = Vec::with_capacity(list.len());
    for tag in list {
        let tag = tag
            .as_str()
            .ok_or_else(|| invalid(Rule::Type, "tags", "must be an array of strings"))
            .and_then(normalize_tag)?;
        // Tags are searched case aside: one of each.
        if !tags.iter().any(|t| t.to_lowercase() == tag.to_lowercase()) {
            tags.push(tag);
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(invalid(
            Rule::Count,
            "tags",
            format!("at most {MAX_TAGS} tags"),
        ));
    }
    Ok(tags)
}

fn attributes(value: &Value) -> Result<BTreeMap<String, Value>, StorageError> {
    let Some(object) = value.as_object() else {
        return Err(invalid(
            Rule::Type,
            "attributes",
            "must be an object of names to values",
        ));
    };
    if object.len() > MAX_ATTRIBUTES {
        return Err(invalid(
            Rule::Count,
            "attributes",
            format!("at most {MAX_ATTRIBUTES} attributes"),
        ));
    }
    let mut attributes = BTreeMap::new();
    for (name, value) in object {
        // A name is searched as `name:value`: it holds no colon.
        let name = normalize_tag(name)
            .ok()
            .filter(|name| !name.contains(':'))
            .ok_or_else(|| {
                invalid(
                    Rule::Format,
                    "attributes",
                    format!("each name must be 1 to {MAX_TAG_CHARS} characters, without a colon"),
                )
            })?;
        let fits = match value {
            Value::String(text) => text.chars().count() <= MAX_ATTRIBUTE_VALUE_CHARS,
            Value::Number(_) | Value::Bool(_) => true,
            _ => false,
        };
        if !fits {
            return Err(invalid(Rule::Type,
                "attributes",
                format!(
                    "{name:?}: a value is a string of at most {MAX_ATTRIBUTE_VALUE_CHARS} characters, a number or a boolean"
                ),
            ));
        }
        attributes.insert(name, value.clone());
    }
    Ok(attributes)
}

/// An attribute's value as it is searched: a string as written, anything else as JSON.
pub fn attribute_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The label a tag is searched by (tags compare case aside).
pub fn tag_label(vault: &Vault, tenant_id: &TenantId, tag: &str) -> String {
    vault.blind_index(tenant_id.as_str(), "contact_tag", &tag.to_lowercase())
}

/// The label an attribute's value is searched by.
pub fn attribute_label(vault: &Vault, tenant_id: &TenantId, name: &str, value: &str) -> String {
    let named = format!("{}\u{0}{value}", name.to_lowercase());
    vault.blind_index(tenant_id.as_str(), "contact_attribute", &named)
}

/// The record of contact `contact_id`, opened; `None` when it has none or it cannot be
/// read (the contact's key is gone).
pub fn open_record(
    key: &SealKey,
    tenant_id: &str,
    contact_id: &str,
    crm_ct: &[u8],
) -> Option<ContactRecord> {
    let json = key
        .open(crm_ct, &contact_field(tenant_id, "crm_ct", contact_id))
        .ok()?;
    serde_json::from_slice(&json).ok()
}

/// Applies `change` to the record of `contact_id` of `tenant_id` and replaces its
/// labels; the record as it now is. Not found: no such contact of this tenant, or one
/// whose key is gone.
pub fn update_record(
    conn: &mut DbConn,
    vault: &Vault,
    tenant_id: &TenantId,
    contact_id: &str,
    change: &RecordChange,
) -> Result<ContactRecord, StorageError> {
    let tenant = tenant_id.as_str();
    let found: Option<(String, Option<Vec<u8>>)> = on_backend!(conn, c => contacts::table
        .find(contact_id)
        .filter(contacts::tenant_id.eq(tenant))
        .select((contacts::key_id, contacts::crm_ct))
        .get_result(c)
        .optional())?;
    let (key_id, sealed) = found.ok_or(StorageError::NotFound)?;
    let key = load_data_key(conn, vault, tenant_id, &key_id)?.ok_or(StorageError::NotFound)?;
    let mut record = sealed
        .and_then(|ct| open_record(&key, tenant, contact_id, &ct))
        .unwrap_or_default();
    if let Some(name) = &change.display_name {
        record.display_name.clone_from(name);
    }
    if let Some(tags) = &change.tags {
        record.tags.clone_from(tags);
    }
    if let Some(attributes) = &change.attributes {
        record.attributes.clone_from(attributes);
    }
    store_record(conn, vault, tenant_id, contact_id, &key, &record)?;
    Ok(record)
}

/// One record made of two contacts' (a merge): the survivor's fields win where both
/// have one; tags are both sets.
pub fn merge_records(kept: ContactRecord, gone: ContactRecord) -> ContactRecord {
    let mut merged = kept;
    if merged.display_name.is_none() {
        merged.display_name = gone.display_name;
    }
    for tag in gone.tags {
        if !merged.tags.contains(&tag) && merged.tags.len() < MAX_TAGS {
            merged.tags.push(tag);
        }
    }
    for (name, value) in gone.attributes {
        if merged.attributes.len() < MAX_ATTRIBUTES || merged.attributes.contains_key(&name) {
            merged.attributes.entry(name).or_insert(value);
        }
    }
    merged
}

/// Seals `record` as the record of `contact_id` under its `key` and replaces the
/// contact's labels with the record's.
pub(super) fn store_record(
    conn: &mut DbConn,
    vault: &Vault,
    tenant_id: &TenantId,
    contact_id: &str,
    key: &SealKey,
    record: &ContactRecord,
) -> Result<(), StorageError> {
    let tenant = tenant_id.as_str();
    let json = serde_json::to_vec(record).map_err(|e| StorageError::Corrupt(e.to_string()))?;
    let sealed = key.seal(&json, &contact_field(tenant, "crm_ct", contact_id))?;
    on_backend!(conn, c => diesel::update(contacts::table.find(contact_id))
        .set(contacts::crm_ct.eq(&sealed))
        .execute(c))?;
    on_backend!(conn, c => diesel::delete(contact_labels::table
            .filter(contact_labels::contact_id.eq(contact_id)))
        .execute(c))?;
    let mut labels: Vec<String> =
        record
            .tags
            .iter()
            .map(|tag| tag_label(vault, tenant_id, tag))
            .chain(record.attributes.iter().map(|(name, value)| {
                attribute_label(vault, tenant_id, name, &attribute_text(value))
            }))
            .collect();
    labels.sort_unstable();
    labels.dedup();
    let rows: Vec<_> = labels
        .iter()
        .map(|label| {
            (
                contact_labels::tenant_id.eq(tenant),
                contact_labels::label_bidx.eq(label),
                contact_labels::contact_id.eq(contact_id),
            )
        })
        .collect();
    if !rows.is_empty() {
        on_backend!(conn, c => diesel::insert_into(contact_labels::table)
            .values(&rows)
            .execute(c))?;
    }
    Ok(())
}
