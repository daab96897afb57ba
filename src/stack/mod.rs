//! The local stack behind `chronos start|stop|status|log`: PostgreSQL (from the
//! machine's installation), one Apache Kafka node (or an external cluster) and
//! chronosd, with all state (data, logs, pid files, generated config) in one
//! directory.
//! The integration tests start the same services with the same helpers.
//! `status` is the services' half of `chronos status`; [`pipeline`] the
//! data-flow half (consumer lag, events stored in the last minute), for any
//! deployment. [`supervise`] restarts a service that died.

pub mod broker;
pub mod pipeline;
pub mod postgres;
pub mod process;
mod status;
pub mod supervise;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use self::broker::{KafkaInstall, KafkaNode};
use self::postgres::PostgresSpec;
use self::process::{Lifetime, RunAs};
use crate::config::{BrokerMode, Config};

pub use self::status::{bot_share, ServiceStatus};

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

    /// Pid of the `chronos supervise` process of a service.
    fn supervisor_pid_file(&self, s: Service) -> PathBuf {
        self.dir.join("run").join(format!("{}.supervisor.pid", s.name()))
    }

    /// What the supervisor of a service recorded ([`supervise::Record`]).
    pub fn restarts_file(&self, s: Service) -> PathBuf {
        self.dir.join("run").join(format!("{}.restarts.json", s.name()))
    }

    /// The supervisors' log: each death and restart.
    pub fn supervisor_log(&self) -> PathBuf {
        self.dir.join("logs").join("supervisor.log")
    }

    /// The pid of the service's supervisor while it runs; a pid file left
    /// behind (after a reboot) may name another program now, which is not it.
    fn supervisor_pid(&self, s: Service) -> Option<i32> {
        let pid = process::read_pid(&self.supervisor_pid_file(s)).filter(|&p| process::alive(p))?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let wanted = format!("\0supervise\0{}\0", s.name());
        cmdline.windows(wanted.len()).any(|w| w == wanted.as_bytes()).then_some(pid)
    }

    /// Whether a supervisor watches this service.
    pub fn supervised(&self, s: Service) -> bool {
        self.supervisor_pid(s).is_some()
    }

    /// The log file of a service.
    pub fn log_file(&self, s: Service) -> PathBuf {
        self.dir.join("logs").join(format!("{}.log", s.name()))
    }

    pub(crate) fn postgres(&self) -> PostgresSpec {
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

    /// Checks that `kafka.brokers` names the local node, formats its data
    /// directory on first start (it keeps its cluster id and data across
    /// restarts) and records the release.
    fn prepare_broker(&self) -> Result<()> {
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
        node.format(&install, &broker::new_cluster_id())?;
        std::fs::create_dir_all(self.dir.join("run"))?;
        std::fs::write(self.version_file(), &install.version)?;
        Ok(())
    }

    /// Creates the topics (on the local node or the external cluster).
    fn create_topics(&self) -> Result<()> {
        let http = &self.config.http;
        let max_record = crate::produce::kafka::max_record_bytes(http.max_decompressed_bytes, http.max_events_per_batch);
        broker::create_topics_for(&self.config.kafka, max_record, Duration::from_secs(60))
    }

    fn running_pid(&self, s: Service) -> Option<i32> {
        let pid = match s {
            Service::Postgres => self.postgres().postmaster_pid(),
            _ => process::read_pid(&self.pid_file(s)),
        }?;
        process::alive(pid).then_some(pid)
    }

    /// Starts one service, or all in order (PostgreSQL, broker + topics,
    /// chronosd), each under its supervisor ([`supervise`]).
    pub fn start(&self, which: Option<Service>) -> Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        for s in which.map(|s| vec![s]).unwrap_or_else(|| Service::ALL.to_vec()) {
            if s == Service::Broker && self.external_broker() {
                println!("{:<9} external: {}", "broker", self.config.kafka.brokers);
                self.create_topics()?;
                continue;
            }
            if let Some(pid) = self.running_pid(s) {
                let watched = if self.supervised(s) { "" } else { "; not supervised (`chronos stop` then `chronos start` it to be)" };
                println!("{:<9} already running (pid {pid}){watched}", s.name());
                continue;
            }
            // A supervisor waiting to restart it, or one that gave up: this start replaces it.
            self.stop_supervisor(s);
            println!("{:<9} starting…", s.name());
            if let Err(e) = self.start_one(s) {
                self.stop_one(s);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Prepares one service, starts its supervisor (which starts it) and
    /// waits until it serves.
    fn start_one(&self, s: Service) -> Result<()> {
        match s {
            Service::Postgres => {
                let run_as = RunAs::postgres_if_root()?;
                if run_as.is_some() {
                    // The postgres account must reach its data directory.
                    make_traversable(&std::fs::canonicalize(&self.dir)?)?;
                }
                let pg = self.postgres();
                pg.init(run_as)?;
                pg.wait_for_old_server(Duration::from_secs(60), |pids| {
                    println!("{:<9} waiting for the processes of the previous server to exit (pids {pids:?})", "");
                })?;
            }
            Service::Broker => self.prepare_broker()?,
            Service::Chronosd => {
                let bin = process::bin_dir().join("chronosd");
                if !bin.exists() {
                    bail!("{} not found; build it with `cargo build --release`", bin.display());
                }
            }
        }
        let pid = self.start_supervisor(s)?;
        match s {
            Service::Postgres => {
                self.postgres().wait_accepting(Duration::from_secs(60), || process::alive(pid))?;
                self.postgres().create_database()?;
            }
            Service::Broker => {
                self.wait_serving(s, broker::START_TIMEOUT, || process::alive(pid))?;
                self.create_topics()?;
            }
            Service::Chronosd => {
                let addr = self.config.http.listen;
                process::wait_for_port(addr, Duration::from_secs(30), || process::alive(pid))
                    .with_context(|| format!("chronosd did not start; see {}", self.log_file(s).display()))?;
                process::wait_ready(addr, Duration::from_secs(30))
                    .with_context(|| format!("chronosd is up but not ready; see {}", self.log_file(s).display()))?;
            }
        }
        Ok(())
    }

    /// Starts `chronos supervise <s>` (detached, logging to the supervisors'
    /// log), which starts the service; returns the service's pid.
    fn start_supervisor(&self, s: Service) -> Result<i32> {
        let pid_file = self.pid_file(s);
        let _ = std::fs::remove_file(&pid_file);
        // This very program, even when its file was replaced since it started
        // (a rebuild or an upgrade: the path would then name another file, or none).
        let this = Path::new("/proc/self/exe");
        let exe = if this.exists() { this.to_path_buf() } else { std::env::current_exe().context("finding the chronos executable")? };
        let mut cmd = Command::new(exe);
        std::os::unix::process::CommandExt::arg0(&mut cmd, "chronos");
        cmd.arg("--config").arg(std::fs::canonicalize(&self.config_path)?).arg("supervise").arg(s.name());
        let mut supervisor = process::spawn(cmd, &self.supervisor_log(), None, Lifetime::Detached)?;
        process::write_pid(&self.supervisor_pid_file(s), supervisor.id())?;
        let until = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(pid) = process::read_pid(&pid_file) {
                return Ok(pid);
            }
            if let Ok(Some(status)) = supervisor.try_wait() {
                let said = status::last_lines(&self.supervisor_log(), 1).join("");
                bail!("{} did not start (its supervisor: {status}): {said}; see {}", s.name(), self.supervisor_log().display());
            }
            if std::time::Instant::now() > until {
                bail!("the supervisor of {} did not start it within 30 s; see {}", s.name(), self.supervisor_log().display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the service's process (its set-up done before) and writes its
    /// pid file; what the supervisor runs.
    pub(crate) fn spawn_service(&self, s: Service) -> Result<Child> {
        let child = match s {
            Service::Postgres => self.postgres().spawn(RunAs::postgres_if_root()?, Lifetime::Detached)?,
            Service::Broker => self.broker().spawn(&KafkaInstall::find()?, Lifetime::Detached)?,
            Service::Chronosd => {
                let mut cmd = Command::new(process::bin_dir().join("chronosd"));
                cmd.arg("--config").arg(std::fs::canonicalize(&self.config_path)?);
                process::spawn(cmd, &self.log_file(s), None, Lifetime::Detached)?
            }
        };
        process::write_pid(&self.pid_file(s), child.id())?;
        Ok(child)
    }

    /// Waits until `s` serves: PostgreSQL accepts sessions, the broker lists
    /// itself, chronosd is ready; sooner an error when `still_running` says it died.
    pub(crate) fn wait_serving(&self, s: Service, timeout: Duration, mut still_running: impl FnMut() -> bool) -> Result<()> {
        match s {
            Service::Postgres => self.postgres().wait_accepting(timeout, still_running),
            Service::Broker if self.external_broker() => broker::broker_ids(&self.config.kafka.brokers, timeout).map(|_| ()),
            Service::Broker => self.broker().wait_answering(timeout, still_running),
            Service::Chronosd => {
                let addr = self.config.http.listen;
                process::wait_for_port(addr, timeout, &mut still_running)?;
                process::wait_ready(addr, timeout)
            }
        }
    }

    /// Stops a service's supervisor (it leaves the service running).
    fn stop_supervisor(&self, s: Service) {
        if let Some(pid) = self.supervisor_pid(s) {
            process::stop_pid(pid, libc::SIGTERM, Duration::from_secs(10));
        }
        let _ = std::fs::remove_file(self.supervisor_pid_file(s));
    }

    /// Stops a service and its supervisor, quietly (a failed start).
    fn stop_one(&self, s: Service) {
        self.stop_supervisor(s);
        if let Some(pid) = self.running_pid(s) {
            let signal = if s == Service::Postgres { libc::SIGINT } else { libc::SIGTERM };
            process::stop_pid(pid, signal, Duration::from_secs(30));
        }
        let _ = std::fs::remove_file(self.pid_file(s));
    }

    /// Stops one service, or all in reverse order; each one's supervisor
    /// first, so that it is not restarted.
    pub fn stop(&self, which: Option<Service>) -> Result<()> {
        let mut order = which.map(|s| vec![s]).unwrap_or_else(|| Service::ALL.to_vec());
        order.reverse();
        for &s in &order {
            self.stop_supervisor(s);
        }
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
            // Stopped on purpose: no longer "left down" or "restarting".
            let path = self.restarts_file(s);
            let mut record = supervise::Record::load(&path);
            if record.left_down.is_some() || record.restart_at_ms.is_some() {
                record.left_down = None;
                record.restart_at_ms = None;
                let _ = record.save(&path);
            }
        }
        Ok(())
    }

    /// The first write key (for the quick-start message).
    pub fn first_key(&self) -> Option<&crate::config::WriteKeyConfig> {
        self.config.keys.first()
    }
}

/// The `User-Agent` of the `curl` line `chronos start` prints: a browser's,
/// so the demo event is not flagged as a bot's (curl's own is) and the
/// default views, which leave bots out, count it.
pub const DEMO_USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_user_agent_is_taken_for_a_browser_and_curls_for_a_bot() {
        let enricher = crate::enrich::Enricher::new(8);
        let demo = enricher.agent(Some(DEMO_USER_AGENT), false);
        assert_eq!(demo.bot, None, "{demo:?}");
        assert_eq!((demo.browser.as_deref(), demo.device), (Some("Firefox"), Some("desktop")));
        assert!(enricher.agent(Some("curl/7.88.1"), false).bot.is_some(), "what the line sent before");
    }
}
