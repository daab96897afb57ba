//! `[postgres]`, `[load]`, `[retention]` and `[import]`: where events are
//! stored, how the loaders write them, and how long they are kept.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{positive, Config};

/// PostgreSQL connection. `Debug` leaves the URL out (it may hold a password;
/// `store::redact` shows it safely).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// libpq-style URL; TLS with libpq's `sslmode` and `sslrootcert` in its
    /// query string (docs/operations.md).
    pub url: String,
    /// A file holding the password (systemd `LoadCredential=`, Docker
    /// secrets): read at start, never logged; the URL then has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig { url: "postgres://chronos@127.0.0.1:5433/chronos".into(), password_file: None }
    }
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig").field("url", &"<redacted>").field("password_file", &self.password_file).finish()
    }
}

impl PostgresConfig {
    /// Puts the password of `password_file` into the URL (kept in memory only).
    pub(super) fn resolve_password(&mut self) -> Result<(), String> {
        let Some(path) = &self.password_file else { return Ok(()) };
        let password = crate::secret::read_file("postgres.password_file", path)?;
        let password = password.expose();
        if self.url.starts_with("postgres://") || self.url.starts_with("postgresql://") {
            let mut u = url::Url::parse(&self.url).map_err(|e| format!("postgres.url: not a URL: {e}"))?;
            if u.password().is_some() {
                return Err("postgres.password_file: postgres.url has a password too; give one of them".into());
            }
            u.set_password(Some(password)).map_err(|_| "postgres.url: a URL without a host cannot take a password".to_string())?;
            self.url = u.to_string();
        } else {
            if self.url.split_whitespace().any(|t| t.starts_with("password=")) {
                return Err("postgres.password_file: postgres.url has a password too; give one of them".into());
            }
            self.url = format!("{} password='{}'", self.url, password.replace('\\', "\\\\").replace('\'', "\\'"));
        }
        Ok(())
    }
}

/// Loaders (Kafka → PostgreSQL) settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadConfig {
    /// Run the loaders in this chronosd (several chronosd share the partitions).
    pub enabled: bool,
    /// Kafka consumer group of the loaders.
    pub group_id: String,
    /// Flush a partition's buffer once it holds this many events.
    pub flush_rows: usize,
    /// … or this many ms after its first record arrived.
    pub flush_ms: u64,
    /// Threads the partition loaders run on; 0 = one per core.
    pub threads: usize,
    /// No longer used (each loader reads its partition's own queue, bounded by
    /// `prefetch_kbytes`); accepted so that older config files still start,
    /// with a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mailbox_capacity: Option<usize>,
    /// Records fetched ahead of the loaders, all partitions together (each
    /// partition's queue gets `queued.max.messages.kbytes` = this divided by
    /// the partitions of both topics, at least 1024). Bounds chronosd's memory
    /// while the loaders lag (perf/pipeline.md, RSS).
    pub prefetch_kbytes: u32,
    /// Event times more than this before receipt are clamped to it and flagged.
    pub max_past_secs: u64,
    /// Event times more than this after receipt are clamped to it and flagged.
    pub max_future_secs: u64,
    /// Daily partitions created for past days at install.
    pub partitions_past_days: i64,
    /// Daily partitions kept ready ahead of today.
    pub partitions_ahead_days: i64,
    /// New event tables as TimescaleDB hypertables: "auto" (when the extension
    /// is available), "always" (refuse to start without it) or "never".
    pub timescaledb: Timescale,
    /// Chunk width of new hypertables (and of new chunks of existing ones),
    /// in hours: a divisor of 24 or a whole number of days, so that chunks
    /// never straddle a UTC day (days are what retention archives and drops).
    pub chunk_interval_hours: u32,
    /// Batch ids remembered for deduplication of retries, in hours.
    pub seen_batches_retention_hours: u64,
    /// Longest wait between retries when PostgreSQL fails, in ms.
    pub retry_max_ms: u64,
    /// Consumer `session.timeout.ms`.
    pub session_timeout_ms: u32,
    /// Events of one session id further apart than this start a new visit
    /// in `chronos.sessions`, in seconds.
    pub session_gap_secs: u64,
    /// Consumer `max.poll.interval.ms`: also how long a rebalance waits for a
    /// member that crashed, on brokers that only expire members then.
    pub max_poll_interval_ms: u32,
    /// At shutdown, how long the loaders (all in parallel) may take to commit
    /// what they hold. Keep it below the service manager's stop timeout
    /// (the systemd unit's `TimeoutStopSec=50`).
    pub shutdown_timeout_secs: u64,
    /// A partition whose loader has stored nothing for this long while records
    /// wait (lag above 0) counts as stalled (`chronos_load_partition_stalled`,
    /// `chronos doctor`), in seconds.
    pub stalled_after_secs: u64,
}

/// Whether event tables become TimescaleDB hypertables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Timescale {
    Auto,
    Always,
    Never,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            enabled: true,
            group_id: "chronos-loaders".into(),
            flush_rows: 20_000,
            flush_ms: 1000,
            threads: 0,
            mailbox_capacity: None,
            prefetch_kbytes: 16_384,
            max_past_secs: 7 * 86_400,
            max_future_secs: 86_400,
            partitions_past_days: 8,
            partitions_ahead_days: 7,
            timescaledb: Timescale::Auto,
            chunk_interval_hours: 24,
            seen_batches_retention_hours: 72,
            retry_max_ms: 10_000,
            session_timeout_ms: 6_000,
            session_gap_secs: 1800,
            max_poll_interval_ms: 60_000,
            shutdown_timeout_secs: 20,
            stalled_after_secs: 300,
        }
    }
}

