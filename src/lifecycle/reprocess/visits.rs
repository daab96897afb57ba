//! The visits of `chronos.sessions` follow their events: after a day's events
//! are reprocessed, the enrichment of each visit that started that day is
//! read again from its events in PostgreSQL, as the loaders derive it (a bot
//! visit when any of its events is a bot's; browser, OS, device and place
//! from its first event, empty or not, as the loaders take its first
//! batch's). Visits whose events left PostgreSQL (archived days) keep theirs.

use anyhow::Result;
use tokio_postgres::Client;

use super::rules::{Counts, Stages};
use super::steps::{self, Step};
use crate::catalog::EventCatalog;
use crate::store::schema::table;

/// Which event's facts a visit takes: the earliest, as the loaders take the
/// piece that starts first; among events of one millisecond, the least facts
/// (empty first), as `store::visits::Entry` orders them — but without the
/// entry URL and referrer, which lead that order and are not event columns:
/// visits whose first millisecond holds two batches with different agents may
/// differ from the loaders' pick.
const FIRST: &str = "ev.time, ev.browser NULLS FIRST, ev.os NULLS FIRST, ev.device_type NULLS FIRST, \
                     ev.country NULLS FIRST, ev.region NULLS FIRST, ev.city NULLS FIRST";

/// Tries of a day's update: a loader updating the same visits can deadlock with it.
const TRIES: usize = 3;

/// The visit columns each stage decides.
fn columns(stages: Stages) -> Vec<&'static str> {
    let mut cols = Vec::new();
    if stages.bots {
        cols.push("is_bot");
    }
    if stages.agent {
        cols.extend(["browser", "os", "device_type"]);
    }
    if stages.geo {
        cols.extend(["country", "region", "city"]);
    }
    cols
}

/// The statement that updates the visits started on day `$1` .. `$2` (µs).
fn statement(catalog: &EventCatalog, stages: Stages) -> Option<String> {
    let cols = columns(stages);
    if cols.is_empty() {
        return None;
    }
    let from = "timestamptz 'epoch' + $1::bigint * interval '1 microsecond'";
    let to = "timestamptz 'epoch' + $2::bigint * interval '1 microsecond'";
    let events: Vec<String> = catalog
        .types()
        .iter()
        .map(|t| {
            format!(
                "SELECT session_id, time, is_bot, browser, os, device_type, country, region, city FROM {} \
                 WHERE time >= ({from}) AND time <= (SELECT max(ended_at) FROM v)",
                table(t)
            )
        })
        .collect();
    let derived: Vec<String> = cols
        .iter()
        .map(|c| match *c {
            "is_bot" => "bool_or(ev.is_bot) AS is_bot".to_string(),
            // The loaders' rule (store::visits::Entry): the first piece's
            // value, empty or not; the same event for every column.
            c => format!("(array_agg(ev.{c} ORDER BY {FIRST}))[1] AS {c}"),
        })
        .collect();
    let set: Vec<String> = cols.iter().map(|c| format!("{c} = x.{c}")).collect();
    let (mine, theirs): (Vec<String>, Vec<String>) = cols.iter().map(|c| (format!("s.{c}"), format!("x.{c}"))).unzip();
    Some(format!(
        "WITH v AS (SELECT id, session_id, started_at, ended_at FROM chronos.sessions WHERE started_at >= ({from}) AND started_at < ({to})),
         ev AS ({events}),
         x AS (SELECT v.id, {derived} FROM v JOIN ev ON ev.session_id = v.session_id AND ev.time >= v.started_at AND ev.time <= v.ended_at GROUP BY v.id)
         UPDATE chronos.sessions s SET {set} FROM x WHERE s.id = x.id AND ({mine}) IS DISTINCT FROM ({theirs})",
        events = events.join(" UNION ALL "),
        derived = derived.join(", "),
        set = set.join(", "),
        mine = mine.join(", "),
        theirs = theirs.join(", "),
    ))
}

/// Updates the visits started on `step`'s day from their events, and records
/// the step done in the same transaction; returns the visits changed.
pub async fn day(client: &mut Client, catalog: &EventCatalog, stages: Stages, step: &Step, run: i64) -> Result<u64> {
    let sql = statement(catalog, stages);
    let (from, to) = (step.day * 86_400_000_000, (step.day + 1) * 86_400_000_000);
    let mut tries = 0;
    loop {
        let tx = client.transaction().await?;
        let changed = match &sql {
            Some(sql) => tx.execute(sql, &[&from, &to]).await,
            None => Ok(0),
        };
        match changed {
            Ok(n) => {
                steps::record(&tx, run, step, &Counts { changed: n as i64, ..Counts::default() }, to, true).await?;
                tx.commit().await?;
                return Ok(n);
            }
            Err(e) if tries + 1 < TRIES && e.code() == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) => tries += 1,
            Err(e) => return Err(anyhow::Error::new(e).context(format!("chronos.sessions: the visits of {}", step.day_str()))),
        }
    }
}
