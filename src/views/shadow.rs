//! A view's rebuild, the SQL side: the shadow state table a rebuild fills
//! (`views."<name>_mrel_new"`), the scope of groups it replaces (every group,
//! the time buckets of some days, or the groups listed in
//! `views."<name>_mrel_grp"`), its registration and the swap at the fence.
//!
//! The fence: `begin` runs while the rebuild holds the views lock
//! exclusively (no loader transaction is between its view-set read and its
//! commit), and the rebuild takes its snapshot before letting go. Every
//! loader commit before the lock is in that snapshot; every one after sees
//! the new generation, and with it an upsert that writes the live state and
//! the shadow (`Registry`). `swap`, under the lock again, puts the shadow's
//! groups in place of the live ones: snapshot + later commits, each once.

use tokio_postgres::Transaction;

use super::expr::{Column, Expr, Unit};
use super::parse::ViewDef;
use super::sql::{self, expr_sql, state_column_list};
use crate::catalog::EventCatalog;
use crate::store::schema::ident;

/// Advisory lock key held (session) by the one rebuild that runs.
pub use crate::store::locks::REBUILD as REBUILD_LOCK;

/// The shadow state table of view `name`.
pub fn shadow(name: &str) -> String {
    format!("views.{}", ident(&format!("{name}_mrel_new")))
}

fn shadow_index(name: &str) -> String {
    format!("views.{}", ident(&format!("{name}_mrel_new_keys")))
}

/// The table listing the groups a partial rebuild replaces (erasure).
pub fn groups_table(name: &str) -> String {
    format!("views.{}", ident(&format!("{name}_mrel_grp")))
}

/// Which groups of a view a rebuild replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The whole state.
    All,
    /// The groups whose time bucket (a key of a day or less) falls in these
    /// days (days since the epoch, both included).
    Days { from: i64, to: i64 },
    /// The groups listed in `groups_table` (filled before the rebuild).
    Groups,
}

/// The key of `view` that buckets `time` by a day or less (each group's
/// events then lie within one day), by name.
pub fn day_bucket_key(view: &ViewDef) -> Option<&str> {
    let of_time = |e: &Expr| matches!(e, Expr::Col(Column::Time, _));
    view.keys
        .iter()
        .find(|(_, e)| match e {
            Expr::Trunc(u, inner) => matches!(u, Unit::Second | Unit::Minute | Unit::Hour | Unit::Day) && of_time(inner),
            Expr::Bucket(width, inner) => *width > 0 && crate::clock::DAY_MS % width == 0 && of_time(inner),
            _ => false,
        })
        .map(|(n, _)| n.as_str())
}

fn ts(day: i64) -> String {
    format!("(timestamptz 'epoch' + interval '1 day' * {day})")
}

/// The scope as a condition on a state table's row aliased `alias`.
pub fn on_state(view: &ViewDef, scope: &Scope, alias: &str) -> Option<String> {
    match scope {
        Scope::All => None,
        Scope::Days { from, to } => {
            let k = format!("{alias}.{}", ident(day_bucket_key(view).expect("checked when the rebuild was asked for")));
            Some(format!("{k} >= {} AND {k} < {}", ts(*from), ts(*to + 1)))
        }
        Scope::Groups => Some(groups_match(view, |k| format!("{alias}.{}", ident(k)))),
    }
}

/// The scope as a condition on an event of the view's source.
pub fn on_source(view: &ViewDef, catalog: &EventCatalog, scope: &Scope) -> Option<String> {
    match scope {
        Scope::All => None,
        Scope::Days { from, to } => Some(format!("time >= {} AND time < {}", ts(*from), ts(*to + 1))),
        Scope::Groups => {
            let exprs: std::collections::HashMap<&str, String> = view.keys.iter().map(|(n, e)| (n.as_str(), expr_sql(view, catalog, e))).collect();
            Some(groups_match(view, |k| format!("({})", exprs[k])))
        }
    }
}

fn groups_match(view: &ViewDef, value: impl Fn(&str) -> String) -> String {
    let mut on: Vec<String> = view.keys.iter().map(|(n, _)| format!("g.{} IS NOT DISTINCT FROM {}", ident(n), value(n))).collect();
    if on.is_empty() {
        on.push("true".into());
    }
    format!("EXISTS (SELECT 1 FROM {} g WHERE {})", groups_table(&view.name), on.join(" AND "))
}

/// Creates `groups_table` (empty, replacing one left by a run cut short).
pub fn groups_ddl(view: &ViewDef) -> String {
    let cols: Vec<String> = view.keys.iter().map(|(n, e)| format!("{} {}", ident(n), e.ty().sql())).collect();
    let t = groups_table(&view.name);
    format!("DROP TABLE IF EXISTS {t}; CREATE UNLOGGED TABLE {t} ({});", cols.join(", "))
}

