//! Enrichment at receipt through the real stack (chronosd → Apache Kafka →
//! loaders → PostgreSQL): crawlers, tools, headless and automated browsers
//! and requests without a user agent are flagged (`is_bot`, `bot_reason`) and
//! stored; real browsers are not flagged; the user agent is parsed into
//! browser, OS and device columns. With `[enrich] bots = "drop"`, a bot's
//! batch is answered 200 and not stored. Tables made before the columns
//! existed get them online.

mod common;

use std::time::{Duration, Instant};

use chronos::stack::process::free_port;
use common::*;
use serde_json::json;

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
const IPHONE: &str =
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
const HEADLESS: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36";

/// Posts a 6-event batch of `session` with `user_agent` (none: no header).
fn send(d: &Chronosd, session: &str, user_agent: Option<&str>, webdriver: bool) -> (u16, serde_json::Value) {
    let mut b = batch(session, 6);
    if webdriver {
        b["webdriver"] = json!(true);
    }
    let mut headers = vec![("Content-Type", "application/json"), ("Origin", ORIGIN)];
    if let Some(ua) = user_agent {
        headers.push(("User-Agent", ua));
    }
    // A client without a default user agent: only the header above is sent.
    let (status, body, _) = post_raw(&bare_client(), d, b.to_string().into_bytes(), &headers);
    (status, body)
}

#[test]
fn bots_are_flagged_and_stored_and_user_agents_parsed_into_columns() {
    let stack = start_loading(1, |kafka, url| config_toml_with_pg(kafka, free_port(), url, "", FAST_IPS));
    let (d, url) = (&stack.d, &stack.url);
    let senders: [(&str, Option<&str>, bool); 7] = [
        ("chrome", Some(CHROME), false),
        ("iphone", Some(IPHONE), false),
        ("googlebot", Some(GOOGLEBOT), false),
        ("curl", Some("curl/8.5.0"), false),
        ("headless", Some(HEADLESS), false),
        ("no-ua", None, false),
        ("automated", Some(CHROME), true),
    ];
    for (session, ua, webdriver) in senders {
        let (status, body) = send(d, session, ua, webdriver);
        assert_eq!(status, 200, "{session}: {body}");
        assert_eq!(body["accepted"], 6, "{session}: {body}");
    }
    wait_rows(url, "SELECT count(*) FROM events.pageviews", 7, Duration::from_secs(60), d);
    let rows =
        query(url, "SELECT session_id, is_bot, bot_reason, browser, browser_version, os, device_type FROM events.pageviews ORDER BY session_id");
    // The columns, in the order the query selects them.
    #[allow(clippy::type_complexity)]
    let got: Vec<(String, bool, Option<String>, Option<String>, Option<String>, Option<String>, Option<String>)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6))).collect();
    let row = |s: &str| got.iter().find(|r| r.0 == s).unwrap_or_else(|| panic!("no row of {s}: {got:?}")).clone();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(row("chrome"), ("chrome".into(), false, None, s("Chrome"), s("131.0.0.0"), s("Windows 10"), s("desktop")));
    assert_eq!(row("iphone"), ("iphone".into(), false, None, s("Safari"), s("18.1"), s("iPhone"), s("mobile")));
    assert_eq!((row("googlebot").1, row("googlebot").2), (true, s("user_agent")));
    assert_eq!((row("curl").1, row("curl").2), (true, s("user_agent")));
    assert_eq!((row("headless").1, row("headless").2), (true, s("headless")));
    assert_eq!((row("no-ua").1, row("no-ua").2, row("no-ua").3), (true, s("no_user_agent"), None));
    let automated = row("automated");
    assert_eq!((automated.1, automated.2, automated.3), (true, s("webdriver"), s("Chrome")), "a browser under automation, parsed all the same");
    // Every event of a batch carries its batch's flags (every table).
    assert_eq!(count(url, "SELECT count(*) FROM events.clicks WHERE session_id = 'googlebot' AND is_bot AND bot_reason = 'user_agent'"), 1);
    assert_eq!(count(url, "SELECT count(*) FROM events.clicks WHERE session_id = 'chrome' AND NOT is_bot"), 1);
    let flagged = d.metric("chronos_bot_events_total{action=\"flagged\"}").unwrap_or_default();
    assert_eq!(flagged, 30.0, "5 bot batches of 6 events");

    // A table made before the columns existed gets them back online (and
    // its presented table shows them again).
    execute_batch(
        url,
        "DROP VIEW events.mouse_moves; ALTER TABLE events_raw.mouse_moves DROP COLUMN is_bot, DROP COLUMN browser, DROP COLUMN device_type",
    );
    let out = chronos_cli(&d.config_path(), &["install-pipeline"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let cols = count(url, "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'events' AND table_name = 'mouse_moves' AND column_name IN ('is_bot', 'browser', 'device_type')");
    assert_eq!(cols, 3);
    assert_eq!(count(url, "SELECT count(*) FROM events.mouse_moves WHERE is_bot"), 0, "old rows read false");
}

#[test]
fn with_bots_drop_a_bots_batch_is_answered_and_not_stored() {
    let extra = format!("[enrich]\nbots = \"drop\"\n{FAST_IPS}");
    let stack = start_loading(1, |kafka, url| config_toml_with_pg(kafka, free_port(), url, "", &extra));
    let (d, url) = (&stack.d, &stack.url);
    let (status, body) = send(d, "crawler", Some(GOOGLEBOT), false);
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["accepted"].as_u64(), body["dropped"].as_u64()), (Some(0), Some(6)), "{body}");
    assert!(body["reasons"][0].as_str().unwrap().contains("taken for a bot (user_agent)"), "{body}");
    let (status, body) = send(d, "person", Some(CHROME), false);
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(6)), "{body}");
    assert!(body.get("dropped").is_none(), "{body}");
    wait_rows(url, "SELECT count(*) FROM events.pageviews WHERE session_id = 'person'", 1, Duration::from_secs(60), d);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count(url, "SELECT count(*) FROM events.pageviews WHERE session_id = 'crawler'"), 0);
    assert_eq!(d.metric("chronos_bot_events_total{action=\"dropped\"}"), Some(6.0));
}

