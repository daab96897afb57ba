//! `chronos status` reports the loaders' consumer lag and the events stored in
//! the last minute, read from the real broker and PostgreSQL: batches posted
//! while no loader runs are lag; once a loader has stored them the lag is 0
//! and they count as the last minute's events.
//!
//! `chronos doctor` and chronosd's health metrics: each fault is caused on
//! the real stack (PostgreSQL, Kafka, chronosd) and the diagnosis checked —
//! several faults per stack, one after another, to keep the time down.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

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

/// `chronos doctor` with `args`: (exit status, stdout + stderr). Unless the
/// call is about the disk, its thresholds are out of reach, so that the exit
/// status does not depend on the test machine's disk.
fn doctor(config: &std::path::Path, args: &[&str]) -> (i32, String) {
    let mut all = vec!["doctor"];
    all.extend_from_slice(args);
    if !args.iter().any(|a| a.starts_with("--disk")) {
        all.extend_from_slice(&["--disk-warn-percent", "101", "--disk-fault-percent", "101"]);
    }
    let out = chronos_cli(config, &all);
    (out.status.code().unwrap_or(-1), output_text(&out))
}

/// The finding line of `severity` for `check` (its `fix:` line follows it).
fn finding<'a>(text: &'a str, severity: &str, check: &str) -> &'a str {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(severity) && l[severity.len()..].trim_start().starts_with(check))
        .unwrap_or_else(|| panic!("no `{severity}` finding for `{check}` in:\n{text}"))
}

/// The fix printed under the finding line `line`.
fn fix_of<'a>(text: &'a str, line: &str) -> &'a str {
    let mut lines = text.lines().skip_while(|l| *l != line);
    lines.next();
    lines.next().filter(|l| l.trim_start().starts_with("fix: ")).unwrap_or_else(|| panic!("no fix under `{line}` in:\n{text}")).trim_start()
}

