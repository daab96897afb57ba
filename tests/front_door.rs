//! The front door against the real broker: batches posted over HTTP are read
//! back from Kafka exactly as docs/kafka-record.md says; every refusal has its
//! status and body and stores nothing.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[test]
fn accepted_batches_are_in_kafka_as_documented() {
    let kafka = Kafka::start(3);
    let d = Chronosd::start(&config_toml(&kafka, chronos::stack::process::free_port(), ""));
    d.wait_ready(Duration::from_secs(20));
    let c = client();

    let mut sent = Vec::new();
    for i in 0..30 {
        let b = batch(&format!("session-{}", i % 7), 1 + i % 12);
        let (status, body, headers) = post(&c, &d, &b, "198.51.100.23");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["ok"], true);
        assert_eq!(body["batch_id"], b["batch"]);
        assert_eq!(body["accepted"], b["events"].as_array().unwrap().len());
        assert_eq!(body["rejected"], 0);
        assert_eq!(headers["access-control-allow-origin"], ORIGIN);
        sent.push(b);
    }
    // A batch with one invalid event among valid ones: the valid ones pass.
    let mut mixed = batch("session-mixed", 3);
    mixed["events"][1] = json!(["mouse_moves", now_ms(), "left", 4]);
    let (status, body, _) = post(&c, &d, &mixed, "198.51.100.23");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["rejected"], 1);
    assert_eq!(body["reasons"][0], "events[1][2] `x`: expected an integer");

    let records = kafka.read_all(&kafka.topic, 31, Duration::from_secs(30));
    assert_eq!(records.len(), 31, "one record per accepted batch");
    assert_eq!(kafka.count(&kafka.topic), 31);
    for b in &sent {
        let r = records.iter().find(|r| r.value["batch_id"] == b["batch"]).expect("batch in Kafka");
        let v = &r.value;
        assert_eq!(r.key.as_deref(), b["session"].as_str(), "key = session id");
        assert_eq!(r.headers["chronos-format"], "batch.v1");
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["chronos-key-id"], "shop");
        assert_eq!(r.headers["chronos-received-at"], v["received_at"].to_string());
        assert_eq!(v["v"], 1);
        assert_eq!(v["session_id"], b["session"]);
        assert_eq!(v["key_id"], "shop");
        assert_eq!(v["sent_at"], b["sent_at"]);
        assert_eq!(v["client_ip"], "198.51.100.0", "anonymised client IP");
        assert_eq!(v["page"], b["page"]);
        assert_eq!(v["events"], b["events"], "events intact, in order");
        let received = v["received_at"].as_i64().unwrap();
        assert!((received - now_ms()).abs() < 120_000);
        for e in v["events"].as_array().unwrap() {
            assert!(v["schema"][e[0].as_str().unwrap()].is_array(), "schema names each type present");
        }
    }
    assert_eq!(records.iter().find(|r| r.value["batch_id"] == "x").map(|_| ()), None);
    // Same session → same partition (ordered per session).
    let parts: std::collections::HashSet<i32> = records.iter().filter(|r| r.key.as_deref() == Some("session-3")).map(|r| r.partition).collect();
    assert_eq!(parts.len(), 1);

    let m = records.iter().find(|r| r.value["batch_id"] == mixed["batch"]).unwrap();
    assert_eq!(m.value["events"].as_array().unwrap().len(), 2);
    let dead = kafka.read_all(&kafka.dead_letter_topic, 1, Duration::from_secs(20));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].headers["chronos-format"], "dead_letter.v1");
    assert_eq!(dead[0].value["batch_id"], mixed["batch"]);
    assert_eq!(dead[0].value["rejected"][0]["position"], 1);
    assert_eq!(dead[0].value["rejected"][0]["event"][2], "left");
    assert_eq!(dead[0].value["rejected"][0]["reason"], "events[1][2] `x`: expected an integer");

    // Metrics saw it all.
    let metrics = c.get(d.admin_url("/metrics")).send().unwrap().text().unwrap();
    let accepted_events: usize = sent.iter().map(|b| b["events"].as_array().unwrap().len()).sum::<usize>() + 2;
    assert!(metrics.contains(&format!("chronos_events_accepted_total {accepted_events}")), "{metrics}");
    assert!(metrics.contains("chronos_events_rejected_total 1"));
    assert!(metrics.contains("chronos_http_requests_total{code=\"accepted\",status=\"200\"} 31"));
    assert!(metrics.contains("chronos_produce_latency_seconds_bucket"));
    assert!(metrics.contains("chronos_kafka_broker_up"));
    assert!(metrics.contains("chronos_producer_queue_messages"));
}