/// A City database as GeoLite2 lays it out, written by the test: `net` → (country, region, city).
fn write_city_db(path: &std::path::Path, entries: &[(&str, &str, &str, &str)]) {
    let mut w = mmdb_writer::Writer::new("GeoLite2-City");
    for (net, country, region, city) in entries {
        let record = json!({
            "country": {"iso_code": country, "names": {"en": country}},
            "subdivisions": [{"iso_code": "X", "names": {"en": region}}],
            "city": {"names": {"en": city, "fr": format!("{city} (fr)")}},
            "location": {"latitude": 48.85, "longitude": 2.35},
        });
        w.insert(net.parse::<ipnet::IpNet>().unwrap(), &record).unwrap();
    }
    // Written aside and renamed, as the GeoLite2 updater replaces the file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, w.to_bytes().unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn geoip_fills_country_region_city_from_the_full_ip_and_follows_a_new_database() {
    let dir = temp_dir();
    let db = dir.path().join("GeoLite2-City.mmdb");
    // 203.0.113.77 and .1 share their /24 (what is stored) but not their /28: only the full IP tells them apart.
    write_city_db(&db, &[("203.0.113.64/28", "FR", "Île-de-France", "Paris"), ("203.0.113.0/28", "BE", "Brussels", "Brussels")]);
    let extra = format!("[enrich]\ngeoip_db = \"{}\"\ngeoip_reload_secs = 1\n{FAST_IPS}", db.display());
    let stack = start_loading(1, |kafka, url| config_toml_with_pg(kafka, free_port(), url, "", &extra));
    let (d, url) = (&stack.d, &stack.url);
    let c = client();
    // The client IP comes from X-Forwarded-For because the peer (127.0.0.1) is a trusted proxy.
    for (session, ip) in [("paris", "203.0.113.77"), ("brussels", "203.0.113.1"), ("nowhere", "198.51.100.9")] {
        let (status, body, _) = post(&c, d, &batch(session, 6), ip);
        assert_eq!(status, 200, "{body}");
    }
    wait_rows(url, "SELECT count(*) FROM events.pageviews", 3, Duration::from_secs(60), d);
    let place = |session: &str| -> (Option<String>, Option<String>, Option<String>, Option<String>) {
        let r = &query(url, &format!("SELECT country, region, city, client_ip FROM events.clicks WHERE session_id = '{session}'"))[0];
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    let s = |v: &str| Some(v.to_string());
    assert_eq!(place("paris"), (s("FR"), s("Île-de-France"), s("Paris"), s("203.0.113.0")));
    assert_eq!(place("brussels"), (s("BE"), s("Brussels"), s("Brussels"), s("203.0.113.0")));
    assert_eq!(place("nowhere"), (None, None, None, s("198.51.100.0")));
    assert_eq!(
        count(
            url,
            "SELECT count(*) FROM events.pageviews WHERE client_ip LIKE '%.77' OR client_ip LIKE '%.1' OR metadata::text LIKE '%203.0.113.77%'"
        ),
        0,
        "the full IP is never stored"
    );

    // A new database replaces the file: the next batches follow it, without a restart.
    write_city_db(&db, &[("203.0.113.64/28", "DE", "Berlin", "Berlin")]);
    let until = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        n += 1;
        let session = format!("moved-{n}");
        let (status, _, _) = post(&c, d, &batch(&session, 6), "203.0.113.77");
        assert_eq!(status, 200);
        wait_rows(url, &format!("SELECT count(*) FROM events.clicks WHERE session_id = '{session}'"), 1, Duration::from_secs(60), d);
        if place(&session).0 == s("DE") {
            break;
        }
        assert!(Instant::now() < until, "the new database was never used\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(d.log_text().contains("GeoIP database reloaded."), "{}", d.log_text());
}

#[test]
fn a_geoip_db_that_does_not_read_is_refused_naming_the_key() {
    let dir = temp_dir();
    let bad = dir.path().join("not.mmdb");
    std::fs::write(&bad, b"not a database").unwrap();
    let kafka = Kafka::start(1);
    let config = dir.path().join("chronos.toml");
    std::fs::write(&config, config_toml(&kafka, free_port(), &format!("[enrich]\ngeoip_db = \"{}\"\n", bad.display()))).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chronosd")).arg("--check-config").arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(output_text(&out).contains("enrich.geoip_db:") && output_text(&out).contains("not a MaxMind DB file"), "{}", output_text(&out));
}
