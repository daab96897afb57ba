//! `lifecycle_perf [rows]`: what a day of clicks costs in PostgreSQL (native
//! daily partition, and TimescaleDB hypertable chunk: heap + indexes + TOAST)
//! against its Parquet archive file, and archive and restore throughput, in
//! one run on one PostgreSQL. Method and results: perf/lifecycle.md.

use std::time::Instant;

use anyhow::{Context, Result};
use chronos::catalog::EventCatalog;
use chronos::config::{Config, Timescale};
use chronos::lifecycle::archive::Archiver;
use chronos::lifecycle::day_str;
use chronos::rt::block_on;
use chronos::stack::postgres::PostgresServer;

/// Rows inserted per statement (progress is shown between them).
const STEP: i64 = 250_000;

fn main() -> Result<()> {
    let rows = chronos_bench::stack::rows_arg()?;
    let dir = chronos_bench::stack::perf_dir("chronos-lifecycle-perf-")?;
    let pg = PostgresServer::start_in(&dir.path().join("pg"))?;
    let today = chronos::store::today();
    let day = today - 5;
    println!("{rows} clicks on {} (a day past retention), PostgreSQL at {}", day_str(day), pg.url());
    println!("| layout | PostgreSQL bytes/event | Parquet bytes/event | ratio | archive rows/s | restore rows/s |");
    println!("|---|---|---|---|---|---|");
    block_on(async {
        let admin = chronos::store::connect(&pg.url()).await?;
        for (name, mode) in [("native", Timescale::Never), ("hypertable", Timescale::Always)] {
            admin.batch_execute(&format!("CREATE DATABASE {name}")).await?;
            let url = format!("{}/{name}", pg.url().rsplit_once('/').unwrap().0);
            let mut config = Config::default();
            config.postgres.url = url.clone();
            config.load.timescaledb = mode;
            config.load.max_past_secs = 86_400;
            config.load.partitions_past_days = 6;
            config.retention.raw_days = 3;
            config.retention.archive = dir.path().join(format!("archive-{name}")).display().to_string();
            let catalog = EventCatalog::from_config(&config.events, config.limits.max_string_bytes);
            let mut client = chronos::store::connect(&url).await?;
            chronos::install(&mut client, &catalog, &config.load).await?;

            let start = format!("timestamptz '{} 00:00:00+00'", day_str(day));
            let mut done = 0;
            while done < rows {
                let n = STEP.min(rows - done);
                client
                    .batch_execute(&format!(
                        "INSERT INTO events_raw.clicks (time, client_time, received_at, time_flagged, session_id, batch_id, position, key_id, client_ip,
                                                        element, buttons, x, y, selector)
                         SELECT t, t - (random() * 900)::int * interval '1 ms', t + (20 + random() * 200)::int * interval '1 ms', false,
                                md5('s' || (i / 50)), md5((i / 25)::text)::uuid, (i % 25)::int, 'web',
                                '198.51.' || (i / 50 % 250) || '.' || (i / 12500 % 250),
                                CASE WHEN i % 3 = 0 THEN 'A' ELSE 'BUTTON' END, 1, (random() * 1280)::int, (random() * 800)::int,
                                'main > div.product:nth-child(' || (random() * 40)::int || ') > button'
                         FROM generate_series({done}, {done} + {n} - 1) i,
                              LATERAL (SELECT {start} + i * interval '1 second' * 86399 / {rows}) s(t);
                         -- Each batch's page once, as the loaders store it.
                         INSERT INTO chronos.batches (batch_id, received_at, session_id, metadata)
                         SELECT md5(b::text)::uuid, {start} + b * 25 * interval '1 second' * 86399 / {rows}, md5('s' || (b / 2)),
                                jsonb_build_object('url', 'https://shop.example.com/p/' || p, 'title', 'Product ' || p || ' | Shop',
                                                   'language', 'en-GB', 'cookies_enabled', true, 'viewport', '1280x800')
                         FROM generate_series({done} / 25, ({done} + {n} - 1) / 25) b, LATERAL (SELECT hashint4(b) & 4095) s(p)
                         ON CONFLICT DO NOTHING"
                    ))
                    .await?;
                done += n;
                eprint!("\r{name}: {done} of {rows} rows inserted");
            }
            eprintln!();
            // One statement each: several in one query run as one transaction, which VACUUM refuses.
            client.batch_execute("VACUUM ANALYZE events_raw.clicks").await?;
            client.batch_execute("VACUUM ANALYZE chronos.batches").await?;
            client.batch_execute("CHECKPOINT").await?;
            let (y, m, d) = chronos::store::schema::civil_from_days(day);
            let pg_bytes: i64 = match mode {
                Timescale::Never => client
                    .query_one(&format!("SELECT pg_total_relation_size('events_raw.clicks_p{y:04}{m:02}{d:02}') + pg_total_relation_size('chronos.batches')"), &[])
                    .await?
                    .get(0),
                _ => client
                    .query_one("SELECT sum(pg_total_relation_size(c))::bigint + pg_total_relation_size('chronos.batches') FROM show_chunks('events_raw.clicks') c", &[])
                    .await?
                    .get(0),
            };

            let archiver = Archiver::new(&config)?;
            let t = Instant::now();
            let report = archiver.run(&mut client, &catalog, today).await?.context("the archive lock is free")?;
            let archive_secs = t.elapsed().as_secs_f64();
            anyhow::ensure!(report.errors.is_empty(), "{:?}", report.errors);
            let parquet_bytes: i64 = client
                .query_one("SELECT bytes FROM chronos.archives WHERE table_name = 'clicks' AND day = ($1::text)::date", &[&day_str(day)])
                .await?
                .get(0);
            let t = Instant::now();
            archiver.restore(&mut client, "clicks", day, day).await?;
            let restore_secs = t.elapsed().as_secs_f64();
            let back: i64 = client.query_one("SELECT count(*) FROM events.clicks", &[]).await?.get(0);
            anyhow::ensure!(back == rows, "{back} of {rows} rows restored");
            println!(
                "| {name} | {:.1} | {:.1} | {:.1}x | {:.0} | {:.0} |",
                pg_bytes as f64 / rows as f64,
                parquet_bytes as f64 / rows as f64,
                pg_bytes as f64 / parquet_bytes as f64,
                rows as f64 / archive_secs,
                rows as f64 / restore_secs
            );
        }
        anyhow::Ok(())
    })
}
