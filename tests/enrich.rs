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

// ---- chronos reprocess (issue 29, item 2): stored events re-enriched with
// today's rules, in PostgreSQL and in an archived day's Parquet file. No
// broker: the events are written straight into the tables, as they were
// stored before the bot list and the GeoIP database changed.

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";

/// A PostgreSQL with the schema, keeping 3 days, archiving into a temp dir.
struct Reprocess {
    _pg: chronos::stack::postgres::PostgresServer,
    _dir: tempfile::TempDir,
    url: String,
    layout: Layout,
    config: std::path::PathBuf,
    archive: std::path::PathBuf,
    geoip: std::path::PathBuf,
    today: i64,
}

/// The sessions written, each with its page's user agent and stored (anonymised) address.
const SESSIONS: [(&str, Option<&str>, Option<&str>); 6] = [
    ("chrome", Some(CHROME), Some("198.51.100.0")),
    ("iphone", Some(IPHONE), Some("203.0.113.0")),
    ("firefox", Some(FIREFOX), None),
    ("noua", None, Some("192.0.2.0")),
    ("server", None, None),
    ("stale", Some(CHROME), Some("192.0.2.0")),
];

impl Reprocess {
    fn start(layout: Layout) -> Reprocess {
        let dir = temp_dir();
        let pg = layout.postgres(&dir.path().join("pg"));
        let (url, archive, geoip) = (pg.url(), dir.path().join("archive"), dir.path().join("GeoLite2-City.mmdb"));
        let s =
            Reprocess { url, layout, config: dir.path().join("chronos.toml"), archive, geoip, today: chronos::store::today(), _pg: pg, _dir: dir };
        write_city_db(&s.geoip, &[("203.0.113.64/28", "FR", "Île-de-France", "Paris")]);
        s.set_rules(&["firefox/"]);
        let out = chronos_cli(&s.config, &["install-pipeline"]);
        assert!(out.status.success(), "{}", output_text(&out));
        s
    }

    /// Writes the config with `patterns` as `enrich.extra_bot_patterns`.
    fn set_rules(&self, patterns: &[&str]) {
        let config = format!(
            "[[keys]]\nid = \"k\"\nkey = \"{KEY}\"\norigins = [\"shop.example.com\"]\n[kafka]\nbrokers = \"127.0.0.1:{}\"\n\
             [postgres]\nurl = \"{}\"\n[load]\n{}\n[retention]\nraw_days = 3\narchive = \"{}\"\n\
             [enrich]\ngeoip_db = \"{}\"\nextra_bot_patterns = {patterns:?}\n",
            free_port(),
            self.url,
            self.layout.load("max_past_secs = 86400\npartitions_past_days = 12"),
            self.archive.display(),
            self.geoip.display(),
        );
        std::fs::write(&self.config, config).unwrap();
    }

    fn day(&self, ago: i64) -> String {
        chronos::lifecycle::day_str(self.today - ago)
    }

    /// Four clicks and two pageviews of each session on day `today - ago`, enrichment columns empty.
    fn write_events(&self, ago: i64) {
        let day = self.day(ago);
        for (i, (session, ua, ip)) in SESSIONS.iter().enumerate() {
            let page = match ua {
                Some(ua) => json!({"url": "https://shop.example.com/", "title": session, "user_agent": ua}),
                None => json!({"url": "https://shop.example.com/", "title": session}),
            };
            let ip = ip.map_or("NULL".into(), |ip| format!("'{ip}'"));
            let common = format!("t, t, t, false, '{session}', md5('{day}{session}' || (n % 2))::uuid, n, 'k', {ip}, '{page}'::jsonb");
            let at =
                format!("generate_series(0, {{}}) n, LATERAL (SELECT timestamptz '{day} 08:00:00+00' + ({i} * 100 + n) * interval '1 minute') s(t)");
            execute_batch(
                &self.url,
                &format!(
                    "INSERT INTO events.clicks (time, client_time, received_at, time_flagged, session_id, batch_id, position, key_id, client_ip, metadata, element, buttons, x, y)
                     SELECT {common}, '{session}', 0, 1, 2 FROM {};
                     INSERT INTO events.pageviews (time, client_time, received_at, time_flagged, session_id, batch_id, position, key_id, client_ip, metadata, navigation)
                     SELECT {common}, 'load' FROM {}",
                    at.replace("{}", "3"),
                    at.replace("{}", "1")
                ),
            );
        }
    }

