//! PostgreSQL and Apache Kafka (one node, or a cluster of three) started with
//! the test helpers, chronosd as a process with a run's config, and the CPU
//! and memory readings of each.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::Context as _;
use chronos::config::Config;
use chronos::stack::broker::{create_topics, KafkaCluster};
use chronos::stack::postgres::PostgresServer;
use chronos::stack::process::free_port;

use crate::records::KEY;

/// PostgreSQL and Kafka (topics replicated on every node) in one temp dir, removed on drop.
pub struct PerfStack {
    pub pg: PostgresServer,
    pub brokers: KafkaCluster,
    pub dir: tempfile::TempDir,
}

impl PerfStack {
    /// One Kafka node.
    pub fn start() -> anyhow::Result<PerfStack> {
        Self::start_with(1)
    }

    /// `nodes` Kafka nodes (1, or 3 for a cluster).
    pub fn start_with(nodes: usize) -> anyhow::Result<PerfStack> {
        let dir = tempfile::Builder::new().prefix("chronos-perf-").tempdir()?;
        {
            use std::os::unix::fs::PermissionsExt;
            // PostgreSQL runs as `postgres` under root and must traverse the dir.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        }
        let pg = PostgresServer::start_in(&dir.path().join("pg"))?;
        let kafka = dir.path().join("kafka");
        let brokers = if nodes <= 1 { KafkaCluster::single_in(&kafka)? } else { KafkaCluster::start_in(&kafka, nodes, &[])? };
        Ok(PerfStack { pg, brokers, dir })
    }

    /// The broker JVMs' pids (for their CPU).
    pub fn broker_pids(&self) -> Vec<i32> {
        (0..self.brokers.nodes.len()).filter_map(|i| self.brokers.pid(i)).collect()
    }

    /// A chronosd config for this stack, on fresh topics (created here), loaders
    /// on or off, then each `section.key=value` of `overrides` (TOML values).
    pub fn config(&self, port: u16, loaders: bool, overrides: &[String]) -> anyhow::Result<(Config, String)> {
        let run = uuid::Uuid::new_v4().simple().to_string();
        let mut doc: toml::Table = toml::from_str(&format!(
            r#"
[http]
listen = "127.0.0.1:{port}"
trusted_proxies = ["127.0.0.1"]
[[keys]]
id = "perf"
key = "{KEY}"
origins = ["shop.example.com"]
[kafka]
brokers = "{brokers}"
topic = "events.{run}"
dead_letter_topic = "dead.{run}"
replication = {replication}
[postgres]
url = "{pg}"
[load]
enabled = {loaders}
group_id = "loaders-{run}"
"#,
            brokers = self.brokers.bootstrap(),
            replication = self.brokers.nodes.len(),
            pg = self.pg.url(),
        ))?;
        for o in overrides {
            set(&mut doc, o)?;
        }
        let text = toml::to_string(&doc)?;
        let config = Config::from_toml(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
        create_topics(&config.kafka, Duration::from_secs(60))?;
        Ok((config, text))
    }
}

/// Applies `section.key=value` (value in TOML syntax; a bare word is a string).
pub fn set(doc: &mut toml::Table, assignment: &str) -> anyhow::Result<()> {
    let (path, value) = assignment.split_once('=').with_context(|| format!("`{assignment}`: expected section.key=value"))?;
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) => t.remove("v").expect("parsed v"),
        Err(_) => toml::Value::String(value.to_string()),
    };
    let mut parts: Vec<&str> = path.trim().split('.').collect();
    let last = parts.pop().context("empty key")?;
    let mut table = doc;
    for p in parts {
        table = table
            .entry(p)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("`{p}` is not a section"))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

/// chronosd running as a process (release build beside this binary), killed on drop.
pub struct Chronosd {
    child: Child,
    pub addr: std::net::SocketAddr,
    pub log: PathBuf,
}

impl Chronosd {
    pub fn start(bin_dir: &Path, dir: &Path, config: &Config, text: &str) -> anyhow::Result<Chronosd> {
        let name = format!("chronosd-{}", config.kafka.topic);
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, text)?;
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(bin_dir.join("chronosd"))
            .arg("--config")
            .arg(&file)
            .env("CHRONOS_LOG", "warn")
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin_dir.join("chronosd").display()))?;
        let d = Chronosd { child, addr: config.http.listen, log };
        if let Err(e) = chronos::stack::process::wait_ready(d.addr, Duration::from_secs(60)) {
            anyhow::bail!("{e}:\n{}", std::fs::read_to_string(&d.log)?);
        }
        Ok(d)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Chronosd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port for chronosd.
pub fn port() -> u16 {
    free_port()
}

/// Resident memory of `pid` in KiB (VmRSS), 0 when gone.
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// CPU time (user + system) of `pid` and its threads, in seconds.
pub fn cpu_secs(pid: i32) -> f64 {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) close with ')'.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f[11].parse::<f64>().ok()? + f[12].parse::<f64>().ok()?) / ticks)
        })
        .unwrap_or(0.0)
}

/// CPU seconds of `parent` and its direct children (PostgreSQL: postmaster and backends).
pub fn children_cpu_secs(parent: i32) -> f64 {
    cpu_secs(parent) + pids().filter(|p| ppid(*p) == Some(parent)).map(cpu_secs).sum::<f64>()
}

fn pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc").into_iter().flatten().flatten().filter_map(|e| e.file_name().to_str()?.parse().ok())
}

fn ppid(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..].split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds of waited-for children of this process (loadgen runs).
pub fn waited_children_cpu_secs() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// The row count a perf binary's first argument names (default 1,000,000).
pub fn rows_arg() -> anyhow::Result<i64> {
    use anyhow::Context as _;
    Ok(std::env::args().nth(1).map(|a| a.parse().context("rows: a number")).transpose()?.unwrap_or(1_000_000))
}

/// A temp directory named `prefix…` that the postgres account can enter
/// (the server runs as it when we are root).
pub fn perf_dir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_set_nested_keys_with_toml_values() {
        let mut doc: toml::Table = toml::from_str("[kafka]\nlinger_ms = 5\n").unwrap();
        set(&mut doc, "kafka.linger_ms=2").unwrap();
        set(&mut doc, "load.flush_rows=50000").unwrap();
        set(&mut doc, "kafka.compression=lz4").unwrap();
        assert_eq!(doc["kafka"]["linger_ms"].as_integer(), Some(2));
        assert_eq!(doc["load"]["flush_rows"].as_integer(), Some(50000));
        assert_eq!(doc["kafka"]["compression"].as_str(), Some("lz4"));
        assert!(set(&mut doc, "nonsense").is_err());
    }
}
