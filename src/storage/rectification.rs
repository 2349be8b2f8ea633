//! Rectification: the corrections a business forwards for its customer's contact
//! fields. They wait on their request sealed under the contact's own key (so an
//! erasure before they run makes them unreadable too), and are emptied when applied:
//! the contact's row then holds only the new values (on SQLite the replaced ones are
//! overwritten in place; PostgreSQL's dead row versions go with its vacuum). The audit
//! log names the fields given, never a value.

use diesel::prelude::*;
use serde_json::Value;

use super::contact_crm::{update_record, RecordChange};
use super::contacts::contact_field;
use super::key_store::Vault;
use super::keys::load_data_key;
use super::on_backend;
use super::privacy::{self, Request};
use super::schema::{contacts, privacy_requests};
use super::{DbConn, StorageError};
use crate::crypto::Place;
use crate::ids::ContactId;
use crate::rules::Rule;

/// The longest profile name or username a correction sets.
const MAX_NAME_CHARS: usize = 256;

/// The contact fields a rectification corrects, as the contact item names them.
pub const FIELDS: [&str; 5] = [
    "profile_name",
    "username",
    "display_name",
    "tags",
    "attributes",
];

/// Corrections, checked: each field given is set (`None`: cleared).
#[derive(Debug, Default)]
pub struct Changes {
    pub profile_name: Option<Option<String>>,
    pub username: Option<Option<String>>,
    pub record: RecordChange,
    /// The fields given, in [`FIELDS`] order.
    pub fields: Vec<&'static str>,
}

fn invalid(rule: Rule, field: &'static str, message: String) -> StorageError {
    StorageError::Validation {
        field,
        rule,
        message,
    }
}

/// A name as a correction sets it: a string (trimmed; empty clears) or null.
fn name(field: &'static str, value: &Value) -> Result<Option<String>, StorageError> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) if text.trim().is_empty() => Ok(None),
        Value::String(text)
            if text.chars().count() <= MAX_NAME_CHARS && !text.chars().any(char::is_control) =>
        {
            Ok(Some(text.trim().to_string()))
        }
        _ => Err(invalid(Rule::Length,
            field,
            format!("must be a string of at most {MAX_NAME_CHARS} characters, without control characters, or null"),
        )),
    }
}

impl Changes {
    /// Reads a request's `changes`: an object of at least one of [`FIELDS`]; a field
    /// at fault is named `changes.FIELD`.
    pub fn from_json(changes: &Value) -> Result<Changes, StorageError> {
        let Some(object) = changes.as_object().filter(|o| !o.is_empty()) else {
            return Err(invalid(
                Rule::Type,
                "changes",
                format!("must be an object of one or more of {}", FIELDS.join(", ")),
            ));
        };
        let mut parsed = Changes::default();
        let mut record = serde_json::Map::new();
        for (key, value) in object {
            match key.as_str() {
                "profile_name" => parsed.profile_name = Some(name("changes.profile_name", value)?),
                "username" => parsed.username = Some(name("changes.username", value)?),
                "display_name" | "tags" | "attributes" => {
                    record.insert(key.clone(), value.clone());
                }
                _ => {
                    return Err(invalid(
                        Rule::Unknown,
                        "changes",
                        format!(
                            "{key} is not a field a rectification corrects ({})",
                            FIELDS.join(", ")
                        ),
                    ))
                }
            }
        }
        parsed.record = RecordChange::from_json(&Value::Object(record)).map_err(|e| match e {
            StorageError::Validation {
                field,
                rule,
                message,
            } => {
                let field = match field {
                    "display_name" => "changes.display_name",
                    "tags" => "changes.tags",
                    "attributes" => "changes.attributes",
                    _ => "changes",
                };
                invalid(rule, field, message)
            }
            other => other,
        })?;
        parsed.fields = FIELDS
            .into_iter()
            .filter(|field| object.contains_key(*field))
            .collect();
        Ok(parsed)
    }
}

fn changes_place<'a>(request: &'a Request) -> Place<'a> {
    Place::new(
        request.tenant_id.as_str(),
        "privacy_requests",
        "changes_ct",
        &request.id,
    )
}