/// Retention of raw events, and their archive (docs/lifecycle.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days of raw events kept in PostgreSQL (UTC days before today); older
    /// days are archived, verified, then dropped. 0 keeps everything.
    pub raw_days: u32,
    /// Where archived days go: a directory, a `file://` URL, or an object
    /// store URL (`s3://bucket/prefix`, credentials from the usual `AWS_*`
    /// environment). Empty: `<stack.dir>/archive`. `"off"` drops old days
    /// without archiving them.
    pub archive: String,
    /// How often chronosd looks for days to archive, in seconds.
    pub every_secs: u64,
    /// How long `chronos archive restore` keeps restored days before the
    /// schedule drops them again (the archive keeps them), in days.
    pub restore_keep_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { raw_days: 30, archive: String::new(), every_secs: 3600, restore_keep_days: 7 }
    }
}

/// Historical import (docs/import.md): which event times are plausible, and
/// how events of the JSON-lines form are grouped into batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImportConfig {
    /// Events older than this many days before the import are refused
    /// (dead-lettered, like any invalid event). 0: any time since 2000.
    pub max_past_days: u32,
    /// Events more than this many seconds after the import are refused.
    pub max_future_secs: u64,
    /// Events of one session and page per batch, at most (JSON-lines form;
    /// also capped by `http.max_events_per_batch`).
    pub batch_events: usize,
    /// Largest `POST /v1/import` body, after decompression.
    pub max_body_bytes: usize,
    /// Seconds a `POST /v1/import` body may take to arrive (408 after):
    /// an import body is far larger than a batch, so it gets its own deadline
    /// (`http.body_timeout_secs` bounds batches).
    pub body_timeout_secs: u64,
}

impl Default for ImportConfig {
    fn default() -> Self {
        ImportConfig { max_past_days: 3660, max_future_secs: 3600, batch_events: 500, max_body_bytes: 64 << 20, body_timeout_secs: 600 }
    }
}

/// Where `retention.archive` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveTarget {
    /// Drop old days without archiving them.
    Off,
    /// An `object_store` URL (`file:///…` for a local directory).
    Url(url::Url),
}

impl Config {
    /// `retention.archive` resolved: a plain path (relative to the working
    /// directory) becomes a `file://` URL; empty means `<stack.dir>/archive`.
    pub fn archive_target(&self) -> Result<ArchiveTarget, String> {
        let a = self.retention.archive.trim();
        if a == "off" {
            return Ok(ArchiveTarget::Off);
        }
        let dir_url = |p: &Path| {
            let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().map_err(|e| e.to_string())?.join(p) };
            url::Url::from_directory_path(&abs).map_err(|_| format!("retention.archive: {} is not a usable directory path", abs.display()))
        };
        let url = match a {
            "" => dir_url(&self.stack.dir.join("archive"))?,
            a if a.contains("://") => url::Url::parse(a).map_err(|e| format!("retention.archive: `{a}` is not a URL: {e}"))?,
            a => dir_url(Path::new(a))?,
        };
        match url.scheme() {
            "file" | "s3" | "memory" => Ok(ArchiveTarget::Url(url)),
            other => Err(format!("retention.archive: scheme `{other}` is not supported (a directory, file://, s3:// or \"off\")")),
        }
    }
}

impl LoadConfig {
    /// What is wrong with `[load]`, each naming its key.
    pub(super) fn errors(&self, errors: &mut Vec<String>) {
        positive(
            errors,
            [
                ("load.flush_rows", self.flush_rows as u64),
                ("load.flush_ms", self.flush_ms),
                ("load.shutdown_timeout_secs", self.shutdown_timeout_secs),
                ("load.prefetch_kbytes", self.prefetch_kbytes as u64),
                ("load.session_gap_secs", self.session_gap_secs),
                ("load.stalled_after_secs", self.stalled_after_secs),
            ],
        );
        if self.max_poll_interval_ms < self.session_timeout_ms {
            errors.push("load.max_poll_interval_ms: must be at least load.session_timeout_ms".into());
        }
        if self.group_id.is_empty() {
            errors.push("load.group_id: must not be empty".into());
        }
        let chunk = self.chunk_interval_hours;
        if chunk == 0 || (24 % chunk != 0 && chunk % 24 != 0) {
            errors.push(format!(
                "load.chunk_interval_hours: {chunk} must divide 24 (1, 2, 3, 4, 6, 8, 12) or be a whole number of days (24, 48, …), so chunks never straddle a UTC day"
            ));
        }
        if (self.partitions_past_days * 86_400) < self.max_past_secs as i64 {
            errors.push("load.partitions_past_days: must cover load.max_past_secs (clamped times need a partition)".into());
        }
    }
}

impl RetentionConfig {
    /// What is wrong with `[retention]` with these loaders, each naming its key.
    pub(super) fn errors(&self, load: &LoadConfig, errors: &mut Vec<String>) {
        if self.raw_days > 0 && u64::from(self.raw_days) * 86_400 <= load.max_past_secs + 86_400 {
            errors.push(format!(
                "retention.raw_days: {} must be more than a day longer than load.max_past_secs ({} s), or late events could land in a day already archived",
                self.raw_days, load.max_past_secs
            ));
        }
        if self.every_secs == 0 {
            errors.push("retention.every_secs: must be greater than 0".into());
        }
    }
}

impl ImportConfig {
    /// What is wrong with `[import]`, each naming its key.
    pub(super) fn errors(&self, errors: &mut Vec<String>) {
        positive(
            errors,
            [
                ("import.batch_events", self.batch_events as u64),
                ("import.max_body_bytes", self.max_body_bytes as u64),
                ("import.body_timeout_secs", self.body_timeout_secs),
            ],
        );
    }
}
