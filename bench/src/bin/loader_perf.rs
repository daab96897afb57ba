//! Loader throughput next to its ceilings, and what each part of a loaded
//! row costs PostgreSQL, all in one run.
//!
//! Starts PostgreSQL and the broker with the same helpers as the tests, puts
//! N batch records (50 events each, loadgen's batches made into records by the
//! real receipt code) in a 2-partition topic, then measures, each with
//! PostgreSQL's CPU per event:
//!   (c)  the broker's own consume ceiling: a plain rdkafka consumer;
//!   (a)  the raw COPY ceiling: the same rows, pre-encoded, in one transaction;
//!   (a2) … into tables with the event tables' index on `time`;
//!   (a3) … plus each batch id claimed in a seen-batches table (its index);
//!   (a4) … plus one transaction per `load.flush_rows` events (commits);
//!   (a5) … plus each batch's page once in a copy of `chronos.batches`:
//!        what the loaders write (the rows do not hold the page);
//!   (b0) the loaders (chronos::load) without continuous views, into a fresh
//!        database, from start until every row is committed;
//!   (b)  the loaders with the default views.
//! It also samples what the loaders' PostgreSQL backends are doing (average
//! number of backends per state or wait event).
//! Usage: cargo run --release -p chronos-bench --bin loader_perf -- [batches] [partitions]
//! (the loaders log to stderr; `CHRONOS_LOG=chronos=debug` shows their timeline)

use std::sync::Arc;
use std::time::{Duration, Instant};

use chronos::rt::block_on;
use chronos::telemetry::Metrics;
use chronos_bench::ceiling::{self, CopyRun};
use chronos_bench::records;
use chronos_bench::stack::{self, PerfStack};

fn main() -> anyhow::Result<()> {
    // The loaders' own log on stderr (CHRONOS_LOG / RUST_LOG filter, default info).
    chronos::telemetry::init_logging();
    let batches: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(2000);
    let partitions: i32 = std::env::args().nth(2).map(|a| a.parse()).transpose()?.unwrap_or(2);
    let stack = PerfStack::start()?;
    let postmaster = stack.pg.spec.postmaster_pid().unwrap_or(-1);
    let (config, _) = stack.config(stack::port(), true, &[format!("kafka.partitions={partitions}")])?;
    let recs = records::records(&config, records::bodies(batches, 50))?;
    let rows = (batches * 50) as f64;
    let bytes: usize = recs.iter().map(|r| r.value.len()).sum();
    println!("{batches} records, {rows} events, {:.1} MB of JSON", bytes as f64 / 1e6);

    let produce_secs = ceiling::broker_produce(&config.kafka, &config.kafka.topic, &recs, true)?;
    println!("produce (setup): {:.0} records/s", batches as f64 / produce_secs);

    let consume_secs = ceiling::broker_consume(&config.kafka.brokers, &config.kafka.topic, config.kafka.partitions, batches)?;
    println!("(c)  broker consume ceiling: {:>9.0} events/s", rows / consume_secs);

    let us = |cpu: f64| cpu * 1e6 / rows;
    let flush = Some(config.load.flush_rows);
    let variants = [
        ("(a)  raw COPY ceiling, one transaction", CopyRun::default()),
        ("(a2) … (a) + the index on time", CopyRun { indexes: true, ..CopyRun::default() }),
        ("(a3) … (a2) + batch ids claimed", CopyRun { indexes: true, claim_batches: true, ..CopyRun::default() }),
        ("(a4) … (a3) + a commit per flush_rows", CopyRun { indexes: true, claim_batches: true, flush_events: flush, ..CopyRun::default() }),
        ("(a5) … (a4) + each batch's page once", CopyRun { indexes: true, claim_batches: true, flush_events: flush, page_per_batch: true }),
    ];
    let mut copy_secs = f64::MAX;
    for (name, run) in variants {
        let c = ceiling::copy_run(&config, &recs, run, postmaster)?;
        if !run.indexes {
            copy_secs = c.secs;
        }
        println!("{name:<46} {:>9.0} events/s   PostgreSQL {:>5.2} µs CPU/event", rows / c.secs, us(c.pg_cpu_secs));
    }

    let mut loaded = Vec::new();
    for with_views in [false, true] {
        let (secs, pg_cpu, own_cpu, waits) = load(&stack, &recs, rows, with_views, postmaster, partitions)?;
        let name = if with_views { "(b)  loaders, default views" } else { "(b0) loaders, no views" };
        println!("{name:<46} {:>9.0} events/s   PostgreSQL {:>5.2} µs CPU/event, loaders {:.2} µs CPU/event", rows / secs, us(pg_cpu), us(own_cpu));
        println!("     loader backends sampled every 10 ms: {waits}");
        loaded.push(secs);
    }
    let ceiling = copy_secs.max(consume_secs);
    println!("(b0)/min(a, c) = {:.2}   (b)/min(a, c) = {:.2}   (b)/(b0) = {:.2}", ceiling / loaded[0], ceiling / loaded[1], loaded[0] / loaded[1]);
    Ok(())
}

