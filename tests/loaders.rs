//! Loaders against real PostgreSQL and the real broker: events posted over
//! HTTP land exactly once with every value intact, across retries and crashes.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chronos::rt::block_on;
use chronos::stack::postgres::PostgresServer;
use chronos::stack::process::free_port;
use common::*;
use serde_json::{json, Value};

struct Pg {
    server: PostgresServer,
    _dir: tempfile::TempDir,
}

fn postgres(layout: Layout) -> Pg {
    let dir = temp_dir();
    let server = layout.postgres(dir.path());
    Pg { server, _dir: dir }
}

/// PostgreSQL, a broker with `partitions`, and chronosd (loaders on) ready on
/// a free port, its event tables in `layout`.
fn loading(layout: Layout, partitions: i32, load: &str, extra: &str) -> (Pg, Kafka, String, u16, Chronosd) {
    let pg = postgres(layout);
    let kafka = Kafka::start(partitions);
    let url = pg.server.url();
    let port = free_port();
    let d = Chronosd::start(&config_toml_with_pg(&kafka, port, &url, &layout.load(load), extra));
    d.wait_ready(Duration::from_secs(30));
    layout.assert_tables(&url);
    (pg, kafka, url, port, d)
}

const TABLES: [&str; 6] = BUILT_IN_TABLES;

fn distinct_sql() -> String {
    let union = TABLES.iter().map(|t| format!("SELECT batch_id, position FROM events.{t}")).collect::<Vec<_>>().join(" UNION ALL ");
    format!("SELECT count(DISTINCT (batch_id, position)) FROM ({union}) u")
}

fn events_of(b: &Value) -> i64 {
    b["events"].as_array().unwrap().len() as i64
}

fn events_land_exactly_once_with_every_value_intact(layout: Layout) {
    let (_pg, kafka, url, _port, d) = loading(layout, 3, "", "");
    let c = client();

    let mut expected = 0;
    let mut sent = Vec::new();
    for i in 0..40 {
        let b = batch(&format!("sess-{}", i % 9), 1 + (i * 7) % 30);
        let (s, body, _) = post(&c, &d, &b, "198.51.100.77");
        assert_eq!(s, 200, "{body}");
        expected += events_of(&b);
        sent.push(b);
    }
    // A retry of the same batch (same batch id) is stored once.
    let (s, _, _) = post(&c, &d, &sent[3], "198.51.100.77");
    assert_eq!(s, 200);
    wait_for_events(&url, &TABLES, expected, Duration::from_secs(60), &d);
    assert_eq!(count(&url, &distinct_sql()), expected, "no (batch, position) twice");
    assert_eq!(count(&url, "SELECT count(*) FROM chronos.seen_batches"), 40);
    // Each batch's page is stored once, not in its rows.
    assert_eq!(count(&url, "SELECT count(*) FROM chronos.batches"), 40);
    assert_eq!(count(&url, "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'events_raw' AND column_name = 'metadata'"), 0);
    let pages =
        query(&url, &format!("SELECT metadata::text, session_id FROM chronos.batches WHERE batch_id = '{}'", sent[7]["batch"].as_str().unwrap()));
    assert_eq!(serde_json::from_str::<Value>(&pages[0].get::<_, String>(0)).unwrap(), sent[7]["page"]);
    assert_eq!(pages[0].get::<_, String>(1), sent[7]["session"].as_str().unwrap());

    // Every attribute and metadata field, for every type, against what was sent.
    let b = &sent[5];
    let id = b["batch"].as_str().unwrap();
    let sent_events = b["events"].as_array().unwrap();
    let rows = query(
        &url,
        &format!(
            "SELECT position, session_id, key_id, client_ip, metadata::text, time_flagged,
                    (extract(epoch FROM client_time) * 1000)::bigint, (extract(epoch FROM time) * 1000)::bigint,
                    (extract(epoch FROM received_at) * 1000)::bigint
             FROM events.clicks WHERE batch_id = '{id}' ORDER BY position"
        ),
    );
    assert!(!rows.is_empty());
    for r in &rows {
        assert_eq!(r.get::<_, String>(1), b["session"].as_str().unwrap());
        assert_eq!(r.get::<_, String>(2), "shop");
        assert_eq!(r.get::<_, Option<String>>(3).as_deref(), Some("198.51.100.0"));
        let meta: Value = serde_json::from_str(&r.get::<_, String>(4)).unwrap();
        assert_eq!(meta, b["page"]);
        assert!(!r.get::<_, bool>(5));
        let pos = r.get::<_, i32>(0) as usize;
        let client_time: i64 = r.get(6);
        assert_eq!(client_time, sent_events[pos][1].as_i64().unwrap());
        // time = client_time + (received_at - sent_at)
        let (time, received): (i64, i64) = (r.get(7), r.get(8));
        assert_eq!(time, client_time + (received - b["sent_at"].as_i64().unwrap()));
    }
    let check = |sql: &str, want: Value| {
        let r = query(&url, &format!("SELECT to_jsonb(row__)::text FROM ({sql}) row__ LIMIT 1"));
        let got: Value = serde_json::from_str(&r[0].get::<_, String>(0)).unwrap();
        assert_eq!(got, want, "{sql}");
    };
    let one = |t: &str| format!("FROM events.{t} WHERE batch_id = '{id}' ORDER BY position");
    check(
        &format!("SELECT element, buttons, x, y, selector {}", one("clicks")),
        json!({"element": "BUTTON", "buttons": 1, "x": 1, "y": 2, "selector": "main>button.buy"}),
    );
    check(
        &format!("SELECT link_text, target_url {}", one("link_clicks")),
        json!({"link_text": "Docs \"quoted\" é", "target_url": "https://shop.example.com/docs"}),
    );
    check(&format!("SELECT navigation, referrer {}", one("pageviews")), json!({"navigation": "load", "referrer": "https://ref.example.org/"}));
    check(&format!("SELECT x, y {}", one("mouse_moves")), json!({"x": 3, "y": 300}));
    check(&format!("SELECT key, element {}", one("key_presses")), json!({"key": null, "element": "INPUT"}));
    check(
        &format!("SELECT form_id, action, fields {}", one("form_submissions")),
        json!({"form_id": "signup", "action": "/join", "fields": ["email", "plan"]}),
    );

    // Lag per partition is exported (and reaches 0 once everything is committed).
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = c.get(d.admin_url("/metrics")).send().unwrap().text().unwrap();
        let lags: Vec<&str> = metrics.lines().filter(|l| l.starts_with("chronos_load_consumer_lag_records{") && l.contains(&kafka.topic)).collect();
        if lags.len() == 3 && lags.iter().all(|l| l.ends_with(" 0")) {
            break;
        }
        assert!(Instant::now() < until, "lag metrics: {lags:?}");
        std::thread::sleep(Duration::from_millis(300));
    }

    // What the loaders waited on is exported: here their queues, empty
    // between the test's posts (a buffer due by time waits for no commit).
    // How long depends on the machine's load (0.76 s in one full-suite run,
    // several seconds alone): that it counts is what is checked.
    let waited = d.metric(&format!("chronos_load_wait_seconds_total{{on=\"records\",topic=\"{}\"}}", kafka.topic));
    assert!(waited.is_some_and(|s| s > 0.0), "{waited:?}");

    // Offsets live in PostgreSQL, per partition.
    let stored = count(&url, "SELECT coalesce(sum(next_offset), 0)::bigint FROM chronos.offsets WHERE topic NOT LIKE 'dead%'");
    assert_eq!(stored, 41, "every record of the events topic is accounted for");
}

