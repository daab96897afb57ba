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
allow_no_origin = true
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

    // The printed curl line's event is a browser's (issue 30, item 3): stored
    // with is_bot = false, so the default views count it.
    let curl = started.lines().map(str::trim).find(|l| l.starts_with("curl ")).unwrap_or_else(|| panic!("no curl line:\n{started}"));
    assert!(curl.contains(&format!("-A '{}'", chronos::stack::DEMO_USER_AGENT)), "{curl}");
    let sent = std::process::Command::new("sh").arg("-c").arg(curl).output().unwrap();
    assert!(text(&sent).contains("\"accepted\":1"), "{curl}\n{}", text(&sent));
    let url = format!("postgres://chronos@127.0.0.1:{pg}/chronos");
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while count(&url, "SELECT count(*) FROM events.clicks WHERE session_id = 'demo'") == 0 {
        assert!(std::time::Instant::now() < until, "the curl line's event was not stored");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(count(&url, "SELECT count(*) FROM events.clicks WHERE session_id = 'demo' AND NOT is_bot"), 1, "stored as a browser's");

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
    // A test-only package that apt cannot install (nginx-light: absent, and
    // every apt-get run fails) and a Node.js too old for the tracker's tools:
    // both are named, and neither stops the first run.
    let fakes = [
        ("dpkg", "#!/bin/sh\nif [ \"$1\" = -s ] && [ \"$2\" = nginx-light ]; then exit 1; fi\nexec /usr/bin/dpkg \"$@\"\n"),
        ("apt-get", "#!/bin/sh\necho \"E: no network ($*)\" >&2\nexit 100\n"),
        ("node", "#!/bin/sh\nif [ \"$1\" = -p ]; then echo 18; else echo v18.19.0; fi\n"),
    ];
    for (name, script) in fakes {
        std::fs::write(bin.join(name), script).unwrap();
        std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
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
    assert!(said.contains("nginx-light could not be installed: the stack does not need it"), "{said}");
    assert!(said.contains("Node.js 20 or later is missing (found: v18.19.0): the stack does not need it"), "{said}");

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
    assert!(!dir.path().join("state/run/broker.supervisor.pid").exists(), "an external broker is not supervised");
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

/// A stack's config on free ports, its state in `dir/state`; returns it with
/// (http, pg, broker) ports.
fn stack_config(dir: &std::path::Path, extra: &str) -> (std::path::PathBuf, u16, u16, u16) {
    let (http, pg, broker, controller, admin) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let config = dir.join("chronos.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:{http}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n[[keys]]\nid = \"local\"\nkey = \"{KEY}\"\norigins = [\"shop.example.com\"]\n\
             [kafka]\nbrokers = \"127.0.0.1:{broker}\"\npartitions = 2\n[postgres]\nurl = \"postgres://chronos@127.0.0.1:{pg}/chronos\"\n\
             [stack]\ndir = \"{}\"\npostgres_port = {pg}\nbroker_port = {broker}\ncontroller_port = {controller}\n{extra}",
            dir.join("state").display()
        ),
    )
    .unwrap();
    (config, http, pg, broker)
}

/// The sender of the self-healing test: batches of 12 events posted one after
/// another, each retried with its batch id until acknowledged, as the tracker
/// does (a 503, 429, refused connection or timeout is retried; anything else
/// fails the test); every acknowledged batch is recorded.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::Mutex<Vec<loadgen::verify::SentBatch>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// What `SentBatch::done_ms` counts from.
    started: std::time::Instant,
}

