//! Continuous views (the PipelineDB part): SQL definitions parsed and checked
//! against the catalog (`parse`), evaluated on each loader transaction's
//! events in Rust (`expr`, `state`) and merged into each view's state table
//! with one upsert per view in the same transaction as the raw rows (`sql`),
//! so views are exactly-once like the rows.
//!
//! Definitions live in `chronos.views` (created with the schema, see
//! `store::schema::INTERNALS`); `chronos.view_generation` changes
//! with every add or drop. A loader transaction takes the views lock shared
//! and reads the generation; `add` and `drop` take it exclusively, so every
//! transaction either committed before a change (and is in the backfill) or
//! sees the new set of views.

pub mod expr;
pub mod keysize;
pub mod parse;
pub mod shadow;
pub mod sql;
pub mod state;

use std::sync::{Arc, Mutex};

use tokio_postgres::{Client, GenericClient, Transaction};

use crate::catalog::EventCatalog;
use crate::store::schema::ident;
pub use parse::{parse_views, ViewDef, ViewError};

/// Advisory lock key of the views set (shared by loaders, exclusive for add/drop).
pub use crate::store::locks::VIEWS as VIEWS_LOCK;

/// The views shipped with Chronos, created by `chronos install-pipeline`.
pub const DEFAULTS: &str = include_str!("../../sql/views/defaults.sql");

/// A checked view with its upsert statement.
pub struct LiveView {
    pub def: ViewDef,
    pub upsert: String,
}

/// The views of one generation.
#[derive(Default)]
pub struct ViewSet {
    pub generation: i64,
    pub views: Vec<LiveView>,
}

/// The current view set, shared by the loaders of one chronosd.
pub struct Registry {
    current: Mutex<Arc<ViewSet>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry { current: Mutex::new(Arc::new(ViewSet { generation: -1, views: Vec::new() })) }
    }
}

impl Registry {
    pub fn current(&self) -> Arc<ViewSet> {
        self.current.lock().unwrap().clone()
    }

    /// Takes the views lock (shared) in `tx` and returns the view set of the
    /// generation it sees, loading definitions when the generation moved.
    pub async fn lock_current(&self, tx: &Transaction<'_>, catalog: &EventCatalog) -> Result<Arc<ViewSet>, tokio_postgres::Error> {
        // Pipelined, and in this order: the generation is read after the lock is held.
        let (_, generation) =
            futures_util::future::try_join(tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&VIEWS_LOCK]), tx.query_opt(GENERATION, &[]))
                .await?;
        self.at(tx, generation.map(|r| r.get(0)).unwrap_or(0), catalog).await
    }

    /// The view set stored now, read without the lock: for a loader about to
    /// decode, whose commit then checks the generation under the lock.
    pub async fn refresh(&self, client: &impl GenericClient, catalog: &EventCatalog) -> Result<Arc<ViewSet>, tokio_postgres::Error> {
        let generation = client.query_opt(GENERATION, &[]).await?.map(|r| r.get(0)).unwrap_or(0);
        self.at(client, generation, catalog).await
    }

    /// The view set of `generation`, loaded from `chronos.views` when it is not the current one.
    async fn at(&self, client: &impl GenericClient, generation: i64, catalog: &EventCatalog) -> Result<Arc<ViewSet>, tokio_postgres::Error> {
        let current = self.current();
        if current.generation == generation {
            return Ok(current);
        }
        // A broken view is not maintained until it is rebuilt (or dropped and
        // added again); while it is rebuilt, only its shadow is. A view being
        // rebuilt has its shadow written too (see `shadow`).
        let rows = client.query(LIVE_VIEWS, &[]).await?;
        let mut views = Vec::new();
        for r in rows {
            let (name, definition, broken, rebuilding): (String, String, bool, bool) = (r.get(0), r.get(1), r.get(2), r.get(3));
            match parse_views(&definition, catalog) {
                Ok(mut defs) if defs.len() == 1 => {
                    let def = defs.remove(0);
                    let tables: Vec<String> =
                        [(!broken).then(|| sql::mrel(&def)), rebuilding.then(|| shadow::shadow(&name))].into_iter().flatten().collect();
                    // LIVE_VIEWS returns no view with neither (broken and not rebuilt).
                    if !tables.is_empty() {
                        views.push(LiveView { upsert: sql::upsert_into(&def, &tables), def });
                    }
                }
                Ok(_) => tracing::error!(view = %name, "Stored view definition is not one statement; view not maintained."),
                Err(e) => tracing::error!(view = %name, error = %e, "Stored view no longer fits the catalog; view not maintained."),
            }
        }
        tracing::info!(generation, views = views.len(), "Loaded continuous views.");
        let set = Arc::new(ViewSet { generation, views });
        *self.current.lock().unwrap() = set.clone();
        Ok(set)
    }
}

