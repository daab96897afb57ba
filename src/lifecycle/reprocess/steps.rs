//! A run's steps in `chronos.reprocess_steps`: a table's day in PostgreSQL or
//! in the archive, or a day's visits, with what it changed; recorded in the
//! transaction that made the change, so a re-run after `kill -9` goes on from
//! where the last commit left it and its counts stay exact.

use std::collections::HashMap;

use anyhow::Result;
use tokio_postgres::GenericClient;

use super::rules::{Counts, COUNT_COLUMNS};

/// Where a step's events are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Place {
    Postgres,
    Archive,
    /// `chronos.sessions`: the visits of a day, their enrichment read from their events.
    Sessions,
}

impl Place {
    pub fn as_str(self) -> &'static str {
        match self {
            Place::Postgres => "postgres",
            Place::Archive => "archive",
            Place::Sessions => "sessions",
        }
    }

    fn parse(s: &str) -> Option<Place> {
        [Place::Postgres, Place::Archive, Place::Sessions].into_iter().find(|p| p.as_str() == s)
    }
}

/// One step of a run, and how far it got.
#[derive(Debug, Clone)]
pub struct Step {
    pub place: Place,
    pub table: String,
    /// Days since the epoch.
    pub day: i64,
    pub done: bool,
    /// PostgreSQL: the events before this time (µs since the epoch) are done.
    pub resume_at: Option<i64>,
    /// What the step changed so far.
    pub counts: Counts,
}

impl Step {
    pub fn new(place: Place, table: &str, day: i64) -> Step {
        Step { place, table: table.to_string(), day, done: false, resume_at: None, counts: Counts::default() }
    }

    pub fn day_str(&self) -> String {
        super::super::day_str(self.day)
    }

    fn key(&self) -> (Place, String, i64) {
        (self.place, self.table.clone(), self.day)
    }
}

/// Adds `counts` to the step's and marks how far it got, in the caller's transaction.
pub async fn record(client: &impl GenericClient, run: i64, step: &Step, counts: &Counts, done_until: i64, done: bool) -> Result<()> {
    let added: Vec<String> = COUNT_COLUMNS.iter().map(|c| format!("{c} = s.{c} + EXCLUDED.{c}")).collect();
    let params: Vec<String> = (7..7 + COUNT_COLUMNS.len()).map(|n| format!("${n}")).collect();
    let sql = format!(
        "INSERT INTO chronos.reprocess_steps AS s (run_id, place, table_name, day, done, done_until, {cols})
         VALUES ($1, $2, $3, ($4::text)::date, $5, timestamptz 'epoch' + $6::bigint * interval '1 microsecond', {params})
         ON CONFLICT (run_id, place, table_name, day) DO UPDATE SET done = EXCLUDED.done, done_until = EXCLUDED.done_until, {added}",
        cols = COUNT_COLUMNS.join(", "),
        params = params.join(", "),
        added = added.join(", "),
    );
    let (place, day, f) = (step.place.as_str(), step.day_str(), counts.fields());
    let mut p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&run, &place, &step.table, &day, &done, &done_until];
    p.extend(f.iter().map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)));
    client.execute(&sql, &p).await?;
    Ok(())
}

/// The steps `run` recorded, by place, table and day.
pub async fn load(client: &impl GenericClient, run: i64) -> Result<HashMap<(Place, String, i64), Step>> {
    let sql = format!(
        "SELECT place, table_name, to_char(day, 'YYYY-MM-DD'), done, (extract(epoch FROM done_until) * 1000000)::bigint, {}
         FROM chronos.reprocess_steps WHERE run_id = $1",
        COUNT_COLUMNS.join(", ")
    );
    let mut steps = HashMap::new();
    for r in client.query(&sql, &[&run]).await? {
        let (place, day): (String, String) = (r.get(0), r.get(2));
        let (Some(place), Some(day)) = (Place::parse(&place), super::super::parse_day(&day)) else { continue };
        let mut f = [0i64; 9];
        for (i, v) in f.iter_mut().enumerate() {
            *v = r.get(5 + i);
        }
        let step = Step { place, table: r.get(1), day, done: r.get(3), resume_at: r.get(4), counts: Counts::from_fields(f) };
        steps.insert(step.key(), step);
    }
    Ok(steps)
}

/// The step of `place`, `table`, `day` as recorded, or a new one.
pub fn get(recorded: &HashMap<(Place, String, i64), Step>, place: Place, table: &str, day: i64) -> Step {
    recorded.get(&(place, table.to_string(), day)).cloned().unwrap_or_else(|| Step::new(place, table, day))
}
