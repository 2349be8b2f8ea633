//! A batch's transaction: the key store's new keys first, then every job's work in
//! one transaction (the inbox inserts, the actors' ops in set-based statements, the
//! resolves, any other write), retried job by job when it fails.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use diesel::connection::SimpleConnection;
use diesel::Connection;

use super::queue::{Job, WriteOutput};
use super::{ApplyReceipt, IngestReceipt, MergedAway, Writer, SLOW_WRITE};
use crate::crypto::{Keyring, NewDataKey};
use crate::ids::{KeyId, PhoneNumberId, TenantId};
use crate::storage::apply::{self, ApplyOp};
use crate::storage::contacts::{self, ContactIdentifiers, NewContact, ResolvedContact};
use crate::storage::conversations;
use crate::storage::inbox::{self, FreshEvent, InboxItem, PreparedEvent, PreparedOther};
use crate::storage::keys;
use crate::storage::raw_keys::DayKey;
use crate::storage::routes::RouteCache;
use crate::storage::sqlite::conversation_index;
use crate::storage::usage;
use crate::storage::{DbConn, PooledConn, StorageError};
use crate::whatsapp::OtherChange;

/// The result of one job inside a batch, held until the batch commits.
pub(super) enum Outcome {
    Ingest(IngestReceipt),
    Resolve(ResolvedContact),
    Apply(ApplyReceipt),
    Write(WriteOutput),
}

/// What a batch's transaction gives: each job's outcome (a generic write's refusal is
/// its own), and how the conversation index's slice went.
type BatchRun = (Vec<Result<Outcome, StorageError>>, Result<(), StorageError>);

impl Writer {
    pub(in crate::storage) fn connection(&mut self) -> Result<&mut PooledConn, StorageError> {
        if self.conn.is_none() {
            let mut conn = match self.pool.get() {
                Ok(conn) => conn,
                Err(e) => {
                    self.connect_failed = true;
                    return Err(e.into());
                }
            };
            self.connect_failed = false;
            if let DbConn::Sqlite(c) = &mut *conn {
                // Checkpoints are the checkpointer thread's work, off the commit path.
                // The page cache keeps SQLite's default size (2 MiB) on purpose: at
                // every commit SQLite truncates the cache to the database's size, and
                // a B-tree rebalance parks pages at the lock-byte page number (1 GiB
                // in), so that truncation walks the whole cache's hash table. With a
                // 64 MiB cache it cost a tenth of the writer's time, more than the
                // reads it saved.
                // Temporary storage in memory: a multi-row insert keeps a statement
                // journal of every page it changes (to undo itself on a constraint
                // error), which past 64 KiB SQLite otherwise moves to a temporary file,
                // opened and written anew for each statement (docs/performance.md).
                // Only here, where statements are a batch's: elsewhere a large sort
                // (an index built by a migration) may spill to disk.
                c.batch_execute(
                    "PRAGMA main.wal_autocheckpoint = 0; PRAGMA keystore.wal_autocheckpoint = 0; \
                     PRAGMA temp_store = MEMORY;",
                )?;
            }
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| StorageError::Unavailable("no connection".into()))
    }

    pub(super) fn process(&mut self, batch: Vec<Job>, rx: &flume::Receiver<Job>) {
        if batch.is_empty() {
            return;
        }
        self.health.begin(self.index);
        #[cfg(feature = "testing")]
        if let Some(hook) = &self.before_batch {
            hook(self.index);
        }
        self.process_batch(batch, rx);
        self.health.end(self.index);
    }

