//! The browser tracker in headless Chromium (Debian `chromium` + playwright-core)
//! against real chronosd, broker and PostgreSQL: tracker/test/browser.mjs drives
//! a multi-page site (bundle from `chronos tracker build`) and an SPA (ES module,
//! `init` at run time) and checks what the browser can see (beacon vs fetch,
//! retries, statuses); this test checks what landed in the tables: every event
//! type with its values, SPA pageviews once each, no batch spanning two pages,
//! beacons on navigation, hidden tab and close, 503/429-then-200 and the outbox
//! stored exactly once, the outbox bound, split large buffers, GPC/DNT, and no
//! typed text anywhere in the database or the topics.
//! Missing node, chromium or tracker/node_modules fail the test (never skip).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chronos::stack::postgres::PostgresServer;
use chronos::stack::process::free_port;
use common::*;
use serde_json::{json, Value};

const BROWSER_KEY: &str = "wk_browser_0123456789abcdef";
const SECRETS: [&str; 5] = ["tx-SECRET-alpha", "em-SECRET-echo@example.com", "pw-SECRET-bravo", "ta-SECRET-charlie", "ce-SECRET-delta"];

fn tracker_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tracker")
}

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// Fails (does not skip) when the browser tool chain is missing, saying how to get it.
fn require_browser_tools() {
    let node = Command::new("node").arg("--version").output();
    assert!(node.as_ref().is_ok_and(|o| o.status.success()), "node is missing: install Node.js 18+ (see .ci/setup): {node:?}");
    assert!(Path::new(&chromium()).exists(), "{} is missing: `apt-get install chromium` (see .ci/setup) or set CHROMIUM", chromium());
    assert!(
        tracker_dir().join("node_modules/playwright-core").exists(),
        "tracker/node_modules is missing: run `npm ci --prefix tracker` (see .ci/setup)"
    );
}

/// Rows of `sql` as JSON objects (one per row).
fn rows(url: &str, sql: &str) -> Vec<Value> {
    query(url, &format!("SELECT to_jsonb(r)::text FROM ({sql}) r")).iter().map(|r| serde_json::from_str(&r.get::<_, String>(0)).unwrap()).collect()
}

const TABLES: [&str; 8] = ["pageviews", "clicks", "link_clicks", "mouse_moves", "key_presses", "form_submissions", "signup", "note"];

