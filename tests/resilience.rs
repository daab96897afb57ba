//! Faults against a real Kafka node of the test's own: a slow or stopped broker turns into 503s
//! with bounded memory, and service resumes on its own; SIGTERM under load
//! loses no acknowledged batch.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const RETRYABLE: [&str; 3] = ["overloaded", "broker_unavailable", "broker_timeout"];

fn assert_retryable(status: u16, body: &Value, headers: &reqwest::header::HeaderMap) {
    assert_eq!(status, 503, "{body}");
    let code = body["error"]["code"].as_str().unwrap();
    assert!(RETRYABLE.contains(&code), "{body}");
    assert!(headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
}

/// POSTs until 200 (returns the batch id) or the timeout.
fn post_until_ok(c: &reqwest::blocking::Client, d: &Chronosd, kafka: &Kafka, timeout: Duration) -> Value {
    let until = Instant::now() + timeout;
    loop {
        let b = batch("recovery", 2);
        let (s, body, _) = post(c, d, &b, "198.51.100.1");
        if s == 200 {
            return b["batch"].clone();
        }
        assert!(
            Instant::now() < until,
            "no 200 within {timeout:?}; last: {s} {body}\n--- chronosd:\n{}\n--- broker:\n{}",
            d.log_text(),
            kafka.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn broker_outage_gives_503_with_bounded_memory_then_recovers() {
    let mut kafka = Kafka::start_behind_proxy(2);
    let extra = "[limits]\nper_ip_per_sec = 100000\nper_ip_burst = 100000\n";
    // Idempotence stays on (the default): requests lost while the proxy cuts
    // connections leave sequence gaps that Apache Kafka's producer state handles.
    let toml = config_toml(&kafka, chronos::stack::process::free_port(), extra)
        .replace("message_timeout_ms = 3000", "message_timeout_ms = 1500\nqueue_max_messages = 8")
        .replace("request_timeout_ms = 2000", "request_timeout_ms = 1000")
        .replace("produce_deadline_ms = 4000", "produce_deadline_ms = 2000");
    let d = Chronosd::start(&toml);
    d.wait_ready(Duration::from_secs(20));
    let c = client();
    let mut acked: Vec<Value> = Vec::new();
    acked.push(post_until_ok(&c, &d, &kafka, Duration::from_secs(10)));

    // A slow broker (traffic frozen: connections open, nothing answers) → 503, not a hang.
    let proxy = kafka.proxy.as_ref().unwrap();
    proxy.freeze();
    let started = Instant::now();
    let (s, body, h) = post(&c, &d, &batch("slow", 2), "198.51.100.2");
    assert_retryable(s, &body, &h);
    assert!(started.elapsed() < Duration::from_secs(5), "answered within the deadline");
    proxy.thaw();
    acked.push(post_until_ok(&c, &d, &kafka, Duration::from_secs(60)));

    // A stopped broker: many concurrent clients get 503s; memory stays bounded.
    let rss_before = d.rss_kib();
    kafka.kill_broker();
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let (statuses, url) = (statuses.clone(), d.url("/v1/batch"));
            std::thread::spawn(move || {
                let c = client();
                for i in 0..10 {
                    let mut b = batch(&format!("outage-{t}"), 40);
                    b["page"]["title"] = Value::String("x".repeat(2000));
                    let res = c
                        .post(&url)
                        .header("Content-Type", "text/plain")
                        .header("Origin", ORIGIN)
                        .header("X-Forwarded-For", format!("10.9.{t}.{i}"))
                        .body(b.to_string())
                        .send()
                        .unwrap();
                    let status = res.status().as_u16();
                    let headers = res.headers().clone();
                    let body: Value = res.json().unwrap();
                    statuses.lock().unwrap().push((status, body, headers));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let statuses = statuses.lock().unwrap();
    assert_eq!(statuses.len(), 160);
    for (s, body, h) in statuses.iter() {
        assert_retryable(*s, body, h);
    }
    let codes: HashSet<&str> = statuses.iter().map(|(_, b, _)| b["error"]["code"].as_str().unwrap()).collect();
    eprintln!("outage codes seen: {codes:?}");
    assert!(codes.contains("overloaded"), "16 clients against an 8-record queue saturate it: {codes:?}");
    let rss_after = d.rss_kib();
    assert!(rss_after < rss_before + 64 * 1024, "RSS grew from {rss_before} KiB to {rss_after} KiB during the outage");
    // Readiness reports the broker down (the reason on the admin listener's detailed /readyz).
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = chronos::probe::http_get(d.admin, "/readyz", Duration::from_secs(3)).unwrap();
        if code == 503 {
            assert!(body.contains("\"broker_up\":false"), "{body}");
            break;
        }
        assert!(Instant::now() < until, "readyz still 200 with the broker down: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The broker returns: service resumes on its own.
    kafka.restart_broker();
    acked.push(post_until_ok(&c, &d, &kafka, Duration::from_secs(90)));
    d.wait_ready(Duration::from_secs(30));
    for _ in 0..5 {
        let b = batch("after", 3);
        let (s, body, _) = post(&c, &d, &b, "198.51.100.3");
        assert_eq!(s, 200, "{body}");
        acked.push(b["batch"].clone());
    }

    // Every acknowledged batch is in Kafka.
    let records = kafka.read_all(&kafka.topic, acked.len(), Duration::from_secs(30));
    let ids: HashSet<&Value> = records.iter().map(|r| &r.value["batch_id"]).collect();
    for id in &acked {
        assert!(ids.contains(id), "acknowledged batch {id} missing from Kafka");
    }
}

#[test]
fn sigterm_under_load_loses_no_acknowledged_batch() {
    let kafka = Kafka::start(3);
    let extra = "[limits]\nper_ip_per_sec = 100000\nper_ip_burst = 100000\n";
    let mut d = Chronosd::start(&config_toml(&kafka, chronos::stack::process::free_port(), extra));
    d.wait_ready(Duration::from_secs(20));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let (acked, stop, url) = (acked.clone(), stop.clone(), d.url("/v1/batch"));
            std::thread::spawn(move || {
                let c = client();
                let mut refused = 0;
                while !stop.load(Ordering::Relaxed) && refused < 20 {
                    let b = batch(&format!("load-{t}"), 20);
                    let res = c.post(&url).header("Origin", ORIGIN).header("Content-Type", "text/plain").body(b.to_string()).send();
                    match res {
                        Ok(r) if r.status().as_u16() == 200 => acked.lock().unwrap().push(b["batch"].as_str().unwrap().to_string()),
                        Ok(r) => assert_eq!(r.status().as_u16(), 503, "only 503 while draining"),
                        Err(_) => {
                            refused += 1;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let before = acked.lock().unwrap().len();
    assert!(before > 20, "load was running ({before} batches acknowledged)");
    let t0 = Instant::now();
    let status = d.terminate();
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(status.success(), "clean exit: {status:?}\n{}", d.log_text());
    assert!(took < Duration::from_secs(15), "drained within the deadline ({took:?})");
    let log = d.log_text();
    assert!(log.contains("Producer flushed"), "{log}");

    let acked = acked.lock().unwrap();
    let records = kafka.read_all(&kafka.topic, acked.len(), Duration::from_secs(30));
    let ids: HashSet<&str> = records.iter().map(|r| r.value["batch_id"].as_str().unwrap()).collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !ids.contains(id.as_str())).collect();
    assert!(missing.is_empty(), "{} of {} acknowledged batches missing", missing.len(), acked.len());
    eprintln!("{} batches acknowledged, all in Kafka; drain took {took:?}", acked.len());
}