    fn process_batch(&mut self, batch: Vec<Job>, rx: &flume::Receiver<Job>) {
        let started = Instant::now();
        let now = self.clock.now_ms();
        // Flush markers are answered after the work queued before them.
        let (flushes, mut jobs): (Vec<Job>, Vec<Job>) =
            batch.into_iter().partition(|j| matches!(j, Job::Flush(_)));
        let mut new_keys = match self.prepare_keys(&jobs, now) {
            Ok(keys) => keys,
            Err(e) => {
                self.fail_all(jobs, &e);
                self.answer_flushes(flushes);
                return;
            }
        };
        let batch_size = jobs.len();
        let slice = self.next_index_slice();
        let result = self.run_batch(&mut jobs, &mut new_keys, now, slice.as_ref());
        match result {
            Ok((outcomes, indexed)) => {
                if let Some(slice) = slice {
                    self.index_slice_committed(slice, indexed);
                }
                self.finish(jobs.drain(..).zip(outcomes));
            }
            Err(e) if jobs.len() == 1 && !e.is_transient() => {
                // The job's own error, as it is.
                self.conn = None;
                slog::warn!(self.log, "write failed"; "error" => %e);
                self.finish(jobs.drain(..).zip(std::iter::once(Err(e))));
            }
            Err(e) if e.is_transient() => {
                // The connection may be the casualty (a server restart, a terminated
                // backend): the pool hands out a fresh one for the next batch.
                self.conn = None;
                slog::warn!(self.log, "write batch failed"; "error" => %e, "jobs" => batch_size);
                self.fail_all(jobs, &e);
                if self.connect_failed {
                    // Each batch would wait out the pool's connect timeout in turn, and
                    // the last webhook in the queue would wait for all of them: while
                    // the database cannot be reached, everything waiting fails at once.
                    let mut waiting: Vec<Job> = self.ingest.drain(..).collect();
                    waiting.extend(self.lanes.drain(..).flat_map(|(_, lane)| lane));
                    self.queued = 0;
                    waiting.extend(rx.try_iter());
                    self.fail_all(waiting, &e);
                }
            }
            Err(e) => {
                self.conn = None;
                slog::warn!(self.log, "write batch failed, retrying its jobs one by one"; "error" => %e);
                let mut results = Vec::with_capacity(jobs.len());
                for job in jobs.iter_mut() {
                    let one = self.run_batch(std::slice::from_mut(job), &mut new_keys, now, None);
                    results.push(one.and_then(|(mut o, _)| o.remove(0)));
                }
                self.finish(jobs.drain(..).zip(results));
            }
        }
        let took = started.elapsed();
        if took >= SLOW_WRITE {
            // Every webhook and actor in the batch waited this long.
            slog::warn!(self.log, "slow write batch"; "ms" => took.as_millis(), "jobs" => batch_size);
        }
        self.report.batch_committed(took.as_secs_f64(), batch_size);
        self.answer_flushes(flushes);
    }

    /// Data keys for contacts that a job will create (a resolve job's, made here; an
    /// apply job's new contact's, made by its actor) are committed to the key store
    /// first, in a transaction of their own: a crash between the two leaves an unused
    /// key, never data without its key.
    fn prepare_keys(
        &mut self,
        jobs: &[Job],
        now: i64,
    ) -> Result<HashMap<usize, (KeyId, NewDataKey)>, StorageError> {
        let keyring = self.keyring.clone();
        let resolves: Vec<(usize, (&TenantId, &ContactIdentifiers))> = jobs
            .iter()
            .enumerate()
            .filter_map(|(index, job)| match job {
                Job::Resolve { tenant_id, ids, .. } => Some((index, (tenant_id, ids))),
                _ => None,
            })
            .collect();
        let created: Vec<(&TenantId, &KeyId, &[u8])> = jobs
            .iter()
            .filter_map(|job| match job {
                Job::Apply {
                    tenant_id,
                    new_contact: Some(new),
                    ..
                } => Some((tenant_id, &new.key_id, &new.wrapped_key[..])),
                _ => None,
            })
            .collect();
        if resolves.is_empty() && created.is_empty() {
            return Ok(HashMap::new());
        }
        let mut keys = HashMap::new();
        if !resolves.is_empty() {
            let asked: Vec<(&TenantId, &ContactIdentifiers)> =
                resolves.iter().map(|(_, asked)| *asked).collect();
            let exist = contacts::contacts_exist(self.connection()?, &keyring, &asked)?;
            for ((index, (tenant_id, _)), exists) in resolves.iter().zip(exist) {
                if !exists {
                    let key_id = KeyId::generate();
                    let data_key = keyring.new_data_key(tenant_id.as_str(), key_id.as_str())?;
                    keys.insert(*index, ((*tenant_id).clone(), key_id, data_key));
                }
            }
        }
        if keys.is_empty() && created.is_empty() {
            return Ok(HashMap::new());
        }
        let conn = self.connection()?;
        let committed = conn.transaction::<_, StorageError, _>(|conn| {
            let mut rows: Vec<(&TenantId, &KeyId, &[u8])> = keys
                .values()
                .map(|(tenant_id, key_id, data_key)| (tenant_id, key_id, &data_key.wrapped[..]))
                .collect();
            rows.extend(created.iter().copied());
            keys::insert_data_keys(conn, &keyring, &rows, now)
        });
        if let Err(e) = committed {
            if e.is_transient() {
                self.conn = None;
            }
            return Err(e);
        }
        Ok(keys
            .into_iter()
            .map(|(index, (_, key_id, key))| (index, (key_id, key)))
            .collect())
    }

