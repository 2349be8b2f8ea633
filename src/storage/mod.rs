//! The only place that speaks diesel. One code base serves SQLite (embedded default:
//! bundled, WAL, busy timeout, foreign keys) and PostgreSQL, chosen by the URL scheme.
//! Queries are written once and compiled for each backend by [`on_backend!`]; the
//! connection enum comes from diesel's `MultiConnection` derive, but connecting is done
//! here so a bad URL or an unreachable server reports the real reason.
//!
//! Blocking: every function here blocks. Async code reaches them through the
//! [`writer`] thread (all writes, group-committed) or `web::block` (reads).

pub mod apply;
pub mod audit;
pub mod automations;
pub mod closure;
pub mod contact_crm;
pub mod contacts;
pub mod conversations;
pub mod disclosures;
pub mod email;
pub mod enquiries;
pub mod erasure;
mod fixed;
pub mod handoff;
pub mod inbox;
pub mod key_store;
pub mod keys;
pub mod master_key;
pub mod media;
pub mod messages;
pub mod messaging_limits;
pub mod outbox;
pub mod policy;
pub mod privacy;
pub mod raw_keys;
pub mod readers;
pub mod rectification;
pub mod reminders;
pub mod report;
pub mod retention;
pub mod routes;
pub mod templates;
pub mod tenants;
pub mod upgrade;
pub mod usage;
pub mod writer;

pub mod schema;
pub mod sqlite;

pub use sqlite::conversation_index;

use std::path::PathBuf;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{self, ManageConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::config::Settings;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

#[derive(diesel::MultiConnection)]
pub enum DbConn {
    Pg(diesel::PgConnection),
    Sqlite(diesel::SqliteConnection),
}

/// Runs `$body` with `$c` bound to the concrete connection of whichever backend `$conn`
/// is. The body is compiled once per backend, which is how backend-specific SQL
/// (`ON CONFLICT`, `RETURNING`) and everything else share one source.
#[macro_export]
macro_rules! on_backend {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::storage::DbConn::Sqlite($c) => $body,
            $crate::storage::DbConn::Pg($c) => $body,
        }
    };
}

/// Storage's own modules take the macro from here, not from the crate root.
pub use crate::on_backend;

