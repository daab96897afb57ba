//! Test harness: real PostgreSQL and real Apache Kafka (KRaft) on free loopback
//! ports in temp dirs (the same helpers `chronos start` uses), chronosd as a
//! process, and a plain rdkafka consumer to read back what landed. The tests of
//! one test binary share one Kafka node, each with its own topics and consumer
//! group; a test that stops, kills or stalls Kafka starts its own.
#![allow(dead_code)]

pub mod certs;
pub mod proxy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use std::sync::OnceLock;

use chronos::stack::broker::{self, KafkaCluster};
use chronos::stack::process::wait_for_port;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};

pub const KEY: &str = "wk_test_0123456789abcdef";
pub const ORIGIN: &str = "https://shop.example.com";

/// Runs the `chronos` CLI with `--config config`.
pub fn chronos_cli(config: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chronos")).arg("--config").arg(config).args(args).output().expect("run chronos")
}

/// A command's stdout then stderr, as text.
pub fn output_text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A temp dir other accounts can traverse (PostgreSQL runs as `postgres` under root).
pub fn temp_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("chronos-test-").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A unique topic name for one test.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", uuid::Uuid::new_v4().simple())
}

/// The shared node: started on first use from a thread that lives as long as
/// the test binary, so the node (PR_SET_PDEATHSIG) dies with the binary.
struct SharedBroker {
    bootstrap: String,
    log: PathBuf,
}

fn shared_broker() -> &'static SharedBroker {
    static SHARED: OnceLock<SharedBroker> = OnceLock::new();
    SHARED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("shared-kafka".into())
            .spawn(move || {
                let dir = shared_broker_dir();
                match KafkaCluster::single_in(&dir) {
                    Ok(server) => {
                        tx.send(Ok((server.bootstrap(), server.log(0).to_path_buf()))).unwrap();
                        loop {
                            std::thread::park();
                        }
                    }
                    Err(e) => tx.send(Err(format!("{e:#}"))).unwrap(),
                }
            })
            .unwrap();
        let (bootstrap, log) = rx.recv().unwrap().unwrap_or_else(|e| panic!("starting the shared Kafka node: {e}"));
        SharedBroker { bootstrap, log }
    })
}

