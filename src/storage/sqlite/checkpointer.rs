//! The checkpointer: copies the WAL back into the database file in the background,
//! and asks the writer to start the WAL over once it passes
//! `database.sqlite_wal_restart_mib`, so it stays bounded under sustained load.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::storage::writer::{BackgroundThread, Writer, SLOW_WRITE};
use crate::storage::{DbConn, Pool, StorageError};

/// SQLite only: the writer's connection does not checkpoint the WAL itself (that
/// would stall every commit that crosses the threshold); this thread copies the WAL
/// back into the database files in the background.
///
/// A passive checkpoint never catches up with a writer that commits all the time, and
/// SQLite rewinds the WAL only once every frame is copied back, so under steady load
/// the WAL would grow without bound (hundreds of MB a minute, every new block allocated
/// by the file system on the commit path). When it passes `wal_restart_pages`, this
/// thread raises `restart_wanted` and the writer takes a RESTART checkpoint itself,
/// between two batches: the passive ones have already copied almost everything, so it
/// pauses only for the remainder, and the WAL starts over in blocks the file already
/// has. Taken from this thread instead, the RESTART would hold the write lock while
/// the writer slept in its busy handler, which wakes at coarse steps, and the webhooks'
/// tail latency would show it. The pause grows with the size of the WAL and of the
/// database, so small and frequent restarts (the 16 MiB default) keep the tail lower
/// than large and rare ones.
pub(in crate::storage) fn spawn_checkpointer(
    pool: Pool,
    stopped: Arc<AtomicUsize>,
    restart_wanted: Arc<AtomicBool>,
    wal_restart_pages: i64,
    interval: Duration,
    writers: usize,
    log: slog::Logger,
) -> std::io::Result<BackgroundThread> {
    BackgroundThread::spawn("checkpoint", &log.clone(), move || {
        while stopped.load(Ordering::SeqCst) < writers {
            std::thread::sleep(interval);
            let result = pool.get().map_err(StorageError::from).and_then(|mut conn| {
                for schema in ["main", "keystore"] {
                    if checkpoint(&mut conn, schema, "PASSIVE")? >= wal_restart_pages {
                        catch_up(&mut conn, schema)?;
                        // Only a head start for the restart's own sync: it
                        // goes ahead without it.
                        if let Err(e) = sync_database_file(&mut conn, schema) {
                            slog::warn!(log, "database file not synced before the WAL restart";
                                    "error" => %e);
                        }
                        // The sync took a while (tens of milliseconds under load),
                        // and the writer went on adding frames: copy those too, so
                        // the writer's RESTART is left only a few milliseconds'
                        // worth instead of the whole sync's.
                        catch_up(&mut conn, schema)?;
                        restart_wanted.store(true, Ordering::SeqCst);
                    }
                }
                Ok(())
            });
            if let Err(e) = result {
                slog::debug!(log, "WAL checkpoint skipped"; "error" => %e);
            }
        }
    })
}

const CATCH_UP_PASSES: usize = 3;

/// Passive checkpoints in a row: each copies what the writer added during the one
/// before, a shorter while each time.
fn catch_up(conn: &mut DbConn, schema: &str) -> Result<(), StorageError> {
    for _ in 0..CATCH_UP_PASSES {
        checkpoint(conn, schema, "PASSIVE")?;
    }
    Ok(())
}

/// Flushes to disk what the passive checkpoints copied into the database file. A
/// checkpoint syncs the file only when it has copied every frame, which under steady
/// load only the writer's RESTART does: its sync then flushes seconds of copied pages
/// while every webhook waits. Synced here first, off the writer's path, that sync finds
/// little left to do. Flushing is always safe: it only makes durable sooner what the
/// file already holds.
///
/// The database files themselves are never opened here: on Linux, closing any
/// descriptor of a file drops every POSIX lock the process holds on it, SQLite's locks
/// included, and another process (an operator command) could then delete the WAL
/// under the daemon and corrupt the database. `syncfs` on the file's directory flushes
/// the file system that holds it, through a descriptor of the directory, which holds
/// no SQLite lock.
fn sync_database_file(conn: &mut DbConn, schema: &str) -> Result<(), StorageError> {
    let DbConn::Sqlite(c) = conn else {
        return Ok(());
    };
    let Some(path) = crate::storage::sqlite_file(c, schema)? else {
        return Ok(());
    };
    let directory = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => parent.to_path_buf(),
        None => std::path::PathBuf::from("."),
    };
    super::sync_file_system(&directory)
        .map_err(|e| StorageError::Unavailable(format!("syncing {}: {e}", directory.display())))
}

#[derive(diesel::QueryableByName)]
struct CheckpointResult {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    log: i64,
}

/// Runs one checkpoint of `schema` in `mode`; returns the WAL's length in pages.
fn checkpoint(conn: &mut DbConn, schema: &str, mode: &str) -> Result<i64, StorageError> {
    use diesel::RunQueryDsl;
    let DbConn::Sqlite(c) = conn else {
        return Ok(0);
    };
    let rows: Vec<CheckpointResult> =
        diesel::sql_query(format!("PRAGMA {schema}.wal_checkpoint({mode})")).load(c)?;
    Ok(rows.first().map(|r| r.log).unwrap_or(0))
}

impl Writer {
    /// See [`spawn_checkpointer`].
    pub(in crate::storage) fn restart_wal(&mut self) {
        let started = Instant::now();
        let result = self.connection().and_then(|conn| {
            checkpoint(conn, "main", "RESTART")?;
            checkpoint(conn, "keystore", "RESTART")
        });
        if let Err(e) = result {
            slog::debug!(self.log, "WAL restart skipped"; "error" => %e);
        }
        let took = started.elapsed();
        self.report.wal_restarted(took.as_secs_f64());
        if took >= SLOW_WRITE {
            slog::warn!(self.log, "WAL restart held the writer"; "ms" => took.as_millis());
        }
    }
}
