//! One run: `connections` keep-alive HTTP/1.1 connections, each sending its
//! share of the open-loop schedule, recording latencies into its own
//! histograms (merged at the end) and counting statuses for the live line.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST, ORIGIN, USER_AGENT};
use hyper::{Method, Request};
use tokio::sync::watch;

use crate::payload::{batch_id, session_id, Mix, Template};
use crate::report::{Percentiles, Report, Statuses};
use crate::schedule::{latencies, Schedule};
use crate::verify::SentBatch;

/// What to send, how fast, and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// `http://host:port` (path `/v1/batch` unless another is given).
    pub target: String,
    /// Offered load, events/s.
    pub rate: f64,
    pub duration: Duration,
    pub batch_size: u32,
    pub connections: u32,
    /// Write key sent in every batch.
    pub key: String,
    /// Page origin: `Origin` header and the host of page URLs.
    pub origin: String,
    pub mix: Mix,
    /// Simulated sessions (each with its own id and client IP in `X-Forwarded-For`).
    pub sessions: u64,
    /// Distinct pre-generated batch bodies.
    pub templates: usize,
    /// A request without a response by then counts as failed and its connection is dropped.
    pub timeout: Duration,
    /// Print a progress line on stderr once per second.
    pub progress: bool,
}

/// A finished run: its report (without verification) and every batch it sent.
pub struct Outcome {
    pub report: Report,
    pub batches: Vec<SentBatch>,
}

const USER_AGENTS: [&str; 3] = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:145.0) Gecko/20100101 Firefox/145.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/142.0.0.0 Safari/537.36",
];

/// Everything the connections share, read-only.
struct Plan {
    addr: SocketAddr,
    path: String,
    host: HeaderValue,
    origin: HeaderValue,
    content_type: HeaderValue,
    user_agents: Vec<HeaderValue>,
    schedule: Schedule,
    connections: u64,
    run: u64,
    sessions: u64,
    templates: Vec<Template>,
    timeout: Duration,
}

/// Live counters for the progress line.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    ok: AtomicU64,
    client_error: AtomicU64,
    unavailable: AtomicU64,
    server_error: AtomicU64,
    failed: AtomicU64,
    events_accepted: AtomicU64,
    bytes: AtomicU64,
    /// Highest latency from intended time since the last progress line, µs.
    window_max_us: AtomicU64,
}

struct ConnectionResult {
    latency: Histogram<u64>,
    service: Histogram<u64>,
    batches: Vec<SentBatch>,
    last_done: Instant,
}

/// How long answers still in flight when a run is interrupted may take.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Runs the schedule to its end and returns what happened.
pub async fn run(opts: &Options) -> anyhow::Result<Outcome> {
    let (_never, stop) = watch::channel(false);
    run_until(opts, stop).await
}

/// Runs the schedule until the end of its duration, or until `stop` turns
/// true (SIGINT, SIGTERM): no request is sent after either, answers in
/// flight then get their `--timeout` (at the end) or [`STOP_GRACE`] (when
/// stopped), and the requests not sent count as missed in the report.
pub async fn run_until(opts: &Options, stop: watch::Receiver<bool>) -> anyhow::Result<Outcome> {
    anyhow::ensure!(opts.rate > 0.0 && opts.batch_size > 0 && opts.connections > 0, "rate, batch size and connections must be above 0");
    let (addr, host, path) = parse_target(&opts.target).await?;
    let run = fastrand::u64(..);
    let templates =
        (0..opts.templates.max(1)).map(|i| Template::generate(&opts.key, &opts.origin, &opts.mix, opts.batch_size, run ^ i as u64)).collect();
    let plan = Arc::new(Plan {
        addr,
        path,
        host: HeaderValue::from_str(&host)?,
        origin: HeaderValue::from_str(&opts.origin)?,
        content_type: HeaderValue::from_static("text/plain;charset=UTF-8"),
        user_agents: USER_AGENTS.iter().map(|u| HeaderValue::from_static(u)).collect(),
        // Sending starts a little after set-up so the first requests are not late already.
        schedule: Schedule::new(Instant::now() + Duration::from_millis(50), opts.rate, opts.batch_size, opts.duration),
        connections: opts.connections as u64,
        run,
        sessions: opts.sessions.max(1),
        templates,
        timeout: opts.timeout,
    });
    let counters = Arc::new(Counters::default());
    let tasks: Vec<_> = (0..plan.connections).map(|c| tokio::spawn(connection(c, plan.clone(), counters.clone(), stop.clone()))).collect();
    let progress = opts.progress.then(|| tokio::spawn(progress(plan.clone(), counters.clone())));

    let mut latency = histogram();
    let mut service = histogram();
    let mut batches = Vec::with_capacity(plan.schedule.requests as usize);
    let mut last_done = plan.schedule.start;
    for t in tasks {
        let r = t.await?;
        latency.add(&r.latency)?;
        service.add(&r.service)?;
        batches.extend(r.batches);
        last_done = last_done.max(r.last_done);
    }
    if let Some(p) = progress {
        p.abort();
    }
    let c = &counters;
    let elapsed = last_done.saturating_duration_since(plan.schedule.start).as_secs_f64();
    let events_accepted = c.events_accepted.load(Relaxed);
    let sent = c.sent.load(Relaxed);
    let report = Report {
        target: opts.target.clone(),
        rate: opts.rate,
        batch_size: opts.batch_size,
        connections: opts.connections,
        duration_secs: opts.duration.as_secs_f64(),
        elapsed_secs: elapsed,
        requests: sent,
        scheduled: plan.schedule.requests,
        missed: plan.schedule.requests - sent,
        interrupted: *stop.borrow(),
        events_sent: sent * opts.batch_size as u64,
        events_accepted,
        accepted_rate: if elapsed > 0.0 { events_accepted as f64 / elapsed } else { 0.0 },
        bytes_sent: c.bytes.load(Relaxed),
        statuses: Statuses {
            ok: c.ok.load(Relaxed),
            client_error: c.client_error.load(Relaxed),
            unavailable: c.unavailable.load(Relaxed),
            server_error: c.server_error.load(Relaxed),
            failed: c.failed.load(Relaxed),
        },
        latency_ms: Percentiles::of(&latency),
        service_ms: Percentiles::of(&service),
        verify: None,
    };
    Ok(Outcome { report, batches })
}

