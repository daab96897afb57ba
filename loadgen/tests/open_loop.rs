//! The open-loop schedule against a tiny HTTP server that stalls once: the
//! requests due during the stall are still sent (late) and their latency,
//! counted from the intended send time, shows the stall in p99, while the
//! service time (from the actual send) does not.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use loadgen::payload::Mix;
use loadgen::run::{run, Options};

/// Answers every batch with 200 and its event count; request `stall_at` waits `stall` first.
fn server(stall_at: u64, stall: Duration) -> (u16, Arc<AtomicU64>) {
    slow_server(stall_at, stall, Duration::ZERO)
}

/// `server`, each answer taking `every` too.
fn slow_server(stall_at: u64, stall: Duration, every: Duration) -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let counter = counter.clone();
            std::thread::spawn(move || serve(stream.unwrap(), counter, stall_at, stall, every));
        }
    });
    (port, seen)
}

fn serve(mut s: TcpStream, counter: Arc<AtomicU64>, stall_at: u64, stall: Duration, every: Duration) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")).map(|v| v.trim().parse().unwrap()).unwrap_or(0);
        while buf.len() < head_end + 4 + len {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: serde_json::Value = serde_json::from_slice(&buf[head_end + 4..head_end + 4 + len]).expect("a JSON batch");
        let events = body["events"].as_array().expect("events").len();
        buf.drain(..head_end + 4 + len);
        if counter.fetch_add(1, Ordering::SeqCst) == stall_at {
            std::thread::sleep(stall);
        }
        std::thread::sleep(every);
        let reply = format!(r#"{{"ok":true,"batch_id":"{}","accepted":{events},"rejected":0,"reasons":[]}}"#, body["batch"].as_str().unwrap());
        let response = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}", reply.len());
        if s.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn options(port: u16) -> Options {
    Options {
        target: format!("http://127.0.0.1:{port}"),
        rate: 2000.0,
        duration: Duration::from_secs(2),
        batch_size: 10,
        connections: 1,
        key: "wk_test_0123456789abcdef".into(),
        origin: "https://shop.example.com".into(),
        mix: Mix::parse(loadgen::payload::DEFAULT_MIX).unwrap(),
        sessions: 100,
        templates: 4,
        timeout: Duration::from_secs(5),
        progress: false,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_stall_shows_in_p99_from_the_intended_time() {
    // 200 requests/s on one connection for 2 s; request 100 is held for 300 ms,
    // so ~60 requests fall due behind it.
    let (port, seen) = server(100, Duration::from_millis(300));
    let out = run(&options(port)).await.unwrap();
    let r = &out.report;
    assert_eq!(r.requests, 400);
    assert_eq!(seen.load(Ordering::SeqCst), 400, "every scheduled request was sent");
    assert_eq!(r.statuses.ok, 400);
    assert_eq!(r.events_accepted, 4000);
    assert_eq!(out.batches.iter().filter(|b| b.accepted == 10).count(), 400);
    assert_eq!(r.latency_ms.count, 400);
    assert!(r.latency_ms.max >= 300.0, "{:?}", r.latency_ms);
    // More than 1 % of the requests waited behind the stall.
    assert!(r.latency_ms.p99 >= 200.0, "p99 from intended time hides the stall: {:?}", r.latency_ms);
    assert!(r.latency_ms.p90 >= 20.0, "{:?}", r.latency_ms);
    // The server was slow once only: its service time says so.
    assert!(r.service_ms.max >= 300.0, "{:?}", r.service_ms);
    assert!(r.service_ms.p99 < 100.0, "{:?}", r.service_ms);
    // And the run kept to its schedule: 2 s plus the stall at most.
    assert!(r.elapsed_secs < 2.5, "{}", r.elapsed_secs);
}

#[tokio::test(flavor = "current_thread")]
async fn without_a_stall_latency_stays_low() {
    let (port, _) = server(u64::MAX, Duration::ZERO);
    let out = run(&options(port)).await.unwrap();
    assert_eq!(out.report.statuses.ok, 400);
    assert!(out.report.latency_ms.p99 < 50.0, "{:?}", out.report.latency_ms);
}

#[tokio::test(flavor = "current_thread")]
async fn a_closed_port_counts_failures_not_successes() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut o = options(port);
    o.duration = Duration::from_millis(200);
    let out = run(&o).await.unwrap();
    assert_eq!(out.report.statuses.failed, out.report.requests);
    assert_eq!(out.report.statuses.ok, 0);
    assert!(out.batches.iter().all(|b| b.accepted == 0));
}

#[tokio::test(flavor = "current_thread")]
async fn a_server_too_slow_for_the_rate_ends_the_run_at_its_duration_with_the_rest_missed() {
    // 200 requests/s on one connection for 2 s, answered in 100 ms each: about
    // 20 can be sent on time. The run ends at 2 s, not when the 400th is answered (40 s).
    let (port, seen) = slow_server(u64::MAX, Duration::ZERO, Duration::from_millis(100));
    let started = std::time::Instant::now();
    let out = run(&options(port)).await.unwrap();
    let took = started.elapsed();
    let r = &out.report;
    assert!(took < Duration::from_millis(2600), "the run took {took:?}");
    assert_eq!(r.scheduled, 400);
    assert!((15..=25).contains(&r.requests), "{r:?}");
    assert_eq!(r.requests + r.missed, r.scheduled);
    assert_eq!(seen.load(Ordering::SeqCst), r.requests, "the server saw exactly the requests sent");
    assert_eq!(r.statuses.ok, r.requests);
    assert!(!r.interrupted);
    assert!(r.text().contains("not sent by the end of the duration"), "{}", r.text());
    let json: serde_json::Value = serde_json::to_value(r).unwrap();
    assert_eq!(json["missed"], r.missed);
}

#[test]
fn sigint_and_sigterm_stop_the_run_and_print_the_partial_report() {
    for (name, signal) in [("SIGINT", libc::SIGINT), ("SIGTERM", libc::SIGTERM)] {
        let (port, seen) = server(u64::MAX, Duration::ZERO);
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(["--rate", "2000", "--duration", "60", "--batch-size", "10", "--connections", "2"])
            .args(["--target", &format!("http://127.0.0.1:{port}"), "--key", "wk_test_0123456789abcdef", "--json", "--quiet"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let signalled = std::time::Instant::now();
        unsafe { libc::kill(child.id() as i32, signal) };
        let out = child.wait_with_output().unwrap();
        assert!(signalled.elapsed() < Duration::from_secs(4), "{name}: stopping took {:?}", signalled.elapsed());
        assert_eq!(out.status.code(), Some(128 + signal), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("loadgen: {name}: stopping")));
        let r: loadgen::report::Report =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{name}: no JSON report ({e}): {}", String::from_utf8_lossy(&out.stdout)));
        assert!(r.interrupted, "{name}");
        assert_eq!(r.scheduled, 12_000);
        // About 1.5 s of 200 requests/s were sent and answered; the rest is missed.
        assert!((200..=400).contains(&r.requests), "{name}: {r:?}");
        assert_eq!(r.requests + r.missed, r.scheduled);
        assert_eq!(r.statuses.ok, r.requests, "{name}: every request sent was answered");
        assert_eq!(seen.load(Ordering::SeqCst), r.requests);
        assert_eq!(r.events_accepted, r.requests * 10);
    }
}
