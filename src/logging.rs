//! The slog root logger: JSON lines on stdout (journald) by default, a human format on
//! a terminal. Actors and handlers take child loggers with their own keys. Nothing
//! secret is ever passed to a logger: message bodies, tokens and keys stay out of
//! every `info!`/`warn!` call by construction (they are never formatted).

use std::io::IsTerminal;

use slog::{o, Drain, Level, Logger};

use crate::config::LogSettings;

/// Builds the root logger. The returned guard flushes the async drain when dropped,
/// so keep it alive until the process ends.
pub fn root(settings: &LogSettings) -> (Logger, slog_async::AsyncGuard) {
    let level = settings.slog_level().unwrap_or(Level::Info);
    let human = match settings.format.as_str() {
        "human" => true,
        "json" => false,
        _ => std::io::stdout().is_terminal(),
    };
    let drain: Box<dyn Drain<Ok = (), Err = slog::Never> + Send> = if human {
        let decorator = slog_term::TermDecorator::new().stdout().build();
        Box::new(slog_term::FullFormat::new(decorator).build().fuse())
    } else {
        Box::new(
            slog_json::Json::new(std::io::stdout())
                .add_default_keys()
                .build()
                .fuse(),
        )
    };
    let (drain, guard) = slog_async::Async::new(drain)
        .chan_size(8192)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .build_with_guard();
    let drain = drain.fuse().filter_level(level).fuse();
    (Logger::root(drain, o!("service" => "converra")), guard)
}

/// A logger that discards everything, for tests.
#[cfg(any(test, feature = "testing"))]
pub fn discard() -> Logger {
    Logger::root(slog::Discard, o!())
}