/// µs from 1 µs to 1 h, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// `http://host:port[/path]` → address, Host header, path (`/v1/batch` by default).
async fn parse_target(target: &str) -> anyhow::Result<(SocketAddr, String, String)> {
    let rest = target.strip_prefix("http://").context("--target must start with http:// (TLS is not supported)")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let path = if path.is_empty() || path == "/" { "/v1/batch".to_string() } else { path.to_string() };
    let with_port = if host.contains(':') { host.to_string() } else { format!("{host}:80") };
    let addr = tokio::net::lookup_host(&with_port)
        .await
        .with_context(|| format!("resolving {with_port}"))?
        .next()
        .with_context(|| format!("{with_port} has no address"))?;
    Ok((addr, host.to_string(), path))
}

/// Resolves once `stop` is true (never, when its sender is gone while false).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// One keep-alive connection sending requests `c`, `c + connections`, … each
/// at its due time, until the schedule's end or `stop`.
async fn connection(c: u64, plan: Arc<Plan>, counters: Arc<Counters>, mut stop: watch::Receiver<bool>) -> ConnectionResult {
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut latency = histogram();
    let mut service = histogram();
    let mut batches = Vec::with_capacity((plan.schedule.requests / plan.connections + 1) as usize);
    let mut last_done = plan.schedule.start;
    for n in plan.schedule.for_connection(c, plan.connections) {
        let due = plan.schedule.due(n);
        if due > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = stopped(&mut stop) => break,
            }
        }
        // A connection that fell behind stops at the end too: what it could
        // not send on time is missed, not sent at the server's pace later.
        if *stop.borrow() || Instant::now() >= plan.schedule.end {
            break;
        }
        let id = batch_id(plan.run, n);
        let request = plan.request(n, &id);
        let sent = Instant::now();
        counters.sent.fetch_add(1, Relaxed);
        let answer = {
            let answer = tokio::time::timeout(plan.timeout, send(&plan, &mut sender, request));
            tokio::pin!(answer);
            tokio::select! {
                a = &mut answer => a,
                _ = stopped(&mut stop) => tokio::time::timeout(STOP_GRACE, &mut answer).await.unwrap_or_else(Err),
            }
        };
        let done = Instant::now();
        last_done = done;
        let (from_due, service_time) = latencies(due, sent, done);
        let us = |d: Duration| (d.as_micros() as u64).clamp(1, 3_600_000_000);
        latency.saturating_record(us(from_due));
        service.saturating_record(us(service_time));
        counters.window_max_us.fetch_max(us(from_due), Relaxed);
        let mut accepted = 0;
        let mut status = 0;
        match answer {
            Ok(Ok((code, body))) => {
                status = code;
                match code {
                    200..=299 => {
                        accepted = accepted_events(&body);
                        counters.ok.fetch_add(1, Relaxed);
                        counters.events_accepted.fetch_add(accepted as u64, Relaxed);
                    }
                    503 => _ = counters.unavailable.fetch_add(1, Relaxed),
                    400..=499 => _ = counters.client_error.fetch_add(1, Relaxed),
                    _ => _ = counters.server_error.fetch_add(1, Relaxed),
                }
            }
            Ok(Err(_)) | Err(_) => {
                sender = None;
                counters.failed.fetch_add(1, Relaxed);
            }
        }
        let done_ms = done.duration_since(plan.schedule.start).as_millis() as u32;
        batches.push(SentBatch { id, accepted, status, done_ms });
    }
    ConnectionResult { latency, service, batches, last_done }
}

