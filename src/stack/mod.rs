//! The local stack behind `chronos start|stop|status|log`: PostgreSQL (from the
//! machine's installation), the Kafka-protocol broker and chronosd, with all
//! state (data, logs, pid files, generated config) in one directory.
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

use self::broker::BrokerSpec;
use self::postgres::PostgresSpec;
use self::process::{Lifetime, RunAs};
use crate::config::Config;

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
        }
    }

    fn broker(&self) -> Result<BrokerSpec> {
        Ok(BrokerSpec {
            binary: broker::find_binary(&self.config.stack.broker_bin)?,
            data_dir: self.dir.join("broker"),
            port: self.config.stack.broker_port,
            advertised_port: self.config.stack.broker_port,
            log: self.log_file(Service::Broker),
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
                Service::Broker => {
                    let spec = self.broker()?;
                    let child = spec.start(Lifetime::Detached)?;
                    process::write_pid(&self.pid_file(s), child.id())?;
                    broker::create_topics(&self.config.kafka, Duration::from_secs(60))?;
                }
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
                    Service::Broker => {
                        let a = SocketAddr::from(([127, 0, 0, 1], self.config.stack.broker_port));
                        (format!("kafka://{a}"), port_probe(a))
                    }
                    Service::Chronosd => {
                        let a = self.config.http.listen;
                        let probe = match process::http_get(a, "/readyz", Duration::from_secs(2)) {
                            Ok((200, _)) => Ok("ready".to_string()),
                            Ok((code, body)) => Ok(format!("not ready ({code}): {}", body.trim())),
                            Err(e) => Err(e.to_string()),
                        };
                        (format!("http://{a}"), probe)
                    }
                };
                let (up, detail) = match (pid, probe) {
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
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map(|_| "accepting connections".to_string())
        .map_err(|e| e.to_string())
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
brokers = "127.0.0.1:9092"
# The local broker (tansu 0.6.0) stops serving after an out-of-order producer
# sequence, which one lost request causes; batch ids make retries safe anyway.
# Keep the default (true) with Apache Kafka.
idempotence = false
# Broker on loopback: compression would cost CPU on both sides of the same
# machine and save no network (perf/curves/producer.md). Use lz4 (the default)
# or zstd with a remote cluster.
compression = "none"

[postgres]
url = "postgres://chronos@127.0.0.1:5433/chronos"

[stack]
dir = "{}"
postgres_port = 5433
broker_port = 9092
"#,
        dir.display()
    )
}
