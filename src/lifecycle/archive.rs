//! Retention and cold storage: raw days older than `retention.raw_days` are
//! written to Parquet (one file per event table and UTC day, with a JSON
//! manifest), verified, recorded in `chronos.archives`, and only then dropped
//! from PostgreSQL. `restore` loads archived days back exactly once.
//!
//! Every step can be cut short (`kill -9`, a lost host) and the next run
//! finishes the day: a day without a record is archived again from
//! PostgreSQL (its rows are still there, and the file is overwritten); a
//! recorded day not yet dropped is checked against its record, then dropped.
//! The drop counts the day's rows in the same transaction and refuses when
//! they differ from the archive's.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient};

use crate::catalog::EventCatalog;
use crate::config::{ArchiveTarget, Config};
use crate::store::schema::{self, civil_from_days, ident};

use super::target::Target;
use super::{columns, file};

/// 0001-01-01, before any day an event table can hold.
const FIRST_DAY: i64 = -719_162;

/// Advisory lock held by the one archive run at a time.
pub(crate) use crate::store::locks::ARCHIVE_RUN as RUN_LOCK;

/// Advisory lock held by the one `chronos reprocess` run at a time
/// (src/lifecycle/reprocess/); a run holds [`RUN_LOCK`] too.
pub(crate) use crate::store::locks::REPROCESS as REPROCESS_LOCK;

/// `YYYY-MM-DD` of a day number since the epoch.
pub fn day_str(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Parses `YYYY-MM-DD` into a day number since the epoch.
pub fn parse_day(s: &str) -> Option<i64> {
    let mut it = s.split('-');
    let (y, m, d): (i64, u32, u32) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?);
    if it.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp as i64 + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let day = era * 146_097 + doe - 719_468;
    (day_str(day) == s).then_some(day)
}

/// `timestamptz '<day> 00:00:00+00'`.
fn ts(day: i64) -> String {
    format!("timestamptz '{} 00:00:00+00'", day_str(day))
}

pub(crate) fn day_range(day: i64) -> String {
    format!("time >= {} AND time < {}", ts(day), ts(day + 1))
}

/// An archive run's step boundary, where the tests cut it (an abort, as `kill -9` would).
fn failpoint(name: &str) {
    super::failpoint::at(name, super::failpoint::Act::Abort);
}

/// A day's archive, as `chronos.archives` and its manifest hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub table: String,
    pub day: String,
    /// Object path under the archive's root; "" for a day without rows,
    /// "off" for a day dropped with archiving off.
    pub location: String,
    pub rows: i64,
    /// Microseconds since the epoch.
    pub min_time: Option<i64>,
    pub max_time: Option<i64>,
    pub bytes: i64,
    pub sha256: String,
    pub schema_version: i32,
}

impl Manifest {
    pub fn has_file(&self) -> bool {
        !self.location.is_empty() && self.location != "off"
    }

    pub fn manifest_name(&self) -> String {
        format!("{}.manifest.json", self.location.trim_end_matches(".parquet"))
    }

    /// The manifest of a rewritten copy of this day's file (erasure,
    /// reprocess): named after its own checksum, with its own figures.
    pub fn rewritten(&self, s: &super::file::Summary) -> Manifest {
        Manifest {
            location: file_name(&self.table, &self.day, Some(&s.sha256)),
            rows: s.rows,
            min_time: s.min_time,
            max_time: s.max_time,
            bytes: s.bytes as i64,
            sha256: s.sha256.clone(),
            ..self.clone()
        }
    }

    /// Uploads `file`, the rewritten copy this manifest describes, verified,
    /// then the manifest beside it. The old objects stay until the caller's
    /// record names the new ones.
    pub async fn upload(&self, target: &super::target::Target, file: &std::path::Path) -> Result<()> {
        target.put_verified(file, &self.location, &self.sha256, self.bytes as u64, |_| {}).await?;
        target.put_small(&self.manifest_name(), serde_json::to_vec_pretty(self)?).await
    }
}

/// The object an archive file of `table`'s `day` is: `<table>/<day>.parquet`
/// from an archive run, `<table>/<day>-<first 12 hex of its sha256>.parquet`
/// once an erasure rewrote it. With [`Manifest::manifest_name`] and the
/// upload's `.tmp`, the only names Chronos writes ([`is_chronos_object`]).
pub fn file_name(table: &str, day: &str, rewritten_sha256: Option<&str>) -> String {
    match rewritten_sha256 {
        None => format!("{table}/{day}.parquet"),
        Some(sha) => format!("{table}/{day}-{}.parquet", &sha[..REWRITE_TAG.min(sha.len())]),
    }
}

