//! PostgreSQL from the machine's installation (Debian's postgresql-15):
//! initdb the first time, start on a loopback port, create the database.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::process::{self, Lifetime, RunAs};
use crate::rt::block_on;

/// Where PostgreSQL's programs are: `pg_config --bindir`, else Debian's default.
pub fn bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("postgres").exists() {
                return dir;
            }
        }
    }
    PathBuf::from("/usr/lib/postgresql/15/bin")
}

/// Whether TimescaleDB is installed into this PostgreSQL (`timescaledb.so` in
/// `pg_config --pkglibdir`): then the servers started here preload it.
pub fn timescaledb_installed() -> bool {
    let libdir = Command::new("pg_config")
        .arg("--pkglibdir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_else(|| bindir().with_file_name("lib"));
    libdir.join("timescaledb.so").exists()
}

/// One PostgreSQL server: data directory, port, log.
#[derive(Debug, Clone)]
pub struct PostgresSpec {
    pub data_dir: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    /// Trade durability for speed (fsync off): tests only.
    pub ephemeral: bool,
    /// `shared_preload_libraries = 'timescaledb'`: TimescaleDB refuses to be
    /// created in a server that does not preload it.
    pub preload_timescaledb: bool,
}

/// The superuser and database the stack creates.
pub const USER: &str = "chronos";
pub const DATABASE: &str = "chronos";

impl PostgresSpec {
    /// libpq URL of the stack's database.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Runs initdb unless the data directory already holds a cluster.
    pub fn init(&self, run_as: Option<RunAs>) -> Result<()> {
        if self.data_dir.join("PG_VERSION").exists() {
            return Ok(());
        }
        let bin = bindir();
        if !bin.join("initdb").exists() {
            bail!("PostgreSQL 15 is not installed ({} has no initdb); run .ci/setup or `apt-get install postgresql-15`", bin.display());
        }
        std::fs::create_dir_all(&self.data_dir)?;
        if let Some(r) = run_as {
            r.chown(&self.data_dir)?;
        }
        let mut cmd = Command::new(bin.join("initdb"));
        cmd.arg("-D").arg(&self.data_dir).args(["-U", USER, "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8"]);
        if self.ephemeral {
            cmd.arg("--no-sync");
        }
        let mut child = process::spawn(cmd, &self.log, run_as, Lifetime::Owned)?;
        let status = child.wait()?;
        if !status.success() {
            bail!("initdb failed; see {}", self.log.display());
        }
        Ok(())
    }

    /// Starts the server and waits for it to accept connections.
    pub fn start(&self, run_as: Option<RunAs>, lifetime: Lifetime) -> Result<Child> {
        let mut child = self.spawn(run_as, lifetime)?;
        let ready = process::wait_for_port(self.addr(), Duration::from_secs(30), || matches!(child.try_wait(), Ok(None)));
        if let Err(e) = ready {
            let _ = child.kill();
            bail!("PostgreSQL did not start: {e}; see {}", self.log.display());
        }
        Ok(child)
    }

    /// Starts the server and returns at once (see [`PostgresSpec::wait_accepting`]).
    pub fn spawn(&self, run_as: Option<RunAs>, lifetime: Lifetime) -> Result<Child> {
        let mut cmd = Command::new(bindir().join("postgres"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="])
            .args(["-c", "max_connections=200", "-c", "shared_buffers=256MB"]);
        if self.preload_timescaledb {
            cmd.args(["-c", "shared_preload_libraries=timescaledb", "-c", "timescaledb.telemetry_level=off"]);
        }
        if self.ephemeral {
            cmd.args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]);
        }
        process::spawn(cmd, &self.log, run_as, lifetime)
    }

    /// Waits until the server accepts sessions (the port opens before crash
    /// recovery ends: "the database system is starting up"), or fails after
    /// `timeout`, sooner when `still_running` says it died.
    pub fn wait_accepting(&self, timeout: Duration, mut still_running: impl FnMut() -> bool) -> Result<()> {
        let url = format!("host=127.0.0.1 port={} user={USER} dbname=postgres connect_timeout=2", self.port);
        let until = std::time::Instant::now() + timeout;
        loop {
            let last = match block_on(tokio_postgres::connect(&url, tokio_postgres::NoTls)) {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if !still_running() {
                bail!("PostgreSQL exited before it accepted sessions; see {}", self.log.display());
            }
            if std::time::Instant::now() > until {
                bail!("PostgreSQL did not accept sessions within {timeout:?} ({last}); see {}", self.log.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The processes of an earlier server on this data directory that are
    /// still there: the postmaster named by the lock file while it is a
    /// zombie (killed, not yet reaped: PostgreSQL refuses to start while
    /// `kill(pid, 0)` finds it), and every process working in the data
    /// directory, as the postmaster and its backends do (after `kill -9` of
    /// the postmaster they hold its shared memory until they notice and exit).
    pub fn leftover_processes(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        if let Some(pid) = self.postmaster_pid().filter(|&p| process::zombie(p)) {
            pids.push(pid);
        }
        let Ok(dir) = std::fs::canonicalize(&self.data_dir) else { return pids };
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            // Another account's process (without root) cannot be read: not ours.
            if std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd == dir) && !pids.contains(&pid) && process::alive(pid) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Waits (at most `timeout`) until no process of an earlier server on
    /// this data directory is left ([`PostgresSpec::leftover_processes`]);
    /// `waiting` is told once, with their pids, when there is something to
    /// wait for. A new server started before then fails ("lock file
    /// postmaster.pid already exists", "pre-existing shared memory block is
    /// still in use").
    pub fn wait_for_old_server(&self, timeout: Duration, waiting: impl FnOnce(&[i32])) -> Result<()> {
        let mut left = self.leftover_processes();
        if left.is_empty() {
            return Ok(());
        }
        waiting(&left);
        let until = std::time::Instant::now() + timeout;
        while !left.is_empty() {
            if std::time::Instant::now() > until {
                bail!(
                    "processes of the previous PostgreSQL server on {} are still running after {timeout:?} (pids {left:?}); \
                     stop them (`kill {}`) and start again",
                    self.data_dir.display(),
                    left.iter().map(i32::to_string).collect::<Vec<_>>().join(" ")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
            left = self.leftover_processes();
        }
        Ok(())
    }

    /// Creates the stack's database when missing (connecting to `postgres`).
    pub fn create_database(&self) -> Result<()> {
        let url = format!("host=127.0.0.1 port={} user={USER} dbname=postgres connect_timeout=10", self.port);
        block_on(async move {
            // The port opens before the server accepts sessions ("starting up"): retry.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let (client, conn) = loop {
                match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                    Ok(c) => break c,
                    Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                    Err(e) => return Err(e),
                }
            };
            tokio::spawn(conn);
            let exists = client.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DATABASE]).await?.is_some();
            if !exists {
                client.batch_execute(&format!("CREATE DATABASE {DATABASE}")).await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        })
        .context("creating the chronos database")
    }

    /// The postmaster's pid, from its pid file.
    pub fn postmaster_pid(&self) -> Option<i32> {
        process::read_pid(&self.data_dir.join("postmaster.pid"))
    }

    /// Fast shutdown (SIGINT): running transactions are rolled back, data is safe.
    pub fn stop(&self, grace: Duration) -> bool {
        match self.postmaster_pid() {
            Some(pid) => process::stop_pid(pid, libc::SIGINT, grace),
            None => true,
        }
    }
}

/// A running PostgreSQL owned by the caller: stopped when dropped (tests).
pub struct PostgresServer {
    pub spec: PostgresSpec,
    child: Child,
}

impl PostgresServer {
    /// initdb (into `dir/data`), start on a free port, create the database;
    /// TimescaleDB preloaded when it is installed.
    pub fn start_in(dir: &Path) -> Result<Self> {
        Self::start_with(dir, timescaledb_installed())
    }

    /// `start_in`, preloading TimescaleDB or not.
    pub fn start_with(dir: &Path, preload_timescaledb: bool) -> Result<Self> {
        let run_as = RunAs::postgres_if_root()?;
        let spec = PostgresSpec {
            data_dir: dir.join("data"),
            port: process::free_port(),
            log: dir.join("postgres.log"),
            ephemeral: true,
            preload_timescaledb,
        };
        spec.init(run_as)?;
        let child = spec.start(run_as, Lifetime::Owned)?;
        let server = PostgresServer { spec, child };
        server.spec.create_database()?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        self.spec.url()
    }

    /// Stops the server (fast shutdown) and waits for it.
    pub fn stop(&mut self) {
        self.spec.stop(Duration::from_secs(20));
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and data directory.
    pub fn restart(&mut self) -> Result<()> {
        // The port opens before the server accepts sessions ("the database
        // system is starting up"): wait for the log line that says it does,
        // one more than before the restart.
        const READY: &str = "database system is ready to accept connections";
        let log = self.spec.log.clone();
        let readies = || std::fs::read_to_string(&log).map_or(0, |l| l.matches(READY).count());
        let before = readies();
        self.stop();
        self.child = self.spec.start(RunAs::postgres_if_root()?, Lifetime::Owned)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while readies() <= before {
            if std::time::Instant::now() > deadline {
                bail!("PostgreSQL restarted but did not say it accepts connections within 30 s; see {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}
