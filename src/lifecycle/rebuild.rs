//! `chronos views rebuild`: a continuous view recomputed from the raw events
//! of PostgreSQL and of the archive (each archived day read from its Parquet
//! file through the archive's reader), online, replacing the old state
//! atomically at a fence (`views::shadow` says how no event is counted twice
//! or missed). Also what `views add --backfill`, erasure (the groups a
//! person's events fed) and reprocessing use.
//!
//! A run cut short leaves the old state serving and its shadow behind; the
//! next run (of any view) clears it. One rebuild runs at a time, and it
//! holds the archive lock, so no day moves between PostgreSQL and the archive
//! meanwhile.

use std::time::Instant;

use anyhow::{Context, Result};
use tokio_postgres::{Client, Transaction};

use super::archive::{self, Archiver};
use super::source::{self, Staged};
use crate::catalog::EventCatalog;
use crate::config::Config;
use crate::views::shadow::{self, Scope};
use crate::views::{parse_views, ViewDef, VIEWS_LOCK};

/// Where a rebuild is, for a progress bar.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// What is read now: `events.clicks 2026-11-03 (PostgreSQL)`, `… (archive)`.
    pub step: String,
    /// Table-days read, of `days`.
    pub days_done: usize,
    pub days: usize,
    /// Events read so far.
    pub rows: u64,
}

/// What a rebuild read and how fast.
#[derive(Debug, Clone, Default)]
pub struct Rebuilt {
    pub views: Vec<String>,
    /// Events read from PostgreSQL, table-days, seconds.
    pub pg_rows: u64,
    pub pg_days: usize,
    pub pg_secs: f64,
    /// Events read from archive files, files, seconds.
    pub archive_rows: u64,
    pub archive_days: usize,
    pub archive_secs: f64,
    /// Groups the loaders wrote into the new state while it was built (what
    /// they committed after the snapshot).
    pub loader_groups: i64,
}

/// Whether the rebuild takes the archive lock or its caller holds it (an
/// erasure or a reprocess run, on their own connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveLock {
    Take,
    HeldByCaller,
}

/// One view to rebuild and the groups to replace.
pub(crate) struct Job {
    pub def: ViewDef,
    pub scope: Scope,
    /// The mark `shadow::begin` returned.
    mark: String,
}

/// Rebuilds view `view` from the raw events: all of it, or with `from`/`to`
/// (days since the epoch, both included) the groups of those days only (the
/// view needs a time bucket of a day or less). Takes the archive lock.
pub async fn rebuild(
    config: &Config,
    catalog: &EventCatalog,
    view: &str,
    from: Option<i64>,
    to: Option<i64>,
    progress: impl FnMut(&Progress),
) -> Result<Rebuilt> {
    rebuild_views(config, catalog, &[view], from, to, ArchiveLock::Take, progress).await
}

/// `rebuild` of several views in one pass over the raw events and one fence.
pub async fn rebuild_views(
    config: &Config,
    catalog: &EventCatalog,
    views: &[&str],
    from: Option<i64>,
    to: Option<i64>,
    lock: ArchiveLock,
    progress: impl FnMut(&Progress),
) -> Result<Rebuilt> {
    let mut control = crate::store::connect(&config.postgres.url).await?;
    let mut jobs = Vec::new();
    for name in views {
        let def = stored_view(&control, catalog, name).await?;
        let scope = match (from, to) {
            (None, None) => Scope::All,
            (f, t) => {
                if shadow::day_bucket_key(&def).is_none() {
                    anyhow::bail!(
                        "view `{name}` has no time bucket of a day or less among its keys (date_trunc('hour', time), time_bucket(…)), \
                         so some days cannot be rebuilt apart: rebuild it whole (without --from/--to)"
                    );
                }
                // Open ends: far enough for any event time (1696 to 2243).
                Scope::Days { from: f.unwrap_or(-100_000), to: t.unwrap_or(100_000) }
            }
        };
        jobs.push(Job { def, scope, mark: String::new() });
    }
    run(config, catalog, &mut control, jobs, lock, &[], progress).await
}

/// A stored view's definition, checked against today's catalog.
async fn stored_view(client: &Client, catalog: &EventCatalog, name: &str) -> Result<ViewDef> {
    let row = client.query_opt("SELECT definition FROM chronos.views WHERE name = $1", &[&name]).await?;
    let Some(row) = row else { anyhow::bail!("no view named `{name}` (chronos views list shows them)") };
    let mut defs = parse_views(row.get(0), catalog).with_context(|| format!("view `{name}`'s stored definition no longer fits the catalog"))?;
    anyhow::ensure!(defs.len() == 1, "view `{name}`'s stored definition is not one statement");
    Ok(defs.remove(0))
}

