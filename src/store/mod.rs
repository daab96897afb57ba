//! PostgreSQL storage: schema from the catalog (install, evolution, daily
//! partitions) and the internals the loaders use.

pub mod copy;
pub mod internals;
pub mod locks;
pub mod schema;
pub mod sessions;
pub mod sqlstate;
pub mod tls;
pub mod visits;

use std::time::Duration;

use anyhow::{Context, Result};
use tokio_postgres::Client;

use crate::catalog::EventCatalog;

/// Connects, with the connection driven on the current runtime; TLS as the
/// URL's `sslmode` and `sslrootcert` say (`tls`).
pub async fn connect(url: &str) -> Result<Client> {
    let target = tls::parse(url)?;
    // With sslmode=disable tokio-postgres never uses the connector.
    let connector = tls::connector(target.mode, target.root_cert.as_deref())?;
    let (client, conn) = target.config.connect(connector).await.map_err(|e| tls::explain(&e, url, target.mode))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "PostgreSQL connection closed.");
        }
    });
    Ok(client)
}

pub use tls::redact;

/// Today as days since the Unix epoch (UTC).
pub fn today() -> i64 {
    crate::clock::now_ms() / crate::clock::DAY_MS
}

/// What `install` did.
#[derive(Debug)]
pub struct Installed {
    pub layout: schema::Layout,
    /// Why the tables are not hypertables though TimescaleDB is installed
    /// (logged already; the CLI prints it).
    pub warning: Option<String>,
}

/// Applies the storage schema idempotently (schema `chronos`, the event
/// tables and their presenting views), under an advisory lock so that two
/// chronosd starting together do not race on CREATE … IF NOT EXISTS. The
/// continuous views come after, from `crate::install`.
pub async fn install_tables(client: &mut Client, catalog: &EventCatalog, load: &crate::config::LoadConfig) -> Result<Installed> {
    let tx = client.transaction().await?;
    // "already exists, skipping" notices are expected on every start.
    tx.batch_execute("SET LOCAL client_min_messages = warning").await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&locks::INSTALL]).await?;
    // The layout first: touching hypertables (any DDL, once TimescaleDB is
    // in the database) on a server that no longer preloads it ends the session.
    let (layout, warning) = layout(&tx, load).await?;
    tracing::info!(?layout, "Event tables layout.");
    tx.batch_execute(schema::INTERNALS).await.context("applying the schema (schema chronos)")?;
    let old: i32 = tx.query_one(schema::MOVE_EVENT_TABLES, &[]).await.context("moving the event tables of an earlier version")?.get(0);
    if old > 0 {
        tracing::info!(tables = old, "Moved the event tables of an earlier version to events_raw, their pages to chronos.batches.");
    }
    tx.batch_execute(&schema::tables_sql(catalog, today(), load.partitions_past_days, load.partitions_ahead_days, layout))
        .await
        .context("applying the schema (event tables)")?;
    tx.commit().await?;
    check_column_types(client, catalog).await?;
    Ok(Installed { layout, warning })
}

/// What to do when TimescaleDB is installed but not preloaded (it cannot be
/// created then, and touching it ends the session).
pub const PRELOAD_FIX: &str = "TimescaleDB is installed in this PostgreSQL server but not preloaded, so it cannot be used: \
set shared_preload_libraries = 'timescaledb' in postgresql.conf and restart PostgreSQL";

/// The layout of the event tables: the one they already have (tables are
/// never converted), else hypertables when TimescaleDB is wanted and can be
/// created here (installed and preloaded). `auto` falls back to native
/// partitions with one warning naming the fix; `always` refuses with it.
async fn layout(client: &impl tokio_postgres::GenericClient, load: &crate::config::LoadConfig) -> Result<(schema::Layout, Option<String>)> {
    use crate::config::Timescale;
    let hypertable = schema::Layout::Hypertable { chunk_hours: load.chunk_interval_hours };
    // Some(true): native partitions, Some(false): plain tables (hypertables).
    let existing = match event_tables(client).await? {
        (0, 0) => None,
        (native, _) => Some(native > 0),
    };
    let available = client.query_opt("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'", &[]).await?.is_some();
    let preloads: String = client.query_one("SELECT current_setting('shared_preload_libraries')", &[]).await?.get(0);
    let preloaded = preloads.split(',').any(|l| l.trim().trim_matches('"') == "timescaledb");
    Ok((match (existing, load.timescaledb, available, preloaded) {
        (Some(true), Timescale::Always, ..) => anyhow::bail!(
            "load.timescaledb = \"always\", but the event tables already exist with native partitions; tables are never converted in place (set \"auto\" or migrate them)"
        ),
        (Some(true), ..) => schema::Layout::Native,
        (Some(false), _, _, false) => anyhow::bail!("the event tables are hypertables, but {PRELOAD_FIX}"),
        (Some(false), ..) => hypertable,
        (None, Timescale::Never, ..) | (None, Timescale::Auto, false, _) => schema::Layout::Native,
        (None, Timescale::Always, false, _) => anyhow::bail!(
            "load.timescaledb = \"always\", but this PostgreSQL server has no timescaledb extension (pg_available_extensions); install TimescaleDB or set \"auto\""
        ),
        (None, Timescale::Always, true, false) => anyhow::bail!("load.timescaledb = \"always\", but {PRELOAD_FIX}"),
        (None, Timescale::Auto, true, false) => {
            let warning = format!("event tables get native partitions, not hypertables: {PRELOAD_FIX}");
            tracing::warn!("{warning}.");
            return Ok((schema::Layout::Native, Some(warning)));
        }
        (None, _, true, true) => hypertable,
    }, None))
}