/// Adds to `groups_table` the groups of the events of `source` (a FROM item
/// of the view's source columns) that pass `extra`.
pub fn groups_fill(view: &ViewDef, catalog: &EventCatalog, source: &str, extra: &str) -> String {
    let keys: Vec<String> = view.keys.iter().map(|(_, e)| expr_sql(view, catalog, e)).collect();
    let select = if keys.is_empty() { "".to_string() } else { format!("DISTINCT {}", keys.join(", ")) };
    let mut conditions: Vec<String> = view.filter.iter().map(|f| expr_sql(view, catalog, f)).collect();
    conditions.push(format!("({extra})"));
    if keys.is_empty() {
        // No key: one group, listed once whatever the number of events.
        return format!(
            "INSERT INTO {t} SELECT WHERE EXISTS (SELECT 1 FROM {source} WHERE {}) AND NOT EXISTS (SELECT 1 FROM {t})",
            conditions.join(" AND "),
            t = groups_table(&view.name)
        );
    }
    format!("INSERT INTO {} SELECT {select} FROM {source} WHERE {}", groups_table(&view.name), conditions.join(" AND "))
}

/// Registers the rebuild of `view` (under the views lock, exclusive): an
/// empty shadow replaces any left by a run cut short, and the view is marked
/// rebuilding. Returns the mark, which `swap` checks. The caller moves the
/// generation once for all its views.
pub async fn begin(tx: &Transaction<'_>, view: &ViewDef) -> Result<String, tokio_postgres::Error> {
    let name = &view.name;
    tx.batch_execute(&format!("DROP TABLE IF EXISTS {};", shadow(name))).await?;
    tx.batch_execute(&sql::state_table_ddl(view, &shadow(name), &format!("{name}_mrel_new_keys"))).await?;
    let row = tx.query_one("UPDATE chronos.views SET rebuilding = clock_timestamp() WHERE name = $1 RETURNING rebuilding::text", &[name]).await?;
    Ok(row.get(0))
}

/// Clears every rebuilding mark and shadow (runs cut short); the caller
/// holds the rebuild lock, so none of them is running. Returns the views.
pub async fn clear_stale(tx: &Transaction<'_>) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = tx.query("UPDATE chronos.views SET rebuilding = NULL WHERE rebuilding IS NOT NULL RETURNING name", &[]).await?;
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    for n in &names {
        tx.batch_execute(&format!("DROP TABLE IF EXISTS {};", shadow(n))).await?;
    }
    Ok(names)
}

/// Why a swap could not happen.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("view `{0}` was dropped, added again or rebuilt by someone else while it was rebuilt: nothing replaced; run the rebuild again")]
    Moved(String),
    #[error("view `{0}` broke while it was rebuilt ({1}): its old state is kept; fix the cause and rebuild it again")]
    Broke(String, String),
    #[error("{0}")]
    Db(#[from] tokio_postgres::Error),
}

