//! The local stack behind `chronos start|stop|status|log`: PostgreSQL (from the
//! machine's installation), one Apache Kafka node (or an external cluster) and
//! chronosd, with all state (data, logs, pid files, generated config) in one
//! directory.
//! The integration tests start the same services with the same helpers.
//! [`pipeline`] is the data-flow half of `chronos status` (consumer lag,
//! events stored in the last minute), for any deployment.

pub mod broker;
pub mod pipeline;
pub mod postgres;
pub mod process;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use self::broker::{KafkaInstall, KafkaNode};
use self::postgres::PostgresSpec;
use self::process::{Lifetime, RunAs};
use crate::config::{BrokerMode, Config};

/// A service of the local stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    Postgres,
    Broker,
    Chronosd,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Postgres, Service::Broker, Service::Chronosd];

    pub fn name(self) -> &'static str {
        match self {
            Service::Postgres => "postgres",
            Service::Broker => "broker",
            Service::Chronosd => "chronosd",
        }
    }
}

/// One line of `chronos status`.
#[derive(Debug, Clone)]
pub struct ServiceStatus {
    pub service: Service,
    pub pid: Option<i32>,
    pub address: String,
    pub up: bool,
    pub detail: String,
}

/// The local stack: its config file and state directory.
pub struct Stack {
    pub config: Config,
    pub config_path: PathBuf,
    pub dir: PathBuf,
}

const GENERATED_CONFIG: &str = "chronos.toml";

impl Stack {
    /// Opens the stack of `config_path`; without one, `./chronos.toml` when it
    /// exists, else a config generated once in the state directory.
    pub fn open(config_path: Option<&Path>) -> Result<Stack> {
        let path = match config_path {
            Some(p) => p.to_path_buf(),
            None if Path::new("chronos.toml").exists() => PathBuf::from("chronos.toml"),
            None => {
                let dir = std::env::var_os("CHRONOS_STACK__DIR").map(PathBuf::from).unwrap_or_else(|| ".chronos".into());
                let path = dir.join(GENERATED_CONFIG);
                if !path.exists() {
                    std::fs::create_dir_all(&dir)?;
                    std::fs::write(&path, quickstart_config(&dir))?;
                }
                path
            }
        };
        let config = Config::load(Some(&path)).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let dir = config.stack.dir.clone();
        Ok(Stack { config, config_path: path, dir })
    }

    fn pid_file(&self, s: Service) -> PathBuf {
        self.dir.join("run").join(format!("{}.pid", s.name()))
    }

    /// The log file of a service.
    pub fn log_file(&self, s: Service) -> PathBuf {
        self.dir.join("logs").join(format!("{}.log", s.name()))
    }

    fn postgres(&self) -> PostgresSpec {
        PostgresSpec {
            data_dir: self.dir.join("postgres"),
            port: self.config.stack.postgres_port,
            log: self.log_file(Service::Postgres),
            ephemeral: false,
            preload_timescaledb: postgres::timescaledb_installed(),
        }
    }

    fn broker(&self) -> KafkaNode {
        let st = &self.config.stack;
        let mut node = KafkaNode::single(self.dir.join("kafka"), st.broker_port, st.controller_port, self.log_file(Service::Broker));
        node.heap_mb = st.broker_heap_mb;
        node
    }

    fn external_broker(&self) -> bool {
        self.config.stack.broker == BrokerMode::External
    }

    fn version_file(&self) -> PathBuf {
        self.dir.join("run").join("broker.version")
    }

    /// Starts the local Kafka node (formatted on first start; its data is kept
    /// across restarts), or none with an external cluster; then the topics.
    fn start_broker(&self) -> Result<()> {
        if self.external_broker() {
            println!("{:<9} external: {}", "broker", self.config.kafka.brokers);
        } else {
            let node = self.broker();
            let (wanted, by_name) = (node.bootstrap(), format!("localhost:{}", node.port));
            if !self.config.kafka.brokers.split(',').map(str::trim).any(|b| b == wanted || b == by_name) {
                bail!(
                    "kafka.brokers = {:?} does not name the local Kafka node ({wanted}); set it, or set stack.broker = \"external\" to use that cluster",
                    self.config.kafka.brokers
                );
            }
            let install = KafkaInstall::find()?;
            if !node.formatted() {
                println!("{:<9} formatting a new KRaft data directory in {}", "", node.dir.display());
            }
            let child = node.start(&install, Lifetime::Detached)?;
            process::write_pid(&self.pid_file(Service::Broker), child.id())?;
            std::fs::write(self.version_file(), &install.version)?;
        }
        let http = &self.config.http;
        let max_record = crate::produce::kafka::max_record_bytes(http.max_decompressed_bytes, http.max_events_per_batch);
        broker::create_topics_for(&self.config.kafka, max_record, Duration::from_secs(60))
    }