    /// Runs the jobs, and `slice` of the conversation index after them, in one
    /// transaction; the slice in a savepoint of its own, so that its failure (returned
    /// beside the outcomes) costs only the slice. So does each generic write: one that
    /// refuses (a validation, a conflict) fails alone, and the batch goes on.
    fn run_batch(
        &mut self,
        jobs: &mut [Job],
        new_keys: &mut HashMap<usize, (KeyId, NewDataKey)>,
        now: i64,
        slice: Option<&conversation_index::Slice>,
    ) -> Result<BatchRun, StorageError> {
        let keyring = self.keyring.clone();
        let merged_away = self.merged_away.clone();
        let routes = self.routes.clone();
        let result = {
            let conn = match self.connection() {
                Ok(conn) => conn,
                Err(e) => {
                    return Err(e);
                }
            };
            conn.transaction::<_, StorageError, _>(|conn| {
                // The inbox inserts of the batch first, then the actors' ops, each in
                // multi-row statements; resolves one by one.
                let parts: Vec<IngestPart<'_>> = jobs
                    .iter()
                    .filter_map(|job| match job {
                        Job::Ingest {
                            day,
                            events,
                            others,
                            ..
                        } => Some((day, &events[..], &others[..])),
                        _ => None,
                    })
                    .collect();
                let mut receipts = ingest(conn, &keyring, &routes, &parts, now)?.into_iter();
                let (taken, applied) = apply_jobs(conn, jobs, &merged_away, now)?;
                let mut applied = applied.into_iter();
                let mut outcomes = Vec::with_capacity(jobs.len());
                for (index, job) in jobs.iter_mut().enumerate() {
                    let outcome = match job {
                        Job::Ingest { .. } => {
                            Ok(Outcome::Ingest(receipts.next().unwrap_or_default()))
                        }
                        Job::Resolve { tenant_id, ids, .. } => {
                            // A key prepared for this job is used at most once; if
                            // another job in the batch created the contact, it stays
                            // unused in the key store.
                            let key = new_keys.remove(&index);
                            Ok(Outcome::Resolve(contacts::resolve_contact(
                                conn, &keyring, tenant_id, ids, key, now,
                            )?))
                        }
                        // Its new contact exists already (another conversation of the
                        // contact, on another number, created it since the actor
                        // looked): the actor looks it up again.
                        Job::Apply {
                            new_contact: Some(new),
                            ..
                        } if taken.contains(&index) => {
                            Err(StorageError::ContactStale(new.contact_id.to_string()))
                        }
                        Job::Apply { .. } => Ok(Outcome::Apply(applied.next().unwrap_or_default())),
                        // In a savepoint: a refusal fails this job, not the batch; a
                        // transient error (the connection) still fails the batch.
                        Job::Write { work, .. } => {
                            match conn.transaction::<_, StorageError, _>(|conn| work(conn)) {
                                Ok(output) => Ok(Outcome::Write(output)),
                                Err(e) if e.is_transient() => return Err(e),
                                Err(e) => Err(e),
                            }
                        }
                        Job::Flush(_) => Ok(Outcome::Apply(ApplyReceipt::default())),
                    };
                    outcomes.push(outcome);
                }
                let indexed = match slice {
                    Some(slice) => {
                        conn.transaction::<_, StorageError, _>(|conn| match &mut **conn {
                            DbConn::Sqlite(c) => conversation_index::index_in_transaction(c, slice),
                            DbConn::Pg(_) => Ok(()),
                        })
                    }
                    None => Ok(()),
                };
                Ok((outcomes, indexed))
            })
        };
        result
    }
}