/// Hex digits of the checksum in a rewritten file's name.
const REWRITE_TAG: usize = 12;

/// Whether `name` (relative to the archive's root) is one Chronos writes for
/// one of `tables`: a file of [`file_name`], its manifest, or its upload's
/// temporary name. Anything else under the archive's root (another tool's
/// files, a table the catalog does not have) is not Chronos' to delete.
pub fn is_chronos_object(name: &str, tables: &std::collections::HashSet<&str>) -> bool {
    let Some((table, object)) = name.split_once('/') else { return false };
    let stem = [".parquet", ".parquet.tmp", ".manifest.json"].iter().find_map(|suffix| object.strip_suffix(suffix));
    let Some(stem) = stem else { return false };
    let (Some(day), Some(tag)) = (stem.get(..10), stem.get(10..)) else { return false };
    let hex = |t: &str| t.len() == REWRITE_TAG && t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let tag_ok = tag.is_empty() || tag.strip_prefix('-').is_some_and(hex);
    tables.contains(table) && parse_day(day).is_some() && tag_ok
}

/// A row of `chronos.archives`.
#[derive(Debug, Clone)]
pub struct Record {
    pub manifest: Manifest,
    pub dropped: bool,
    /// Restored and kept in PostgreSQL until this time (RFC 3339).
    pub restored_until: Option<String>,
}

const RECORD_COLUMNS: &str = "table_name, to_char(day, 'YYYY-MM-DD'), location, rows,
    (extract(epoch FROM min_time) * 1000000)::bigint, (extract(epoch FROM max_time) * 1000000)::bigint,
    bytes, sha256, schema_version, dropped_at IS NOT NULL,
    CASE WHEN restored_until > now() THEN to_char(restored_until AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') END";

fn record_of(r: &tokio_postgres::Row) -> Record {
    Record {
        manifest: Manifest {
            table: r.get(0),
            day: r.get(1),
            location: r.get(2),
            rows: r.get(3),
            min_time: r.get(4),
            max_time: r.get(5),
            bytes: r.get(6),
            sha256: r.get(7),
            schema_version: r.get(8),
        },
        dropped: r.get(9),
        restored_until: r.get(10),
    }
}

/// Deletes the objects under the archive's root that no record names:
/// earlier versions of rewritten files (erasure, reprocess) whose deletion
/// was cut short. Only names Chronos writes for the catalog's tables:
/// anything else there is someone else's. Returns what was deleted.
pub async fn delete_unrecorded(client: &impl GenericClient, target: &super::target::Target, catalog: &EventCatalog) -> Result<Vec<String>> {
    let named: std::collections::HashSet<String> = list(client)
        .await?
        .iter()
        .filter(|r| r.manifest.has_file())
        .flat_map(|r| [r.manifest.location.clone(), r.manifest.manifest_name()])
        .collect();
    let tables: std::collections::HashSet<&str> = catalog.types().iter().map(|t| &*t.name).collect();
    let mut deleted = Vec::new();
    for name in target.list().await? {
        if is_chronos_object(&name, &tables) && !named.contains(&name) {
            target.delete(&name).await?;
            deleted.push(name);
        }
    }
    Ok(deleted)
}

/// Every record, by table and day.
pub async fn list(client: &impl GenericClient) -> Result<Vec<Record>> {
    let rows = client.query(&format!("SELECT {RECORD_COLUMNS} FROM chronos.archives ORDER BY table_name, day"), &[]).await?;
    Ok(rows.iter().map(record_of).collect())
}

/// Archived days of one table whose day is in `[from, to]`.
pub(crate) async fn records(client: &impl GenericClient, table: &str, from: i64, to: i64) -> Result<Vec<Record>> {
    let rows = client
        .query(
            &format!("SELECT {RECORD_COLUMNS} FROM chronos.archives WHERE table_name = $1 AND day BETWEEN ($2::text)::date AND ($3::text)::date ORDER BY day"),
            &[&table, &day_str(from), &day_str(to)],
        )
        .await?;
    Ok(rows.iter().map(record_of).collect())
}

/// Days of a table that are archived and not in PostgreSQL now: what a view
/// backfill from the raw tables cannot count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedSpan {
    pub table: String,
    pub first: String,
    pub last: String,
    pub days: i64,
    pub rows: i64,
}

