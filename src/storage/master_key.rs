//! The master key's check value in the database: which key the data was sealed under,
//! so that a missing or replaced key file is refused by name instead of a new key
//! being created that opens none of the data.

use diesel::prelude::*;

use super::key_store::with_key_store;
use super::on_backend;
use super::schema::{data_keys, inbox, master_key_check, phone_numbers, tenants, webhook_events};
use super::{write_transaction, DbConn, Pool, StorageError};
use crate::crypto::Keyring;

/// The check value recorded with the first key, if any.
pub fn recorded(conn: &mut DbConn) -> Result<Option<String>, StorageError> {
    Ok(on_backend!(conn, c => master_key_check::table
        .select(master_key_check::check_value)
        .get_result::<String>(c)
        .optional())?)
}

/// Whether anything in the database was sealed under a master key (or names a tenant
/// whose data would be): a database where a new key may be made holds none of this.
pub fn holds_data(conn: &mut DbConn, key_store: Option<&Pool>) -> Result<bool, StorageError> {
    use diesel::dsl::exists;
    // EXISTS, not COUNT: this runs at every start and every operator command, and a
    // count would read a large inbox or key store whole.
    let data = on_backend!(conn, c => {
        diesel::select(exists(tenants::table.select(tenants::id))).get_result::<bool>(c)?
            || diesel::select(exists(phone_numbers::table.select(phone_numbers::phone_number_id)))
                .get_result::<bool>(c)?
            || diesel::select(exists(inbox::table.select(inbox::id))).get_result::<bool>(c)?
            || diesel::select(exists(webhook_events::table.select(webhook_events::id)))
                .get_result::<bool>(c)?
    });
    Ok(data
        || with_key_store(key_store, conn, |conn| {
            Ok(
                on_backend!(conn, c => diesel::select(exists(data_keys::table.select(data_keys::id)))
                .get_result::<bool>(c))?,
            )
        })?)
}

/// Tries one wrapped data key, to test a key file against a database that holds data but no
/// check value yet (one made before check values were recorded).
/// Returns whether `keyring` opens it.
pub fn opens_a_data_key(
    conn: &mut DbConn,
    key_store: Option<&Pool>,
    keyring: &Keyring,
) -> Result<bool, StorageError> {
    type Row = (String, String, Option<Vec<u8>>);
    // Any one of many rows: `LIMIT 1` (see `clippy.toml`; this runs once, at start).
    #[allow(clippy::disallowed_methods)]
    let found: Option<Row> = with_key_store(key_store, conn, |conn| {
        Ok(on_backend!(conn, c => data_keys::table
            .filter(data_keys::wrapped_key.is_not_null())
            .select((data_keys::tenant_id, data_keys::id, data_keys::wrapped_key))
            .first::<Row>(c)
            .optional())?)
    })?;
    let Some((tenant_id, key_id, Some(wrapped))) = found else {
        return Ok(true);
    };
    Ok(if crate::crypto::is_legacy(&wrapped) {
        let place = crate::crypto::Place::new(&tenant_id, "data_keys", "wrapped_key", &key_id);
        keyring.rewrap_legacy(&key_id, &wrapped, &place).is_ok()
    } else {
        keyring
            .unwrap_data_key(&tenant_id, &key_id, &wrapped)
            .is_ok()
    })
}

/// Records `check_value` unless one is recorded already; returns the one in force
/// (another process may have recorded its own first).
pub fn record(conn: &mut DbConn, check_value: &str, now_ms: i64) -> Result<String, StorageError> {
    write_transaction(conn, |conn| {
        if let Some(existing) = recorded(conn)? {
            return Ok(existing);
        }
        insert(conn, check_value, now_ms)?;
        Ok(check_value.to_string())
    })
}

fn insert(conn: &mut DbConn, check_value: &str, now_ms: i64) -> Result<(), StorageError> {
    on_backend!(conn, c => diesel::insert_into(master_key_check::table)
        .values((
            master_key_check::id.eq(1),
            master_key_check::check_value.eq(check_value),
            master_key_check::created_at.eq(now_ms),
        ))
        .execute(c))?;
    Ok(())
}

/// Records `check_value` in place of any other: only for a database that holds no
/// data yet (see [`holds_data`]), where no key is wrong.
pub fn replace(conn: &mut DbConn, check_value: &str, now_ms: i64) -> Result<(), StorageError> {
    write_transaction(conn, |conn| {
        if recorded(conn)?.as_deref() == Some(check_value) {
            return Ok(());
        }
        on_backend!(conn, c => diesel::delete(master_key_check::table).execute(c))?;
        insert(conn, check_value, now_ms)
    })
}