/// chronosd's `/metrics` lines named `name` whose labels include `label`.
fn metric_value(d: &Chronosd, name: &str, label: &str) -> Option<f64> {
    let text = client().get(d.admin_url("/metrics")).send().ok()?.text().ok()?;
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Sets `topic`'s dynamic settings to `settings` exactly (the others go back
/// to the broker's defaults: AlterConfigs replaces the set).
fn set_topic_config(kafka: &Kafka, topic: &str, settings: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    let admin: AdminClient<_> = rdkafka::ClientConfig::new().set("bootstrap.servers", &kafka.bootstrap).create().unwrap();
    let config = settings.iter().fold(AlterConfig::new(ResourceSpecifier::Topic(topic)), |c, (k, v)| c.set(k, v));
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let r = chronos::rt::block_on(admin.alter_configs(&[config], &opts)).unwrap();
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
}

/// One stack (PostgreSQL, a broker, chronosd with its loaders), faults one
/// after another: the archive failing then mended (healthy: exit 0), the disk
/// over the thresholds, dead letters arriving, min.insync.replicas that can
/// never be met, a stalled partition with its last error, retention shorter
/// than the lag; each in `chronos doctor` (text and --json), `/metrics` and
/// `chronos status`, and each mended again.
#[test]
fn doctor_diagnoses_archive_disk_dead_letters_min_isr_stall_and_retention() {
    let started = Instant::now();
    let pg_dir = temp_dir();
    let mut pg = PostgresServer::start_in(pg_dir.path()).expect("start PostgreSQL");
    let kafka = Kafka::start(1);
    let dir = temp_dir();
    // The archive "directory" is a file: every run fails until it is a directory.
    let archive = dir.path().join("archive");
    std::fs::write(&archive, "not a directory").unwrap();
    let extra = format!(
        "health_poll_secs = 1\n[retention]\narchive = \"{}\"\nevery_secs = 1\n[stack]\ndir = \"{}\"\n",
        archive.display(),
        dir.path().join("state").display()
    );
    let toml = config_toml_with_pg(&kafka, free_port(), &pg.url(), "stalled_after_secs = 3\ntimescaledb = \"never\"\nretry_max_ms = 1000", &extra);
    let config = dir.path().join("chronos.toml");
    std::fs::write(&config, &toml).unwrap();
    let d = Chronosd::start(&toml);
    d.wait_ready(Duration::from_secs(60));

    // The archive fails: a fault with the message, counted in /metrics.
    d.wait_until("a failed archive run", Duration::from_secs(30), || {
        metric_value(&d, "chronos_archive_runs_total", "outcome=\"failed\"").is_some_and(|n| n >= 1.0)
    });
    let (code, text) = doctor(&config, &[]);
    assert_eq!(code, 2, "{text}");
    let found = finding(&text, "fault", "archive");
    assert!(found.contains("failing:") && found.contains("the archive cannot be opened") && found.contains(&archive.display().to_string()), "{text}");
    assert!(fix_of(&text, found).contains("retention.archive"), "{text}");
    let (code, json) = doctor(&config, &["--json"]);
    let json: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!((code, json["status"].as_str(), json["exit"].as_i64()), (2, Some("fault"), Some(2)), "{json}");
    let faults: Vec<&Value> = json["findings"].as_array().unwrap().iter().filter(|f| f["severity"] == "fault").collect();
    assert_eq!(faults.len(), 1, "only the archive: {json}");
    assert_eq!(faults[0]["check"], "archive");

    // Mended: the next run succeeds, and nothing else is wrong.
    std::fs::remove_file(&archive).unwrap();
    std::fs::create_dir(&archive).unwrap();
    d.wait_until("a successful archive run", Duration::from_secs(30), || {
        metric_value(&d, "chronos_archive_runs_total", "outcome=\"ok\"").is_some_and(|n| n >= 1.0)
    });
    assert!(metric_value(&d, "chronos_archive_last_success_timestamp_seconds", "").is_some_and(|t| t > 1.7e9));
    let (code, text) = doctor(&config, &[]);
    assert_eq!(code, 0, "healthy:\n{text}");
    assert!(text.ends_with("healthy: nothing to fix\n"), "{text}");
    assert_eq!(metric_value(&d, "chronos_kafka_brokers", ""), Some(1.0));
    assert_eq!(metric_value(&d, "chronos_kafka_controller_active", ""), Some(1.0));
    assert_eq!(metric_value(&d, "chronos_kafka_brokers_expected", ""), None, "kafka.expected_brokers unset: not exported");
    let topic_label = format!("topic=\"{}\"", kafka.topic);
    for m in ["chronos_kafka_partitions_under_replicated", "chronos_kafka_partitions_offline", "chronos_kafka_partitions_below_min_isr"] {
        assert_eq!(metric_value(&d, m, &topic_label), Some(0.0), "{m}");
    }
    let st = status(&config);
    assert!(line_of(&st, "kafka").contains("1 brokers, controller"), "{st}");
    assert!(
        line(&st, "topic", &kafka.topic).contains("1 partitions, replication 1: 0 under-replicated, 0 offline, 0 below min.insync.replicas (1)"),
        "{st}"
    );

    // The disk thresholds are settings: a warning, then a fault.
    let (code, text) = doctor(&config, &["--disk-warn-percent", "0.001", "--disk-fault-percent", "101"]);
    assert_eq!(code, 1, "{text}");
    assert!(finding(&text, "warning", "disk").contains("% used on the filesystem of"), "{text}");
    let (code, text) = doctor(&config, &["--disk-fault-percent", "0.001"]);
    assert_eq!(code, 2, "{text}");
    let found = finding(&text, "fault", "disk");
    assert!(found.contains("nearly full:") && found.contains(&dir.path().join("state").display().to_string()), "{text}");
    assert!(fix_of(&text, found).contains("stack.dir"), "{text}");

    // Dead letters arriving: an event of the wrong type.
    let mut bad = batch("doctor-dl", 3);
    bad["events"][1] = json!(["mouse_moves", now_ms(), "left", 4]);
    let (s, body, _) = post(&client(), &d, &bad, "198.51.100.7");
    assert_eq!(s, 200, "{body}");
    d.wait_until("the dead letter stored", Duration::from_secs(30), || count(&pg.url(), "SELECT count(*) FROM chronos.dead_letters") >= 1);
    let (code, text) = doctor(&config, &[]);
    assert_eq!(code, 1, "{text}");
    let found = finding(&text, "warning", "dead letters");
    assert!(found.contains("rising: 1 stored in the last 15 min (0 in the 15 min before)"), "{text}");
    assert!(fix_of(&text, found).contains("chronos dead-letters list"), "{text}");

    // min.insync.replicas above the replicas: never met.
    set_topic_config(&kafka, &kafka.dead_letter_topic, &[("min.insync.replicas", "2")]);
    let (code, text) = doctor(&config, &[]);
    assert_eq!(code, 2, "{text}");
    let found = finding(&text, "fault", &format!("topic {}", kafka.dead_letter_topic));
    assert!(found.contains("min.insync.replicas = 2 can never be met with 1 replica(s)"), "{text}");
    assert!(fix_of(&text, found).contains(&format!("--entity-name {} --add-config min.insync.replicas=1", kafka.dead_letter_topic)), "{text}");
    set_topic_config(&kafka, &kafka.dead_letter_topic, &[]);

    // A stalled partition: its loader's flushes fail (a raw table gone) while records wait.
    execute_batch(&pg.url(), "ALTER TABLE events_raw.clicks RENAME TO clicks_away");
    let (s, body, _) = post(&client(), &d, &batch("doctor-stall", 6), "198.51.100.8");
    assert_eq!(s, 200, "{body}");
    let stalled = |d: &Chronosd| metric_value(d, "chronos_load_partition_stalled", &topic_label);
    d.wait_until("the partition reported stalled", Duration::from_secs(40), || stalled(&d) == Some(1.0));
    let (code, text) = doctor(&config, &[]);
    assert_eq!(code, 2, "{text}");
    let found = finding(&text, "fault", &format!("loader {}/0", kafka.topic));
    assert!(found.contains("stalled: 1 records waiting and nothing stored for over 3 s"), "{text}");
    assert!(found.contains("last error: flush failed: 42P01: relation \"events_raw.clicks\" does not exist"), "{text}");
    assert!(fix_of(&text, found).contains("chronos install-pipeline"), "{text}");
    let st = status(&config);
    assert!(
        line(&st, "stalled", &format!("{}/0", kafka.topic)).contains("1 records waiting, nothing stored for 3 s; last error: flush failed: 42P01"),
        "{st}"
    );

    // Retention shorter than the lag: the waiting record is older than 2 s.
    set_topic_config(&kafka, &kafka.topic, &[("retention.ms", "2000")]);
    d.wait_until("a negative retention headroom", Duration::from_secs(30), || {
        metric_value(&d, "chronos_kafka_retention_headroom_seconds", &topic_label).is_some_and(|s| s < 0.0)
    });
    let (code, text) = doctor(&config, &[]);
    assert_eq!(code, 2, "{text}");
    let found = finding(&text, "fault", &format!("topic {}", kafka.topic));
    assert!(found.contains("retention (2 s) shorter than the lag: 1 records not loaded, the oldest"), "{text}");
    assert!(fix_of(&text, found).contains(&format!("--entity-name {} --add-config retention.ms=", kafka.topic)), "{text}");
    assert!(line(&status(&config), "topic", &kafka.topic).contains("retention headroom -"), "negative headroom shown");

    // Mended: the loader's retry stores the batch, nothing is stalled.
    set_topic_config(&kafka, &kafka.topic, &[]);
    execute_batch(&pg.url(), "ALTER TABLE events_raw.clicks_away RENAME TO clicks");
    // Stalled 0 once the commit is in; the headroom leaves at the first poll that reads no lag.
    d.wait_until("the partition loading again, no headroom left to report", Duration::from_secs(40), || {
        stalled(&d) == Some(0.0) && metric_value(&d, "chronos_kafka_retention_headroom_seconds", &topic_label).is_none()
    });
    assert!(metric_value(&d, "chronos_load_last_commit_timestamp_seconds", &topic_label).is_some_and(|t| t > 1.7e9));
    let (code, text) = doctor(&config, &[]);
    assert_eq!(code, 1, "only the dead letter's warning is left:\n{text}");

    // PostgreSQL stops while the loaders are idle, then batches come: the
    // poll cannot read the stored offsets, so the lag counts from what the
    // loader here last stored, and the partition is reported stalled.
    pg.stop();
    let (s, body, _) = post(&client(), &d, &batch("doctor-pg-down", 4), "198.51.100.8");
    assert_eq!(s, 200, "{body}");
    d.wait_until("the partition reported stalled without PostgreSQL", Duration::from_secs(40), || stalled(&d) == Some(1.0));
    pg.restart().expect("restart PostgreSQL");
    d.wait_until("the partition loading again after PostgreSQL's return", Duration::from_secs(60), || stalled(&d) == Some(0.0));
    assert_eq!(
        count(&pg.url(), "SELECT count(*) FROM events.clicks WHERE session_id = 'doctor-pg-down'"),
        1,
        "its click stored once PostgreSQL is back"
    );
    println!("doctor_diagnoses_archive_disk_dead_letters_min_isr_stall_and_retention: {:.1} s", started.elapsed().as_secs_f64());
}

fn line_of<'a>(text: &'a str, start: &str) -> &'a str {
    line(text, start, "")
}

