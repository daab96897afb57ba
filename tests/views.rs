//! Continuous views against real PostgreSQL (with hll and tdigest) and the
//! real broker: each view equals the same query run on the raw tables —
//! exact aggregates exactly, approximate ones within their error — also after
//! `kill -9` of chronosd mid-stream, and views added (with backfill) or
//! dropped while events flow.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chronos::stack::postgres::PostgresServer;
use chronos::stack::process::free_port;
use common::*;
use serde_json::{json, Value};

const TABLES: [&str; 6] = BUILT_IN_TABLES;

struct Stack {
    _pg_dir: tempfile::TempDir,
    _pg: PostgresServer,
    url: String,
    kafka: Kafka,
    toml: String,
    config_file: tempfile::NamedTempFile,
    d: Chronosd,
}

/// PostgreSQL, a broker and chronosd with its event tables in `layout`.
fn stack(layout: Layout) -> Stack {
    let pg_dir = temp_dir();
    let pg = layout.postgres(pg_dir.path());
    let url = pg.url();
    let kafka = Kafka::start(3);
    // The posters send as fast as chronosd answers, from one address.
    let toml = config_toml_with_pg(&kafka, free_port(), &url, &layout.load(""), FAST_IPS);
    let config_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config_file.path(), &toml).unwrap();
    let d = Chronosd::start(&toml);
    d.wait_ready(Duration::from_secs(30));
    layout.assert_tables(&url);
    Stack { _pg_dir: pg_dir, _pg: pg, url, kafka, toml, config_file, d }
}

