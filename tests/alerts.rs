//! The alert rules of `docker/prometheus/alerts.yml` on a real Prometheus
//! (Debian's `prometheus`, installed by .ci/setup) scraping the admin
//! listeners of real chronosd processes: each fault is caused, the alert
//! must fire, the fault is removed, the alert must resolve.
//!
//! For speed the rules are loaded with one mechanical change: every `for:`,
//! range `[…]` and `offset` duration is divided by 60 (`5m` becomes `5s`), and
//! Prometheus scrapes and evaluates every second. Expressions and thresholds
//! are the shipped ones; the durations themselves are covered by promtool's
//! unit tests (`alerts.test.yml`).
//!
//! Two stacks, one Prometheus, one test (the stacks cost most of its time):
//! - A: chronosd with loaders on one Kafka node behind a proxy that can
//!   freeze it, PostgreSQL, an archive. Faults, one after another: an archive
//!   directory that cannot be created; batches of mostly invalid events and a
//!   record PostgreSQL refuses; the loaders' offsets table locked while
//!   batches pour in, with the topic's retention cut to an hour; a broker that
//!   stops answering 1.5 s in every 2.5 s, then altogether; chronosd killed.
//! - B, meanwhile on a thread of its own: chronosd without loaders on three
//!   nodes, its dead-letter topic on the third node alone. That node is killed
//!   and, while it is down, the events topic asks for three in-sync replicas.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chronos::stack::process::free_port;
use common::*;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{json, Value};
use serde_yaml::Value as Yaml;

/// How much shorter the test's `for:` and windows are than the shipped ones.
const TIME_SCALE: u64 = 60;

/// A Prometheus duration (`1h30m`, `15m`, `500ms`) in milliseconds.
fn duration_ms(text: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000), ("w", 604_800_000), ("y", 31_536_000_000)]
            .iter()
            .find(|(u, _)| rest.starts_with(u))
            .map(|(u, ms)| (*ms, u.len()))?;
        total += n * unit;
        rest = &rest[len..];
    }
    (!text.is_empty()).then_some(total)
}

fn scaled(d: &str) -> String {
    let ms = duration_ms(d).unwrap_or_else(|| panic!("`{d}` is not a Prometheus duration"));
    assert!(ms % TIME_SCALE == 0, "{d} does not divide by {TIME_SCALE}");
    format!("{}ms", ms / TIME_SCALE)
}

/// `expr` with the durations of its range selectors, subqueries and
/// offsets divided by [`TIME_SCALE`]; string literals are left alone.
fn scale_windows(expr: &str) -> String {
    map_durations(expr, scaled)
}

