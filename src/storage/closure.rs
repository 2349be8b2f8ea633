//! Account closure in the database. Closing a tenant (`tenants.closed_at`) takes its
//! API keys and its numbers (with their access tokens) at once, fails its queued sends
//! and parks its unprocessed inbox rows, in the transaction that records the closure, queues the account holder's
//! confirmation and audits it.
//! From `purge_after` on (at once when the operator asks, else after
//! `compliance.closure_grace_days`) its data goes a bounded batch at a time
//! ([`purge_batch`]); the last step destroys its data keys, records the purge with
//! the keys (`keystore.tenant_purges`, so a data backup restored later is purged again
//! by `converra erasure reapply`) and deletes the tenant's row, which takes the small
//! tables with it. The audit log stays: it names ids only, and is kept for its period.

use diesel::prelude::*;
use serde_json::json;

use super::audit::{self, Actor};
use super::erasure::overwriting_freed;
use super::key_store::Vault;
use super::on_backend;
use super::schema::{api_keys, data_keys, phone_numbers, tenant_purges, tenants};
use super::{email, DbConn, StorageError};
use crate::ids::TenantId;
use crate::rules::Conflict;

const DAY_MS: i64 = 86_400_000;

/// A tenant closed and not yet purged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closure {
    pub tenant_id: TenantId,
    pub closed_at: i64,
    /// Its data goes from this instant on.
    pub purge_after: i64,
}

/// What [`close`] did.
#[derive(Debug, Clone)]
pub struct Closed {
    pub closure: Closure,
    /// The phone numbers that stopped with it.
    pub numbers: Vec<String>,
    /// Whether it was closed by this call (`false`: closed before; only an earlier
    /// purge may have been asked for).
    pub newly: bool,
}

/// The confirmation to the account holder, rendered by the caller from what the
/// closure will be (it knows the templates; this module the rows).
pub type Confirmation<'a> =
    &'a dyn Fn(&str, &str, &Closure) -> Result<email::NewEmail, StorageError>;

