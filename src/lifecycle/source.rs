//! The raw events a rebuild reads, one table-day at a time: a day still in
//! PostgreSQL as a query on `events."<type>"`, an archived day from its
//! Parquet file (checked against its record, decoded by the archive's
//! reader) streamed into a temporary table of the rebuild's transaction —
//! never into the raw tables — so that the view's own aggregate SQL counts
//! both alike.

use anyhow::{Context, Result};
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::ToSql;
use tokio_postgres::Transaction;

use super::archive::{self, Archiver, Manifest};
use super::{columns, file};
use crate::catalog::EventCatalog;
use crate::store::schema::{ident, presented_base_columns};
use crate::views::parse::Source;
use crate::views::ViewDef;

/// Which sessions' events are read (the list is `set_sessions`'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sessions {
    All,
    /// Every session but those listed (an erasure's recount).
    Without,
    /// Only those listed (the groups an erasure corrects).
    Only,
}

impl Sessions {
    /// The condition on a row's `session_id` column `col`.
    fn condition(self, col: &str) -> String {
        match self {
            Sessions::All => "true".into(),
            Sessions::Without => format!("{col} NOT IN (SELECT session_id FROM pg_temp.chronos_sessions)"),
            Sessions::Only => format!("{col} IN (SELECT session_id FROM pg_temp.chronos_sessions)"),
        }
    }
}

/// Lists `sessions` for `Sessions::Without` and `Sessions::Only`, for the transaction.
pub async fn set_sessions(tx: &Transaction<'_>, sessions: &[String]) -> Result<()> {
    tx.batch_execute("CREATE TEMP TABLE IF NOT EXISTS chronos_sessions (session_id text PRIMARY KEY) ON COMMIT DROP").await?;
    tx.execute("INSERT INTO pg_temp.chronos_sessions SELECT DISTINCT unnest($1::text[]) ON CONFLICT DO NOTHING", &[&sessions]).await?;
    Ok(())
}

fn ts(day: i64) -> String {
    format!("(timestamptz 'epoch' + interval '1 day' * {day})")
}

/// Whether `view` reads event type `t`.
pub fn reads(view: &ViewDef, t: usize) -> bool {
    match view.source {
        Source::Type(s) => s == t,
        Source::All => true,
    }
}

/// The FROM item a view's aggregate reads for rows `rows_sql` (a SELECT of
/// `events."<type t>"`'s columns): as they are for a view of the type; the
/// columns every event has, and `type`, for a view `FROM events`.
pub fn from_item(view: &ViewDef, catalog: &EventCatalog, t: usize, rows_sql: &str) -> String {
    match view.source {
        Source::Type(_) => format!("({rows_sql}) AS e"),
        Source::All => {
            let base: Vec<String> = presented_base_columns().into_iter().map(|c| format!("r.{}", ident(c))).collect();
            let name = crate::views::expr::literal(&catalog.types()[t].name);
            format!("(SELECT {name}::text AS \"type\", {} FROM ({rows_sql}) AS r) AS e", base.join(", "))
        }
    }
}

/// The days (since the epoch) from the first to the last event of each
/// event table in PostgreSQL, within `range` when given.
pub async fn pg_days(tx: &Transaction<'_>, catalog: &EventCatalog, range: Option<(i64, i64)>) -> Result<Vec<(usize, Vec<i64>)>> {
    let mut out = Vec::new();
    for (t, ty) in catalog.types().iter().enumerate() {
        let span = tx
            .query_one(
                &format!(
                    "SELECT floor(extract(epoch FROM min(time)) / 86400)::bigint, floor(extract(epoch FROM max(time)) / 86400)::bigint FROM {}",
                    crate::store::schema::table(ty)
                ),
                &[],
            )
            .await?;
        let (Some(first), Some(last)) = (span.get::<_, Option<i64>>(0), span.get::<_, Option<i64>>(1)) else { continue };
        let (first, last) = match range {
            Some((from, to)) => (first.max(from), last.min(to)),
            None => (first, last),
        };
        out.push((t, (first..=last).collect()));
    }
    Ok(out)
}

/// The rows of event type `t` on `day` in PostgreSQL, as a SELECT.
pub fn pg_rows(catalog: &EventCatalog, t: usize, day: i64, sessions: Sessions) -> String {
    format!(
        "SELECT * FROM {} WHERE time >= {} AND time < {} AND {}",
        crate::store::schema::view(&catalog.types()[t]),
        ts(day),
        ts(day + 1),
        sessions.condition("session_id")
    )
}