/// Runs the `chronos` CLI with the stack's config; (exit ok, stdout + stderr).
fn cli(s: &Stack, args: &[&str]) -> (bool, String) {
    let out = chronos_cli(s.config_file.path(), args);
    (out.status.success(), output_text(&out))
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A batch with varied values: NULL attributes, pages with and without a
/// title, clicks spread over several minutes, many sessions.
fn varied_batch(rng: &mut Rng, n: usize) -> Value {
    let now = now_ms();
    let session = format!("s{}", rng.below(40));
    let page = match rng.below(3) {
        0 => json!({"url": format!("https://shop.example.com/p{}", rng.below(5)), "title": format!("Page {}", rng.below(3))}),
        1 => json!({"url": format!("https://shop.example.com/p{}", rng.below(5))}),
        _ => json!({"url": "https://shop.example.com/", "title": null}),
    };
    let events: Vec<Value> = (0..n)
        .map(|_| {
            // Up to 10 minutes back, so minute and 5-minute buckets vary.
            let t = now - rng.below(600_000) as i64;
            let x = rng.below(2000) as i64 - 100;
            let y = rng.below(1000) as i64;
            match rng.below(6) {
                0 => json!(["pageviews", t, "load", if rng.below(2) == 0 { Value::Null } else { json!("https://ref.example.org/") }]),
                1 | 2 => {
                    let selector = if rng.below(3) == 0 { Value::Null } else { json!(format!("main>button.b{}", rng.below(3))) };
                    let element = ["BUTTON", "A", "DIV"][rng.below(3) as usize];
                    json!(["clicks", t, element, rng.below(4), x, y, selector])
                }
                3 => json!(["mouse_moves", t, x, y]),
                4 => json!(["key_presses", t, if rng.below(2) == 0 { Value::Null } else { json!("Enter") }, "INPUT"]),
                _ => json!(["form_submissions", t, if rng.below(2) == 0 { Value::Null } else { json!("signup") }, "/join", ["email"]]),
            }
        })
        .collect();
    json!({
        "v": 1, "key": KEY, "batch": uuid::Uuid::new_v4().to_string(), "sent_at": now,
        "session": session, "page": page, "events": events,
    })
}

/// `cols` of every event table, with the table's name as `type`, as one UNION ALL.
fn all_events(cols: &str) -> String {
    TABLES.iter().map(|t| format!("SELECT '{t}' AS type, {cols} FROM events.{t}")).collect::<Vec<_>>().join(" UNION ALL ")
}

fn total_events(url: &str) -> i64 {
    count(url, &total_sql(&TABLES))
}

/// Posts `batches` varied batches; returns the events accepted.
/// Every fourth batch comes without a user agent: a bot's, which the default
/// views leave out and the test views count.
fn post_varied(s: &Stack, rng: &mut Rng, batches: usize) -> i64 {
    let (c, bot) = (client(), bare_client());
    let mut sent = 0;
    for i in 0..batches {
        let n = 1 + rng.below(60) as usize;
        let (status, body, _) = post(if i % 4 == 3 { &bot } else { &c }, &s.d, &varied_batch(rng, n), "203.0.113.9");
        assert_eq!(status, 200, "{body}");
        sent += n as i64;
    }
    sent
}

/// A tracker retrying one batch: posted twice at once (both copies in one
/// loader buffer), then once more after it is loaded (the loader's commit
/// finds the batch id stored, rolls back and reads again without it).
/// Its 30 events must count once in the tables and the views.
fn post_retried(s: &Stack, rng: &mut Rng, loaded: i64) {
    let c = client();
    let batch = varied_batch(rng, 30);
    for _ in 0..2 {
        let (status, body, _) = post(&c, &s.d, &batch, "203.0.113.9");
        assert_eq!(status, 200, "{body}");
    }
    wait_for_events(&s.url, &TABLES, loaded + 30, Duration::from_secs(120), &s.d);
    let rewinds = |d: &Chronosd| d.metric("chronos_load_rewinds_total{reason=\"duplicates\"}").unwrap_or(0.0);
    let before = rewinds(&s.d);
    let (status, body, _) = post(&c, &s.d, &batch, "203.0.113.9");
    assert_eq!(status, 200, "{body}");
    let until = Instant::now() + Duration::from_secs(30);
    while rewinds(&s.d) <= before {
        assert!(Instant::now() < until, "the retried batch was never recognised as loaded\n{}", s.d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for_events(&s.url, &TABLES, loaded + 30, Duration::from_secs(120), &s.d);
}

/// Rows of a query as text, keyed by the first `keys` columns (NULL → "∅").
fn rows_by_key(url: &str, sql: &str, keys: usize) -> BTreeMap<Vec<String>, Vec<Option<String>>> {
    let mut out = BTreeMap::new();
    for r in query(url, sql) {
        let cols: Vec<Option<String>> = (0..r.len()).map(|i| r.get::<_, Option<String>>(i)).collect();
        let key: Vec<String> = cols[..keys].iter().map(|c| c.clone().unwrap_or_else(|| "∅".into())).collect();
        assert!(out.insert(key.clone(), cols[keys..].to_vec()).is_none(), "two rows for key {key:?} in {sql}");
    }
    out
}

/// How a column of a view is compared with the raw query.
#[derive(Clone, Copy)]
enum Cmp {
    Exact,
    /// Relative error at most this (approximate aggregates).
    Within(f64),
    /// Absolute error at most this.
    Abs(f64),
}

/// Asserts `SELECT <cols> FROM views.<view>` equals `raw` (same column order).
fn assert_view_equals(url: &str, view: &str, keys: &[&str], cols: &[(&str, Cmp)], raw: &str) {
    let all: Vec<String> = keys.iter().chain(cols.iter().map(|(c, _)| c)).map(|c| format!("{c}::text")).collect();
    let got = rows_by_key(url, &format!("SELECT {} FROM views.{view}", all.join(", ")), keys.len());
    let want = rows_by_key(url, raw, keys.len());
    assert!(!want.is_empty(), "{view}: the raw query returned nothing; the test proves nothing");
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{view}: groups differ");
    for (k, w) in &want {
        let g = &got[k];
        for (i, (name, cmp)) in cols.iter().enumerate() {
            let (gv, wv) = (&g[i], &w[i]);
            let ok = match (cmp, gv, wv) {
                (_, None, None) => true,
                (Cmp::Exact, a, b) => a == b,
                (Cmp::Within(r), Some(a), Some(b)) => {
                    let (a, b): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
                    (a - b).abs() <= r * b.abs().max(1.0)
                }
                (Cmp::Abs(e), Some(a), Some(b)) => {
                    let (a, b): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
                    (a - b).abs() <= *e
                }
                _ => false,
            };
            assert!(ok, "{view} {k:?} column {name}: view has {gv:?}, raw tables give {wv:?}");
        }
    }
}

const TEST_VIEWS: &str = "
CREATE CONTINUOUS VIEW t_clicks AS
  SELECT element, selector, date_trunc('minute', time) AS minute, time_bucket(interval '5 minutes', time) AS b5,
         count(*), count(selector) AS with_selector, sum(x) AS sx, min(y) AS mny, max(y) AS mxy, avg(x) AS ax,
         max(time) AS last_seen, count(DISTINCT session_id) AS sessions,
         percentile_cont(0.5) WITHIN GROUP (ORDER BY x) AS p50
  FROM clicks WHERE buttons <> 2 GROUP BY element, selector, minute, b5;
CREATE VIEW t_all AS
  SELECT type, metadata->>'title' AS title, count(*), count(DISTINCT position) AS positions FROM events GROUP BY type, title;
CREATE CONTINUOUS VIEW t_total AS SELECT count(*), sum(y) AS sy, avg(y) AS ay, percentile_cont(0.9) WITHIN GROUP (ORDER BY y) AS p90 FROM mouse_moves;
";

fn check_test_views(url: &str) {
    assert_view_equals(
        url,
        "t_clicks",
        &["element", "selector", "minute", "b5"],
        &[
            ("count", Cmp::Exact),
            ("with_selector", Cmp::Exact),
            ("sx", Cmp::Exact),
            ("mny", Cmp::Exact),
            ("mxy", Cmp::Exact),
            ("round(ax, 9)", Cmp::Exact),
            ("last_seen", Cmp::Exact),
            ("sessions", Cmp::Within(0.05)),
            ("p50", Cmp::Abs(200.0)),
        ],
        "SELECT element, selector, date_trunc('minute', time)::text,
                date_bin('5 minutes', time, '2000-01-03 00:00:00+00')::text,
                count(*)::text, count(selector)::text, sum(x)::text, min(y)::text, max(y)::text, round(avg(x), 9)::text,
                max(time)::text, count(DISTINCT session_id)::text,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY x)::text
         FROM events.clicks WHERE buttons <> 2 GROUP BY 1, 2, 3, 4",
    );
    let union = all_events("metadata, position");
    assert_view_equals(
        url,
        "t_all",
        &["type", "title"],
        &[("count", Cmp::Exact), ("positions", Cmp::Within(0.05))],
        &format!("SELECT type, metadata->>'title', count(*)::text, count(DISTINCT position)::text FROM ({union}) e GROUP BY 1, 2"),
    );
    // A keyless view is one row; the "key" column here is a constant.
    assert_view_equals(
        url,
        "t_total",
        &["'all'"],
        &[("count", Cmp::Exact), ("sy", Cmp::Exact), ("round(ay, 9)", Cmp::Exact), ("p90", Cmp::Abs(25.0))],
        "SELECT 'all', count(*)::text, sum(y)::text, round(avg(y), 9)::text, percentile_cont(0.9) WITHIN GROUP (ORDER BY y)::text FROM events.mouse_moves",
    );
    // Three of the default views: bots' events left out.
    assert!(
        count(url, &format!("SELECT count(*) FROM ({}) e WHERE is_bot", all_events("is_bot"))) > 0,
        "no bot's events: the exclusion is not tested"
    );
    let union_time = all_events("time, is_bot");
    assert_view_equals(
        url,
        "events_per_minute",
        &["type", "minute"],
        &[("events", Cmp::Exact)],
        &format!("SELECT type, date_trunc('minute', time)::text, count(*)::text FROM ({union_time}) e WHERE NOT is_bot GROUP BY 1, 2"),
    );
    assert_view_equals(
        url,
        "pageviews_hourly",
        &["url", "hour"],
        &[("views", Cmp::Exact), ("sessions", Cmp::Within(0.05))],
        "SELECT metadata->>'url', date_trunc('hour', time)::text, count(*)::text, count(DISTINCT session_id)::text FROM events.pageviews WHERE NOT is_bot GROUP BY 1, 2",
    );
    assert_view_equals(
        url,
        "mouse_heat",
        &["url", "cell_x", "cell_y"],
        &[("moves", Cmp::Exact)],
        "SELECT metadata->>'url', (x / 50 * 50)::text, (y / 50 * 50)::text, count(*)::text FROM events.mouse_moves WHERE NOT is_bot GROUP BY 1, 2, 3",
    );
}

/// Posts varied batches from a thread until stopped, as fast as chronosd answers.
struct Poster {
    stop: Arc<AtomicBool>,
    batches: Arc<AtomicI64>,
    events: Arc<AtomicI64>,
    thread: std::thread::JoinHandle<()>,
}

impl Poster {
    fn start(url: String, seed: u64) -> Poster {
        let (stop, batches, events) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicI64::new(0)), Arc::new(AtomicI64::new(0)));
        let thread = {
            let (stop, batches, events) = (stop.clone(), batches.clone(), events.clone());
            std::thread::spawn(move || {
                let c = client();
                let mut rng = Rng(seed);
                while !stop.load(Ordering::Relaxed) {
                    let n = 1 + rng.below(40) as usize;
                    let body = varied_batch(&mut rng, n).to_string();
                    match c.post(&url).header("Content-Type", "text/plain").header("Origin", ORIGIN).body(body).send() {
                        Ok(r) if r.status().as_u16() == 200 => {
                            batches.fetch_add(1, Ordering::Relaxed);
                            events.fetch_add(n as i64, Ordering::Relaxed);
                        }
                        Ok(r) => panic!("chronosd answered {}", r.status()),
                        // chronosd was killed: stop quietly.
                        Err(_) => return,
                    }
                }
            })
        };
        Poster { stop, batches, events, thread }
    }

    /// Stops; (batches, events) acknowledged with 200.
    fn stop(self) -> (usize, i64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("poster thread");
        (self.batches.load(Ordering::Relaxed) as usize, self.events.load(Ordering::Relaxed))
    }
}

