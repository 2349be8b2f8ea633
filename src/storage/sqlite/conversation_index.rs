//! SQLite's conversation index: which messages a conversation holds, in order, kept
//! in `conversation_messages` and filled in bulk, a moment after the messages are
//! stored.
//!
//! Why: an index on `messages (conversation_id, id)` takes every new message at its
//! own conversation's end, so each write batch dirtied one B-tree leaf per message,
//! three quarters of the bytes the writer wrote. Taken in bulk and sorted, the
//! messages that reach the same leaf write it once. A reader thread reads the tail
//! and sorts it ([`begin_bulk`], a WAL reader: it never holds the write lock); the
//! writer indexes it in slices of [`SLICE_ROWS`], one inside each write batch's
//! transaction ([`index_in_transaction`]), so no webhook waits behind a whole bulk and
//! a slice costs no commit of its own; slices follow the sorted order, so each leaf is
//! still written about once per bulk.
//!
//! Messages above `conversation_index_state.indexed_through` (by rowid) are the
//! unindexed tail. What the messages of a conversation are is defined once, in
//! [`message_ids_of_conversation!`]: the index table plus the tail, in one statement,
//! so one snapshot; the listing and the contact merge both select through it.
//! Triggers (the migrations) keep the table in step with deletes, bulk ones included,
//! and contact merges, and keep the foreign-key rules PostgreSQL declares. PostgreSQL
//! keeps its index on messages: nothing here runs there.

use std::collections::VecDeque;
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel::sqlite::SqliteConnection;

use crate::storage::fixed::{fixed_statement, Bind, Sql};
use crate::storage::schema::conversation_index_state;
#[cfg(any(test, feature = "testing"))]
use crate::storage::DbConn;
use crate::storage::StorageError;

/// How often the tail is read for a bulk: about 15,000 messages at 15,000 a second.
/// The bulk is sorted by conversation, so a conversation's new messages go into its
/// last leaf together, one page written for all of them: the longer the wait, the
/// more messages per page, and the less the writer and the checkpointer spend per
/// message (docs/performance.md). The price is a longer unindexed tail for a listing
/// to scan (about a second of messages).
pub const BULK_EVERY: Duration = Duration::from_millis(1000);
/// Messages indexed per transaction: under a millisecond of the write lock.
pub const SLICE_ROWS: usize = 64;

/// The one definition of a conversation's messages on SQLite, as SQL: the ids of
/// conversation `?1`'s messages above `?2`, in order, at most `?3` (`-1`: all). Those
/// the index lists and those of the unindexed tail in one statement, so one snapshot
/// (a bulk that moves messages from the tail into the index between two statements
/// would otherwise show them twice or not at all); UNION, not UNION ALL, since a
/// bulk's slices are indexed before its mark moves, so a message can be in both.
/// The tail is read by rowid and sorted on its own (`+id` keeps `messages`' id index
/// out of it): left to choose, SQLite walks that index over every message to have
/// the tail in order, some 80 ms a page beside a million messages.
macro_rules! message_ids_of_conversation {
    () => {
        "SELECT message_id FROM (SELECT message_id FROM conversation_messages \
             WHERE conversation_id = ?1 AND message_id > ?2 ORDER BY message_id LIMIT ?3) \
         UNION \
         SELECT id FROM (SELECT id FROM messages \
             WHERE rowid > (SELECT indexed_through FROM conversation_index_state) \
             AND conversation_id = ?1 AND +id > ?2 ORDER BY +id LIMIT ?3) \
         ORDER BY 1 LIMIT ?3"
    };
}
pub(in crate::storage) use message_ids_of_conversation;

/// The messages of the tail when a bulk began, sorted by conversation, not indexed yet.
#[derive(Debug)]
pub struct Bulk {
    pending: VecDeque<String>,
    /// The newest rowid in the bulk: the mark once every message in it is indexed.
    through: i64,
    /// Message deletes counted when the bulk began (see the migration).
    deletions: i64,
}

impl Bulk {
    pub fn is_done(&self) -> bool {
        self.pending.is_empty()
    }

    /// Messages of the bulk not indexed yet.
    pub fn remaining(&self) -> usize {
        self.pending.len()
    }
}

#[derive(QueryableByName)]
struct TailRow {
    #[diesel(sql_type = Text)]
    conversation_id: String,
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = BigInt)]
    seq: i64,
}

/// Reads the unindexed tail; None when it is empty.
pub fn begin_bulk(c: &mut SqliteConnection) -> Result<Option<Bulk>, StorageError> {
    let (indexed_through, deletions): (i64, i64) = conversation_index_state::table
        .select((
            conversation_index_state::indexed_through,
            conversation_index_state::deletions,
        ))
        .get_result(c)?;
    let mut tail: Vec<TailRow> =
        diesel::sql_query("SELECT conversation_id, id, rowid AS seq FROM messages WHERE rowid > ?")
            .bind::<BigInt, _>(indexed_through)
            .load(c)?;
    let Some(through) = tail.iter().map(|row| row.seq).max() else {
        return Ok(None);
    };
    tail.sort_unstable_by(|a, b| (&a.conversation_id, &a.id).cmp(&(&b.conversation_id, &b.id)));
    Ok(Some(Bulk {
        pending: tail.into_iter().map(|row| row.id).collect(),
        through,
        deletions,
    }))
}