/// Every event of a session, over all tables: (table, batch id, page url).
fn events_of_session(url: &str, session: &str) -> Vec<Value> {
    let union = TABLES
        .iter()
        .map(|t| {
            format!(
                "SELECT '{t}' AS type, batch_id::text AS batch, metadata->>'url' AS url, client_time FROM events.{t} WHERE session_id = '{session}'"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    rows(url, &format!("SELECT type, batch, url FROM ({union}) u ORDER BY client_time"))
}

fn batch_rows(url: &str, batch: &str) -> (i64, i64) {
    let union = TABLES.iter().map(|t| format!("SELECT position FROM events.{t} WHERE batch_id = '{batch}'")).collect::<Vec<_>>().join(" UNION ALL ");
    (count(url, &format!("SELECT count(*) FROM ({union}) u")), count(url, &format!("SELECT count(DISTINCT position) FROM ({union}) u")))
}

#[test]
fn tracker_in_chromium_lands_every_event_type_privately_and_exactly_once() {
    require_browser_tools();
    let pg_dir = temp_dir();
    let pg = PostgresServer::start_in(pg_dir.path()).expect("start PostgreSQL");
    let pg_url = pg.url();
    let kafka = Kafka::start(2);
    let port = free_port();
    let site_port = free_port();
    let site = format!("http://127.0.0.1:{site_port}");
    let extra = format!(
        r#"
[[keys]]
id = "browser"
key = "{BROWSER_KEY}"
origins = ["{site}"]

[events.signup]
attributes = [{{ name = "plan", type = "text", max_len = 32 }}, {{ name = "seats", type = "int", nullable = true }}]

[events.note]
attributes = [{{ name = "text", type = "text", max_len = 2048 }}]

[tracker]
endpoint = "http://127.0.0.1:{port}"
key_id = "browser"
mouse_interval_ms = 100
flush_interval_ms = 600000
"#
    );
    let toml = config_toml_with_pg(&kafka, port, &pg_url, "", &extra);
    let d = Chronosd::start(&toml);
    d.wait_ready(Duration::from_secs(30));

    // The bundle exactly as `chronos tracker build` writes it from this config.
    let config = chronos::config::Config::from_toml(&toml).unwrap();
    let dir = temp_dir();
    let bundle = dir.path().join("chronos.js");
    std::fs::write(dir.path().join("chronos.toml"), &toml).unwrap();
    let out = chronos_cli(&dir.path().join("chronos.toml"), &["tracker", "build", "--out", bundle.to_str().unwrap()]);
    assert!(out.status.success(), "chronos tracker build: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&bundle).unwrap(), chronos::tracker::build(&config).unwrap());
    let options = chronos::tracker::init_options(&config).unwrap();

    // The browser run, stopped after 5 minutes (a hung browser fails the test, never hangs it).
    let out_file = dir.path().join("browser.out");
    let err_file = dir.path().join("browser.err");
    let mut child = Command::new("node")
        .arg("test/browser.mjs")
        .current_dir(tracker_dir())
        .env("CHRONOS_JS", &bundle)
        .env("OPTIONS", options.to_string())
        .env("SITE_PORT", site_port.to_string())
        .env("CHROMIUM", chromium())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .expect("run node test/browser.mjs");
    let until = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = std::fs::read_to_string(&out_file).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_file).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "browser run failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- chronosd\n{}",
        status.map_or("killed after 300 s".to_string(), |s| s.to_string()),
        d.log_text()
    );
    let r: Value = serde_json::from_str(stdout.lines().find_map(|l| l.strip_prefix("RESULT ")).expect("RESULT line")).unwrap();
    let s = |k: &str| r[k].as_str().unwrap_or_else(|| panic!("{k} in {r}")).to_string();
    let (site_session, spa_session) = (s("site_session"), s("spa_session"));

    // Everything the browser sent has been loaded: the last events of each scenario.
    let sql = |t: &str, session: &str| format!("SELECT count(*) FROM events.{t} WHERE session_id = '{session}'");
    d.wait_until("the closed tab's events", Duration::from_secs(60), || count(&pg_url, &sql("signup", &site_session)) == 2);
    d.wait_until("the spa's events", Duration::from_secs(60), || count(&pg_url, &sql("signup", &spa_session)) == 1);
    d.wait_until("the retried batch", Duration::from_secs(60), || batch_rows(&pg_url, &s("retry_batch")).0 > 0);
    d.wait_until("the kept batch", Duration::from_secs(60), || batch_rows(&pg_url, &s("outbox_batch")).0 > 0);
    d.wait_until("the hidden tab's events", Duration::from_secs(60), || count(&pg_url, &sql("clicks", &s("hidden_session"))) == 2);
    d.wait_until("the restored page's click", Duration::from_secs(60), || count(&pg_url, &sql("clicks", &s("bfcache_session"))) == 1);
    d.wait_until("the bounded outbox", Duration::from_secs(60), || count(&pg_url, &sql("clicks", &s("bound_session"))) >= 16);
    let big = s("big_session");
    d.wait_until("the large buffers", Duration::from_secs(60), || count(&pg_url, &sql("note", &big)) >= 100);
    std::thread::sleep(Duration::from_secs(2)); // time for a duplicate to show
    assert_eq!(
        count(&pg_url, "SELECT count(*) FROM chronos.dead_letters"),
        0,
        "no event refused: {:?}",
        rows(&pg_url, "SELECT reason FROM chronos.dead_letters")
    );

    let page = |p: &str| format!("{site}/{p}");
    let by_session = |cols: &str, t: &str, session: &str| {
        rows(
            &pg_url,
            &format!("SELECT {cols}, metadata->>'url' AS url FROM events.{t} WHERE session_id = '{session}' ORDER BY client_time, position"),
        )
    };

    // --- Multi-page site (configured bundle, sendBeacon on navigation and close).
    assert_eq!(
        by_session("navigation, referrer", "pageviews", &site_session),
        vec![
            json!({"navigation": "load", "referrer": null, "url": page("index.html")}),
            json!({"navigation": "load", "referrer": page("index.html"), "url": page("page2.html")}),
            json!({"navigation": "load", "referrer": page("page2.html"), "url": page("thanks.html")}),
        ]
    );
    let buy = &r["buy"];
    let clicks = by_session("element, buttons, x, y, selector", "clicks", &site_session);
    let click =
        |el: &str, x: &Value, y: &Value, sel: &str, p: &str| json!({"element": el, "buttons": 0, "x": x, "y": y, "selector": sel, "url": page(p)});
    assert_eq!(clicks[0], click("BUTTON", &buy["x"], &buy["y"], "main>section.plans>button.buy.primary", "index.html"));
    assert_eq!(clicks[1], click("A", &json!(0), &json!(0), "a#empty", "index.html"), "a synthetic click on an empty link");
    assert_eq!(clicks[2]["selector"], "a#docs>span.label");
    let selectors: Vec<&str> = clicks[3..].iter().map(|c| c["selector"].as_str().unwrap()).collect();
    assert_eq!(selectors, ["input#name", "input#email", "input#pw", "textarea#bio", "div#ed", "button#send", "button#again"]);
    assert_eq!(clicks.last().unwrap()["url"], page("thanks.html"));
    assert_eq!(
        by_session("link_text, target_url", "link_clicks", &site_session),
        vec![
            json!({"link_text": null, "target_url": null, "url": page("index.html")}),
            json!({"link_text": "Read the docs", "target_url": page("page2.html"), "url": page("index.html")}),
        ]
    );
    let keys = rows(
        &pg_url,
        &format!("SELECT key, element, count(*) AS n FROM events.key_presses WHERE session_id = '{site_session}' GROUP BY key, element ORDER BY element, key"),
    );
    let typed = |s: &str| s.chars().count();
    assert_eq!(
        keys,
        vec![
            json!({"key": "ArrowDown", "element": "BODY", "n": 1}),
            json!({"key": "k", "element": "BODY", "n": 1}),
            json!({"key": null, "element": "DIV", "n": typed(SECRETS[4])}),
            // Text and email inputs: that a key was pressed; the password field: nothing.
            json!({"key": null, "element": "INPUT", "n": typed(SECRETS[0]) + typed(SECRETS[1])}),
            json!({"key": null, "element": "TEXTAREA", "n": typed(SECRETS[3])}),
        ]
    );
    assert_eq!(
        by_session("form_id, action, fields", "form_submissions", &site_session),
        vec![
            json!({"form_id": "signup", "action": page("thanks.html"), "fields": ["name", "email", "password", "bio", "plan"], "url": page("page2.html")})
        ]
    );
    assert_eq!(
        by_session("plan, seats", "signup", &site_session),
        vec![
            json!({"plan": "queued", "seats": 1, "url": page("thanks.html")}), // called before chronos.js ran
            json!({"plan": "pro", "seats": 3, "url": page("thanks.html")}),
        ]
    );
    let moves = rows(
        &pg_url,
        &format!(
            "SELECT x, y, (extract(epoch FROM client_time) * 1000)::bigint AS t FROM events.mouse_moves
             WHERE session_id = '{site_session}' AND metadata->>'url' = '{}' ORDER BY client_time",
            page("index.html")
        ),
    );
    assert!(moves.len() >= 3, "mouse moves: {moves:?}");
    // At most one sample per interval, only while moving: ~0.6 s of movement (20 steps) and two jumps.
    assert!(moves.len() <= 10, "{} samples on index.html: {moves:?}", moves.len());
    // (A late timer tick can bring the next one closer than 100 ms; sampling every
    // mousemove would give samples a few ms apart.)
    assert!(moves.windows(2).all(|w| w[1]["t"].as_i64().unwrap() - w[0]["t"].as_i64().unwrap() >= 30), "samples closer than the interval: {moves:?}");
    assert!(moves.windows(2).all(|w| (&w[0]["x"], &w[0]["y"]) != (&w[1]["x"], &w[1]["y"])), "a sample without movement: {moves:?}");
    assert_eq!((&moves[0]["x"], &moves[0]["y"]), (&json!(100), &json!(100)));
    // Where the scripted movement stopped, and where the pointer rested for the click.
    for (x, y) in [(json!(200), json!(150)), (buy["x"].clone(), buy["y"].clone())] {
        assert!(moves.iter().any(|m| m["x"] == x && m["y"] == y), "no sample at ({x}, {y}): {moves:?}");
    }

    // --- SPA (ES module, Chronos.init at run time): one pageview per navigation.
    let spa = |p: &str| format!("{site}/spa/{p}");
    let pv = |nav: &str, referrer: &str, url: &str| json!({"navigation": nav, "referrer": referrer, "url": url});
    let mut expected = vec![json!({"navigation": "load", "referrer": null, "url": spa("?flush=1500")})];
    expected.extend([
        pv("push", &spa("?flush=1500"), &spa("a")),
        pv("replace", &spa("a"), &spa("a?tab=2")),
        pv("hash", &spa("a?tab=2"), &spa("a?tab=2#sec")),
        pv("hash", &spa("a?tab=2#sec"), &spa("a?tab=2")),
        pv("push", &spa("a?tab=2"), &spa("b")),
        pv("pop", &spa("b"), &spa("a?tab=2")),
        pv("hash", &spa("a?tab=2"), &spa("a?tab=2#long")),
        pv("hash", &spa("a?tab=2#long"), &spa("a?tab=2")),
    ]);
    assert_eq!(by_session("navigation, referrer", "pageviews", &spa_session), expected);
    let spa_clicks: Vec<Value> = by_session("selector", "clicks", &spa_session).into_iter().map(|c| json!([c["selector"], c["url"]])).collect();
    assert_eq!(
        spa_clicks,
        vec![
            json!(["button#a", spa("?flush=1500")]),
            json!(["button#b", spa("a")]),
            json!(["a#long", spa("a?tab=2")]),
            json!(["button#c", spa("a?tab=2")]),
            json!(["button#e", spa("a?tab=2")]), // #d was clicked while opted out
        ]
    );
    assert_eq!(by_session("plan, seats", "signup", &spa_session), vec![json!({"plan": "team", "seats": 7, "url": spa("a?tab=2")})]);
    // Link text over 512 bytes is cut on a character boundary.
    assert_eq!(
        by_session("link_text, target_url, octet_length(link_text) AS bytes", "link_clicks", &spa_session),
        vec![json!({"link_text": "é".repeat(256), "target_url": spa("a?tab=2#long"), "bytes": 512, "url": spa("a?tab=2")})]
    );

    // --- visibilitychange to hidden: the buffer left then (by beacon), before the next click.
    let hidden = by_session("selector, batch_id", "clicks", &s("hidden_session"));
    assert_eq!(hidden.iter().map(|c| c["selector"].as_str().unwrap()).collect::<Vec<_>>(), ["button#c", "button#d"]);
    assert_ne!(hidden[0]["batch_id"], hidden[1]["batch_id"], "#c left when the page was hidden, #d when it closed");

    // --- Back/forward cache: the restored page counts a view.
    let bf = s("bfcache_session");
    assert_eq!(
        by_session("navigation, referrer", "pageviews", &bf),
        vec![
            json!({"navigation": "load", "referrer": null, "url": page("index.html")}),
            json!({"navigation": "load", "referrer": null, "url": page("thanks.html")}), // typed, as page.goto does
            json!({"navigation": "restore", "referrer": null, "url": page("index.html")}),
        ]
    );
    assert_eq!(by_session("element", "clicks", &bf), vec![json!({"element": "BUTTON", "url": page("index.html")})]);

    // A batch never spans two pages.
    for session in [&site_session, &spa_session] {
        let events = events_of_session(&pg_url, session);
        let mut url_of = std::collections::HashMap::new();
        for e in &events {
            let first = url_of.entry(e["batch"].as_str().unwrap().to_string()).or_insert_with(|| e["url"].clone());
            assert_eq!(*first, e["url"], "batch {} spans two pages", e["batch"]);
        }
    }

    // --- 503 (once after storing, once before) then 200: stored exactly once.
    for (batch, events) in [("retry_batch", "retry_events"), ("outbox_batch", "outbox_events")] {
        let n = r[events].as_i64().unwrap();
        assert_eq!(batch_rows(&pg_url, &s(batch)), (n, n), "{batch} stored once, every event");
        assert_eq!(count(&pg_url, &format!("SELECT count(*) FROM chronos.seen_batches WHERE batch_id = '{}'", s(batch))), 1);
    }

    // --- A bounded outbox: the newest 16 of 20 unsent batches arrive, once each; the oldest 4 never.
    let kept: Vec<String> = r["bound_kept"].as_array().unwrap().iter().map(|b| b.as_str().unwrap().to_string()).collect();
    assert_eq!(kept.len(), 16);
    for b in &kept {
        let (n, distinct) = batch_rows(&pg_url, b);
        assert!(n >= 1 && n == distinct, "kept batch {b}: {n} rows, {distinct} positions");
        assert_eq!(count(&pg_url, &format!("SELECT count(*) FROM events.clicks WHERE batch_id = '{b}'")), 1, "kept batch {b}: its click");
    }
    assert_eq!(count(&pg_url, &sql("clicks", &s("bound_session"))), 16, "only the kept batches' clicks");

    // --- Large buffers: split under the beacon limit, nothing lost or doubled.
    assert_eq!(count(&pg_url, &sql("note", &big)), 100);
    assert_eq!(count(&pg_url, &format!("SELECT count(DISTINCT text) FROM events.note WHERE session_id = '{big}'")), 100);

    // --- Nothing typed into a field appears anywhere: every table, every column, and the topic.
    let tables = rows(
        &pg_url,
        "SELECT table_schema AS s, table_name AS t FROM information_schema.tables
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'",
    );
    assert!(tables.len() >= 10, "{tables:?}");
    for t in &tables {
        let name = format!("\"{}\".\"{}\"", t["s"].as_str().unwrap(), t["t"].as_str().unwrap());
        for secret in SECRETS {
            let needle = secret.split('@').next().unwrap();
            let hits = count(&pg_url, &format!("SELECT count(*) FROM {name} x WHERE x::text LIKE '%{needle}%'"));
            assert_eq!(hits, 0, "`{needle}` found in {name}");
        }
    }
    let mut records = kafka.read_all(&kafka.topic, 1, Duration::from_secs(10));
    assert!(!records.is_empty());
    records.extend(kafka.read_all(&kafka.dead_letter_topic, 0, Duration::from_secs(5)));
    for rec in &records {
        let text = rec.value.to_string();
        assert!(!text.contains("SECRET"), "typed text in a Kafka record: {text}");
    }
}
