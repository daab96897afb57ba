//! loadgen against the real stack (PostgreSQL, the broker, chronosd with its
//! loaders): a short open-loop run lands every accepted event exactly once,
//! the JSON report holds sane numbers, and `--verify` notices a lost and a
//! duplicated row.

mod common;

use std::time::Duration;

use chronos::rt::block_on;
use chronos::stack::postgres::PostgresServer;
use chronos::stack::process::free_port;
use common::*;
use serde_json::Value;

fn execute(url: &str, sql: &str) -> u64 {
    let (url, sql) = (url.to_string(), sql.to_string());
    block_on(async move { chronos::store::connect(&url).await.unwrap().execute(sql.as_str(), &[]).await.unwrap() })
}

#[test]
fn a_short_run_lands_every_accepted_event_exactly_once_and_verify_catches_loss_and_duplication() {
    let dir = temp_dir();
    let pg = PostgresServer::start_in(dir.path()).expect("start PostgreSQL");
    let kafka = Kafka::start(2);
    let url = pg.url();
    let port = free_port();
    let d = Chronosd::start(&config_toml_with_pg(&kafka, port, &url, "", ""));
    d.wait_ready(Duration::from_secs(30));

    // 4,000 events/s in 20-event batches (200 requests/s) for 3 s over 8 connections.
    let target = d.url("");
    let out = run_loadgen(&[
        "--rate",
        "4000",
        "--duration",
        "3",
        "--batch-size",
        "20",
        "--connections",
        "8",
        "--target",
        &target,
        "--key",
        KEY,
        "--origin",
        ORIGIN,
        "--verify",
        &url,
        "--verify-timeout",
        "90",
        "--quiet",
    ]);
    let r = &out.report;
    let text = serde_json::to_string(r).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["requests"], 600, "{text}");
    assert_eq!(json["statuses"]["ok"], 600, "{text}\n{}", d.log_text());
    assert_eq!(json["events_sent"], 12_000);
    assert_eq!(json["events_accepted"], 12_000);
    let l = &json["latency_ms"];
    let (p50, p99, max) = (l["p50"].as_f64().unwrap(), l["p99"].as_f64().unwrap(), l["max"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{l}");
    assert_eq!(l["count"], 600);
    let elapsed = json["elapsed_secs"].as_f64().unwrap();
    assert!((2.9..10.0).contains(&elapsed), "{elapsed}");
    let rate = json["accepted_rate"].as_f64().unwrap();
    assert!((1000.0..4200.0).contains(&rate), "{rate}");
    let v = &json["verify"];
    assert_eq!(v["expected"], 12_000, "{text}");
    assert_eq!(v["missing"], 0, "{text}\n{}", d.log_text());
    assert_eq!(v["duplicated"], 0, "{text}");
    assert_eq!(r.exit_code(), 0);

    // Lose one row and duplicate another: verify must say so.
    let lost =
        execute(&url, "DELETE FROM events.mouse_moves WHERE (batch_id, position) IN (SELECT batch_id, position FROM events.mouse_moves LIMIT 1)");
    assert_eq!(lost, 1);
    let doubled = execute(
        &url,
        "INSERT INTO events.clicks SELECT * FROM events.clicks WHERE (batch_id, position) IN (SELECT batch_id, position FROM events.clicks LIMIT 1)",
    );
    assert_eq!(doubled, 1);
    let types = loadgen::payload::Mix::parse(loadgen::payload::DEFAULT_MIX).unwrap().types();
    let v = block_on(loadgen::verify::verify(&url, &types, &out.batches, Duration::from_secs(2), Duration::ZERO)).unwrap();
    assert_eq!((v.missing, v.duplicated, v.expected), (1, 1, 12_000), "{v:?}");
    let mut tampered = out.report.clone();
    tampered.verify = Some(v);
    assert_eq!(tampered.exit_code(), 1);
    drop(d);
}