/// The next [`SLICE_ROWS`] messages of a bulk, to index inside a write batch's
/// transaction ([`index_in_transaction`]); taken off the bulk only once that commits
/// ([`Bulk::slice_committed`]).
#[derive(Debug)]
pub struct Slice {
    ids: Vec<String>,
    /// With the bulk's last slice: (through, deletions) for the mark.
    mark: Option<(i64, i64)>,
}

impl Bulk {
    pub fn next_slice(&self) -> Slice {
        let ids: Vec<String> = self.pending.iter().take(SLICE_ROWS).cloned().collect();
        let last = ids.len() == self.pending.len();
        Slice {
            ids,
            mark: last.then_some((self.through, self.deletions)),
        }
    }

    pub fn slice_committed(&mut self, slice: &Slice) {
        let taken = slice.ids.len().min(self.pending.len());
        self.pending.drain(..taken);
    }
}

// Always SLICE_ROWS parameters (a short slice repeats its last id), so the statement is
// prepared once per connection; built with the IN list of each slice's length, it was
// parsed and planned again for every slice.
fixed_statement!(
    IndexSlice = concat!(
        "INSERT OR IGNORE INTO conversation_messages (conversation_id, message_id) \
         SELECT conversation_id, id FROM messages WHERE id IN (",
        "?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,",
        "?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    )
);

fixed_statement!(
    MoveMark = "UPDATE conversation_index_state SET indexed_through = ? WHERE deletions = ?"
);

/// Indexes `slice` in the caller's transaction; with a bulk's last slice, moves the
/// mark, unless a message was deleted since the bulk began (then the next bulk reads
/// the tail again from the old mark; what is indexed already is skipped). The
/// message's conversation is read as it is now: a merge may have moved it.
///
/// The writer runs it inside a write batch's transaction, so a slice costs no commit
/// of its own: its pages go to disk with the batch's, under the batch's sync.
pub fn index_in_transaction(c: &mut SqliteConnection, slice: &Slice) -> Result<(), StorageError> {
    let Some(last) = slice.ids.last() else {
        return Ok(());
    };
    let binds: Vec<Bind<'_>> = (0..SLICE_ROWS)
        .map(|i| Bind::Text(slice.ids.get(i).unwrap_or(last)))
        .collect();
    IndexSlice::with(binds).execute(c)?;
    if let Some((through, deletions)) = slice.mark {
        MoveMark::with(vec![Bind::BigInt(through), Bind::BigInt(deletions)]).execute(c)?;
    }
    Ok(())
}

/// Indexes the next slice of `bulk` in a transaction of its own (when the writer is
/// idle, and in tests).
///
/// It commits without waiting for the disk (`synchronous = NORMAL`): the index is
/// derived data, and the WAL keeps commits in order, so the next write batch's sync
/// makes the slice durable too, and a power loss before it loses the slice together
/// with its mark, never one without the other.
pub fn index_slice(c: &mut SqliteConnection, bulk: &mut Bulk) -> Result<(), StorageError> {
    use diesel::connection::SimpleConnection;
    #[derive(QueryableByName)]
    struct Synchronous {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        synchronous: i32,
    }
    let configured: Synchronous = diesel::sql_query("PRAGMA main.synchronous").get_result(c)?;
    c.batch_execute("PRAGMA main.synchronous = NORMAL")?;
    let slice = bulk.next_slice();
    let indexed = c.immediate_transaction(|c| index_in_transaction(c, &slice));
    c.batch_execute(&format!(
        "PRAGMA main.synchronous = {}",
        configured.synchronous
    ))?;
    indexed?;
    bulk.slice_committed(&slice);
    Ok(())
}

#[cfg(any(test, feature = "testing"))]
/// Indexes the whole tail now, on the caller's connection (tests).
pub fn index_all(conn: &mut DbConn) -> Result<(), StorageError> {
    let DbConn::Sqlite(c) = conn else {
        return Ok(());
    };
    while let Some(mut bulk) = begin_bulk(c)? {
        while !bulk.is_done() {
            index_slice(c, &mut bulk)?;
        }
        // A delete during the bulk leaves the mark: one more pass from it.
        let moved: i64 = conversation_index_state::table
            .select(conversation_index_state::indexed_through)
            .get_result(c)?;
        if moved >= bulk.through {
            break;
        }
    }
    Ok(())
}

#[cfg(any(test, feature = "testing"))]
/// Rows of the unindexed tail (tests).
pub fn tail_len(conn: &mut DbConn) -> Result<i64, StorageError> {
    let DbConn::Sqlite(c) = conn else {
        return Ok(0);
    };
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let count: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM messages \
         WHERE rowid > (SELECT indexed_through FROM conversation_index_state)",
    )
    .get_result(c)?;
    Ok(count.n)
}