pub type Pool = r2d2::Pool<DbManager>;
pub type PooledConn = r2d2::PooledConnection<DbManager>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database url: {0}")]
    Url(String),
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The key store does not belong with this data, or is configured wrongly.
    #[error("key store: {0}")]
    KeyStore(String),
    #[error("migrations failed: {0}")]
    Migration(String),
    #[error("not found")]
    NotFound,
    /// A value breaks a rule of its own (empty, malformed); `field` names it as the
    /// caller wrote it, `rule` names the rule.
    #[error("{field}: {message}")]
    Validation {
        field: &'static str,
        rule: crate::rules::Rule,
        message: String,
    },
    /// An idempotency key given again with another request than the one it first
    /// came with: nothing is done.
    #[error("the idempotency key was used for another request")]
    IdempotencyKeyReused,
    /// The request is valid but clashes with what is stored; `code` names the rule.
    #[error("{message}")]
    Conflict {
        code: crate::rules::Conflict,
        message: String,
    },
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("encryption: {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A write named a contact that is not (or no longer) the one the database holds
    /// for its identifiers: merged into another, or created first by another
    /// conversation. The caller resolves the contact again and retries at once.
    #[error("contact {0} is not current (merged into another, or created first elsewhere)")]
    ContactStale(String),
    /// A copy, for each job of a batch that failed together, of an error diesel
    /// cannot copy (see [`StorageError::copy`]): retrying the write as it is will not
    /// succeed.
    #[error("{0}")]
    Rejected(String),
    /// An email or notice composed inside a write did not render: a bug of this build's
    /// templates, so nothing is written.
    #[error("email template {name}: {message}")]
    Template { name: &'static str, message: String },
    /// Work on the blocking pool or in a task that panicked (a bug) or was cancelled:
    /// a 500 with its cause logged, not a database outage.
    #[error("a storage task did not finish: {0}")]
    Panicked(String),
}

/// What a caught panic said (its message, when it gave one). The writer and reader
/// threads catch their panics to keep serving; the actors use it for theirs.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

impl From<r2d2::PoolError> for StorageError {
    fn from(e: r2d2::PoolError) -> Self {
        StorageError::Unavailable(e.to_string())
    }
}

impl StorageError {
    /// The same error again, of the same kind, for each of the jobs or questions of a
    /// batch that failed together: a transient error stays transient, a conflict a
    /// conflict, a database error keeps its kind and message. Only diesel's own errors
    /// outside the database (a query that cannot be built, a row that cannot be read)
    /// become [`StorageError::Rejected`] with their message.
    pub fn copy(&self) -> StorageError {
        use diesel::result::Error;
        match self {
            StorageError::Url(m) => StorageError::Url(m.clone()),
            StorageError::Connect(m) => StorageError::Connect(m.clone()),
            StorageError::Unavailable(m) => StorageError::Unavailable(m.clone()),
            StorageError::KeyStore(m) => StorageError::KeyStore(m.clone()),
            StorageError::Migration(m) => StorageError::Migration(m.clone()),
            StorageError::NotFound => StorageError::NotFound,
            StorageError::IdempotencyKeyReused => StorageError::IdempotencyKeyReused,
            StorageError::Validation {
                field,
                rule,
                message,
            } => StorageError::Validation {
                field,
                rule: *rule,
                message: message.clone(),
            },
            StorageError::Conflict { code, message } => StorageError::Conflict {
                code: *code,
                message: message.clone(),
            },
            StorageError::Query(Error::DatabaseError(kind, info)) => StorageError::Query(
                Error::DatabaseError(*kind, Box::new(info.message().to_string())),
            ),
            StorageError::Query(Error::NotFound) => StorageError::Query(Error::NotFound),
            StorageError::Query(Error::BrokenTransactionManager) => {
                StorageError::Query(Error::BrokenTransactionManager)
            }
            StorageError::Query(Error::RollbackTransaction) => {
                StorageError::Query(Error::RollbackTransaction)
            }
            StorageError::Query(e) => StorageError::Rejected(e.to_string()),
            StorageError::Crypto(e) => StorageError::Crypto(e.clone()),
            StorageError::Corrupt(m) => StorageError::Corrupt(m.clone()),
            StorageError::ContactStale(c) => StorageError::ContactStale(c.clone()),
            StorageError::Rejected(m) => StorageError::Rejected(m.clone()),
            StorageError::Template { name, message } => StorageError::Template {
                name,
                message: message.clone(),
            },
            StorageError::Panicked(m) => StorageError::Panicked(m.clone()),
        }
    }

    /// Whether retrying later may succeed (the database is down or busy), as opposed
    /// to a request that will never succeed.
    pub fn is_transient(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error};
        match self {
            StorageError::Unavailable(_) | StorageError::Connect(_) => true,
            StorageError::Query(Error::DatabaseError(kind, info)) => {
                matches!(
                    kind,
                    DatabaseErrorKind::ClosedConnection
                        | DatabaseErrorKind::UnableToSendCommand
                        | DatabaseErrorKind::SerializationFailure
                        | DatabaseErrorKind::ReadOnlyTransaction
                ) || info.message().contains("locked")
                    || info.message().contains("busy")
                    || info.message().contains("disk I/O")
                    || info.message().contains("deadlock detected")
                    || info.message().contains("shutting down")
                    || info.message().contains("starting up")
            }
            StorageError::Query(Error::BrokenTransactionManager) => true,
            _ => false,
        }
    }
}

pub use crate::config::DatabaseUrl;

/// Opens connections for the pool: the backend from the URL scheme, SQLite's pragmas
/// and key store, and connection errors passed through verbatim.
#[derive(Debug, Clone)]
pub struct DbManager {
    url: DatabaseUrl,
    key_store: Option<PathBuf>,
    synchronous: String,
    busy_timeout_ms: u64,
    connect_timeout_secs: u64,
    statement_timeout_secs: u64,
}