/// The views whose state may hold events of `sessions`, with the groups
/// those events fed listed (`shadow::groups_table`): what `correct_groups`
/// then rebuilds. Reads the sessions' events in PostgreSQL and the archive.
pub(crate) async fn list_groups(config: &Config, catalog: &EventCatalog, control: &mut Client, sessions: &[String]) -> Result<Vec<Job>> {
    let rows = control.query("SELECT name FROM chronos.views WHERE broken IS NULL ORDER BY name", &[]).await?;
    let mut jobs = Vec::new();
    for r in rows {
        let def = stored_view(control, catalog, r.get(0)).await?;
        control.batch_execute(&shadow::groups_ddl(&def)).await?;
        jobs.push(Job { def, scope: Scope::Groups, mark: String::new() });
    }
    if jobs.is_empty() || sessions.is_empty() {
        return Ok(jobs);
    }
    let archiver = Archiver::new(config)?;
    let tx = control.transaction().await?;
    source::set_sessions(&tx, sessions).await?;
    for (t, days) in source::pg_days(&tx, catalog, None).await? {
        for day in days {
            fill_groups(&tx, catalog, &jobs, t, &source::pg_rows(catalog, t, day, source::Sessions::Only)).await?;
        }
    }
    for (t, m) in source::archived_days(&tx, catalog, None).await? {
        let staged = source::stage(&tx, &archiver, catalog, t, &m, source::Sessions::Only).await?;
        fill_groups(&tx, catalog, &jobs, t, &staged.rows_sql).await?;
        staged.drop(&tx).await?;
    }
    tx.commit().await?;
    Ok(jobs)
}

async fn fill_groups(tx: &Transaction<'_>, catalog: &EventCatalog, jobs: &[Job], t: usize, rows_sql: &str) -> Result<()> {
    for j in jobs.iter().filter(|j| source::reads(&j.def, t)) {
        let from = source::from_item(&j.def, catalog, t, rows_sql);
        tx.batch_execute(&shadow::groups_fill(&j.def, catalog, &from, "true")).await?;
    }
    Ok(())
}

/// Rebuilds the groups `list_groups` listed, from the events that are not of
/// `sessions` (an erasure, whose caller holds the archive lock on `control`).
pub(crate) async fn correct_groups(
    config: &Config,
    catalog: &EventCatalog,
    control: &mut Client,
    jobs: Vec<Job>,
    sessions: &[String],
    progress: impl FnMut(&Progress),
) -> Result<Rebuilt> {
    // A view none of whose groups the sessions fed has nothing to correct.
    let mut kept = Vec::new();
    for j in jobs {
        let t = shadow::groups_table(&j.def.name);
        if control.query_opt(&format!("SELECT 1 FROM {t} LIMIT 1"), &[]).await?.is_some() {
            kept.push(j);
        } else {
            control.batch_execute(&format!("DROP TABLE {t}")).await?;
        }
    }
    if kept.is_empty() {
        return Ok(Rebuilt::default());
    }
    run(config, catalog, control, kept, ArchiveLock::HeldByCaller, sessions, progress).await
}

/// The rebuild: locks, fence, read, swap. `without`: sessions whose events
/// are left out (an erasure's).
async fn run(
    config: &Config,
    catalog: &EventCatalog,
    control: &mut Client,
    mut jobs: Vec<Job>,
    lock: ArchiveLock,
    without: &[String],
    progress: impl FnMut(&Progress),
) -> Result<Rebuilt> {
    if lock == ArchiveLock::Take {
        wait_for_archive_lock(control).await?;
    }
    let locked: bool = control.query_one("SELECT pg_try_advisory_lock($1)", &[&shadow::REBUILD_LOCK]).await?.get(0);
    let result = if locked {
        let r = fenced(config, catalog, control, &mut jobs, without, progress).await;
        control.execute("SELECT pg_advisory_unlock($1)", &[&shadow::REBUILD_LOCK]).await?;
        r
    } else {
        Err(anyhow::anyhow!("another rebuild (chronos views rebuild, views add --backfill or an erasure) is running; try again when it ends"))
    };
    if lock == ArchiveLock::Take {
        control.execute("SELECT pg_advisory_unlock($1)", &[&archive::RUN_LOCK]).await?;
    }
    result
}

