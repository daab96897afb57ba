//! Historical import against the real stack (Apache Kafka, PostgreSQL,
//! chronosd's loaders): `chronos import` of JSON lines (plain, gzip, from a
//! file and from standard input) and of Kafka records, and `POST /v1/import`
//! with a server key. Old events keep their times (no clamp, no clock
//! correction) even weeks before the loaders' partitions; invalid events are
//! dead-lettered; events outside the import window are refused; a second run
//! stores nothing twice and says so.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use chronos::stack::process::free_port;
use common::*;
use serde_json::{json, Value};

const SERVER_KEY: &str = "sk_import_0123456789abcdef";
const DAY: i64 = 86_400_000;

/// chronosd with its loaders, a server key, archiving off (days weeks old
/// stay in PostgreSQL) and a 60-day import window.
fn import_toml(kafka: &Kafka, pg_url: &str) -> String {
    let extra = format!(
        "[[keys]]\nid = \"importer\"\nkey = \"{SERVER_KEY}\"\nkind = \"server\"\n\n[import]\nmax_past_days = 60\nbatch_events = 50\n\n[retention]\nraw_days = 0\n"
    );
    config_toml_with_pg(kafka, free_port(), pg_url, "", &format!("{extra}{FAST_IPS}"))
}

/// `n` event lines of sessions `s-0`… spread from 45 days ago to now, every
/// built-in type; returns the lines and their times.
fn event_lines(prefix: &str, n: usize) -> (Vec<String>, Vec<i64>) {
    let now = now_ms();
    let (mut lines, mut times) = (Vec::new(), Vec::new());
    for i in 0..n {
        let t = now - 45 * DAY + (i as i64) * (45 * DAY / n as i64);
        let session = format!("{prefix}-{}", i / 40);
        let page = json!({"url": format!("https://shop.example.com/p/{}", i / 40), "title": "Old page"});
        let mut e = match i % 3 {
            0 => json!({"type": "pageviews", "navigation": "navigate", "referrer": null}),
            1 => json!({"type": "clicks", "element": "BUTTON", "buttons": 1, "x": i, "y": 7, "selector": "main>button"}),
            _ => json!({"type": "form_submissions", "form_id": "signup", "action": "/join", "fields": ["email"]}),
        };
        e["time"] = json!(t);
        e["session_id"] = json!(session);
        e["page"] = page;
        e["client_ip"] = json!("198.51.100.23");
        lines.push(e.to_string());
        times.push(t);
    }
    (lines, times)
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn stored(url: &str, prefix: &str) -> i64 {
    let q = |t: &str| format!("SELECT count(*) FROM events.{t} WHERE session_id LIKE '{prefix}-%'");
    ["pageviews", "clicks", "form_submissions"].iter().map(|t| count(url, &q(t))).sum()
}

fn run_import(config: &Path, args: &[&str], stdin: Option<&[u8]>) -> (i32, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_chronos"));
    cmd.arg("--config").arg(config).arg("import").args(args);
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), output_text(&out))
}

