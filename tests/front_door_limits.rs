//! The front door's limits on connections and what it shows strangers
//! (issue 27, items 4 and 5), against chronosd's real HTTP server
//! (`chronos::serve` on 127.0.0.1:0, discard sink: no broker is needed for a
//! status code): a body's read deadline, connections and bodies in flight,
//! the per-IP limit on every public route (IPv6 per network), the
//! operational endpoints only on the admin listener, a 404 and a 5xx that
//! name nothing of the deployment.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chronos::config::Config;
use chronos::produce::{ProducerHealth, Sink};
use chronos::stack::process::{free_port, wait_for_port};
use chronos::telemetry::Metrics;

const BROWSER_KEY: &str = "wk_site_0123456789abcdef";
const SERVER_KEY: &str = "wk_backend_0123456789abcdef";

/// chronosd's HTTP server in this process, stopped when dropped.
struct Served {
    addr: SocketAddr,
    admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    /// Serves with `[http]` keys `http` added, and the rest of the config `rest`.
    fn start(http: &str, rest: &str) -> Served {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let toml = format!(
            "[http]\nlisten = \"{addr}\"\nadmin_listen = \"{admin}\"\nworkers = 1\nreceipt_threads = 1\nshutdown_grace_secs = 1\ntrusted_proxies = [\"127.0.0.1\"]\n{http}\n\
             [[keys]]\nid = \"site\"\nkey = \"{BROWSER_KEY}\"\norigins = [\"shop.example.com\"]\n\
             [[keys]]\nid = \"backend\"\nkey = \"{SERVER_KEY}\"\nkind = \"server\"\n{rest}\n"
        );
        let config = Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let (metrics, health) = (Arc::new(Metrics::new()), Arc::new(ProducerHealth::default()));
            let shutdown = async move {
                let _ = stopped.await;
            };
            actix_rt::System::new().block_on(chronos::serve(config, listener, Sink::Discard, metrics, health, shutdown)).unwrap();
        });
        wait_for_port(admin, Duration::from_secs(20), || true).unwrap();
        Served { addr, admin, stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An answer: status, header lines (lower case), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

/// Reads one answer from `s` (the server closes, or `Connection: close`).
fn read_answer(s: &mut TcpStream, timeout: Duration) -> std::io::Result<Answer> {
    s.set_read_timeout(Some(timeout))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // Reset after the answer (the server closed with body bytes unread).
            Err(e) if !raw.is_empty() && e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok(Answer { status, headers: head.to_ascii_lowercase(), body: body.to_string() })
}

/// One request on a connection of its own.
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    read_answer(&mut s, Duration::from_secs(10)).unwrap()
}

fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path, &[], "")
}

/// A connection that sent a batch's headers and the first bytes of its body, then stalls.
fn stalled_body(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let head = format!("POST /v1/batch HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n{{\"v\":1,");
    s.write_all(head.as_bytes()).unwrap();
    s
}

