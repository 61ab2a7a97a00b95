//! systemd's service protocol (sd_notify): READY once the node serves, WATCHDOG
//! pings from the node's own runtime (so that a runtime that hangs is restarted), and
//! STOPPING on the way out. Outside systemd there is no NOTIFY_SOCKET and each call
//! does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!("cannot notify systemd: {e}");
    }
}

/// The node serves: systemd may start what waits for it.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The node is leaving the overlay and will stop.
pub fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("leaving the network"),
    ]);
}

/// With `WatchdogSec=` set, pings systemd at half the period from a task of the
/// runtime; the task ends with the node.
pub fn watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) {
        return None;
    }
    let period = Duration::from_micros(usec / 2).max(Duration::from_millis(100));
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            notify(&[NotifyState::Watchdog]);
        }
    }))
}