impl std::fmt::Display for ArchivedSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "events.{} has {} archived days from {} to {} ({} rows) that are not in PostgreSQL; \
             `chronos archive restore --table {} --from {} --to {}` brings them back",
            self.table, self.days, self.first, self.last, self.rows, self.table, self.first, self.last
        )
    }
}

/// The archived days of `table` that left PostgreSQL (and are not restored).
pub async fn archived_only(client: &impl GenericClient, table: &str) -> Result<Option<ArchivedSpan>> {
    if client.query_opt("SELECT 1 WHERE to_regclass('chronos.archives') IS NOT NULL", &[]).await?.is_none() {
        return Ok(None);
    }
    let r = client
        .query_one(
            "SELECT to_char(min(day), 'YYYY-MM-DD'), to_char(max(day), 'YYYY-MM-DD'), count(*), coalesce(sum(rows), 0)::bigint
             FROM chronos.archives WHERE table_name = $1 AND rows > 0 AND dropped_at IS NOT NULL
               AND (restored_until IS NULL OR restored_until <= now())",
            &[&table],
        )
        .await?;
    let days: i64 = r.get(2);
    Ok((days > 0).then(|| ArchivedSpan { table: table.to_string(), first: r.get(0), last: r.get(1), days, rows: r.get(3) }))
}

/// What one run did.
#[derive(Debug, Default)]
pub struct Report {
    /// One line per day handled.
    pub lines: Vec<String>,
    pub archived: usize,
    pub dropped: usize,
    /// Tables that stopped at a day, with why.
    pub errors: Vec<String>,
}

/// Archives and drops old days; lists, verifies and restores them.
pub struct Archiver {
    target: Option<Target>,
    raw_days: u32,
    keep_days: u32,
    /// How far after its batch's receipt an event's time can be (live or
    /// imported), in seconds: what `prune_pages` allows for.
    max_future_secs: u64,
    pub(crate) spool: PathBuf,
}

impl Archiver {
    pub fn new(config: &Config) -> Result<Archiver> {
        let target = match config.archive_target().map_err(anyhow::Error::msg)? {
            ArchiveTarget::Off => None,
            ArchiveTarget::Url(url) => Some(Target::open(&url)?),
        };
        Ok(Archiver {
            target,
            raw_days: config.retention.raw_days,
            keep_days: config.retention.restore_keep_days,
            max_future_secs: config.load.max_future_secs.max(config.import.max_future_secs),
            spool: std::env::temp_dir(),
        })
    }

    pub(crate) fn target(&self) -> Result<&Target> {
        self.target.as_ref().ok_or_else(|| anyhow::anyhow!("retention.archive is \"off\": there is no archive"))
    }

    /// Where the archive is, for messages.
    pub fn location(&self) -> String {
        self.target.as_ref().map_or("off (old days are dropped without archiving)".into(), |t| t.url.to_string())
    }

