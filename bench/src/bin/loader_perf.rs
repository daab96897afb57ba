//! Loader throughput next to the raw COPY ceiling for the same rows, in one run.
//!
//! Starts PostgreSQL and the broker with the same helpers as the tests, puts
//! N batch records (50 events each, loadgen's batches made into records by the
//! real receipt code) in a topic, then measures:
//!   (a) raw COPY ceiling: the same rows, pre-encoded, COPYed in one transaction;
//!   (b) the loaders (chronos::load) consuming the topic into an empty schema,
//!       from start until every row is committed;
//!   (c) the broker's own consume ceiling: a plain rdkafka consumer reading them.
//! Usage: cargo run --release -p chronos-bench --bin loader_perf -- [batches]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chronos::telemetry::Metrics;
use chronos_bench::stack::{self, PerfStack};
use chronos_bench::{ceiling, records};

fn main() -> anyhow::Result<()> {
    let batches: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(2000);
    let stack = PerfStack::start()?;
    let (config, _) = stack.config(stack::port(), true, &["kafka.partitions=2".into()])?;
    let recs = records::records(&config, records::bodies(batches, 50))?;
    let rows = (batches * 50) as f64;
    let bytes: usize = recs.iter().map(|r| r.value.len()).sum();
    println!("{batches} records, {rows} events, {:.1} MB of JSON", bytes as f64 / 1e6);

    let produce_secs = ceiling::broker_produce(&config.kafka, &config.kafka.topic, &recs, true)?;
    println!("produce (setup): {:.0} records/s", batches as f64 / produce_secs);

    // (c) The broker's own consume ceiling for these records: plain rdkafka, no Chronos code.
    let consume_secs = ceiling::broker_consume(&config.kafka.brokers, &config.kafka.topic, config.kafka.partitions, batches)?;
    println!("(c) broker consume ceiling: {:>9.0} events/s ({consume_secs:.3} s, {:.0} records/s)", rows / consume_secs, batches as f64 / consume_secs);

    // (a) The COPY ceiling: same rows, pre-encoded, one transaction, into a copy of the schema.
    let copy_secs = ceiling::copy_ceiling(&config, &recs)?;
    println!("(a) raw COPY ceiling:   {:>9.0} events/s ({copy_secs:.3} s)", rows / copy_secs);

    // (b) The loaders, end to end from the topic.
    let catalog = chronos::catalog::EventCatalog::from_config(&config.events, config.limits.max_string_bytes);
    let url = config.postgres.url.clone();
    let (load_secs, steady, to_first) = actix_rt::System::new().block_on(async {
        let t = Instant::now();
        let handle = chronos::load::start(&config, Arc::new(Metrics::new()))?;
        let client = chronos::store::connect(&url).await?;
        let total = catalog.types().iter().map(|t| format!("(SELECT count(*) FROM events.{})", t.name)).collect::<Vec<_>>().join(" + ");
        let mut first: Option<(Instant, i64)> = None;
        loop {
            let n: i64 = client.query_one(&format!("SELECT {total}"), &[]).await?.get(0);
            if n > 0 && first.is_none() {
                first = Some((Instant::now(), n));
            }
            if n as f64 >= rows {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = t.elapsed().as_secs_f64();
        let (first_at, first_n) = first.unwrap();
        let steady = (rows - first_n as f64) / first_at.elapsed().as_secs_f64();
        handle.shutdown();
        anyhow::Ok((secs, steady, (first_at - t).as_secs_f64()))
    })?;
    println!("(b) loaders end to end: {:>9.0} events/s ({load_secs:.3} s, of which {to_first:.2} s group join + first flush)", rows / load_secs);
    println!("    loaders after the first commit: {steady:.0} events/s");
    println!("(b)/(a) = {:.2}   (b)/min(a, c) = {:.2}", copy_secs / load_secs, copy_secs.max(consume_secs) / load_secs);
    Ok(())
}