const GENERATION: &str = "SELECT generation FROM chronos.view_generation";
/// The views loaders write: maintained ones, and those being rebuilt (a view
/// that broke during its rebuild is left alone: the rebuild then fails).
const LIVE_VIEWS: &str = "SELECT name, definition, broken IS NOT NULL, rebuilding IS NOT NULL FROM chronos.views
     WHERE broken IS NULL OR (rebuilding IS NOT NULL AND broken_at < rebuilding) ORDER BY name";
/// Every change to the set of maintained views (add, drop, rebuild, broken) moves it.
pub(crate) const NEXT_GENERATION: &str = "UPDATE chronos.view_generation SET generation = generation + 1";

/// A view's statement failed in a loader's transaction: which view.
#[derive(Debug, thiserror::Error)]
#[error("continuous view `{view}`: {source}")]
pub struct ViewFailure {
    pub view: String,
    #[source]
    pub source: tokio_postgres::Error,
}

/// Marks `name` broken (why: `reason`) so that no loader maintains it any
/// more, under the views lock and with a new generation, as `drop` does; the
/// view's state stays readable as it was. `false`: no such view, or already broken.
pub async fn mark_broken(client: &mut Client, name: &str, reason: &str) -> Result<bool, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&VIEWS_LOCK]).await?;
    let reason = crate::store::internals::storable_text(reason);
    let marked =
        tx.execute("UPDATE chronos.views SET broken = $2, broken_at = now() WHERE name = $1 AND broken IS NULL", &[&name, &reason.as_ref()]).await?;
    if marked > 0 {
        tx.execute(NEXT_GENERATION, &[]).await?;
    }
    tx.commit().await?;
    Ok(marked > 0)
}

/// Summary of a stored view, for `chronos views list`.
pub struct ViewInfo {
    pub name: String,
    pub source: String,
    pub rows: i64,
    pub created_at: String,
    pub definition: String,
    /// Why the view is no longer maintained (`None`: it is).
    pub broken: Option<String>,
    /// A rebuild began and has not swapped (running, or cut short).
    pub rebuilding: bool,
}

/// Why adding or dropping a view failed.
#[derive(Debug, thiserror::Error)]
pub enum ViewsError {
    #[error("{0}")]
    Definition(#[from] ViewError),
    #[error("view `{0}` already exists; drop it first (chronos views drop {0})")]
    Exists(String),
    #[error("no view named `{0}` (chronos views list shows them)")]
    Missing(String),
    #[error(
        "view `{view}` needs the PostgreSQL extension `{ext}`, which this server does not have; install it (Debian: apt install postgresql-15-{ext})"
    )]
    Extension { view: String, ext: &'static str },
    #[error("{0}")]
    Db(#[from] tokio_postgres::Error),
}

/// Adds views (all or none), optionally filled from the raw tables; no restart needed.
pub async fn add(client: &mut Client, defs: &[ViewDef], catalog: &EventCatalog, backfill: bool) -> Result<(), ViewsError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&VIEWS_LOCK]).await?;
    add_in(&tx, defs, catalog, backfill).await?;
    tx.commit().await?;
    Ok(())
}

