//! The watch as a service: what it tells the service manager, and how a
//! probe tells that it is alive.
//!
//! Under systemd (`Type=notify`, `NOTIFY_SOCKET` set) the watch sends
//! `READY=1` once its listener is bound and every stream has its start
//! place, `STATUS=` lines an operator sees in `systemctl status`,
//! `WATCHDOG=1` while its run loop turns (at half of `WatchdogSec=`, so a
//! loop stuck on a read gets the process restarted), and `STOPPING=1` when
//! asked to stop. Without `NOTIFY_SOCKET` every call does nothing.
//!
//! The same turns of the run loop feed [`Liveness`], which `/livez`
//! answers from: a Kubernetes liveness probe restarts a watch whose loop
//! stopped, not one whose database is down (that is `/healthz`, for
//! readiness and alerts: a restart would not bring a server back).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// How long the run loop may go without a turn before `/livez` fails.
pub const LIVENESS_LIMIT: Duration = Duration::from_secs(60);

/// The service manager's end of the watch (systemd's notification socket).
#[derive(Debug)]
pub struct ServiceManager {
    /// A quarter of the watchdog interval systemd asked for, if it asked.
    ping_every: Option<Duration>,
    last_ping: Option<Instant>,
}

impl ServiceManager {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` as systemd
    /// sets them.
    pub fn from_env() -> ServiceManager {
        ServiceManager {
            ping_every: sd_notify::watchdog_enabled().map(|interval| interval / 4),
            last_ping: None,
        }
    }

    /// Ready to serve: `READY=1` with a status line.
    pub fn ready(&mut self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
        self.last_ping = Some(Instant::now());
    }

    /// The run loop turned at `now`: `WATCHDOG=1` if a quarter of the
    /// interval has passed since the last one.
    pub fn turned(&mut self, now: Instant) {
        let Some(every) = self.ping_every else {
            return;
        };
        if self
            .last_ping
            .is_none_or(|last| now.duration_since(last) >= every)
        {
            send(&[NotifyState::Watchdog]);
            self.last_ping = Some(now);
        }
    }

    /// A new status line for `systemctl status`.
    pub fn status(&self, status: &str) {
        send(&[NotifyState::Status(status)]);
    }

    /// Asked to stop: `STOPPING=1`.
    pub fn stopping(&self, status: &str) {
        send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }
}

/// One datagram to the notification socket. A socket that does not take it
/// is no reason to stop watching: logged, at debug level, and dropped.
fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("could not notify the service manager: {e}");
    }
}

/// When the run loop last turned, for `/livez`: `None` until it first does.
#[derive(Debug)]
pub struct Liveness {
    turned: Mutex<Option<Instant>>,
    limit: Duration,
}

impl Liveness {
    pub fn new(limit: Duration) -> Liveness {
        Liveness {
            turned: Mutex::new(None),
            limit,
        }
    }

    pub fn turned(&self, now: Instant) {
        *self.turned.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
    }

    /// `Err` with the reason while the watch is starting, and once the loop
    /// has not turned for the limit.
    pub fn check(&self, now: Instant) -> Result<(), String> {
        let turned = *self.turned.lock().unwrap_or_else(|e| e.into_inner());
        let Some(turned) = turned else {
            return Err("starting: opening the binary log streams".into());
        };
        let idle = now.saturating_duration_since(turned);
        if idle > self.limit {
            Err(format!(
                "the run loop has not turned for {:.0} s (limit {} s)",
                idle.as_secs_f64(),
                self.limit.as_secs()
            ))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_fails_only_after_the_limit() {
        let liveness = Liveness::new(Duration::from_secs(30));
        let start = Instant::now();
        let starting = liveness.check(start).unwrap_err();
        assert!(starting.starts_with("starting"), "{starting}");
        liveness.turned(start);
        assert!(liveness.check(start + Duration::from_secs(30)).is_ok());
        let late = liveness.check(start + Duration::from_secs(31)).unwrap_err();
        assert!(late.contains("31 s"), "{late}");
        liveness.turned(start + Duration::from_secs(31));
        assert!(liveness.check(start + Duration::from_secs(32)).is_ok());
    }

    #[test]
    fn the_watchdog_is_pinged_every_quarter_of_its_interval() {
        // No NOTIFY_SOCKET in the test's environment: `send` does nothing,
        // and what is tested is when it is called.
        // WatchdogSec=40: a ping every 10 s.
        let mut manager = ServiceManager {
            ping_every: Some(Duration::from_secs(10)),
            last_ping: None,
        };
        let start = Instant::now();
        manager.turned(start);
        assert_eq!(manager.last_ping, Some(start));
        manager.turned(start + Duration::from_secs(9));
        assert_eq!(manager.last_ping, Some(start));
        manager.turned(start + Duration::from_secs(10));
        assert_eq!(manager.last_ping, Some(start + Duration::from_secs(10)));

        let mut unwatched = ServiceManager {
            ping_every: None,
            last_ping: None,
        };
        unwatched.turned(start);
        assert_eq!(unwatched.last_ping, None);
    }
}
