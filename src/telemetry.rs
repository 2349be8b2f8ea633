//! Where the storage layer's reports become metrics: the one place that knows both.

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::storage::report::{EventCounts, WriterReport};

pub struct MetricsReport(pub Arc<Metrics>);

impl WriterReport for MetricsReport {
    fn batch_committed(&self, seconds: f64, jobs: usize) {
        self.0.db_write_seconds.observe(seconds);
        self.0.db_batch_jobs.observe(jobs as f64);
    }

    fn events_stored(&self, counts: EventCounts) {
        let m = &self.0;
        m.messages_ingested.inc_by(counts.messages);
        m.statuses_ingested.inc_by(counts.statuses);
        m.preferences_ingested.inc_by(counts.preferences);
        m.duplicates.inc_by(counts.duplicates);
        m.unrouted.inc_by(counts.unrouted);
        m.raw_stored.inc_by(counts.stored_raw);
        m.events_applied.inc_by(counts.applied);
    }

    fn wal_restarted(&self, seconds: f64) {
        self.0.wal_restart_seconds.observe(seconds);
    }

    fn index_tail(&self, rows: usize) {
        self.0.conversation_index_tail.set(rows as i64);
    }

    fn writer_restarted(&self) {
        self.0.writer_restarts.inc();
    }
}
