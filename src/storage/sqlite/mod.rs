//! SQLite-only machinery: the file system under the database (which the daemon never
//! opens itself: closing any other descriptor of a database file would drop SQLite's
//! POSIX locks), the background checkpointer that keeps the WAL bounded, and the
//! conversation index the writer fills in bulk.

pub mod checkpointer;
pub mod conversation_index;
mod indexer;

pub(in crate::storage) use checkpointer::spawn_checkpointer;
pub(in crate::storage) use indexer::{spawn_index_reader, ConversationIndexer, IndexShared};

use std::os::fd::AsRawFd;
use std::path::Path;

/// Flushes every dirty page of the file system that holds `directory` (`syncfs(2)`),
/// through a descriptor of the directory.
pub fn sync_file_system(directory: &Path) -> std::io::Result<()> {
    let handle = std::fs::File::open(directory)?;
    // SAFETY: `syncfs` reads nothing but the descriptor, which `handle` keeps open for
    // the duration of the call.
    let status = unsafe { libc::syncfs(handle.as_raw_fd()) };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
