//! What the writers report as they work, in plain numbers, for whoever counts: the
//! daemon turns them into metrics (see `crate::telemetry`); storage itself knows no
//! metrics, and a report may ignore what it does not count.

/// Events a committed write stored, by what became of them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EventCounts {
    pub messages: u64,
    pub statuses: u64,
    pub preferences: u64,
    /// Redeliveries recognised and skipped.
    pub duplicates: u64,
    /// Events for a number no tenant owns, stored raw.
    pub unrouted: u64,
    /// Signed content that is not an event, stored raw.
    pub stored_raw: u64,
    /// Ops applied by conversation actors' writes.
    pub applied: u64,
}

pub trait WriterReport: Send + Sync {
    /// A batch committed: how long its transaction took, and how many jobs it held.
    fn batch_committed(&self, _seconds: f64, _jobs: usize) {}
    fn events_stored(&self, _counts: EventCounts) {}
    /// SQLite: the writer paused to start the WAL over.
    fn wal_restarted(&self, _seconds: f64) {}
    /// SQLite: messages not in the conversation index yet.
    fn index_tail(&self, _rows: usize) {}
    /// A writer thread panicked and was started again.
    fn writer_restarted(&self) {}
}