async fn add_in(tx: &Transaction<'_>, defs: &[ViewDef], catalog: &EventCatalog, backfill: bool) -> Result<(), ViewsError> {
    for def in defs {
        if tx.query_opt("SELECT 1 FROM chronos.views WHERE name = $1", &[&def.name]).await?.is_some() {
            return Err(ViewsError::Exists(def.name.clone()));
        }
        keysize::check(def, catalog)?;
        for ext in sql::extensions(def) {
            let available = tx.query_opt("SELECT 1 FROM pg_available_extensions WHERE name = $1", &[&ext]).await?.is_some();
            if !available {
                return Err(ViewsError::Extension { view: def.name.clone(), ext });
            }
            tx.batch_execute(&format!("CREATE EXTENSION IF NOT EXISTS {}", ident(ext))).await?;
        }
        tx.batch_execute(&sql::ddl(def)).await?;
        if backfill {
            tx.batch_execute(&sql::backfill(def, catalog)).await?;
        }
        tx.execute(
            "INSERT INTO chronos.views (name, source, definition, backfilled) VALUES ($1, $2, $3, $4)",
            &[&def.name, &def.source_name, &def.definition, &backfill],
        )
        .await?;
    }
    tx.execute(NEXT_GENERATION, &[]).await?;
    Ok(())
}

/// Drops a view and its state; loaders stop maintaining it at their next transaction.
pub async fn drop(client: &mut Client, name: &str) -> Result<(), ViewsError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&VIEWS_LOCK]).await?;
    if tx.execute("DELETE FROM chronos.views WHERE name = $1", &[&name]).await? == 0 {
        return Err(ViewsError::Missing(name.to_string()));
    }
    tx.batch_execute(&sql::drop_sql(name)).await?;
    tx.batch_execute(&format!("DROP TABLE IF EXISTS {}; DROP TABLE IF EXISTS {};", shadow::shadow(name), shadow::groups_table(name))).await?;
    tx.execute(NEXT_GENERATION, &[]).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn list(client: &Client) -> Result<Vec<ViewInfo>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT name, source, to_char(created_at, 'YYYY-MM-DD HH24:MI:SS TZ'), definition, broken, rebuilding IS NOT NULL
             FROM chronos.views ORDER BY name",
            &[],
        )
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let name: String = r.get(0);
        let count = client
            .query_one(&format!("SELECT count(*) FROM views.{}", ident(&format!("{name}_mrel"))), &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(-1);
        out.push(ViewInfo {
            name,
            source: r.get(1),
            rows: count,
            created_at: r.get(2),
            definition: r.get(3),
            broken: r.get(4),
            rebuilding: r.get(5),
        });
    }
    Ok(out)
}

/// The views part of a schema install, in one transaction under the views
/// lock: the default views on a fresh install (with backfill; later runs leave
/// the set alone, so a dropped default stays dropped), and a rebuild from the
/// raw tables of any view whose state table is missing or of an older layout.
/// Returns (defaults added, names rebuilt).
pub async fn install(client: &mut Client, catalog: &EventCatalog) -> Result<(usize, Vec<String>), ViewsError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&VIEWS_LOCK]).await?;
    let generation: i64 = tx.query_one("SELECT generation FROM chronos.view_generation", &[]).await?.get(0);
    let added = if generation == 0 { add_defaults(&tx, catalog).await? } else { 0 };
    let rebuilt = rebuild_outdated(&tx, catalog).await?;
    tx.commit().await?;
    Ok((added, rebuilt))
}

/// Adds the default views a server can hold (they need hll) and says which it skipped.
async fn add_defaults(tx: &Transaction<'_>, catalog: &EventCatalog) -> Result<usize, ViewsError> {
    let available: Vec<String> =
        tx.query("SELECT name FROM pg_available_extensions WHERE name IN ('hll', 'tdigest')", &[]).await?.iter().map(|r| r.get(0)).collect();
    let (usable, skipped): (Vec<ViewDef>, Vec<ViewDef>) =
        parse_views(DEFAULTS, catalog)?.into_iter().partition(|d| sql::extensions(d).iter().all(|e| available.iter().any(|a| a == e)));
    for d in &skipped {
        tracing::warn!(view = %d.name, "Default view skipped: a PostgreSQL extension it needs is missing.");
    }
    // With limits raised past the defaults, a default view's keys may no longer fit an index row.
    let mut fitting = Vec::with_capacity(usable.len());
    for d in usable {
        match keysize::check(&d, catalog) {
            Ok(()) => fitting.push(d),
            Err(why) => tracing::warn!(view = %d.name, why = %why, "Default view skipped: its keys could pass PostgreSQL's index row limit."),
        }
    }
    let usable = fitting;
    add_in(tx, &usable, catalog, true).await?;
    Ok(usable.len())
}