    /// One pass: every event table's days before `today - raw_days`, oldest
    /// first; a table stops at its first day that fails (the others go on).
    /// Returns None when another run holds the lock.
    pub async fn run(&self, client: &mut Client, catalog: &EventCatalog, today: i64) -> Result<Option<Report>> {
        let mut report = Report::default();
        if self.raw_days == 0 {
            report.lines.push("retention.raw_days = 0: raw events are kept forever".into());
            return Ok(Some(report));
        }
        let locked: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&RUN_LOCK]).await?.get(0);
        if !locked {
            return Ok(None);
        }
        let cutoff = today - i64::from(self.raw_days);
        for ty in catalog.types() {
            if let Err(e) = self.run_table(client, &ty.name, cutoff, &mut report).await {
                report.errors.push(format!("events.{}: {e:#}", ty.name));
            }
        }
        match prune_pages(client, catalog, cutoff, self.max_future_secs).await {
            Ok((0, _)) => {}
            Ok((n, before)) => {
                report.lines.push(format!("chronos.batches: {n} pages of batches received before {before} deleted (no row of them is left)"))
            }
            Err(e) => report.errors.push(format!("chronos.batches: {e:#}")),
        }
        client.execute("SELECT pg_advisory_unlock($1)", &[&RUN_LOCK]).await?;
        Ok(Some(report))
    }

    async fn run_table(&self, client: &mut Client, table: &str, cutoff: i64, report: &mut Report) -> Result<()> {
        let mut done = std::collections::HashMap::new();
        for r in records(client, table, FIRST_DAY, cutoff - 1).await? {
            done.insert(parse_day(&r.manifest.day).expect("a date from PostgreSQL"), r);
        }
        for day in candidate_days(client, table, cutoff).await? {
            match done.get(&day) {
                None => {
                    let m = self.archive_day(client, table, day).await.with_context(|| format!("archiving {}", day_str(day)))?;
                    report.archived += 1;
                    let rows = m.rows;
                    drop_day(client, table, day, rows).await.with_context(|| format!("dropping {}", day_str(day)))?;
                    report.dropped += 1;
                    report.lines.push(match self.target.as_ref() {
                        Some(t) if m.has_file() => format!("events.{table} {}: {rows} rows archived to {}, dropped", m.day, t.display(&m.location)),
                        Some(_) => format!("events.{table} {}: no rows, dropped", m.day),
                        None => format!("events.{table} {}: {rows} rows dropped (archiving off)", m.day),
                    });
                }
                Some(r) if r.restored_until.is_some() => {
                    report.lines.push(format!(
                        "events.{table} {}: restored, kept until {}",
                        r.manifest.day,
                        r.restored_until.as_deref().unwrap_or("")
                    ));
                }
                Some(r) => {
                    // Cut short after the record (resumed), or restored and expired.
                    let m = &r.manifest;
                    if !r.dropped && m.has_file() {
                        self.fetch(m, "dropped").await?;
                    }
                    let n = rows_of_day(client, table, day).await?;
                    if n == m.rows {
                        drop_day(client, table, day, n).await.with_context(|| format!("dropping {}", m.day))?;
                        report.lines.push(format!("events.{table} {}: {n} rows dropped (archived before)", m.day));
                    } else {
                        // Rows arrived after the day was archived (a late
                        // event, a raised load.max_past_secs): the day is
                        // archived again whole, the archived rows put back first.
                        if r.dropped && m.has_file() {
                            let local = self.fetch(m, "archived again").await?;
                            let table_columns = columns::of_table(client, table).await?;
                            restore_file(client, table, &table_columns, day, local.path()).await?;
                        }
                        let again = self.archive_day(client, table, day).await.with_context(|| format!("archiving {} again", m.day))?;
                        drop_day(client, table, day, again.rows).await.with_context(|| format!("dropping {}", m.day))?;
                        report.archived += 1;
                        report.lines.push(format!(
                            "events.{table} {}: {} rows arrived after it was archived; archived again ({} rows), dropped",
                            m.day,
                            again.rows - m.rows,
                            again.rows
                        ));
                    }
                    report.dropped += 1;
                }
            }
        }
        Ok(())
    }

    /// Writes a day to the archive and records it; returns its manifest.
    async fn archive_day(&self, client: &Client, table: &str, day: i64) -> Result<Manifest> {
        let mut m = Manifest {
            table: table.to_string(),
            day: day_str(day),
            location: String::new(),
            rows: 0,
            min_time: None,
            max_time: None,
            bytes: 0,
            sha256: String::new(),
            schema_version: file::SCHEMA_VERSION,
        };
        let t = format!("events.{}", ident(table));
        match &self.target {
            None => {
                m.location = "off".into();
                m.rows = rows_of_day(client, table, day).await?;
            }
            Some(target) => {
                let columns = columns::of_table(client, table).await?;
                let select: Vec<String> = columns.iter().map(columns::Column::select_expr).collect();
                let sql = format!("SELECT {} FROM {t} WHERE {} ORDER BY time, batch_id, position", select.join(", "), day_range(day));
                let rows = client.query_raw(sql.as_str(), std::iter::empty::<&(dyn ToSql + Sync)>()).await?;
                let spool = tempfile::Builder::new().prefix("chronos-archive-").suffix(".parquet").tempfile_in(&self.spool)?;
                let meta = vec![
                    ("chronos.table".to_string(), table.to_string()),
                    ("chronos.day".to_string(), m.day.clone()),
                    ("chronos.schema_version".to_string(), file::SCHEMA_VERSION.to_string()),
                ];
                let s = file::write(spool.path(), &columns, meta, rows).await?;
                failpoint("archive:written");
                m.rows = s.rows;
                if s.rows > 0 {
                    m.location = file_name(table, &m.day, None);
                    m.min_time = s.min_time;
                    m.max_time = s.max_time;
                    m.bytes = s.bytes as i64;
                    m.sha256 = s.sha256.clone();
                    target.put_verified(spool.path(), &m.location, &s.sha256, s.bytes, |step| failpoint(&format!("archive:{step}"))).await?;
                    target.put_small(&m.manifest_name(), serde_json::to_vec_pretty(&m)?).await?;
                    failpoint("archive:manifest");
                }
            }
        }
        client
            .execute(
                "INSERT INTO chronos.archives (table_name, day, location, rows, min_time, max_time, bytes, sha256, schema_version)
                 VALUES ($1, ($2::text)::date, $3, $4, timestamptz 'epoch' + $5::bigint * interval '1 microsecond',
                         timestamptz 'epoch' + $6::bigint * interval '1 microsecond', $7, $8, $9)
                 ON CONFLICT (table_name, day) DO UPDATE SET location = excluded.location, rows = excluded.rows,
                   min_time = excluded.min_time, max_time = excluded.max_time, bytes = excluded.bytes, sha256 = excluded.sha256,
                   schema_version = excluded.schema_version, archived_at = now(), dropped_at = NULL, restored_until = NULL",
                &[&m.table, &m.day, &m.location, &m.rows, &m.min_time, &m.max_time, &m.bytes, &m.sha256, &m.schema_version],
            )
            .await?;
        failpoint("archive:recorded");
        Ok(m)
    }

    /// Downloads a day's file into the spool, checked against its record
    /// (size and sha256); `not` says what is not done when it differs.
    pub(crate) async fn fetch(&self, m: &Manifest, not: &str) -> Result<tempfile::NamedTempFile> {
        let target = self.target()?;
        let local = target.download(&m.location, &self.spool).await?;
        let (sha, bytes) = file::sha256_of(local.path())?;
        if sha != m.sha256 || bytes as i64 != m.bytes {
            anyhow::bail!(
                "{}: {bytes} bytes with sha256 {sha}, its record says {} bytes, {}; not {not} (run `chronos archive verify`)",
                target.display(&m.location),
                m.bytes,
                m.sha256
            );
        }
        Ok(local)
    }

    /// Re-reads one archived day: the file against its record and its
    /// manifest (checksum, size, rows decoded).
    pub async fn verify_one(&self, m: &Manifest) -> Result<()> {
        if !m.has_file() {
            return Ok(());
        }
        let target = self.target()?;
        let manifest: Manifest = serde_json::from_slice(&target.get_small(&m.manifest_name()).await?)
            .with_context(|| format!("{} is not a manifest", target.display(&m.manifest_name())))?;
        if &manifest != m {
            anyhow::bail!("{} differs from chronos.archives: {manifest:?} vs {m:?}", target.display(&m.manifest_name()));
        }
        let local = target.download(&m.location, &self.spool).await?;
        let path = local.path().to_path_buf();
        let s = tokio::task::spawn_blocking(move || file::summarize(&path)).await??;
        if s.sha256 != m.sha256 || s.bytes as i64 != m.bytes || s.rows != m.rows {
            anyhow::bail!(
                "{}: {} rows, {} bytes, sha256 {}; its manifest says {} rows, {} bytes, sha256 {}",
                target.display(&m.location),
                s.rows,
                s.bytes,
                s.sha256,
                m.rows,
                m.bytes,
                m.sha256
            );
        }
        Ok(())
    }

    /// Loads the archived days of `table` in `[from, to]` back into its raw
    /// table, each row once (by batch id and position: a second restore adds
    /// nothing), and keeps them there for `retention.restore_keep_days`.
    /// Returns one line per day.
    pub async fn restore(&self, client: &mut Client, table: &str, from: i64, to: i64) -> Result<Vec<String>> {
        let target = self.target()?;
        let found = records(client, table, from, to).await?;
        let mut lines = Vec::new();
        let not_archived = |from: i64, to: i64| {
            format!("events.{table} {} to {}: not archived (still in PostgreSQL, or never had rows)", day_str(from), day_str(to))
        };
        let mut day = from;
        let table_columns = columns::of_table(client, table).await?;
        for r in &found {
            let d = parse_day(&r.manifest.day).expect("a date from PostgreSQL");
            if d > day {
                lines.push(not_archived(day, d - 1));
            }
            day = d + 1;
            let m = &r.manifest;
            if !m.has_file() {
                lines.push(format!(
                    "events.{table} {}: {}",
                    m.day,
                    if m.location == "off" { "dropped with archiving off: nothing to restore" } else { "had no rows" }
                ));
                continue;
            }
            let local = self.fetch(m, "restored").await?;
            let added = restore_file(client, table, &table_columns, d, local.path())
                .await
                .with_context(|| format!("restoring {}", target.display(&m.location)))?;
            client
                .execute(
                    "UPDATE chronos.archives SET restored_until = now() + make_interval(days => $3) WHERE table_name = $1 AND day = ($2::text)::date",
                    &[&table, &m.day, &(self.keep_days as i32)],
                )
                .await?;
            lines.push(format!("events.{table} {}: {added} of {} rows restored (the rest were there), kept {} days", m.day, m.rows, self.keep_days));
        }
        if day <= to {
            lines.push(not_archived(day, to));
        }
        Ok(lines)
    }
}