    /// Runs `chronos reprocess` over both days, aborting at `failpoint` when given.
    fn reprocess(&self, more: &[&str], failpoint: Option<&str>) -> (bool, String) {
        let (from, to) = (self.day(5), self.day(1));
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_chronos"));
        cmd.arg("--config").arg(&self.config).args(["reprocess", "--from", &from, "--to", &to, "--by", "test"]).args(more);
        if let Some(f) = failpoint {
            cmd.env("CHRONOS_FAILPOINT", f);
        }
        let out = cmd.output().unwrap();
        (out.status.success(), output_text(&out))
    }

    /// Starts a run that stops after its first PostgreSQL slice, and `kill -9`s it there.
    fn kill_midway(&self) {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chronos"))
            .arg("--config")
            .arg(&self.config)
            .args(["reprocess", "--from", &self.day(5), "--to", &self.day(1), "--by", "test", "--batch-rows", "5"])
            .env("CHRONOS_FAILPOINT", "reprocess:slice:hang")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let sliced = "SELECT count(*) FROM chronos.reprocess_steps WHERE place = 'postgres' AND NOT done AND changed > 0";
        let until = Instant::now() + Duration::from_secs(60);
        while count(&self.url, sliced) == 0 {
            assert!(child.try_wait().unwrap().is_none() && Instant::now() < until, "the run never committed a slice");
            std::thread::sleep(Duration::from_millis(50));
        }
        // One run at a time.
        let (ok, out) = self.reprocess(&[], None);
        assert!(!ok && out.contains("another chronos reprocess is running; try again when it ends"), "{out}");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // The run cut short is to be finished first, by the same command.
        let (ok, out) = self.reprocess(&["--only", "bots"], None);
        let same = format!("finish it first: chronos reprocess --from {} --to {} --only bots,agent,geo", self.day(5), self.day(1));
        assert!(!ok && out.contains(&same), "{out}");
    }

    /// Every event's enrichment, from PostgreSQL and the archive files:
    /// (table, "day place", session) → each distinct (is_bot, bot_reason, browser, country) with its count.
    fn state(&self) -> State {
        let mut all = State::new();
        for table in ["clicks", "pageviews"] {
            let sql = format!("SELECT to_char(time, 'YYYY-MM-DD'), session_id, is_bot, bot_reason, browser, country FROM events_raw.{table}");
            for r in query(&self.url, &sql) {
                let key = (table.to_string(), format!("{} postgres", r.get::<_, String>(0)), r.get(1));
                bump(&mut all, key, (r.get(2), r.get(3), r.get(4), r.get(5)));
            }
            for f in std::fs::read_dir(self.archive.join(table)).into_iter().flatten() {
                let p = f.unwrap().path();
                if p.extension().is_some_and(|e| e == "parquet") {
                    let day = p.file_name().unwrap().to_string_lossy()[..10].to_string();
                    for (session, e) in parquet_rows(&p) {
                        bump(&mut all, (table.to_string(), format!("{day} archive"), session), e);
                    }
                }
            }
        }
        all
    }
}

/// is_bot, bot_reason, browser, country.
type Enriched = (bool, Option<String>, Option<String>, Option<String>);
type State = std::collections::BTreeMap<(String, String, String), Vec<(Enriched, i64)>>;

fn bump(all: &mut State, key: (String, String, String), e: Enriched) {
    let values = all.entry(key).or_default();
    match values.iter_mut().find(|(x, _)| *x == e) {
        Some((_, n)) => *n += 1,
        None => values.push((e, 1)),
    }
}

