//! The writer's side of the conversation index: a reader thread reads the unindexed
//! tail in bulk, and the writer indexes it in slices inside its write batches.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::conversation_index;
use crate::storage::report::WriterReport;
use crate::storage::writer::{BackgroundThread, Writer, SLOW_WRITE};
use crate::storage::{DbConn, Pool, StorageError};

/// The bulk the writer is indexing, and where the next one comes from.
pub(in crate::storage) struct ConversationIndexer {
    pub(in crate::storage) shared: Arc<IndexShared>,
    pub(in crate::storage) bulk: Option<conversation_index::Bulk>,
}

impl ConversationIndexer {
    /// The bulk in progress, or else the one the reader left, if any.
    pub(in crate::storage) fn current(&mut self) -> Option<&mut conversation_index::Bulk> {
        if self.bulk.is_none() {
            self.bulk = self
                .shared
                .next
                .lock()
                .ok()
                .and_then(|mut next| next.take());
            self.publish_busy();
        }
        self.bulk.as_mut()
    }

    /// After a slice: a finished bulk is done with; so is one whose slice failed (its
    /// messages stay in the tail, where readers find them, and the next bulk reads
    /// them again).
    pub(in crate::storage) fn after_slice(&mut self, indexed: bool) {
        if !indexed || self.bulk.as_ref().is_some_and(|bulk| bulk.is_done()) {
            self.bulk = None;
        }
        self.publish_busy();
    }

    /// The reader reads no new bulk while the writer is still indexing one (it would
    /// read the same messages again).
    pub(in crate::storage) fn publish_busy(&self) {
        self.shared
            .writer_busy
            .store(self.bulk.is_some(), Ordering::SeqCst);
    }
}

/// Between the index reader and the writer: the next bulk, read and sorted, and
/// whether the writer is still indexing one (the reader then waits, or it would read
/// the same messages again).
#[derive(Default)]
pub(in crate::storage) struct IndexShared {
    next: std::sync::Mutex<Option<conversation_index::Bulk>>,
    writer_busy: AtomicBool,
}

/// SQLite only: every [`conversation_index::BULK_EVERY`], reads the unindexed tail on
/// a connection of its own and leaves it, sorted, for the writer. Reading it is
/// milliseconds of page reads; on this thread a WAL reader, it never holds the write
/// lock, so no webhook waits for it.
pub(in crate::storage) fn spawn_index_reader(
    pool: Pool,
    shared: Arc<IndexShared>,
    report: Arc<dyn WriterReport>,
    stopped: Arc<AtomicUsize>,
    writers: usize,
    log: slog::Logger,
) -> std::io::Result<BackgroundThread> {
    BackgroundThread::spawn("conversation-index", &log.clone(), move || {
        while stopped.load(Ordering::SeqCst) < writers {
            std::thread::sleep(conversation_index::BULK_EVERY);
            let waiting = shared
                .next
                .lock()
                .map(|next| next.is_some())
                .unwrap_or(true);
            if waiting || shared.writer_busy.load(Ordering::SeqCst) {
                continue;
            }
            let read =
                pool.get()
                    .map_err(StorageError::from)
                    .and_then(|mut conn| match &mut *conn {
                        DbConn::Sqlite(c) => conversation_index::begin_bulk(c),
                        DbConn::Pg(_) => Ok(None),
                    });
            match read {
                Ok(Some(bulk)) => {
                    report.index_tail(bulk.remaining());
                    if let Ok(mut next) = shared.next.lock() {
                        *next = Some(bulk);
                    }
                }
                Ok(None) => report.index_tail(0),
                Err(e) => slog::debug!(log, "conversation index tail not read"; "error" => %e),
            }
        }
    })
}

impl Writer {
    /// The next slice of the conversation index to write with a batch, when the reader
    /// has left a bulk or one is in progress (SQLite, writer 0).
    pub(in crate::storage) fn next_index_slice(&mut self) -> Option<conversation_index::Slice> {
        let indexer = self.conversation_index.as_mut()?;
        indexer.current().map(|bulk| bulk.next_slice())
    }

    /// After the batch that carried `slice` committed.
    pub(in crate::storage) fn index_slice_committed(
        &mut self,
        slice: conversation_index::Slice,
        indexed: Result<(), StorageError>,
    ) {
        let Some(indexer) = self.conversation_index.as_mut() else {
            return;
        };
        if let Err(e) = &indexed {
            slog::warn!(self.log, "conversation index slice failed"; "error" => %e);
        } else if let Some(bulk) = indexer.bulk.as_mut() {
            bulk.slice_committed(&slice);
        }
        indexer.after_slice(indexed.is_ok());
    }

    /// One slice of the conversation index in a transaction of its own, when the
    /// writer has no batch to carry it. Returns whether a bulk is in progress.
    pub(in crate::storage) fn index_conversations(&mut self) -> bool {
        let Some(mut indexer) = self.conversation_index.take() else {
            return false;
        };
        if let Some(bulk) = indexer.current() {
            let started = Instant::now();
            let step = self.connection().and_then(|conn| match &mut **conn {
                DbConn::Sqlite(c) => conversation_index::index_slice(c, bulk),
                DbConn::Pg(_) => Ok(()),
            });
            if let Err(e) = &step {
                self.conn = None;
                slog::warn!(self.log, "conversation index slice failed"; "error" => %e);
            }
            let took = started.elapsed();
            if took >= SLOW_WRITE {
                slog::warn!(self.log, "conversation index held the writer"; "ms" => took.as_millis());
            }
            indexer.after_slice(step.is_ok());
        }
        let in_progress = indexer.bulk.is_some();
        self.conversation_index = Some(indexer);
        in_progress
    }
}