/// Deletes the pages (`chronos.batches`) of batches no raw row can be of any
/// more: every row left is at or after `cutoff`, or at the oldest time found
/// before it (a day kept restored, or one whose archiving failed), and an
/// event's time is at most `max_future_secs` after its batch's receipt, so a
/// batch received more than that (and a day of margin) before the oldest
/// row has none. Returns the pages deleted and the time before which.
async fn prune_pages(client: &Client, catalog: &EventCatalog, cutoff: i64, max_future_secs: u64) -> Result<(u64, String)> {
    let mut oldest = ts(cutoff).to_string();
    for ty in catalog.types() {
        let t = schema::table(ty);
        oldest = format!("least({oldest}, (SELECT min(time) FROM {t} WHERE time < {}))", ts(cutoff));
    }
    let before: String = client
        .query_one(
            &format!("SELECT to_char(({oldest}) - make_interval(secs => $1) - interval '1 day', 'YYYY-MM-DD HH24:MI:SSOF')"),
            &[&(max_future_secs as f64)],
        )
        .await?
        .get(0);
    let n = client.execute("DELETE FROM chronos.batches WHERE received_at < $1::text::timestamptz", &[&before]).await?;
    Ok((n, before))
}

/// Days before `cutoff` that `table` has: native day partitions (empty ones
/// too, by their `schema::day_partition_name`) and days with rows (the default partition,
/// hypertable chunks).
async fn candidate_days(client: &impl GenericClient, table: &str, cutoff: i64) -> Result<Vec<i64>> {
    let t = schema::raw(table);
    let mut days: std::collections::BTreeSet<i64> = client
        .query("SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass($1)", &[&t])
        .await?
        .iter()
        .filter_map(|r| {
            let name: String = r.get(0);
            let ymd = name.strip_prefix(table)?.strip_prefix("_p").filter(|ymd| ymd.len() == 8 && ymd.bytes().all(|b| b.is_ascii_digit()))?;
            let day = parse_day(&format!("{}-{}-{}", &ymd[..4], &ymd[4..6], &ymd[6..]))?;
            (schema::day_partition_name(table, day) == name).then_some(day)
        })
        .filter(|d| *d < cutoff)
        .collect();
    let with_rows =
        client.query(&format!("SELECT DISTINCT floor(extract(epoch FROM time) / 86400)::bigint FROM {t} WHERE time < {}", ts(cutoff)), &[]).await?;
    days.extend(with_rows.iter().map(|r| r.get::<_, i64>(0)));
    Ok(days.into_iter().collect())
}