/// `$TMPDIR/chronos-test-kafka-<pid>`, after removing those of test binaries that are gone.
fn shared_broker_dir() -> PathBuf {
    let tmp = std::env::temp_dir();
    for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("chronos-test-kafka-").and_then(|p| p.parse::<i32>().ok()) {
            if !chronos::stack::process::alive(pid) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = tmp.join(format!("chronos-test-kafka-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Kafka with the events and dead-letter topics and the loaders' consumer group
/// of one test; on the shared node they are deleted when the test ends.
pub struct Kafka {
    /// The nodes this test owns (it may stop, kill or stall them); `None` on the
    /// node every test of this test binary shares.
    pub own: Option<KafkaCluster>,
    pub bootstrap: String,
    pub topic: String,
    pub dead_letter_topic: String,
    /// The loaders' consumer group (`load.group_id`) of this test.
    pub group: String,
    pub partitions: i32,
    pub replication: i32,
    /// Present when every client reaches the broker through a `FaultProxy`.
    pub proxy: Option<proxy::FaultProxy>,
    _dir: Option<tempfile::TempDir>,
}

impl Kafka {
    /// Fresh topics on the node this test binary shares.
    pub fn start(partitions: i32) -> Kafka {
        let bootstrap = shared_broker().bootstrap.clone();
        Self::with_topics(None, bootstrap, None, partitions, None)
    }

    /// A node of this test's own (for tests that stop, kill or stall it).
    pub fn start_own(partitions: i32) -> Kafka {
        let dir = temp_dir();
        let server = KafkaCluster::single_in(dir.path()).expect("start Kafka");
        Self::with_topics(Some(server), String::new(), None, partitions, Some(dir))
    }

    /// A node of this test's own, changed by `configure` before it starts
    /// (extra listeners, users); the harness reaches it on its PLAINTEXT listener.
    pub fn start_own_with(partitions: i32, configure: impl Fn(&mut chronos::stack::broker::KafkaNode)) -> Kafka {
        let dir = temp_dir();
        let server = KafkaCluster::single_with(dir.path(), configure).expect("start Kafka");
        Self::with_topics(Some(server), String::new(), None, partitions, Some(dir))
    }

    /// A node of this test's own that clients reach only through a proxy that can freeze traffic.
    pub fn start_behind_proxy(partitions: i32) -> Kafka {
        let dir = temp_dir();
        let port = chronos::stack::process::free_port();
        let proxy = proxy::FaultProxy::start(port);
        let server = KafkaCluster::single_advertising(dir.path(), port, proxy.port).expect("start Kafka");
        Self::with_topics(Some(server), String::new(), Some(proxy), partitions, Some(dir))
    }

    /// Three KRaft nodes; topics with replication 3 and `min.insync.replicas` 2.
    pub fn start_cluster(partitions: i32) -> Kafka {
        let dir = temp_dir();
        let cluster = KafkaCluster::start_in(dir.path(), 3, &[]).expect("start a 3-node Kafka cluster");
        Self::with_topics(Some(cluster), String::new(), None, partitions, Some(dir))
    }

    /// Topics (replicated on every owned node) on `own`, or on the shared node at `shared_bootstrap`.
    fn with_topics(
        own: Option<KafkaCluster>,
        shared_bootstrap: String,
        proxy: Option<proxy::FaultProxy>,
        partitions: i32,
        dir: Option<tempfile::TempDir>,
    ) -> Kafka {
        let (bootstrap, replication) = match &own {
            Some(c) => (c.bootstrap(), c.nodes.len() as i32),
            None => (shared_bootstrap, 1),
        };
        let k = Kafka {
            own,
            bootstrap,
            topic: unique("events"),
            dead_letter_topic: unique("dead"),
            group: unique("loaders"),
            partitions,
            replication,
            proxy,
            _dir: dir,
        };
        broker::create_topics(&k.kafka_config(), Duration::from_secs(60)).expect("create topics");
        k
    }

    /// The log file of the node (the first of a cluster).
    pub fn log_path(&self) -> PathBuf {
        match &self.own {
            None => shared_broker().log.clone(),
            Some(c) => c.log(0).to_path_buf(),
        }
    }

    /// The broker's warnings and errors, and its last lines (for failure messages).
    pub fn log_text(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let problems = lines.iter().filter(|l| l.contains("ERROR") || l.contains("WARN")).take(40);
        let tail = lines[lines.len().saturating_sub(10)..].iter();
        problems.chain(std::iter::once(&"…")).chain(tail).copied().collect::<Vec<_>>().join("\n")
    }

    /// The nodes of a test that started its own (`start_own`, `start_behind_proxy`, `start_cluster`).
    pub fn cluster(&mut self) -> &mut KafkaCluster {
        self.own.as_mut().expect("only a test's own Kafka may be stopped: use Kafka::start_own or start_cluster")
    }

    /// SIGKILL of the test's own node.
    pub fn kill_broker(&mut self) {
        self.cluster().kill(0);
    }

    /// Starts the test's own node again (same ports and data).
    pub fn restart_broker(&mut self) {
        self.cluster().start(0).expect("restart Kafka");
    }

    pub fn kafka_config(&self) -> chronos::config::KafkaConfig {
        chronos::config::KafkaConfig {
            brokers: self.bootstrap.clone(),
            topic: self.topic.clone(),
            dead_letter_topic: self.dead_letter_topic.clone(),
            partitions: self.partitions,
            replication: self.replication,
            ..Default::default()
        }
    }

    /// Every record of `topic`, waiting until `at_least` arrived (or the timeout).
    pub fn read_all(&self, topic: &str, at_least: usize, timeout: Duration) -> Vec<Record> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let until = Instant::now() + timeout;
        // Keep reading a little after reaching the count, so extras would show.
        let mut settle: Option<Instant> = None;
        while Instant::now() < until {
            if out.len() >= at_least {
                let s = *settle.get_or_insert_with(|| Instant::now() + Duration::from_millis(1500));
                if Instant::now() > s {
                    break;
                }
            }
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let headers = m
                        .headers()
                        .map(|h| h.iter().map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())).collect())
                        .unwrap_or_default();
                    out.push(Record {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        value: serde_json::from_slice(m.payload().unwrap_or_default()).expect("record value is JSON"),
                        headers,
                    });
                }
                Some(Err(e)) => panic!("consumer error: {e}"),
                None => {}
            }
        }
        out
    }

    /// Records in `topic` per the broker's high watermarks.
    pub fn count(&self, topic: &str) -> i64 {
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &self.bootstrap).create().unwrap();
        (0..self.partitions)
            .map(|p| {
                let (lo, hi) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap();
                hi - lo
            })
            .sum()
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        if self.own.is_none() {
            let (bootstrap, topics, group) = (self.bootstrap.clone(), [self.topic.clone(), self.dead_letter_topic.clone()], self.group.clone());
            chronos::rt::block_on(delete_topics_and_group(bootstrap, topics, group));
        }
    }
}