/// The archived days whose rows are not in PostgreSQL (dropped, not
/// restored; rows that arrived late for such a day are in PostgreSQL and
/// not in its file), with their event type, within `range` when given.
pub async fn archived_days(tx: &Transaction<'_>, catalog: &EventCatalog, range: Option<(i64, i64)>) -> Result<Vec<(usize, Manifest)>> {
    if tx.query_opt("SELECT 1 WHERE to_regclass('chronos.archives') IS NOT NULL", &[]).await?.is_none() {
        return Ok(Vec::new());
    }
    let gone: std::collections::HashSet<(String, String)> = tx
        .query(
            "SELECT table_name, to_char(day, 'YYYY-MM-DD') FROM chronos.archives WHERE dropped_at IS NOT NULL AND restored_until IS NULL AND rows > 0",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut out = Vec::new();
    for r in archive::list(tx).await? {
        let m = r.manifest;
        let day = archive::parse_day(&m.day).expect("a date from PostgreSQL");
        let in_range = range.is_none_or(|(from, to)| (from..=to).contains(&day));
        let Some(t) = catalog.types().iter().position(|ty| *ty.name == *m.table) else { continue };
        if m.has_file() && in_range && gone.contains(&(m.table.clone(), m.day.clone())) {
            out.push((t, m));
        }
    }
    Ok(out)
}

/// An archived day staged for one rebuild transaction.
pub struct Staged {
    /// Its rows (those `sessions` selects) as a SELECT of `events."<type>"`'s
    /// columns today (a column added since the file was written is NULL).
    pub rows_sql: String,
    pub rows: u64,
}

impl Staged {
    pub async fn drop(self, tx: &Transaction<'_>) -> Result<()> {
        tx.batch_execute("DROP TABLE pg_temp.chronos_rebuild_day").await?;
        Ok(())
    }
}

/// Reads archived day `m` of event type `t` (the file checked against its
/// record first) into a temporary table of `tx`.
pub async fn stage(tx: &Transaction<'_>, archiver: &Archiver, catalog: &EventCatalog, t: usize, m: &Manifest, sessions: Sessions) -> Result<Staged> {
    let local = archiver.fetch(m, "rebuilt from").await?;
    let (file_columns, batches) = file::reader(local.path())?;
    let staging: Vec<String> = file_columns
        .iter()
        .map(|c| {
            let ty = match c.staging_type().name() {
                "_text" => "text[]".to_string(),
                n => n.to_string(),
            };
            format!("{} {ty}", ident(&c.name))
        })
        .collect();
    tx.batch_execute(&format!("CREATE TEMP TABLE chronos_rebuild_day ({})", staging.join(", "))).await?;
    let names: Vec<String> = file_columns.iter().map(|c| ident(&c.name)).collect();
    let sink = tx.copy_in(&format!("COPY pg_temp.chronos_rebuild_day ({}) FROM STDIN (FORMAT binary)", names.join(", "))).await?;
    let types: Vec<_> = file_columns.iter().map(columns::Column::staging_type).collect();
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    for batch in batches {
        for row in file::rows_of(&batch.with_context(|| format!("decoding {}", m.location))?, &file_columns) {
            let values: Vec<&(dyn ToSql + Sync)> = row.iter().map(file::Value::as_sql).collect();
            writer.as_mut().write(&values).await?;
        }
    }
    writer.finish().await?;
    let table = &catalog.types()[t].name;
    let projection: Vec<String> = columns::of_table(tx, table)
        .await?
        .iter()
        .map(|c| match file_columns.iter().find(|f| f.name == c.name) {
            Some(f) => format!("{} AS {}", f.restore_expr("s"), ident(&c.name)),
            None => format!("NULL::{} AS {}", c.pg_type, ident(&c.name)),
        })
        .collect();
    let rows_sql = format!("SELECT {} FROM pg_temp.chronos_rebuild_day s WHERE {}", projection.join(", "), sessions.condition("s.session_id"));
    let rows: i64 = tx.query_one(&format!("SELECT count(*) FROM ({rows_sql}) r"), &[]).await?.get(0);
    Ok(Staged { rows_sql, rows: rows as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{built_in_events, EventCatalog};
    use crate::views::parse_views;

    #[test]
    fn a_view_reads_a_table_day_as_its_source_presents_it() {
        let catalog = EventCatalog::from_config(&built_in_events(), 2048);
        let clicks = catalog.types().iter().position(|t| &*t.name == "clicks").unwrap();
        let views = parse_views(
            "CREATE VIEW a AS SELECT element, count(*) FROM clicks GROUP BY element;
             CREATE VIEW b AS SELECT type, count(*) FROM events GROUP BY type;",
            &catalog,
        )
        .unwrap();
        let rows = pg_rows(&catalog, clicks, 3, Sessions::Without);
        assert_eq!(
            rows,
            "SELECT * FROM events.\"clicks\" WHERE time >= (timestamptz 'epoch' + interval '1 day' * 3) AND time < \
             (timestamptz 'epoch' + interval '1 day' * 4) AND session_id NOT IN (SELECT session_id FROM pg_temp.chronos_sessions)"
        );
        assert!(reads(&views[0], clicks) && !reads(&views[0], clicks + 1) && reads(&views[1], clicks + 1));
        assert_eq!(from_item(&views[0], &catalog, clicks, "SELECT 1"), "(SELECT 1) AS e");
        let all = from_item(&views[1], &catalog, clicks, "SELECT 1");
        assert!(all.starts_with("(SELECT E'clicks'::text AS \"type\", r.\"time\", "), "{all}");
        assert!(all.contains("r.\"metadata\"") && all.ends_with("FROM (SELECT 1) AS r) AS e"), "{all}");
        assert_eq!(Sessions::All.condition("s.session_id"), "true");
        assert_eq!(Sessions::Only.condition("s.session_id"), "s.session_id IN (SELECT session_id FROM pg_temp.chronos_sessions)");
    }
}