pub(crate) async fn rows_of_day(client: &impl GenericClient, table: &str, day: i64) -> Result<i64> {
    Ok(client.query_one(&format!("SELECT count(*) FROM {} WHERE {}", schema::raw(table), day_range(day)), &[]).await?.get(0))
}

/// Drops a day from PostgreSQL when it holds exactly `expected` rows: its
/// native partition detached and dropped, its hypertable chunks dropped,
/// any other rows of the day deleted; all in one transaction that also marks
/// the record dropped.
async fn drop_day(client: &mut Client, table: &str, day: i64, expected: i64) -> Result<()> {
    let t = schema::raw(table);
    let tx = client.transaction().await?;
    let n = rows_of_day(&tx, table, day).await?;
    if n != expected {
        anyhow::bail!("{t} holds {n} rows on {} but its archive {expected}: not dropped (check with `chronos archive verify`)", day_str(day));
    }
    let native = tx.query_opt("SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass($1)", &[&t]).await?.is_some();
    if native {
        let part = schema::raw(&schema::day_partition_name(table, day));
        if tx.query_opt("SELECT 1 WHERE to_regclass($1) IS NOT NULL", &[&part]).await?.is_some() {
            tx.batch_execute(&format!("ALTER TABLE {t} DETACH PARTITION {part}; DROP TABLE {part};")).await?;
        }
    } else {
        // Chunks ending by the day's end hold only days handled already,
        // unless one of them is kept restored: then rows are deleted instead.
        let kept: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM chronos.archives WHERE table_name = $1 AND day < ($2::text)::date AND restored_until > now())",
                &[&table, &day_str(day)],
            )
            .await?
            .get(0);
        if !kept {
            tx.execute(&format!("SELECT drop_chunks('{}', older_than => {})", t.replace('\'', "''"), ts(day + 1)), &[]).await?;
        }
    }
    tx.execute(&format!("DELETE FROM {t} WHERE {}", day_range(day)), &[]).await?;
    tx.execute(
        "UPDATE chronos.archives SET dropped_at = now(), restored_until = NULL WHERE table_name = $1 AND day = ($2::text)::date",
        &[&table, &day_str(day)],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Loads one archive file into `table` through a staging table; returns the
/// rows added (those not there already, by batch id and position).
pub(crate) async fn restore_file(
    client: &mut Client,
    table: &str,
    table_columns: &[columns::Column],
    day: i64,
    path: &std::path::Path,
) -> Result<u64> {
    let (file_columns, batches) = file::reader(path)?;
    for c in &file_columns {
        if !table_columns.iter().any(|t| t.name == c.name) {
            anyhow::bail!("the file has column {} ({}), which events.{table} no longer has", c.name, c.pg_type);
        }
    }
    let tx = client.transaction().await?;
    let staging_cols: Vec<String> = file_columns
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                ident(&c.name),
                match c.staging_type().name() {
                    "_text" => "text[]",
                    n => n,
                }
            )
        })
        .collect();
    tx.batch_execute(&format!("CREATE TEMP TABLE chronos_restore ({}) ON COMMIT DROP", staging_cols.join(", "))).await?;
    let names: Vec<String> = file_columns.iter().map(|c| ident(&c.name)).collect();
    let sink = tx.copy_in(&format!("COPY chronos_restore ({}) FROM STDIN (FORMAT binary)", names.join(", "))).await?;
    let types: Vec<_> = file_columns.iter().map(columns::Column::staging_type).collect();
    let writer = BinaryCopyInWriter::new(sink, &types);
    futures_util::pin_mut!(writer);
    for batch in batches {
        for row in file::rows_of(&batch?, &file_columns) {
            let values: Vec<&(dyn ToSql + Sync)> = row.iter().map(file::Value::as_sql).collect();
            writer.as_mut().write(&values).await?;
        }
    }
    writer.finish().await?;
    // The page of each batch goes to chronos.batches (kept when there),
    // the rest of the row to the raw table.
    if let Some(page) = file_columns.iter().find(|c| c.name == "metadata") {
        let of = |name: &str| file_columns.iter().find(|c| c.name == name).map(|c| c.restore_expr("s"));
        if let (Some(received_at), Some(session_id)) = (of("received_at"), of("session_id")) {
            tx.execute(
                &format!(
                    "INSERT INTO chronos.batches (batch_id, received_at, session_id, metadata)
                     SELECT DISTINCT ON (s.batch_id) s.batch_id::uuid, {received_at}, {session_id}, {} FROM chronos_restore s
                     ORDER BY s.batch_id ON CONFLICT DO NOTHING",
                    page.restore_expr("s")
                ),
                &[],
            )
            .await?;
        }
    }
    let t = schema::raw(table);
    let raw_columns: Vec<&columns::Column> = file_columns.iter().filter(|c| c.name != "metadata").collect();
    let names: Vec<String> = raw_columns.iter().map(|c| ident(&c.name)).collect();
    let exprs: Vec<String> = raw_columns.iter().map(|c| c.restore_expr("s")).collect();
    let added = tx
        .execute(
            &format!(
                "INSERT INTO {t} ({}) SELECT {} FROM chronos_restore s WHERE NOT EXISTS
                 (SELECT 1 FROM {t} e WHERE e.{} AND e.batch_id = s.batch_id::uuid AND e.position = s.position)",
                names.join(", "),
                exprs.join(", "),
                day_range(day)
            ),
            &[],
        )
        .await?;
    tx.commit().await?;
    Ok(added)
}