impl DbManager {
    pub fn new(settings: &Settings) -> Result<DbManager, StorageError> {
        let url = DatabaseUrl::parse(&settings.database.url).map_err(StorageError::Url)?;
        let key_store = match &url {
            DatabaseUrl::Sqlite(path) => Some(settings.sqlite_key_store_path(path)),
            DatabaseUrl::Postgres(_) => None,
        };
        Ok(DbManager {
            url,
            key_store,
            synchronous: settings.database.sqlite_synchronous.to_uppercase(),
            busy_timeout_ms: settings.database.sqlite_busy_timeout_ms,
            connect_timeout_secs: settings.database.connect_timeout_secs,
            statement_timeout_secs: settings.database.statement_timeout_secs,
        })
    }

    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    pub fn establish(&self) -> Result<DbConn, StorageError> {
        match &self.url {
            DatabaseUrl::Sqlite(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    crate::crypto::create_private_dir(parent).map_err(|e| {
                        StorageError::Connect(format!("cannot create {}: {e}", parent.display()))
                    })?;
                }
                let path_text = path.to_str().ok_or_else(|| {
                    StorageError::Url(format!("{} is not valid UTF-8", path.display()))
                })?;
                let mut conn = SqliteConnection::establish(path_text).map_err(|e| {
                    StorageError::Connect(format!("sqlite file {}: {e}", path.display()))
                })?;
                // busy_timeout first: switching to WAL needs a lock another connection
                // (the daemon, an operator command) may hold for a moment. WAL lets
                // readers run beside the writer; FULL makes an acknowledged webhook
                // survive power loss, NORMAL only a process crash.
                conn.batch_execute(&format!(
                    "PRAGMA busy_timeout = {busy}; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON;",
                    sync = self.synchronous,
                    busy = self.busy_timeout_ms
                ))
                .map_err(|e| StorageError::Connect(format!("sqlite pragmas: {e}")))?;
                if let Some(key_store) = &self.key_store {
                    let key_store = key_store.to_str().ok_or_else(|| {
                        StorageError::Url(format!("{} is not valid UTF-8", key_store.display()))
                    })?;
                    diesel::sql_query("ATTACH DATABASE ? AS keystore")
                        .bind::<diesel::sql_types::Text, _>(key_store)
                        .execute(&mut conn)
                        .map_err(|e| {
                            StorageError::Connect(format!("key store {key_store}: {e}"))
                        })?;
                    conn.batch_execute(&format!(
                        "PRAGMA keystore.journal_mode = WAL; PRAGMA keystore.synchronous = {}; \
                         PRAGMA keystore.secure_delete = ON;",
                        self.synchronous
                    ))
                    .map_err(|e| StorageError::Connect(format!("key store pragmas: {e}")))?;
                }
                Ok(DbConn::Sqlite(conn))
            }
            DatabaseUrl::Postgres(url) => {
                let url = self.postgres_url(url);
                let mut conn = PgConnection::establish(&url)
                    .map_err(|e| StorageError::Connect(format!("postgres: {e}")))?;
                // Set by the daemon itself, whatever the server's configuration says:
                // a 200 to Meta must follow durability (synchronous_commit = off would
                // answer before the commit reaches the disk), and no statement may
                // hold a writer for ever. Statements are planned with index lookups,
                // never a sequential scan where an index serves: every statement
                // Converra runs reaches its rows by key, but a planner that takes a
                // table for small (joined to a batch of unnested rows, or grown since
                // its statistics were taken, as a new tenant's tables are) reads it
                // whole, and a prepared statement's plan, fixed after its fifth run,
                // keeps doing so until the next ANALYZE (docs/performance.md).
                conn.batch_execute(&format!(
                    "SET synchronous_commit = on; SET statement_timeout = '{}s'; \
                     SET enable_seqscan = off;",
                    self.statement_timeout_secs
                ))
                .map_err(|e| StorageError::Connect(format!("postgres session settings: {e}")))?;
                Ok(DbConn::Pg(conn))
            }
        }
    }
}

impl DbManager {
    /// The operator's URL with libpq's connect timeout and TCP keepalives added where
    /// it does not set them: a server that vanishes (no reset, no answer) is then
    /// noticed in about a minute instead of when the kernel gives up, hours later, and
    /// data sent to it and never acknowledged fails the connection after the
    /// statement timeout.
    fn postgres_url(&self, raw: &str) -> String {
        let Ok(mut url) = url::Url::parse(raw) else {
            return raw.to_string();
        };
        let given: Vec<String> = url.query_pairs().map(|(key, _)| key.into_owned()).collect();
        let defaults = [
            ("connect_timeout", self.connect_timeout_secs.to_string()),
            ("keepalives", "1".to_string()),
            ("keepalives_idle", "30".to_string()),
            ("keepalives_interval", "10".to_string()),
            ("keepalives_count", "3".to_string()),
            (
                "tcp_user_timeout",
                (self.statement_timeout_secs * 1000).to_string(),
            ),
        ];
        {
            let mut query = url.query_pairs_mut();
            for (key, value) in defaults {
                if !given.iter().any(|k| k == key) {
                    query.append_pair(key, &value);
                }
            }
        }
        url.to_string()
    }
}

