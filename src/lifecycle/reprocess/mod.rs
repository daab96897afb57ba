//! `chronos reprocess --from DAY --to DAY [--only bots,agent,geo] [--dry-run]`:
//! the enrichment stages run again over stored events with today's rules and
//! databases — the raw tables in place ([`postgres`], slice by slice, online),
//! the archived days' files rewritten as erasure rewrites them ([`archived`]),
//! the visits of `chronos.sessions` read again from their events ([`visits`]);
//! then the views that read a changed column ([`views`]) are rebuilt from the
//! raw events (`lifecycle::rebuild`). One run at a time (an advisory lock, and the
//! archive's); each step is recorded with its counts in the transaction that
//! made its change ([`steps`]), so a run cut short (`kill -9`) is finished,
//! and counted, exactly by running the same command again; the run itself is
//! audited in `chronos.reprocessings`.
//!
//! What can be recomputed ([`rules`]): the bot flag and the agent columns from
//! the batch page's `user_agent` (the tracker sends `navigator.userAgent`;
//! the `User-Agent` header itself is not stored), and the place from the
//! stored address, which is anonymised (/24, /48), so only where the GeoIP
//! database gives its whole block one answer.

pub mod archived;
pub mod postgres;
pub mod report;
pub mod rules;
pub mod steps;
pub mod views;
pub mod visits;

use std::collections::HashMap;

use anyhow::Result;
use tokio_postgres::Client;

use super::archive::{self, Archiver, Manifest, REPROCESS_LOCK, RUN_LOCK};
use super::rebuild;
use crate::catalog::EventCatalog;
use crate::config::Config;
use crate::enrich::GeoIp;
use rules::{Counts, Rules, Stages};
use steps::{Place, Step};

/// What to reprocess.
#[derive(Debug, Clone)]
pub struct Options {
    /// Days since the epoch, both included.
    pub from: i64,
    pub to: i64,
    pub stages: Stages,
    pub dry_run: bool,
    /// Events per transaction in PostgreSQL, about.
    pub rows_per_tx: i64,
    /// Who asks, for the audit row.
    pub by: String,
}

/// What a run did (or, dry, would do).
#[derive(Debug, Default)]
pub struct Report {
    /// `chronos.reprocessings.id`; None for a dry run.
    pub run: Option<i64>,
    /// The run was one cut short, finished now.
    pub resumed: bool,
    /// The stages that ran (geo is off without `enrich.geoip_db`).
    pub stages: Stages,
    /// Each step with events, with what it changed (a resumed step: all of it).
    pub steps: Vec<Step>,
    /// Archive files without enrichment columns, left as they are.
    pub no_columns: Vec<String>,
    pub total: Counts,
    /// Visits of `chronos.sessions` updated.
    pub visits: i64,
    /// Views that read a changed column: rebuilt (a real run), or to rebuild (dry).
    pub views: Vec<String>,
    /// Archive objects no record names (a run cut short), deleted.
    pub stale_deleted: Vec<String>,
    /// Seconds spent rebuilding the views (part of a real run's time).
    pub views_secs: f64,
}

/// A reprocess step where the tests cut a run: an abort (as `kill -9` would),
/// or with `<name>:hang` a wait there until the test kills it.
fn failpoint(name: &str) {
    super::failpoint::at(name, super::failpoint::Act::Abort);
}

/// Today's rules from the config: the bot list with `enrich.extra_bot_patterns`,
/// the parser, and `enrich.geoip_db` when set.
pub fn rules(config: &Config, stages: Stages) -> Result<Rules> {
    let geo = match &config.enrich.geoip_db {
        Some(p) if stages.geo => Some(GeoIp::open(p).map_err(anyhow::Error::msg)?),
        _ => None,
    };
    Ok(Rules::new(stages, config.enrich.enricher(), geo))
}

/// Runs (or, with `dry_run`, counts) a reprocess. Holds the reprocess lock
/// and the archive's for a real run; says who holds one instead of waiting.
pub async fn run(
    client: &mut Client,
    config: &Config,
    archiver: &Archiver,
    catalog: &EventCatalog,
    rules: &Rules,
    opts: &Options,
    progress: impl FnMut(&str),
) -> Result<Report> {
    if opts.from > opts.to {
        anyhow::bail!("--from {} is after --to {}", super::day_str(opts.from), super::day_str(opts.to));
    }
    if opts.dry_run {
        return Pass { client, archiver, catalog, rules, opts, run: None, recorded: HashMap::new() }.all(&mut { progress }).await;
    }
    for (lock, holder) in [(REPROCESS_LOCK, "another chronos reprocess"), (RUN_LOCK, "an archive run or an erasure (the archive lock)")] {
        let locked: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&lock]).await?.get(0);
        if !locked {
            client.execute("SELECT pg_advisory_unlock_all()", &[]).await?;
            anyhow::bail!("{holder} is running; try again when it ends");
        }
    }
    let result = locked(client, config, archiver, catalog, rules, opts, progress).await;
    client.execute("SELECT pg_advisory_unlock_all()", &[]).await?;
    result
}

