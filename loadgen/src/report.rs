//! The final report: status counts, latency percentiles (HdrHistogram) and
//! the end-to-end check, as text or JSON (`--json`).

use hdrhistogram::Histogram;
use serde::Serialize;

/// Percentiles of one latency histogram, in ms.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub count: u64,
}

impl Percentiles {
    /// From a histogram of µs.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |v: u64| v as f64 / 1000.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            count: h.len(),
        }
    }
}

/// Responses by class.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Statuses {
    /// 2xx: the batch is in Kafka.
    pub ok: u64,
    /// 4xx (429 included).
    pub client_error: u64,
    /// 503: overloaded or broker unavailable.
    pub unavailable: u64,
    /// Other 5xx.
    pub server_error: u64,
    /// No response: connection refused or reset, timeout.
    pub failed: u64,
}

/// What `--verify` found in PostgreSQL for the accepted events.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Verification {
    /// Events the server accepted (2xx), by (batch_id, position).
    pub expected: u64,
    /// Accepted events not in the tables when the wait ended.
    pub missing: u64,
    /// Rows beyond the first for the same (batch_id, position).
    pub duplicated: u64,
    /// Events of batches that did not get a 2xx but were stored anyway (allowed after a 5xx).
    pub unacknowledged_stored: u64,
    /// Seconds from the end of sending until every accepted event was there (or the wait gave up).
    pub wait_secs: f64,
}

impl Verification {
    pub fn passed(&self) -> bool {
        self.missing == 0 && self.duplicated == 0
    }
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Report {
    pub target: String,
    /// Offered rate, events/s.
    pub rate: f64,
    pub batch_size: u32,
    pub connections: u32,
    /// Scheduled duration, s.
    pub duration_secs: f64,
    /// From the first intended send to the last response, s.
    pub elapsed_secs: f64,
    /// Requests sent.
    pub requests: u64,
    /// Requests the schedule had for the duration.
    pub scheduled: u64,
    /// Scheduled requests not sent: due after an interrupt, or not sent by
    /// the end of the duration because the server answered too slowly.
    pub missed: u64,
    /// Stopped early by SIGINT or SIGTERM (no verification then).
    pub interrupted: bool,
    pub events_sent: u64,
    /// Events the server said it accepted (sum of `accepted` of 2xx responses).
    pub events_accepted: u64,
    /// `events_accepted / elapsed_secs`.
    pub accepted_rate: f64,
    pub bytes_sent: u64,
    pub statuses: Statuses,
    /// From the intended send time (what a user waits; includes queueing in the generator).
    pub latency_ms: Percentiles,
    /// From the actual send time (the server's service time alone).
    pub service_ms: Percentiles,
    pub verify: Option<Verification>,
}

impl Report {
    /// 0 when nothing is wrong with the data; 1 when `--verify` found missing or duplicated events.
    pub fn exit_code(&self) -> i32 {
        match &self.verify {
            Some(v) if !v.passed() => 1,
            _ => 0,
        }
    }

    pub fn text(&self) -> String {
        let l = &self.latency_ms;
        let s = &self.service_ms;
        let st = &self.statuses;
        let mut out = format!(
            "target {} · offered {:.0} events/s in batches of {} over {} connections for {:.0} s\n\
             sent {} of {} scheduled requests ({} events, {:.1} MB) in {:.2} s; accepted {} events = {:.0} events/s\n\
             status: 2xx {} · 4xx {} · 503 {} · other 5xx {} · no response {}\n\
             latency from intended send (ms): p50 {:.2} · p90 {:.2} · p99 {:.2} · p99.9 {:.2} · max {:.2}\n\
             service time (ms):               p50 {:.2} · p90 {:.2} · p99 {:.2} · p99.9 {:.2} · max {:.2}\n",
            self.target,
            self.rate,
            self.batch_size,
            self.connections,
            self.duration_secs,
            self.requests,
            self.scheduled,
            self.events_sent,
            self.bytes_sent as f64 / 1e6,
            self.elapsed_secs,
            self.events_accepted,
            self.accepted_rate,
            st.ok,
            st.client_error,
            st.unavailable,
            st.server_error,
            st.failed,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            s.p50,
            s.p90,
            s.p99,
            s.p999,
            s.max,
        );
        if self.missed > 0 {
            out.push_str(&format!(
                "missed {} requests ({:.1} %): {}; the latencies are of the requests sent\n",
                self.missed,
                100.0 * self.missed as f64 / self.scheduled.max(1) as f64,
                if self.interrupted {
                    "not sent before the interrupt"
                } else {
                    "not sent by the end of the duration (the server answered too slowly)"
                }
            ));
        }
        if self.interrupted {
            out.push_str("interrupted (SIGINT or SIGTERM): a partial report, not verified\n");
        }
        if let Some(v) = &self.verify {
            out.push_str(&format!(
                "verify: {} accepted events · missing {} · duplicated {} · stored without 2xx {} · waited {:.1} s · {}\n",
                v.expected,
                v.missing,
                v.duplicated,
                v.unacknowledged_stored,
                v.wait_secs,
                if v.passed() { "OK" } else { "FAILED" }
            ));
        }
        out
    }
}