impl ManageConnection for DbManager {
    type Connection = DbConn;
    type Error = StorageError;

    fn connect(&self) -> Result<DbConn, StorageError> {
        self.establish()
    }

    /// On SQLite also puts back the configured `synchronous`: the conversation index
    /// lowers it for a moment on the writer's connection (see
    /// [`conversation_index::index_slice`]), and no connection may leave the pool with
    /// less durability than configured, whatever happened to it before.
    fn is_valid(&self, conn: &mut DbConn) -> Result<(), StorageError> {
        match conn {
            DbConn::Sqlite(c) => c
                .batch_execute(&format!("PRAGMA main.synchronous = {}", self.synchronous))
                .map_err(StorageError::from),
            DbConn::Pg(_) => ping(conn),
        }
    }

    fn has_broken(&self, conn: &mut DbConn) -> bool {
        use diesel::r2d2::R2D2Connection;
        conn.is_broken()
    }
}

pub fn ping(conn: &mut DbConn) -> Result<(), StorageError> {
    on_backend!(conn, c => c.batch_execute("SELECT 1")).map_err(StorageError::from)
}

/// Where `settings` point when no Converra database is there yet (a SQLite file that
/// does not exist, a PostgreSQL database no migration has run in), said for the
/// operator: the absolute file path, or the URL without its password; `None` when
/// the database exists.
pub fn missing_database(settings: &Settings) -> Result<Option<String>, StorageError> {
    let manager = DbManager::new(settings)?;
    match manager.url() {
        DatabaseUrl::Sqlite(path) => {
            let shown = std::path::absolute(path)
                .unwrap_or_else(|_| path.clone())
                .display()
                .to_string();
            match path.try_exists() {
                Ok(true) => Ok(None),
                Ok(false) => {
                    let key_store = settings.sqlite_key_store_path(path);
                    if key_store.try_exists().unwrap_or(false) {
                        return Err(StorageError::KeyStore(format!(
                            "{} holds keys but the database {shown} is missing: restore \
                             the database that belongs with it",
                            key_store.display()
                        )));
                    }
                    Ok(Some(shown))
                }
                Err(e) => Err(StorageError::Connect(format!("{shown}: {e}"))),
            }
        }
        DatabaseUrl::Postgres(_) => {
            #[derive(QueryableByName)]
            struct Migrated {
                #[diesel(sql_type = diesel::sql_types::Bool)]
                migrated: bool,
            }
            let mut conn = manager.establish()?;
            let DbConn::Pg(c) = &mut conn else {
                return Ok(None);
            };
            let found: Vec<Migrated> = diesel::sql_query(
                "SELECT to_regclass('__diesel_schema_migrations') IS NOT NULL AS migrated",
            )
            .load(c)?;
            let migrated = found.first().is_some_and(|row| row.migrated);
            Ok((!migrated).then(|| settings.redacted().database.url))
        }
    }
}

/// Connects once (so the operator sees the real error, not a pool timeout), builds
/// the pool, and applies pending migrations.
pub fn connect(settings: &Settings) -> Result<Pool, StorageError> {
    let manager = DbManager::new(settings)?;
    let mut first = manager.establish()?;
    run_migrations(&mut first)?;
    drop(first);
    r2d2::Pool::builder()
        .max_size(settings.database.pool_size)
        .connection_timeout(Duration::from_secs(
            settings.database.connect_timeout_secs.max(1),
        ))
        .build(manager)
        .map_err(|e| StorageError::Connect(e.to_string()))
}

/// Applies every embedded migration not applied yet; returns their names. On
/// PostgreSQL without the statement timeout: a migration that rebuilds an index of a
/// large table may take longer than any webhook's statement should.
pub fn run_migrations(conn: &mut DbConn) -> Result<Vec<String>, StorageError> {
    match conn {
        DbConn::Sqlite(c) => {
            check_key_store_belongs(c)?;
            c.run_pending_migrations(SQLITE_MIGRATIONS)
                .map(names)
                .map_err(|e| StorageError::Migration(e.to_string()))
        }
        DbConn::Pg(c) => without_statement_timeout(c, |c| {
            c.run_pending_migrations(POSTGRES_MIGRATIONS)
                .map(names)
                .map_err(|e| StorageError::Migration(e.to_string()))
        }),
    }
}