#[test]
fn chronos_import_stores_old_events_once_with_their_times_and_dead_letters_the_rest() {
    let stack = start_loading(2, import_toml);
    let (d, url) = (&stack.d, &stack.url);
    let config = d.config_path();
    let dir = temp_dir();

    // 600 valid events, 45 days old to now, then three bad lines.
    let (mut lines, times) = event_lines("imp", 600);
    lines.push("{not json".into());
    lines.push(
        json!({"type": "clicks", "time": now_ms(), "session_id": "imp-bad", "page": {"url": "https://shop.example.com/"},
        "element": "BUTTON", "buttons": 1, "x": "left", "y": 1})
        .to_string(),
    );
    lines.push(
        json!({"type": "pageviews", "time": now_ms() - 90 * DAY, "session_id": "imp-bad", "page": {"url": "https://shop.example.com/"},
        "navigation": "navigate"})
        .to_string(),
    );
    let file = dir.path().join("events.jsonl");
    write_lines(&file, &lines);

    let (code, out) = run_import(&config, &[file.to_str().unwrap(), "--wait", "120"], None);
    assert_eq!(code, 4, "some lines were rejected: exit 4\n{out}\n{}", d.log_text());
    assert!(out.contains("603 lines; 600 events accepted in 16 batches, 3 rejected, 0 duplicate"), "{out}");
    assert!(out.contains("stored by the loaders: 16 batches"), "{out}");
    assert!(out.contains("rejected: line 601: not JSON"), "{out}");
    assert!(out.contains("rejected: line 602, event[4] `x`"), "{out}");
    assert!(out.contains("rejected: line 603, event[1]: ") && out.contains("outside the import window (import.max_past_days = 60"), "{out}");
    assert_eq!(stored(url, "imp"), 600);

    // Every time as given, to the millisecond, none flagged, weeks before the partitions the loaders keep.
    let rows = query(
        url,
        "SELECT (extract(epoch FROM time) * 1000)::bigint, time_flagged, client_ip FROM events.pageviews WHERE session_id LIKE 'imp-%' ORDER BY time",
    );
    let expected: Vec<i64> = times.iter().enumerate().filter(|(i, _)| i % 3 == 0).map(|(_, t)| *t).collect();
    assert_eq!(rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>(), expected);
    assert!(rows.iter().all(|r| !r.get::<_, bool>(1)), "no imported time is flagged");
    assert_eq!(rows[0].get::<_, Option<String>>(2).as_deref(), Some("198.51.100.0"), "client IPs anonymised");
    assert_eq!(count(url, "SELECT count(*) FROM chronos.dead_letters WHERE stage = 'receipt'"), 2, "the bad attribute and the old event");
    assert_eq!(count(url, "SELECT count(*) FROM chronos.seen_batches WHERE NOT kept"), 0, "imported batch ids are kept for good");
    assert_eq!(count(url, "SELECT count(*) FROM chronos.seen_batches WHERE kept"), 15);

    // Again, and gzip-compressed through standard input: same lines, same batches, nothing sent.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    for (args, stdin) in [(vec![file.to_str().unwrap()], None), (vec!["-"], Some(&gz[..]))] {
        let (code, out) = run_import(&config, &args, stdin);
        assert_eq!(code, 4, "{out}");
        assert!(out.contains("0 events accepted in 0 batches, 1 rejected, 602 duplicate (16 batches stored before)"), "{out}");
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stored(url, "imp"), 600, "nothing stored twice");

    // A dry run checks and counts without sending.
    let (more, _) = event_lines("dry", 10);
    let dry = dir.path().join("dry.jsonl");
    write_lines(&dry, &more);
    let (code, out) = run_import(&config, &[dry.to_str().unwrap(), "--dry-run"], None);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("checked (dry run, nothing sent)") && out.contains("10 events accepted"), "{out}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(stored(url, "dry"), 0);
}

#[test]
fn kafka_records_import_with_their_own_batch_ids_and_times() {
    let stack = start_loading(1, import_toml);
    let (d, url) = (&stack.d, &stack.url);
    let dir = temp_dir();
    // A record received 20 days ago from a client whose clock ran 2 s behind;
    // its schema lists attributes in another order than the catalog.
    let received = now_ms() - 20 * DAY;
    let record = json!({
        "v": 1, "batch_id": uuid::Uuid::new_v4().to_string(), "session_id": "rec-1", "key_id": "shop",
        "sent_at": received - 2_100, "received_at": received, "client_ip": "203.0.113.0", "user_agent": "Mozilla/5.0 old",
        "page": {"url": "https://shop.example.com/old"},
        "schema": {"clicks": ["selector", "y", "x", "buttons", "element"]},
        "events": [["clicks", received - 2_500, "a.buy", 20, 10, 1, "A"], ["clicks", received - 2_400, null, 21, 11, 1, "A"]],
    });
    let file = dir.path().join("records.jsonl");
    write_lines(&file, &[record.to_string()]);
    for (round, want) in [
        (1, "2 events accepted in 1 batches, 0 rejected, 0 duplicate"),
        (2, "0 events accepted in 0 batches, 0 rejected, 2 duplicate (1 batches stored before)"),
    ] {
        let (code, out) = run_import(&d.config_path(), &[file.to_str().unwrap(), "--wait", "60"], None);
        assert_eq!(code, 0, "round {round}: {out}");
        assert!(out.contains(want), "round {round}: {out}");
    }
    let rows = query(url, "SELECT (extract(epoch FROM time) * 1000)::bigint, key_id, x, y, selector, batch_id::text FROM events.clicks WHERE session_id = 'rec-1' ORDER BY time");
    assert_eq!(rows.len(), 2);
    // The loaders' clock correction, from the record's own receipt: +2.1 s.
    assert_eq!(rows[0].get::<_, i64>(0), received - 2_500 + 2_100);
    assert_eq!((rows[0].get::<_, String>(1), rows[0].get::<_, i64>(2), rows[0].get::<_, i64>(3)), ("shop".into(), 10, 20));
    assert_eq!(rows[0].get::<_, Option<String>>(4).as_deref(), Some("a.buy"));
    assert_eq!(rows[0].get::<_, String>(5), record["batch_id"].as_str().unwrap());
}

