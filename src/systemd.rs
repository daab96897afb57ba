//! Service-manager notifications (systemd `Type=notify`): READY=1 once the
//! HTTP port answers and the broker is reachable, WATCHDOG=1 while `/healthz`
//! answers, STOPPING=1 when the drain starts. Without `NOTIFY_SOCKET` in the
//! environment nothing is started and nothing is sent.
//!
//! The checks go through chronosd's own HTTP port (`/readyz`, `/healthz`), so
//! READY means what a client would see, and a wedged HTTP server stops the
//! watchdog pings and gets the process restarted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::probe::chronosd_get;

/// How often readiness is checked before READY=1.
const READY_POLL: Duration = Duration::from_millis(100);
/// Longest wait for one `/healthz` or `/readyz` answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The notifier thread of one `serve`; dropping it (or [`Notifier::stopping`]) ends the thread.
pub struct Notifier {
    stop: Option<Arc<AtomicBool>>,
}

impl Notifier {
    /// Starts the notifier for the server listening on `listen`, when
    /// `NOTIFY_SOCKET` is set; otherwise a no-op.
    pub fn start(listen: SocketAddr, https: bool) -> Notifier {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Notifier { stop: None };
        }
        let stop = Arc::new(AtomicBool::new(false));
        let watchdog = sd_notify::watchdog_enabled();
        let flag = stop.clone();
        let probe = probe_addr(listen);
        let spawned = std::thread::Builder::new().name("sd-notify".into()).spawn(move || notify_loop(Probe { addr: probe, https }, watchdog, &flag));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "Cannot start the systemd notifier thread; READY=1 will not be sent.");
        }
        Notifier { stop: Some(stop) }
    }

    /// Tells the service manager the drain started (STOPPING=1) and ends the thread.
    pub fn stopping(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.store(true, Ordering::Release);
            send(&[NotifyState::Stopping, NotifyState::Status("Draining: finishing requests in flight, flushing the producer.")]);
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            stop.store(true, Ordering::Release);
        }
    }
}

/// The address to probe: a wildcard listen address is reached on loopback.
pub fn probe_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port()),
        _ => listen,
    }
}

/// The watchdog ping interval: half the timeout, as sd_watchdog_enabled(3) advises.
pub fn ping_interval(watchdog: Duration) -> Duration {
    (watchdog / 2).max(Duration::from_millis(10))
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "Cannot notify the service manager.");
    }
}

/// chronosd's own port, as a client reaches it.
#[derive(Clone, Copy)]
struct Probe {
    addr: SocketAddr,
    https: bool,
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", if self.https { "https" } else { "http" }, self.addr)
    }
}

fn answers_200(probe: Probe, path: &str) -> bool {
    matches!(chronosd_get(probe.addr, path, PROBE_TIMEOUT, probe.https), Ok((200, _)))
}

fn notify_loop(probe: Probe, watchdog: Option<Duration>, stop: &AtomicBool) {
    let ping_every = watchdog.map(ping_interval);
    let mut last_ping = Instant::now();
    let ping = |last_ping: &mut Instant| {
        if let Some(every) = ping_every {
            if last_ping.elapsed() >= every && answers_200(probe, "/healthz") {
                send(&[NotifyState::Watchdog]);
                *last_ping = Instant::now();
            }
        }
    };
    // Not ready until the HTTP port answers and the broker is reachable (/readyz).
    let mut said_waiting = false;
    while !stop.load(Ordering::Acquire) {
        if answers_200(probe, "/readyz") {
            let status = format!("Receiving batches at {probe}/v1/batch.");
            send(&[NotifyState::Ready, NotifyState::Status(&status)]);
            tracing::info!(%probe, "Told systemd: READY=1.");
            break;
        }
        if !said_waiting {
            send(&[NotifyState::Status("Waiting for the broker (see /readyz).")]);
            said_waiting = true;
        }
        ping(&mut last_ping);
        std::thread::sleep(READY_POLL);
    }
    let Some(every) = ping_every else { return };
    let tick = (every / 4).clamp(Duration::from_millis(5), Duration::from_millis(500));
    while !stop.load(Ordering::Acquire) {
        ping(&mut last_ping);
        std::thread::sleep(tick);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_is_probed_on_loopback() {
        assert_eq!(probe_addr("0.0.0.0:8080".parse().unwrap()), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(probe_addr("[::]:8080".parse().unwrap()), "[::1]:8080".parse().unwrap());
        assert_eq!(probe_addr("10.1.2.3:81".parse().unwrap()), "10.1.2.3:81".parse().unwrap());
    }

    #[test]
    fn pings_at_half_the_watchdog_timeout() {
        assert_eq!(ping_interval(Duration::from_secs(30)), Duration::from_secs(15));
        assert_eq!(ping_interval(Duration::from_millis(4)), Duration::from_millis(10));
    }
}
