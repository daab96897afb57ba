//! Loader throughput with every default continuous view on, next to the same
//! run without views, in one process run (issue: "with all default views on,
//! loader throughput is at least 80% of the same run without views").
//!
//! One PostgreSQL and broker (the test helpers). The same N records (loadgen's
//! batches through the real receipt code) are produced to a fresh topic per
//! round; each round's loaders write into a fresh database: alternately one
//! without views and one with the default views (`sql/views/defaults.sql`).
//! Time = from loader start until every row is committed (the views are
//! maintained in the same transactions, so they are complete then too).
//!
//! Usage: cargo run --release -p chronos-bench --bin views_perf -- [batches] [rounds] [section.key=value …]
//! (VIEWS_ONLY=name,… keeps only those default views in the "with views" rounds.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use chronos::rt::block_on;
use chronos::telemetry::Metrics;
use chronos_bench::ceiling::broker_produce;
use chronos_bench::records::{bodies, records};
use chronos_bench::stack::{port, PerfStack};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let batches: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(4000);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2);
    // Further arguments: `section.key=value` config overrides for the loaders (e.g. load.flush_rows=5000).
    let overrides: Vec<String> = args.collect();
    let stack = PerfStack::start()?;
    let (config, _) = stack.config(port(), false, &[])?;
    let recs = records(&config, bodies(batches, 50))?;
    let rows: usize = {
        let catalog = chronos::catalog::EventCatalog::from_config(&config.events, config.limits.max_string_bytes);
        let policy = chronos::load::decode::TimePolicy { max_past_ms: 86_400_000, max_future_ms: 86_400_000 };
        recs.iter()
            .map(|r| chronos::load::decode::decode_batch(&mut r.value.clone(), &catalog, policy).map(|d| d.events))
            .sum::<Result<usize, String>>()
            .map_err(|e| anyhow::anyhow!(e))?
    };
    println!("{batches} records, {rows} events; {rounds} round(s) of: loaders without views, loaders with the default views");
    let admin_url = stack.pg.url();
    let mut results: Vec<(bool, f64, i64)> = Vec::new();
    for round in 0..rounds * 2 {
        let with_views = round % 2 == 1;
        let db = format!("perf_{round}_{}", if with_views { "views" } else { "plain" });
        block_on(async {
            let c = chronos::store::connect(&admin_url).await?;
            c.batch_execute(&format!("CREATE DATABASE {db}")).await?;
            anyhow::Ok(())
        })?;
        let url = format!("{}/{db}", admin_url.rsplit_once('/').unwrap().0);
        let mut o = overrides.clone();
        o.push(format!("postgres.url=\"{url}\""));
        let (cfg, _) = stack.config(port(), true, &o)?;
        broker_produce(&cfg.kafka, &cfg.kafka.topic, &recs, true)?;
        let catalog = chronos::catalog::EventCatalog::from_config(&cfg.events, cfg.limits.max_string_bytes);
        let views = block_on(async {
            let mut c = chronos::store::connect(&url).await?;
            c.batch_execute("SET client_min_messages = warning").await?;
            chronos::install(
                &mut c,
                &catalog,
                &chronos::config::LoadConfig { partitions_past_days: 1, partitions_ahead_days: 1, ..cfg.load.clone() },
            )
            .await?;
            // VIEWS_ONLY=a,b keeps only those default views (to see what each costs).
            let only = std::env::var("VIEWS_ONLY").ok();
            for v in chronos::views::list(&c).await? {
                if !with_views || only.as_deref().is_some_and(|o| !o.split(',').any(|n| n == v.name)) {
                    chronos::views::drop(&mut c, &v.name).await?;
                }
            }
            anyhow::Ok(chronos::views::list(&c).await?.len())
        })?;
        let (secs, groups, first, flush_secs, view_secs) = actix_rt::System::new().block_on(async {
            let metrics = Arc::new(Metrics::new());
            let t = Instant::now();
            let handle = chronos::load::start(&cfg, metrics.clone())?;
            let client = chronos::store::connect(&url).await?;
            let total = catalog.types().iter().map(|t| format!("(SELECT count(*) FROM events.{})", t.name)).collect::<Vec<_>>().join(" + ");
            let mut first = None;
            loop {
                let n: i64 = client.query_one(&format!("SELECT {total}"), &[]).await?.get(0);
                if n > 0 && first.is_none() {
                    first = Some(t.elapsed().as_secs_f64());
                }
                if n as usize >= rows {
                    break;
                }
                anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "only {n} of {rows} rows in 600 s");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let secs = t.elapsed().as_secs_f64();
            handle.shutdown();
            let (flush, view) = (metrics.load_flush_seconds.get_sample_sum(), metrics.view_seconds.get_sample_sum());
            let retries = metrics.load_flush_retries.get();
            if retries > 0 {
                println!("  ({retries} flushes retried)");
            }
            anyhow::Ok((secs, metrics.view_groups.get() as i64, first.unwrap_or(0.0), flush, view))
        })?;
        println!(
            "round {}: {:<13} {views:>2} views  {:>9.0} events/s  ({secs:.2} s, first row at {first:.2} s; in transactions {flush_secs:.2} s, of which views {view_secs:.2} s; {groups} view rows upserted)",
            round / 2 + 1,
            if with_views { "with views" } else { "without views" },
            rows as f64 / secs
        );
        results.push((with_views, secs, groups));
    }
    let best = |v: bool| results.iter().filter(|r| r.0 == v).map(|r| r.1).fold(f64::INFINITY, f64::min);
    let (plain, views) = (best(false), best(true));
    println!(
        "best of {rounds}: without views {:.0} events/s, with the default views {:.0} events/s  → ratio {:.2}",
        rows as f64 / plain,
        rows as f64 / views,
        plain / views
    );
    Ok(())
}
