//! `chronos start|status|log|stop` brings up the real local stack (PostgreSQL
//! from the machine, one Apache Kafka node, chronosd) in one directory, and
//! takes it down; a restart keeps Kafka's data; with `stack.broker =
//! "external"` it starts no broker and uses the cluster it is given.

mod common;

use std::process::Output;
use std::time::Duration;

use chronos::stack::process::free_port;
use common::*;

struct StackGuard {
    config: std::path::PathBuf,
}

impl StackGuard {
    fn chronos(&self, args: &[&str]) -> Output {
        chronos_cli(&self.config, args)
    }
}

impl Drop for StackGuard {
    fn drop(&mut self) {
        let _ = self.chronos(&["stop"]);
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn chronos_start_status_log_stop() {
    let dir = temp_dir();
    let (http, pg, broker, controller, admin) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let config = dir.path().join("chronos.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[http]
listen = "127.0.0.1:{http}"
admin_listen = "127.0.0.1:{admin}"
[[keys]]
id = "local"
key = "{KEY}"
origins = ["shop.example.com"]
[kafka]
brokers = "127.0.0.1:{broker}"
partitions = 2
[postgres]
url = "postgres://chronos@127.0.0.1:{pg}/chronos"
[stack]
dir = "{}"
postgres_port = {pg}
broker_port = {broker}
controller_port = {controller}
"#,
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let stack = StackGuard { config };

    let out = stack.chronos(&["start"]);
    assert!(out.status.success(), "{}", text(&out));
    let started = text(&out);
    assert!(started.contains(&format!("http://127.0.0.1:{http}/v1/batch")), "{started}");

    let out = stack.chronos(&["status"]);
    let status = text(&out);
    assert!(out.status.success(), "{status}");
    for svc in ["postgres", "broker", "chronosd"] {
        assert!(status.lines().any(|l| l.starts_with(svc) && l.contains(" up ")), "{svc} not up:\n{status}");
    }
    assert!(status.lines().any(|l| l.starts_with("chronosd") && l.ends_with(" ready")), "chronos start returns once chronosd is ready:\n{status}");
    let version = chronos::stack::broker::KafkaInstall::find().unwrap().version;
    assert!(status.contains(&format!("Apache Kafka {version} (KRaft), 1 broker")), "{status}");

    // The stack ingests: a batch is acknowledged (so it is in the broker's topic).
    let d = std::net::SocketAddr::from(([127, 0, 0, 1], http));
    let c = client();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let res = c
            .post(format!("http://{d}/v1/batch"))
            .header("Origin", ORIGIN)
            .header("Content-Type", "text/plain")
            .body(batch("stack", 3).to_string())
            .send()
            .unwrap();
        if res.status().as_u16() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < until, "stack never accepted a batch: {}", res.text().unwrap());
        std::thread::sleep(Duration::from_millis(300));
    }
    // PostgreSQL answers on its port with the chronos database.
    let url = format!("host=127.0.0.1 port={pg} user=chronos dbname=chronos");
    let one: i32 = chronos::rt::block_on(async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client.query_one("SELECT 1", &[]).await.unwrap().get(0)
    });
    assert_eq!(one, 1);

    let out = stack.chronos(&["log", "chronosd", "-n", "20"]);
    assert!(text(&out).contains("Receiving batches"), "{}", text(&out));

    // Starting again is harmless.
    let out = stack.chronos(&["start", "broker"]);
    assert!(text(&out).contains("already running"), "{}", text(&out));
    let out = stack.chronos(&["log", "broker", "-n", "2000"]);
    assert!(text(&out).contains("Kafka Server started"), "{}", text(&out));

