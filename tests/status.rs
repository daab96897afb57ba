//! `chronos status` reports the loaders' consumer lag and the events stored in
//! the last minute, read from the real broker and PostgreSQL: batches posted
//! while no loader runs are lag; once a loader has stored them the lag is 0
//! and they count as the last minute's events.

mod common;

use std::time::{Duration, Instant};

use chronos::stack::postgres::PostgresServer;
use chronos::stack::process::free_port;
use common::*;

/// `chronos --config FILE status`: stdout + stderr (it exits 3 here: the local
/// stack's own services are not running, only their data-flow lines matter).
fn status(config: &std::path::Path) -> String {
    output_text(&chronos_cli(config, &["status"]))
}

fn line<'a>(text: &'a str, start: &str, containing: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(start) && l.contains(containing))
        .unwrap_or_else(|| panic!("no `{start}` line with `{containing}` in:\n{text}"))
}

fn lag_of(text: &str, topic: &str) -> i64 {
    let l = line(text, "lag", topic);
    let after = l.split(topic).nth(1).unwrap().trim_start();
    after.split_whitespace().next().unwrap().parse().unwrap_or_else(|_| panic!("no lag number in `{l}`"))
}

#[test]
fn status_shows_consumer_lag_and_last_minute_events() {
    let pg_dir = temp_dir();
    let pg = PostgresServer::start_in(pg_dir.path()).expect("start PostgreSQL");
    let kafka = Kafka::start(2);
    let dir = temp_dir();
    let stack = format!("[stack]\ndir = \"{}\"\n", dir.path().join("state").display());

    // chronosd without loaders: accepted batches wait in Kafka.
    let mut front = Chronosd::start(&config_toml(&kafka, free_port(), &stack));
    front.wait_ready(Duration::from_secs(30));
    let batches = 5;
    for i in 0..batches {
        // Two batches from a browser, three without a user agent (flagged as bots').
        let body_text = batch(&format!("status-{i}"), 12).to_string().into_bytes();
        let mut headers = vec![("Content-Type", "application/json"), ("Origin", ORIGIN), ("X-Forwarded-For", "198.51.100.9")];
        if i < 2 {
            headers.push(("User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"));
        }
        let (s, body, _) = post_raw(&bare_client(), &front, body_text, &headers);
        assert_eq!(s, 200, "{body}");
    }
    assert_eq!(front.terminate().code(), Some(0));

    let config = dir.path().join("chronos.toml");
    let toml = config_toml_with_pg(&kafka, free_port(), &pg.url(), "", &stack);
    std::fs::write(&config, &toml).unwrap();
    let install = chronos_cli(&config, &["install-pipeline"]);
    assert!(install.status.success(), "{}", String::from_utf8_lossy(&install.stderr));

    let before = status(&config);
    assert_eq!(lag_of(&before, &kafka.topic), batches, "{before}");
    assert_eq!(lag_of(&before, &kafka.dead_letter_topic), 0, "{before}");
    assert!(line(&before, "ingest", "").contains(" 0 events stored in the last minute"), "{before}");
    // This server preloads TimescaleDB and load.timescaledb is "auto": hypertables.
    let tables = line(&before, "tables", "events.*");
    assert!(tables.contains("TimescaleDB 2.") && tables.contains("hypertables (6 tables, 24-hour chunks"), "{before}");

    // A loader stores them: lag 0, and the events count in the last minute.
    let loader = Chronosd::start(&toml);
    let until = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let text = status(&config);
        if lag_of(&text, &kafka.topic) == 0 {
            break text;
        }
        assert!(Instant::now() < until, "lag never reached 0:\n{text}\n{}", loader.log_text());
        std::thread::sleep(Duration::from_millis(500));
    };
    let stored = batches * 12;
    assert!(line(&after, "ingest", "").contains(&format!(" {stored} events stored in the last minute")), "{after}");
    assert!(line(&after, "ingest", "").contains(&format!("{} of them from bots (60%)", 3 * 12)), "{after}");
}

#[test]
fn status_says_what_to_do_when_postgres_and_the_broker_are_down() {
    let dir = temp_dir();
    let (pg, broker) = (free_port(), free_port());
    let config = dir.path().join("chronos.toml");
    std::fs::write(
        &config,
        format!(
            "[[keys]]\nid = \"k\"\nkey = \"{KEY}\"\norigins = [\"shop.example.com\"]\n[kafka]\nbrokers = \"127.0.0.1:{broker}\"\n\
             [postgres]\nurl = \"postgres://chronos@127.0.0.1:{pg}/chronos\"\n[stack]\ndir = \"{}\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let text = status(&config);
    assert!(line(&text, "lag", "").contains("unknown") && text.contains("chronos start postgres"), "{text}");
    assert!(line(&text, "ingest", "").contains("unknown"), "{text}");
    assert!(line(&text, "tables", "").contains("unknown"), "{text}");
}