/// Runs `f` with PostgreSQL's statement timeout off, then puts the session's back.
pub(crate) fn without_statement_timeout<T, E: From<diesel::result::Error>>(
    c: &mut PgConnection,
    f: impl FnOnce(&mut PgConnection) -> Result<T, E>,
) -> Result<T, E> {
    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        value: String,
    }
    let before: Vec<Setting> =
        diesel::sql_query("SELECT current_setting('statement_timeout') AS value").load(c)?;
    c.batch_execute("SET statement_timeout = 0")?;
    let result = f(c);
    let restored = match before.first() {
        Some(before) => diesel::sql_query("SELECT set_config('statement_timeout', $1, false)")
            .bind::<diesel::sql_types::Text, _>(&before.value)
            .execute(c)
            .map(|_| ()),
        None => Ok(()),
    };
    // The work's own error is the one to report.
    let value = result?;
    restored?;
    Ok(value)
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct AttachedFile {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    file: String,
}

/// The file behind an attached SQLite schema ("main", "keystore"); `None` for one in
/// memory.
pub(crate) fn sqlite_file(
    conn: &mut SqliteConnection,
    schema: &str,
) -> Result<Option<PathBuf>, StorageError> {
    let files: Vec<AttachedFile> =
        diesel::sql_query("SELECT name, file FROM pragma_database_list").load(conn)?;
    Ok(files
        .into_iter()
        .find(|f| f.name == schema && !f.file.is_empty())
        .map(|f| PathBuf::from(f.file)))
}

/// SQLite keeps the data and the key store in two files: one of them replaced or lost
/// without the other leaves data no key opens. Caught here, before the migrations
/// fail on it with a bare "table already exists" (or the first read with "no such
/// table"), with what the operator can do about it.
fn check_key_store_belongs(conn: &mut SqliteConnection) -> Result<(), StorageError> {
    let count = |conn: &mut SqliteConnection, sql: &str| -> Result<bool, StorageError> {
        let rows: Vec<Count> = diesel::sql_query(sql).load(conn)?;
        Ok(rows.first().is_some_and(|c| c.n > 0))
    };
    let data_migrated = count(
        conn,
        "SELECT count(*) AS n FROM main.sqlite_master \
         WHERE type = 'table' AND name = '__diesel_schema_migrations'",
    )? && count(
        conn,
        "SELECT count(*) AS n FROM main.__diesel_schema_migrations",
    )?;
    let has_keys = count(
        conn,
        "SELECT count(*) AS n FROM keystore.sqlite_master \
         WHERE type = 'table' AND name = 'data_keys'",
    )?;
    let mut file_of = |schema: &str| -> Result<String, StorageError> {
        Ok(sqlite_file(conn, schema)?
            .map(|path| path.display().to_string())
            .unwrap_or_default())
    };
    match (data_migrated, has_keys) {
        (false, true) => Err(StorageError::Migration(format!(
            "the key store {} holds data keys but the database {} is new: the key store \
             belongs to an earlier database. Restore that database file, or move the key \
             store away to start afresh (its keys open nothing in a new database)",
            file_of("keystore")?,
            file_of("main")?
        ))),
        (true, false) => Err(StorageError::Migration(format!(
            "the database {} holds data but the key store {} is missing or empty, so none \
             of its sealed content can be read. Restore the key store file (from its own \
             backup) next to the database",
            file_of("main")?,
            file_of("keystore")?
        ))),
        _ => Ok(()),
    }
}

#[cfg(any(test, feature = "testing"))]
/// Reverts every migration (used by the migration round-trip test).
pub fn revert_all_migrations(conn: &mut DbConn) -> Result<(), StorageError> {
    let result = match conn {
        DbConn::Sqlite(c) => c.revert_all_migrations(SQLITE_MIGRATIONS).map(|_| ()),
        DbConn::Pg(c) => c.revert_all_migrations(POSTGRES_MIGRATIONS).map(|_| ()),
    };
    result.map_err(|e| StorageError::Migration(e.to_string()))
}

#[cfg(any(test, feature = "testing"))]
/// Reverts the newest applied migration (used by the migration tests).
pub fn revert_last_migration(conn: &mut DbConn) -> Result<String, StorageError> {
    let reverted = match conn {
        DbConn::Sqlite(c) => c
            .revert_last_migration(SQLITE_MIGRATIONS)
            .map(|v| v.to_string()),
        DbConn::Pg(c) => c
            .revert_last_migration(POSTGRES_MIGRATIONS)
            .map(|v| v.to_string()),
    };
    reverted.map_err(|e| StorageError::Migration(e.to_string()))
}