    // The broker stops cleanly (SIGTERM) within the deadline, and a restart keeps its data.
    let bootstrap = format!("127.0.0.1:{broker}");
    let before = records_in(&bootstrap, "chronos.events");
    assert!(before >= 1, "the acknowledged batch is in the topic");
    let t0 = std::time::Instant::now();
    let out = stack.chronos(&["stop", "broker"]);
    assert!(out.status.success() && text(&out).contains("broker    stopped") && !text(&out).contains("killed"), "{}", text(&out));
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    let out = stack.chronos(&["start", "broker"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("formatting"), "formatted once only: {}", text(&out));
    assert_eq!(records_in(&bootstrap, "chronos.events"), before, "the restarted broker kept its records");

    let out = stack.chronos(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = stack.chronos(&["status"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).lines().all(|l| !l.contains(" up ")), "{}", text(&out));
}

/// A machine where TimescaleDB cannot be installed: the first command does not
/// dead-end. `.ci/setup` says so once and exits 0, and `chronos start` brings
/// the stack up on native partitions. The machine is made to look that way by a
/// `pg_config` whose package library directory holds no TimescaleDB (what setup
/// and the stack both look at) and CHRONOS_TIMESCALEDB=skip (no install tried).
#[test]
fn the_first_run_goes_on_without_timescaledb() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir();
    let which = std::process::Command::new("sh").args(["-c", "command -v pg_config"]).output().unwrap();
    let real = String::from_utf8(which.stdout).unwrap().trim().to_string();
    assert!(!real.is_empty(), "pg_config on PATH");
    let (bin, lib) = (dir.path().join("bin"), dir.path().join("lib"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&lib).unwrap();
    let fake = bin.join("pg_config");
    std::fs::write(&fake, format!("#!/bin/sh\nif [ \"$1\" = --pkglibdir ]; then echo '{}'; else exec '{real}' \"$@\"; fi\n", lib.display())).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());

    let setup = std::process::Command::new(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/setup"))
        .env("PATH", &path)
        .env("CHRONOS_TIMESCALEDB", "skip")
        .output()
        .unwrap();
    let said = text(&setup);
    assert!(setup.status.success(), "{said}");
    assert_eq!(said.matches("TimescaleDB is not installed").count(), 1, "said once: {said}");
    assert!(said.contains("the stack uses native PostgreSQL partitions; the hypertable tests need it"), "{said}");
    assert!(said.contains("ready: PostgreSQL") && said.contains("no TimescaleDB"), "{said}");

    let (http, pg, broker, controller, admin) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let config = dir.path().join("chronos.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:{http}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n[[keys]]\nid = \"local\"\nkey = \"{KEY}\"\norigins = [\"shop.example.com\"]\n\
             [kafka]\nbrokers = \"127.0.0.1:{broker}\"\npartitions = 1\n[postgres]\nurl = \"postgres://chronos@127.0.0.1:{pg}/chronos\"\n\
             [stack]\ndir = \"{}\"\npostgres_port = {pg}\nbroker_port = {broker}\ncontroller_port = {controller}\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let stack = StackGuard { config: config.clone() };
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_chronos")).arg("--config").arg(&config).args(args).env("PATH", &path).output().unwrap()
    };
    let out = cli(&["start"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = cli(&["status"]);
    let status = text(&out);
    assert!(out.status.success(), "{status}");
    assert!(status.lines().any(|l| l.starts_with("tables") && l.contains("native daily partitions")), "{status}");
    drop(stack);
}

/// Records in every partition of `topic` (high minus low watermarks).
fn records_in(bootstrap: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    let m = c.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    m.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let (lo, hi) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).unwrap();
            hi - lo
        })
        .sum()
}

#[test]
fn an_external_cluster_is_used_as_is_and_never_started_or_stopped() {
    let kafka = Kafka::start(1);
    let dir = temp_dir();
    let config = dir.path().join("chronos.toml");
    let topic = unique("external");
    std::fs::write(
        &config,
        format!(
            "[[keys]]\nid = \"k\"\nkey = \"{KEY}\"\norigins = [\"shop.example.com\"]\n[kafka]\nbrokers = \"{}\"\ntopic = \"{topic}\"\n\
             dead_letter_topic = \"{topic}.dead\"\npartitions = 2\n[stack]\ndir = \"{}\"\nbroker = \"external\"\n",
            kafka.bootstrap,
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let stack = StackGuard { config };
    let out = stack.chronos(&["start", "broker"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("external: {}", kafka.bootstrap)), "{}", text(&out));
    assert!(!dir.path().join("state/kafka").exists(), "no local Kafka data directory");
    assert_eq!(records_in(&kafka.bootstrap, &topic), 0, "the topic was created on the external cluster");
    let out = stack.chronos(&["status"]);
    let status = text(&out);
    assert!(status.lines().any(|l| l.starts_with("broker") && l.contains(" up ") && l.contains("external cluster, 1 broker")), "{status}");
    let out = stack.chronos(&["stop", "broker"]);
    assert!(text(&out).contains("external (not stopped)"), "{}", text(&out));
    assert!(chronos::stack::broker::broker_ids(&kafka.bootstrap, Duration::from_secs(10)).is_ok(), "the cluster still answers");
    // The local mode refuses a kafka.brokers that is not its node.
    let local = std::fs::read_to_string(&stack.config).unwrap().replace("broker = \"external\"", "broker = \"local\"");
    std::fs::write(&stack.config, local).unwrap();
    let out = stack.chronos(&["start", "broker"]);
    assert!(!out.status.success() && text(&out).contains("does not name the local Kafka node"), "{}", text(&out));
}

#[test]
fn a_kafka_port_taken_before_the_node_binds_it_is_retried_on_fresh_ports() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = temp_dir();
    // Held for the whole test: the first attempt's controller port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let attempts = AtomicUsize::new(0);
    let cluster = chronos::stack::broker::KafkaCluster::single_with(dir.path(), |node| {
        if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
            node.controller_port = taken_port;
            node.voters = format!("1@127.0.0.1:{taken_port}");
        }
    })
    .expect("started on the second attempt");
    assert_eq!(attempts.load(Ordering::SeqCst), 2, "one retry");
    assert_ne!(cluster.nodes[0].controller_port, taken_port);
    let ids = chronos::stack::broker::broker_ids(&cluster.bootstrap(), std::time::Duration::from_secs(10)).unwrap();
    assert_eq!(ids, [1]);
    drop(taken);
}
