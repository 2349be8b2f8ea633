//! The contact readers: a few threads that answer the conversation actors' contact
//! look-ups ([`contacts::look_up_contacts`]) in batches. Under a business's contact
//! spread most messages start an actor that must find its contact first, so look-ups
//! are as frequent as messages; a look-up alone costs a pooled connection and up to
//! four statements (on PostgreSQL, four round trips). A reader takes every question
//! waiting when it comes free, up to [`BATCH_MAX`], and answers them all with one
//! statement per identifier kind, one of the key store and one of conversations.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::contacts::{self, ContactQuestion, Lookup};
use super::key_store::Vault;
use super::writer::BackgroundThread;
use super::{Pool, PooledConn, StorageError};
use crate::storage::handoff::{self, Outbox, Reply};

/// The most questions one batch answers: enough to amortise its statements, few enough
/// that SQLite's `IN` lists stay short and no one waits behind a long batch.
pub const BATCH_MAX: usize = 64;

struct Question {
    question: ContactQuestion,
    reply: Reply<Result<Lookup, StorageError>>,
}

/// Where conversation actors ask their contact look-ups; cloned freely.
#[derive(Clone)]
pub struct ContactReaders {
    tx: flume::Sender<Question>,
    stopping: Arc<AtomicBool>,
}

impl ContactReaders {
    /// The contact `question` asks about, answered in the next batch.
    pub async fn look_up(&self, question: ContactQuestion) -> Result<Lookup, StorageError> {
        let (reply, answer) = handoff::channel();
        self.tx
            .send_async(Question { question, reply })
            .await
            .map_err(|_| StorageError::Unavailable("the contact readers have stopped".into()))?;
        answer
            .await
            .map_err(|_| StorageError::Unavailable("a contact reader stopped".into()))?
    }

    /// Tells the readers to stop once no question has come for a moment (100 ms);
    /// called when the actors that ask have stopped.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

/// Starts `readers` reader threads on `pool`.
pub fn spawn(
    pool: Pool,
    vault: Arc<Vault>,
    readers: usize,
    log: &slog::Logger,
) -> std::io::Result<(ContactReaders, Vec<BackgroundThread>)> {
    // Bounded, as the writers' queue is: one question per conversation actor waiting.
    let (tx, rx) = flume::bounded(BATCH_MAX * 64);
    let stopping = Arc::new(AtomicBool::new(false));
    let threads = (0..readers.max(1))
        .map(|index| {
            let mut reader = Reader {
                pool: pool.clone(),
                conn: None,
                vault: vault.clone(),
                stopping: stopping.clone(),
                log: log.new(slog::o!("reader" => index)),
            };
            let rx = rx.clone();
            BackgroundThread::spawn(&format!("reader-{index}"), log, move || reader.run(rx))
        })
        .collect::<std::io::Result<_>>()?;
    Ok((ContactReaders { tx, stopping }, threads))
}

struct Reader {
    pool: Pool,
    /// Kept between batches while questions keep coming and the pool has connections
    /// to spare (a checkout tests the connection with a statement of its own); given
    /// back when idle.
    conn: Option<PooledConn>,
    vault: Arc<Vault>,
    stopping: Arc<AtomicBool>,
    log: slog::Logger,
}

impl Reader {
    fn run(&mut self, rx: flume::Receiver<Question>) {
        loop {
            let first = match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(first) => first,
                Err(flume::RecvTimeoutError::Timeout) => {
                    self.conn = None;
                    if self.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    continue;
                }
                Err(flume::RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            batch.extend(rx.try_iter().take(BATCH_MAX - 1));
            self.answer(batch);
        }
    }

    fn answer(&mut self, batch: Vec<Question>) {
        let (questions, replies): (Vec<ContactQuestion>, Vec<_>) =
            batch.into_iter().map(|q| (q.question, q.reply)).unzip();
        let mut outbox = Outbox::default();
        match self.look_up_guarded(&questions) {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    outbox.push(reply, answer);
                }
            }
            // One question's rows may be what fails (or panics): alone, each gets its
            // own answer, and the others are not failed with it.
            Err(_) if questions.len() > 1 => {
                for (question, reply) in questions.into_iter().zip(replies) {
                    let answer = match self.look_up_guarded(std::slice::from_ref(&question)) {
                        Ok(mut answers) => answers.pop().unwrap_or_else(|| {
                            Err(StorageError::Corrupt("a look-up gave no answer".into()))
                        }),
                        Err(e) => Err(e),
                    };
                    outbox.push(reply, answer);
                }
            }
            Err(e) => {
                for reply in replies {
                    outbox.push(reply, Err(e.copy()));
                }
            }
        }
        outbox.deliver();
        // Kept only while the pool has a connection to spare: the writers' and the
        // API's needs come first.
        if self.pool.state().idle_connections == 0 {
            self.conn = None;
        }
    }

    /// [`Reader::look_up`], a panic caught as a final error; a transient error (the
    /// connection kept may have died with its server) is tried once more on a fresh one.
    fn look_up_guarded(
        &mut self,
        questions: &[ContactQuestion],
    ) -> Result<Vec<Result<Lookup, StorageError>>, StorageError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let answers =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.look_up(questions)));
            match answers {
                Ok(Ok(answers)) => return Ok(answers),
                Ok(Err(e)) if e.is_transient() && tries == 1 => self.conn = None,
                Ok(Err(e)) => {
                    if e.is_transient() {
                        self.conn = None;
                    }
                    slog::warn!(self.log, "contact look-ups failed";
                        "questions" => questions.len(), "error" => %e);
                    return Err(e);
                }
                Err(panic) => {
                    // A look-up that panicked would panic again: its events fail (and
                    // are parked in time) rather than be retried for ever.
                    self.conn = None;
                    let reason = super::panic_message(&*panic);
                    slog::error!(self.log, "contact look-ups panicked";
                        "questions" => questions.len(), "panic" => &reason);
                    return Err(StorageError::Panicked(format!(
                        "a contact look-up: {reason}"
                    )));
                }
            }
        }
    }

    fn look_up(
        &mut self,
        questions: &[ContactQuestion],
    ) -> Result<Vec<Result<Lookup, StorageError>>, StorageError> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            empty => empty.insert(self.pool.get()?),
        };
        contacts::look_up_contacts(conn, &self.vault, questions)
    }
}