/// chronosd's schedule: a run every `retention.every_secs` (the first a
/// minute after start at most), on a connection opened again when lost. Each
/// run is counted (`chronos_archive_runs_total`) and its failure kept on the
/// health board for `chronos doctor`; an archive that cannot be opened is a
/// failed run, tried again at the next.
pub async fn schedule(config: Config, catalog: EventCatalog, metrics: std::sync::Arc<crate::telemetry::Metrics>) {
    for outcome in ["ok", "failed"] {
        metrics.archive_runs.with_label_values(&[outcome]).reset();
    }
    metrics.board.archive_scheduled();
    let every = Duration::from_secs(config.retention.every_secs);
    let mut wait = every.min(Duration::from_secs(60));
    let mut archiver: Option<Archiver> = None;
    let mut client: Option<Client> = None;
    loop {
        tokio::time::sleep(wait).await;
        wait = every;
        let outcome = match run_once(&config, &catalog, &mut archiver, &mut client).await {
            None => continue,
            Some(o) => o,
        };
        let now = crate::clock::now_ms();
        match &outcome {
            Ok(()) => {
                metrics.archive_runs.with_label_values(&["ok"]).inc();
                metrics.archive_last_success.with_label_values(&[]).set(now as f64 / 1000.0);
            }
            Err(_) => metrics.archive_runs.with_label_values(&["failed"]).inc(),
        }
        metrics.board.archive_run(outcome, now);
    }
}