/// How long a rebuild waits for an archive pass (chronosd's schedule) to end.
const ARCHIVE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Takes the archive lock, waiting for a pass that holds it to end.
async fn wait_for_archive_lock(control: &Client) -> Result<()> {
    let deadline = Instant::now() + ARCHIVE_LOCK_WAIT;
    loop {
        if control.query_one("SELECT pg_try_advisory_lock($1)", &[&archive::RUN_LOCK]).await?.get::<_, bool>(0) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "an archive run, restore or erasure has held the archive lock for {} s (chronos archive run?); try again when it ends",
            ARCHIVE_LOCK_WAIT.as_secs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Stops the rebuild at step `name`, while its shadow is half filled: until
/// the process is killed (how the tests `kill -9` a rebuild midway), or for
/// 10 s with `<name>:pause` (how they make sure loaders commit between the
/// snapshot and the swap).
async fn failpoint(name: &str) {
    super::failpoint::at_async(name, super::failpoint::Act::Hang).await;
}

async fn fenced(
    config: &Config,
    catalog: &EventCatalog,
    control: &mut Client,
    jobs: &mut [Job],
    without: &[String],
    progress: impl FnMut(&Progress),
) -> Result<Rebuilt> {
    let mut reader = crate::store::connect(&config.postgres.url).await?;
    // The fence: marks set and the snapshot taken while no loader can commit.
    control.execute("SELECT pg_advisory_lock($1)", &[&VIEWS_LOCK]).await?;
    let began = begin(control, jobs).await;
    let snapshot = match began {
        Ok(()) => reader.build_transaction().isolation_level(tokio_postgres::IsolationLevel::RepeatableRead).start().await,
        Err(e) => {
            control.execute("SELECT pg_advisory_unlock($1)", &[&VIEWS_LOCK]).await?;
            return Err(e);
        }
    };
    let snapshot = match snapshot {
        Ok(tx) => tx.query_one("SELECT 1", &[]).await.map(|_| tx),
        Err(e) => Err(e),
    };
    control.execute("SELECT pg_advisory_unlock($1)", &[&VIEWS_LOCK]).await?;
    let tx = snapshot?;
    let mut done = Rebuilt { views: jobs.iter().map(|j| j.def.name.clone()).collect(), ..Rebuilt::default() };
    read_all(config, catalog, &tx, jobs, without, &mut done, progress).await?;
    tx.commit().await?;
    for j in jobs.iter() {
        let sql = format!("SELECT count(*) FROM {} WHERE __shard >= 0", shadow::shadow(&j.def.name));
        done.loader_groups += control.query_one(&sql, &[]).await?.get::<_, i64>(0);
    }
    swap(control, jobs).await?;
    Ok(done)
}

/// Marks every job's view rebuilding (shadows created), clearing the marks
/// of runs cut short, in one transaction that moves the generation.
async fn begin(control: &mut Client, jobs: &mut [Job]) -> Result<()> {
    let tx = control.transaction().await?;
    for name in shadow::clear_stale(&tx).await? {
        tracing::info!(view = %name, "Cleared the shadow of a rebuild cut short.");
    }
    // Group lists an erasure cut short left (they hold the erased keys), but this run's.
    let ours: Vec<String> = jobs.iter().filter(|j| j.scope == Scope::Groups).map(|j| format!("{}_mrel_grp", j.def.name)).collect();
    let left = tx.query("SELECT tablename::text FROM pg_tables WHERE schemaname = 'views' AND tablename LIKE '%\\_mrel\\_grp'", &[]).await?;
    for t in left.iter().map(|r| r.get::<_, String>(0)).filter(|t| !ours.contains(t)) {
        tx.batch_execute(&format!("DROP TABLE views.{}", crate::store::schema::ident(&t))).await?;
    }
    for j in jobs.iter_mut() {
        let broken: Option<String> = tx.query_opt("SELECT broken FROM chronos.views WHERE name = $1", &[&j.def.name]).await?.and_then(|r| r.get(0));
        if broken.is_some() && j.scope != Scope::All {
            anyhow::bail!("view `{}` is broken: rebuild it whole (without --from/--to), which repairs it", j.def.name);
        }
        j.mark = shadow::begin(&tx, &j.def).await?;
    }
    tx.execute(crate::views::NEXT_GENERATION, &[]).await?;
    tx.commit().await?;
    Ok(())
}

async fn swap(control: &mut Client, jobs: &[Job]) -> Result<()> {
    let tx = control.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&VIEWS_LOCK]).await?;
    for j in jobs {
        shadow::swap(&tx, &j.def, &j.scope, &j.mark).await?;
    }
    tx.execute(crate::views::NEXT_GENERATION, &[]).await?;
    tx.commit().await?;
    Ok(())
}