/// Rebuilds, from the raw tables, the views whose state table is missing or
/// has an older layout (no `__shard` column, before per-loader rows): a
/// loader cannot write such a view, and the raw tables hold every event the
/// view ever saw. Returns the names rebuilt.
async fn rebuild_outdated(tx: &Transaction<'_>, catalog: &EventCatalog) -> Result<Vec<String>, ViewsError> {
    let rows = tx
        .query(
            "SELECT v.name, v.definition FROM chronos.views v WHERE NOT EXISTS (
               SELECT 1 FROM information_schema.columns c
               WHERE c.table_schema = 'views' AND c.table_name = v.name || '_mrel' AND c.column_name = '__shard')
             ORDER BY v.name",
            &[],
        )
        .await?;
    let mut rebuilt = Vec::new();
    for r in rows {
        let (name, definition): (String, String) = (r.get(0), r.get(1));
        let def = match parse_views(&definition, catalog) {
            Ok(mut defs) if defs.len() == 1 => defs.remove(0),
            _ => {
                tracing::error!(view = %name, "Cannot rebuild a view whose definition no longer fits the catalog.");
                continue;
            }
        };
        tx.batch_execute(&sql::drop_sql(&name)).await?;
        tx.batch_execute(&sql::ddl(&def)).await?;
        tx.batch_execute(&sql::backfill(&def, catalog)).await?;
        tx.execute("UPDATE chronos.views SET backfilled = true WHERE name = $1", &[&name]).await?;
        rebuilt.push(name);
    }
    if !rebuilt.is_empty() {
        tx.execute(NEXT_GENERATION, &[]).await?;
    }
    Ok(rebuilt)
}

/// Partial aggregates of every view of one generation over the events of one
/// flush, fed while the loader decodes them.
pub struct Accumulator {
    pub set: Arc<ViewSet>,
    pub partials: Vec<state::Partial>,
}

impl Accumulator {
    pub fn new(set: Arc<ViewSet>) -> Self {
        let partials = set.views.iter().map(|_| state::Partial::default()).collect();
        Accumulator { set, partials }
    }

    /// The view generation the partials were computed for.
    pub fn generation(&self) -> i64 {
        self.set.generation
    }

    pub fn add(&mut self, type_index: usize, row: &crate::record::Row<'_, '_>) {
        for (v, p) in self.set.views.iter().zip(self.partials.iter_mut()) {
            p.add(&v.def, type_index, row);
        }
    }

    /// No group in any view.
    pub fn is_empty(&self) -> bool {
        self.partials.iter().all(state::Partial::is_empty)
    }

    /// Runs one upsert per view with groups, pipelined on the connection;
    /// `upserts` are the views' upsert statements prepared on it, in order.
    /// `shard` is the loader's Kafka partition (its own rows in every view).
    /// A failed upsert names its view (the statements after it in the
    /// pipeline fail only because the transaction is aborted).
    pub async fn apply(&self, tx: &Transaction<'_>, upserts: &[tokio_postgres::Statement], shard: i32) -> Result<u64, ViewFailure> {
        let mut params: Vec<(usize, Vec<sql::Param>)> = Vec::new();
        for (i, (v, p)) in self.set.views.iter().zip(&self.partials).enumerate() {
            if !p.is_empty() {
                params.push((i, sql::upsert_params(&v.def, p, shard)));
            }
        }
        let futures = params.iter().map(|(i, ps)| {
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = ps.iter().map(|p| p.as_ref() as _).collect();
            let upsert = &upserts[*i];
            async move { tx.execute(upsert, &refs).await.map_err(|source| ViewFailure { view: self.set.views[*i].def.name.clone(), source }) }
        });
        // Every answer, then the first failure in statement order: the one at fault.
        let mut total = 0;
        for count in futures_util::future::join_all(futures).await {
            total += count?;
        }
        Ok(total)
    }
}