/// `expr` with `f` applied to each duration of a range selector, subquery or offset.
fn map_durations(expr: &str, f: impl Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut chars = expr.char_indices().peekable();
    let mut quote: Option<char> = None;
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), '\\') => {
                out.push(c);
                if let Some((_, n)) = chars.next() {
                    out.push(n);
                }
                continue;
            }
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '[') => {
                let end = expr[i..].find(']').expect("unclosed [") + i;
                let parts: Vec<String> = expr[i + 1..end].split(':').map(|p| if p.trim().is_empty() { p.to_string() } else { f(p.trim()) }).collect();
                out.push('[');
                out.push_str(&parts.join(":"));
                out.push(']');
                while chars.peek().is_some_and(|(j, _)| *j <= end) {
                    chars.next();
                }
                continue;
            }
            (None, 'o') if expr[i..].starts_with("offset") && !expr[..i].ends_with(|p: char| p.is_ascii_alphanumeric() || p == '_') => {
                let after = &expr[i + "offset".len()..];
                let spaces = after.len() - after.trim_start().len();
                let word: String = after.trim_start().chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
                if spaces > 0 && duration_ms(&word).is_some() {
                    out.push_str("offset ");
                    out.push_str(&f(&word));
                    let skip = i + "offset".len() + spaces + word.len();
                    while chars.peek().is_some_and(|(j, _)| *j < skip) {
                        chars.next();
                    }
                    continue;
                }
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// The shipped rules with [`scale_windows`] applied to each `expr` and each
/// `for:` divided likewise; nothing else changes.
fn scaled_rules(text: &str) -> String {
    let mut rules: Yaml = serde_yaml::from_str(text).expect("alerts.yml is YAML");
    for group in rules["groups"].as_sequence_mut().expect("groups") {
        for rule in group["rules"].as_sequence_mut().expect("rules") {
            let expr = rule["expr"].as_str().expect("expr").to_string();
            rule["expr"] = Yaml::String(scale_windows(&expr));
            if let Some(d) = rule.get("for").and_then(Yaml::as_str).map(str::to_string) {
                rule["for"] = Yaml::String(scaled(&d));
            }
        }
    }
    serde_yaml::to_string(&rules).unwrap()
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A Prometheus process on the shipped `prometheus.yml`, with its targets
/// replaced by `targets`, its rule file by the scaled rules, and one-second
/// scrapes and evaluations.
struct Prometheus {
    child: Child,
    api: Api,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[SocketAddr]) -> Prometheus {
        let dir = temp_dir();
        let rules = dir.path().join("alerts.yml");
        std::fs::write(&rules, scaled_rules(&std::fs::read_to_string(repo("docker/prometheus/alerts.yml")).unwrap())).unwrap();
        let mut config: Yaml = serde_yaml::from_str(&std::fs::read_to_string(repo("docker/prometheus/prometheus.yml")).unwrap()).unwrap();
        config["global"]["scrape_interval"] = "1s".into();
        config["global"]["scrape_timeout"] = "1s".into();
        config["global"]["evaluation_interval"] = "1s".into();
        config["rule_files"] = Yaml::Sequence(vec![rules.display().to_string().into()]);
        let job = &mut config["scrape_configs"][0];
        assert_eq!(job["job_name"].as_str(), Some("chronosd"), "the job the rules select");
        job["static_configs"][0]["targets"] = Yaml::Sequence(targets.iter().map(|t| t.to_string().into()).collect());
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, serde_yaml::to_string(&config).unwrap()).unwrap();

        let port = free_port();
        let log = dir.path().join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        // Dies with the test thread that started it, even on a crash of the test binary.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run `prometheus` ({e}): .ci/setup installs it (Debian's prometheus package: apt-get install prometheus)")
        });
        let mut p = Prometheus { child, api: Api { base: format!("http://127.0.0.1:{port}") }, log, _dir: dir };
        let until = Instant::now() + Duration::from_secs(30);
        while !p.api.ready() {
            assert!(p.child.try_wait().unwrap().is_none(), "prometheus exited:\n{}", p.log_text());
            assert!(Instant::now() < until, "prometheus not ready in 30 s:\n{}", p.log_text());
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prometheus's HTTP API.
#[derive(Clone)]
struct Api {
    base: String,
}

impl Api {
    fn get(&self, path: &str) -> Option<Value> {
        let res = client().get(format!("{}{path}", self.base)).timeout(Duration::from_secs(5)).send().ok()?;
        res.status().is_success().then(|| res.json().ok())?
    }

    fn ready(&self) -> bool {
        client().get(format!("{}/-/ready", self.base)).send().is_ok_and(|r| r.status().is_success())
    }

    /// Active alerts (pending and firing).
    fn alerts(&self) -> Vec<Alert> {
        let Some(v) = self.get("/api/v1/alerts") else { return Vec::new() };
        v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                Alert {
                    name: s(&a["labels"]["alertname"]),
                    instance: s(&a["labels"]["instance"]),
                    topic: s(&a["labels"]["topic"]),
                    state: s(&a["state"]),
                }
            })
            .collect()
    }

    /// The firing alerts, as `name@instance`.
    fn firing(&self) -> Vec<String> {
        let mut f: Vec<String> = self.alerts().into_iter().filter(|a| a.state == "firing").map(|a| format!("{}@{}", a.name, a.instance)).collect();
        f.sort();
        f
    }

    /// Whether every target of the job is up.
    fn targets_up(&self, n: usize) -> bool {
        let Some(v) = self.get("/api/v1/query?query=up%7Bjob%3D%22chronosd%22%7D") else { return false };
        let r = v["data"]["result"].as_array().cloned().unwrap_or_default();
        r.len() == n && r.iter().all(|s| s["value"][1] == "1")
    }

    /// Waits until an alert `which` names fires.
    fn wait_firing(&self, which: &Which, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        while !self.alerts().iter().any(|a| which.matches(a) && a.state == "firing") {
            if start.elapsed() > timeout {
                return Err(format!("{which} did not fire within {timeout:?}; active: {:?}", self.alerts()));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        eprintln!("{which}: firing after {:.1} s", start.elapsed().as_secs_f64());
        Ok(())
    }

    /// Waits until no alert `which` names is pending or firing.
    fn wait_resolved(&self, which: &Which, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        while self.alerts().iter().any(|a| which.matches(a)) {
            if start.elapsed() > timeout {
                return Err(format!("{which} still active after {timeout:?}: {:?}", self.alerts()));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        eprintln!("{which}: resolved after {:.1} s", start.elapsed().as_secs_f64());
        Ok(())
    }
}

/// One active alert, as Prometheus lists it.
#[derive(Debug)]
struct Alert {
    name: String,
    instance: String,
    /// Empty for an alert without a topic label.
    topic: String,
    state: String,
}

/// An alert by name, for one chronosd, and on one topic when `topic` is given.
struct Which {
    name: String,
    instance: String,
    topic: Option<String>,
}

impl Which {
    fn matches(&self, a: &Alert) -> bool {
        a.name == self.name && a.instance == self.instance && self.topic.as_ref().is_none_or(|t| *t == a.topic)
    }
}

impl std::fmt::Display for Which {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.instance)?;
        match &self.topic {
            Some(t) => write!(f, " on {t}"),
            None => Ok(()),
        }
    }
}

/// How long an alert may take to fire or resolve here (seconds, mostly).
const ALERT_WAIT: Duration = Duration::from_secs(90);

/// The warnings and errors of chronosd's log, for failure messages.
fn problems(d: &Chronosd) -> String {
    let log = d.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn which(name: &str, d: &Chronosd, topic: Option<&str>) -> Which {
    Which { name: name.into(), instance: d.admin.to_string(), topic: topic.map(str::to_string) }
}

/// Waits until `name` fires for chronosd `d`; fails with its log.
fn fires(api: &Api, name: &str, d: &Chronosd) {
    fires_on(api, name, d, None)
}

/// Waits until `name` fires for chronosd `d` (on `topic`, when given); fails with its log.
fn fires_on(api: &Api, name: &str, d: &Chronosd, topic: Option<&str>) {
    api.wait_firing(&which(name, d, topic), ALERT_WAIT).unwrap_or_else(|e| panic!("{e}\n--- chronosd's warnings and errors:\n{}", problems(d)));
}

/// Waits until `name` is no longer active for chronosd `d`; fails with its log.
fn resolves(api: &Api, name: &str, d: &Chronosd) {
    resolves_on(api, name, d, None)
}

/// Waits until `name` is no longer active for chronosd `d` (on `topic`, when given); fails with its log.
fn resolves_on(api: &Api, name: &str, d: &Chronosd, topic: Option<&str>) {
    api.wait_resolved(&which(name, d, topic), ALERT_WAIT).unwrap_or_else(|e| panic!("{e}\n--- chronosd's warnings and errors:\n{}", problems(d)));
}

/// Threads posting batches to chronosd until stopped; `make` builds the
/// n-th body. Counts the answers by class.
struct Posters {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Posters {
    fn start(url: String, threads: usize, pause: Duration, make: fn(u64) -> Value) -> Posters {
        let (stop, ok, failed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let threads = (0..threads)
            .map(|t| {
                let (url, stop, ok, failed) = (url.clone(), stop.clone(), ok.clone(), failed.clone());
                std::thread::spawn(move || {
                    let c = client();
                    let mut n = t as u64 * 1_000_000;
                    while !stop.load(Ordering::Relaxed) {
                        let res = c
                            .post(&url)
                            .header("Content-Type", "text/plain;charset=UTF-8")
                            .header("Origin", ORIGIN)
                            .header("X-Forwarded-For", "198.51.100.7")
                            .body(make(n).to_string())
                            .send();
                        match res.map(|r| r.status().as_u16()) {
                            Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                        n += 1;
                        std::thread::sleep(pause);
                    }
                })
            })
            .collect();
        Posters { stop, ok, failed, threads }
    }

    /// Stops the threads; returns (2xx, other) answers.
    fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            t.join().unwrap();
        }
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

impl Drop for Posters {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Clears a flag when dropped.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// A valid 6-event batch; sessions spread over the partitions.
fn valid(n: u64) -> Value {
    batch(&format!("alerts-{}", n % 16), 6)
}

/// A batch of which five events of six fail validation (dead letters).
fn mostly_invalid(n: u64) -> Value {
    let mut b = batch(&format!("alerts-dead-{}", n % 16), 6);
    for e in b["events"].as_array_mut().unwrap().iter_mut().skip(1) {
        *e = json!(["mouse_moves", now_ms(), "left", 4]);
    }
    b
}

/// A transaction of its own holding `lock` (an SQL `LOCK TABLE …`) until dropped.
struct HeldLock {
    release: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HeldLock {
    fn take(url: &str, lock: &str) -> HeldLock {
        let (url, sql) = (url.to_string(), format!("BEGIN; {lock}"));
        let (locked, is_locked) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            chronos::rt::block_on(async move {
                let client = chronos::store::connect(&url).await.expect("connect to PostgreSQL");
                client.batch_execute(&sql).await.expect("take the lock");
                locked.send(()).unwrap();
                while matches!(released.try_recv(), Err(mpsc::TryRecvError::Empty)) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                client.batch_execute("ROLLBACK").await.expect("release the lock");
            })
        });
        is_locked.recv_timeout(Duration::from_secs(30)).expect("lock taken within 30 s");
        HeldLock { release: Some(release), thread: Some(thread) }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sets the settings of `topic` to those the harness created it with,
/// changed by `overrides` (AlterConfigs replaces every setting of a topic:
/// one left out, such as `retention.ms`, returns to the broker's default).
fn alter_topic(kafka: &Kafka, topic: &str, overrides: &[(&'static str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    let http = chronos::config::HttpConfig::default();
    let max_record = chronos::produce::kafka::max_record_bytes(http.max_decompressed_bytes, http.max_events_per_batch);
    let mut settings = chronos::produce::admin::topic_config(&kafka.kafka_config(), max_record);
    for (k, v) in overrides {
        settings.retain(|(key, _)| key != k);
        settings.push((k, v.to_string()));
    }
    let change = settings.iter().fold(AlterConfig::new(ResourceSpecifier::Topic(topic)), |c, (k, v)| c.set(k, v));
    let admin: AdminClient<_> = rdkafka::ClientConfig::new().set("bootstrap.servers", &kafka.bootstrap).create().unwrap();
    let results = chronos::rt::block_on(admin.alter_configs([&change], &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))))).unwrap();
    for r in results {
        r.unwrap_or_else(|(what, code)| panic!("settings of {what:?}: {code}"));
    }
}

/// Creates `topic` with `partitions` partitions, each with one replica, on node `node`.
fn create_topic_on(kafka: &Kafka, topic: &str, partitions: usize, node: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let replicas = vec![[node]; partitions];
    let assignment: Vec<&[i32]> = replicas.iter().map(|r| &r[..]).collect();
    let new = NewTopic::new(topic, partitions as i32, TopicReplication::Variable(&assignment));
    let admin: AdminClient<_> = rdkafka::ClientConfig::new().set("bootstrap.servers", &kafka.bootstrap).create().unwrap();
    let results = chronos::rt::block_on(admin.create_topics([&new], &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))))).unwrap();
    for r in results {
        r.unwrap_or_else(|(what, code)| panic!("creating {what}: {code}"));
    }
}

/// Writes a copy of a record of the topic, with a NUL in a text attribute,
/// straight to the topic: PostgreSQL refuses it (22021), the loader sets it aside.
fn produce_poison(kafka: &Kafka) {
    let first = kafka.read_all(&kafka.topic, 1, Duration::from_secs(20)).into_iter().next().expect("a record to copy");
    let mut v = first.value.clone();
    v["batch_id"] = json!(uuid::Uuid::new_v4().to_string());
    let click = v["events"].as_array_mut().unwrap().iter_mut().find(|e| e[0] == "clicks").expect("a click");
    click[2] = json!("BU\u{0}TTON");
    let producer: BaseProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", &kafka.bootstrap).create().unwrap();
    let mut headers = rdkafka::message::OwnedHeaders::new();
    for (k, h) in &first.headers {
        headers = headers.insert(rdkafka::message::Header { key: k, value: Some(h.as_bytes()) });
    }
    let raw = serde_json::to_vec(&v).unwrap();
    producer.send(BaseRecord::to(&kafka.topic).key(first.key.as_deref().unwrap_or("alerts")).payload(&raw).headers(headers)).unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// Stack B: a three-node cluster and a chronosd without loaders that expects
/// three brokers. Its dead-letter topic lives on the third node alone (so
/// that it goes offline with that node). The brokers die with the thread
/// that calls this.
fn cluster_stack() -> (Kafka, Chronosd) {
    let mut kafka = Kafka::start_cluster(2);
    let lone = kafka.cluster().nodes[2].node_id as i32;
    let topic = unique("dead-on-one-node");
    create_topic_on(&kafka, &topic, 2, lone);
    kafka.dead_letter_topic = topic;
    let d = Chronosd::start(&config_toml(&kafka, free_port(), "health_poll_secs = 3\nexpected_brokers = 3\n"));
    d.wait_ready(Duration::from_secs(60));
    (kafka, d)
}

/// Kills the third broker of B: its partitions leave the ISR of the events
/// topic (under-replicated), the dead-letter topic loses its only replica
/// (offline, and so below its min ISR), the cluster misses a broker. The
/// events topic asking for three in-sync replicas meanwhile is below its min
/// ISR until it asks for two again. Undone, each resolves.
fn cluster_faults(api: Api, mut kafka: Kafka, d: Chronosd) {
    let (events, dead) = (kafka.topic.clone(), kafka.dead_letter_topic.clone());
    let (events, dead) = (Some(events.as_str()), Some(dead.as_str()));
    kafka.cluster().kill(2);
    fires_on(&api, "ChronosPartitionsUnderReplicated", &d, events);
    fires_on(&api, "ChronosPartitionsOffline", &d, dead);
    fires(&api, "ChronosKafkaBrokersMissing", &d);
    alter_topic(&kafka, &kafka.topic, &[("min.insync.replicas", "3")]);
    fires_on(&api, "ChronosPartitionsBelowMinIsr", &d, events);
    alter_topic(&kafka, &kafka.topic, &[]);
    resolves_on(&api, "ChronosPartitionsBelowMinIsr", &d, events);
    kafka.cluster().start(2).expect("restart the broker");
    for name in ["ChronosPartitionsUnderReplicated", "ChronosPartitionsOffline", "ChronosPartitionsBelowMinIsr", "ChronosKafkaBrokersMissing"] {
        resolves(&api, name, &d);
    }
}

/// Stack A: chronosd with loaders on one Kafka node behind a proxy,
/// PostgreSQL, and an archive whose directory cannot be created at first (a
/// file is in the way), so that every archive run fails from the start.
/// Dropped in order: chronosd before PostgreSQL.
struct LoadingStack {
    d: Chronosd,
    kafka: Kafka,
    toml: String,
    url: String,
    pg_url: String,
    blocker: PathBuf,
    _pg: chronos::stack::postgres::PostgresServer,
    _dir: tempfile::TempDir,
}

impl LoadingStack {
    fn start() -> LoadingStack {
        let dir = temp_dir();
        let pg = chronos::stack::postgres::PostgresServer::start_in(&dir.path().join("pg")).expect("start PostgreSQL");
        let pg_url = pg.url();
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, "not a directory").unwrap();
        let kafka = Kafka::start_behind_proxy(2);
        let extra = format!("health_poll_secs = 2\n[retention]\nevery_secs = 1\narchive = \"{}\"\n{FAST_IPS}", blocker.join("archive").display());
        let toml = config_toml_with_pg(&kafka, free_port(), &pg_url, "stalled_after_secs = 2", &extra);
        let d = Chronosd::start(&toml);
        d.wait_ready(Duration::from_secs(60));
        let url = d.url("/v1/batch");
        LoadingStack { d, kafka, toml, url, pg_url, blocker, _pg: pg, _dir: dir }
    }

    /// The archive directory can be created again.
    fn archive_fault_removed(&self, api: &Api) {
        std::fs::remove_file(&self.blocker).unwrap();
        resolves(api, "ChronosArchiveFailing", &self.d);
    }

    /// Batches most of whose events fail validation, and a record PostgreSQL
    /// refuses written straight to the topic.
    fn dead_letter_faults(&self, api: &Api) {
        let invalid = Posters::start(self.url.clone(), 1, Duration::from_millis(100), mostly_invalid);
        produce_poison(&self.kafka);
        fires(api, "ChronosRecordsSetAside", &self.d);
        fires(api, "ChronosDeadLettersRising", &self.d);
        invalid.stop();
        resolves(api, "ChronosDeadLettersRising", &self.d);
        resolves(api, "ChronosRecordsSetAside", &self.d);
    }

    /// The loaders cannot commit (their offsets table is locked) while
    /// batches keep coming, and the topic's retention drops to an hour.
    fn loader_faults(&self, api: &Api) {
        let (d, kafka) = (&self.d, &self.kafka);
        let lock = HeldLock::take(&self.pg_url, "LOCK TABLE chronos.offsets IN EXCLUSIVE MODE");
        let heavy = Posters::start(self.url.clone(), 3, Duration::from_millis(5), valid);
        alter_topic(kafka, &kafka.topic, &[("retention.ms", "3600000")]);
        fires(api, "ChronosLoaderStalled", d);
        fires(api, "ChronosRetentionHeadroomLow", d);
        fires(api, "ChronosConsumerLagGrowing", d);
        let (sent, refused) = heavy.stop();
        eprintln!("posted {sent} batches while the loaders were blocked ({refused} refused)");
        drop(lock);
        alter_topic(kafka, &kafka.topic, &[]);
        resolves(api, "ChronosLoaderStalled", d);
        resolves(api, "ChronosConsumerLagGrowing", d);
        resolves(api, "ChronosRetentionHeadroomLow", d);
    }

    /// A broker that stops answering for 1.5 s out of every 2.5 s: acks take
    /// over a second. Then one that stops answering at all: 503s, and no
    /// controller in the metadata.
    fn broker_faults(&self, api: &Api) {
        let (d, proxy) = (&self.d, self.kafka.proxy.as_ref().unwrap());
        let busy = Posters::start(self.url.clone(), 2, Duration::from_millis(20), valid);
        let flapping = AtomicBool::new(true);
        std::thread::scope(|s| {
            // Stops the flapping on the way out, a failed wait included (the scope joins it).
            let _stop = ClearOnDrop(&flapping);
            s.spawn(|| {
                while flapping.load(Ordering::Relaxed) {
                    proxy.freeze();
                    std::thread::sleep(Duration::from_millis(1500));
                    proxy.thaw();
                    std::thread::sleep(Duration::from_millis(1000));
                }
            });
            fires(api, "ChronosProduceLatencyHigh", d);
        });
        resolves(api, "ChronosProduceLatencyHigh", d);
        proxy.freeze();
        fires(api, "ChronosHttp5xxShareHigh", d);
        fires(api, "ChronosKafkaNoController", d);
        proxy.thaw();
        resolves(api, "ChronosHttp5xxShareHigh", d);
        resolves(api, "ChronosKafkaNoController", d);
        busy.stop();
    }

    /// chronosd killed, then started again on the same config.
    fn chronosd_down(&mut self, api: &Api) {
        self.d.kill9();
        fires(api, "ChronosdDown", &self.d);
        self.d = Chronosd::start(&self.toml);
        self.d.wait_ready(Duration::from_secs(60));
        resolves(api, "ChronosdDown", &self.d);
    }
}

#[test]
fn each_alert_fires_on_its_fault_and_resolves_without_it() {
    let started = Instant::now();
    // Stack B on a thread of its own, which stays until B's faults are done:
    // the broker processes die with the thread that started them.
    let (b_ready, b_admin) = mpsc::channel();
    let (b_go, b_start) = mpsc::channel::<Api>();
    let b = std::thread::spawn(move || {
        let (cluster, db) = cluster_stack();
        b_ready.send(db.admin).unwrap();
        if let Ok(api) = b_start.recv() {
            cluster_faults(api, cluster, db);
        }
    });
    let mut a = LoadingStack::start();
    let Ok(b_admin) = b_admin.recv() else { std::panic::resume_unwind(b.join().unwrap_err()) };
    let prom = Prometheus::start(&[a.d.admin, b_admin]);
    let api = prom.api.clone();
    eprintln!("stacks and Prometheus up after {:.1} s", started.elapsed().as_secs_f64());

    // Healthy traffic throughout.
    let traffic = Posters::start(a.url.clone(), 1, Duration::from_millis(50), valid);
    let until = Instant::now() + ALERT_WAIT;
    while !api.targets_up(2) {
        assert!(Instant::now() < until, "targets never up:\n{}", prom.log_text());
        std::thread::sleep(Duration::from_millis(250));
    }
    // On the healthy stacks only the archive (failing from the start) fires.
    fires(&api, "ChronosArchiveFailing", &a.d);
    let only_archive = vec![format!("ChronosArchiveFailing@{}", a.d.admin)];
    let until = Instant::now() + Duration::from_secs(20);
    while api.firing() != only_archive {
        assert!(Instant::now() < until, "alerts firing on healthy stacks: {:?}", api.firing());
        std::thread::sleep(Duration::from_millis(250));
    }

    b_go.send(api.clone()).unwrap();
    a.archive_fault_removed(&api);
    a.dead_letter_faults(&api);
    a.loader_faults(&api);
    a.broker_faults(&api);
    a.chronosd_down(&api);
    b.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
    traffic.stop();
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn the_rules_are_loaded_with_durations_divided_by_60_and_nothing_else_changed() {
    assert_eq!(duration_ms("1h30m"), Some(5_400_000));
    assert_eq!(duration_ms("500ms"), Some(500));
    assert_eq!(duration_ms("5x"), None);
    let e = r#"sum(rate(x{status=~"5..", path="/a[5m]"}[5m])) / y[1h:1m] > 3 * 3600 unless z offset 15m and offsets_total > 0"#;
    assert_eq!(
        scale_windows(e),
        r#"sum(rate(x{status=~"5..", path="/a[5m]"}[5000ms])) / y[60000ms:1000ms] > 3 * 3600 unless z offset 15000ms and offsets_total > 0"#
    );
    // The shipped file: only the durations differ.
    let shipped: Yaml = serde_yaml::from_str(&std::fs::read_to_string(repo("docker/prometheus/alerts.yml")).unwrap()).unwrap();
    let test: Yaml = serde_yaml::from_str(&scaled_rules(&serde_yaml::to_string(&shipped).unwrap())).unwrap();
    let rules = |v: &Yaml| v["groups"][0]["rules"].as_sequence().unwrap().clone();
    let blank = |e: &str| map_durations(e, |_| "D".into());
    for (s, t) in rules(&shipped).iter().zip(rules(&test).iter()) {
        assert_eq!((&s["alert"], &s["labels"], &s["annotations"]), (&t["alert"], &t["labels"], &t["annotations"]));
        let (se, te) = (s["expr"].as_str().unwrap(), t["expr"].as_str().unwrap());
        assert_eq!(blank(se), blank(te), "{}: only durations change", s["alert"].as_str().unwrap());
        if let Some(f) = s["for"].as_str() {
            assert_eq!(duration_ms(t["for"].as_str().unwrap()).unwrap() * TIME_SCALE, duration_ms(f).unwrap());
        }
    }
    assert_eq!(rules(&shipped).len(), rules(&test).len());
}