/// Fills every job's shadow from the snapshot of `tx` (PostgreSQL's days)
/// and the archive's files, table-day by table-day.
async fn read_all(
    config: &Config,
    catalog: &EventCatalog,
    tx: &Transaction<'_>,
    jobs: &[Job],
    without: &[String],
    done: &mut Rebuilt,
    mut progress: impl FnMut(&Progress),
) -> Result<()> {
    let sessions = if without.is_empty() {
        source::Sessions::All
    } else {
        source::set_sessions(tx, without).await?;
        source::Sessions::Without
    };
    let wanted = |t: usize| jobs.iter().any(|j| source::reads(&j.def, t));
    let range = day_range(jobs);
    let pg: Vec<(usize, i64)> = source::pg_days(tx, catalog, range)
        .await?
        .into_iter()
        .filter(|(t, _)| wanted(*t))
        .flat_map(|(t, d)| d.into_iter().map(move |d| (t, d)))
        .collect();
    let archived: Vec<_> = source::archived_days(tx, catalog, range).await?.into_iter().filter(|(t, _)| wanted(*t)).collect();
    let mut p = Progress { days: pg.len() + archived.len(), ..Progress::default() };
    let started = Instant::now();
    for (t, day) in pg {
        p.step = format!("events.{} {} (PostgreSQL)", catalog.types()[t].name, archive::day_str(day));
        progress(&p);
        let rows_sql = source::pg_rows(catalog, t, day, sessions);
        let n: i64 = tx.query_one(&format!("SELECT count(*) FROM ({rows_sql}) r"), &[]).await?.get(0);
        if n > 0 {
            fill_shadows(tx, catalog, jobs, t, &rows_sql).await?;
        }
        (p.days_done, p.rows, done.pg_rows, done.pg_days) = (p.days_done + 1, p.rows + n as u64, done.pg_rows + n as u64, done.pg_days + 1);
        if p.days_done == 1 {
            failpoint("rebuild:read").await;
        }
    }
    done.pg_secs = started.elapsed().as_secs_f64();
    let archiver = if archived.is_empty() { None } else { Some(Archiver::new(config)?) };
    let started = Instant::now();
    for (t, m) in archived {
        p.step = format!("events.{} {} (archive)", m.table, m.day);
        progress(&p);
        let archiver = archiver.as_ref().expect("made when there are files");
        let staged: Staged = source::stage(tx, archiver, catalog, t, &m, sessions).await?;
        fill_shadows(tx, catalog, jobs, t, &staged.rows_sql).await?;
        let n = staged.rows;
        staged.drop(tx).await?;
        (p.days_done, p.rows, done.archive_rows, done.archive_days) = (p.days_done + 1, p.rows + n, done.archive_rows + n, done.archive_days + 1);
    }
    done.archive_secs = started.elapsed().as_secs_f64();
    p.step = "swapping".into();
    progress(&p);
    Ok(())
}

/// The days every job needs (None: all), when they all rebuild days.
fn day_range(jobs: &[Job]) -> Option<(i64, i64)> {
    let mut range: Option<(i64, i64)> = None;
    for j in jobs {
        let Scope::Days { from, to } = j.scope else { return None };
        range = Some(range.map_or((from, to), |(f, t)| (f.min(from), t.max(to))));
    }
    range
}

async fn fill_shadows(tx: &Transaction<'_>, catalog: &EventCatalog, jobs: &[Job], t: usize, rows_sql: &str) -> Result<()> {
    for j in jobs.iter().filter(|j| source::reads(&j.def, t)) {
        let from = source::from_item(&j.def, catalog, t, rows_sql);
        let scope = shadow::on_source(&j.def, catalog, &j.scope);
        let sql = crate::views::sql::aggregate_insert(&j.def, catalog, &shadow::shadow(&j.def.name), &from, scope.as_deref(), true);
        tx.batch_execute(&sql).await.with_context(|| format!("rebuilding view `{}`", j.def.name))?;
    }
    Ok(())
}
