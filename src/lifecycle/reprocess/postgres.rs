//! Reprocessing the days in PostgreSQL, in place and online: a table's day in
//! slices of about [`ROWS_PER_TX`] events, each one transaction that reads
//! the slice's events grouped by batch, re-enriches each group and updates
//! the rows that change, and records the slice done with its counts.

use anyhow::{Context, Result};
use tokio_postgres::{Client, Transaction};

use super::rules::{Counts, Enrichment, Rules, COLUMNS};
use super::steps::{self, Step};
use crate::store::schema::raw;

/// Events per transaction by default, about (slices are of equal time: a burst makes one larger).
pub const ROWS_PER_TX: i64 = 50_000;

/// How a day is cut into transactions.
#[derive(Debug, Clone, Copy)]
pub struct Slicing {
    /// Events per transaction, about.
    pub rows_per_tx: i64,
}

const DAY_US: i64 = 86_400_000_000;

/// `timestamptz` of microseconds since the epoch, as a SQL expression of parameter `$n`.
fn at(n: usize) -> String {
    format!("(timestamptz 'epoch' + ${n}::bigint * interval '1 microsecond')")
}

/// Reprocesses `table`'s `day` from where `step` stopped; with `run` None
/// (a dry run) nothing is written.
pub async fn day(client: &mut Client, rules: &Rules, step: &Step, run: Option<i64>, slicing: Slicing) -> Result<Counts> {
    let (start, end) = (step.resume_at.unwrap_or(step.day * DAY_US), (step.day + 1) * DAY_US);
    let rows: i64 = client
        .query_one(&format!("SELECT count(*) FROM {} WHERE time >= {} AND time < {}", raw(&step.table), at(1), at(2)), &[&start, &end])
        .await?
        .get(0);
    let per_tx = slicing.rows_per_tx.max(1);
    let slices = (rows + per_tx - 1) / per_tx;
    let mut total = Counts::default();
    if slices == 0 {
        if let Some(run) = run {
            steps::record(&*client, run, step, &Counts::default(), end, true).await?;
        }
        return Ok(total);
    }
    let width = (end - start + slices - 1) / slices;
    let mut from = start;
    while from < end {
        let to = (from + width).min(end);
        let tx = client.transaction().await?;
        let counts =
            slice(&tx, rules, &step.table, from, to, run.is_some()).await.with_context(|| format!("events.{} {}", step.table, step.day_str()))?;
        if let Some(run) = run {
            steps::record(&tx, run, step, &counts, to, to == end).await?;
        }
        tx.commit().await?;
        if counts.changed > 0 {
            // Cut here, some of the day's changes are committed and some not.
            super::failpoint("reprocess:slice");
        }
        total.add(&counts);
        from = to;
    }
    Ok(total)
}

/// The groups of one slice: a batch's events with the same stored values.
const GROUPS: &str = "SELECT r.batch_id::text,
       CASE WHEN jsonb_typeof(b.metadata->'user_agent') = 'string' THEN b.metadata->>'user_agent' END,
       r.client_ip, r.is_bot, r.bot_reason, r.browser, r.browser_version, r.os, r.os_version, r.device_type, r.country, r.region, r.city,
       count(*)
     FROM {table} r LEFT JOIN chronos.batches b ON b.batch_id = r.batch_id
     WHERE r.time >= {from} AND r.time < {to}
     GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13";