/// Creates the contacts the batch's apply jobs bring (before the ops that name them;
/// one statement per tenant), each with the first conversation its inbound messages
/// name, so that they go in with the set-based statements. Returns the jobs whose
/// contact exists already (another conversation created it since its actor looked):
/// they are left out of the batch.
fn create_contacts(
    conn: &mut DbConn,
    jobs: &[Job],
    now: i64,
) -> Result<HashSet<usize>, StorageError> {
    let creating: Vec<(usize, &TenantId, &NewContact, &[ApplyOp])> = jobs
        .iter()
        .enumerate()
        .filter_map(|(index, job)| match job {
            Job::Apply {
                tenant_id,
                new_contact: Some(new),
                ops,
                ..
            } => Some((index, tenant_id, &**new, &ops[..])),
            _ => None,
        })
        .collect();
    if creating.is_empty() {
        return Ok(HashSet::new());
    }
    let mut by_tenant: HashMap<&TenantId, Vec<&NewContact>> = HashMap::new();
    for (_, tenant_id, new, _) in &creating {
        by_tenant.entry(tenant_id).or_default().push(new);
    }
    let mut inserted = HashSet::new();
    for (tenant_id, mut new) in by_tenant {
        // In one order for every writer (PostgreSQL runs two), so that two batches
        // creating the same contacts wait for each other instead of deadlocking.
        new.sort_by(|a, b| a.indexes.cmp(&b.indexes));
        inserted.extend(contacts::insert_contacts(conn, tenant_id, &new)?);
    }
    let mut taken = HashSet::new();
    let mut opened = Vec::new();
    for (index, tenant_id, new, ops) in creating {
        if !inserted.contains(new.contact_id.as_str()) {
            taken.insert(index);
            continue;
        }
        let Some(conversation_id) = &new.conversation_id else {
            continue;
        };
        let latest = ops
            .iter()
            .filter_map(|op| match op {
                ApplyOp::Inbound(m)
                    if !m.is_revoke() && m.conversation_id.as_ref() == Some(conversation_id) =>
                {
                    Some(m)
                }
                _ => None,
            })
            .max_by_key(|m| m.inbound_at);
        if let Some(latest) = latest {
            opened.push(conversations::Opened {
                id: conversation_id,
                tenant_id,
                phone_number_id: &latest.phone_number_id,
                contact_id: &new.contact_id,
                inbound_at: latest.inbound_at,
            });
        }
    }
    conversations::open_conversations(conn, &opened, now)?;
    Ok(taken)
}

/// Applies every actor job's ops of the batch together (see [`apply::apply_batch`]),
/// less the fresh events whose inbox row exists already (redeliveries), and marks the
/// inbox rows they came from processed, after creating the jobs' new contacts
/// ([`create_contacts`]). Returns the jobs left out (their contact existed already)
/// and one receipt per other apply job, in order.
fn apply_jobs(
    conn: &mut DbConn,
    jobs: &[Job],
    merged_away: &MergedAway,
    now: i64,
) -> Result<(HashSet<usize>, Vec<ApplyReceipt>), StorageError> {
    let taken = create_contacts(conn, jobs, now)?;
    let kept = jobs
        .iter()
        .enumerate()
        .filter(|(index, _)| !taken.contains(index))
        .map(|(_, job)| job);
    let apply_jobs: Vec<(&TenantId, &[ApplyOp])> = kept
        .filter_map(|job| match job {
            Job::Apply { tenant_id, ops, .. } => Some((tenant_id, &ops[..])),
            _ => None,
        })
        .collect();
    // An actor may still hold a contact that a merge removed: its write fails as a
    // whole (the batch is then retried job by job) and the actor resolves again.
    // Merges happen only here, in the writers, so the ids they removed are known
    // without asking the database, which would cost a query per batch.
    if let Ok(gone) = merged_away.read() {
        if !gone.is_empty() {
            let stale = apply_jobs
                .iter()
                .flat_map(|(_, ops)| ops.iter().filter_map(|op| op.contact_id()))
                .find(|id| gone.contains(id.as_str()));
            if let Some(stale) = stale {
                return Err(StorageError::ContactStale(stale.to_string()));
            }
        }
    }
    let fresh: Vec<(&TenantId, &inbox::FreshRow)> = apply_jobs
        .iter()
        .flat_map(|(tenant_id, ops)| {
            ops.iter()
                .filter_map(move |op| Some((*tenant_id, op.inbox_row_to_insert()?)))
        })
        .collect();
    let mut new_rows = inbox::insert_processed(conn, &fresh, now)?;
    // Per job and op: a fresh event whose row was there already. The first of
    // identical fresh events in the batch takes the row.
    let row_taken: Vec<Vec<bool>> = apply_jobs
        .iter()
        .map(|(_, ops)| {
            ops.iter()
                .map(|op| {
                    op.inbox_row_to_insert()
                        .is_some_and(|row| !new_rows.remove(&row.dedupe_bidx))
                })
                .collect()
        })
        .collect();
    let applies: Vec<(&TenantId, Vec<&ApplyOp>)> = apply_jobs
        .iter()
        .zip(&row_taken)
        .map(|((tenant_id, ops), taken)| {
            let kept = ops
                .iter()
                .zip(taken)
                .filter(|(_, taken)| !**taken)
                .map(|(op, _)| op)
                .collect();
            (*tenant_id, kept)
        })
        .collect();
    let applied = apply::apply_batch(conn, &applies, now)?;
    let processed: Vec<i64> = applies
        .iter()
        .flat_map(|(_, ops)| ops.iter().filter_map(|op| op.inbox_id()))
        .collect();
    inbox::mark_processed_many(conn, &processed, now)?;
    let receipts: Vec<ApplyReceipt> = apply_jobs
        .iter()
        .zip(row_taken)
        .zip(applied)
        .map(|(((_, ops), taken), done)| {
            // `done.redelivered` has one entry per op that was kept.
            let mut redelivered = done.redelivered.into_iter();
            let duplicate = ops
                .iter()
                .zip(taken)
                .map(|(op, taken)| taken || (redelivered.next().unwrap_or(false) && op.is_fresh()))
                .collect();
            ApplyReceipt {
                conversation: done.conversation,
                duplicate,
            }
        })
        .collect();
    // Each tenant's new inbound messages, counted in the same transaction.
    let mut inbound: Vec<(&str, i64)> = Vec::new();
    for ((tenant_id, ops), receipt) in apply_jobs.iter().zip(&receipts) {
        let new = ops
            .iter()
            .zip(&receipt.duplicate)
            .filter(|(op, duplicate)| {
                matches!(op, ApplyOp::Inbound(m) if !m.is_revoke()) && !**duplicate
            })
            .count() as i64;
        match inbound.iter_mut().find(|(t, _)| *t == tenant_id.as_str()) {
            Some((_, n)) => *n += new,
            None => inbound.push((tenant_id.as_str(), new)),
        }
    }
    for (tenant_id, new) in inbound {
        usage::add(conn, tenant_id, now, usage::INBOUND, new)?;
    }
    Ok((taken, receipts))
}