/// `t_total`'s count and sum equal the raw table's.
fn assert_total_count_and_sum(url: &str) {
    assert_view_equals(
        url,
        "t_total",
        &["'all'"],
        &[("count", Cmp::Exact), ("sy", Cmp::Exact)],
        "SELECT 'all', count(*)::text, sum(y)::text FROM events.mouse_moves",
    );
}

fn add_views(s: &Stack, sql: &str, extra: &[&str]) -> (bool, String) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), sql).unwrap();
    let path = file.path().to_str().unwrap().to_string();
    let mut args = vec!["views", "add", path.as_str()];
    args.extend_from_slice(extra);
    cli(s, &args)
}

fn views_equal_the_raw_queries_also_after_kill_9(layout: Layout) {
    let mut s = stack(layout);
    // The defaults are there from the first start.
    let (ok, list) = cli(&s, &["views", "list"]);
    assert!(ok && list.contains("events_per_minute") && list.contains("mouse_heat"), "{list}");
    let (ok, out) = add_views(&s, TEST_VIEWS, &[]);
    assert!(ok, "{out}");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut sent = post_varied(&s, &mut rng, 150);
    wait_for_events(&s.url, &TABLES, sent, Duration::from_secs(120), &s.d);
    check_test_views(&s.url);
    post_retried(&s, &mut rng, sent);
    check_test_views(&s.url);

    // kill -9 while batches keep arriving; restart; nothing counted twice or lost.
    let poster = Poster::start(s.d.url("/v1/batch"), 42);
    std::thread::sleep(Duration::from_millis(1500));
    s.d.kill9();
    let (acked, _) = poster.stop();
    assert!(acked > 0, "nothing was posted while loading");
    // What must be loaded is what Kafka holds: every acknowledged batch, plus any
    // the broker stored just before the crash cut its HTTP answer.
    let records = s.kafka.read_all(&s.kafka.topic, 150 + acked, Duration::from_secs(30));
    let by_batch: BTreeMap<String, i64> =
        records.iter().map(|r| (r.value["batch_id"].as_str().unwrap().to_string(), r.value["events"].as_array().unwrap().len() as i64)).collect();
    sent = by_batch.values().sum();
    // Restarted at once: the group waits out the killed member's session itself.
    s.d = Chronosd::start(&s.toml);
    s.d.wait_ready(Duration::from_secs(30));
    sent += post_varied(&s, &mut rng, 20);
    wait_for_events(&s.url, &TABLES, sent, Duration::from_secs(120), &s.d);
    let distinct = all_events("batch_id, position");
    assert_eq!(count(&s.url, &format!("SELECT count(DISTINCT (batch_id, position)) FROM ({distinct}) u")), sent);
    check_test_views(&s.url);
    docs_recipes_run(&s);
}

