//! Apache Kafka in KRaft mode for the local stack, the tests and the benchmarks:
//! where its classpath is ([`KafkaInstall`]), one combined broker + controller
//! node ([`KafkaNode`]), and the nodes a test or benchmark owns on loopback
//! ([`KafkaCluster`]: one node, or a quorum of several). chronosd itself only needs bootstrap servers;
//! nothing here is used on its run path.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use super::process::{self, Lifetime};
use crate::config::KafkaConfig;

/// The Apache Kafka release `.ci/setup` fetches (pinned; `.ci/kafka/pom.xml` says the same).
pub const KAFKA_VERSION: &str = "4.1.1";

/// How long a node may take from exec to answering metadata (a JVM on 2 busy cores).
pub const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Where the broker's jars are: `$KAFKA_HOME/libs` when `KAFKA_HOME` is set (a
/// user's own Kafka), else the per-user cache `.ci/setup` fills with Maven.
#[derive(Debug, Clone)]
pub struct KafkaInstall {
    /// Directory of the jars (the classpath is `<libs>/*`).
    pub libs: PathBuf,
    /// The release, read off the jar names.
    pub version: String,
}

impl KafkaInstall {
    /// The cache directory of the pinned release: `$XDG_CACHE_HOME/chronos/kafka-<v>`
    /// (or `~/.cache/chronos/kafka-<v>`).
    pub fn cache_dir() -> PathBuf {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"));
        base.join("chronos").join(format!("kafka-{KAFKA_VERSION}"))
    }

    /// `KAFKA_HOME` when set, else the cache; an error says how to get Kafka.
    pub fn find() -> Result<KafkaInstall> {
        let home = std::env::var_os("KAFKA_HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
        Self::find_in(home, &Self::cache_dir())
    }

    /// [`KafkaInstall::find`] with the environment passed in.
    fn find_in(kafka_home: Option<PathBuf>, cache_dir: &Path) -> Result<KafkaInstall> {
        if let Some(home) = kafka_home {
            if !home.join("bin/kafka-server-start.sh").is_file() {
                bail!("KAFKA_HOME={} has no bin/kafka-server-start.sh: point it at an unpacked Apache Kafka release, or unset it to use the cached classpath", home.display());
            }
            let libs = home.join("libs");
            let version =
                version_in(&libs).with_context(|| format!("KAFKA_HOME={}: no kafka_2.13-<version>.jar in {}", home.display(), libs.display()))?;
            return Ok(KafkaInstall { libs, version });
        }
        let libs = cache_dir.join("lib");
        match version_in(&libs) {
            Some(version) => Ok(KafkaInstall { libs, version }),
            None => bail!(
                "Apache Kafka {KAFKA_VERSION} is not installed in {}: run .ci/setup (it fetches the broker's jars from Maven Central once), \
                 or set KAFKA_HOME to an unpacked Apache Kafka release",
                libs.display()
            ),
        }
    }

    fn java() -> PathBuf {
        std::env::var_os("JAVA_HOME").map(|h| Path::new(&h).join("bin/java")).filter(|j| j.is_file()).unwrap_or_else(|| "java".into())
    }

    /// `java … -cp <libs>/* <main>` with logging configured by `log4j`.
    fn command(&self, main: &str, log4j: &Path, jvm: &[String]) -> Command {
        let mut cmd = Command::new(Self::java());
        cmd.args(jvm).arg(format!("-Dlog4j2.configurationFile={}", log4j.display())).arg("-cp").arg(format!("{}/*", self.libs.display())).arg(main);
        cmd
    }
}

/// The release named by `kafka_2.13-<version>.jar` in `libs`.
fn version_in(libs: &Path) -> Option<String> {
    std::fs::read_dir(libs).ok()?.flatten().find_map(|e| {
        let name = e.file_name().into_string().ok()?;
        let v = name.strip_prefix("kafka_2.13-")?.strip_suffix(".jar")?;
        (!v.contains("-sources") && !v.contains("-test")).then(|| v.to_string())
    })
}

/// A fresh KRaft cluster id: 16 random bytes in URL-safe base64 without padding,
/// never starting with `-` (Kafka's `Uuid.randomUuid` rule).
pub fn new_cluster_id() -> String {
    loop {
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes());
        if !id.starts_with('-') {
            return id;
        }
    }
}

