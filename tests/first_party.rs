//! First-party delivery: chronosd serves the tracker built from its config at
//! a path of the operator's choosing (`http.tracker_path`), with caching
//! headers and gzip, and takes batches at a path of their choosing
//! (`http.batch_path`), which the served tracker follows; headless Chromium
//! runs the served bundle and its events land in PostgreSQL.

mod common;

use std::io::Read as _;
use std::process::Command;
use std::time::{Duration, Instant};

use chronos::stack::postgres::PostgresServer;
use chronos::stack::process::free_port;
use common::*;

const PATHS: &str = "[http]\nbatch_path = \"/e\"\ntracker_path = \"/assets/app.js\"\n";

#[test]
fn the_tracker_is_served_at_its_path_with_caching_and_gzip_and_batches_go_to_theirs() {
    let kafka = Kafka::start(1);
    let toml = config_toml(&kafka, free_port(), "").replacen("[http]\n", PATHS, 1);
    let d = Chronosd::start(&toml);
    d.wait_ready(Duration::from_secs(30));
    let config = chronos::config::Config::from_toml(&toml).unwrap();
    let expected = chronos::tracker::build(&config).unwrap();
    assert!(expected.contains("\"path\":\"/e\""), "the bundle follows http.batch_path");
    let c = client();

    let res = c.get(d.url("/assets/app.js")).header("Accept-Encoding", "identity").send().unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(h["cache-control"], "public, max-age=300");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h.get("content-encoding").is_none());
    let etag = h["etag"].to_str().unwrap().to_string();
    assert_eq!(res.text().unwrap(), expected);
    // gzip when accepted, the same bytes inside.
    let res = c.get(d.url("/assets/app.js")).header("Accept-Encoding", "gzip, br").send().unwrap();
    assert_eq!(res.headers()["content-encoding"], "gzip");
    assert_eq!(res.headers()["vary"], "Accept-Encoding");
    let zipped = res.bytes().unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&zipped[..]).read_to_string(&mut text).unwrap();
    assert_eq!(text, expected);
    assert!(zipped.len() * 2 < expected.len(), "gzip: {} of {} bytes", zipped.len(), expected.len());
    // Revalidation: 304 without a body.
    let res = c.get(d.url("/assets/app.js")).header("If-None-Match", &etag).send().unwrap();
    assert_eq!(res.status(), 304);
    assert!(res.bytes().unwrap().is_empty());
    // The default paths are not served any more.
    assert_eq!(c.get(d.url("/chronos.js")).send().unwrap().status(), 404);
    let (status, body, _) = post(&c, &d, &batch("old-path", 3), "198.51.100.50");
    assert_eq!(status, 404, "POST /v1/batch");
    // The generic 404: it does not tell a scanner where batches go.
    assert_eq!(body, serde_json::json!({ "ok": false, "error": "not_found", "message": "no such endpoint" }));
    let res = c.delete(d.url("/e")).send().unwrap();
    assert_eq!(res.status(), 405);
    let res = c
        .post(d.url("/e"))
        .header("Content-Type", "text/plain")
        .header("Origin", ORIGIN)
        .header("X-Forwarded-For", "198.51.100.51")
        .body(batch("new-path", 3).to_string())
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().unwrap();
    assert_eq!(body["accepted"], 3, "{body}");

    // Paths that cannot work are named (exit 2).
    let dir = temp_dir();
    let file = dir.path().join("bad.toml");
    for (paths, says) in [
        ("[http]\nbatch_path = \"e\"\n", "http.batch_path: `e` must be an absolute path"),
        ("[http]\nbatch_path = \"/metrics\"\n", "http.batch_path: `/metrics` is chronosd's own endpoint"),
        ("[http]\nbatch_path = \"/x\"\ntracker_path = \"/x\"\n", "http.tracker_path: the same path as http.batch_path"),
        ("[http]\ntracker_path = \"/a/../b.js\"\n", "http.tracker_path: `/a/../b.js` must be"),
    ] {
        std::fs::write(&file, config_toml(&kafka, free_port(), "").replacen("[http]\n", paths, 1)).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_chronosd")).arg("--check-config").arg(&file).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
        assert!(output_text(&out).contains(says), "{}", output_text(&out));
    }
}

#[test]
fn a_config_without_a_browser_key_serves_no_tracker_and_says_why() {
    let kafka = Kafka::start(1);
    // Only the server-side key of the test config (no origins).
    let toml = config_toml(&kafka, free_port(), "");
    let toml = toml.replace("origins = [\"shop.example.com\", \"*.blog.example.com\"]", "origins = []\nallow_no_origin = true");
    let d = Chronosd::start(&toml);
    d.wait_ready(Duration::from_secs(30));
    let res = client().get(d.url("/chronos.js")).send().unwrap();
    assert_eq!(res.status(), 404);
    let body: serde_json::Value = res.json().unwrap();
    assert_eq!(body["error"], "no_tracker");
    assert!(body["message"].as_str().unwrap().contains("no write key for browsers"), "{body}");
    assert!(d.log_text().contains("Not serving the tracker at /chronos.js"), "{}", d.log_text());
}

