//! The daemon's background work, owned by one handle: each piece by name, with how it
//! is stopped and what happens to work it leaves. Shutdown stops them in the reverse
//! order of their start (what started first is what the later ones rely on: the
//! writers outlive every actor that writes), waits for each within a bound, and logs
//! each as it stops, so an operator sees which one held a stop.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use crate::storage::writer::BackgroundThread;

/// How long shutdown waits for each background task, and for the background threads
/// once they are told to stop (the writers finish what is queued first).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

type StopFuture = Pin<Box<dyn Future<Output = ()>>>;

struct Task {
    name: String,
    /// What becomes of the work a task that does not stop in time leaves: it is durable,
    /// and the next start picks it up ("resumed", "retried", ...).
    left: &'static str,
    /// A group of threads waits up to the timeout itself, after being told to stop.
    timeout: Duration,
    stop: Box<dyn FnOnce() -> StopFuture>,
}

/// Every background task and thread of a running daemon.
pub struct Background {
    log: slog::Logger,
    tasks: Vec<Task>,
    timeout: Duration,
}

impl Background {
    pub fn new(log: slog::Logger) -> Background {
        Background {
            log,
            tasks: Vec::new(),
            timeout: STOP_TIMEOUT,
        }
    }

    /// Registers task `name`; `stop` asks it to stop and resolves once it has.
    pub fn task<F, Fut>(&mut self, name: &str, left: &'static str, stop: F)
    where
        F: FnOnce() -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.push(name, left, self.timeout, stop);
    }

    fn push<F, Fut>(&mut self, name: &str, left: &'static str, timeout: Duration, stop: F)
    where
        F: FnOnce() -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.tasks.push(Task {
            name: name.to_string(),
            left,
            timeout,
            stop: Box::new(move || Box::pin(stop())),
        });
    }

    /// Registers a group of threads stopped together: `stop` tells them to stop, then
    /// each is awaited (they log their own stop), and any still running past
    /// [`STOP_TIMEOUT`] is named.
    pub fn threads<F, Fut>(&mut self, name: &str, threads: Vec<BackgroundThread>, stop: F)
    where
        F: FnOnce() -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let log = self.log.clone();
        let wait = self.timeout;
        self.push(name, "resumed", wait * 2, move || async move {
            stop().await;
            let unfinished = actix_web::rt::task::spawn_blocking(move || {
                let deadline = Instant::now() + wait;
                while !threads.iter().all(|t| t.handle.is_finished()) && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                threads
                    .into_iter()
                    .filter(|t| !t.handle.is_finished())
                    .map(|t| t.name)
                    .collect::<Vec<String>>()
            })
            .await
            .unwrap_or_default();
            if !unfinished.is_empty() {
                slog::warn!(log, "background threads still running at exit"; "threads" => ?unfinished);
            }
        });
    }

    /// The names of the registered tasks, in the order they stop.
    #[cfg(test)]
    fn stop_order(&self) -> Vec<&str> {
        self.tasks.iter().rev().map(|t| t.name.as_str()).collect()
    }

    /// Stops every task, the last registered first, each awaited up to
    /// [`STOP_TIMEOUT`] (a group of threads twice that): a database that does not answer must not hold the shutdown,
    /// and what a task leaves is durable. Each task's stop future (and whatever it
    /// holds) is dropped before the next task stops.
    pub async fn stop(self) {
        for task in self.tasks.into_iter().rev() {
            let stopped = (task.stop)();
            match tokio::time::timeout(task.timeout, stopped).await {
                Ok(()) => {
                    slog::info!(self.log, "background task stopped"; "background" => &task.name)
                }
                Err(_) => slog::warn!(self.log,
                    "background task did not stop in time; its work is {} at the next start", task.left;
                    "background" => &task.name),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[actix_web::test]
    async fn tasks_stop_last_started_first_and_a_stuck_one_does_not_hold_the_rest() {
        let stopped = Arc::new(Mutex::new(Vec::new()));
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let mut background = Background::new(log);
        for name in ["writers", "actors", "watchdog"] {
            let stopped = stopped.clone();
            background.task(name, "resumed", move || async move {
                if let Ok(mut names) = stopped.lock() {
                    names.push(name);
                }
            });
        }
        assert_eq!(background.stop_order(), ["watchdog", "actors", "writers"]);
        let mut stuck = Background::new(slog::Logger::root(slog::Discard, slog::o!()));
        stuck.timeout = Duration::from_millis(50);
        let after = stopped.clone();
        stuck.task("after", "resumed", move || async move {
            if let Ok(mut names) = after.lock() {
                names.push("after");
            }
        });
        stuck.task("stuck", "resumed", std::future::pending::<()>);
        stuck.stop().await;
        background.stop().await;
        assert_eq!(
            *stopped
                .lock()
                .map_err(|_| "poisoned")
                .unwrap_or_else(|e| panic!("{e}")),
            ["after", "watchdog", "actors", "writers"]
        );
    }
}