/// Closes `tenant_id` at `now_ms`: API keys and numbers go, the data from
/// `purge_after` (now with `delete_data`, else `grace_days` later). Closing a closed
/// tenant again only brings its purge forward when `delete_data` asks for it.
pub fn close(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    delete_data: bool,
    grace_days: u32,
    confirmation: Confirmation<'_>,
    message_domain: &str,
    now_ms: i64,
) -> Result<Closed, StorageError> {
    super::write_transaction(conn, |conn| {
        // Two closures at once take turns (SQLite's write transaction does so by
        // itself): the second finds the tenant closed.
        if let DbConn::Pg(c) = conn {
            tenants::table
                .find(tenant_id.as_str())
                .select(tenants::id)
                .for_update()
                .load::<String>(c)?;
        }
        let tenant = super::tenants::get_tenant(conn, tenant_id)?;
        let purge_after = match delete_data {
            true => now_ms,
            false => now_ms + i64::from(grace_days) * DAY_MS,
        };
        if let (Some(closed_at), Some(before)) = (tenant.closed_at, tenant.purge_after) {
            let purge_after = before.min(purge_after);
            if purge_after < before {
                on_backend!(conn, c => diesel::update(tenants::table.find(tenant_id.as_str()))
                    .set(tenants::purge_after.eq(Some(purge_after)))
                    .execute(c))?;
                audit::append(
                    conn,
                    &audit::NewEntry {
                        tenant_id,
                        actor: Actor::Operator,
                        action: "tenant_purge_brought_forward",
                        request_id: None,
                        contact_id: None,
                        detail: json!({"purge_after": purge_after}),
                    },
                    now_ms,
                )?;
            }
            return Ok(Closed {
                closure: Closure {
                    tenant_id: tenant_id.clone(),
                    closed_at,
                    purge_after,
                },
                numbers: Vec::new(),
                newly: false,
            });
        }
        let closure = Closure {
            tenant_id: tenant_id.clone(),
            closed_at: now_ms,
            purge_after,
        };
        let closing = on_backend!(conn, c => diesel::update(tenants::table
            .find(tenant_id.as_str())
            .filter(tenants::closed_at.is_null()))
            .set((
                tenants::closed_at.eq(Some(now_ms)),
                tenants::purge_after.eq(Some(purge_after)),
            ))
            .execute(c))?;
        if closing == 0 {
            return Err(StorageError::Conflict {
                code: Conflict::TenantClosed,
                message: format!("tenant {tenant_id} was closed at the same time"),
            });
        }
        on_backend!(conn, c => diesel::delete(api_keys::table
            .filter(api_keys::tenant_id.eq(tenant_id.as_str())))
            .execute(c))?;
        let numbers: Vec<String> = on_backend!(conn, c => diesel::delete(phone_numbers::table
            .filter(phone_numbers::tenant_id.eq(tenant_id.as_str())))
            .returning(phone_numbers::phone_number_id)
            .get_results(c))?;
        let error = json!({"code": Conflict::TenantClosed.as_str(),
            "message": "the account was closed before this message was sent"});
        let sends_failed =
            super::outbox::fail_queued_of_tenant(conn, tenant_id, &error.to_string())?;
        super::inbox::park_tenant(conn, tenant_id, "the account is closed", now_ms)?;
        let email = confirmation(&tenant.name, &tenant.holder_email, &closure)?;
        email::queue(conn, &email, None, message_domain, now_ms)?;
        audit::append(
            conn,
            &audit::NewEntry {
                tenant_id,
                actor: Actor::Operator,
                action: "tenant_closed",
                request_id: None,
                contact_id: None,
                detail: json!({"delete_data": delete_data, "purge_after": purge_after,
                    "numbers": numbers.len(), "sends_failed": sends_failed}),
            },
            now_ms,
        )?;
        Ok(Closed {
            closure,
            numbers,
            newly: true,
        })
    })
}

/// Every tenant closed and not yet purged, oldest closure first.
pub fn closures(conn: &mut DbConn) -> Result<Vec<Closure>, StorageError> {
    let rows: Vec<(String, Option<i64>, Option<i64>)> = on_backend!(conn, c => tenants::table
        .filter(tenants::closed_at.is_not_null())
        .select((tenants::id, tenants::closed_at, tenants::purge_after))
        .order(tenants::closed_at.asc())
        .load(c))?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, closed_at, purge_after)| {
            Some(Closure {
                tenant_id: TenantId(id),
                closed_at: closed_at?,
                purge_after: purge_after.or(closed_at)?,
            })
        })
        .collect())
}

/// The tables a purge empties a batch at a time, the largest first: everything else of
/// the tenant goes with its row. Deleting a message takes its statuses and media.
const PURGED_IN_BATCHES: [&str; 9] = [
    "messages",
    "status_events",
    "inbox",
    "webhook_events",
    "outbox",
    "automation_runs",
    "conversations",
    "contacts",
    "privacy_requests",
];

