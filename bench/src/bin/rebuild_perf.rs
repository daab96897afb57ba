//! `rebuild_perf [rows]`: how fast `chronos views rebuild` reads events, from
//! PostgreSQL and from the Parquet archive: `rows` clicks on a day kept in
//! PostgreSQL and `rows` on a day archived (written, verified, dropped), in
//! one database per table layout (native partitions, TimescaleDB hypertable)
//! of one PostgreSQL, then one view rebuilt with the count only and one with
//! every aggregate kind. Method and results: perf/views.md.

use std::time::Instant;

use anyhow::{Context, Result};
use chronos::catalog::EventCatalog;
use chronos::config::{Config, Timescale};
use chronos::lifecycle::archive::Archiver;
use chronos::lifecycle::day_str;
use chronos::lifecycle::rebuild::{rebuild_views, ArchiveLock};
use chronos::rt::block_on;
use chronos::stack::postgres::PostgresServer;

/// Rows inserted per statement.
const STEP: i64 = 250_000;

const VIEWS: &str = "
CREATE VIEW perf_count AS SELECT element, count(*) FROM clicks GROUP BY element;
CREATE VIEW perf_all AS
  SELECT element, date_trunc('hour', time) AS hour, count(*), sum(x) AS sx, min(y) AS mny, max(y) AS mxy, avg(x) AS ax,
         count(DISTINCT session_id) AS sessions, percentile_cont(0.95) WITHIN GROUP (ORDER BY x) AS p95
  FROM clicks GROUP BY element, hour;";

/// Inserts `rows` clicks (and their batches' pages) spread over `day`.
async fn insert_day(client: &tokio_postgres::Client, day: i64, rows: i64) -> Result<()> {
    let start = format!("timestamptz '{} 00:00:00+00'", day_str(day));
    let mut done = 0;
    while done < rows {
        let n = STEP.min(rows - done);
        client
            .batch_execute(&format!(
                "INSERT INTO events_raw.clicks (time, client_time, received_at, time_flagged, session_id, batch_id, position, key_id, client_ip,
                                                element, buttons, x, y, selector)
                 SELECT t, t, t + interval '20 ms', false, md5('s{day}' || (i / 50)), md5('{day}' || (i / 25))::uuid, (i % 25)::int, 'web', NULL,
                        CASE WHEN i % 3 = 0 THEN 'A' ELSE 'BUTTON' END, 1, (random() * 1280)::int, (random() * 800)::int, NULL
                 FROM generate_series({done}, {done} + {n} - 1) i,
                      LATERAL (SELECT {start} + i * interval '1 second' * 86399 / {rows}) s(t);
                 INSERT INTO chronos.batches (batch_id, received_at, session_id, metadata)
                 SELECT md5('{day}' || b)::uuid, {start}, md5('s{day}' || (b / 2)), jsonb_build_object('url', 'https://shop.example.com/p/' || (b % 4096))
                 FROM generate_series({done} / 25, ({done} + {n} - 1) / 25) b
                 ON CONFLICT DO NOTHING"
            ))
            .await?;
        done += n;
        eprint!("\r{} of {rows} rows inserted on {}", done, day_str(day));
    }
    eprintln!();
    Ok(())
}

fn main() -> Result<()> {
    let rows = chronos_bench::stack::rows_arg()?;
    let dir = chronos_bench::stack::perf_dir("chronos-rebuild-perf-")?;
    let pg = PostgresServer::start_in(&dir.path().join("pg"))?;
    let today = chronos::store::today();
    println!("{rows} clicks in PostgreSQL ({}) and {rows} archived ({}), per layout", day_str(today - 1), day_str(today - 5));
    println!("| layout | view | PostgreSQL events/s | Parquet events/s | total s |");
    println!("|---|---|---|---|---|");
    block_on(async {
        let admin = chronos::store::connect(&pg.url()).await?;
        for (name, mode) in [("native", Timescale::Never), ("hypertable", Timescale::Always)] {
            admin.batch_execute(&format!("CREATE DATABASE {name}")).await?;
            let mut config = Config::default();
            config.postgres.url = format!("{}/{name}", pg.url().rsplit_once('/').unwrap().0);
            config.load.timescaledb = mode;
            config.load.max_past_secs = 86_400;
            config.load.partitions_past_days = 6;
            config.retention.raw_days = 3;
            config.retention.archive = dir.path().join(format!("archive-{name}")).display().to_string();
            measure(&config, name, rows, today).await?;
        }
        anyhow::Ok(())
    })
}

/// Fills one database, archives the older day, rebuilds each view and prints its row.
async fn measure(config: &Config, layout: &str, rows: i64, today: i64) -> Result<()> {
    let catalog = EventCatalog::from_config(&config.events, config.limits.max_string_bytes);
    let mut client = chronos::store::connect(&config.postgres.url).await?;
    chronos::install(&mut client, &catalog, &config.load).await?;
    insert_day(&client, today - 5, rows).await?;
    let t = Instant::now();
    let report = Archiver::new(config)?.run(&mut client, &catalog, today).await?.context("the archive lock is free")?;
    anyhow::ensure!(report.errors.is_empty(), "{:?}", report.errors);
    eprintln!("{layout}: archived {} in {:.1} s", day_str(today - 5), t.elapsed().as_secs_f64());
    insert_day(&client, today - 1, rows).await?;
    client.batch_execute("VACUUM ANALYZE events_raw.clicks").await?;
    client.batch_execute("VACUUM ANALYZE chronos.batches").await?;
    client.batch_execute("CHECKPOINT").await?;
    let defs = chronos::views::parse_views(VIEWS, &catalog)?;
    chronos::views::add(&mut client, &defs, &catalog, false).await?;
    for view in ["perf_count", "perf_all"] {
        let t = Instant::now();
        let done = rebuild_views(config, &catalog, &[view], None, None, ArchiveLock::Take, |_| {}).await?;
        anyhow::ensure!(done.pg_rows == rows as u64 && done.archive_rows == rows as u64, "read {} + {} rows", done.pg_rows, done.archive_rows);
        println!(
            "| {layout} | {view} | {:.0} | {:.0} | {:.1} |",
            done.pg_rows as f64 / done.pg_secs,
            done.archive_rows as f64 / done.archive_secs,
            t.elapsed().as_secs_f64()
        );
        let n: i64 = client.query_one(&format!("SELECT sum(count)::bigint FROM views.{view}"), &[]).await?.get(0);
        anyhow::ensure!(n == 2 * rows, "{view} counts {n} events of {}", 2 * rows);
    }
    Ok(())
}