#[cfg(any(test, feature = "testing"))]
/// Reverts the applied migrations down to and including `version` (used to build a
/// database of an earlier schema); the versions reverted, newest first.
pub fn revert_migrations_through(
    conn: &mut DbConn,
    version: &str,
) -> Result<Vec<String>, StorageError> {
    let mut reverted = Vec::new();
    while reverted.last().map(String::as_str) != Some(version) {
        reverted.push(revert_last_migration(conn)?);
    }
    Ok(reverted)
}

fn names(versions: Vec<diesel::migration::MigrationVersion<'_>>) -> Vec<String> {
    versions.into_iter().map(|v| v.to_string()).collect()
}

/// A transaction that will write. On SQLite it takes the write lock at `BEGIN`
/// (`BEGIN IMMEDIATE`), so it waits its turn in the busy handler: a deferred
/// transaction that reads first and then writes fails at once with "database is
/// locked" when another process (the daemon) committed in between, busy timeout or
/// not. PostgreSQL needs no such care. Inside another transaction it is a savepoint.
pub fn write_transaction<T>(
    conn: &mut DbConn,
    f: impl FnOnce(&mut DbConn) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    let DbConn::Sqlite(sqlite) = conn else {
        return conn.transaction(f);
    };
    // Inside a transaction already (a write of the writer's, or a step of a larger
    // one): a savepoint.
    let depth = AnsiTransactionManager::transaction_manager_status_mut(sqlite).transaction_depth();
    if matches!(depth, Ok(Some(_))) {
        return conn.transaction(f);
    }
    // Through diesel's transaction manager, so a `transaction` inside `f` becomes a
    // savepoint as usual.
    AnsiTransactionManager::begin_transaction_sql(sqlite, "BEGIN IMMEDIATE")?;
    // Committed or rolled back through the connection enum's manager, which hands
    // the call to the SQLite connection's, where the transaction was begun.
    type Manager = <DbConn as Connection>::TransactionManager;
    match f(conn) {
        Ok(value) => {
            Manager::commit_transaction(conn)?;
            Ok(value)
        }
        Err(e) => {
            // The error that ended the work is the one to report.
            let _ = Manager::rollback_transaction(conn);
            Err(e)
        }
    }
}

/// A short-lived read on the pool, for handlers (wrap in `web::block`).
pub fn with_conn<T>(
    pool: &Pool,
    f: impl FnOnce(&mut DbConn) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    let mut conn = pool.get()?;
    f(&mut conn)
}

/// A SQLite database and master key in `dir`, migrated, for the storage unit tests.
#[cfg(test)]
pub(crate) fn test_storage(dir: &std::path::Path) -> (std::sync::Arc<key_store::Vault>, Pool) {
    let mut settings = crate::config::Settings::defaults().expect("defaults");
    settings.database.url = format!("sqlite://{}", dir.join("test.db").display());
    settings.security.master_key_file = dir.join("master.key").display().to_string();
    crate::open_storage(&settings).expect("storage")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Both backends carry the same migrations, by name.
    #[test]
    fn both_backends_have_the_same_migrations() {
        let names = |backend: &str| -> Vec<String> {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(backend);
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .expect("migrations folder")
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names("sqlite"), names("postgres"));
    }

    #[test]
    fn sqlite_file_names_the_data_and_the_key_store_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = Settings::defaults().expect("defaults");
        let data = dir.path().join("data.db");
        settings.database.url = format!("sqlite://{}", data.display());
        let manager = DbManager::new(&settings).expect("manager");
        let DbConn::Sqlite(mut conn) = manager.establish().expect("connection") else {
            unreachable!("a SQLite url")
        };
        let keys = settings.sqlite_key_store_path(&data);

        let main = sqlite_file(&mut conn, "main").expect("main");
        let keystore = sqlite_file(&mut conn, "keystore").expect("keystore");
        let same = |found: Option<PathBuf>, expected: &Path| {
            found.and_then(|p| p.canonicalize().ok()) == expected.canonicalize().ok()
        };
        assert!(same(main, &data), "main is the data file");
        assert!(same(keystore, &keys), "keystore is the key store file");
        assert_eq!(sqlite_file(&mut conn, "temp").expect("temp"), None);
    }
}
