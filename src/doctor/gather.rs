//! What `chronos doctor` reads: the cluster (`health::cluster`, directly,
//! whether chronosd runs or not), PostgreSQL, chronosd's health board at
//! `/health` on its admin listener, and the disk of the state directory.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::judge::{DiskFacts, Facts, Limits, PostgresFacts};
use crate::config::Config;
use crate::telemetry::board::Snapshot;

/// How long each source may take to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Reads every source; one that fails is recorded as failed, never fatal.
pub async fn gather(config: &Config, state_dir: &Path, limits: Limits) -> Facts {
    let kafka = crate::health::cluster::gather(config, TIMEOUT).await.map_err(|e| format!("{e:#}"));
    let postgres = postgres(config, limits.dead_letter_window_secs).await.map_err(|e| format!("{e:#}"));
    let admin = config.http.admin_listen;
    let chronosd = tokio::task::spawn_blocking(move || board(admin)).await.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| format!("{e:#}")));
    Facts {
        now_ms: crate::clock::now_ms(),
        bootstrap: config.kafka.brokers.clone(),
        expected_brokers: config.kafka.expected_brokers,
        topics: vec![config.kafka.topic.clone(), config.kafka.dead_letter_topic.clone()],
        kafka,
        postgres_at: crate::store::redact(&config.postgres.url),
        postgres,
        timescaledb: config.load.timescaledb,
        admin: admin.to_string(),
        chronosd,
        stalled_after_secs: config.load.stalled_after_secs,
        disk: disk(state_dir).map_err(|e| format!("{e:#}")),
        limits,
    }
}

async fn postgres(config: &Config, window_secs: i64) -> Result<PostgresFacts> {
    let client = crate::store::connect(&config.postgres.url).await?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), \
                    EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'), \
                    current_setting('shared_preload_libraries') LIKE '%timescaledb%'",
            &[],
        )
        .await
        .context("reading the server's settings")?;
    let window = window_secs as f64;
    // None when the schema is not installed (no dead letters table yet).
    let dead_letters = client
        .query_one(
            "SELECT count(*) FILTER (WHERE at > now() - make_interval(secs => $1)), \
                    count(*) FILTER (WHERE at <= now() - make_interval(secs => $1)) \
             FROM chronos.dead_letters WHERE at > now() - make_interval(secs => 2 * $1)",
            &[&window],
        )
        .await
        .ok()
        .map(|r| (r.get(0), r.get(1)));
    Ok(PostgresFacts { version: row.get(0), timescaledb_available: row.get(1), timescaledb_preloaded: row.get(2), dead_letters })
}

/// chronosd's health board, from `/health` on its admin listener.
pub fn board(admin: std::net::SocketAddr) -> Result<Snapshot> {
    let (status, body) = crate::probe::http_get(admin, "/health", TIMEOUT)?;
    anyhow::ensure!(status == 200, "GET /health answered {status}");
    serde_json::from_str(&body).context("reading /health")
}

/// The filesystem of `dir` (or of its nearest existing parent).
fn disk(dir: &Path) -> Result<DiskFacts> {
    let dir = std::path::absolute(dir)?;
    let existing = dir.ancestors().find(|p| p.exists()).context("no existing directory")?;
    let c = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes())?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a NUL-terminated path and a buffer statvfs fills.
    if unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statvfs {}", existing.display()));
    }
    // SAFETY: statvfs returned 0: filled.
    let s = unsafe { s.assume_init() };
    // The field types differ between targets (u64 here, u32 on some).
    #[allow(clippy::unnecessary_cast)]
    let (block, blocks, free, avail) = (s.f_frsize as u64, s.f_blocks as u64, s.f_bfree as u64, s.f_bavail as u64);
    Ok(DiskFacts {
        path: dir.display().to_string(),
        total_bytes: blocks * block,
        used_bytes: (blocks - free) * block,
        available_bytes: avail * block,
    })
}