/// Without chronosd or a broker: the broker and PostgreSQL unreachable,
/// PostgreSQL refusing the TLS the URL requires, and TimescaleDB installed in
/// a server that does not preload it.
#[test]
fn doctor_diagnoses_no_broker_postgres_unreachable_or_without_tls_and_timescaledb_not_preloaded() {
    let dir = temp_dir();
    let config = dir.path().join("chronos.toml");
    let write = |pg_url: &str| {
        std::fs::write(
            &config,
            format!(
                "[[keys]]\nid = \"k\"\nkey = \"{KEY}\"\norigins = [\"shop.example.com\"]\n[kafka]\nbrokers = \"127.0.0.1:{}\"\n[postgres]\nurl = \"{pg_url}\"\n[http]\nadmin_listen = \"127.0.0.1:{}\"\n[stack]\ndir = \"{}\"\n",
                free_port(),
                free_port(),
                dir.path().join("state").display()
            ),
        )
        .unwrap()
    };
    write(&format!("postgres://chronos@127.0.0.1:{}/chronos", free_port()));
    let (code, text) = doctor(&config, &[]);
    assert_eq!(code, 2, "{text}");
    let kafka = finding(&text, "fault", "kafka");
    assert!(kafka.contains("no Kafka broker at 127.0.0.1:") && kafka.contains("answered"), "{text}");
    assert!(fix_of(&text, kafka).contains("chronos start broker"), "{text}");
    let pg = finding(&text, "fault", "postgres");
    assert!(pg.contains("unreachable: PostgreSQL at postgres://chronos@127.0.0.1:"), "{text}");
    assert!(fix_of(&text, pg).contains("chronos start postgres"), "{text}");
    let chronosd = finding(&text, "warning", "chronosd");
    assert!(chronosd.contains("did not answer") && fix_of(&text, chronosd).contains("chronos start chronosd"), "{text}");

    let installed = chronos::stack::postgres::timescaledb_installed();
    let pg_dir = temp_dir();
    let server = PostgresServer::start_with(pg_dir.path(), false).expect("start PostgreSQL");
    let tls_url = format!("{}?sslmode=require", server.url());
    write(&tls_url);
    let (code, text) = doctor(&config, &[]);
    assert_eq!(code, 2, "{text}");
    let tls = finding(&text, "fault", "postgres.tls");
    assert!(tls.contains("does not offer TLS, but sslmode=require requires it"), "{text}");
    assert!(fix_of(&text, tls).contains("sslmode in postgres.url"), "{text}");

    write(&server.url());
    let (_, text) = doctor(&config, &[]);
    assert!(finding(&text, "ok", "postgres").contains("reachable at"), "{text}");
    if installed {
        let found = finding(&text, "warning", "postgres.timescaledb");
        assert!(found.contains("installed but not preloaded"), "{text}");
        assert!(fix_of(&text, found).contains("shared_preload_libraries = 'timescaledb'"), "{text}");
    } else {
        assert!(!text.contains("postgres.timescaledb"), "not installed, load.timescaledb = auto: nothing to say\n{text}");
        println!("TimescaleDB is not installed: the not-preloaded case was not caused");
    }
}

