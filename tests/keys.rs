//! Write-key rotation without downtime: `chronos keys create` stores a key in
//! PostgreSQL and the running chronosd accepts it within
//! `http.keys_refresh_secs`, while the old key still works; `chronos keys
//! revoke` makes chronosd refuse it (401) without a restart. Real PostgreSQL,
//! the real broker, chronosd and the CLI as processes.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use chronos::stack::postgres::PostgresServer;
use chronos::stack::process::free_port;
use common::*;

fn keys_toml(kafka: &Kafka, port: u16, pg_url: &str) -> String {
    config_toml(kafka, port, &format!("[postgres]\nurl = \"{pg_url}\"\n")).replacen(
        "[http]\n",
        "[http]\nkeys_from_postgres = true\nkeys_refresh_secs = 1\n",
        1,
    )
}

/// Status of a batch sent with `key` from the allowed origin.
fn send_with(c: &reqwest::blocking::Client, d: &Chronosd, key: &str) -> u16 {
    let mut b = batch("rotation", 6);
    b["key"] = key.into();
    post(c, d, &b, "198.51.100.10").0
}

fn wait_for_status(c: &reqwest::blocking::Client, d: &Chronosd, key: &str, want: u16) {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let got = send_with(c, d, key);
        if got == want {
            return;
        }
        assert!(Instant::now() < until, "key still answers {got}, not {want}, after 15 s\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn rotation_without_restart() {
    let pg_dir = temp_dir();
    let pg = PostgresServer::start_in(pg_dir.path()).expect("start PostgreSQL");
    let kafka = Kafka::start(1);
    let toml = keys_toml(&kafka, free_port(), &pg.url());
    let dir = temp_dir();
    let config = dir.path().join("chronos.toml");
    std::fs::write(&config, &toml).unwrap();
    let d = Chronosd::start(&toml);
    d.wait_ready(Duration::from_secs(30));
    let c = client();
    let pid = d.pid();

    // A first stored key, then a second one: both work next to the config's key.
    let create = |id: &str| {
        let out = chronos_cli(&config, &["keys", "create", id, "--origin", "shop.example.com", "--origin", "*.blog.example.com"]);
        assert!(out.status.success(), "{}", output_text(&out));
        let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(key.starts_with("wk_") && key.len() >= 16, "{key}");
        key
    };
    let old = create("site-2025");
    wait_for_status(&c, &d, &old, 200);
    let new = create("site-2026");
    wait_for_status(&c, &d, &new, 200);
    assert_eq!(send_with(&c, &d, &old), 200, "the old key works while the new one does");
    assert_eq!(send_with(&c, &d, KEY), 200, "the config's key is unaffected");

    // Revoke the old one: refused, the new one still works, no restart.
    let out = chronos_cli(&config, &["keys", "revoke", "site-2025"]);
    assert!(out.status.success(), "{}", output_text(&out));
    wait_for_status(&c, &d, &old, 401);
    assert_eq!(send_with(&c, &d, &new), 200);
    assert_eq!(d.pid(), pid, "same chronosd process");
    assert!(chronos::stack::process::alive(pid));

    let list = output_text(&chronos_cli(&config, &["keys", "list"]));
    let line = |id: &str| list.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("{id} not listed:\n{list}")).to_string();
    assert!(line("shop").contains("config") && line("shop").contains("active"), "{list}");
    assert!(line("site-2025").contains("stored") && line("site-2025").contains("revoked"), "{list}");
    assert!(line("site-2026").contains("active") && line("site-2026").contains("*.blog.example.com"), "{list}");
    assert!(!list.contains(&new) && !list.contains(&old), "list never prints secrets:\n{list}");
    // PostgreSQL holds each key's SHA-256, never the key.
    for key in [&old, &new] {
        assert_eq!(count(&pg.url(), &format!("SELECT count(*) FROM chronos.write_keys w WHERE w::text LIKE '%{key}%'")), 0, "a key stored in clear");
        let hashed = format!("SELECT count(*) FROM chronos.write_keys WHERE key_sha256 = sha256(convert_to('{key}', 'UTF8'))");
        assert_eq!(count(&pg.url(), &hashed), 1);
    }

    // Mistakes are refused with what to do.
    let refused = |args: &[&str], says: &str| {
        let out = chronos_cli(&config, args);
        assert!(!out.status.success(), "`chronos {}` succeeded", args.join(" "));
        assert!(output_text(&out).contains(says), "`chronos {}`: {}", args.join(" "), output_text(&out));
    };
    refused(&["keys", "create", "site-2026", "--origin", "shop.example.com"], "already exists");
    refused(&["keys", "create", "shop", "--origin", "shop.example.com"], "config file");
    refused(&["keys", "create", "x", "--origin", "*."], "origin `*.`");
    refused(&["keys", "create", "x"], "could never be used");
    refused(&["keys", "create", "x", "--origin", "a.com", "--key", "short"], "16-256");
    refused(&["keys", "revoke", "shop"], "remove its [[keys]] entry");
    refused(&["keys", "revoke", "nope"], "no stored key `nope`");
    refused(&["keys", "revoke", "site-2025"], "already revoked");
}

#[test]
fn chronosd_does_not_start_without_its_stored_keys() {
    let kafka = Kafka::start(1);
    let dead_pg = format!("postgres://chronos@127.0.0.1:{}/chronos", free_port());
    let dir = temp_dir();
    let config = dir.path().join("chronos.toml");
    std::fs::write(&config, keys_toml(&kafka, free_port(), &dead_pg)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chronosd")).arg("--config").arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("http.keys_from_postgres") && err.contains("not reachable"), "{err}");
}

#[test]
fn the_quickstart_config_reads_stored_keys() {
    let dir = temp_dir();
    let c = chronos::config::Config::from_toml(&chronos::stack::quickstart_config(dir.path())).expect("valid quickstart config");
    assert!(c.http.keys_from_postgres, "`chronos keys` works with the stack `chronos start` makes");
    assert!(c.http.keys_refresh_secs > 0);
}

#[test]
fn keys_stored_in_clear_by_an_older_chronos_are_hashed_in_place_and_keep_working() {
    let pg_dir = temp_dir();
    let pg = PostgresServer::start_in(pg_dir.path()).expect("start PostgreSQL");
    // The table as chronos made it before keys were hashed, with one key in it.
    let secret = "wk_older_0123456789abcdef0123";
    execute_batch(
        &pg.url(),
        &format!(
            "CREATE SCHEMA chronos;
             CREATE TABLE chronos.write_keys (slot bigserial UNIQUE, id text PRIMARY KEY, key text NOT NULL UNIQUE, origins text[] NOT NULL,
                 allow_no_origin boolean NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), revoked_at timestamptz);
             INSERT INTO chronos.write_keys (id, key, origins, allow_no_origin) VALUES ('older', '{secret}', '{{shop.example.com}}', false)"
        ),
    );
    let kafka = Kafka::start(1);
    let d = Chronosd::start(&keys_toml(&kafka, free_port(), &pg.url()));
    d.wait_ready(Duration::from_secs(30));
    assert_eq!(send_with(&client(), &d, secret), 200, "the converted key still works\n{}", d.log_text());
    let columns = count(
        &pg.url(),
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'chronos' AND table_name = 'write_keys' AND column_name = 'key'",
    );
    assert_eq!(columns, 0, "the clear-text column is gone");
    assert_eq!(count(&pg.url(), &format!("SELECT count(*) FROM chronos.write_keys w WHERE w::text LIKE '%{secret}%'")), 0);
}