impl Load {
    fn start(http: u16, senders: usize) -> Load {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let started = std::time::Instant::now();
        let threads = (0..senders)
            .map(|i| {
                let (stop, acked) = (stop.clone(), acked.clone());
                std::thread::spawn(move || {
                    let c = reqwest::blocking::Client::builder().timeout(Duration::from_secs(15)).user_agent(BROWSER_UA).build().unwrap();
                    let url = format!("http://127.0.0.1:{http}/v1/batch");
                    while !stop.load(Ordering::Relaxed) {
                        let body = batch(&format!("heal-{i}"), 12);
                        let id: uuid::Uuid = body["batch"].as_str().unwrap().parse().unwrap();
                        let body = body.to_string();
                        loop {
                            let res = c.post(&url).header("Origin", ORIGIN).header("Content-Type", "text/plain").body(body.clone()).send();
                            match res.map(|r| (r.status().as_u16(), r.text().unwrap_or_default())) {
                                Ok((200, text)) => {
                                    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
                                    let accepted = answer["accepted"].as_u64().unwrap_or(12) as u32;
                                    assert_eq!(accepted, 12, "{text}");
                                    let done_ms = started.elapsed().as_millis() as u32;
                                    acked.lock().unwrap().push(loadgen::verify::SentBatch { id, accepted, status: 200, done_ms });
                                    break;
                                }
                                Ok((503 | 429 | 502 | 504, _)) | Err(_) => std::thread::sleep(Duration::from_millis(200)),
                                Ok((status, text)) => panic!("batch {id}: {status} {text}"),
                            }
                        }
                        std::thread::sleep(Duration::from_millis(40));
                    }
                })
            })
            .collect();
        Load { stop, acked, threads, started }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `more` batches past `from` are acknowledged.
    fn wait_acked(&self, from: usize, more: usize, timeout: Duration) {
        let until = std::time::Instant::now() + timeout;
        while self.acked() < from + more {
            assert!(std::time::Instant::now() < until, "only {} of {more} more batches acknowledged in {timeout:?}", self.acked() - from);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn finish(self) -> Vec<loadgen::verify::SentBatch> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a sender failed");
        }
        std::sync::Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

/// Whether `service` of the stack at these ports serves, as a client sees it.
fn serving(service: &str, http: u16, pg: u16, broker: u16) -> bool {
    match service {
        "chronosd" => chronos::probe::http_get(([127, 0, 0, 1], http).into(), "/readyz", Duration::from_secs(1)).is_ok_and(|(code, _)| code == 200),
        "broker" => chronos::stack::broker::broker_ids(&format!("127.0.0.1:{broker}"), Duration::from_secs(1)).is_ok(),
        _ => {
            let url = format!("host=127.0.0.1 port={pg} user=chronos dbname=chronos connect_timeout=1");
            chronos::rt::block_on(async move {
                match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                    Ok((client, conn)) => {
                        tokio::spawn(conn);
                        client.query_one("SELECT 1", &[]).await.is_ok()
                    }
                    Err(_) => false,
                }
            })
        }
    }
}

/// Self-healing (issue 30, item 6): under load, `kill -9` of chronosd, then
/// the broker, then PostgreSQL, and no command: each one's supervisor starts
/// it again, the senders retry what was refused meanwhile, and every
/// acknowledged event is stored exactly once. `chronos status` and the
/// supervisors' log show each restart and its signal. Without the
/// supervisor the first kill leaves chronosd down and the wait for it fails.
#[test]
fn each_service_killed_under_load_is_restarted_and_nothing_is_lost_or_doubled() {
    let t_test = std::time::Instant::now();
    let dir = temp_dir();
    let (config, http, pg, broker) = stack_config(dir.path(), "[limits]\nper_ip_per_sec = 100000\nper_ip_burst = 100000\n");
    let stack = StackGuard { config };
    let out = stack.chronos(&["start"]);
    assert!(out.status.success(), "{}", text(&out));
    let state = dir.path().join("state");

    let load = Load::start(http, 3);
    load.wait_acked(0, 30, Duration::from_secs(60));
    let mut figures = Vec::new();
    // Each service alone, then PostgreSQL and chronosd together (chronosd's
    // supervisor waits for PostgreSQL to serve before restarting it).
    for services in [&["chronosd"][..], &["broker"], &["postgres"], &["postgres", "chronosd"]] {
        let name = services.join("+");
        let pids: Vec<(&str, i32)> =
            services.iter().map(|s| (*s, chronos::stack::process::read_pid(&state.join(format!("run/{s}.pid"))).unwrap())).collect();
        let before = load.acked();
        let killed = std::time::Instant::now();
        let killed_ms = load.started.elapsed().as_millis() as u32;
        for &(service, pid) in &pids {
            assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill -9 {service} ({pid})");
        }
        // Restarted: a new process that serves.
        let until = killed + Duration::from_secs(240);
        while !pids.iter().all(|&(service, pid)| {
            let new = chronos::stack::process::read_pid(&state.join(format!("run/{service}.pid")));
            new.is_some_and(|p| p != pid && chronos::stack::process::alive(p)) && serving(service, http, pg, broker)
        }) {
            let log = std::fs::read_to_string(state.join("logs/supervisor.log")).unwrap_or_default();
            assert!(std::time::Instant::now() < until, "{name} not restarted within 240 s of kill -9; supervisor log:\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let restarted = killed.elapsed();
        // The load goes on: more batches acknowledged after the restart.
        let at_restart = load.acked();
        load.wait_acked(at_restart, 30, Duration::from_secs(120));
        let resumed = killed.elapsed();
        figures.push((name, restarted, resumed, at_restart - before, killed_ms, killed_ms + resumed.as_millis() as u32));
        // Steady load before the next kill, so that the outages stay apart.
        std::thread::sleep(Duration::from_secs(3));
    }
    let batches = load.finish();
    // The longest time without an acknowledgement around each kill: the outage the clients saw.
    let mut done: Vec<u32> = batches.iter().map(|b| b.done_ms).collect();
    done.sort_unstable();
    let outage = |from: u32, to: u32| done.windows(2).filter(|w| w[0] + 1000 >= from && w[1] <= to).map(|w| w[1] - w[0]).max().unwrap_or(0);

    let url = format!("postgres://chronos@127.0.0.1:{pg}/chronos");
    let types = ["pageviews", "clicks", "link_clicks", "mouse_moves", "key_presses", "form_submissions"];
    let v = chronos::rt::block_on(loadgen::verify::verify(&url, &types, &batches, Duration::from_secs(180), Duration::from_secs(2))).unwrap();
    let stored = count(&url, &total_sql(&types));

    let out = stack.chronos(&["status"]);
    let status = text(&out);
    let log = std::fs::read_to_string(state.join("logs/supervisor.log")).unwrap();
    println!("self-healing under load, kill -9 of each service in turn, no command:");
    // The supervisors' own measure, in the order of their log lines.
    let mut said = log.lines().filter(|l| l.contains("serving again"));
    for (name, restarted, resumed, during, from, to) in &figures {
        let theirs: Vec<String> = name
            .split('+')
            .map(|_| said.next().unwrap_or("(not logged)"))
            .map(|l| l.split_once(" UTC ").map_or(l, |(_, s)| s).replace("after exit by signal 9: ", ""))
            .collect();
        println!(
            "  {name:<17} serving again {:.1} s after kill -9 (supervisor: {}); longest time without an acknowledgement {:.1} s; \
             {during} batches acknowledged from the kill to the restart; 30 more {:.1} s after the kill",
            restarted.as_secs_f64(),
            theirs.join("; "),
            outage(*from, *to) as f64 / 1000.0,
            resumed.as_secs_f64(),
        );
    }
    if let Some(l) = log.lines().find(|l| l.contains("to serve before the restart")) {
        println!("  {l}");
    }
    println!(
        "  events acknowledged {}, stored {stored}, lost {}, duplicated {}, stored unacknowledged {} ({} batches of 12; verified in {:.1} s); test took {:.0} s",
        v.expected,
        v.missing,
        v.duplicated,
        v.unacknowledged_stored,
        batches.len(),
        v.wait_secs,
        t_test.elapsed().as_secs_f64()
    );
    println!("{status}");
    assert_eq!((v.missing, v.duplicated, v.unacknowledged_stored), (0, 0, 0), "{v:?}");
    assert_eq!(stored as u64, v.expected, "every row of the tables is an acknowledged event");
    for (service, times) in [("postgres", 2), ("broker", 1), ("chronosd", 2)] {
        let line = status.lines().find(|l| l.starts_with(service)).unwrap_or_default();
        assert!(
            line.contains(" up ") && line.contains(&format!("restarted {times}× in the last hour, last: exit by signal 9")),
            "{service}:\n{status}"
        );
        let logged =
            log.lines().filter(|l| l.contains(&format!(" {service} ")) && l.contains("restarted (pid") && l.contains("after exit by signal 9"));
        assert_eq!(logged.count(), times, "{service}'s restarts in the supervisor log:\n{log}");
    }
}

/// A service that keeps failing is left down, and `chronos status` shows why
/// with its log's last lines; one stopped by `chronos stop` is not restarted.
/// PostgreSQL alone (the cheapest service), made to fail by a setting it
/// does not know: five failures within the window, 1 + 2 + 4 + 8 s apart.
#[test]
fn a_service_that_keeps_failing_is_left_down_with_its_last_log_lines() {
    let dir = temp_dir();
    let (config, _, pg, _) = stack_config(dir.path(), "");
    let stack = StackGuard { config };
    let state = dir.path().join("state");
    let out = stack.chronos(&["start", "postgres"]);
    assert!(out.status.success(), "{}", text(&out));

    // Stopped on purpose: not restarted.
    let out = stack.chronos(&["stop", "postgres"]);
    assert!(text(&out).contains("postgres  stopped"), "{}", text(&out));
    std::thread::sleep(Duration::from_secs(3));
    assert!(!serving("postgres", 0, pg, 0), "a stopped service stays stopped");
    let log = std::fs::read_to_string(state.join("logs/supervisor.log")).unwrap();
    assert!(!log.contains("died"), "{log}");

    let out = stack.chronos(&["start", "postgres"]);
    assert!(out.status.success(), "{}", text(&out));
    let conf = state.join("postgres/postgresql.conf");
    let mut settings = std::fs::read_to_string(&conf).unwrap();
    settings.push_str("\nchronos_not_a_setting = 1\n");
    std::fs::write(&conf, settings).unwrap();
    let pid = chronos::stack::process::read_pid(&state.join("run/postgres.pid")).unwrap();
    let t0 = std::time::Instant::now();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let until = t0 + Duration::from_secs(90);
    let log = loop {
        let log = std::fs::read_to_string(state.join("logs/supervisor.log")).unwrap();
        if log.contains("left down") {
            break log;
        }
        assert!(std::time::Instant::now() < until, "not left down within 90 s:\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("left down {:.1} s after the first kill", t0.elapsed().as_secs_f64());
    assert_eq!(log.matches("postgres died").count(), 4, "four restarts, then left down:\n{log}");
    assert!(log.contains("exit status 1: left down after 5 failures within 300 s"), "{log}");

    let out = stack.chronos(&["status"]);
    let status = text(&out);
    println!("{status}");
    assert_eq!(out.status.code(), Some(3), "{status}");
    let line = status.lines().find(|l| l.starts_with("postgres")).unwrap();
    assert!(
        line.contains(" down ")
            && line.contains("left down by the supervisor after 5 failures within 300 s (last: exit status 1)")
            && line.contains("`chronos start postgres`"),
        "{status}"
    );
    assert!(status.contains("last lines of ") && status.contains("| ") && status.contains("chronos_not_a_setting"), "{status}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!serving("postgres", 0, pg, 0), "left down");

    // Fixed, started again: up, and no longer said to be left down.
    std::fs::write(&conf, std::fs::read_to_string(&conf).unwrap().replace("chronos_not_a_setting = 1", "")).unwrap();
    let out = stack.chronos(&["start", "postgres"]);
    assert!(out.status.success(), "{}", text(&out));
    let status = text(&stack.chronos(&["status"]));
    let line = status.lines().find(|l| l.starts_with("postgres")).unwrap();
    assert!(line.contains(" up ") && !line.contains("left down"), "{status}");
    // The failures before it do not count against it: one more death is restarted.
    let pid = chronos::stack::process::read_pid(&state.join("run/postgres.pid")).unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while chronos::stack::process::read_pid(&state.join("run/postgres.pid")).is_none_or(|p| p == pid) || !serving("postgres", 0, pg, 0) {
        let log = std::fs::read_to_string(state.join("logs/supervisor.log")).unwrap();
        assert!(std::time::Instant::now() < until, "not restarted after the fix:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Unsupervised (its supervisor gone), killed, started at once: the start
    // waits for the killed server's processes instead of failing on its lock
    // file or shared memory (issue 30, item 3).
    let supervisor = chronos::stack::process::read_pid(&state.join("run/postgres.supervisor.pid")).unwrap();
    assert!(chronos::stack::process::stop_pid(supervisor, libc::SIGTERM, Duration::from_secs(10)));
    let pid = chronos::stack::process::read_pid(&state.join("run/postgres.pid")).unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let out = stack.chronos(&["start", "postgres"]);
    println!("{}", text(&out));
    assert!(out.status.success(), "{}", text(&out));
    assert!(serving("postgres", 0, pg, 0));
}
