//! The open-loop schedule: request `n` is due at `start + n × interval`
//! whatever the server does, and its latency counts from that intended time,
//! so a stalled server shows in the percentiles (no coordinated omission).

use std::time::{Duration, Instant};

/// When each request of a run is due.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    /// Time between two consecutive requests of the whole run, in ns.
    pub interval_ns: f64,
    /// Requests in the run.
    pub requests: u64,
    /// The end of the run's duration: nothing is sent after it.
    pub end: Instant,
}

impl Schedule {
    /// `rate` events/s in batches of `batch_size` for `duration`.
    pub fn new(start: Instant, rate: f64, batch_size: u32, duration: Duration) -> Schedule {
        let per_sec = rate / batch_size as f64;
        Schedule { start, interval_ns: 1e9 / per_sec, requests: (per_sec * duration.as_secs_f64()).round() as u64, end: start + duration }
    }

    /// The intended send time of request `n`.
    pub fn due(&self, n: u64) -> Instant {
        self.start + Duration::from_nanos((n as f64 * self.interval_ns) as u64)
    }

    /// Requests due by `now` (how many an on-time generator has sent).
    pub fn due_by(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_nanos() as f64;
        ((elapsed / self.interval_ns).floor() as u64 + 1).min(self.requests)
    }

    /// The requests connection `c` of `connections` sends: every `connections`-th,
    /// so each connection keeps its share of the rate on its own.
    pub fn for_connection(&self, c: u64, connections: u64) -> impl Iterator<Item = u64> {
        (c..self.requests).step_by(connections as usize)
    }
}

/// Latency of one request: from its intended time, and from when it was actually sent.
pub fn latencies(due: Instant, sent: Instant, done: Instant) -> (Duration, Duration) {
    (done.saturating_duration_since(due), done.saturating_duration_since(sent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_due_at_fixed_intervals() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 100_000.0, 50, Duration::from_secs(3));
        assert_eq!(s.requests, 6000);
        assert_eq!(s.due(0), t0);
        assert_eq!(s.due(2000), t0 + Duration::from_secs(1));
        assert_eq!(s.due_by(t0 + Duration::from_millis(500)), 1001);
        assert_eq!(s.due_by(t0 + Duration::from_secs(10)), 6000);
    }

    #[test]
    fn connections_share_every_request_once() {
        let s = Schedule::new(Instant::now(), 1000.0, 10, Duration::from_secs(1));
        let mut all: Vec<u64> = (0..3).flat_map(|c| s.for_connection(c, 3)).collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn a_late_send_counts_from_the_intended_time() {
        let due = Instant::now();
        let sent = due + Duration::from_millis(200); // waited behind a stalled request
        let done = sent + Duration::from_millis(1);
        let (from_due, service) = latencies(due, sent, done);
        assert_eq!(from_due, Duration::from_millis(201));
        assert_eq!(service, Duration::from_millis(1));
    }
}
