//! The key store: the wrapped per-contact data keys (`data_keys`) and day keys
//! (`raw_keys`), kept apart from the data so that a copy of one is no use without the
//! other, and destroying a key reaches every copy of what it sealed. On SQLite it is a
//! second file, attached to every connection as `keystore`. On PostgreSQL it is the
//! `keystore` schema of the data's database or, with `database.key_store_url`, a
//! database of its own (on another server if need be), reached through connections
//! of its own. [`Vault`] is the master key's keyring together with the way to its key
//! store: whatever reads or writes keys goes through it.

use std::ops::Deref;
use std::time::Duration;

use diesel::prelude::*;
use diesel::r2d2;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::on_backend;
use super::schema::{contacts, data_keys, raw_keys};
use super::{DatabaseUrl, DbConn, DbManager, Pool, StorageError};
use crate::config::Settings;
use crate::crypto::Keyring;

const KEY_STORE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/keystore");

/// The master key's keyring and the key store it opens.
pub struct Vault {
    keyring: Keyring,
    /// The key store's own connections; `None` when it lives in the data's database.
    separate: Option<Pool>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("separate_key_store", &self.separate.is_some())
            .finish()
    }
}

impl Deref for Vault {
    type Target = Keyring;

    fn deref(&self) -> &Keyring {
        &self.keyring
    }
}

impl Vault {
    /// A key store in the data's database: SQLite's attached file, or PostgreSQL's
    /// `keystore` schema (the tests' shortcut; the daemon opens it with [`Vault::new`]).
    #[cfg(any(test, feature = "testing"))]
    pub fn attached(keyring: Keyring) -> Vault {
        Vault {
            keyring,
            separate: None,
        }
    }

    pub fn new(keyring: Keyring, separate: Option<Pool>) -> Vault {
        Vault { keyring, separate }
    }

    /// Runs `f` on the key store: on `conn` itself (inside its transaction) when the
    /// keys live with the data, else on a connection of the key store's own, where
    /// each statement commits on its own. Keys are written before what they seal and
    /// destroyed after it is gone, so a crash between the two databases leaves an
    /// unused key, never data without its key.
    pub fn with_store<T>(
        &self,
        conn: &mut DbConn,
        f: impl FnOnce(&mut DbConn) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        with_key_store(self.separate.as_ref(), conn, f)
    }
}

/// [`Vault::with_store`] before there is a vault (the master key check).
pub fn with_key_store<T>(
    separate: Option<&Pool>,
    conn: &mut DbConn,
    f: impl FnOnce(&mut DbConn) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    match separate {
        None => f(conn),
        Some(pool) => f(&mut *pool.get().map_err(StorageError::from)?),
    }
}

/// Connects to the key store: `None` when the keys live with the data, else a pool of
/// the key store database's own (`database.key_store_url`), its migrations applied.
/// Refuses a key store that holds no key beside data that has contacts (restored
/// without its key store, or `key_store_url` forgotten), and a key store of its own
/// while the data's `keystore` schema still holds keys (they are to be moved first).
pub fn connect(settings: &Settings, data: &mut DbConn) -> Result<Option<Pool>, StorageError> {
    let separate = connect_separate(settings, data)?;
    // SQLite's key store file is checked where it is attached (`run_migrations`).
    let DbConn::Pg(pg) = &mut *data else {
        return Ok(separate);
    };
    let has_contacts = diesel::select(diesel::dsl::exists(contacts::table.select(contacts::id)))
        .get_result::<bool>(pg)?;
    if has_contacts {
        let has_keys = with_key_store(separate.as_ref(), data, |conn| {
            Ok(on_backend!(conn, c => diesel::select(diesel::dsl::exists(
                data_keys::table.select(data_keys::id))).get_result::<bool>(c))?)
        })?;
        if !has_keys {
            let which = if separate.is_some() {
                "the key store database (database.key_store_url)"
            } else {
                "the key store (the keystore schema of the data's database)"
            };
            return Err(StorageError::KeyStore(format!(
                "the database holds contacts but {which} holds no keys: restore the key \
                 store that belongs to this data, or set database.key_store_url to it"
            )));
        }
    }
    Ok(separate)
}

fn connect_separate(settings: &Settings, data: &mut DbConn) -> Result<Option<Pool>, StorageError> {
    let url = &settings.database.key_store_url;
    if url.is_empty() {
        return Ok(None);
    }
    let (DatabaseUrl::Postgres(_), DbConn::Pg(_)) =
        (DatabaseUrl::parse(url).map_err(StorageError::Url)?, &*data)
    else {
        return Err(StorageError::KeyStore(
            "database.key_store_url: a key store database of its own is for PostgreSQL \
             data; SQLite's key store is the file database.key_store_path"
                .into(),
        ));
    };
    let mut own = settings.clone();
    own.database.url = url.clone();
    own.database.url_file = String::new();
    let manager = DbManager::new(&own)?;
    let mut first = manager.establish().map_err(|e| match e {
        StorageError::Connect(reason) => StorageError::Connect(format!("key store: {reason}")),
        other => other,
    })?;
    if let DbConn::Pg(c) = &mut first {
        super::without_statement_timeout(c, |c| {
            c.run_pending_migrations(KEY_STORE_MIGRATIONS)
                .map(|_| ())
                .map_err(|e| StorageError::Migration(format!("key store: {e}")))
        })?;
    }
    let left_behind = on_backend!(data, c => {
        diesel::select(diesel::dsl::exists(data_keys::table.select(data_keys::id)))
            .get_result::<bool>(c)?
            || diesel::select(diesel::dsl::exists(raw_keys::table.select(raw_keys::day)))
                .get_result::<bool>(c)?
    });
    if left_behind {
        return Err(StorageError::KeyStore(
            "database.key_store_url names a key store of its own, but the data's database \
             still holds keys in its keystore schema. Move them first (pg_dump \
             --schema=keystore --data-only from the data's database into the key store's, \
             then empty the data's keystore tables), or unset database.key_store_url"
                .into(),
        ));
    }
    drop(first);
    let pool = r2d2::Pool::builder()
        .max_size(settings.database.pool_size)
        .connection_timeout(Duration::from_secs(
            settings.database.connect_timeout_secs.max(1),
        ))
        .build(manager)
        .map_err(|e| StorageError::Connect(format!("key store: {e}")))?;
    Ok(Some(pool))
}
