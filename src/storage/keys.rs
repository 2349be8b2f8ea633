//! Data keys (`data_keys`): the key store. Each contact's identifiers, profile and
//! messages are sealed under a data key of the contact's own, stored here wrapped by
//! the master key. A table of its own because more than contacts name keys: a
//! message keeps the key it was sealed under after its contact is merged into
//! another, so opening anything sealed (a contact, a listed message) goes through
//! `load_data_key` or `load_keys`.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;

use super::key_store::Vault;
use super::on_backend;
use super::schema::data_keys;
use super::{DbConn, StorageError};
use crate::crypto::{CryptoError, SealKey};
use crate::ids::{KeyId, TenantId};

pub fn insert_data_key(
    conn: &mut DbConn,
    keyring: &Vault,
    tenant_id: &TenantId,
    key_id: &KeyId,
    wrapped: &[u8],
    now_ms: i64,
) -> Result<(), StorageError> {
    insert_data_keys(conn, keyring, &[(tenant_id, key_id, wrapped)], now_ms)
}

/// Stores wrapped data keys, all in one statement.
pub fn insert_data_keys(
    conn: &mut DbConn,
    keyring: &Vault,
    keys: &[(&TenantId, &KeyId, &[u8])],
    now_ms: i64,
) -> Result<(), StorageError> {
    if keys.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = keys
        .iter()
        .map(|(tenant_id, key_id, wrapped)| {
            (
                data_keys::id.eq(key_id.as_str()),
                data_keys::tenant_id.eq(tenant_id.as_str()),
                data_keys::wrapped_key.eq(*wrapped),
                data_keys::created_at.eq(now_ms),
            )
        })
        .collect();
    keyring.with_store(conn, |conn| {
        on_backend!(conn, c => diesel::insert_into(data_keys::table)
            .values(&rows)
            .execute(c))?;
        Ok(())
    })
}

/// The data key `key_id` of `tenant_id`; `None` once destroyed. A key of another
/// tenant does not unwrap: its tenant is bound into its wrapping.
pub(super) fn load_data_key(
    conn: &mut DbConn,
    keyring: &Vault,
    tenant_id: &TenantId,
    key_id: &str,
) -> Result<Option<SealKey>, StorageError> {
    let wrapped: Option<Option<Vec<u8>>> = keyring.with_store(conn, |conn| {
        Ok(on_backend!(conn, c => data_keys::table
            .find(key_id)
            .filter(data_keys::tenant_id.eq(tenant_id.as_str()))
            .select(data_keys::wrapped_key)
            .get_result::<Option<Vec<u8>>>(c)
            .optional())?)
    })?;
    match wrapped.flatten() {
        Some(wrapped) => Ok(Some(keyring.unwrap_data_key(
            tenant_id.as_str(),
            key_id,
            &wrapped,
        )?)),
        None => Ok(None),
    }
}

/// Data keys by (tenant, key id), each opened or the reason it did not open.
pub(super) type OpenedKeys = HashMap<(String, String), Result<SealKey, CryptoError>>;

/// The data keys named in `wanted` (a tenant and a key id each), in one query, by
/// (tenant, key id); a key that is destroyed, or not of the tenant that asks for it, is
/// absent, and one that does not unwrap is an error of its own entry (the others still
/// open).
pub(super) fn load_data_keys(
    conn: &mut DbConn,
    keyring: &Vault,
    wanted: &[(&TenantId, &str)],
) -> Result<OpenedKeys, StorageError> {
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<&str> = wanted.iter().map(|(_, key_id)| *key_id).collect();
    let rows: Vec<(String, String, Option<Vec<u8>>)> = keyring.with_store(conn, |conn| {
        Ok(on_backend!(conn, c => data_keys::table
            .filter(data_keys::id.eq_any(&ids))
            .select((data_keys::id, data_keys::tenant_id, data_keys::wrapped_key))
            .load(c))?)
    })?;
    let asked: HashSet<(&str, &str)> = wanted
        .iter()
        .map(|(tenant_id, key_id)| (tenant_id.as_str(), *key_id))
        .collect();
    Ok(rows
        .into_iter()
        .filter(|(key_id, tenant, _)| asked.contains(&(tenant.as_str(), key_id.as_str())))
        .filter_map(|(key_id, tenant, wrapped)| {
            let key = keyring.unwrap_data_key(&tenant, &key_id, &wrapped?);
            Some(((tenant, key_id), key))
        })
        .collect())
}

/// Loads (and caches in `cache`) the keys named by `key_ids`; destroyed keys are absent.
pub(super) fn load_keys<'a>(
    conn: &mut DbConn,
    keyring: &Vault,
    tenant_id: &TenantId,
    key_ids: impl Iterator<Item = &'a str>,
    cache: &mut HashMap<String, Option<SealKey>>,
) -> Result<(), StorageError> {
    for key_id in key_ids {
        if !cache.contains_key(key_id) {
            let key = load_data_key(conn, keyring, tenant_id, key_id)?;
            cache.insert(key_id.to_string(), key);
        }
    }
    Ok(())
}
