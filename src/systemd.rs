//! systemd notification: READY=1 once migrations ran and the listener is bound,
//! WATCHDOG=1 while the actor system answers, STOPPING=1 on shutdown. Without
//! NOTIFY_SOCKET (not under systemd) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

pub fn ready() {
    let _ = sd_notify::notify(false, &[NotifyState::Ready]);
}

pub fn stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

pub fn watchdog() {
    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
}

/// Half the watchdog interval systemd asked for, if it asked.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}