#[test]
fn chromium_runs_the_served_bundle_and_its_events_reach_the_custom_batch_path() {
    let dir = temp_dir();
    let pg = PostgresServer::start_in(&dir.path().join("pg")).expect("start PostgreSQL");
    let kafka = Kafka::start(1);
    let (port, site_port) = (free_port(), free_port());
    let extra = format!(
        "[[keys]]\nid = \"browser\"\nkey = \"wk_first_party_0123456789\"\norigins = [\"http://127.0.0.1:{site_port}\"]\n\n[tracker]\nkey_id = \"browser\"\nflush_interval_ms = 500\n"
    );
    let toml = config_toml_with_pg(&kafka, port, &pg.url(), "", &extra).replacen("[http]\n", PATHS, 1);
    let d = Chronosd::start(&toml);
    d.wait_ready(Duration::from_secs(30));
    // The site serves what chronosd serves at /assets/app.js.
    let bundle = dir.path().join("app.js");
    std::fs::write(&bundle, client().get(d.url("/assets/app.js")).send().unwrap().text().unwrap()).unwrap();
    let options = chronos::tracker::init_options(&chronos::config::Config::from_toml(&toml).unwrap()).unwrap();
    let result = run_pageview(&d, &bundle, &serde_json::json!({ "endpoint": d.url("/e") }), site_port, &[]);
    assert!(result["statuses"].as_array().unwrap().iter().all(|s| s == 200), "{result}");
    assert_eq!(options["path"], "/e");
    let session = result["session"].as_str().expect("a session id").to_string();
    let pageviews = format!("SELECT count(*) FROM events.pageviews WHERE session_id = '{session}'");
    let until = Instant::now() + Duration::from_secs(60);
    while count(&pg.url(), &pageviews) < 1 {
        assert!(Instant::now() < until, "the pageview did not land\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Playwright drives Chromium, which sets navigator.webdriver: the tracker
    // says so and chronosd flags the events (stored, not dropped).
    let r = &query(&pg.url(), &format!("SELECT is_bot, bot_reason, device_type FROM events.pageviews WHERE session_id = '{session}'"))[0];
    assert_eq!((r.get::<_, bool>(0), r.get::<_, Option<String>>(1).as_deref()), (true, Some("webdriver")));
    assert_eq!(r.get::<_, Option<String>>(2).as_deref(), Some("desktop"), "the user agent is parsed all the same");
}

#[test]
fn a_key_added_to_the_config_file_counts_and_the_served_tracker_follows_without_a_restart() {
    let kafka = Kafka::start(1);
    let toml = config_toml(&kafka, free_port(), "").replacen("[http]\n", "[http]\nconfig_watch_secs = 1\n", 1);
    let d = Chronosd::start(&toml);
    d.wait_ready(Duration::from_secs(30));
    let c = client();
    let pid = d.pid();
    let new_key = "wk_rotated_in_by_file_0123456789";
    let send = |key: &str| {
        let mut b = batch("reload", 2);
        b["key"] = serde_json::json!(key);
        post(&c, &d, &b, "198.51.100.60").0
    };
    assert_eq!(send(new_key), 401);
    // The operator adds a key, points the tracker at it and changes a setting that needs a restart.
    let rotated =
        format!("{toml}\n[[keys]]\nid = \"shop-2027\"\nkey = \"{new_key}\"\norigins = [\"shop.example.com\"]\n\n[tracker]\nkey_id = \"shop-2027\"\n")
            .replace("linger_ms = 2", "linger_ms = 3");
    std::fs::write(d.config_path(), &rotated).unwrap();
    let until = Instant::now() + Duration::from_secs(15);
    while send(new_key) != 200 {
        assert!(Instant::now() < until, "the new key was not taken up\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(send(KEY), 200, "the other keys still work");
    let served = c.get(d.url("/chronos.js")).send().unwrap().text().unwrap();
    assert!(served.contains(new_key), "the served tracker names the new key");
    assert!(d.log_text().contains("they take effect at the next restart"), "{}", d.log_text());
    // A file that does not load changes nothing.
    std::fs::write(d.config_path(), rotated.replace("[tracker]\n", "[tracker]\nnot_a_key = 1\n")).unwrap();
    let until = Instant::now() + Duration::from_secs(15);
    while !d.log_text().contains("does not load; keeping the running config") {
        assert!(Instant::now() < until, "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(send(new_key), 200);
    // The key removed from the file stops working.
    std::fs::write(d.config_path(), &toml).unwrap();
    let until = Instant::now() + Duration::from_secs(15);
    while send(new_key) != 401 {
        assert!(Instant::now() < until, "the removed key still works\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(d.pid(), pid, "no restart");
}