fn error_of(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["ok"], false, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A batch whose JSON text is exactly `len` bytes (padding in page.title).
fn batch_of_len(len: usize) -> Vec<u8> {
    let mut b = batch("pad", 1);
    b["page"]["title"] = json!("");
    let base = b.to_string().len();
    b["page"]["title"] = json!("t".repeat(len - base));
    let text = b.to_string().into_bytes();
    assert_eq!(text.len(), len);
    text
}

#[test]
fn every_refusal_has_its_status_and_body_and_stores_nothing() {
    let kafka = Kafka::start(1);
    // The tracker must fit the smaller batch cap too (config validation).
    let extra = r#"
[limits]
max_string_bytes = 20000
[tracker]
max_events = 10
"#;
    let toml = config_toml(&kafka, chronos::stack::process::free_port(), extra)
        .replace("[http]\n", "[http]\nmax_body_bytes = 4000\nmax_decompressed_bytes = 8000\nmax_events_per_batch = 10\n");
    let d = Chronosd::start(&toml);
    d.wait_ready(Duration::from_secs(20));
    let c = client();
    let beacon = |ip: &'static str| vec![("Content-Type", "text/plain"), ("Origin", ORIGIN), ("X-Forwarded-For", ip)];

    // 401: unknown key.
    let mut b = batch("s", 2);
    b["key"] = json!("wk_not_a_key_000000000");
    let (s, body, _) = post(&c, &d, &b, "192.0.2.1");
    error_of(s, &body, 401, "unknown_key");

    // 403: origin not in the key's allowlist; wildcard subdomains pass.
    let b = batch("s", 2);
    let (s, body, h) = post_raw(&c, &d, b.to_string().into(), &[("Origin", "https://evil.test"), ("X-Forwarded-For", "192.0.2.2")]);
    error_of(s, &body, 403, "origin_not_allowed");
    assert!(h.get("access-control-allow-origin").is_none(), "no CORS grant for a foreign origin");
    let (s, body, _) =
        post_raw(&c, &d, batch("s", 1).to_string().into(), &[("Origin", "https://a.blog.example.com"), ("X-Forwarded-For", "192.0.2.2")]);
    assert_eq!(s, 200, "{body}");
    // 403: no Origin header with a browser key; the server-side key allows it.
    let (s, body, _) = post_raw(&c, &d, batch("s", 2).to_string().into(), &[("X-Forwarded-For", "192.0.2.3")]);
    error_of(s, &body, 403, "missing_origin");
    let mut b = batch("s", 1);
    b["key"] = json!("wk_backend_0123456789abcdef");
    let (s, body, _) = post_raw(&c, &d, b.to_string().into(), &[("X-Forwarded-For", "192.0.2.3")]);
    assert_eq!(s, 200, "{body}");

    // 413: body at the limit passes, one byte over does not (and names the limit).
    let (s, body, _) = post_raw(&c, &d, batch_of_len(4000), &beacon("192.0.2.4"));
    assert_eq!(s, 200, "{body}");
    let (s, body, _) = post_raw(&c, &d, batch_of_len(4001), &beacon("192.0.2.4"));
    error_of(s, &body, 413, "body_too_large");
    assert_eq!(body["error"]["limit"], 4000);
    // Same without Content-Length (chunked): cut while reading.
    let chunked = reqwest::blocking::Body::new(std::io::Cursor::new(batch_of_len(4001)));
    let res = c.post(d.url("/v1/batch")).header("Origin", ORIGIN).header("X-Forwarded-For", "192.0.2.4").body(chunked).send().unwrap();
    assert_eq!(res.status().as_u16(), 413);

    // 413: decompressed cap, exact and one over; a gzip bomb.
    let gz = |text: Vec<u8>| {
        let mut h = beacon("192.0.2.5");
        h.push(("Content-Encoding", "gzip"));
        post_raw(&c, &d, gzip(&text), &h)
    };
    let (s, body, _) = gz(batch_of_len(8000));
    assert_eq!(s, 200, "{body}");
    let (s, body, _) = gz(batch_of_len(8001));
    error_of(s, &body, 413, "decompressed_too_large");
    assert_eq!(body["error"]["limit"], 8000);
    let (s, body, _) = gz(vec![b' '; 2_000_000]);
    error_of(s, &body, 413, "decompressed_too_large");
    let (s, body, _) = post_raw(&c, &d, b"not gzip".to_vec(), &[("Content-Encoding", "gzip"), ("Origin", ORIGIN), ("X-Forwarded-For", "192.0.2.5")]);
    error_of(s, &body, 400, "bad_gzip");
    let (s, body, _) = post_raw(&c, &d, b"{}".to_vec(), &[("Content-Encoding", "br"), ("Origin", ORIGIN), ("X-Forwarded-For", "192.0.2.5")]);
    error_of(s, &body, 415, "unsupported_encoding");
    let (s, body, _) =
        post_raw(&c, &d, b"{}".to_vec(), &[("Content-Type", "multipart/form-data"), ("Origin", ORIGIN), ("X-Forwarded-For", "192.0.2.5")]);
    error_of(s, &body, 415, "unsupported_media_type");

    // 400: malformed JSON names the byte offset; envelope errors name the field.
    let (s, body, _) = post_raw(&c, &d, br#"{"v":1,"key":"#.to_vec(), &beacon("192.0.2.6"));
    error_of(s, &body, 400, "malformed_json");
    assert!(body["error"]["offset"].as_u64().is_some(), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("at byte"), "{body}");
    let mut b = batch("s", 2);
    b["batch"] = json!("not-a-uuid");
    let (s, body, _) = post(&c, &d, &b, "192.0.2.6");
    error_of(s, &body, 400, "invalid_batch");
    assert_eq!(body["error"]["path"], "batch");
    let (s, body, _) = post(&c, &d, &batch("s", 11), "192.0.2.6");
    error_of(s, &body, 400, "invalid_batch");
    assert_eq!(body["error"]["path"], "events");
    assert!(body["error"]["message"].as_str().unwrap().contains("limit of 10"), "{body}");

    // Everything invalid: 200 with nothing accepted, every event dead-lettered.
    let mut b = batch("s", 2);
    b["events"] = json!([["nope", now_ms()], ["clicks", 5]]);
    let (s, body, _) = post(&c, &d, &b, "192.0.2.7");
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["accepted"], 0);
    assert_eq!(body["rejected"], 2);

    // 429 per client IP, with Retry-After; another IP is unaffected.
    let mut limited = None;
    for _ in 0..400 {
        let (s, body, h) = post_raw(&c, &d, b"{".to_vec(), &beacon("203.0.113.9"));
        if s == 429 {
            limited = Some((body, h));
            break;
        }
        assert_eq!(s, 400);
    }
    let (body, h) = limited.expect("per-IP limit reached");
    error_of(429, &body, 429, "rate_limited");
    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    let (s, _, _) = post(&c, &d, &batch("s", 1), "203.0.113.10");
    assert_eq!(s, 200);

    // CORS preflight: allowed origins only.
    let res = c
        .request(reqwest::Method::OPTIONS, d.url("/v1/batch"))
        .header("Origin", ORIGIN)
        .header("Access-Control-Request-Method", "POST")
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    assert_eq!(res.headers()["access-control-allow-origin"], ORIGIN);
    assert!(res.headers()["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    let res = c.request(reqwest::Method::OPTIONS, d.url("/v1/batch")).header("Origin", "https://evil.test").send().unwrap();
    assert_eq!(res.status().as_u16(), 403);

    // Only the accepted batches reached Kafka: wildcard-origin 1, backend 1, at-limit 1, gzip-at-cap 1, other IP 1.
    let records = kafka.read_all(&kafka.topic, 5, Duration::from_secs(20));
    assert_eq!(records.len(), 5, "{:?}", records.iter().map(|r| &r.value["session_id"]).collect::<Vec<_>>());
    assert_eq!(kafka.count(&kafka.topic), 5);
    let dead = kafka.read_all(&kafka.dead_letter_topic, 1, Duration::from_secs(10));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value["rejected"].as_array().unwrap().len(), 2);
}

#[test]
fn per_key_rate_limit_gives_429() {
    let kafka = Kafka::start(1);
    let extra = "[limits]\nper_key_per_sec = 1\nper_key_burst = 3\n";
    let d = Chronosd::start(&config_toml(&kafka, chronos::stack::process::free_port(), extra));
    d.wait_ready(Duration::from_secs(20));
    let c = client();
    let statuses: Vec<u16> = (0..5).map(|i| post(&c, &d, &batch("s", 1), &format!("192.0.2.{}", 10 + i)).0).collect();
    assert_eq!(&statuses[..3], &[200, 200, 200]);
    assert_eq!(statuses[3], 429);
    let (s, body, h) = post(&c, &d, &batch("s", 1), "192.0.2.99");
    error_of(s, &body, 429, "rate_limited");
    assert!(body["error"]["message"].as_str().unwrap().contains("write key"));
    assert!(h.contains_key("retry-after"));
    assert_eq!(kafka.count(&kafka.topic), 3);
}

#[test]
fn healthz_readyz_and_check_config() {
    let kafka = Kafka::start(1);
    let toml = config_toml(&kafka, chronos::stack::process::free_port(), "");
    let d = Chronosd::start(&toml);
    d.wait_ready(Duration::from_secs(20));
    let c = client();
    let h: Value = c.get(d.url("/healthz")).send().unwrap().json().unwrap();
    assert_eq!(h["ok"], true);
    // The public /readyz says only that; the admin listener says why.
    let r: Value = c.get(d.url("/readyz")).send().unwrap().json().unwrap();
    assert_eq!(r, serde_json::json!({ "ready": true }));
    let r: Value = c.get(d.admin_url("/readyz")).send().unwrap().json().unwrap();
    assert_eq!(r["ready"], true);
    assert_eq!(r["broker_up"], true);
    assert_eq!(c.get(d.url("/metrics")).send().unwrap().status(), 404, "/metrics is not public");

    let dir = temp_dir();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chronosd")).arg("--check-config").arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, toml.replace("partitions = 1", "partitions = 0").replace("[http]", "[http]\nlisten_on = 1")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chronosd")).arg("--check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen_on"), "{err}");
    std::fs::write(&bad, toml.replace("partitions = 1", "partitions = 0")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chronosd")).arg("--check-config").arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kafka.partitions: must be greater than 0"), "{err}");
    // The example config shipped with the project is valid.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/chronos.example.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chronosd")).arg("--check-config").arg(example).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