/// One scheduled run: `None` when another run held the lock (nothing done).
async fn run_once(
    config: &Config,
    catalog: &EventCatalog,
    archiver: &mut Option<Archiver>,
    client: &mut Option<Client>,
) -> Option<Result<(), String>> {
    if archiver.is_none() {
        match Archiver::new(config) {
            Ok(a) => *archiver = Some(a),
            Err(e) => {
                let why = format!("the archive cannot be opened: {e:#} (retention.archive)");
                tracing::error!(error = why, "Archive run failed: old days are not archived or dropped.");
                return Some(Err(why));
            }
        }
    }
    let archiver = archiver.as_ref().expect("opened above");
    if client.as_ref().is_none_or(Client::is_closed) {
        match crate::store::connect(&config.postgres.url).await {
            Ok(c) => *client = Some(c),
            Err(e) => {
                let why = format!("PostgreSQL unreachable: {e:#}");
                tracing::warn!(error = why, "Archive run skipped.");
                return Some(Err(why));
            }
        }
    }
    let c = client.as_mut().expect("connected above");
    match archiver.run(c, catalog, crate::store::today()).await {
        Ok(Some(report)) => {
            for l in &report.lines {
                tracing::info!("Archive: {l}.");
            }
            for e in &report.errors {
                tracing::error!("Archive: {e}.");
            }
            if report.errors.is_empty() {
                Some(Ok(()))
            } else {
                Some(Err(report.errors.join("; ")))
            }
        }
        Ok(None) => {
            tracing::info!("Archive run skipped: another one holds the lock.");
            None
        }
        Err(e) => {
            let why = format!("{e:#}");
            tracing::warn!(error = why, "Archive run failed; trying again at the next.");
            Some(Err(why))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_parse_and_print() {
        for day in [-1, 0, 19_000, 20_424, 2_932_896] {
            assert_eq!(parse_day(&day_str(day)), Some(day), "{}", day_str(day));
        }
        assert_eq!(day_str(20_424), "2025-12-02");
        for bad in ["2025-02-30", "2025-13-01", "2025-1-1x", "20251201", ""] {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_the_names_chronos_writes_for_catalog_tables_are_its_objects() {
        let tables: std::collections::HashSet<&str> = ["clicks", "pageviews"].into_iter().collect();
        let sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let run = Manifest {
            table: "clicks".into(),
            day: "2025-12-02".into(),
            location: file_name("clicks", "2025-12-02", None),
            rows: 1,
            min_time: None,
            max_time: None,
            bytes: 1,
            sha256: sha.into(),
            schema_version: file::SCHEMA_VERSION,
        };
        let rewritten = Manifest { location: file_name("clicks", "2025-12-02", Some(sha)), ..run.clone() };
        assert_eq!(rewritten.location, "clicks/2025-12-02-0123456789ab.parquet");
        for m in [&run, &rewritten] {
            for name in [m.location.clone(), m.manifest_name(), format!("{}.tmp", m.location)] {
                assert!(is_chronos_object(&name, &tables), "{name}");
            }
        }
        for foreign in [
            "clicks/notes.parquet",
            "clicks/2025-12-02.parquet.bak",
            "clicks/2025-12-02-backup.parquet",
            "clicks/2025-12-02-0123456789AB.parquet",
            "clicks/2025-12-02-0123456789abc.parquet",
            "clicks/2025-12-02_0123456789ab.parquet",
            "clicks/2025-02-30.parquet",
            "clicks/old/2025-12-02.parquet",
            "orders/2025-12-02.parquet",
            "2025-12-02.parquet",
            "backups/clicks/2025-12-02.parquet",
            "clicks/2025-12-02.manifest.json.tmp",
        ] {
            assert!(!is_chronos_object(foreign, &tables), "{foreign}");
        }
    }
}