/// Deletes a finished test's topics and consumer group from the shared node (best effort).
async fn delete_topics_and_group(bootstrap: String, topics: [String; 2], group: String) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let Ok(admin) = ClientConfig::new().set("bootstrap.servers", &bootstrap).create::<AdminClient<_>>() else { return };
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let _ = admin.delete_topics(&names, &opts).await;
    let _ = admin.delete_groups(&[group.as_str()], &opts).await;
}

#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Value,
    pub headers: HashMap<String, String>,
}

/// chronosd config for tests: one browser key, one server-side key; loaders off.
pub fn config_toml(kafka: &Kafka, port: u16, extra: &str) -> String {
    format!("{}\n[load]\nenabled = false\n", base_toml(kafka, port, extra))
}

/// chronosd config with the loaders on, writing to `pg_url`; `load` is extra `[load]` keys.
pub fn config_toml_with_pg(kafka: &Kafka, port: u16, pg_url: &str, load: &str, extra: &str) -> String {
    format!(
        "{}\n[postgres]\nurl = \"{pg_url}\"\n[load]\ngroup_id = \"{}\"\nflush_ms = 200\nsession_timeout_ms = 6000\nmax_poll_interval_ms = 10000\n{load}\n",
        base_toml(kafka, port, extra),
        kafka.group
    )
}