#[test]
fn a_body_not_sent_within_the_deadline_gets_408_naming_the_limit() {
    let d = Served::start("body_timeout_secs = 1", "");
    let started = Instant::now();
    let mut slow = stalled_body(d.addr);
    let answer = read_answer(&mut slow, Duration::from_secs(8)).expect("an answer before the client gives up");
    let took = started.elapsed();
    assert_eq!(answer.status, 408, "{answer:?}");
    let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(body["error"]["code"], "body_timeout");
    assert_eq!(body["error"]["limit_secs"], 1);
    assert!(body["error"]["message"].as_str().unwrap().contains("within 1 s"), "{body}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "answered after {took:?}");
    // The server goes on serving.
    assert_eq!(get(d.addr, "/healthz").status, 200);
}

#[test]
fn bodies_read_at_once_are_capped_with_503_and_retry_after() {
    let d = Served::start("body_timeout_secs = 30\nmax_bodies_in_flight = 1\nretry_after_secs = 3", "");
    let slow = stalled_body(d.addr);
    // The stalled body holds the only permit once its handler runs.
    let until = Instant::now() + Duration::from_secs(10);
    let busy = loop {
        let a = request(d.addr, "POST", "/v1/batch", &[("Content-Type", "text/plain")], "{}");
        if a.status == 503 || Instant::now() > until {
            break a;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(busy.status, 503, "{busy:?}");
    assert!(busy.headers.contains("\r\nretry-after: 3"), "{busy:?}");
    assert!(busy.body.contains("\"code\":\"busy\""), "{busy:?}");
    // The permit comes back when that body is given up.
    drop(slow);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let a = request(d.addr, "POST", "/v1/batch", &[("Content-Type", "text/plain")], "{}");
        if a.status != 503 {
            assert_eq!(a.status, 400, "{a:?}");
            break;
        }
        assert!(Instant::now() < until, "still busy: {a:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn connections_past_max_connections_wait_until_one_closes() {
    let d = Served::start("max_connections = 1", "");
    // One connection open (kept alive after its answer).
    let mut first = TcpStream::connect(d.addr).unwrap();
    first.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", d.addr).as_bytes()).unwrap();
    first.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1024];
    let n = first.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // A second one is not served while the first is open…
    let mut second = TcpStream::connect(d.addr).unwrap();
    second.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", d.addr).as_bytes()).unwrap();
    let early = read_answer(&mut second, Duration::from_millis(1500));
    assert!(matches!(&early, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)), "served past the limit: {early:?}");
    // …and is once it closes.
    drop(first);
    let answer = read_answer(&mut second, Duration::from_secs(10)).unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
}

/// Method, path, headers.
type Route = (&'static str, &'static str, &'static [(&'static str, &'static str)]);

#[test]
fn every_public_route_counts_against_the_per_ip_limit_and_ipv6_per_network() {
    let d = Served::start("", "[limits]\nper_ip_per_sec = 1\nper_ip_burst = 2\n");
    let routes: [Route; 6] = [
        ("GET", "/healthz", &[]),
        ("GET", "/readyz", &[]),
        ("GET", "/chronos.js", &[]),
        ("GET", "/no-such-path", &[]),
        ("OPTIONS", "/v1/batch", &[("Origin", "https://shop.example.com")]),
        ("POST", "/v1/import", &[("Authorization", "Bearer wk_unknown_0123456789abc")]),
    ];
    for (i, (method, path, headers)) in routes.iter().enumerate() {
        // A client of its own per route (named by the trusted proxy, 127.0.0.1).
        let client = format!("198.51.100.{}", 10 + i);
        let mut with_client = headers.to_vec();
        with_client.push(("X-Forwarded-For", &client));
        for _ in 0..2 {
            let a = request(d.addr, method, path, &with_client, "");
            assert_ne!(a.status, 429, "{method} {path}: {a:?}");
        }
        let a = request(d.addr, method, path, &with_client, "");
        assert_eq!(a.status, 429, "{method} {path}: the third request of a burst of 2: {a:?}");
        assert!(a.headers.contains("\r\nretry-after: "), "{a:?}");
    }
    // IPv6: one bucket per /64 (limits.ipv6_prefix).
    for host in ["2001:db8:7:7::1", "2001:db8:7:7::2"] {
        assert_eq!(request(d.addr, "GET", "/healthz", &[("X-Forwarded-For", host)], "").status, 200);
    }
    assert_eq!(request(d.addr, "GET", "/healthz", &[("X-Forwarded-For", "2001:db8:7:7:ffff::3")], "").status, 429, "same /64");
    assert_eq!(request(d.addr, "GET", "/healthz", &[("X-Forwarded-For", "2001:db8:7:8::1")], "").status, 200, "next /64");
    // The admin listener is not a public route.
    for _ in 0..5 {
        assert_eq!(get(d.admin, "/metrics").status, 200);
    }
}

#[test]
fn metrics_and_the_detailed_readyz_are_only_on_the_admin_listener() {
    let d = Served::start("", "");
    let public = get(d.addr, "/metrics");
    assert_eq!(public.status, 404, "{public:?}");
    let ready = get(d.addr, "/readyz");
    assert_eq!(ready.status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&ready.body).unwrap(),
        serde_json::json!({ "ready": true }),
        "the public /readyz says no more"
    );
    let metrics = get(d.admin, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.contains("# TYPE chronos_"), "{}", metrics.body);
    let detailed = get(d.admin, "/readyz");
    assert!(detailed.body.contains("\"sink\":\"discard\""), "{detailed:?}");
    assert_eq!(get(d.admin, "/v1/batch").status, 404, "batches are not taken on the admin listener");
}

#[test]
fn the_404_names_neither_the_batch_path_nor_a_host() {
    let d = Served::start("batch_path = \"/e-private-path\"\ntracker_path = \"/assets/private.js\"", "");
    for (method, path) in [("GET", "/"), ("POST", "/v1/batch"), ("GET", "/.env")] {
        let a = request(d.addr, method, path, &[], "");
        assert_eq!(a.status, 404, "{a:?}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&a.body).unwrap(),
            serde_json::json!({ "ok": false, "error": "not_found", "message": "no such endpoint" })
        );
        assert!(!a.body.contains("private") && !a.body.contains("127.0.0.1"), "{a:?}");
    }
}

#[test]
fn a_5xx_body_names_no_connection_string_host_or_user() {
    // A PostgreSQL nobody listens on: POST /v1/import answers 503.
    let port = free_port();
    let d = Served::start("", &format!("[postgres]\nurl = \"postgres://leakuser:leak-password@127.0.0.1:{port}/leakdb\"\n"));
    let auth = format!("Bearer {SERVER_KEY}");
    let a = request(d.addr, "POST", "/v1/import", &[("Authorization", &auth)], "");
    assert_eq!(a.status, 503, "{a:?}");
    assert!(a.body.contains("\"code\":\"store_unavailable\""), "{a:?}");
    for secret in ["leakuser", "leak-password", "leakdb", "127.0.0.1", &port.to_string()] {
        assert!(!a.body.contains(secret), "the 503 body shows {secret}: {}", a.body);
    }
}