/// Creates `topic` with one partition whose only replica is on broker `broker`.
fn create_topic_on(kafka: &Kafka, topic: &str, broker: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<_> = rdkafka::ClientConfig::new().set("bootstrap.servers", &kafka.bootstrap).create().unwrap();
    let assignment: &[&[i32]] = &[&[broker]];
    let new = NewTopic::new(topic, 1, TopicReplication::Variable(assignment));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let r = chronos::rt::block_on(admin.create_topics(&[new], &opts)).unwrap();
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
}

/// Three brokers (replication 3, min.insync.replicas 2), kafka.expected_brokers
/// = 3: healthy in /metrics and doctor; a topic of one replica (a warning)
/// and min.insync.replicas 1 of 3 (a warning). One broker killed: 2 of 3
/// expected (a fault), its partitions under-replicated (a warning), the
/// one-replica topic offline (a fault), in /metrics, doctor and status;
/// then min.insync.replicas 3 with 2 in sync (a fault).
#[test]
fn doctor_and_metrics_see_a_broker_down_in_a_three_node_cluster() {
    let started = Instant::now();
    let pg_dir = temp_dir();
    let pg = PostgresServer::start_in(pg_dir.path()).expect("start PostgreSQL");
    let mut kafka = Kafka::start_cluster(2);
    let dir = temp_dir();
    let extra = format!("health_poll_secs = 1\nexpected_brokers = 3\n[stack]\ndir = \"{}\"\n", dir.path().join("state").display());
    let toml = config_toml_with_pg(&kafka, free_port(), &pg.url(), "", &extra);
    let config = dir.path().join("chronos.toml");
    std::fs::write(&config, &toml).unwrap();
    let d = Chronosd::start(&toml);
    d.wait_ready(Duration::from_secs(60));
    let topic_label = format!("topic=\"{}\"", kafka.topic);
    d.wait_until("3 brokers in /metrics", Duration::from_secs(30), || metric_value(&d, "chronos_kafka_brokers", "") == Some(3.0));
    assert_eq!(metric_value(&d, "chronos_kafka_brokers_expected", ""), Some(3.0));
    assert_eq!(metric_value(&d, "chronos_kafka_controller_active", ""), Some(1.0));
    assert_eq!(metric_value(&d, "chronos_kafka_partitions_under_replicated", &topic_label), Some(0.0));
    let (code, text) = doctor(&config, &[]);
    assert_eq!(code, 0, "{text}");
    assert!(finding(&text, "ok", "kafka.brokers").contains("3 brokers (ids 1, 2, 3), 3 expected"), "{text}");

    // A topic of one replica, on the broker about to go (doctor reads any config's topics).
    let solo = unique("solo");
    create_topic_on(&kafka, &solo, 3);
    let solo_config = dir.path().join("solo.toml");
    std::fs::write(
        &solo_config,
        toml.replace(&format!("dead_letter_topic = \"{}\"", kafka.dead_letter_topic), &format!("dead_letter_topic = \"{solo}\"")),
    )
    .unwrap();
    let (code, text) = doctor(&solo_config, &[]);
    assert_eq!(code, 1, "{text}");
    let found = finding(&text, "warning", &format!("topic {solo}"));
    assert!(found.contains("replication factor 1 on a 3-broker cluster: losing one broker loses records"), "{text}");
    assert!(fix_of(&text, found).contains("kafka-reassign-partitions.sh"), "{text}");
    // min.insync.replicas 1 of 3 replicas: acknowledged with one copy.
    set_topic_config(&kafka, &kafka.dead_letter_topic, &[("min.insync.replicas", "1")]);
    let (code, text) = doctor(&config, &[]);
    assert_eq!(code, 1, "{text}");
    let found = finding(&text, "warning", &format!("topic {}", kafka.dead_letter_topic));
    assert!(found.contains("min.insync.replicas = 1 with 3 replicas"), "{text}");
    assert!(fix_of(&text, found).contains("--add-config min.insync.replicas=2"), "{text}");
    set_topic_config(&kafka, &kafka.dead_letter_topic, &[("min.insync.replicas", "2")]);

    kafka.cluster().kill(2);
    d.wait_until("2 brokers and under-replicated partitions", Duration::from_secs(60), || {
        metric_value(&d, "chronos_kafka_brokers", "") == Some(2.0)
            && metric_value(&d, "chronos_kafka_partitions_under_replicated", &topic_label).is_some_and(|n| n >= 1.0)
    });
    assert_eq!(metric_value(&d, "chronos_kafka_partitions_offline", &topic_label), Some(0.0), "two of three replicas still lead");
    assert_eq!(metric_value(&d, "chronos_kafka_partitions_below_min_isr", &topic_label), Some(0.0), "2 in sync = min.insync.replicas");
    let (code, text) = doctor(&config, &[]);
    assert_eq!(code, 2, "{text}");
    let found = finding(&text, "fault", "kafka.brokers");
    assert!(found.contains("2 of 3 expected brokers in the cluster (ids 1, 2): a broker is down"), "{text}");
    assert!(fix_of(&text, found).contains("start the missing broker"), "{text}");
    assert!(finding(&text, "warning", &format!("topic {}", kafka.topic)).contains("partitions under-replicated"), "{text}");
    let st = status(&config);
    assert!(line_of(&st, "kafka").contains("2 brokers (expected 3)"), "{st}");
    assert!(line(&st, "topic", &kafka.topic).contains("replication 3:") && !line(&st, "topic", &kafka.topic).contains(" 0 under-replicated"), "{st}");

    // The one-replica topic lost its only broker: offline.
    let until = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let (code, text) = doctor(&solo_config, &[]);
        if text.contains("partitions offline") || Instant::now() > until {
            assert_eq!(code, 2, "{text}");
            break text;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let found = finding(&text, "fault", &format!("topic {solo}"));
    assert!(found.contains("1 of 1 partitions offline (no leader)"), "{text}");
    assert!(fix_of(&text, found).contains("start the brokers holding their replicas"), "{text}");

    // min.insync.replicas 3 with 2 replicas in sync: writes refused.
    set_topic_config(&kafka, &kafka.topic, &[("min.insync.replicas", "3")]);
    d.wait_until("partitions below min.insync.replicas", Duration::from_secs(30), || {
        metric_value(&d, "chronos_kafka_partitions_below_min_isr", &topic_label).is_some_and(|n| n >= 1.0)
    });
    let (code, text) = doctor(&config, &[]);
    assert_eq!(code, 2, "{text}");
    let found = finding(&text, "fault", &format!("topic {}", kafka.topic));
    assert!(found.contains("with fewer in-sync replicas than min.insync.replicas = 3: writes (acks=all) are refused"), "{text}");
    println!("doctor_and_metrics_see_a_broker_down_in_a_three_node_cluster: {:.1} s", started.elapsed().as_secs_f64());
}