/// Puts the shadow's groups of `scope` in place of the live ones (under the
/// views lock, exclusive; the caller moves the generation). A whole rebuild
/// also repairs a broken view.
pub async fn swap(tx: &Transaction<'_>, view: &ViewDef, scope: &Scope, mark: &str) -> Result<(), SwapError> {
    let name = &view.name;
    let row = tx.query_opt("SELECT rebuilding::text, broken, broken_at > rebuilding FROM chronos.views WHERE name = $1", &[name]).await?;
    let Some(row) = row.filter(|r| r.get::<_, Option<String>>(0).as_deref() == Some(mark)) else {
        return Err(SwapError::Moved(name.clone()));
    };
    if row.get::<_, Option<bool>>(2) == Some(true) {
        return Err(SwapError::Broke(name.clone(), row.get(1)));
    }
    let (live, new) = (sql::mrel(view), shadow(name));
    if *scope == Scope::All {
        tx.batch_execute(&format!(
            "DROP VIEW IF EXISTS {companion}; DROP TABLE {live}; ALTER TABLE {new} RENAME TO {live_name}; ALTER INDEX {new_index} RENAME TO {index}; {view_ddl}",
            companion = sql::companion(view),
            live_name = ident(&format!("{name}_mrel")),
            new_index = shadow_index(name),
            index = ident(&format!("{name}_mrel_keys")),
            view_ddl = sql::companion_ddl(view),
        ))
        .await?;
        tx.execute("UPDATE chronos.views SET rebuilding = NULL, broken = NULL, broken_at = NULL, backfilled = true WHERE name = $1", &[name]).await?;
    } else {
        let cols = state_column_list(view).join(", ");
        let (l, s) = (on_state(view, scope, "l").expect("a partial scope"), on_state(view, scope, "s").expect("a partial scope"));
        tx.batch_execute(&format!(
            "DELETE FROM {live} l WHERE {l}; INSERT INTO {live} ({cols}) SELECT {cols} FROM {new} s WHERE {s}; DROP TABLE {new};"
        ))
        .await?;
        tx.execute("UPDATE chronos.views SET rebuilding = NULL WHERE name = $1", &[name]).await?;
    }
    if *scope == Scope::Groups {
        tx.batch_execute(&format!("DROP TABLE IF EXISTS {};", groups_table(name))).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{built_in_events, EventCatalog};
    use crate::views::parse::parse_views;

    fn view(sql: &str) -> (ViewDef, EventCatalog) {
        let catalog = EventCatalog::from_config(&built_in_events(), 2048);
        (parse_views(sql, &catalog).unwrap().remove(0), catalog)
    }

    #[test]
    fn days_are_rebuilt_apart_only_with_a_bucket_of_a_day_or_less() {
        let key = |sql: &str| day_bucket_key(&view(sql).0).map(str::to_string);
        assert_eq!(key("CREATE VIEW v AS SELECT date_trunc('hour', time) AS h, count(*) FROM clicks GROUP BY h").as_deref(), Some("h"));
        assert_eq!(
            key("CREATE VIEW v AS SELECT time_bucket(interval '5 minutes', time) AS b, count(*) FROM clicks GROUP BY b").as_deref(),
            Some("b")
        );
        assert_eq!(key("CREATE VIEW v AS SELECT date_trunc('day', time) AS d, count(*) FROM clicks GROUP BY d").as_deref(), Some("d"));
        for none in [
            "CREATE VIEW v AS SELECT date_trunc('week', time) AS w, count(*) FROM clicks GROUP BY w",
            "CREATE VIEW v AS SELECT time_bucket(interval '7 hours', time) AS b, count(*) FROM clicks GROUP BY b",
            "CREATE VIEW v AS SELECT date_trunc('hour', received_at) AS h, count(*) FROM clicks GROUP BY h",
            "CREATE VIEW v AS SELECT element, count(*) FROM clicks GROUP BY element",
        ] {
            assert_eq!(key(none), None, "{none}");
        }
    }

    #[test]
    fn a_scope_reads_the_same_groups_in_the_state_and_in_the_events() {
        let (v, catalog) = view("CREATE VIEW v AS SELECT element, date_trunc('hour', time) AS h, count(*) FROM clicks GROUP BY element, h");
        let days = Scope::Days { from: 3, to: 4 };
        assert_eq!(
            on_state(&v, &days, "l").unwrap(),
            "l.\"h\" >= (timestamptz 'epoch' + interval '1 day' * 3) AND l.\"h\" < (timestamptz 'epoch' + interval '1 day' * 5)"
        );
        assert_eq!(
            on_source(&v, &catalog, &days).unwrap(),
            "time >= (timestamptz 'epoch' + interval '1 day' * 3) AND time < (timestamptz 'epoch' + interval '1 day' * 5)"
        );
        let g = on_source(&v, &catalog, &Scope::Groups).unwrap();
        assert!(g.starts_with("EXISTS (SELECT 1 FROM views.\"v_mrel_grp\" g WHERE g.\"element\" IS NOT DISTINCT FROM ("), "{g}");
        assert!(g.contains("g.\"h\" IS NOT DISTINCT FROM (date_trunc("), "{g}");
        assert_eq!(on_state(&v, &Scope::All, "l"), None);
    }

    #[test]
    fn while_rebuilt_a_loader_writes_both_state_tables_in_one_statement() {
        let (v, _) = view("CREATE VIEW v AS SELECT element, count(DISTINCT session_id) AS d FROM clicks GROUP BY element");
        let one = sql::upsert(&v);
        let both = sql::upsert_into(&v, &[sql::mrel(&v), shadow("v")]);
        assert!(one.starts_with("INSERT INTO views.\"v_mrel\" AS t"), "{one}");
        assert!(both.starts_with("WITH s AS MATERIALIZED (SELECT"), "{both}");
        assert!(both.contains("w0 AS (INSERT INTO views.\"v_mrel\" AS t"), "{both}");
        assert!(both.contains("\nINSERT INTO views.\"v_mrel_new\" AS t"), "{both}");
        assert_eq!(both.matches("ON CONFLICT").count(), 2);
    }
}
