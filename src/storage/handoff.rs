//! Replies across threads, one wake-up per thread. The writer answers dozens of waiting
//! tasks per commit (webhooks on the HTTP workers, conversation actors on their
//! arbiters). Completing each one from the writer's thread wakes its runtime with a
//! system call of its own; that was two per message. A [`Reply`] remembers the arbiter
//! its receiver runs on, and an [`Outbox`] hands each arbiter its replies in one go,
//! to be completed there, on the receiver's own thread, where a wake-up is a queue push.

use std::thread::ThreadId;

use actix_rt::{Arbiter, ArbiterHandle};
use tokio::sync::oneshot;

/// The sending half of a one-shot reply, with the arbiter its receiver waits on.
/// Dropped unsent, the receiver sees the channel closed.
pub struct Reply<T> {
    tx: oneshot::Sender<T>,
    home: Option<(ThreadId, ArbiterHandle)>,
}

impl<T> std::fmt::Debug for Reply<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("home", &self.home.as_ref().map(|(thread, _)| thread))
            .finish()
    }
}

/// A reply channel whose receiver is awaited on the calling thread.
pub fn channel<T>() -> (Reply<T>, oneshot::Receiver<T>) {
    let (tx, rx) = oneshot::channel();
    let home = Arbiter::try_current().map(|arbiter| (std::thread::current().id(), arbiter));
    (Reply { tx, home }, rx)
}

impl<T> Reply<T> {
    /// Sends at once, from this thread.
    pub fn send(self, value: T) {
        let _ = self.tx.send(value);
    }
}

type Completion = Box<dyn FnOnce() + Send>;

/// Replies collected while a batch is answered, delivered together by [`Outbox::deliver`]
/// (or when dropped).
#[derive(Default)]
pub struct Outbox {
    homes: Vec<(ThreadId, ArbiterHandle, Vec<Completion>)>,
}

impl Outbox {
    pub fn push<T: Send + 'static>(&mut self, reply: Reply<T>, value: T) {
        let Reply { tx, home } = reply;
        let Some((thread, arbiter)) = home else {
            let _ = tx.send(value);
            return;
        };
        let completion: Completion = Box::new(move || {
            let _ = tx.send(value);
        });
        match self.homes.iter_mut().find(|(t, _, _)| *t == thread) {
            Some((_, _, completions)) => completions.push(completion),
            None => self.homes.push((thread, arbiter, vec![completion])),
        }
    }

    /// Hands each arbiter its replies. One whose arbiter has stopped is dropped, which
    /// its receiver (gone with the arbiter) would see as a closed channel anyway.
    pub fn deliver(&mut self) {
        for (_, arbiter, completions) in self.homes.drain(..) {
            arbiter.spawn_fn(move || completions.into_iter().for_each(|complete| complete()));
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.deliver();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_reach_receivers_on_their_own_arbiters_and_outside_any() {
        let outside = channel::<u32>();
        assert!(outside.0.home.is_none());
        // Arbiters belong to a system; this thread's becomes its home arbiter.
        let _system = actix_rt::System::new();
        let arbiters: Vec<Arbiter> = (0..2).map(|_| Arbiter::new()).collect();
        let (made_tx, made) = std::sync::mpsc::channel();
        for (i, arbiter) in arbiters.iter().enumerate() {
            for j in 0..3u32 {
                let made_tx = made_tx.clone();
                arbiter.spawn_fn(move || {
                    let (reply, rx) = channel::<u32>();
                    let (heard_tx, heard) = std::sync::mpsc::channel();
                    actix_rt::spawn(async move {
                        let _ = heard_tx.send((std::thread::current().id(), rx.await.ok()));
                    });
                    let _ = made_tx.send((i as u32 * 10 + j, reply, heard));
                });
            }
        }
        drop(made_tx);
        let mut outbox = Outbox::default();
        let mut expected = Vec::new();
        for (value, reply, heard) in made.iter() {
            let home = reply.home.as_ref().map(|(thread, _)| *thread);
            outbox.push(reply, value);
            expected.push((value, home, heard));
        }
        outbox.push(outside.0, 99);
        assert_eq!(outbox.homes.len(), 2, "one delivery per arbiter");
        outbox.deliver();
        for (value, home, heard) in expected {
            let (thread, got) = heard
                .recv_timeout(std::time::Duration::from_secs(5))
                .expect("the reply arrives");
            assert_eq!(got, Some(value));
            assert_eq!(Some(thread), home, "completed on the receiver's thread");
        }
        assert_eq!(outside.1.blocking_recv().ok(), Some(99));
        for arbiter in arbiters {
            arbiter.stop();
            let _ = arbiter.join();
        }
    }
}