    /// `Apache Kafka 4.1.1, 1 broker` (local) or `external cluster, 3 brokers`.
    fn broker_probe(&self) -> Result<String, String> {
        let ids = broker::broker_ids(&self.config.kafka.brokers, Duration::from_secs(3)).map_err(|e| format!("{e:#}"))?;
        let count = format!("{} broker{}", ids.len(), if ids.len() == 1 { "" } else { "s" });
        Ok(if self.external_broker() {
            format!("external cluster, {count} (ids {ids:?})")
        } else {
            let version = std::fs::read_to_string(self.version_file()).unwrap_or_else(|_| "?".into());
            format!("Apache Kafka {} (KRaft), {count}", version.trim())
        })
    }

    fn running_pid(&self, s: Service) -> Option<i32> {
        let pid = match s {
            Service::Postgres => self.postgres().postmaster_pid(),
            _ => process::read_pid(&self.pid_file(s)),
        }?;
        process::alive(pid).then_some(pid)
    }

    /// Starts one service, or all in order (PostgreSQL, broker + topics, chronosd).
    pub fn start(&self, which: Option<Service>) -> Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let dir_abs = std::fs::canonicalize(&self.dir)?;
        for s in which.map(|s| vec![s]).unwrap_or_else(|| Service::ALL.to_vec()) {
            if let Some(pid) = self.running_pid(s) {
                println!("{:<9} already running (pid {pid})", s.name());
                continue;
            }
            println!("{:<9} starting…", s.name());
            match s {
                Service::Postgres => {
                    let run_as = RunAs::postgres_if_root()?;
                    if run_as.is_some() {
                        // The postgres account must reach its data directory.
                        make_traversable(&dir_abs)?;
                    }
                    let pg = self.postgres();
                    pg.init(run_as)?;
                    let child = pg.start(run_as, Lifetime::Detached)?;
                    process::write_pid(&self.pid_file(s), child.id())?;
                    pg.create_database()?;
                }
                Service::Broker => self.start_broker()?,
                Service::Chronosd => {
                    let bin = process::bin_dir().join("chronosd");
                    if !bin.exists() {
                        bail!("{} not found; build it with `cargo build --release`", bin.display());
                    }
                    let mut cmd = Command::new(bin);
                    cmd.arg("--config").arg(std::fs::canonicalize(&self.config_path)?);
                    let mut child = process::spawn(cmd, &self.log_file(s), None, Lifetime::Detached)?;
                    process::write_pid(&self.pid_file(s), child.id())?;
                    let addr = self.config.http.listen;
                    process::wait_for_port(addr, Duration::from_secs(30), || matches!(child.try_wait(), Ok(None)))
                        .with_context(|| format!("chronosd did not start; see {}", self.log_file(s).display()))?;
                    process::wait_ready(addr, Duration::from_secs(30))
                        .with_context(|| format!("chronosd is up but not ready; see {}", self.log_file(s).display()))?;
                }
            }
        }
        Ok(())
    }

    /// Stops one service, or all in reverse order.
    pub fn stop(&self, which: Option<Service>) -> Result<()> {
        let mut order = which.map(|s| vec![s]).unwrap_or_else(|| Service::ALL.to_vec());
        order.reverse();
        for s in order {
            if s == Service::Broker && self.external_broker() {
                println!("{:<9} external (not stopped)", s.name());
                continue;
            }
            match self.running_pid(s) {
                None => println!("{:<9} not running", s.name()),
                Some(pid) => {
                    // PostgreSQL: SIGINT is its fast (safe) shutdown. Others drain on SIGTERM.
                    let signal = if s == Service::Postgres { libc::SIGINT } else { libc::SIGTERM };
                    let clean = process::stop_pid(pid, signal, Duration::from_secs(30));
                    println!("{:<9} stopped{}", s.name(), if clean { "" } else { " (killed after 30 s)" });
                }
            }
            let _ = std::fs::remove_file(self.pid_file(s));
        }
        Ok(())
    }

    /// Each service: up or down, address, health.
    pub fn status(&self) -> Vec<ServiceStatus> {
        Service::ALL
            .iter()
            .map(|&s| {
                let pid = self.running_pid(s);
                let (address, probe) = match s {
                    Service::Postgres => {
                        let a = SocketAddr::from(([127, 0, 0, 1], self.config.stack.postgres_port));
                        (format!("postgres://127.0.0.1:{}", a.port()), port_probe(a))
                    }
                    Service::Broker if self.external_broker() => (format!("kafka://{}", self.config.kafka.brokers), self.broker_probe()),
                    Service::Broker => {
                        let a = SocketAddr::from(([127, 0, 0, 1], self.config.stack.broker_port));
                        (format!("kafka://{a}"), self.broker_probe())
                    }
                    Service::Chronosd => {
                        let a = self.config.http.listen;
                        let https = self.config.http.tls_cert.is_some();
                        let probe = match crate::probe::chronosd_get(a, "/readyz", Duration::from_secs(2), https) {
                            Ok((200, _)) => Ok("ready".to_string()),
                            Ok((code, body)) => Ok(format!("not ready ({code}): {}", body.trim())),
                            Err(e) => Err(e.to_string()),
                        };
                        (format!("{}://{a}", if https { "https" } else { "http" }), probe)
                    }
                };
                // An external broker is nobody's process here: it is up when it answers.
                let ours = !(s == Service::Broker && self.external_broker());
                let (up, detail) = match (pid, probe) {
                    (None, Ok(d)) if !ours => (true, d),
                    (None, Err(e)) if !ours => (false, e),
                    (Some(_), Ok(d)) => (true, d),
                    (Some(_), Err(e)) => (false, format!("process running but not answering: {e}")),
                    (None, Ok(_)) => (false, "something else answers on this address".into()),
                    (None, Err(_)) => (false, format!("stopped; start it with `chronos start {}`", s.name())),
                };
                ServiceStatus { service: s, pid, address, up, detail }
            })
            .collect()
    }

    /// The first write key (for the quick-start message).
    pub fn first_key(&self) -> Option<&crate::config::WriteKeyConfig> {
        self.config.keys.first()
    }
}

