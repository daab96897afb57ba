//! Receipt benchmarks (one core, no broker):
//! - `read_batch/50_events`: decompress-free parse + key/origin + validate + encode of
//!   a 50-event batch, the work each `Receipt` actor does per request;
//! - `http/post_batch_discard`: the whole HTTP handler (actix-web service call, actors,
//!   response) with the discard sink, so the broker is out of the measurement; one
//!   request at a time (latency), then 64 in flight (throughput).
//!
//! Method and results: perf/receipt.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::test;
use chronos::config::Config;
use chronos::http::body::Encoding;
use chronos::http::receipt::{read_batch, ReceiptShared, Receive};
use chronos::produce::{ProducerHealth, Sink};
use chronos::telemetry::Metrics;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::json;

const KEY: &str = "wk_bench_0123456789abcdef";
const ORIGIN: &str = "https://shop.example.com";

fn config() -> Config {
    Config::from_toml(&format!(
        r#"
[http]
workers = 1
receipt_threads = 1
[limits]
per_ip_per_sec = 1000000000
per_ip_burst = 1000000000
per_key_per_sec = 1000000000
per_key_burst = 1000000000
[[keys]]
id = "bench"
key = "{KEY}"
origins = ["shop.example.com"]
"#
    ))
    .unwrap()
}

/// A realistic 50-event batch, mixed as the tracker sends them (mouse moves dominate).
pub fn batch_50() -> Vec<u8> {
    let t = 1_764_000_000_000i64;
    let events: Vec<_> = (0..50)
        .map(|i| {
            let t = t + i * 37;
            match i % 10 {
                0 => json!(["clicks", t, "BUTTON", 1, 310 + i, 420, "main>div.card>button.buy"]),
                1 => json!(["link_clicks", t, "Read the docs", "https://shop.example.com/docs/start"]),
                2 => json!(["key_presses", t, null, "INPUT"]),
                3 => json!(["pageviews", t, "push", "https://shop.example.com/"]),
                _ => json!(["mouse_moves", t, 100 + i * 3, 200 + i * 2]),
            }
        })
        .collect();
    json!({
        "v": 1, "key": KEY, "batch": "0b6f5e2c-3f0e-4bb1-9a57-8f6c2a0c1d2e", "sent_at": t + 5000,
        "session": "6f1c7d1e-98a4-4f7e-a1c2-3b9e2d7f4a10",
        "page": {"url": "https://shop.example.com/cart?step=2", "title": "Your cart – Shop", "user_agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/148.0 Safari/537.36", "language": "en-GB", "cookies_enabled": true},
        "events": events,
    })
    .to_string()
    .into_bytes()
}

fn shared(c: &Config) -> ReceiptShared {
    ReceiptShared::from_config(c, Arc::new(Metrics::new()))
}

fn bench_read_batch(cr: &mut Criterion) {
    let c = config();
    let shared = shared(&c);
    let body = batch_50();
    let mut g = cr.benchmark_group("read_batch");
    g.throughput(Throughput::Elements(50));
    g.bench_function(BenchmarkId::new("50_events", body.len()), |b| {
        b.iter(|| {
            let msg = Receive {
                body: body.clone(),
                encoding: Encoding::Identity,
                origin: Some(ORIGIN.to_string()),
                client_ip: "203.0.113.0".parse().unwrap(),
                user_agent: None,
                received_at: 1_764_000_006_000,
            };
            let a = read_batch(&shared, msg).unwrap();
            assert_eq!(a.summary.accepted, 50);
            a
        })
    });
    // The depth pre-scan alone (part of read_batch above): its share of the receipt's work.
    g.bench_function(BenchmarkId::new("depth_check_50_events", body.len()), |b| {
        b.iter(|| chronos::payload::depth::check(std::hint::black_box(&body), chronos::payload::depth::BATCH_DEPTH).unwrap())
    });
    g.finish();
}

/// A batch POSTed as sendBeacon sends it.
fn beacon(body: &[u8]) -> actix_http::Request {
    test::TestRequest::post()
        .uri("/v1/batch")
        .insert_header(("Content-Type", "text/plain"))
        .insert_header(("Origin", ORIGIN))
        .set_payload(body.to_vec())
        .to_request()
}

fn bench_http(cr: &mut Criterion) {
    let c = config();
    let body = batch_50();
    let sys = actix_rt::System::new();
    let app = sys.block_on(async {
        let (state, _arbiter) = chronos::build_state(&c, Sink::Discard, Arc::new(Metrics::new()), Arc::new(ProducerHealth::default()));
        // The public listener's app, its per-IP limit included.
        test::init_service(chronos::http::public_app(state)).await
    });
    let mut g = cr.benchmark_group("http");
    g.throughput(Throughput::Elements(50));
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("post_batch_discard", |b| {
        b.iter_custom(|iters| {
            sys.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let res = test::call_service(&app, beacon(&body)).await;
                    assert_eq!(res.status().as_u16(), 200);
                }
                start.elapsed()
            })
        })
    });
    // Throughput with requests in flight together, as under real load: the
    // actor hops overlap instead of adding up.
    const IN_FLIGHT: u64 = 64;
    g.throughput(Throughput::Elements(50 * IN_FLIGHT));
    g.bench_function("post_batch_discard_64_in_flight", |b| {
        b.iter_custom(|iters| {
            sys.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let calls = (0..IN_FLIGHT).map(|_| test::call_service(&app, beacon(&body)));
                    for res in futures_util::future::join_all(calls).await {
                        assert_eq!(res.status().as_u16(), 200);
                    }
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench_read_batch, bench_http);
criterion_main!(benches);