async fn locked(
    client: &mut Client,
    config: &Config,
    archiver: &Archiver,
    catalog: &EventCatalog,
    rules: &Rules,
    opts: &Options,
    mut progress: impl FnMut(&str),
) -> Result<Report> {
    let (run, resumed) = open_run(client, opts, rules.stages).await?;
    let recorded = steps::load(&*client, run).await?;
    let mut pass = Pass { client, archiver, catalog, rules, opts, run: Some(run), recorded };
    let mut report = pass.all(&mut progress).await?;
    report.resumed = resumed;
    report.stale_deleted = match archiver.target() {
        Ok(target) => archive::delete_unrecorded(&*pass.client, target, catalog).await?,
        Err(_) => Vec::new(),
    };
    if !report.views.is_empty() {
        // Whole views: a view without a day bucket cannot be rebuilt by days.
        let names: Vec<&str> = report.views.iter().map(String::as_str).collect();
        let started = std::time::Instant::now();
        rebuild::rebuild_views(config, catalog, &names, None, None, rebuild::ArchiveLock::HeldByCaller, |p| progress(&format!("views: {}", p.step)))
            .await?;
        report.views_secs = started.elapsed().as_secs_f64();
    }
    pass.client.execute("UPDATE chronos.reprocessings SET finished_at = now(), views_rebuilt = $2 WHERE id = $1", &[&run, &report.views]).await?;
    Ok(report)
}

/// The run to go on with: one cut short with the same arguments, or a new
/// one. One cut short with other arguments must be finished first.
async fn open_run(client: &Client, opts: &Options, stages: Stages) -> Result<(i64, bool)> {
    let (from, to) = (super::day_str(opts.from), super::day_str(opts.to));
    let names: Vec<String> = stages.names().iter().map(|s| s.to_string()).collect();
    let open = client
        .query_opt(
            "SELECT id, to_char(from_day, 'YYYY-MM-DD'), to_char(to_day, 'YYYY-MM-DD'), stages, to_char(started_at, 'YYYY-MM-DD HH24:MI:SS TZ')
             FROM chronos.reprocessings WHERE finished_at IS NULL ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?;
    if let Some(r) = open {
        let (id, f, t, s): (i64, String, String, Vec<String>) = (r.get(0), r.get(1), r.get(2), r.get(3));
        if (&f, &t, &s) == (&from, &to, &names) {
            return Ok((id, true));
        }
        anyhow::bail!(
            "reprocess run #{id} (started {}) was cut short; finish it first: chronos reprocess --from {f} --to {t} --only {}",
            r.get::<_, String>(4),
            s.join(",")
        );
    }
    let id = client
        .query_one(
            "INSERT INTO chronos.reprocessings (requested_by, from_day, to_day, stages) VALUES ($1, ($2::text)::date, ($3::text)::date, $4) RETURNING id",
            &[&opts.by, &from, &to, &names],
        )
        .await?
        .get(0);
    Ok((id, false))
}

/// One pass over the days, tables and places of a run.
struct Pass<'a> {
    client: &'a mut Client,
    archiver: &'a Archiver,
    catalog: &'a EventCatalog,
    rules: &'a Rules,
    opts: &'a Options,
    /// None: a dry run.
    run: Option<i64>,
    recorded: HashMap<(Place, String, i64), Step>,
}

impl Pass<'_> {
    async fn all(&mut self, progress: &mut impl FnMut(&str)) -> Result<Report> {
        let mut report = Report { run: self.run, stages: self.rules.stages, ..Report::default() };
        let files: HashMap<(String, String), Manifest> = archive::list(&*self.client)
            .await?
            .into_iter()
            .filter(|r| r.manifest.has_file())
            .map(|r| ((r.manifest.table.clone(), r.manifest.day.clone()), r.manifest))
            .collect();
        for day in self.opts.from..=self.opts.to {
            for ty in self.catalog.types() {
                progress(&format!("events.{} {}", ty.name, super::day_str(day)));
                let step = steps::get(&self.recorded, Place::Postgres, &ty.name, day);
                self.postgres(step, &mut report).await?;
                if let Some(m) = files.get(&(ty.name.to_string(), super::day_str(day))) {
                    let step = steps::get(&self.recorded, Place::Archive, &ty.name, day);
                    self.archived(step, m, &mut report).await?;
                }
            }
            if let Some(run) = self.run {
                let step = steps::get(&self.recorded, Place::Sessions, "sessions", day);
                report.visits += step.counts.changed;
                if !step.done {
                    report.visits += visits::day(self.client, self.catalog, self.rules.stages, &step, run).await? as i64;
                }
            }
        }
        let mut changed: HashMap<String, Counts> = HashMap::new();
        for s in &report.steps {
            changed.entry(s.table.clone()).or_default().add(&s.counts);
        }
        report.views = views::to_rebuild(&*self.client, self.catalog, &changed).await?;
        Ok(report)
    }

    async fn postgres(&mut self, mut step: Step, report: &mut Report) -> Result<()> {
        if !step.done {
            let opts = postgres::Slicing { rows_per_tx: self.opts.rows_per_tx };
            let counts = postgres::day(self.client, self.rules, &step, self.run, opts).await?;
            step.counts.add(&counts);
        }
        Self::keep(step, report);
        Ok(())
    }

    async fn archived(&mut self, mut step: Step, m: &Manifest, report: &mut Report) -> Result<()> {
        if !step.done {
            match archived::day(self.client, self.archiver, self.rules, m, &step, self.run).await? {
                archived::Outcome::Done(counts) => step.counts.add(&counts),
                archived::Outcome::NoColumns => report.no_columns.push(m.location.clone()),
            }
        }
        Self::keep(step, report);
        Ok(())
    }

    fn keep(step: Step, report: &mut Report) {
        if step.counts.events > 0 {
            report.total.add(&step.counts);
            report.steps.push(step);
        }
    }
}