impl Plan {
    /// Request `n`: a template stamped with its batch id, a session and the current time.
    fn request(&self, n: u64, id: &uuid::Uuid) -> Request<Full<Bytes>> {
        let template = &self.templates[(n % self.templates.len() as u64) as usize];
        let session = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) % self.sessions;
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let body = template.stamp(id, &session_id(self.run, session), now_ms);
        // One client IP per session, in the benchmarking range 198.18.0.0/15.
        let ip = session % 131_072;
        let forwarded =
            HeaderValue::from_str(&format!("198.{}.{}.{}", 18 + (ip >> 16), (ip >> 8) & 0xff, ip & 0xff)).expect("an IP is a header value");
        Request::builder()
            .method(Method::POST)
            .uri(self.path.as_str())
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, self.content_type.clone())
            .header(ORIGIN, self.origin.clone())
            .header(USER_AGENT, self.user_agents[(session % self.user_agents.len() as u64) as usize].clone())
            .header("x-forwarded-for", forwarded)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request")
    }
}

/// Sends on the connection, opening it first when there is none; returns status and body.
async fn send(plan: &Plan, sender: &mut Option<SendRequest<Full<Bytes>>>, request: Request<Full<Bytes>>) -> anyhow::Result<(u16, Bytes)> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        let stream = tokio::net::TcpStream::connect(plan.addr).await?;
        stream.set_nodelay(true)?;
        let (s, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        *sender = Some(s);
    }
    let s = sender.as_mut().expect("connected above");
    s.ready().await?;
    let response = s.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// `accepted` of a 200 body (`{"ok":true,"batch_id":…,"accepted":50,…}`), without parsing the JSON.
pub fn accepted_events(body: &[u8]) -> u32 {
    const FIELD: &[u8] = b"\"accepted\":";
    let Some(at) = body.windows(FIELD.len()).position(|w| w == FIELD) else { return 0 };
    body[at + FIELD.len()..]
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| b.is_ascii_digit())
        .fold(0u32, |n, d| n.saturating_mul(10).saturating_add((d - b'0') as u32))
}

/// Once per second on stderr: how far the run is, its rates, statuses and worst latency.
async fn progress(plan: Arc<Plan>, c: Arc<Counters>) {
    let mut tick = tokio::time::interval_at((plan.schedule.start + Duration::from_secs(1)).into(), Duration::from_secs(1));
    let mut last_events = 0;
    loop {
        tick.tick().await;
        let now = Instant::now();
        let events = c.events_accepted.load(Relaxed);
        let sent = c.sent.load(Relaxed);
        eprintln!(
            "[{:>4.0} s] sent {sent}/{} · {:>9} events/s accepted · 2xx {} 4xx {} 503 {} 5xx {} failed {} · behind {} · worst latency {:.1} ms",
            now.saturating_duration_since(plan.schedule.start).as_secs_f64(),
            plan.schedule.requests,
            events - last_events,
            c.ok.load(Relaxed),
            c.client_error.load(Relaxed),
            c.unavailable.load(Relaxed),
            c.server_error.load(Relaxed),
            c.failed.load(Relaxed),
            plan.schedule.due_by(now).saturating_sub(sent),
            c.window_max_us.swap(0, Relaxed) as f64 / 1000.0,
        );
        last_events = events;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_is_read_from_the_response() {
        assert_eq!(accepted_events(br#"{"ok":true,"batch_id":"x","accepted":50,"rejected":0,"reasons":[]}"#), 50);
        assert_eq!(accepted_events(br#"{"ok":true,"accepted": 7}"#), 7);
        assert_eq!(accepted_events(br#"{"ok":false}"#), 0);
    }

    #[tokio::test]
    async fn targets_default_to_the_batch_path() {
        let (addr, host, path) = parse_target("http://127.0.0.1:8080").await.unwrap();
        assert_eq!((addr.port(), host.as_str(), path.as_str()), (8080, "127.0.0.1:8080", "/v1/batch"));
        assert_eq!(parse_target("http://127.0.0.1:1/x").await.unwrap().2, "/x");
        assert!(parse_target("https://a:1").await.is_err());
    }
}