fn base_toml(kafka: &Kafka, port: u16, extra: &str) -> String {
    format!(
        r#"
[http]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
workers = 2
receipt_threads = 2
trusted_proxies = ["127.0.0.1"]
produce_deadline_ms = 4000
retry_after_secs = 1
shutdown_grace_secs = 10

[[keys]]
id = "shop"
key = "{KEY}"
origins = ["shop.example.com", "*.blog.example.com"]

[[keys]]
id = "backend"
key = "wk_backend_0123456789abcdef"
origins = []
allow_no_origin = true

[kafka]
brokers = "{brokers}"
topic = "{topic}"
dead_letter_topic = "{dead}"
partitions = {partitions}
replication = {replication}
message_timeout_ms = 3000
request_timeout_ms = 2000
linger_ms = 2
statistics_interval_ms = 500
extra = {{ "reconnect.backoff.max.ms" = "500"{trace} }}
{extra}
"#,
        admin = chronos::stack::process::free_port(),
        brokers = kafka.bootstrap,
        topic = kafka.topic,
        dead = kafka.dead_letter_topic,
        partitions = kafka.partitions,
        replication = kafka.replication,
        trace = if std::env::var_os("TRACE_GROUPS").is_some() { r#", "debug" = "cgrp""# } else { "" },
    )
}

/// chronosd running as a process, the way systemd runs it.
pub struct Chronosd {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// `http.admin_listen`: `/metrics` and the detailed `/readyz`.
    pub admin: SocketAddr,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Chronosd {
    /// Writes `toml` to a file and starts `chronosd --config FILE`; waits for /healthz.
    pub fn start(toml: &str) -> Chronosd {
        let dir = temp_dir();
        let config = dir.path().join("chronos.toml");
        std::fs::write(&config, toml).unwrap();
        let parsed = chronos::config::Config::from_toml(toml).expect("test config is valid");
        let log = dir.path().join("chronosd.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_chronosd"))
            .arg("--config")
            .arg(&config)
            .env("CHRONOS_LOG", std::env::var("TEST_CHRONOS_LOG").unwrap_or_else(|_| "info,tokio_postgres=warn".into()))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn chronosd");
        let d = Chronosd { child: Some(child), addr: parsed.http.listen, admin: parsed.http.admin_listen, log, _dir: dir };
        let running = {
            let pid = d.pid();
            move || chronos::stack::process::alive(pid)
        };
        wait_for_port(d.addr, Duration::from_secs(20), running).unwrap_or_else(|e| panic!("chronosd: {e}\n{}", d.log_text()));
        d
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(-1)
    }

    /// Waits until `cond` holds; fails naming `what`, with chronosd's log.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let until = Instant::now() + timeout;
        while !cond() {
            assert!(Instant::now() < until, "timed out after {timeout:?} waiting for {what}\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The config file chronosd was started with.
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("chronos.toml")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A URL on the admin listener (`/metrics`, the detailed `/readyz`).
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until /readyz says ready.
    /// The value of one metric line of `/metrics` (`name` with its labels, as
    /// printed: `chronos_load_rewinds_total{reason="views"}`); `None` when absent.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = client().get(self.admin_url("/metrics")).send().ok()?.text().ok()?;
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    pub fn wait_ready(&self, timeout: Duration) {
        chronos::stack::process::wait_ready(self.addr, timeout).unwrap_or_else(|e| panic!("{e}\n{}", self.log_text()));
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap()
    }

    /// Kills chronosd with SIGKILL (a crash: no drain, no flush).
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Resident memory in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap()
    }
}

impl Drop for Chronosd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Per-IP limits high enough for load from one client address.
pub const FAST_IPS: &str = "[limits]\nper_ip_per_sec = 100000\nper_ip_burst = 100000\n";

/// The rows of `sql` on the database at `url`.
/// Runs several statements (no results).
pub fn execute_batch(url: &str, sql: &str) {
    let (url, sql) = (url.to_string(), sql.to_string());
    chronos::rt::block_on(async move {
        let client = chronos::store::connect(&url).await.unwrap();
        client.batch_execute(sql.as_str()).await.unwrap()
    })
}

/// The rows of `sql`, in a session of its own on UTC time; fails naming the statement.
pub fn query(url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    let (url, sql) = (url.to_string(), sql.to_string());
    chronos::rt::block_on(async move {
        let client = chronos::store::connect(&url).await.unwrap();
        client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
        client.query(sql.as_str(), &[]).await.unwrap_or_else(|e| panic!("{sql}\n{e:?}"))
    })
}

/// The first column of the first row of `sql` (a count).
pub fn count(url: &str, sql: &str) -> i64 {
    query(url, sql)[0].get(0)
}

/// The built-in event types' tables.
pub const BUILT_IN_TABLES: [&str; 6] = ["pageviews", "clicks", "link_clicks", "mouse_moves", "key_presses", "form_submissions"];

/// `SELECT` of the events in `events.<table>` for every one of `tables`, in all.
pub fn total_sql(tables: &[&str]) -> String {
    format!("SELECT {}", tables.iter().map(|t| format!("(SELECT count(*) FROM events.{t})")).collect::<Vec<_>>().join(" + "))
}

/// Waits (up to `timeout`) until `tables` hold `n` events in all, then
/// 1.5 s more so that a late duplicate shows, and checks they hold exactly
/// `n`; fails with the count reached and chronosd's log.
pub fn wait_for_events(url: &str, tables: &[&str], n: i64, timeout: Duration, d: &Chronosd) {
    let sql = total_sql(tables);
    let until = Instant::now() + timeout;
    loop {
        let got = count(url, &sql);
        if got >= n {
            std::thread::sleep(Duration::from_millis(1500));
            assert_eq!(count(url, &sql), n, "more events than sent");
            return;
        }
        assert!(Instant::now() < until, "{got} of {n} events loaded\n{}", d.log_text());
        if std::env::var_os("TRACE_GROUPS").is_some() && Instant::now() + Duration::from_secs(80) > until {
            eprintln!("--- waiting: {got} of {n}\n{}", d.log_text());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (up to `timeout`) until the count `sql` reaches `want`.
pub fn wait_rows(url: &str, sql: &str, want: i64, timeout: Duration, d: &Chronosd) {
    let until = Instant::now() + timeout;
    while count(url, sql) < want {
        assert!(Instant::now() < until, "{sql} never reached {want}\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// loadgen's whole command (`loadgen::execute`) with these arguments, on a runtime of its own.
pub fn run_loadgen(args: &[&str]) -> loadgen::run::Outcome {
    use clap::Parser;
    let args = loadgen::Args::parse_from(std::iter::once("loadgen").chain(args.iter().copied()));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(loadgen::execute(&args)).expect("loadgen runs")
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A valid batch of `n` events cycling through every built-in type.
pub fn batch(session: &str, n: usize) -> Value {
    let t = now_ms();
    let events: Vec<Value> = (0..n)
        .map(|i| {
            let t = t - 1000 + i as i64;
            match i % 6 {
                0 => json!(["pageviews", t, "load", "https://ref.example.org/"]),
                1 => json!(["clicks", t, "BUTTON", 1, i, i * 2, "main>button.buy"]),
                2 => json!(["link_clicks", t, "Docs \"quoted\" é", "https://shop.example.com/docs"]),
                3 => json!(["mouse_moves", t, i, 300]),
                4 => json!(["key_presses", t, null, "INPUT"]),
                _ => json!(["form_submissions", t, "signup", "/join", ["email", "plan"]]),
            }
        })
        .collect();
    json!({
        "v": 1,
        "key": KEY,
        "batch": uuid::Uuid::new_v4().to_string(),
        "sent_at": t,
        "session": session,
        "page": {"url": "https://shop.example.com/cart", "title": "Cart", "language": "en-GB", "cookies_enabled": true},
        "events": events,
    })
}

/// What the tests' HTTP client says it is: a browser, so the events it posts
/// are not flagged as a bot's (docs/enrichment.md).
pub const BROWSER_UA: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).user_agent(BROWSER_UA).build().unwrap()
}

/// A client that sends no `User-Agent` (its batches are flagged `no_user_agent`).
pub fn bare_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// POSTs a batch as sendBeacon does (text/plain) from `ORIGIN`, from client IP `ip`.
pub fn post(c: &reqwest::blocking::Client, d: &Chronosd, body: &Value, ip: &str) -> (u16, Value, reqwest::header::HeaderMap) {
    post_raw(c, d, body.to_string().into_bytes(), &[("Content-Type", "text/plain;charset=UTF-8"), ("Origin", ORIGIN), ("X-Forwarded-For", ip)])
}

pub fn post_raw(c: &reqwest::blocking::Client, d: &Chronosd, body: Vec<u8>, headers: &[(&str, &str)]) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = c.post(d.url("/v1/batch")).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().expect("request");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("response is not JSON: {text}"));
    (status, value, headers)
}

/// The two layouts of the event tables. The loaders and views suites run each
/// of their tests on both, against a PostgreSQL that preloads TimescaleDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Native,
    Hypertable,
}

impl Layout {
    /// `[load]` keys that choose this layout, followed by `more`.
    pub fn load(self, more: &str) -> String {
        let mode = match self {
            Layout::Native => "never",
            Layout::Hypertable => "always",
        };
        format!("timescaledb = \"{mode}\"\n{more}")
    }

    /// A PostgreSQL that can give this layout: one that preloads TimescaleDB
    /// (both layouts run on the same kind of server).
    pub fn postgres(self, dir: &std::path::Path) -> chronos::stack::postgres::PostgresServer {
        assert!(
            chronos::stack::postgres::timescaledb_installed(),
            "TimescaleDB is not installed in this PostgreSQL (no timescaledb.so in `pg_config --pkglibdir`): \
             the hypertable tests need it; .ci/setup installs it (see docs/operations.md)"
        );
        chronos::stack::postgres::PostgresServer::start_with(dir, true).expect("start PostgreSQL")
    }

    /// Asserts that the event tables at `url` have this layout.
    pub fn assert_tables(self, url: &str) {
        let native = count(
            url,
            "SELECT count(*) FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'events_raw'",
        );
        let hyper = count(
            url,
            "SELECT CASE WHEN to_regclass('timescaledb_information.hypertables') IS NULL THEN 0
             ELSE (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = 'events_raw' AND c.relkind = 'r' AND NOT c.relispartition) END",
        );
        match self {
            Layout::Native => assert!(native > 0 && hyper == 0, "native layout wanted: {native} partitioned, {hyper} plain tables"),
            Layout::Hypertable => {
                let listed = count(url, "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_schema = 'events_raw'");
                assert!(native == 0 && hyper > 0 && listed == hyper, "hypertables wanted: {native} partitioned, {hyper} plain, {listed} hypertables")
            }
        }
    }
}

/// Runs each `fn name(layout: Layout)` as two tests, `native::name` and
/// `hypertable::name`.
#[macro_export]
macro_rules! on_both_layouts {
    ($($name:ident),* $(,)?) => {
        mod native {
            $( #[test] fn $name() { super::$name($crate::common::Layout::Native) } )*
        }
        mod hypertable {
            $( #[test] fn $name() { super::$name($crate::common::Layout::Hypertable) } )*
        }
    };
}

/// Runs tracker/test/pageview.mjs: headless Chromium loads the test site on
/// `site_port`, which serves `bundle` initialised with `options`, with `env`
/// added. Panics, with chronosd's log, when the browser run fails; returns
/// the script's RESULT object.
pub fn run_pageview(d: &Chronosd, bundle: &std::path::Path, options: &Value, site_port: u16, env: &[(&str, &str)]) -> Value {
    let tracker = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tracker");
    assert!(tracker.join("node_modules/playwright-core").exists(), "tracker/node_modules is missing: run `npm ci --prefix tracker` (see .ci/setup)");
    let mut cmd = Command::new("timeout");
    cmd.args(["120", "node", "test/pageview.mjs"])
        .current_dir(&tracker)
        .env("CHRONOS_JS", bundle)
        .env("OPTIONS", options.to_string())
        .env("SITE_PORT", site_port.to_string())
        .env("CHROMIUM", std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("node (see .ci/setup)");
    let text = output_text(&out);
    assert!(out.status.success(), "browser run failed:\n{text}\n--- chronosd\n{}", d.log_text());
    serde_json::from_str(text.lines().rev().find_map(|l| l.strip_prefix("RESULT ")).expect("RESULT line")).unwrap()
}

/// A valid 6-event batch of `session` whose events all happened at `t` (sent now).
pub fn batch_at(session: &str, t: i64) -> Value {
    let mut b = batch(session, 6);
    for e in b["events"].as_array_mut().unwrap() {
        e[1] = json!(t);
    }
    b
}

/// PostgreSQL, fresh topics on the shared broker, and chronosd with its
/// loaders started from `toml(kafka, postgres_url)`, for one test. Dropped in
/// order: chronosd stops before PostgreSQL.
pub struct Loading {
    pub d: Chronosd,
    pub url: String,
    pub kafka: Kafka,
    _pg: chronos::stack::postgres::PostgresServer,
    _dir: tempfile::TempDir,
}

pub fn start_loading(partitions: i32, toml: impl FnOnce(&Kafka, &str) -> String) -> Loading {
    let dir = temp_dir();
    let pg = chronos::stack::postgres::PostgresServer::start_in(dir.path()).expect("start PostgreSQL");
    let url = pg.url();
    let kafka = Kafka::start(partitions);
    let d = Chronosd::start(&toml(&kafka, &url));
    d.wait_ready(Duration::from_secs(60));
    Loading { d, url, kafka, _pg: pg, _dir: dir }
}

/// Every continuous view equals a from-scratch computation of it: a copy of
/// its definition added with `--backfill` (PostgreSQL and the archive, read
/// now) holds the same rows, column by column; `skip` names columns left out
/// (percentiles: a t-digest depends on the order its values merged in).
#[allow(dead_code)]
pub fn assert_views_equal_fresh_copies(url: &str, config: &std::path::Path, skip: &[&str]) {
    let views: Vec<(String, String)> =
        query(url, "SELECT name, definition FROM chronos.views WHERE broken IS NULL ORDER BY name").iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(!views.is_empty(), "no views: the check proves nothing");
    let copies: Vec<String> = views.iter().map(|(n, d)| d.replacen(&format!(" {n} "), &format!(" {n}_fresh "), 1)).collect();
    let file = config.with_file_name("fresh_copies.sql");
    std::fs::write(&file, copies.join("\n")).unwrap();
    let out = chronos_cli(config, &["views", "add", file.to_str().unwrap(), "--backfill"]);
    assert!(out.status.success(), "{}", output_text(&out));
    for (n, _) in &views {
        let cols: Vec<String> = query(
            url,
            &format!("SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'views' AND table_name = '{n}' ORDER BY ordinal_position"),
        )
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|c| !skip.contains(&c.as_str()))
        .map(|c| format!("\"{c}\""))
        .collect();
        let cols = cols.join(", ");
        let rows = count(url, &format!("SELECT count(*) FROM views.\"{n}\""));
        let differ = count(
            url,
            &format!(
                "SELECT count(*) FROM ((SELECT {cols} FROM views.\"{n}\" EXCEPT ALL SELECT {cols} FROM views.\"{n}_fresh\")
                 UNION ALL (SELECT {cols} FROM views.\"{n}_fresh\" EXCEPT ALL SELECT {cols} FROM views.\"{n}\")) d"
            ),
        );
        assert_eq!(differ, 0, "view {n} ({rows} rows) differs from a from-scratch computation in {differ} rows");
        let out = chronos_cli(config, &["views", "drop", &format!("{n}_fresh")]);
        assert!(out.status.success(), "{}", output_text(&out));
    }
}