/// One combined broker + controller node: its ports, the quorum it belongs to,
/// its directory (data, properties, logging config) and log file.
#[derive(Debug, Clone)]
pub struct KafkaNode {
    pub node_id: u32,
    /// Client listener.
    pub port: u16,
    /// Port advertised to clients (differs from `port` behind a proxy).
    pub advertised_port: u16,
    pub controller_port: u16,
    /// `controller.quorum.voters`: `id@127.0.0.1:port,…`.
    pub voters: String,
    /// Nodes in the cluster: replication of the internal topics follows it.
    pub cluster_size: usize,
    pub dir: PathBuf,
    pub log: PathBuf,
    /// JVM heap (-Xms/-Xmx), MiB.
    pub heap_mb: u32,
    /// Extra `server.properties` lines (tests: faster failure detection).
    pub overrides: Vec<(String, String)>,
    /// Extra arguments of `kafka-storage format` (e.g. `--add-scram` users).
    pub format_args: Vec<String>,
}

impl KafkaNode {
    /// A single node that is its own quorum.
    pub fn single(dir: PathBuf, port: u16, controller_port: u16, log: PathBuf) -> KafkaNode {
        KafkaNode {
            node_id: 1,
            port,
            advertised_port: port,
            controller_port,
            voters: format!("1@127.0.0.1:{controller_port}"),
            cluster_size: 1,
            dir,
            log,
            heap_mb: 512,
            overrides: Vec::new(),
            format_args: Vec::new(),
        }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.advertised_port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn properties_file(&self) -> PathBuf {
        self.dir.join("server.properties")
    }

    fn log4j_file(&self) -> PathBuf {
        self.dir.join("log4j2.properties")
    }

    /// Whether the data directory was formatted (it then keeps its cluster id).
    pub fn formatted(&self) -> bool {
        self.data_dir().join("meta.properties").is_file()
    }

    /// `server.properties` of this node.
    pub fn properties(&self) -> String {
        let mut p = vec![
            ("process.roles".to_string(), "broker,controller".to_string()),
            ("node.id".into(), self.node_id.to_string()),
            ("controller.quorum.voters".into(), self.voters.clone()),
            ("listeners".into(), format!("PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}", self.port, self.controller_port)),
            ("advertised.listeners".into(), format!("PLAINTEXT://127.0.0.1:{}", self.advertised_port)),
            ("inter.broker.listener.name".into(), "PLAINTEXT".into()),
            ("controller.listener.names".into(), "CONTROLLER".into()),
            ("listener.security.protocol.map".into(), "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT".into()),
            ("log.dirs".into(), self.data_dir().display().to_string()),
            ("group.initial.rebalance.delay.ms".into(), "0".into()),
            // The cleaner only compacts internal topics here; 128 MB is the default.
            ("log.cleaner.dedupe.buffer.size".into(), "2097152".into()),
        ];
        if self.cluster_size < 3 {
            // Internal topics default to replication 3 (min ISR 2), which fewer nodes cannot hold.
            let rf = self.cluster_size.to_string();
            for key in
                ["offsets.topic.replication.factor", "transaction.state.log.replication.factor", "share.coordinator.state.topic.replication.factor"]
            {
                p.push((key.into(), rf.clone()));
            }
            for key in ["transaction.state.log.min.isr", "share.coordinator.state.topic.min.isr"] {
                p.push((key.into(), "1".into()));
            }
            p.push(("offsets.topic.num.partitions".into(), "1".into()));
        }
        for (k, v) in &self.overrides {
            p.retain(|(key, _)| key != k);
            p.push((k.clone(), v.clone()));
        }
        p.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
    }

    fn write_files(&self) -> Result<()> {
        std::fs::create_dir_all(self.data_dir()).with_context(|| format!("creating {}", self.data_dir().display()))?;
        std::fs::write(self.properties_file(), self.properties())?;
        std::fs::write(self.log4j_file(), LOG4J2)?;
        Ok(())
    }

    /// Formats the data directory for `cluster_id` unless it already is.
    pub fn format(&self, install: &KafkaInstall, cluster_id: &str) -> Result<()> {
        self.write_files()?;
        if self.formatted() {
            return Ok(());
        }
        let mut cmd = install.command("kafka.tools.StorageTool", &self.log4j_file(), &["-Xmx256m".into()]);
        cmd.args(["format", "-t", cluster_id, "-c"]).arg(self.properties_file()).args(&self.format_args);
        let mut child = process::spawn(cmd, &self.log, None, Lifetime::Owned)?;
        if !child.wait()?.success() {
            bail!("formatting the Kafka data directory {} failed; see {}", self.data_dir().display(), self.log.display());
        }
        Ok(())
    }

    /// Starts the node, formatted beforehand ([`KafkaNode::format`] writes its
    /// files), and returns at once; see [`KafkaNode::wait_ready`].
    pub fn spawn(&self, install: &KafkaInstall, lifetime: Lifetime) -> Result<Child> {
        let jvm = [
            format!("-Xms{}m", self.heap_mb.min(256)),
            format!("-Xmx{}m", self.heap_mb),
            "-XX:+UseG1GC".into(),
            "-XX:MaxGCPauseMillis=20".into(),
            "-Djava.awt.headless=true".into(),
            format!("-Dkafka.logs.dir={}", self.dir.display()),
        ];
        let mut cmd = install.command("kafka.Kafka", &self.log4j_file(), &jvm);
        cmd.arg(self.properties_file());
        process::spawn(cmd, &self.log, None, lifetime)
    }

    /// Waits until this node answers metadata and lists itself among the brokers.
    pub fn wait_ready(&self, child: &mut Child, timeout: Duration) -> Result<()> {
        let mut exited = None;
        let answered = self.wait_answering(timeout, || match child.try_wait() {
            Ok(Some(status)) => {
                exited = Some(status);
                false
            }
            _ => true,
        });
        match exited {
            Some(status) => bail!("the Kafka node {} exited ({status}) before it answered; see {}", self.node_id, self.log.display()),
            None => answered,
        }
    }

    /// Waits until this node answers metadata and lists itself among the
    /// brokers, or fails after `timeout`, sooner when `still_running` says it died.
    pub fn wait_answering(&self, timeout: Duration, mut still_running: impl FnMut() -> bool) -> Result<()> {
        let until = Instant::now() + timeout;
        let client = metadata_client(&format!("127.0.0.1:{}", self.port))?;
        loop {
            if !still_running() {
                bail!("the Kafka node {} exited before it answered; see {}", self.node_id, self.log.display());
            }
            if let Ok(m) = client.fetch_metadata(None, Duration::from_millis(500)) {
                if m.brokers().iter().any(|b| b.id() == self.node_id as i32) {
                    return Ok(());
                }
            }
            if Instant::now() > until {
                bail!("the Kafka node {} did not answer within {timeout:?}; see {}", self.node_id, self.log.display());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Formats when needed, starts the node and waits until it answers.
    pub fn start(&self, install: &KafkaInstall, lifetime: Lifetime) -> Result<Child> {
        self.format(install, &new_cluster_id())?;
        let mut child = self.spawn(install, lifetime)?;
        if let Err(e) = self.wait_ready(&mut child, START_TIMEOUT) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(child)
    }
}

/// Console to stderr (the node's log file); the broker's own start-up and
/// shutdown lines at INFO, the chatty client and request loggers at WARN.
const LOG4J2: &str = "\
status = warn
appender.console.type = Console
appender.console.name = STDERR
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.console.ref = STDERR
logger.clients.name = org.apache.kafka
logger.clients.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.log.name = kafka.log
logger.log.level = WARN
logger.coordinator.name = kafka.coordinator
logger.coordinator.level = WARN
logger.cluster.name = kafka.cluster
logger.cluster.level = WARN
";

/// A quiet client for metadata requests (readiness, broker ids, ISR).
pub fn metadata_client(brokers: &str) -> Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("socket.connection.setup.timeout.ms", "1000")
        .set("log_level", "0")
        .create()
        .context("creating a Kafka client")
}

/// What the cluster at `brokers` says of itself: broker ids.
pub fn broker_ids(brokers: &str, timeout: Duration) -> Result<Vec<i32>> {
    let client = metadata_client(brokers)?;
    let m = client.fetch_metadata(None, timeout).with_context(|| format!("the Kafka cluster at {brokers} did not answer"))?;
    let mut ids: Vec<i32> = m.brokers().iter().map(|b| b.id()).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Creates the configured topics for chronosd's default HTTP caps (the
/// tests' and benchmarks' topics), retrying while the cluster finishes starting.
pub fn create_topics(kafka: &KafkaConfig, within: Duration) -> Result<()> {
    let http = crate::config::HttpConfig::default();
    create_topics_for(kafka, crate::produce::kafka::max_record_bytes(http.max_decompressed_bytes, http.max_events_per_batch), within)
}

/// Creates the configured topics for a producer whose largest record is
/// `max_record` bytes, retrying while the cluster finishes starting.
pub fn create_topics_for(kafka: &KafkaConfig, max_record: usize, within: Duration) -> Result<()> {
    let until = Instant::now() + within;
    loop {
        let attempt = crate::rt::block_on(crate::produce::admin::ensure_topics(kafka, max_record, Duration::from_secs(5)));
        match attempt {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > until => bail!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// Kafka nodes on loopback owned by a test or benchmark, each broker and
/// controller, one quorum: a single node, or several for the fault tests and
/// the cluster benchmark. Killed when dropped.
pub struct KafkaCluster {
    pub nodes: Vec<KafkaNode>,
    install: KafkaInstall,
    children: Vec<Option<Child>>,
}

impl KafkaCluster {
    /// One node on free ports with its data in `dir`.
    pub fn single_in(dir: &Path) -> Result<KafkaCluster> {
        let port = process::free_port();
        Self::single_advertising(dir, port, port)
    }

    /// One node on `port` that tells clients to connect to `advertised_port`
    /// (a proxy in front of it, for fault-injection tests).
    pub fn single_advertising(dir: &Path, port: u16, advertised_port: u16) -> Result<KafkaCluster> {
        Self::start_retrying(|| {
            let mut node = KafkaNode::single(dir.join("kafka"), port, process::free_port(), dir.join("kafka.log"));
            node.advertised_port = advertised_port;
            node.heap_mb = 384;
            vec![node]
        })
    }

    /// One node on free ports in `dir`, changed by `configure` before it is
    /// formatted (extra listeners, SCRAM users).
    pub fn single_with(dir: &Path, configure: impl Fn(&mut KafkaNode)) -> Result<KafkaCluster> {
        Self::start_retrying(|| {
            let mut node = KafkaNode::single(dir.join("kafka"), process::free_port(), process::free_port(), dir.join("kafka.log"));
            node.heap_mb = 384;
            configure(&mut node);
            vec![node]
        })
    }

    /// Starts the nodes `make` returns; when a port picked as free was taken
    /// before the JVM bound it (a few seconds later: any outgoing connection
    /// may get it as its ephemeral port), starts them again on fresh ports,
    /// up to three times in all.
    fn start_retrying(make: impl Fn() -> Vec<KafkaNode>) -> Result<KafkaCluster> {
        let mut attempt = 1;
        loop {
            let nodes = make();
            let places: Vec<(PathBuf, PathBuf)> = nodes.iter().map(|n| (n.dir.clone(), n.log.clone())).collect();
            let err = match Self::start_nodes(nodes) {
                Ok(cluster) => return Ok(cluster),
                Err(e) => e,
            };
            let clash = places.iter().any(|(_, log)| std::fs::read_to_string(log).is_ok_and(|t| t.contains("Address already in use")));
            if !clash || attempt == 3 {
                return Err(err);
            }
            tracing::warn!(attempt, "A Kafka port was taken before the node bound it; starting again on other ports.");
            for (dir, log) in &places {
                let _ = std::fs::remove_dir_all(dir);
                let _ = std::fs::remove_file(log);
            }
            attempt += 1;
        }
    }

    /// Starts `n` nodes in `dir` and waits until every one answers.
    pub fn start_in(dir: &Path, n: usize, overrides: &[(&str, &str)]) -> Result<KafkaCluster> {
        Self::start_retrying(|| Self::cluster_nodes(dir, n, overrides))
    }

    fn cluster_nodes(dir: &Path, n: usize, overrides: &[(&str, &str)]) -> Vec<KafkaNode> {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (process::free_port(), process::free_port())).collect();
        let voters = ports.iter().enumerate().map(|(i, (_, c))| format!("{}@127.0.0.1:{c}", i + 1)).collect::<Vec<_>>().join(",");
        let nodes: Vec<KafkaNode> = ports
            .iter()
            .enumerate()
            .map(|(i, &(port, controller_port))| KafkaNode {
                node_id: i as u32 + 1,
                port,
                advertised_port: port,
                controller_port,
                voters: voters.clone(),
                cluster_size: n,
                dir: dir.join(format!("kafka-{}", i + 1)),
                log: dir.join(format!("kafka-{}.log", i + 1)),
                heap_mb: 384,
                overrides: overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                format_args: Vec::new(),
            })
            .collect();
        nodes
    }

    /// Formats `nodes` with one cluster id and starts them together (a quorum
    /// needs a majority), then waits until every one answers.
    fn start_nodes(nodes: Vec<KafkaNode>) -> Result<KafkaCluster> {
        let install = KafkaInstall::find()?;
        let id = new_cluster_id();
        for node in &nodes {
            node.format(&install, &id)?;
        }
        let mut cluster = KafkaCluster { children: Vec::new(), nodes, install };
        for node in &cluster.nodes {
            let child = node.spawn(&cluster.install, Lifetime::Owned)?;
            cluster.children.push(Some(child));
        }
        for (node, child) in cluster.nodes.iter().zip(&mut cluster.children) {
            node.wait_ready(child.as_mut().expect("just started"), START_TIMEOUT)?;
        }
        Ok(cluster)
    }

    /// Every node's client address.
    pub fn bootstrap(&self) -> String {
        self.nodes.iter().map(KafkaNode::bootstrap).collect::<Vec<_>>().join(",")
    }

    pub fn log(&self, i: usize) -> &Path {
        &self.nodes[i].log
    }

    pub fn pid(&self, i: usize) -> Option<i32> {
        self.children[i].as_ref().map(|c| c.id() as i32)
    }

    /// SIGKILL of node `i` (index, not node id): a crash.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM of node `i` (controlled shutdown: leadership moves first), SIGKILL after `grace`.
    pub fn stop(&mut self, i: usize, grace: Duration) -> bool {
        match self.children[i].take() {
            Some(mut c) => {
                let clean = process::stop_pid(c.id() as i32, libc::SIGTERM, grace);
                let _ = c.wait();
                clean
            }
            None => true,
        }
    }

    /// Starts node `i` again on its ports and data, and waits until it answers.
    pub fn start(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        let mut child = self.nodes[i].spawn(&self.install, Lifetime::Owned)?;
        self.nodes[i].wait_ready(&mut child, START_TIMEOUT)?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// Waits until every partition of `topic` has all `replicas` in sync.
    pub fn wait_in_sync(&self, topic: &str, replicas: usize, timeout: Duration) -> Result<()> {
        let until = Instant::now() + timeout;
        let client = metadata_client(&self.bootstrap())?;
        loop {
            let short = match client.fetch_metadata(Some(topic), Duration::from_secs(2)) {
                Ok(m) => m
                    .topics()
                    .iter()
                    .flat_map(|t| t.partitions())
                    .filter(|p| p.isr().len() < replicas)
                    .map(|p| format!("partition {} ISR {:?}", p.id(), p.isr()))
                    .collect::<Vec<_>>(),
                Err(e) => vec![e.to_string()],
            };
            if short.is_empty() {
                return Ok(());
            }
            if Instant::now() > until {
                bail!("{topic} not fully in sync within {timeout:?}: {}", short.join("; "));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_are_kafka_uuids() {
        for _ in 0..100 {
            let id = new_cluster_id();
            assert_eq!(id.len(), 22, "{id}");
            assert!(!id.starts_with('-'));
            assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{id}");
        }
    }

    #[test]
    fn a_single_node_holds_its_internal_topics_alone() {
        let n = KafkaNode::single("/tmp/k".into(), 9092, 9093, "/tmp/k.log".into());
        let p = n.properties();
        for line in [
            "process.roles=broker,controller\n",
            "controller.quorum.voters=1@127.0.0.1:9093\n",
            "listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093\n",
            "offsets.topic.replication.factor=1\n",
            "transaction.state.log.min.isr=1\n",
            "log.dirs=/tmp/k/data\n",
        ] {
            assert!(p.contains(line), "{line} missing from\n{p}");
        }
    }

    #[test]
    fn three_nodes_keep_the_internal_defaults_and_overrides_replace() {
        let mut n = KafkaNode::single("/tmp/k".into(), 9092, 9093, "/tmp/k.log".into());
        n.cluster_size = 3;
        n.overrides = vec![("group.initial.rebalance.delay.ms".into(), "100".into())];
        let p = n.properties();
        assert!(!p.contains("offsets.topic.replication.factor"), "{p}");
        assert_eq!(p.matches("group.initial.rebalance.delay.ms").count(), 1);
        assert!(p.contains("group.initial.rebalance.delay.ms=100\n"));
    }

    #[test]
    fn the_pinned_version_is_the_one_the_setup_fetches() {
        let pom = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/kafka/pom.xml")).unwrap();
        assert!(pom.contains(&format!("<kafka.version>{KAFKA_VERSION}</kafka.version>")), "{pom}");
    }

    #[test]
    fn kafka_home_wins_over_the_cache_and_each_refusal_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let (home, cache) = (dir.path().join("kafka_2.13-4.0.0"), dir.path().join("cache"));
        std::fs::create_dir_all(home.join("bin")).unwrap();
        std::fs::create_dir_all(home.join("libs")).unwrap();
        std::fs::create_dir_all(cache.join("lib")).unwrap();
        std::fs::write(cache.join("lib/kafka_2.13-4.1.1.jar"), "").unwrap();
        assert_eq!(KafkaInstall::find_in(None, &cache).unwrap().version, "4.1.1");
        let e = KafkaInstall::find_in(Some(home.clone()), &cache).unwrap_err().to_string();
        assert!(e.contains("has no bin/kafka-server-start.sh"), "{e}");
        std::fs::write(home.join("bin/kafka-server-start.sh"), "").unwrap();
        let e = KafkaInstall::find_in(Some(home.clone()), &cache).unwrap_err().to_string();
        assert!(e.contains("no kafka_2.13-<version>.jar"), "{e}");
        std::fs::write(home.join("libs/kafka_2.13-4.0.0.jar"), "").unwrap();
        let found = KafkaInstall::find_in(Some(home.clone()), &cache).unwrap();
        assert_eq!((found.version.as_str(), found.libs), ("4.0.0", home.join("libs")));
        let e = KafkaInstall::find_in(None, &dir.path().join("empty")).unwrap_err().to_string();
        assert!(e.contains("run .ci/setup") && e.contains("KAFKA_HOME"), "{e}");
    }

    #[test]
    fn the_version_is_read_off_the_jar_names() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["kafka-clients-4.1.1.jar", "kafka_2.13-4.1.1.jar", "scala-library-2.13.16.jar"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        assert_eq!(version_in(dir.path()).as_deref(), Some("4.1.1"));
        assert_eq!(version_in(&dir.path().join("missing")), None);
    }
}
