//! Disclosures of a tenant's data to an authority (`disclosures`), as the operator
//! records them: whether the account holder may be told, and when they were. A
//! disclosure the law bars telling of waits, untold, until the operator lifts the bar.

use diesel::prelude::*;
use serde::Serialize;

use super::on_backend;
use super::schema::disclosures;
use super::{DbConn, StorageError};
use crate::ids::TenantId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disclosure {
    pub id: String,
    pub tenant_id: String,
    pub authority: String,
    pub recorded_at: i64,
    /// Whether the account holder may be told.
    pub notify: bool,
    pub notified_at: Option<i64>,
    pub lifted_at: Option<i64>,
}

type Row = (String, String, String, i64, bool, Option<i64>, Option<i64>);

fn from_row(row: Row) -> Disclosure {
    let (id, tenant_id, authority, recorded_at, notify, notified_at, lifted_at) = row;
    Disclosure {
        id,
        tenant_id,
        authority,
        recorded_at,
        notify,
        notified_at,
        lifted_at,
    }
}

macro_rules! columns {
    () => {
        (
            disclosures::id,
            disclosures::tenant_id,
            disclosures::authority,
            disclosures::recorded_at,
            disclosures::notify,
            disclosures::notified_at,
            disclosures::lifted_at,
        )
    };
}

/// Records a disclosure of `tenant_id`'s data to `authority`; told at once when
/// `notify` (the caller queues the email in the same transaction).
pub fn insert(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    authority: &str,
    notify: bool,
    now_ms: i64,
) -> Result<Disclosure, StorageError> {
    let disclosure = Disclosure {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id: tenant_id.to_string(),
        authority: authority.to_string(),
        recorded_at: now_ms,
        notify,
        notified_at: notify.then_some(now_ms),
        lifted_at: None,
    };
    on_backend!(conn, c => diesel::insert_into(disclosures::table)
        .values((
            disclosures::id.eq(&disclosure.id),
            disclosures::tenant_id.eq(&disclosure.tenant_id),
            disclosures::authority.eq(&disclosure.authority),
            disclosures::recorded_at.eq(now_ms),
            disclosures::notify.eq(notify),
            disclosures::notified_at.eq(disclosure.notified_at),
        ))
        .execute(c))?;
    Ok(disclosure)
}

pub fn get(conn: &mut DbConn, id: &str) -> Result<Option<Disclosure>, StorageError> {
    let row: Option<Row> = on_backend!(conn, c => disclosures::table
        .find(id)
        .select(columns!())
        .get_result(c)
        .optional())?;
    Ok(row.map(from_row))
}

/// Every disclosure, or `tenant_id`'s, oldest first.
pub fn list(
    conn: &mut DbConn,
    tenant_id: Option<&TenantId>,
) -> Result<Vec<Disclosure>, StorageError> {
    let rows: Vec<Row> = match tenant_id {
        Some(tenant) => on_backend!(conn, c => disclosures::table
            .filter(disclosures::tenant_id.eq(tenant.as_str()))
            .order(disclosures::id.asc())
            .select(columns!())
            .load(c))?,
        None => on_backend!(conn, c => disclosures::table
            .order(disclosures::id.asc())
            .select(columns!())
            .load(c))?,
    };
    Ok(rows.into_iter().map(from_row).collect())
}

/// Lifts the bar on telling of disclosure `id`, which is told now; `false` when it
/// was told already.
pub fn lift(conn: &mut DbConn, id: &str, now_ms: i64) -> Result<bool, StorageError> {
    let updated = on_backend!(conn, c => diesel::update(disclosures::table
        .find(id)
        .filter(disclosures::notified_at.is_null()))
        .set((
            disclosures::lifted_at.eq(Some(now_ms)),
            disclosures::notified_at.eq(Some(now_ms)),
        ))
        .execute(c))?;
    Ok(updated > 0)
}
