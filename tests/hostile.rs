//! Hostile input against the real stack (Apache Kafka, PostgreSQL, chronosd
//! with its loaders): requests built to crash or hang chronosd, and records
//! built to stop a partition. For each: the answer (status and body), then
//! that chronosd is up, that a valid batch of the **same session** sent right
//! after is stored within 10 s, that both topics' lag returns to 0, and that
//! what was refused or set aside can be found. Classes: deep, huge, NUL,
//! invalid escapes, slow (stalled bodies), poisoned records on the events
//! topic, a view failing for good; and a property test that whatever receipt
//! accepts or dead-letters can be stored in a real PostgreSQL.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use chronos::stack::process::free_port;
use common::*;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{json, Value};

/// Batches of one session, with the loaders on: one partition per topic, so
/// a poisoned record and the session's next batch share a partition.
fn stack() -> Loading {
    start_loading(1, |kafka, url| config_toml_with_pg(kafka, free_port(), url, "", FAST_IPS))
}

/// Posts a valid 6-event batch of `session` and checks it is stored within 10 s.
fn next_batch_is_stored(s: &Loading, session: &str) {
    let b = batch(session, 6);
    let (status, body, _) = post(&client(), &s.d, &b, "198.51.100.7");
    assert_eq!(status, 200, "{body}");
    let id = b["batch"].as_str().unwrap().to_string();
    let until = Instant::now() + Duration::from_secs(10);
    while stored_batch(&s.url, &id) < 6 {
        assert!(Instant::now() < until, "the session's next batch was not stored within 10 s\n{}", s.d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(stored_batch(&s.url, &id), 6);
}

fn stored_batch(url: &str, batch: &str) -> i64 {
    ["pageviews", "clicks", "link_clicks", "mouse_moves", "key_presses", "form_submissions"]
        .iter()
        .map(|t| count(url, &format!("SELECT count(*) FROM events.{t} WHERE batch_id = '{batch}'")))
        .sum()
}

/// Waits until the loaders' stored offsets reach the end of both topics.
fn lag_returns_to_zero(s: &Loading) {
    for topic in [&s.kafka.topic, &s.kafka.dead_letter_topic] {
        let sql = format!("SELECT coalesce(sum(next_offset), 0)::bigint FROM chronos.offsets WHERE topic = '{topic}'");
        s.d.wait_until(&format!("{topic}'s lag to return to 0"), Duration::from_secs(20), || count(&s.url, &sql) == s.kafka.count(topic));
    }
}

/// What every hostile case ends with: chronosd up, the same session's next
/// batch stored within 10 s, and both topics' lag back to 0.
fn still_ingests(s: &Loading, session: &str) {
    healthy(s);
    next_batch_is_stored(s, session);
    lag_returns_to_zero(s);
}

fn healthy(s: &Loading) {
    let res = client().get(s.d.url("/healthz")).send().expect("chronosd answers");
    assert_eq!(res.status().as_u16(), 200);
    assert!(chronos::stack::process::alive(s.d.pid()), "chronosd is running");
}

/// `depth` balanced `[`…`]`: well-formed JSON, 1,000,000 bytes for 500,000
/// (under the 1 MiB decompressed cap), about 1 KB gzipped.
fn nested(depth: usize) -> Vec<u8> {
    [vec![b'['; depth], vec![b']'; depth]].concat()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// The receipt's parse on a thread with the stack of the production actors'
/// threads (actix arbiters take std's default, 2 MiB): 500,000 nested `[`
/// are refused before any value is built (before, the recursion aborted the
/// whole process, which no catch_unwind can stop).
#[test]
fn the_receipt_refuses_deep_nesting_on_a_production_sized_stack() {
    let config = chronos::config::Config::from_toml(&format!("[[keys]]\nid = \"t\"\nkey = \"{KEY}\"\nallow_no_origin = true\n")).unwrap();
    let shared = chronos::http::receipt::ReceiptShared::from_config(&config, std::sync::Arc::new(chronos::telemetry::Metrics::new()));
    let read = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let receive = |body: Vec<u8>, encoding| chronos::http::receipt::Receive {
                body,
                encoding,
                origin: None,
                client_ip: "203.0.113.9".parse().unwrap(),
                user_agent: None,
                received_at: now_ms(),
            };
            let plain = chronos::http::receipt::read_batch(&shared, receive(nested(500_000), chronos::http::body::Encoding::Identity));
            let objects = [b"{\"a\":".repeat(100_000), b"1".to_vec(), b"}".repeat(100_000)].concat();
            let objects = chronos::http::receipt::read_batch(&shared, receive(objects, chronos::http::body::Encoding::Identity));
            let zipped = chronos::http::receipt::read_batch(&shared, receive(gzip(&nested(500_000)), chronos::http::body::Encoding::Gzip));
            [plain, objects, zipped].map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
        })
        .unwrap();
    for outcome in read.join().expect("the reading thread did not overflow its stack") {
        let e = outcome.expect_err("refused");
        assert!(e.contains("nested deeper than 4 levels at byte"), "{e}");
    }
}

/// Bodies built to crash or hang chronosd's parse get a clear 4xx naming
/// what and where; chronosd stays up and the session's next batch is stored.
#[test]
fn hostile_bodies_are_refused_by_name_and_the_next_batch_is_stored() {
    let s = stack();
    let c = client();
    let text = [("Content-Type", "text/plain"), ("Origin", ORIGIN), ("X-Forwarded-For", "198.51.100.7")];
    let zipped = [("Content-Type", "text/plain"), ("Content-Encoding", "gzip"), ("Origin", ORIGIN), ("X-Forwarded-For", "198.51.100.7")];

    // Deep: the 1,006-byte request that killed chronosd (no write key at all).
    let bomb = gzip(&nested(500_000));
    assert!(bomb.len() < 2048, "{} bytes", bomb.len());
    let (status, body, _) = post_raw(&c, &s.d, bomb, &zipped);
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("too_deep")), "{body}");
    assert_eq!((body["error"]["offset"].as_u64(), body["error"]["limit"].as_u64()), (Some(4), Some(4)), "{body}");
    let deep_attr = batch("hostile-deep", 1).to_string().replace(r#""events":[["#, r#""events":[[[[[[["#).replace("]]}", "]]]]]]}");
    let (status, body, _) = post_raw(&c, &s.d, deep_attr.into_bytes(), &text);
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("too_deep")), "{body}");
    healthy(&s);

    // Huge: one byte over the body cap, and a gzip bomb past the decompressed cap.
    let (status, body, _) = post_raw(&c, &s.d, vec![b' '; 256 * 1024 + 1], &text);
    assert_eq!((status, body["error"]["code"].as_str(), body["error"]["limit"].as_u64()), (413, Some("body_too_large"), Some(262_144)), "{body}");
    let (status, body, _) = post_raw(&c, &s.d, gzip(&vec![b' '; 4 << 20]), &zipped);
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("decompressed_too_large")), "{body}");

    // Invalid escapes and NUL in the envelope: 400 naming where.
    let session = "hostile-bodies";
    let good = batch(session, 1).to_string();
    for (bad, code) in [
        (good.replace("\"Cart\"", r#""C\uZZZZart""#), "malformed_json"),
        // simd-json reads a lone surrogate as U+0000: refused as a NUL, naming the field.
        (good.replace("\"Cart\"", r#""\ud800""#), "invalid_batch"),
        (good.replace("\"Cart\"", r#""C\qart""#), "malformed_json"),
        (good.replace("\"Cart\"", r#""C\u0000art""#), "invalid_batch"),
        (good.replace("\"v\":1", &format!(r#""v":1,"{}":1"#, "x".repeat(100_000))), "invalid_batch"),
    ] {
        let (status, body, _) = post_raw(&c, &s.d, bad.into_bytes(), &text);
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some(code)), "{body}");
        assert!(body.to_string().len() < 2048, "the error body echoes at most a bounded part of the input: {body}");
    }
    still_ingests(&s, session);
}

/// Slow: clients that send headers and part of a body, then stall. Each
/// gets 408 `body_timeout` at the deadline (`http.body_timeout_secs`, 10 s by
/// default) instead of holding a connection and its buffer for ever, and
/// meanwhile the same session's batches are stored.
#[test]
fn stalled_bodies_get_408_at_the_deadline_and_batches_still_flow() {
    use std::io::Read;
    let s = stack();
    let started = Instant::now();
    let stalled: Vec<std::net::TcpStream> = (0..20)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(s.d.addr).unwrap();
            let head = format!(
                "POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nOrigin: {ORIGIN}\r\nContent-Length: 100000\r\n\r\n{{\"v\":1,"
            );
            c.write_all(head.as_bytes()).unwrap();
            c
        })
        .collect();
    let session = "hostile-slow";
    next_batch_is_stored(&s, session);
    for mut c in stalled {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("}}") {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) => panic!("no answer to a stalled body after {:?}: {e}", started.elapsed()),
            }
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"code\":\"body_timeout\""), "{answer}");
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(9) && took < Duration::from_secs(20), "answered after {took:?}");
    still_ingests(&s, session);
}

/// Events holding U+0000 are answered 200 and dead-lettered; before, the
/// dead-letter loader's insert failed (22P05) and retried forever, so every
/// later dead letter on its partition was never stored.
#[test]
fn nul_events_are_dead_lettered_and_the_dead_letter_partition_keeps_loading() {
    let s = stack();
    let session = "hostile-nul";
    let t = now_ms();
    for round in 0..2 {
        let mut b = batch(session, 1);
        b["events"] = json!([
            ["clicks", t, "BU\u{0}TTON", 1, 1, 2, null],
            ["no\u{0}pe", t],
            ["key_presses", t, "k\u{0}", "INPUT"],
            ["mouse_moves", t, round, 1],
        ]);
        let (status, body, _) = post(&client(), &s.d, &b, "198.51.100.7");
        assert_eq!(status, 200, "{body}");
        assert_eq!((body["accepted"].as_u64(), body["rejected"].as_u64()), (Some(1), Some(3)), "{body}");
        let id = b["batch"].as_str().unwrap();
        wait_rows(&s.url, &format!("SELECT count(*) FROM chronos.dead_letters WHERE batch_id = '{id}'"), 3, Duration::from_secs(10), &s.d);
    }
    // What PostgreSQL cannot hold is escaped in the text and jsonb columns.
    let rows = query(&s.url, "SELECT reason, event::text FROM chronos.dead_letters WHERE reason LIKE '%no%pe%' ORDER BY id");
    assert_eq!(rows.len(), 2);
    let (reason, event): (String, String) = (rows[0].get(0), rows[0].get(1));
    assert!(reason.contains(r"no\u0000pe"), "{reason}");
    assert!(event.contains(r"no\\u0000pe"), "{event}");
    let listed = output_text(&chronos_cli(&s.d.config_path(), &["dead-letters", "list"]));
    assert!(listed.contains("unknown or disabled event type"), "{listed}");
    still_ingests(&s, session);
}

/// Records PostgreSQL refuses for good, written to the events topic by any
/// producer (a key id with a NUL, a text attribute with a NUL): each is set
/// aside as a dead letter with its raw bytes and the SQLSTATE, and the
/// partition goes on. Before, the loader retried the flush forever and the
/// session's next batch, answered 200, was never stored. chronosd is killed
/// (-9) while it works through them: nothing is stored twice.
#[test]
fn a_record_postgres_refuses_is_set_aside_once_and_the_partition_goes_on() {
    let s = stack();
    let session = "hostile-poison";
    next_batch_is_stored(&s, session);
    let first = s.kafka.read_all(&s.kafka.topic, 1, Duration::from_secs(10)).remove(0);

    // The same record as another batch three times: bad key id, good, bad text.
    let copy = |edit: &dyn Fn(&mut Value)| {
        let mut v = first.value.clone();
        v["batch_id"] = json!(uuid::Uuid::new_v4().to_string());
        edit(&mut v);
        v
    };
    let bad_key = copy(&|v| v["key_id"] = json!("k\u{0}"));
    let good = copy(&|_| {});
    let bad_text = copy(&|v| {
        let events = v["events"].as_array_mut().unwrap();
        let click = events.iter_mut().find(|e| e[0] == "clicks").unwrap();
        click[2] = json!("BU\u{0}TTON");
    });
    // chronos import now refuses the first at the door, naming the line and the field; nothing is sent.
    let file = s.d.config_path().with_file_name("poison.jsonl");
    std::fs::write(&file, format!("{}\n", serde_json::to_string(&bad_key).unwrap())).unwrap();
    let before = s.kafka.count(&s.kafka.topic);
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_chronos")).arg("--config").arg(s.d.config_path()).arg("import").arg(&file).output().unwrap();
    let said = output_text(&out);
    assert!(!out.status.success() && said.contains("line 1") && said.contains("`key_id`: must be 1-64"), "{said}");
    assert_eq!(s.kafka.count(&s.kafka.topic), before, "nothing of it was sent");

    // Any other producer can still write them: the loaders must cope.
    let producer: BaseProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", &s.kafka.bootstrap).create().unwrap();
    let mut raws = Vec::new();
    for v in [&bad_key, &good, &bad_text] {
        let raw = serde_json::to_vec(v).unwrap();
        let mut headers = rdkafka::message::OwnedHeaders::new();
        for (k, h) in &first.headers {
            headers = headers.insert(rdkafka::message::Header { key: k, value: Some(h.as_bytes()) });
        }
        producer.send(BaseRecord::to(&s.kafka.topic).key(session).payload(&raw).headers(headers)).unwrap();
        raws.push(raw);
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    // A crash while the loader works through them, then the same config again.
    let toml = std::fs::read_to_string(s.d.config_path()).unwrap();
    let mut s = s;
    std::thread::sleep(Duration::from_millis(300));
    s.d.kill9();
    s.d = Chronosd::start(&toml);
    s.d.wait_ready(Duration::from_secs(60));
    // The killed member's session has to expire before the partition is
    // assigned again (load.session_timeout_ms): wait for the good record
    // first; the 10 s of the next batch then count from a running loader.
    let good_id = good["batch_id"].as_str().unwrap().to_string();
    s.d.wait_until("the good record between the two to be stored", Duration::from_secs(40), || stored_batch(&s.url, &good_id) == 6);
    assert_eq!(stored_batch(&s.url, &good_id), 6, "the good record between the two is stored, once");
    // Stored in offset order: once it is, every record before it was loaded or set aside.
    next_batch_is_stored(&s, session);
    let aside = query(
        &s.url,
        &format!(
            "SELECT sqlstate, raw, reason FROM chronos.dead_letters WHERE topic = '{}' AND sqlstate IS NOT NULL ORDER BY \"offset\"",
            s.kafka.topic
        ),
    );
    assert_eq!(aside.len(), 2, "each set aside once");
    for (row, raw) in aside.iter().zip([&raws[0], &raws[2]]) {
        let (sqlstate, stored_raw, reason): (String, Vec<u8>, String) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(sqlstate, "22021", "{reason}");
        assert!(reason.starts_with("22021: invalid byte sequence"), "{reason}");
        assert_eq!(&stored_raw, raw, "the record's bytes, verbatim");
    }
    let metric = format!("chronos_load_set_aside_total{{topic=\"{}\"}}", s.kafka.topic);
    assert!(s.d.metric(&metric).is_some_and(|n| n >= 1.0), "{metric} in /metrics");
    let listed = output_text(&chronos_cli(&s.d.config_path(), &["dead-letters", "list"]));
    assert!(listed.contains("22021: invalid byte sequence"), "{listed}");
    still_ingests(&s, session);
}

/// A continuous view whose statement fails for good is marked broken (its
/// upserts stop; logged, counted, listed) and the raw rows keep loading;
/// the other views are still maintained.
#[test]
fn a_view_failing_for_good_is_marked_broken_and_the_rows_keep_loading() {
    let s = stack();
    let session = "hostile-view";
    next_batch_is_stored(&s, session);
    let clicks_before = count(&s.url, "SELECT count(*) FROM views.element_counts_mrel");
    assert!(clicks_before > 0);
    // Every later upsert of this view now violates a constraint (23514).
    execute_batch(&s.url, "ALTER TABLE views.element_counts_mrel ADD CONSTRAINT hostile CHECK (false) NOT VALID");
    let minutes = "SELECT coalesce(sum(events), 0)::bigint FROM views.events_per_minute";
    let before = count(&s.url, minutes);
    next_batch_is_stored(&s, session);
    s.d.wait_until("the view to be marked broken", Duration::from_secs(10), || {
        count(&s.url, "SELECT count(*) FROM chronos.views WHERE name = 'element_counts' AND broken LIKE '23514:%'") == 1
    });
    s.d.wait_until("the other views to count the batch", Duration::from_secs(10), || count(&s.url, minutes) == before + 6);
    assert!(s.d.log_text().contains("Continuous view failed for good"), "logged at ERROR");
    assert_eq!(s.d.metric("chronos_views_broken_total{view=\"element_counts\"}"), Some(1.0));
    let listed = output_text(&chronos_cli(&s.d.config_path(), &["views", "list"]));
    assert!(listed.contains("BROKEN, not maintained"), "{listed}");
    // Later batches load without it.
    still_ingests(&s, session);
}

/// Text a hostile client might send in any string: every char, NUL and
/// control characters included, more often than chance would give them.
fn hostile_text(max: usize) -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let piece = prop_oneof![
        3 => any::<char>().prop_map(String::from),
        1 => Just("\u{0}".to_string()),
        1 => Just("\u{1b}[2J\r".to_string()),
        1 => Just("\\u0000'\"\\".to_string()),
        1 => Just("\u{202e}é漢🙂".to_string()),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(move |p| {
        let mut s: String = p.concat();
        while s.len() > max {
            s.pop();
        }
        s
    })
}

fn hostile_event() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let t = now_ms() - 1000;
    prop_oneof![
        (hostile_text(16), proptest::option::of(hostile_text(200))).prop_map(move |(n, r)| json!(["pageviews", t, n, r])),
        (hostile_text(64), 0i64..=31, proptest::option::of(hostile_text(100))).prop_map(move |(e, b, s)| json!(["clicks", t, e, b, 1, 2, s])),
        (proptest::option::of(hostile_text(100)), proptest::option::of(hostile_text(100))).prop_map(move |(l, h)| json!(["link_clicks", t, l, h])),
        (proptest::option::of(hostile_text(32)), hostile_text(64)).prop_map(move |(k, e)| json!(["key_presses", t, k, e])),
        (proptest::option::of(hostile_text(50)), proptest::collection::vec(hostile_text(20), 0..6)).prop_map(move |(f, fields)| json!([
            "form_submissions",
            t,
            f,
            null,
            fields
        ])),
        // Rejected at receipt: an unknown type's name and junk values go to the dead letters.
        (hostile_text(40), hostile_text(40)).prop_map(move |(n, v)| json!([n, t, v])),
        hostile_text(40).prop_map(move |v| json!(["mouse_moves", t, v, {"deep": v}])),
    ]
}

/// Every record receipt accepts, and every dead letter it produces, can be
/// stored: decoded as the loaders decode them and written to a real
/// PostgreSQL (COPY BINARY, the batch's page, the dead letters) in one
/// transaction that commits. A NUL that receipt let through, or a dead letter
/// PostgreSQL refuses, fails here instead of stalling a partition.
#[test]
// The one client is borrowed by one case at a time, on a current-thread runtime's block_on.
#[allow(clippy::await_holding_refcell_ref)]
fn every_record_and_dead_letter_receipt_produces_can_be_stored() {
    use chronos::load::decode::{decode_batch, decode_dead_letter, TimePolicy};
    use chronos::store::internals::{Internals, Pages};
    use proptest::prelude::*;
    use proptest::test_runner::{Config as RunnerConfig, TestRunner};

    let dir = temp_dir();
    let pg = chronos::stack::postgres::PostgresServer::start_in(dir.path()).expect("start PostgreSQL");
    let config = chronos::config::Config::from_toml(&format!(
        "[limits]\nper_key_per_sec = 1000000000\nper_key_burst = 1000000000\n[[keys]]\nid = \"t\"\nkey = \"{KEY}\"\nallow_no_origin = true\n"
    ))
    .unwrap();
    let shared = chronos::http::receipt::ReceiptShared::from_config(&config, std::sync::Arc::new(chronos::telemetry::Metrics::new()));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut client = rt.block_on(chronos::store::connect(&pg.url())).unwrap();
    let load = chronos::config::LoadConfig { timescaledb: chronos::config::Timescale::Never, ..Default::default() };
    rt.block_on(chronos::install(&mut client, &shared.catalog, &load)).unwrap();
    let internals = rt.block_on(Internals::prepare(&client, &shared.catalog)).unwrap();
    let policy = TimePolicy { max_past_ms: 86_400_000, max_future_ms: 86_400_000 };
    let client = std::cell::RefCell::new(client);
    let (records, letters) = (std::cell::Cell::new(0), std::cell::Cell::new(0));

    let mut runner = TestRunner::new(RunnerConfig { cases: 64, failure_persistence: None, ..RunnerConfig::default() });
    let strategy = (proptest::collection::vec(hostile_event(), 1..12), hostile_text(300), hostile_text(64));
    runner
        .run(&strategy, |(events, title, language)| {
            // A NUL in a page value refuses the whole batch (400, tested above): keep the page storable.
            let (title, language) = (title.replace('\0', ""), language.replace('\0', ""));
            let b = json!({
                "v": 1, "key": KEY, "batch": uuid::Uuid::new_v4().to_string(), "sent_at": now_ms(), "session": "s-prop",
                "page": {"url": "https://example.com/", "title": title, "language": language}, "events": events,
            });
            let msg = chronos::http::receipt::Receive {
                body: b.to_string().into_bytes(),
                encoding: chronos::http::body::Encoding::Identity,
                origin: None,
                client_ip: "203.0.113.9".parse().unwrap(),
                user_agent: Some(common::BROWSER_UA.into()),
                received_at: now_ms(),
            };
            let accepted = chronos::http::receipt::read_batch(&shared, msg).map_err(|e| TestCaseError::fail(format!("refused: {e}")))?;
            rt.block_on(async {
                let mut client = client.borrow_mut();
                let tx = client.transaction().await.unwrap();
                if let Some(mut record) = accepted.batch.record {
                    let decoded = decode_batch(&mut record, &shared.catalog, policy).unwrap();
                    let mut pages = Pages::default();
                    pages.push(decoded.batch_id, now_ms(), "s-prop", decoded.page.clone().unwrap());
                    internals.store_pages(&tx, &pages).await.map_err(|e| TestCaseError::fail(format!("page: {e:?}")))?;
                    for t in &decoded.tables {
                        internals.copy_rows(&tx, t.table, &t.tuples).await.map_err(|e| TestCaseError::fail(format!("COPY: {e:?}")))?;
                    }
                    let dead: Vec<(i64, _)> = decoded.dead.into_iter().map(|d| (0, d)).collect();
                    internals
                        .insert_dead_letters(&tx, "events", 0, &dead)
                        .await
                        .map_err(|e| TestCaseError::fail(format!("load dead letters: {e:?}")))?;
                    records.set(records.get() + 1);
                }
                if let Some(mut dead) = accepted.batch.dead_letter {
                    let decoded: Vec<(i64, _)> = decode_dead_letter(&mut dead).unwrap().into_iter().map(|d| (1, d)).collect();
                    let n = internals
                        .insert_dead_letters(&tx, "dead", 0, &decoded)
                        .await
                        .map_err(|e| TestCaseError::fail(format!("dead letters: {e:?}")))?;
                    prop_assert_eq!(n as usize, decoded.len());
                    letters.set(letters.get() + 1);
                }
                tx.commit().await.map_err(|e| TestCaseError::fail(format!("commit: {e:?}")))?;
                Ok(())
            })
        })
        .unwrap();
    let (records, letters) = (records.get(), letters.get());
    assert!(records > 10 && letters > 10, "the cases reached both paths: {records} records, {letters} dead-letter records");
}

/// `chronos reprocess` (a new path over what clients sent) reads each page's
/// `user_agent`. Receipt lets through only scalars of at most 2048 bytes
/// (deeper or longer: 400, checked first), so the run gets the worst of
/// those: the longest (the rule's marker past the 512 characters read), a
/// number, escapes, controls and bidi marks, and one with the marker. It
/// finishes, flags exactly the marked batch, changes no event count, and the
/// same session's next batch is still stored and reprocessed.
#[test]
fn hostile_pages_go_through_reprocess_and_the_next_batch_is_stored() {
    let s = stack();
    let session = "hostile-reprocess";
    let browser = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";
    for (ua, code) in [(json!([[["HostileMarker"]]]), "too_deep"), (json!("x".repeat(2049)), "invalid_batch"), (json!({"a": 1}), "invalid_batch")] {
        let mut b = batch(session, 6);
        b["page"]["user_agent"] = ua;
        let (status, body, _) = post(&client(), &s.d, &b, "198.51.100.7");
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some(code)), "{body}");
    }
    let long = format!("{browser} {}", "x".repeat(1800));
    let agents = [
        json!(format!("{long} HostileMarker")),
        json!(12345),
        json!(format!("{browser} \"q\" \\ \u{202e}\u{7}\t\u{ffff} é")),
        json!(format!("{browser} HostileMarker")),
    ];
    let mut ids = Vec::new();
    for ua in &agents {
        let mut b = batch(session, 6);
        b["page"]["user_agent"] = ua.clone();
        let (status, body, _) = post(&client(), &s.d, &b, "198.51.100.7");
        assert_eq!(status, 200, "{body}");
        ids.push(b["batch"].as_str().unwrap().to_string());
    }
    for id in &ids {
        s.d.wait_until("a hostile page's batch stored", Duration::from_secs(20), || stored_batch(&s.url, id) == 6);
    }
    let flagged = |id: &str| count(&s.url, &format!("SELECT count(*) FROM events.clicks WHERE batch_id = '{id}' AND is_bot"));
    assert_eq!(ids.iter().map(|id| flagged(id)).sum::<i64>(), 0, "no rule names the marker yet");

    // The CLI's config: chronosd's, with a bot rule for the marker.
    let config = s.d.config_path().with_file_name("reprocess.toml");
    let toml = std::fs::read_to_string(s.d.config_path()).unwrap();
    std::fs::write(&config, format!("{toml}\n[enrich]\nextra_bot_patterns = [\"HostileMarker\"]\n")).unwrap();
    let today = chronos::lifecycle::day_str(chronos::store::today());
    let reprocess = || {
        let out = chronos_cli(&config, &["reprocess", "--from", &today, "--to", &today, "--by", "test"]);
        assert!(out.status.success(), "{}", output_text(&out));
    };
    let events = |id: &str| stored_batch(&s.url, id);
    reprocess();
    assert_eq!(ids.iter().map(|id| flagged(id)).collect::<Vec<_>>(), [0, 0, 0, 1], "only the marked string agent within 512 characters");
    assert!(agents[0].as_str().unwrap().len() <= 2048);
    assert!(ids.iter().all(|id| events(id) == 6), "no event lost or doubled");

    still_ingests(&s, session);
    let mut next = batch(session, 6);
    next["page"]["user_agent"] = json!(format!("{browser} HostileMarker"));
    let (status, body, _) = post(&client(), &s.d, &next, "198.51.100.7");
    assert_eq!(status, 200, "{body}");
    let id = next["batch"].as_str().unwrap().to_string();
    s.d.wait_until("the session's next batch stored", Duration::from_secs(20), || events(&id) == 6);
    reprocess();
    assert_eq!(flagged(&id), 1, "the next batch is reprocessed too");
}