/// (session, enrichment) of each row of an archive file, read through the archive's own reader.
fn parquet_rows(path: &std::path::Path) -> Vec<(String, Enriched)> {
    use chronos::lifecycle::file::{reader, rows_of, Value};
    let (columns, batches) = reader(path).unwrap();
    let at = |name: &str| columns.iter().position(|c| c.name == name).unwrap();
    let text = |v: &Value| match v {
        Value::Text(s) => Some(s.clone()),
        _ => None,
    };
    let mut out = Vec::new();
    for b in batches {
        for row in rows_of(&b.unwrap(), &columns) {
            let bot = matches!(row[at("is_bot")], Value::Bool(true));
            let e = (bot, text(&row[at("bot_reason")]), text(&row[at("browser")]), text(&row[at("country")]));
            out.push((text(&row[at("session_id")]).unwrap(), e));
        }
    }
    out
}

/// The `total:` line of a run's output, with a dry run's "would change" read as "changed".
fn total_line(out: &str) -> String {
    let line = out.lines().find(|l| l.starts_with("total: ")).unwrap_or_else(|| panic!("no total line:\n{out}"));
    line.replace("would change", "changed")
}

fn reprocess_changes_exactly_what_the_new_rules_change_in_postgres_and_the_archive(layout: Layout) {
    let s = Reprocess::start(layout);
    s.write_events(5);
    s.write_events(1);
    // Yesterday's rules fill the empty columns (Firefox taken for a bot by a bad pattern).
    let (ok, out) = s.reprocess(&[], None);
    assert!(ok, "{out}");
    assert!(out.contains("total: 72 events; 48 changed"), "every event with a page user agent got an agent:\n{out}");
    // What receipt knew that the stored rows cannot say again: the iPhone's full address was in
    // France's /28; one visitor sent no User-Agent header; an older parser named a browser otherwise.
    execute_batch(
        &s.url,
        "UPDATE events_raw.clicks SET country = 'FR' WHERE session_id = 'iphone'; UPDATE events_raw.pageviews SET country = 'FR' WHERE session_id = 'iphone';
         UPDATE events_raw.clicks SET is_bot = true, bot_reason = 'no_user_agent' WHERE session_id = 'noua';
         UPDATE events_raw.pageviews SET is_bot = true, bot_reason = 'no_user_agent' WHERE session_id = 'noua';
         UPDATE events_raw.clicks SET browser = 'OldName' WHERE session_id = 'stale'; UPDATE events_raw.pageviews SET browser = 'OldName' WHERE session_id = 'stale'",
    );
    // Day -1's visits, as the loaders would have kept them from these events.
    execute_batch(
        &s.url,
        &format!(
            "INSERT INTO chronos.sessions (session_id, started_at, ended_at, events, pageviews, is_bot, browser, country)
             SELECT session_id, min(time), max(time), count(*), 0, bool_or(is_bot), min(browser), min(country)
             FROM events_raw.clicks WHERE time >= timestamptz '{} 00:00:00+00' GROUP BY session_id",
            s.day(1)
        ),
    );
    let out = chronos_cli(&s.config, &["archive", "run"]);
    assert!(out.status.success() && output_text(&out).contains(&s.day(5)), "{}", output_text(&out));
    let before = s.state();
    assert_eq!(before.keys().filter(|k| k.1.ends_with("archive")).count(), 12, "day -5 is in the archive only: {before:?}");

    // Today's rules: iPhones are bots, Firefox no longer; a database that places 198.51.100.0/24
    // and splits 203.0.113.0/24.
    s.set_rules(&["iphone"]);
    write_city_db(&s.geoip, &[("198.51.100.0/24", "NL", "Noord-Holland", "Amsterdam"), ("203.0.113.64/28", "DE", "Berlin", "Berlin")]);
    let (ok, dry) = s.reprocess(&["--dry-run"], None);
    assert!(ok, "{dry}");
    assert_eq!(s.state(), before, "a dry run changes nothing");
    let expected = "total: 72 events; 48 changed: bot flag 24 (12 flagged, 12 no longer), agent 12, place 12";
    assert_eq!(total_line(&dry), expected, "{dry}");
    assert!(dry.contains(&format!("events.clicks {} (archive file): 24 events; 16 would change", s.day(5))), "{dry}");
    assert!(
        dry.contains("  12 events whose batch page holds no user_agent") && dry.contains("  36 events whose place cannot be told again"),
        "{dry}"
    );

    // Cut as kill -9 would after each step of the archive's rewrite; then killed with
    // SIGKILL between two PostgreSQL slices.
    for failpoint in ["reprocess:uploaded", "reprocess:recorded"] {
        let (ok, out) = s.reprocess(&["--batch-rows", "5"], Some(failpoint));
        assert!(!ok && out.contains(&format!("CHRONOS_FAILPOINT={failpoint}: aborting")), "{failpoint}: {out}");
    }
    s.kill_midway();
    let (ok, out) = s.reprocess(&["--batch-rows", "5"], None);
    assert!(ok, "{out}");
    assert!(out.contains("cut short before: finished now"), "{out}");
    assert_eq!(total_line(&out), expected, "what the run did, counted across its cuts, is what the dry run said:\n{out}");

    // Exactly the events the rules change, and nothing else.
    let after = s.state();
    assert_eq!(after.keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>());
    let some = |v: &str| Some(v.to_string());
    for (key, values) in &after {
        let old = &before[key][0].0;
        let want: Enriched = match key.2.as_str() {
            "chrome" => (false, None, some("Chrome"), some("NL")),
            "iphone" => (true, some("user_agent"), some("Safari"), some("FR")),
            "firefox" => (false, None, some("Firefox"), None),
            "stale" => (false, None, some("Chrome"), None),
            _ => old.clone(),
        };
        assert_eq!(values, &vec![(want, before[key][0].1)], "{key:?} was {:?}", before[key]);
    }
    // One file per archived table-day, verified; the cut runs' objects swept.
    let verify = chronos_cli(&s.config, &["archive", "verify"]);
    assert!(verify.status.success(), "{}", output_text(&verify));
    for table in ["clicks", "pageviews"] {
        let names: Vec<String> =
            std::fs::read_dir(s.archive.join(table)).unwrap().map(|f| f.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names.len(), 2, "{table}: {names:?}");
    }
    // The views follow (they read is_bot), over PostgreSQL and the archive; the visits too.
    let counted: Vec<(String, i64)> =
        query(&s.url, "SELECT element, count FROM views.element_counts ORDER BY 1").iter().map(|r| (r.get(0), r.get(1))).collect();
    let people = ["chrome", "firefox", "server", "stale"].map(|e| (e.to_string(), 8i64));
    assert_eq!(counted, people, "{out}");
    assert!(out.contains("visits (chronos.sessions): 4 updated"), "chrome's place, iphone's and firefox's flags, stale's browser: {out}");
    let visits: Vec<(String, bool, Option<String>, Option<String>)> =
        query(&s.url, "SELECT session_id, is_bot, browser, country FROM chronos.sessions ORDER BY 1")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
    let want: Vec<(String, bool, Option<String>, Option<String>)> = vec![
        ("chrome".into(), false, some("Chrome"), some("NL")),
        ("firefox".into(), false, some("Firefox"), None),
        ("iphone".into(), true, some("Safari"), some("FR")),
        ("noua".into(), true, None, None),
        ("server".into(), false, None, None),
        ("stale".into(), false, some("Chrome"), None),
    ];
    assert_eq!(visits, want);
    let audit =
        query(&s.url, "SELECT count(*), bool_and(finished_at IS NOT NULL), max(array_to_string(views_rebuilt, ',')) FROM chronos.reprocessings");
    assert_eq!((audit[0].get::<_, i64>(0), audit[0].get::<_, bool>(1)), (2, true));
    assert!(audit[0].get::<_, String>(2).contains("element_counts"), "{out}");
    // Nothing left to do: a second run changes nothing.
    let (ok, again) = s.reprocess(&[], None);
    assert!(ok && again.contains("total: 72 events; 0 changed"), "{again}");
}