/// The loaders consuming the topic into a fresh database: (wall seconds to
/// the last commit, PostgreSQL CPU seconds, this process's CPU seconds).
fn load(
    stack: &PerfStack,
    recs: &[records::BatchRecord],
    rows: f64,
    with_views: bool,
    postmaster: i32,
    partitions: i32,
) -> anyhow::Result<(f64, f64, f64, String)> {
    let db = format!("loaders_{}", if with_views { "views" } else { "plain" });
    let admin = stack.pg.url();
    let url = format!("{}/{db}", admin.rsplit_once('/').unwrap().0);
    let (config, _) = stack.config(stack::port(), true, &[format!("kafka.partitions={partitions}"), format!("postgres.url=\"{url}\"")])?;
    ceiling::broker_produce(&config.kafka, &config.kafka.topic, recs, true)?;
    let catalog = chronos::catalog::EventCatalog::from_config(&config.events, config.limits.max_string_bytes);
    block_on(async {
        chronos::store::connect(&admin).await?.batch_execute(&format!("CREATE DATABASE {db}")).await?;
        let mut c = chronos::store::connect(&url).await?;
        c.batch_execute("SET client_min_messages = warning").await?;
        chronos::install(&mut c, &catalog, &config.load).await?;
        if !with_views {
            for v in chronos::views::list(&c).await? {
                chronos::views::drop(&mut c, &v.name).await?;
            }
        }
        anyhow::Ok(())
    })?;
    actix_rt::System::new().block_on(async {
        let metrics = Arc::new(Metrics::new());
        let me = std::process::id() as i32;
        let (pg0, own0) = (stack::children_cpu_secs(postmaster), stack::cpu_secs(me));
        let t = Instant::now();
        let handle = chronos::load::start(&config, metrics.clone())?;
        // What the loaders' backends are doing, sampled (pg_stat_activity is
        // cheap; counting rows in PostgreSQL would cost PostgreSQL).
        let sampler = chronos::store::connect(&url).await?;
        let mut waits: std::collections::BTreeMap<String, u64> = Default::default();
        let mut samples = 0u64;
        let mut first: Option<(f64, u64)> = None;
        // Read from the loaders' own counter.
        while (metrics.load_events.get() as f64) < rows {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "only {} of {rows} events loaded in 600 s", metrics.load_events.get());
            let rows = sampler
                .query(
                    "SELECT coalesce(wait_event_type || ':' || wait_event, 'on CPU'), state FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                    &[],
                )
                .await?;
            for r in rows {
                let (wait, state): (String, String) = (r.get(0), r.get::<_, Option<String>>(1).unwrap_or_default());
                let what = if state == "idle" || state == "idle in transaction" { format!("{state} (waiting for the loader)") } else { wait };
                *waits.entry(what).or_default() += 1;
            }
            samples += 1;
            if first.is_none() && metrics.load_events.get() > 0 {
                first = Some((t.elapsed().as_secs_f64(), metrics.load_events.get()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let secs = t.elapsed().as_secs_f64();
        let (pg1, own1) = (stack::children_cpu_secs(postmaster), stack::cpu_secs(me));
        handle.shutdown();
        let mut waits: Vec<(String, u64)> = waits.into_iter().collect();
        waits.sort_by_key(|w| std::cmp::Reverse(w.1));
        let mut waits = waits.iter().take(6).map(|(w, n)| format!("{w} {:.2}", *n as f64 / samples as f64)).collect::<Vec<_>>().join(", ");
        if let Some((at, n)) = first {
            waits.push_str(&format!("\n     first commit after {at:.2} s; {:.0} events/s after it", (rows - n as f64) / (secs - at)));
        }
        // What the loaders themselves waited on, as a share of their time (one loader per partition).
        let on = |what: &str| metrics.load_wait_seconds.with_label_values(&[&config.kafka.topic, what]).get() / (secs * f64::from(partitions));
        waits.push_str(&format!(
            "\n     loaders waiting (share of {partitions} loaders' time): on records (queue empty) {:.2}, on their commit (buffer due) {:.2}",
            on("records"),
            on("commit")
        ));
        anyhow::Ok((secs, pg1 - pg0, own1 - own0, waits))
    })
}