/// The raw event tables (schema `events_raw`, or `events` for tables of an
/// earlier version, where it holds only views now): (partitioned, plain),
/// partitions not counted.
async fn event_tables(client: &impl tokio_postgres::GenericClient) -> Result<(i64, i64)> {
    let r = client
        .query_one(
            "SELECT count(*) FILTER (WHERE c.relkind = 'p'), count(*) FILTER (WHERE c.relkind = 'r')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname IN ('events_raw', 'events') AND c.relkind IN ('r', 'p') AND NOT c.relispartition",
            &[],
        )
        .await?;
    Ok((r.get(0), r.get(1)))
}

/// The event tables' layout in words, for `chronos status`: hypertables
/// (TimescaleDB's version, chunk width, chunk count) or native daily partitions.
pub async fn layout_summary(client: &Client) -> Result<String> {
    let (native, plain) = event_tables(client).await?;
    if native + plain == 0 {
        return Ok("no event tables yet (chronosd creates them)".into());
    }
    if plain == 0 {
        let parts: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'events_raw'",
                &[],
            )
            .await?
            .get(0);
        return Ok(format!("native daily partitions ({native} tables, {parts} partitions)"));
    }
    let row = client
        .query_one(
            "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'),
                    (SELECT min(extract(epoch FROM time_interval))::bigint FROM timescaledb_information.dimensions WHERE hypertable_schema = 'events_raw'),
                    (SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_schema = 'events_raw')",
            &[],
        )
        .await
        .context("reading TimescaleDB's catalog")?;
    let (version, secs, chunks): (Option<String>, Option<i64>, i64) = (row.get(0), row.get(1), row.get(2));
    Ok(format!("TimescaleDB {} hypertables ({plain} tables, {}-hour chunks, {chunks} chunks)", version.unwrap_or_default(), secs.unwrap_or(0) / 3600))
}

/// Refuses to start when a catalog attribute's type differs from its column's:
/// COPY would fail on every flush. Types are never changed online.
pub async fn check_column_types(client: &Client, catalog: &EventCatalog) -> Result<()> {
    let rows = client
        .query(
            "SELECT table_name, column_name, CASE WHEN data_type = 'ARRAY' THEN udt_name ELSE data_type END
             FROM information_schema.columns WHERE table_schema = 'events_raw'",
            &[],
        )
        .await?;
    let mut errors = Vec::new();
    for ty in catalog.types() {
        for a in &ty.attributes {
            let want = match schema::sql_type(a.ty) {
                "text[]" => "_text",
                t => t,
            };
            let found = rows.iter().find(|r| r.get::<_, &str>(0) == &*ty.name && r.get::<_, &str>(1) == &*a.name);
            if let Some(r) = found {
                let have: &str = r.get(2);
                if have != want {
                    errors.push(format!(
                        "events.{}.{} is {have} in PostgreSQL but {want} in the catalog (events.{}): types are not changed online; add a new attribute instead",
                        ty.name, a.name, ty.name
                    ));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{}", errors.join("\n"))
    }
}

/// Creates the coming days' partitions (run periodically).
pub async fn ensure_partitions(client: &Client, catalog: &EventCatalog, ahead_days: i64) -> Result<()> {
    for ty in catalog.types() {
        // Hypertables get their chunks from TimescaleDB.
        let native = client.query_opt("SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass($1)", &[&schema::table(ty)]).await?.is_some();
        if !native {
            continue;
        }
        for day in today()..=today() + ahead_days {
            // One by one: a day that already has rows in the default partition
            // cannot get its own partition; its rows stay in the default one.
            if let Err(e) = client.batch_execute(&schema::day_partition_ddl(ty, day)).await {
                tracing::warn!(table = %ty.name, day, error = %e, "Cannot create a daily partition.");
            }
        }
    }
    Ok(())
}

/// Partition upkeep and batch-id pruning, on a connection of its own that is
/// opened again whenever PostgreSQL went away (a restart, a failover).
pub struct Maintenance {
    url: String,
    catalog: EventCatalog,
    ahead_days: i64,
    retention: Duration,
    client: Option<Client>,
}

impl Maintenance {
    pub fn new(url: &str, catalog: EventCatalog, ahead_days: i64, retention: Duration) -> Self {
        Maintenance { url: url.to_string(), catalog, ahead_days, retention, client: None }
    }

    /// Runs both tasks once, connecting first when needed; a connection that
    /// failed is replaced and the tasks tried once more. Returns the batch ids pruned.
    pub async fn run_once(&mut self) -> Result<u64> {
        match self.try_once().await {
            Err(_) if self.client.as_ref().is_none_or(Client::is_closed) => {
                self.client = None;
                self.try_once().await
            }
            other => other,
        }
    }

    async fn try_once(&mut self) -> Result<u64> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(connect(&self.url).await?);
        }
        let client = self.client.as_ref().expect("connected above");
        ensure_partitions(client, &self.catalog, self.ahead_days).await.context("partition upkeep")?;
        prune_seen_batches(client, self.retention).await.context("pruning seen batch ids")
    }

    /// Runs the tasks every `every`, and a minute after a failure.
    pub async fn run(mut self, every: Duration) {
        loop {
            let wait = match self.run_once().await {
                Ok(_) => every,
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "Maintenance failed; trying again in a minute.");
                    every.min(Duration::from_secs(60))
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Forgets batch ids older than `retention` (retries come within minutes);
/// imported batches' ids are kept.
pub async fn prune_seen_batches(client: &Client, retention: Duration) -> Result<u64> {
    let secs = retention.as_secs_f64();
    Ok(client.execute("DELETE FROM chronos.seen_batches WHERE seen_at < now() - make_interval(secs => $1) AND NOT kept", &[&secs]).await?)
}