async fn slice(tx: &Transaction<'_>, rules: &Rules, table: &str, from: i64, to: i64, write: bool) -> Result<Counts> {
    let sql = GROUPS.replace("{table}", &raw(table)).replace("{from}", &at(1)).replace("{to}", &at(2));
    let rows = tx.query(&sql, &[&from, &to]).await?;
    let mut counts = Counts::default();
    let mut changes = Changes::default();
    for r in &rows {
        let old = Enrichment {
            is_bot: r.get(3),
            bot_reason: r.get(4),
            browser: r.get(5),
            browser_version: r.get(6),
            os: r.get(7),
            os_version: r.get(8),
            device_type: r.get(9),
            country: r.get(10),
            region: r.get(11),
            city: r.get(12),
        };
        let (ip, n): (Option<String>, i64) = (r.get(2), r.get(13));
        let new = rules.apply(&old, r.get(1), ip.as_deref(), n, &mut counts);
        if new != old {
            changes.push(r.get(0), ip, old, new);
        }
    }
    if write && !changes.batch.is_empty() {
        let updated = changes.apply(tx, table, from, to).await?;
        if updated != counts.changed as u64 {
            anyhow::bail!("{updated} rows updated where {} were to change (rows written meanwhile?); nothing of this slice is kept", counts.changed);
        }
    }
    Ok(counts)
}

/// The groups that change, as the arrays of one `UPDATE … FROM unnest(…)`:
/// each group's batch, stored address and old values (what picks its rows),
/// and its new values.
#[derive(Default)]
struct Changes {
    batch: Vec<String>,
    ip: Vec<Option<String>>,
    old_bot: Vec<bool>,
    old: [Vec<Option<String>>; 9],
    new_bot: Vec<bool>,
    new: [Vec<Option<String>>; 9],
}

/// The text columns of an [`Enrichment`] (all but `is_bot`), in [`COLUMNS`] order.
fn texts(e: Enrichment) -> [Option<String>; 9] {
    [e.bot_reason, e.browser, e.browser_version, e.os, e.os_version, e.device_type, e.country, e.region, e.city]
}

impl Changes {
    fn push(&mut self, batch: String, ip: Option<String>, old: Enrichment, new: Enrichment) {
        self.batch.push(batch);
        self.ip.push(ip);
        self.old_bot.push(old.is_bot);
        self.new_bot.push(new.is_bot);
        for (column, v) in self.old.iter_mut().zip(texts(old)) {
            column.push(v);
        }
        for (column, v) in self.new.iter_mut().zip(texts(new)) {
            column.push(v);
        }
    }

    /// Updates the slice's rows of each group.
    async fn apply(&self, tx: &Transaction<'_>, table: &str, from: i64, to: i64) -> Result<u64> {
        let set: Vec<String> = COLUMNS.iter().map(|c| format!("{c} = v.{c}")).collect();
        let mine: Vec<String> = COLUMNS.iter().map(|c| format!("r.{c}")).collect();
        let was: Vec<String> = COLUMNS.iter().map(|c| format!("v.o_{c}")).collect();
        // $5: old is_bot, $6..$14 old texts, $15 new is_bot, $16..$24 new texts.
        let arrays: Vec<String> = (5..=24).map(|n| format!("${n}::{}[]", if n == 5 || n == 15 { "bool" } else { "text" })).collect();
        let sql = format!(
            "UPDATE {table} r SET {set}
             FROM unnest($3::text[], $4::text[], {arrays}) AS v(batch_id, o_ip, {was_cols}, {cols})
             WHERE r.time >= {from} AND r.time < {to} AND r.batch_id = v.batch_id::uuid
               AND r.client_ip IS NOT DISTINCT FROM v.o_ip AND ({mine}) IS NOT DISTINCT FROM ({was})",
            table = raw(table),
            set = set.join(", "),
            arrays = arrays.join(", "),
            was_cols = COLUMNS.iter().map(|c| format!("o_{c}")).collect::<Vec<_>>().join(", "),
            cols = COLUMNS.join(", "),
            from = at(1),
            to = at(2),
            mine = mine.join(", "),
            was = was.join(", "),
        );
        type P<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);
        let mut params: Vec<P> = vec![&from, &to, &self.batch, &self.ip, &self.old_bot];
        params.extend(self.old.iter().map(|c| c as P));
        params.push(&self.new_bot);
        params.extend(self.new.iter().map(|c| c as P));
        Ok(tx.execute(&sql, &params).await?)
    }
}