fn port_probe(addr: SocketAddr) -> Result<String, String> {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map(|_| "accepting connections".to_string()).map_err(|e| e.to_string())
}

/// Lets other accounts traverse `dir` and its parents (they may not list or read).
fn make_traversable(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for d in dir.ancestors() {
        let meta = std::fs::metadata(d)?;
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o011))?;
        }
    }
    Ok(())
}

/// The config written the first time `chronos start` runs without one.
pub fn quickstart_config(dir: &Path) -> String {
    let key = format!("wk_{}", uuid::Uuid::new_v4().simple());
    format!(
        r#"# Generated by `chronos start` for the local stack. Edit freely; see chronos.example.toml.
[http]
listen = "127.0.0.1:8080"
# Also accept the keys made with `chronos keys create` (reloaded every 5 s).
keys_from_postgres = true

[[keys]]
id = "local"
key = "{key}"
origins = ["localhost", "127.0.0.1"]
# Lets curl and server-side senders (no Origin header) use this key.
allow_no_origin = true

[kafka]
# The local Apache Kafka node (stack.broker = "local"). For a cluster of your
# own, list its brokers here and set stack.broker = "external".
brokers = "127.0.0.1:9092"
# Production defaults: acks=all, idempotence on, lz4 (see chronos.example.toml).

[postgres]
url = "postgres://chronos@127.0.0.1:5433/chronos"

[stack]
dir = "{}"
postgres_port = 5433
broker = "local"
broker_port = 9092
controller_port = 9093
"#,
        dir.display()
    )
}