/// One webhook's content for [`ingest`]: the day key to seal it under, its events
/// and its other content.
type IngestPart<'a> = (&'a DayKey, &'a [FreshEvent], &'a [OtherChange]);

/// Inserts the events and other content of several webhooks inside the batch
/// transaction; one receipt per webhook, in order. Each is sealed for the tenant that
/// owns its number (an event of a number no tenant owns is stored as unrouted).
fn ingest(
    conn: &mut DbConn,
    keyring: &Keyring,
    routes: &RouteCache,
    parts: &[IngestPart<'_>],
    now: i64,
) -> Result<Vec<IngestReceipt>, StorageError> {
    if parts.is_empty() {
        return Ok(Vec::new());
    }
    let mut numbers: Vec<PhoneNumberId> = parts
        .iter()
        .flat_map(|(_, events, others)| {
            events
                .iter()
                .map(|e| e.keys.phone_number_id.clone())
                .chain(others.iter().filter_map(|o| o.phone_number_id.clone()))
        })
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    let routes = routes.owners(conn, numbers, now)?;
    // Per webhook, per event: sealed for its tenant's inbox, or `None` (unrouted).
    let mut sealed: Vec<Vec<Option<(TenantId, PreparedEvent)>>> = Vec::with_capacity(parts.len());
    for (day, events, _) in parts {
        let mut of_part = Vec::with_capacity(events.len());
        for event in events.iter() {
            of_part.push(match routes.get(&event.keys.phone_number_id) {
                Some(tenant_id) => Some((tenant_id.clone(), event.seal(keyring, tenant_id, day)?)),
                None => None,
            });
        }
        sealed.push(of_part);
    }
    let routed: Vec<(&TenantId, &PreparedEvent)> = sealed
        .iter()
        .flatten()
        .flatten()
        .map(|(tenant_id, prepared)| (tenant_id, prepared))
        .collect();
    let mut inserted = inbox::insert_events(conn, &routed, now)?;
    let mut receipts = Vec::with_capacity(parts.len());
    for ((day, events, others), sealed) in parts.iter().zip(&sealed) {
        let mut receipt = IngestReceipt::default();
        for (event, sealed) in events.iter().zip(sealed) {
            match sealed {
                // The first of several identical events in the batch takes the row;
                // the rest are duplicates.
                Some((tenant_id, prepared)) => match inserted.remove(&prepared.row.dedupe_bidx) {
                    Some(id) => receipt.accepted.push(InboxItem {
                        id,
                        tenant_id: tenant_id.clone(),
                        phone_number_id: event.keys.phone_number_id.clone(),
                        route_key: event.keys.route_key.clone(),
                        received_at: now,
                        event: event.event.clone(),
                    }),
                    None => receipt.duplicates += 1,
                },
                None => {
                    let raw = serde_json::to_vec(event.event.as_ref())
                        .map_err(|e| StorageError::Corrupt(e.to_string()))?;
                    let other = PreparedOther::seal(
                        day,
                        None,
                        "unrouted",
                        Some(event.keys.kind.as_str().to_string()),
                        Some(event.keys.phone_number_id.to_string()),
                        &raw,
                    )?;
                    inbox::insert_other(conn, None, &other, now)?;
                    receipt.unrouted += 1;
                }
            }
        }
        for other in others.iter() {
            let tenant = other.phone_number_id.as_ref().and_then(|p| routes.get(p));
            let prepared = PreparedOther::seal(
                day,
                tenant,
                other.reason,
                other.field.clone(),
                other.phone_number_id.as_ref().map(PhoneNumberId::to_string),
                &other.raw,
            )?;
            inbox::insert_other(conn, tenant, &prepared, now)?;
            receipt.others += 1;
        }
        receipts.push(receipt);
    }
    Ok(receipts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::contacts::ContactIdentifiers;
    use crate::storage::tenants;

    /// A write that creates a contact: no ops, only the contact.
    fn creating(tenant_id: &TenantId, new: NewContact) -> Job {
        Job::Apply {
            tenant_id: tenant_id.clone(),
            new_contact: Some(Box::new(new)),
            ops: Vec::new(),
            waiters: Vec::new(),
            reply: crate::storage::handoff::channel().0,
        }
    }

    /// Two conversations of one contact (on two numbers) that each found no contact
    /// create it in the same batch: the first job creates it, the second is left out
    /// (its actor looks again); a later batch creating it again is left out too. The
    /// batch's other work goes on.
    #[test]
    fn a_contact_created_twice_is_created_once_and_the_other_write_left_out() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (vault, pool) = crate::storage::test_storage(dir.path());
        let mut conn = pool.get().expect("connection");
        let tenant = tenants::create_tenant(&mut conn, "t", "owner@t.example", 1)
            .expect("tenant")
            .tenant_id;
        let tenant_id = TenantId(tenant);
        let ids = ContactIdentifiers {
            user_id: None,
            wa_id: Some("4915100000001".into()),
        };
        let other = ContactIdentifiers {
            user_id: None,
            wa_id: Some("4915100000002".into()),
        };
        // Made as an actor makes it, its key committed as the writer commits it first.
        let prepare = |conn: &mut DbConn, ids: &ContactIdentifiers| {
            let new = NewContact::prepare(&vault, &tenant_id, ids, 5)
                .expect("prepared")
                .0;
            keys::insert_data_key(conn, &vault, &tenant_id, &new.key_id, &new.wrapped_key, 5)
                .expect("key");
            new
        };
        let first = prepare(&mut conn, &ids);
        let created = first.contact_id.clone();
        let jobs = vec![
            creating(&tenant_id, first),
            creating(&tenant_id, prepare(&mut conn, &ids)),
            creating(&tenant_id, prepare(&mut conn, &other)),
        ];
        let merged_away = MergedAway::default();
        let (taken, receipts) = apply_jobs(&mut conn, &jobs, &merged_away, 5).expect("batch");
        assert_eq!(taken, HashSet::from([1]));
        assert_eq!(receipts.len(), 2, "one receipt per job applied");

        let again = vec![creating(&tenant_id, prepare(&mut conn, &ids))];
        let (taken, _) = apply_jobs(&mut conn, &again, &merged_away, 6).expect("batch");
        assert_eq!(taken, HashSet::from([0]));

        let question = contacts::ContactQuestion {
            tenant_id: tenant_id.clone(),
            phone_number_id: crate::ids::PhoneNumberId("100".into()),
            ids: ids.clone(),
        };
        let known = contacts::look_up_contacts(&mut conn, &vault, &[question])
            .expect("look-up")
            .pop()
            .expect("one answer")
            .expect("its key opens");
        match known {
            contacts::Lookup::Found(contact, None) => assert_eq!(contact.contact_id, created),
            _ => panic!("the contact the first job created"),
        }
    }
}