/// Every SQL example of docs/views.md: definitions are accepted (and added),
/// then every query runs on the real database.
fn docs_recipes_run(s: &Stack) {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/views.md")).unwrap();
    let blocks: Vec<&str> = doc.split("```sql\n").skip(1).map(|b| b.split("```").next().unwrap()).collect();
    let (defs, queries): (Vec<&str>, Vec<&str>) = blocks.iter().partition(|b| b.trim_start().to_uppercase().starts_with("CREATE"));
    assert!(!defs.is_empty() && queries.len() >= 3, "docs/views.md lost its examples");
    let (ok, out) = add_views(s, &defs.join("\n"), &["--backfill"]);
    assert!(ok, "docs/views.md definitions: {out}");
    for q in queries {
        let rows = query(&s.url, q);
        assert!(!rows.is_empty() || q.contains("checkout"), "docs/views.md query returned nothing:\n{q}");
    }
}

fn views_are_added_with_backfill_and_dropped_while_events_flow(layout: Layout) {
    let mut s = stack(layout);
    let mut rng = Rng(7);
    let mut sent = post_varied(&s, &mut rng, 60);
    wait_for_events(&s.url, &TABLES, sent, Duration::from_secs(120), &s.d);

    // Bad definitions are refused with where and why, and change nothing.
    let (ok, out) = add_views(&s, "CREATE CONTINUOUS VIEW good AS SELECT count(*) FROM clicks;\nCREATE CONTINUOUS VIEW bad AS\n  SELECT key, mode() WITHIN GROUP (ORDER BY key) FROM key_presses GROUP BY key;", &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("line 3, column 15") && out.contains("`mode` cannot be maintained incrementally"), "{out}");
    assert_eq!(count(&s.url, "SELECT count(*) FROM chronos.views WHERE name IN ('good', 'bad')"), 0);
    let (ok, out) = add_views(&s, "CREATE VIEW element_counts AS SELECT element, count(*) FROM clicks GROUP BY element", &[]);
    assert!(!ok && out.contains("already exists"), "{out}");

    // Added while batches arrive, filled from what is already stored: equal to the raw query.
    let poster = Poster::start(s.d.url("/v1/batch"), 99);
    std::thread::sleep(Duration::from_millis(700));
    let (ok, out) = add_views(&s, TEST_VIEWS, &["--backfill"]);
    assert!(ok, "{out}");
    std::thread::sleep(Duration::from_millis(700));
    // Dropped while batches arrive: loading goes on.
    let (ok, out) = cli(&s, &["views", "drop", "t_all"]);
    assert!(ok, "{out}");
    std::thread::sleep(Duration::from_millis(700));
    let (acked, events) = poster.stop();
    assert!(acked > 0, "nothing was posted while views changed");
    sent += events;
    wait_for_events(&s.url, &TABLES, sent, Duration::from_secs(120), &s.d);
    assert_total_count_and_sum(&s.url);
    assert_view_equals(
        &s.url,
        "t_clicks",
        &["element", "selector", "minute", "b5"],
        &[("count", Cmp::Exact), ("sx", Cmp::Exact), ("last_seen", Cmp::Exact)],
        "SELECT element, selector, date_trunc('minute', time)::text, date_bin('5 minutes', time, '2000-01-03 00:00:00+00')::text,
                count(*)::text, sum(x)::text, max(time)::text
         FROM events.clicks WHERE buttons <> 2 GROUP BY 1, 2, 3, 4",
    );
    assert_eq!(count(&s.url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'views' AND tablename = 't_all_mrel'"), 0);
    let (ok, list) = cli(&s, &["views", "list"]);
    assert!(ok && list.contains("t_clicks") && !list.contains("t_all"), "{list}");
    let (ok, out) = cli(&s, &["views", "drop", "t_all"]);
    assert!(!ok && out.contains("no view named `t_all`"), "{out}");
    assert!(!s.d.log_text().contains("ERROR"), "{}", s.d.log_text());
    // A view added or dropped while a loader held decoded events: its commit
    // saw the generation move, rolled back and read those records again.
    let rewinds = s.d.metric("chronos_load_rewinds_total{reason=\"views\"}").unwrap_or(0.0);
    assert!(rewinds >= 1.0, "no flush met a view change ({rewinds} rewinds)");
    // The daemon is still loading after all that.
    sent += post_varied(&s, &mut rng, 5);
    wait_for_events(&s.url, &TABLES, sent, Duration::from_secs(120), &s.d);

    // A state table of an older layout (or lost) stops every flush; install-pipeline
    // rebuilds it from the raw tables and loading resumes, exact.
    query(&s.url, "ALTER TABLE views.t_total_mrel DROP COLUMN __shard");
    sent += post_varied(&s, &mut rng, 5);
    std::thread::sleep(Duration::from_secs(2));
    assert!(total_events(&s.url) < sent, "a flush committed without its view");
    let log = s.d.log_text();
    assert!(
        log.contains("42703: column") && log.contains("t_total_mrel") && log.contains("does not exist"),
        "the flush error names the cause:\n{log}"
    );
    let (ok, out) = cli(&s, &["install-pipeline"]);
    assert!(ok, "{out}");
    wait_for_events(&s.url, &TABLES, sent, Duration::from_secs(120), &s.d);
    assert_total_count_and_sum(&s.url);
    s.d.terminate();
}

/// Clicks and mouse moves inserted straight into the tables (the loaders,
/// hence the views, never see them) on the day `today - ago`.
fn insert_old_day(url: &str, today: i64, ago: i64, n: i64) {
    let day = chronos::lifecycle::day_str(today - ago);
    let common = "t, t, t, false, 'old-' || (i % 7), md5('{table}{day}' || i)::uuid, 0, 'k', jsonb_build_object('url', 'https://shop.example.com/p' || (i % 5), 'title', 'Old ' || (i % 3))";
    let common = |table: &str| common.replace("{day}", &day).replace("{table}", table);
    let base = "time, client_time, received_at, time_flagged, session_id, batch_id, position, key_id, metadata";
    let series = format!("FROM generate_series(0, {n} - 1) i, LATERAL (SELECT timestamptz '{day} 00:00:00+00' + i * interval '7.3 second') s(t)");
    query(
        url,
        &format!(
            "INSERT INTO events.clicks ({base}, element, buttons, x, y, selector)
             SELECT {}, (ARRAY['BUTTON', 'A', 'DIV'])[1 + i % 3], i % 4, i % 2000 - 100, i % 1000, CASE WHEN i % 3 = 0 THEN NULL ELSE 'main>button.b' || (i % 3) END {series}",
            common("c")
        ),
    );
    query(url, &format!("INSERT INTO events.mouse_moves ({base}, x, y) SELECT {}, i % 1500, i % 900 {series}", common("m")));
}

/// Clicks per element with `buttons <> 2` in the archive's files, read with the parquet crate.
fn archived_clicks_by_element(dir: &std::path::Path) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for f in std::fs::read_dir(dir.join("clicks")).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "parquet") {
            let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&p).unwrap()).unwrap();
            for b in builder.build().unwrap() {
                let b = b.unwrap();
                let element = arrow_array::cast::AsArray::as_string::<i32>(b.column_by_name("element").unwrap());
                let buttons = arrow_array::cast::AsArray::as_primitive::<arrow_array::types::Int64Type>(b.column_by_name("buttons").unwrap());
                for i in (0..b.num_rows()).filter(|&i| buttons.value(i) != 2) {
                    *out.entry(element.value(i).to_string()).or_insert(0) += 1;
                }
            }
        }
    }
    out
}

