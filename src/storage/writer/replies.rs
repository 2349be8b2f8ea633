//! Answering a batch's jobs once it is durable (or failed): one hand-off per
//! receiving thread, and what the batch stored, reported in plain numbers.

use super::batch::Outcome;
use super::queue::Job;
use super::{Delivered, IngestReceipt, Writer};
use crate::storage::apply::ApplyOp;
use crate::storage::handoff::Outbox;
use crate::storage::report::EventCounts;
use crate::storage::StorageError;
use crate::whatsapp::EventKind;

impl IngestReceipt {
    pub(super) fn counts(&self) -> EventCounts {
        let of_kind = |kind: EventKind| {
            self.accepted
                .iter()
                .filter(|item| item.event.kind == kind)
                .count() as u64
        };
        EventCounts {
            messages: of_kind(EventKind::Message),
            statuses: of_kind(EventKind::Status),
            preferences: of_kind(EventKind::Preference),
            duplicates: self.duplicates as u64,
            unrouted: self.unrouted as u64,
            stored_raw: self.others as u64,
            applied: 0,
        }
    }
}

/// What an apply job's ops did: its fresh events as stored or as duplicates (inbox
/// rows were counted when they were stored), and the ops applied.
fn applied_counts(ops: &[ApplyOp], duplicate: &[bool]) -> EventCounts {
    let mut counts = EventCounts::default();
    for (op, dup) in ops.iter().zip(duplicate) {
        if *dup {
            counts.duplicates += 1;
            continue;
        }
        // A profile update rides along with a conversation's events; it is none.
        if matches!(op, ApplyOp::Profile(_)) {
            continue;
        }
        counts.applied += 1;
        match op.fresh_kind() {
            Some(EventKind::Message) => counts.messages += 1,
            Some(EventKind::Status) => counts.statuses += 1,
            Some(EventKind::Preference) => counts.preferences += 1,
            None => {}
        }
    }
    counts
}

impl Writer {
    pub(super) fn answer_flushes(&self, flushes: Vec<Job>) {
        for job in flushes {
            if let Job::Flush(reply) = job {
                reply.send(());
            }
        }
    }

    pub(super) fn fail_all(&self, jobs: Vec<Job>, error: &StorageError) {
        // Each job hears the same error: a transient one stays transient, a
        // permanent one permanent, so no caller retries for ever what cannot succeed.
        let copy = || error.copy();
        let mut outbox = Outbox::default();
        for job in jobs {
            match job {
                Job::Ingest { reply, .. } => outbox.push(reply, Err(copy())),
                Job::Resolve { reply, .. } => outbox.push(reply, Err(copy())),
                Job::Apply { reply, .. } => outbox.push(reply, Err(copy())),
                Job::Write { reply, .. } => outbox.push(reply, Err(copy())),
                Job::Flush(reply) => outbox.push(reply, ()),
            }
        }
    }

    /// Answers a committed batch's jobs: one hand-off per receiving thread.
    pub(super) fn finish(
        &self,
        results: impl Iterator<Item = (Job, Result<Outcome, StorageError>)>,
    ) {
        let mut dispatch = Vec::new();
        let mut outbox = Outbox::default();
        for (job, result) in results {
            match (job, result) {
                (Job::Ingest { reply, .. }, Ok(Outcome::Ingest(receipt))) => {
                    self.report.events_stored(receipt.counts());
                    dispatch.extend(receipt.accepted.iter().cloned());
                    outbox.push(reply, Ok(receipt));
                }
                (Job::Resolve { reply, .. }, Ok(Outcome::Resolve(contact))) => {
                    if let Some(removed) = &contact.merged_away {
                        if let Ok(mut gone) = self.merged_away.write() {
                            gone.insert(removed.to_string());
                        }
                    }
                    outbox.push(reply, Ok(contact));
                }
                (
                    Job::Apply {
                        reply,
                        ops,
                        waiters,
                        ..
                    },
                    Ok(Outcome::Apply(receipt)),
                ) => {
                    self.report
                        .events_stored(applied_counts(&ops, &receipt.duplicate));
                    for (index, waiter) in waiters {
                        let duplicate = receipt.duplicate.get(index).copied().unwrap_or(false);
                        let delivered = if duplicate {
                            Delivered::Duplicate
                        } else {
                            Delivered::New
                        };
                        outbox.push(waiter, delivered);
                    }
                    outbox.push(reply, Ok(receipt));
                }
                (Job::Ingest { reply, .. }, Err(e)) => outbox.push(reply, Err(e)),
                (Job::Resolve { reply, .. }, Err(e)) => outbox.push(reply, Err(e)),
                (Job::Apply { reply, .. }, Err(e)) => outbox.push(reply, Err(e)),
                (Job::Write { reply, .. }, Ok(Outcome::Write(output))) => {
                    outbox.push(reply, Ok(output));
                }
                (Job::Write { reply, .. }, Err(e)) => outbox.push(reply, Err(e)),
                (Job::Flush(reply), _) => outbox.push(reply, ()),
                (job, Ok(_)) => {
                    // Outcomes are produced in job order, so this cannot happen; answer
                    // with an error rather than leave the caller waiting.
                    self.fail_all(vec![job], &StorageError::Corrupt("outcome mismatch".into()));
                }
            }
        }
        if !dispatch.is_empty() {
            if let Some(dispatcher) = self.dispatcher.get() {
                dispatcher(dispatch);
            }
        }
    }
}
