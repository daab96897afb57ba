//! The local Kafka-protocol broker (tansu with SQLite storage; see
//! ../shared/BROKER.md): find it, start it, create the topics.
//! chronosd itself only needs bootstrap servers; nothing here is tansu-specific
//! beyond how the local process is started (and one index it lacks, see
//! `BrokerSpec::index_headers`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::process::{self, Lifetime};
use crate::config::KafkaConfig;

/// The broker binary: `configured`, else `$CHRONOS_TANSU`, `~/.cargo/bin/tansu`, `PATH`.
pub fn find_binary(configured: &str) -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if !configured.is_empty() {
        candidates.push(PathBuf::from(configured));
    }
    if let Some(p) = std::env::var_os("CHRONOS_TANSU") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/tansu"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("tansu")));
    }
    candidates.into_iter().find(|p| p.is_file()).context(
        "the Kafka-protocol broker (tansu) is not installed; run .ci/setup, which builds it once with \
         `cargo install tansu --version 0.6.0 --locked --features libsql,dynostore`",
    )
}

/// One broker process: data directory (its SQLite log lives there), port, log.
#[derive(Debug, Clone)]
pub struct BrokerSpec {
    pub binary: PathBuf,
    pub data_dir: PathBuf,
    pub port: u16,
    /// Port advertised to clients in metadata (differs from `port` behind a proxy).
    pub advertised_port: u16,
    pub log: PathBuf,
}

impl BrokerSpec {
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.advertised_port)
    }

    /// Starts the broker and waits for its port.
    pub fn start(&self, lifetime: Lifetime) -> Result<Child> {
        std::fs::create_dir_all(&self.data_dir)?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised_port);
        let mut cmd = Command::new(&self.binary);
        cmd.current_dir(&self.data_dir)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &advertised])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .env("RUST_LOG", std::env::var("CHRONOS_BROKER_LOG").unwrap_or_else(|_| "warn".into()));
        let mut child = process::spawn(cmd, &self.log, None, lifetime)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        if let Err(e) = process::wait_for_port(addr, Duration::from_secs(30), || matches!(child.try_wait(), Ok(None))) {
            let _ = child.kill();
            bail!("the broker did not start: {e}; see {}", self.log.display());
        }
        self.index_headers();
        Ok(child)
    }

    /// tansu 0.6.0's SQLite schema has no index on `header (topition, offset_id)`, so
    /// fetching each record scans every header ever stored: consuming records with
    /// headers (chronosd sends four) slows as the log grows (measured: 1,605 events/s
    /// on a 10,000-record topic, 309,522 with this index; perf/RESULTS.md). Best effort
    /// with the `sqlite3` command: without it the broker works, only slower.
    fn index_headers(&self) {
        let sql = "PRAGMA busy_timeout = 10000; \
                   CREATE INDEX IF NOT EXISTS chronos_header_record ON header (topition, offset_id);";
        let db = self.data_dir.join("tansu.db");
        match Command::new("sqlite3").arg(&db).arg(sql).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => tracing::warn!(db = %db.display(), error = %String::from_utf8_lossy(&out.stderr).trim(), "Could not index the broker's header table; consuming will be slower."),
            Err(e) => tracing::warn!(error = %e, "No sqlite3 command to index the broker's header table; consuming will be slower."),
        }
    }
}

/// Creates the configured topics, retrying while the broker finishes starting.
pub fn create_topics(kafka: &KafkaConfig, within: Duration) -> Result<()> {
    let until = Instant::now() + within;
    loop {
        let attempt = super::postgres::block_on(crate::produce::admin::ensure_topics(kafka, Duration::from_secs(5)));
        match attempt {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > until => bail!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// A running broker owned by the caller: killed when dropped (tests).
pub struct BrokerServer {
    pub spec: BrokerSpec,
    child: Option<Child>,
}

impl BrokerServer {
    /// Starts a broker on a free port with its data in `dir`.
    pub fn start_in(dir: &Path) -> Result<Self> {
        let port = process::free_port();
        Self::start_advertising(dir, port, port)
    }

    /// Starts a broker on `port` that tells clients to connect to `advertised_port`
    /// (a proxy in front of it, for fault-injection tests).
    pub fn start_advertising(dir: &Path, port: u16, advertised_port: u16) -> Result<Self> {
        let spec = BrokerSpec {
            binary: find_binary("")?,
            data_dir: dir.join("broker"),
            port,
            advertised_port,
            log: dir.join("broker.log"),
        };
        let child = spec.start(Lifetime::Owned)?;
        Ok(BrokerServer { spec, child: Some(child) })
    }

    pub fn bootstrap(&self) -> String {
        self.spec.bootstrap()
    }

    /// Stops the broker abruptly (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same port and data.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.child = Some(self.spec.start(Lifetime::Owned)?);
        Ok(())
    }
}

impl Drop for BrokerServer {
    fn drop(&mut self) {
        self.kill();
    }
}