/// Keeps `changes` (checked by [`Changes::from_json`]) on `request`, sealed under the
/// key of its subject's contact. A subject the tenant never saw keeps nothing: its
/// request is rejected when it runs.
pub fn keep_changes(
    conn: &mut DbConn,
    vault: &Vault,
    request: &Request,
    changes: &Value,
) -> Result<(), StorageError> {
    let Some(contact) = privacy::find_subject(conn, &request.tenant_id, &request.subject_bidx)?
    else {
        return Ok(());
    };
    let key_id: String = on_backend!(conn, c => contacts::table
        .find(contact.as_str())
        .select(contacts::key_id)
        .get_result(c))?;
    let Some(key) = load_data_key(conn, vault, &request.tenant_id, &key_id)? else {
        return Ok(());
    };
    let sealed = key.seal(changes.to_string().as_bytes(), &changes_place(request))?;
    on_backend!(conn, c => diesel::update(privacy_requests::table.find(&request.id))
        .set((
            privacy_requests::changes_ct.eq(Some(sealed)),
            privacy_requests::changes_key_id.eq(Some(key_id)),
        ))
        .execute(c))?;
    Ok(())
}

/// Applies the changes kept on `request` to `contact_id` and empties them; the fields
/// changed. `None` when none can be read (never kept, or their key is gone).
pub fn apply(
    conn: &mut DbConn,
    vault: &Vault,
    request: &Request,
    contact_id: &ContactId,
) -> Result<Option<Vec<&'static str>>, StorageError> {
    let kept: Option<(Option<Vec<u8>>, Option<String>)> = on_backend!(conn, c => privacy_requests::table
        .find(&request.id)
        .select((privacy_requests::changes_ct, privacy_requests::changes_key_id))
        .get_result(c)
        .optional())?;
    let Some((Some(sealed), Some(key_id))) = kept else {
        return Ok(None);
    };
    let Some(key) = load_data_key(conn, vault, &request.tenant_id, &key_id)? else {
        return Ok(None);
    };
    let json = key.open(&sealed, &changes_place(request))?;
    let value: Value =
        serde_json::from_slice(&json).map_err(|e| StorageError::Corrupt(e.to_string()))?;
    let changes = Changes::from_json(&value)?;
    let tenant = request.tenant_id.as_str();
    let contact = contact_id.as_str();
    // Sealed under the contact's own key, which may differ from the one the changes
    // waited under (a merge).
    let contact_key_id: Option<String> = on_backend!(conn, c => contacts::table
        .find(contact)
        .filter(contacts::tenant_id.eq(tenant))
        .select(contacts::key_id)
        .get_result(c)
        .optional())?;
    let Some(contact_key_id) = contact_key_id else {
        return Ok(None);
    };
    let Some(contact_key) = load_data_key(conn, vault, &request.tenant_id, &contact_key_id)? else {
        return Ok(None);
    };
    let seal = |column: &'static str,
                value: &Option<String>|
     -> Result<Option<Vec<u8>>, StorageError> {
        value
            .as_ref()
            .map(|text| contact_key.seal(text.as_bytes(), &contact_field(tenant, column, contact)))
            .transpose()
            .map_err(StorageError::from)
    };
    if let Some(profile_name) = &changes.profile_name {
        let sealed = seal("profile_name_ct", profile_name)?;
        on_backend!(conn, c => diesel::update(contacts::table.find(contact))
            .set(contacts::profile_name_ct.eq(sealed))
            .execute(c))?;
    }
    if let Some(username) = &changes.username {
        let sealed = seal("username_ct", username)?;
        on_backend!(conn, c => diesel::update(contacts::table.find(contact))
            .set(contacts::username_ct.eq(sealed))
            .execute(c))?;
    }
    let record = &changes.record;
    if record.display_name.is_some() || record.tags.is_some() || record.attributes.is_some() {
        update_record(conn, vault, &request.tenant_id, contact, record)?;
    }
    on_backend!(conn, c => diesel::update(privacy_requests::table.find(&request.id))
        .set((
            privacy_requests::changes_ct.eq(None::<Vec<u8>>),
            privacy_requests::changes_key_id.eq(None::<String>),
        ))
        .execute(c))?;
    Ok(Some(changes.fields))
}
