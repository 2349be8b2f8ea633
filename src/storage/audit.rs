//! The audit log (`audit_log`): every compliance step and operator action, appended in
//! the transaction of what it records, with who did it, what, when, and the ids of its
//! targets. An entry names a request, a contact or a notice by id and carries no
//! personal data: a detail says which fields changed, never their values. No function
//! here updates an entry (the table refuses it); the retention sweep deletes entries
//! past the tenant's audit period ([`super::retention`]).

use diesel::prelude::*;
use serde_json::Value;

use super::on_backend;
use super::schema::audit_log;
use super::{DbConn, StorageError};
use crate::ids::TenantId;

/// Who acted: the tenant through its API key, the operator through the CLI, or the
/// daemon's own work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Api,
    Operator,
    Compliance,
    Retention,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Api => "api",
            Actor::Operator => "operator",
            Actor::Compliance => "compliance",
            Actor::Retention => "retention",
        }
    }
}

/// An entry to append.
pub struct NewEntry<'a> {
    pub tenant_id: &'a TenantId,
    pub actor: Actor,
    /// What happened, as a code (`retention_policy_changed`, `notice_queued`, ...).
    pub action: &'a str,
    pub request_id: Option<&'a str>,
    pub contact_id: Option<&'a str>,
    /// Ids and names of fields, never personal data.
    pub detail: Value,
}

/// An entry as stored.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub request_id: Option<String>,
    pub contact_id: Option<String>,
    pub detail: Value,
}

/// Appends `entry` at `now_ms`; its id orders entries by time.
pub fn append(
    conn: &mut DbConn,
    entry: &NewEntry<'_>,
    now_ms: i64,
) -> Result<String, StorageError> {
    let id = uuid::Uuid::now_v7().to_string();
    let detail = entry.detail.to_string();
    on_backend!(conn, c => diesel::insert_into(audit_log::table)
        .values((
            audit_log::id.eq(&id),
            audit_log::tenant_id.eq(entry.tenant_id.as_str()),
            audit_log::at.eq(now_ms),
            audit_log::actor.eq(entry.actor.as_str()),
            audit_log::action.eq(entry.action),
            audit_log::request_id.eq(entry.request_id),
            audit_log::contact_id.eq(entry.contact_id),
            audit_log::detail_json.eq(&detail),
        ))
        .execute(c))?;
    Ok(id)
}

type Row = (
    String,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
);

/// The tenant's entries, newest first, before `cursor` (an entry id) when given.
pub fn entries(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<Entry>, StorageError> {
    let rows: Vec<Row> = on_backend!(conn, c => {
        let mut query = audit_log::table
            .filter(audit_log::tenant_id.eq(tenant_id.as_str()))
            .order(audit_log::id.desc())
            .limit(limit)
            .select((audit_log::id, audit_log::at, audit_log::actor, audit_log::action,
                     audit_log::request_id, audit_log::contact_id, audit_log::detail_json))
            .into_boxed();
        if let Some(cursor) = cursor {
            query = query.filter(audit_log::id.lt(cursor));
        }
        query.load(c)
    })?;
    rows.into_iter()
        .map(|(id, at, actor, action, request_id, contact_id, detail)| {
            let detail = serde_json::from_str(&detail)
                .map_err(|e| StorageError::Corrupt(format!("audit entry {id}: {e}")))?;
            Ok(Entry {
                id,
                at,
                actor,
                action,
                request_id,
                contact_id,
                detail,
            })
        })
        .collect()
}
