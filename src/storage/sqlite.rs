//! SQLite-only file handling: what the daemon does to the database's file system
//! without ever opening a database file itself (only SQLite may hold those: closing any
//! other descriptor of them would drop SQLite's POSIX locks).

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