/// Posts a 6-event batch of `session` as the tracker does (the page carries the user agent).
fn post_tracked(d: &Chronosd, session: &str) {
    let mut b = batch(session, 6);
    b["page"]["user_agent"] = json!(BROWSER_UA);
    let (status, body, _) = post(&client(), d, &b, "198.51.100.7");
    assert_eq!(status, 200, "{body}");
}

/// Reprocess runs online: while it updates today's rows, the loaders keep
/// loading the same day (none fails, no event is lost or stored twice), and
/// every event stored before it started follows the new rules.
#[test]
fn reprocess_runs_while_the_loaders_load() {
    let stack = start_loading(1, |kafka, url| config_toml_with_pg(kafka, free_port(), url, "", FAST_IPS));
    let (d, url) = (&stack.d, &stack.url);
    const BEFORE: usize = 150;
    for n in 0..BEFORE {
        post_tracked(d, &format!("before-{n}"));
    }
    wait_rows(url, "SELECT count(*) FROM events.pageviews", BEFORE as i64, Duration::from_secs(60), d);
    // The CLI's config: chronosd's, with today's bot list (chronosd keeps its own until a restart).
    let dir = temp_dir();
    let config = dir.path().join("chronos.toml");
    let text = std::fs::read_to_string(d.config_path()).unwrap();
    assert!(!text.contains("[enrich]"), "{text}");
    std::fs::write(&config, format!("{text}\n[enrich]\nextra_bot_patterns = [\"firefox/\"]\n")).unwrap();
    let today = chronos::lifecycle::day_str(chronos::store::today());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let during = std::thread::scope(|scope| {
        let poster = scope.spawn(|| {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                post_tracked(d, &format!("during-{n}"));
                n += 1;
            }
            n
        });
        let out = chronos_cli(&config, &["reprocess", "--from", &today, "--to", &today, "--batch-rows", "40"]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(out.status.success(), "{}", output_text(&out));
        let total = total_line(&output_text(&out));
        let flagged: usize = total.split(" flagged").next().and_then(|t| t.rsplit('(').next()).and_then(|n| n.parse().ok()).unwrap();
        assert!(flagged >= BEFORE * 6, "{total}");
        poster.join().unwrap()
    });
    assert!(during > 0, "no batch was posted while reprocess ran");
    wait_rows(url, "SELECT count(*) FROM events.pageviews", (BEFORE + during) as i64, Duration::from_secs(60), d);
    std::thread::sleep(Duration::from_millis(500));
    for table in ["pageviews", "clicks", "link_clicks", "mouse_moves", "key_presses", "form_submissions"] {
        let stored = count(url, &format!("SELECT count(*) FROM events.{table}"));
        let once = count(url, &format!("SELECT count(DISTINCT (batch_id, position)) FROM events.{table}"));
        assert_eq!((stored, once), ((BEFORE + during) as i64, (BEFORE + during) as i64), "events.{table}: each posted event stored once");
        let missed = count(url, &format!("SELECT count(*) FROM events.{table} WHERE session_id LIKE 'before-%' AND NOT is_bot"));
        assert_eq!(missed, 0, "events.{table}: every event stored before the run follows the new list");
    }
    assert_eq!(count(url, "SELECT count(*) FROM chronos.dead_letters"), 0);
    assert!(!d.log_text().contains("ERROR"), "{}", d.log_text());
    assert_eq!(count(url, "SELECT count(*) FROM chronos.sessions WHERE session_id LIKE 'before-%' AND NOT is_bot"), 0, "their visits follow");
}

on_both_layouts!(reprocess_changes_exactly_what_the_new_rules_change_in_postgres_and_the_archive);