/// Deletes the next batch (at most `limit` rows of one table) of the closed tenant's
/// data, from table `progress` of [`PURGED_IN_BATCHES`] on (a table found empty is not
/// looked at again: some have no index by tenant, and a tenant closed writes no
/// more); once nothing is left in them, destroys its data keys, records the purge with
/// the keys and deletes its row. Returns the rows deleted by this batch (table,
/// count), or `None` when the purge is complete. On SQLite what it deletes is
/// overwritten in place (`secure_delete`).
pub fn purge_batch(
    conn: &mut DbConn,
    vault: &Vault,
    tenant_id: &TenantId,
    progress: &mut usize,
    limit: i64,
    now_ms: i64,
) -> Result<Option<(&'static str, usize)>, StorageError> {
    overwriting_freed(conn, |conn| {
        while let Some(table) = PURGED_IN_BATCHES.get(*progress).copied() {
            let deleted = delete_some(conn, table, tenant_id, limit)?;
            if deleted > 0 {
                return Ok(Some((table, deleted)));
            }
            *progress += 1;
        }
        let purged_before: Option<i64> = vault.with_store(conn, |ks| {
            Ok(on_backend!(ks, c => tenant_purges::table
                .find(tenant_id.as_str())
                .select(tenant_purges::purged_at)
                .get_result(c)
                .optional())?)
        })?;
        if purged_before.is_none() {
            // The keys first, with the record: once they are gone, a copy of the data
            // anywhere (a backup) is unreadable.
            vault.with_store(conn, |ks| {
                on_backend!(ks, c => diesel::update(data_keys::table
                    .filter(data_keys::tenant_id.eq(tenant_id.as_str()))
                    .filter(data_keys::destroyed_at.is_null()))
                    .set((
                        data_keys::wrapped_key.eq(None::<Vec<u8>>),
                        data_keys::destroyed_at.eq(Some(now_ms)),
                    ))
                    .execute(c))?;
                on_backend!(ks, c => diesel::insert_into(tenant_purges::table)
                    .values((
                        tenant_purges::tenant_id.eq(tenant_id.as_str()),
                        tenant_purges::purged_at.eq(now_ms),
                    ))
                    .execute(c))?;
                Ok(())
            })?;
        }
        let gone = on_backend!(conn, c => diesel::delete(tenants::table.find(tenant_id.as_str()))
            .execute(c))?;
        if gone > 0 {
            audit::append(
                conn,
                &audit::NewEntry {
                    tenant_id,
                    actor: Actor::Compliance,
                    action: "tenant_purged",
                    request_id: None,
                    contact_id: None,
                    detail: json!({}),
                },
                now_ms,
            )?;
            return Ok(Some(("tenants", gone)));
        }
        Ok(None)
    })
}

/// Deletes at most `limit` rows of the tenant from `table` (one of
/// [`PURGED_IN_BATCHES`]), found through its `tenant_id`.
fn delete_some(
    conn: &mut DbConn,
    table: &'static str,
    tenant_id: &TenantId,
    limit: i64,
) -> Result<usize, StorageError> {
    use diesel::sql_types::{BigInt, Text};
    Ok(match conn {
        DbConn::Sqlite(c) => diesel::sql_query(format!(
            "DELETE FROM {table} WHERE id IN \
             (SELECT id FROM {table} WHERE tenant_id = ? LIMIT ?)"
        ))
        .bind::<Text, _>(tenant_id.as_str())
        .bind::<BigInt, _>(limit)
        .execute(c)?,
        DbConn::Pg(c) => diesel::sql_query(format!(
            "DELETE FROM {table} WHERE id IN \
             (SELECT id FROM {table} WHERE tenant_id = $1 LIMIT $2)"
        ))
        .bind::<Text, _>(tenant_id.as_str())
        .bind::<BigInt, _>(limit)
        .execute(c)?,
    })
}

/// The tenants the key store records as purged: a data backup restored after their
/// purge holds them again, and `converra erasure reapply` purges them anew.
pub fn purged_tenants(conn: &mut DbConn, vault: &Vault) -> Result<Vec<TenantId>, StorageError> {
    let ids: Vec<String> = vault.with_store(conn, |ks| {
        Ok(on_backend!(ks, c => tenant_purges::table
            .select(tenant_purges::tenant_id)
            .order(tenant_purges::tenant_id.asc())
            .load(c))?)
    })?;
    Ok(ids.into_iter().map(TenantId).collect())
}

/// Whether the data holds `tenant_id` (again, after a restore).
pub fn still_held(conn: &mut DbConn, tenant_id: &TenantId) -> Result<bool, StorageError> {
    let found: i64 = on_backend!(conn, c => tenants::table
        .filter(tenants::id.eq(tenant_id.as_str()))
        .count()
        .get_result(c))?;
    Ok(found > 0)
}