#[test]
fn post_v1_import_takes_a_server_key_only_and_stores_once() {
    let stack = start_loading(1, import_toml);
    let (d, url) = (&stack.d, &stack.url);
    let c = client();
    let (lines, _) = event_lines("http", 120);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(lines.join("\n").as_bytes()).unwrap();
    let body = gz.finish().unwrap();
    let send = |auth: Option<&str>, origin: Option<&str>| -> (u16, Value) {
        let mut r = c.post(d.url("/v1/import")).header("Content-Encoding", "gzip").body(body.clone());
        if let Some(a) = auth {
            r = r.header("Authorization", format!("Bearer {a}"));
        }
        if let Some(o) = origin {
            r = r.header("Origin", o);
        }
        let res = r.send().unwrap();
        (res.status().as_u16(), res.json().unwrap())
    };
    let (status, v) = send(None, None);
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("no_key")), "{v}");
    let (status, v) = send(Some(KEY), None);
    assert_eq!((status, v["error"]["code"].as_str()), (403, Some("not_a_server_key")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("`shop` is a browser key"), "{v}");
    let (status, v) = send(Some(SERVER_KEY), Some(ORIGIN));
    assert_eq!((status, v["error"]["code"].as_str()), (403, Some("server_key_from_page")), "{v}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(stored(url, "http"), 0, "refused requests keep nothing");

    let (status, v) = send(Some(SERVER_KEY), None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["lines"].as_u64(), v["accepted"].as_u64(), v["batches"].as_u64(), v["rejected"].as_u64()),
        (Some(120), Some(120), Some(3), Some(0)),
        "{v}"
    );
    d.wait_until("the import stored", Duration::from_secs(60), || stored(url, "http") == 120);
    let (status, v) = send(Some(SERVER_KEY), None);
    assert_eq!(status, 200, "{v}");
    assert_eq!((v["accepted"].as_u64(), v["duplicate_batches"].as_u64(), v["duplicate_events"].as_u64()), (Some(0), Some(3), Some(120)), "{v}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stored(url, "http"), 120, "nothing stored twice");
    let key_ids = query(url, "SELECT DISTINCT key_id FROM events.clicks WHERE session_id LIKE 'http-%'");
    assert_eq!(key_ids.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>(), vec!["importer".to_string()]);

    // A server key on the batch endpoint: from a back end yes, from a page no.
    let mut b = batch("srv-1", 3);
    b["key"] = json!(SERVER_KEY);
    let (status, _, _) = post_raw(&c, d, b.to_string().into_bytes(), &[("Content-Type", "application/json")]);
    assert_eq!(status, 200);
    let (status, v, _) = post_raw(&c, d, b.to_string().into_bytes(), &[("Content-Type", "application/json"), ("Origin", ORIGIN)]);
    assert_eq!((status, v["error"]["code"].as_str()), (403, Some("server_key_from_page")), "{v}");
}