fn kill_9_mid_load_then_restart_gives_exact_counts(layout: Layout) {
    let pg = postgres(layout);
    let kafka = Kafka::start(3);
    let url = pg.server.url();
    let toml = config_toml_with_pg(
        &kafka,
        free_port(),
        &url,
        &layout.load("flush_rows = 200"),
        "[limits]\nper_ip_per_sec = 100000\nper_ip_burst = 100000\n",
    );
    let mut d = Chronosd::start(&toml);
    d.wait_ready(Duration::from_secs(30));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let (acked, stop, url) = (acked.clone(), stop.clone(), d.url("/v1/batch"));
            std::thread::spawn(move || {
                let c = client();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let b = batch(&format!("k-{t}-{}", i % 5), 25);
                    i += 1;
                    if let Ok(r) = c.post(&url).header("Origin", ORIGIN).header("Content-Type", "text/plain").body(b.to_string()).send() {
                        if r.status().as_u16() == 200 {
                            acked.lock().unwrap().push(b["batch"].as_str().unwrap().to_string());
                        }
                    }
                }
            })
        })
        .collect();
    // Let loading be under way, then crash chronosd without any chance to flush.
    let until = Instant::now() + Duration::from_secs(30);
    while count(&url, &total_sql(&TABLES)) < 500 {
        assert!(Instant::now() < until, "loading never started\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    d.kill9();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let before = count(&url, &total_sql(&TABLES));
    // What must be loaded is what Kafka holds: every acknowledged batch, plus any
    // batch the broker stored just before the crash cut its HTTP answer.
    let records = kafka.read_all(&kafka.topic, acked.len(), Duration::from_secs(30));
    let mut in_kafka: HashMap<String, i64> = HashMap::new();
    for r in &records {
        in_kafka.insert(r.value["batch_id"].as_str().unwrap().to_string(), r.value["events"].as_array().unwrap().len() as i64);
    }
    assert!(acked.iter().all(|id| in_kafka.contains_key(id)), "acknowledged batch missing from Kafka");
    let expected: i64 = in_kafka.values().sum();

    // Restarted at once: Kafka's group coordinator expires the crashed member
    // (session.timeout.ms, 6 s here) and hands the restarted one every partition.
    let d2 = Chronosd::start(&toml);
    wait_for_events(&url, &TABLES, expected, Duration::from_secs(90), &d2);
    assert_eq!(count(&url, &distinct_sql()), expected, "no duplicates after the crash");
    let loaded_batches = count(&url, "SELECT count(DISTINCT batch_id) FROM events.mouse_moves");
    assert_eq!(loaded_batches as usize, in_kafka.len());
    eprintln!(
        "{} batches acknowledged ({} in Kafka, {expected} events); {before} events loaded at the crash; all loaded once after restart",
        acked.len(),
        in_kafka.len()
    );
}

fn implausible_event_times_are_stored_clamped_and_flagged(layout: Layout) {
    let (_pg, _kafka, url, _port, d) = loading(layout, 1, "max_past_secs = 3600\nmax_future_secs = 60\npartitions_past_days = 1", "");
    let c = client();
    let now = now_ms();
    let mut b = batch("clock", 1);
    b["events"] = json!([
        ["mouse_moves", now + 400 * 86_400_000i64, 1, 1],
        ["mouse_moves", now - 300 * 86_400_000i64, 2, 2],
        ["mouse_moves", now - 1000, 3, 3],
    ]);
    b["sent_at"] = json!(now);
    let (s, body, _) = post(&c, &d, &b, "198.51.100.5");
    assert_eq!(s, 200, "{body}");
    wait_for_events(&url, &TABLES, 3, Duration::from_secs(60), &d);
    let rows = query(&url, "SELECT x, time_flagged, (extract(epoch FROM time - received_at))::bigint FROM events.mouse_moves ORDER BY x");
    let got: Vec<(i64, bool, i64)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(got[0].0, 1);
    assert!(got[0].1, "far future flagged");
    assert_eq!(got[0].2, 60, "clamped to received_at + max_future");
    assert!(got[1].1, "far past flagged");
    assert_eq!(got[1].2, -3600, "clamped to received_at - max_past");
    assert!(!got[2].1, "plausible time not flagged");

    // sql/schema.sql applies as is to an empty database (twice: idempotent).
    query(&url, "CREATE DATABASE plain_sql");
    let plain = format!("{}/plain_sql", url.rsplit_once('/').unwrap().0);
    let sql = include_str!("../sql/schema.sql");
    block_on(async move {
        let client = chronos::store::connect(&plain).await.unwrap();
        client.batch_execute(sql).await.unwrap();
        client.batch_execute(sql).await.unwrap();
        let n: i64 = client.query_one("SELECT count(*) FROM pg_tables WHERE schemaname = 'events_raw'", &[]).await.unwrap().get(0);
        assert_eq!(n, 12, "six raw event tables, each with its default partition");
        let n: i64 = client.query_one("SELECT count(*) FROM pg_views WHERE schemaname = 'events'", &[]).await.unwrap().get(0);
        assert_eq!(n, 6, "six presented tables");
    });
}

fn invalid_events_become_dead_letters_with_their_reason(layout: Layout) {
    let (_pg, _kafka, url, _port, d) = loading(layout, 1, "", "");
    let c = client();
    let mut b = batch("dl", 3);
    b["events"][1] = json!(["mouse_moves", now_ms(), "left", 4]);
    // Posted twice (a tracker retry): stored once, dead-lettered once.
    for _ in 0..2 {
        let (s, body, _) = post(&c, &d, &b, "198.51.100.6");
        assert_eq!(s, 200, "{body}");
    }
    wait_for_events(&url, &TABLES, 2, Duration::from_secs(60), &d);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = query(&url, "SELECT stage, reason, batch_id::text, position, event::text FROM chronos.dead_letters");
        if let Some(r) = rows.first() {
            assert_eq!(r.get::<_, String>(0), "receipt");
            assert_eq!(r.get::<_, String>(1), "events[1][2] `x`: expected an integer");
            assert_eq!(r.get::<_, String>(2), b["batch"].as_str().unwrap());
            assert_eq!(r.get::<_, i32>(3), 1);
            let ev: Value = serde_json::from_str(&r.get::<_, String>(4)).unwrap();
            assert_eq!(ev, b["events"][1]);
            std::thread::sleep(Duration::from_secs(2));
            assert_eq!(count(&url, "SELECT count(*) FROM chronos.dead_letters"), 1, "the retry's dead letter is not stored twice");
            break;
        }
        assert!(Instant::now() < until, "no dead letter stored\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn schema_evolves_online_when_the_catalog_grows(layout: Layout) {
    let (_pg, kafka, url, port, mut d) = loading(layout, 1, "", "");
    let c = client();
    let (s, _, _) = post(&c, &d, &batch("old", 6), "198.51.100.8");
    assert_eq!(s, 200);
    wait_for_events(&url, &TABLES, 6, Duration::from_secs(60), &d);
    assert_eq!(d.terminate().code(), Some(0));

    // The catalog grows: a new attribute on mouse_moves and a new event type.
    let events = r#"
[events.mouse_moves]
attributes = [
  { name = "x", type = "int", min = -1000000.0, max = 10000000.0 },
  { name = "y", type = "int", min = -1000000.0, max = 10000000.0 },
  { name = "pressure", type = "float", nullable = true },
]
[events.signups]
attributes = [{ name = "plan", type = "text", max_len = 32 }, { name = "seats", type = "int", nullable = true }]
"#;
    let d = Chronosd::start(&config_toml_with_pg(&kafka, port, &url, &layout.load(""), events));
    d.wait_ready(Duration::from_secs(30));
    let mut b = batch("new", 1);
    b["events"] = json!([["mouse_moves", now_ms(), 5, 6, 0.5], ["signups", now_ms(), "pro", 3]]);
    let (s, body, _) = post(&c, &d, &b, "198.51.100.8");
    assert_eq!(s, 200, "{body}");
    let until = Instant::now() + Duration::from_secs(60);
    while count(&url, "SELECT count(*) FROM events.signups") < 1 {
        assert!(Instant::now() < until, "new type never loaded\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let rows = query(&url, "SELECT x, pressure FROM events.mouse_moves ORDER BY received_at, position");
    let got: Vec<(i64, Option<f64>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].1, None, "old rows read NULL");
    assert_eq!(got[1], (5, Some(0.5)));
    layout.assert_tables(&url);
    let r = &query(&url, "SELECT plan, seats FROM events.signups")[0];
    assert_eq!((r.get::<_, String>(0), r.get::<_, Option<i64>>(1)), ("pro".to_string(), Some(3)));

    // Changing a type is refused at start with a message naming the column.
    let dir = temp_dir();
    let config = dir.path().join("chronos.toml");
    std::fs::write(
        &config,
        config_toml_with_pg(
            &kafka,
            free_port(),
            &url,
            &layout.load(""),
            &events.replace(r#"name = "seats", type = "int""#, r#"name = "seats", type = "text""#),
        ),
    )
    .unwrap();
    let out = chronos_cli(&config, &["install-pipeline"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("events.signups.seats is bigint in PostgreSQL but text in the catalog"), "{err}");
}

/// Posts 25-event batches from `threads` clients to `urls` (round robin) until `stop`.
fn load_in_background(urls: Vec<String>, threads: usize, stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    (0..threads)
        .map(|t| {
            let (stop, urls) = (stop.clone(), urls.clone());
            std::thread::spawn(move || {
                let c = client();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let b = batch(&format!("bg-{t}-{}", i % 5), 25);
                    let url = &urls[i % urls.len()];
                    i += 1;
                    let _ = c.post(url).header("Origin", ORIGIN).header("Content-Type", "text/plain").body(b.to_string()).send();
                }
            })
        })
        .collect()
}

/// Events per distinct batch id in the events topic: what must end up loaded.
fn events_in_kafka(kafka: &Kafka) -> i64 {
    let records = kafka.read_all(&kafka.topic, kafka.count(&kafka.topic) as usize, Duration::from_secs(30));
    let mut by_batch: HashMap<String, i64> = HashMap::new();
    for r in &records {
        by_batch.insert(r.value["batch_id"].as_str().unwrap().to_string(), r.value["events"].as_array().unwrap().len() as i64);
    }
    by_batch.values().sum()
}

fn postgres_restarted_mid_load_gives_exact_counts(layout: Layout) {
    let (mut pg, kafka, url, _port, d) = loading(layout, 2, "flush_rows = 200\nretry_max_ms = 500", FAST_IPS);
    let stop = Arc::new(AtomicBool::new(false));
    let threads = load_in_background(vec![d.url("/v1/batch")], 2, stop.clone());
    let until = Instant::now() + Duration::from_secs(30);
    while count(&url, &total_sql(&TABLES)) < 500 {
        assert!(Instant::now() < until, "loading never started\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Down for 3 s: the loaders retry their flushes and stop reading meanwhile.
    pg.server.stop();
    std::thread::sleep(Duration::from_secs(3));
    pg.server.restart().expect("restart PostgreSQL");
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let expected = events_in_kafka(&kafka);
    wait_for_events(&url, &TABLES, expected, Duration::from_secs(90), &d);
    assert_eq!(count(&url, &distinct_sql()), expected, "no duplicates across the PostgreSQL restart");
    let retries = d.metric("chronos_load_flush_retries_total").expect("the retries metric");
    assert!(retries > 0.0, "flushes were retried while PostgreSQL was away");
    assert!(d.log_text().contains("Flush failed; retrying."), "each retry is logged with PostgreSQL's error");
    eprintln!("{expected} events loaded exactly once across a PostgreSQL restart ({retries} flush retries)");
}

fn two_chronosd_in_one_group_one_stopped_gives_exact_counts(layout: Layout) {
    let pg = postgres(layout);
    let kafka = Kafka::start(4);
    let url = pg.server.url();
    let a = Chronosd::start(&config_toml_with_pg(&kafka, free_port(), &url, &layout.load("flush_rows = 200"), FAST_IPS));
    let mut b = Chronosd::start(&config_toml_with_pg(&kafka, free_port(), &url, &layout.load("flush_rows = 200"), FAST_IPS));
    a.wait_ready(Duration::from_secs(30));
    b.wait_ready(Duration::from_secs(30));
    let stop = Arc::new(AtomicBool::new(false));
    let threads = load_in_background(vec![a.url("/v1/batch")], 2, stop.clone());
    // Both members load: each committed offsets for some partitions.
    let until = Instant::now() + Duration::from_secs(40);
    loop {
        let partitions = count(&url, "SELECT count(DISTINCT partition) FROM chronos.offsets WHERE topic NOT LIKE 'dead%'");
        if partitions == 4 {
            break;
        }
        assert!(Instant::now() < until, "only {partitions} partitions loading\n{}\n{}", a.log_text(), b.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    // SIGTERM: b flushes, commits and leaves the group; a takes its partitions.
    // (The kill -9 variant, on a three-node cluster, is in tests/cluster.rs.)
    assert_eq!(b.terminate().code(), Some(0), "{}", b.log_text());
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let expected = events_in_kafka(&kafka);
    wait_for_events(&url, &TABLES, expected, Duration::from_secs(120), &a);
    assert_eq!(count(&url, &distinct_sql()), expected, "no duplicates after the rebalance");
    eprintln!("{expected} events loaded exactly once after one of two loaders left mid-load");
}

fn dead_letters_are_listed_and_replayed_once_the_catalog_knows_them(layout: Layout) {
    let (_pg, kafka, url, port, mut d) = loading(layout, 1, "", "");
    let c = client();
    let mut b = batch("replay", 1);
    b["events"] = json!([["signups", now_ms(), "pro"], ["mouse_moves", now_ms(), 1, 2]]);
    b["user"] = json!("u-replay");
    let (s, body, _) = post(&c, &d, &b, "198.51.100.9");
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["rejected"], 1);
    let until = Instant::now() + Duration::from_secs(30);
    while count(&url, "SELECT count(*) FROM chronos.dead_letters") < 1 {
        assert!(Instant::now() < until, "no dead letter\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(d.terminate().code(), Some(0));

    // The catalog learns the event type; chronosd restarts and creates its table.
    let events = "[events.signups]\nattributes = [{ name = \"plan\", type = \"text\", max_len = 32 }]\n";
    let toml = config_toml_with_pg(&kafka, port, &url, &layout.load(""), events);
    let d = Chronosd::start(&toml);
    d.wait_ready(Duration::from_secs(30));
    let dir = temp_dir();
    let config = dir.path().join("chronos.toml");
    std::fs::write(&config, &toml).unwrap();
    let cli = |args: &[&str]| {
        let out = chronos_cli(&config, args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = cli(&["dead-letters", "list"]);
    assert!(listed.contains("events[0][0]: unknown or disabled event type `signups`"), "{listed}");
    assert!(cli(&["dead-letters", "replay"]).contains("replayed 1 dead letter(s)"));
    let until = Instant::now() + Duration::from_secs(30);
    while count(&url, "SELECT count(*) FROM events.signups") < 1 {
        assert!(Instant::now() < until, "replayed event never loaded\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = &query(&url, "SELECT plan, session_id, metadata->>'url', user_id, client_ip FROM events.signups")[0];
    assert_eq!(r.get::<_, String>(0), "pro");
    assert_eq!(r.get::<_, String>(1), "replay");
    assert_eq!(r.get::<_, String>(2), b["page"]["url"].as_str().unwrap());
    assert_eq!(r.get::<_, String>(3), "u-replay", "the replay keeps the batch's user");
    assert_eq!(r.get::<_, String>(4), "198.51.100.0");
    // A consumer written from docs/kafka-record.md, which takes only records
    // whose `chronos-format` is `batch.v1`, sees the replayed event too, with
    // the original batch's key, write key and receive time.
    let records = kafka.read_all(&kafka.topic, 2, Duration::from_secs(30));
    assert_eq!(records.len(), 2, "the batch's record and the replayed one");
    let batch_format: Vec<_> = records.iter().filter(|r| r.headers.get("chronos-format").map(String::as_str) == Some("batch.v1")).collect();
    assert_eq!(batch_format.len(), 2, "every record says its format: {:?}", records.iter().map(|r| &r.headers).collect::<Vec<_>>());
    let (original, replayed) = match batch_format[0].value["events"][0][0] == "signups" {
        true => (batch_format[1], batch_format[0]),
        false => (batch_format[0], batch_format[1]),
    };
    assert_eq!(replayed.value["events"][0][0], "signups");
    assert_eq!(replayed.key.as_deref(), Some("replay"));
    for h in ["content-type", "chronos-key-id", "chronos-received-at"] {
        assert_eq!(replayed.headers.get(h), original.headers.get(h), "header {h}");
    }
    assert_eq!(replayed.value["received_at"], original.value["received_at"]);
    // Nothing left to replay; the event is stored once.
    assert!(cli(&["dead-letters", "replay"]).contains("replayed 0 dead letter(s)"));
    assert!(!cli(&["dead-letters", "list"]).contains("signups"));
    assert!(cli(&["dead-letters", "list", "--all"]).contains("(replayed)"));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count(&url, "SELECT count(*) FROM events.signups"), 1);
}

/// `chronos install-pipeline` with `[load]` keys `load` against `url`: (succeeded, stdout + stderr).
fn install_with(kafka: &Kafka, url: &str, load: &str) -> (bool, String) {
    let dir = temp_dir();
    let file = dir.path().join("chronos.toml");
    std::fs::write(&file, config_toml_with_pg(kafka, free_port(), url, load, "")).unwrap();
    let out = chronos_cli(&file, &["install-pipeline"]);
    (out.status.success(), output_text(&out))
}

/// A new database `name` on the server of `url`, and its URL.
fn new_database(url: &str, name: &str) -> String {
    query(url, &format!("CREATE DATABASE {name}"));
    format!("{}/{name}", url.rsplit_once('/').unwrap().0)
}

const EVENT_RELATIONS: &str = "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'events_raw'";

/// Event tables of the version before `chronos.batches` (the page in every
/// row of `events."<type>"`, tests/data/schema-page-per-row.sql), with rows:
/// made hypertables as that version did for `Layout::Hypertable`.
fn old_event_tables(url: &str, layout: Layout, today: &str) {
    execute_batch(url, include_str!("data/schema-page-per-row.sql"));
    match layout {
        // Today's partitions, as that version made them at install.
        Layout::Native => execute_batch(
            url,
            &["clicks", "pageviews"]
                .map(|t| {
                    format!(
                        "CREATE TABLE events.{t}_p{} PARTITION OF events.{t} FOR VALUES FROM ('{today} 00:00:00+00') TO (timestamptz '{today} 00:00:00+00' + interval '1 day');",
                        today.replace('-', "")
                    )
                })
                .concat(),
        ),
        Layout::Hypertable => execute_batch(
            url,
            "CREATE EXTENSION IF NOT EXISTS timescaledb;
             DO $$ DECLARE t text; BEGIN
               FOR t IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE n.nspname = 'events' AND c.relkind = 'p' LOOP
                 EXECUTE format('CREATE TABLE events.%I (LIKE events.%I INCLUDING DEFAULTS)', t || '_h', t);
                 EXECUTE format('DROP TABLE events.%I CASCADE', t);
                 EXECUTE format('ALTER TABLE events.%I RENAME TO %I', t || '_h', t);
                 PERFORM create_hypertable(format('events.%I', t)::regclass, 'time', chunk_time_interval => interval '24 hours', create_default_indexes => false);
                 EXECUTE format('CREATE INDEX %I ON events.%I USING brin (time)', t || '_time', t);
               END LOOP;
             END $$;",
        ),
    }
    // Three batches of 4 clicks and one pageview, each batch with its page in every row.
    execute_batch(
        url,
        &format!(
            "INSERT INTO events.clicks (time, client_time, received_at, time_flagged, session_id, batch_id, position, key_id, client_ip, metadata, element, buttons, x, y)
             SELECT t, t, t, false, 'old-' || (i / 4), md5('old' || (i / 4))::uuid, i % 4, 'k', NULL,
                    jsonb_build_object('url', 'https://old.example/' || (i / 4), 'title', 'Old \"' || (i / 4) || '\"'), 'A', 0, i, i
             FROM generate_series(0, 11) i, LATERAL (SELECT timestamptz '{today} 00:00:00+00' + i * interval '1 minute') s(t);
             INSERT INTO events.pageviews (time, client_time, received_at, time_flagged, session_id, batch_id, position, key_id, metadata, navigation)
             VALUES (timestamptz '{today} 00:00:00+00' + interval '1 hour', now(), now(), false, 'old-y', md5('old-y')::uuid, 0, 'k', '{{\"url\": \"https://old.example/y\"}}', 'load');"
        ),
    );
}

fn tables_of_the_version_before_batches_move_to_events_raw_with_their_pages(layout: Layout) {
    let pg = postgres(layout);
    let url = pg.server.url();
    let today: String = query(&url, "SELECT to_char((now() AT TIME ZONE 'UTC')::date, 'YYYY-MM-DD')")[0].get(0);
    old_event_tables(&url, layout, &today);
    let before = query(&url, "SELECT batch_id::text, position, metadata::text FROM events.clicks ORDER BY 1, 2");
    assert_eq!(before.len(), 12);

    let kafka = Kafka::start(1);
    let (ok, out) = install_with(&kafka, &url, &layout.load(""));
    assert!(ok, "{out}");
    layout.assert_tables(&url);
    // The raw rows moved, without their page; the presented table shows the page again.
    assert_eq!(count(&url, "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'events_raw' AND column_name = 'metadata'"), 0);
    assert_eq!(count(&url, "SELECT count(*) FROM pg_views WHERE schemaname = 'events'"), 6);
    assert_eq!(count(&url, "SELECT count(*) FROM events_raw.clicks"), 12);
    let after = query(&url, "SELECT batch_id::text, position, metadata::text FROM events.clicks ORDER BY 1, 2");
    let rows = |r: &[tokio_postgres::Row]| r.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i32>(1), r.get::<_, String>(2))).collect::<Vec<_>>();
    assert_eq!(rows(&after), rows(&before), "every row with its page");
    assert_eq!(count(&url, "SELECT count(*) FROM chronos.batches"), 4, "one page per batch");
    assert_eq!(query(&url, "SELECT metadata->>'url' FROM events.pageviews")[0].get::<_, String>(0), "https://old.example/y");
    if layout == Layout::Native {
        let part = format!("clicks_p{}", today.replace('-', ""));
        assert_eq!(
            count(&url, &format!("SELECT count(*) FROM pg_tables WHERE schemaname = 'events_raw' AND tablename = '{part}'")),
            1,
            "its partitions moved too"
        );
        assert_eq!(count(&url, &format!("SELECT count(*) FROM events_raw.{part}")), 12);
    }
    // Installing again changes nothing.
    let (ok, out) = install_with(&kafka, &url, &layout.load(""));
    assert!(ok, "{out}");
    assert_eq!(rows(&query(&url, "SELECT batch_id::text, position, metadata::text FROM events.clicks ORDER BY 1, 2")), rows(&before));

    // Writes to a presented table reach the raw table and the batch's page.
    execute_batch(
        &url,
        "INSERT INTO events.clicks (time, client_time, received_at, time_flagged, session_id, batch_id, position, key_id, metadata, element, buttons, x, y)
         VALUES (now(), now(), now(), false, 'typed', md5('typed')::uuid, 0, 'k', '{\"url\": \"https://typed.example/\"}', 'A', 0, 1, 2);
         UPDATE events.clicks SET x = 10, metadata = '{\"url\": \"https://typed.example/2\"}' WHERE session_id = 'typed';
         DELETE FROM events.clicks WHERE session_id = 'old-0';",
    );
    assert_eq!(
        query(&url, "SELECT x::text || ' ' || (metadata->>'url') FROM events.clicks WHERE session_id = 'typed'")[0].get::<_, String>(0),
        "10 https://typed.example/2"
    );
    assert_eq!(count(&url, "SELECT count(*) FROM events_raw.clicks WHERE session_id = 'typed' AND x = 10"), 1);
    assert_eq!(count(&url, "SELECT count(*) FROM events_raw.clicks"), 9);

    // chronosd loads into the moved tables.
    let d = Chronosd::start(&config_toml_with_pg(&kafka, free_port(), &url, &layout.load(""), ""));
    d.wait_ready(Duration::from_secs(30));
    let b = batch("after-move", 12);
    let (s, body, _) = post(&client(), &d, &b, "198.51.100.77");
    assert_eq!(s, 200, "{body}");
    d.wait_until("the batch loaded", Duration::from_secs(30), || {
        count(&url, "SELECT count(*) FROM events.clicks WHERE session_id = 'after-move'") == 2
    });
    let page = query(&url, "SELECT DISTINCT metadata::text FROM events.clicks WHERE session_id = 'after-move'");
    assert_eq!(page.len(), 1);
    assert_eq!(serde_json::from_str::<Value>(&page[0].get::<_, String>(0)).unwrap(), b["page"]);
}

#[test]
fn timescaledb_installed_but_not_preloaded_falls_back_on_auto_and_refuses_on_always() {
    assert!(chronos::stack::postgres::timescaledb_installed(), "this test needs TimescaleDB installed (.ci/setup)");
    let dir = temp_dir();
    let pg = PostgresServer::start_with(dir.path(), false).expect("start PostgreSQL without the preload");
    let kafka = Kafka::start(1);
    let url = pg.url();
    assert_eq!(count(&url, "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"), 1);

    let fix = "set shared_preload_libraries = 'timescaledb' in postgresql.conf and restart PostgreSQL";
    let (ok, out) = install_with(&kafka, &url, "timescaledb = \"always\"");
    assert!(!ok && out.contains("not preloaded") && out.contains(fix), "{out}");
    assert_eq!(count(&url, EVENT_RELATIONS), 0, "a refused install creates nothing");

    let (ok, out) = install_with(&kafka, &url, "timescaledb = \"auto\"");
    assert!(ok, "{out}");
    assert_eq!(out.matches(fix).count(), 1, "one warning naming the fix:\n{out}");
    assert!(out.contains("(native daily partitions)"), "{out}");
    Layout::Native.assert_tables(&url);

    // chronosd itself starts on such a server (the failure this fixes), warning once.
    let fresh = new_database(&url, "fresh");
    let d = Chronosd::start(&config_toml_with_pg(&kafka, free_port(), &fresh, "", ""));
    d.wait_ready(Duration::from_secs(30));
    assert_eq!(d.log_text().matches(fix).count(), 1, "{}", d.log_text());
    Layout::Native.assert_tables(&fresh);

    // Existing native tables are never converted.
    let (ok, out) = install_with(&kafka, &url, "timescaledb = \"always\"");
    assert!(!ok && out.contains("never converted"), "{out}");
    // chronos status names the layout.
    let file = dir.path().join("status.toml");
    std::fs::write(&file, config_toml_with_pg(&kafka, free_port(), &url, "", "")).unwrap();
    let status = output_text(&chronos_cli(&file, &["status"]));
    assert!(status.lines().any(|l| l.starts_with("tables") && l.contains("native daily partitions (6 tables, ")), "{status}");
}

#[test]
fn timescaledb_modes_on_a_preloading_server_give_hypertables_with_the_configured_chunks() {
    let dir = temp_dir();
    let mut pg = Layout::Hypertable.postgres(dir.path());
    let kafka = Kafka::start(1);
    let url = pg.url();

    // "never" keeps native partitions, even with TimescaleDB at hand.
    let never_url = new_database(&url, "never_db");
    let (ok, out) = install_with(&kafka, &never_url, "timescaledb = \"never\"");
    assert!(ok, "{out}");
    Layout::Native.assert_tables(&never_url);

    // "auto" makes hypertables, chunked as configured.
    let (ok, out) = install_with(&kafka, &url, "timescaledb = \"auto\"\nchunk_interval_hours = 6");
    assert!(ok && out.contains("(TimescaleDB hypertables, 6-hour chunks)"), "{out}");
    Layout::Hypertable.assert_tables(&url);
    let intervals = count(
        &url,
        "SELECT count(*) FROM timescaledb_information.dimensions WHERE hypertable_schema = 'events_raw' AND time_interval = interval '6 hours'",
    );
    assert_eq!(intervals, 6, "every hypertable chunked by 6 hours");
    // A new width applies to new chunks of existing hypertables.
    let (ok, out) = install_with(&kafka, &url, "chunk_interval_hours = 48");
    assert!(ok, "{out}");
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM timescaledb_information.dimensions WHERE hypertable_schema = 'events_raw' AND time_interval = interval '48 hours'"
        ),
        6
    );

    // Partition upkeep leaves hypertables alone: no daily partitions appear.
    let before = count(&url, EVENT_RELATIONS);
    let catalog = chronos::catalog::EventCatalog::from_config(&chronos::config::Config::default().events, 2048);
    block_on(async {
        let client = chronos::store::connect(&url).await.unwrap();
        chronos::store::ensure_partitions(&client, &catalog, 7).await.unwrap();
    });
    assert_eq!(count(&url, EVENT_RELATIONS), before, "no relation added to hypertables");
    assert_eq!(count(&url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'events_raw' AND tablename LIKE '%\\_p2%'"), 0);

    // Hypertables on a server that stopped preloading: refused, naming the fix.
    pg.spec.preload_timescaledb = false;
    pg.restart().expect("restart PostgreSQL without the preload");
    let (ok, out) = install_with(&kafka, &url, "");
    assert!(!ok && out.contains("the event tables are hypertables, but") && out.contains("shared_preload_libraries = 'timescaledb'"), "{out}");
}

/// Posts `n` batches of `events` events (sessions `<prefix>-<i>`), each
/// answered 200; returns the events posted.
fn post_batches(c: &reqwest::blocking::Client, d: &Chronosd, prefix: &str, n: usize, events: usize) -> i64 {
    for i in 0..n {
        let (status, body, _) = post(c, d, &batch(&format!("{prefix}-{i}"), events), "203.0.113.8");
        assert_eq!(status, 200, "{body}");
    }
    (n * events) as i64
}

fn records_waiting_in_kafka_are_loaded_with_no_further_traffic(layout: Layout) {
    // librdkafka applies an assignment on its own thread and may forward a
    // partition's queue back to the main queue after its loader split it off;
    // that must not leave a quiet partition unread. Three rounds: stored
    // offsets absent, then present.
    let pg = postgres(layout);
    let kafka = Kafka::start(3);
    let url = pg.server.url();
    let c = client();
    let mut expected = 0;
    for round in 0..3 {
        // Receipt only: the records wait in Kafka.
        let mut receipt = Chronosd::start(&config_toml_with_pg(&kafka, free_port(), &url, &layout.load("enabled = false"), FAST_IPS));
        receipt.wait_ready(Duration::from_secs(30));
        expected += post_batches(&c, &receipt, &format!("quiet-{round}"), 30, 10);
        assert_eq!(receipt.terminate().code(), Some(0));
        let mut d = Chronosd::start(&config_toml_with_pg(&kafka, free_port(), &url, &layout.load(""), FAST_IPS));
        d.wait_ready(Duration::from_secs(30));
        wait_for_events(&url, &TABLES, expected, Duration::from_secs(60), &d);
        assert_eq!(count(&url, &distinct_sql()), expected);
        assert_eq!(d.terminate().code(), Some(0), "{}", d.log_text());
    }
}

fn sigterm_with_postgres_away_stops_by_the_loaders_deadline_and_loses_nothing(layout: Layout) {
    let (mut pg, kafka, url, _port, mut d) = loading(layout, 3, "shutdown_timeout_secs = 3\nretry_max_ms = 500", FAST_IPS);
    let c = client();
    let mut expected = post_batches(&c, &d, "away", 10, 20);
    wait_for_events(&url, &TABLES, expected, Duration::from_secs(30), &d);
    // PostgreSQL goes away; more batches are accepted (into Kafka) and the
    // loaders retry their flushes. SIGTERM must not wait for PostgreSQL.
    pg.server.stop();
    expected += post_batches(&c, &d, "away-late", 10, 20);
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    assert_eq!(d.terminate().code(), Some(0), "{}", d.log_text());
    let took = t.elapsed();
    assert!(took < Duration::from_secs(9), "stopped after {took:?}, not by the 3 s loader deadline\n{}", d.log_text());
    assert!(d.log_text().contains("Flush failed; retrying."), "the loaders were retrying:\n{}", d.log_text());
    // Nothing acknowledged is lost: the next start loads what was not committed.
    pg.server.restart().expect("restart PostgreSQL");
    let d2 = Chronosd::start(&config_toml_with_pg(&kafka, free_port(), &url, &layout.load(""), FAST_IPS));
    d2.wait_ready(Duration::from_secs(30));
    wait_for_events(&url, &TABLES, expected, Duration::from_secs(60), &d2);
    assert_eq!(count(&url, &distinct_sql()), expected);
    eprintln!("SIGTERM with PostgreSQL away took {took:?}; {expected} events loaded once after the restart");
}

on_both_layouts!(
    events_land_exactly_once_with_every_value_intact,
    kill_9_mid_load_then_restart_gives_exact_counts,
    implausible_event_times_are_stored_clamped_and_flagged,
    invalid_events_become_dead_letters_with_their_reason,
    schema_evolves_online_when_the_catalog_grows,
    postgres_restarted_mid_load_gives_exact_counts,
    two_chronosd_in_one_group_one_stopped_gives_exact_counts,
    dead_letters_are_listed_and_replayed_once_the_catalog_knows_them,
    records_waiting_in_kafka_are_loaded_with_no_further_traffic,
    sigterm_with_postgres_away_stops_by_the_loaders_deadline_and_loses_nothing,
    tables_of_the_version_before_batches_move_to_events_raw_with_their_pages,
);