/// `chronos views rebuild` with `CHRONOS_FAILPOINT=rebuild:read`, killed
/// (SIGKILL) once it has read its first day into the shadows.
fn rebuild_killed_midway(config: &std::path::Path, views: &[&str]) {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chronos"))
        .arg("--config")
        .arg(config)
        .args(["views", "rebuild"])
        .args(views)
        .env("CHRONOS_FAILPOINT", "rebuild:read")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut said = Vec::new();
    // stderr is not a terminal: no progress bar, whole lines.
    for line in stderr.lines().map_while(Result::ok) {
        if line.contains("CHRONOS_FAILPOINT=rebuild:read: waiting to be killed") {
            std::thread::sleep(Duration::from_millis(500));
            child.kill().unwrap();
            child.wait().unwrap();
            return;
        }
        said.push(line);
    }
    child.wait().unwrap();
    panic!("the rebuild ended before its failpoint: {}", said.join("\n"));
}

fn a_rebuild_under_load_counts_postgres_and_the_archive_exactly(layout: Layout) {
    let s = stack(layout);
    // The CLI's config adds retention (chronosd's keeps 30 days: it archives nothing here).
    let archive = temp_dir();
    let config = archive.path().join("chronos.toml");
    std::fs::write(&config, format!("{}\n[retention]\nraw_days = 9\narchive = \"{}\"\n", s.toml, archive.path().join("a").display())).unwrap();
    let cli = |args: &[&str]| {
        let out = chronos_cli(&config, args);
        (out.status.success(), output_text(&out))
    };
    let (ok, out) = add_views(&s, TEST_VIEWS, &[]);
    assert!(ok, "{out}");
    let mut rng = Rng(0x5eed);
    let mut sent = post_varied(&s, &mut rng, 60);
    wait_for_events(&s.url, &TABLES, sent, Duration::from_secs(120), &s.d);

    // Killed midway under load: the old state serves on, exact.
    let poster = Poster::start(s.d.url("/v1/batch"), 5);
    rebuild_killed_midway(&config, &["t_clicks", "t_all", "element_counts"]);
    assert_eq!(count(&s.url, "SELECT count(*) FROM chronos.views WHERE rebuilding IS NOT NULL"), 3, "the killed run left its marks");
    let (ok, list) = cli(&["views", "list"]);
    assert!(ok && list.contains("a rebuild was cut short (the old state serves; `chronos views rebuild t_all` finishes it)"), "{list}");
    std::thread::sleep(Duration::from_millis(700));
    let (_, events) = poster.stop();
    sent += events;
    wait_for_events(&s.url, &TABLES, sent, Duration::from_secs(120), &s.d);
    check_test_views(&s.url);

    // Days the views never counted: one in PostgreSQL, two archived.
    let today = chronos::store::today();
    for ago in [2, 11, 12] {
        insert_old_day(&s.url, today, ago, 400);
    }
    let (ok, out) = cli(&["archive", "run"]);
    assert!(ok, "{out}");
    assert_eq!(count(&s.url, "SELECT count(*) FROM chronos.archives WHERE rows = 400 AND dropped_at IS NOT NULL"), 4, "{out}");
    // A broken view is repaired by its rebuild.
    query(&s.url, "UPDATE chronos.views SET broken = 'test', broken_at = now() WHERE name = 't_total'");
    query(&s.url, "UPDATE chronos.view_generation SET generation = generation + 1");

    // Every view rebuilt while batches arrive (and after the killed run).
    let names: Vec<String> = query(&s.url, "SELECT name FROM chronos.views ORDER BY name").iter().map(|r| r.get(0)).collect();
    let poster = Poster::start(s.d.url("/v1/batch"), 6);
    std::thread::sleep(Duration::from_millis(500));
    let mut args = vec!["views", "rebuild"];
    args.extend(names.iter().map(String::as_str));
    let started = Instant::now();
    // Paused 10 s after its first day: loaders commit between its snapshot and its swap.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chronos"))
        .arg("--config")
        .arg(&config)
        .args(&args)
        .env("CHRONOS_FAILPOINT", "rebuild:read:pause")
        .output()
        .unwrap();
    let (ok, out) = (out.status.success(), output_text(&out));
    assert!(ok && out.contains("1600 from the archive (4 files"), "{out}");
    eprintln!("rebuilt {} views under load in {:.1} s: {out}", names.len(), started.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_millis(500));
    let (acked, events) = poster.stop();
    let meanwhile: i64 = out.split(" groups written by the loaders meanwhile").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(acked > 10 && meanwhile > 0, "{acked} batches posted while the rebuild ran, {meanwhile} groups loaded into its new state: {out}");
    sent += events + 2 * 400; // the old day left in PostgreSQL
    wait_for_events(&s.url, &TABLES, sent, Duration::from_secs(120), &s.d);
    assert_eq!(count(&s.url, "SELECT count(*) FROM chronos.views WHERE rebuilding IS NOT NULL OR broken IS NOT NULL"), 0);
    assert_eq!(count(&s.url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'views' AND tablename LIKE '%_mrel_new'"), 0);

    // Clicks per element: PostgreSQL's rows plus a Parquet read of the archive.
    let mut want = archived_clicks_by_element(&archive.path().join("a"));
    assert_eq!(want.values().sum::<i64>(), 2 * 400 - 2 * 100, "buttons = 2 left out");
    for r in query(&s.url, "SELECT element, count(*) FROM events.clicks WHERE buttons <> 2 GROUP BY 1") {
        *want.entry(r.get(0)).or_insert(0) += r.get::<_, i64>(1);
    }
    let got: BTreeMap<String, i64> =
        query(&s.url, "SELECT element, sum(count)::bigint FROM views.t_clicks GROUP BY 1").iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, want);

    // The archived days back in PostgreSQL: every view equals the raw queries.
    let (from, to) = (chronos::lifecycle::day_str(today - 12), chronos::lifecycle::day_str(today - 11));
    for table in ["clicks", "mouse_moves"] {
        let (ok, out) = cli(&["archive", "restore", "--table", table, "--from", &from, "--to", &to]);
        assert!(ok && out.contains("400 of 400 rows restored"), "{out}");
    }
    check_test_views(&s.url);
    assert_views_equal_fresh_copies(&s.url, &config, &["p50", "p90"]);
}

on_both_layouts!(
    views_equal_the_raw_queries_also_after_kill_9,
    views_are_added_with_backfill_and_dropped_while_events_flow,
    a_rebuild_under_load_counts_postgres_and_the_archive_exactly
);

/// The string literals the views' SQL is generated with read back as the
/// same text from real PostgreSQL, with `standard_conforming_strings` on and
/// off (where a backslash in a plain `'…'` escapes its closing quote).
#[test]
fn view_literals_are_safe_whatever_standard_conforming_strings_is() {
    let dir = temp_dir();
    let pg = PostgresServer::start_in(dir.path()).expect("start PostgreSQL");
    let url = pg.url();
    let tricky = ["url", "it's", "a\\", "a\\' OR true --", "\\'; SELECT 1/0; --", "\\\\''\\", "é\n\t$$"];
    chronos::rt::block_on(async {
        let client = chronos::store::connect(&url).await.unwrap();
        for setting in ["on", "off"] {
            client.batch_execute(&format!("SET standard_conforming_strings = {setting}; SET escape_string_warning = off")).await.unwrap();
            for s in tricky {
                let lit = chronos::views::expr::literal(s);
                let sql = format!("SELECT {lit}, 'end'");
                let row = client.query_one(&sql, &[]).await.unwrap_or_else(|e| panic!("{sql} with standard_conforming_strings = {setting}: {e}"));
                assert_eq!((row.get::<_, String>(0).as_str(), row.get::<_, String>(1).as_str()), (s, "end"), "{sql}, {setting}");
            }
        }
    });
}
