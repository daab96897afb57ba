//! The ceilings the pipeline is measured against, for the same records and
//! rows: the broker with plain rdkafka (no Chronos code), and PostgreSQL COPY
//! BINARY of pre-encoded rows in one transaction.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chronos::config::{Config, KafkaConfig};
use chronos::load::decode::{encode_row, walk, BatchPage, DeadLetter, TimePolicy, Visit};
use chronos::record::{self, Row};
use chronos::rt::block_on;
use chronos::store::copy::{HEADER, TRAILER};
use futures_util::SinkExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::records::BatchRecord;

/// A plain rdkafka producer (no Chronos code on its path) with chronosd's own
/// producer settings for `k` (`producer_config`), less its statistics.
pub fn plain_producer(k: &KafkaConfig) -> anyhow::Result<FutureProducer> {
    let mut cc = chronos::produce::kafka::producer_config(k, 16 << 20);
    cc.set("client.id", "chronos-perf").set("statistics.interval.ms", "0");
    Ok(cc.create()?)
}

/// Seconds to produce every record to `topic` and have each acknowledged (acks=all),
/// with chronosd's key (and its four headers when `with_headers`), as many in
/// flight as the producer queue holds.
pub fn broker_produce(k: &KafkaConfig, topic: &str, records: &[BatchRecord], with_headers: bool) -> anyhow::Result<f64> {
    let producer = plain_producer(k)?;
    let t = Instant::now();
    block_on(async {
        let mut pending = Vec::with_capacity(records.len());
        for r in records {
            let headers = record::headers(record::FORMAT_BATCH, "perf", r.received_at);
            let record = FutureRecord::to(topic).key(&r.key).payload(&r.value);
            let record = if with_headers { record.headers(headers) } else { record };
            pending.push(producer.send(record, Duration::from_secs(60)));
        }
        for s in futures_util::future::join_all(pending).await {
            s.map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
        }
        anyhow::Ok(())
    })?;
    Ok(t.elapsed().as_secs_f64())
}

/// Seconds for a plain rdkafka consumer to read `n` records of `topic` from the beginning.
pub fn broker_consume(brokers: &str, topic: &str, partitions: i32, n: usize) -> anyhow::Result<f64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("perf-ceiling-{}", uuid::Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let t = Instant::now();
    let mut got = 0;
    while got < n {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            m?;
            got += 1;
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "only {got} of {n} records consumed in 600 s");
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Seconds to COPY (binary) the rows of `records`, encoded beforehand, into copies
/// of the event tables in one transaction. Installs the schema when missing.
pub fn copy_ceiling(config: &Config, records: &[BatchRecord]) -> anyhow::Result<f64> {
    Ok(copy_run(config, records, CopyRun::default(), -1)?.secs)
}

/// A variant of the COPY ceiling, to price one part of a loaded row.
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyRun {
    /// The tables with the event tables' indexes (the index on `time`).
    pub indexes: bool,
    /// Claim each record's batch id in `chronos.seen_batches` too, as the loaders do.
    pub claim_batches: bool,
    /// One transaction per this many events (each with its own COPY per
    /// table), as the loaders' flushes; `None`: one transaction for all.
    pub flush_events: Option<usize>,
    /// Each batch's page stored once in a copy of `chronos.batches`, with
    /// the loaders' statement (the rows never hold it).
    pub page_per_batch: bool,
}

/// What a COPY run took: wall seconds, and PostgreSQL's CPU seconds.
#[derive(Debug, Clone, Copy)]
pub struct CopyCost {
    pub secs: f64,
    pub pg_cpu_secs: f64,
}

/// Rows of a set of records as one flush would hold them.
struct Flush {
    per_table: Vec<BytesMut>,
    batch_ids: Vec<uuid::Uuid>,
    /// Each batch's page (`page_per_batch` only).
    pages: chronos::store::internals::Pages,
    events: usize,
}

struct Encode<'c> {
    catalog: &'c chronos::catalog::EventCatalog,
    /// Keep each batch's page in `Flush::pages` (`page_per_batch`).
    keep_pages: bool,
    flush: Flush,
}

impl Visit for Encode<'_> {
    fn batch(&mut self, batch_id: uuid::Uuid, _imported: bool) -> bool {
        self.flush.batch_ids.push(batch_id);
        true
    }
    fn page(&mut self, page: BatchPage<'_>) {
        if self.keep_pages {
            self.flush.pages.push(page.batch_id, page.received_at, page.session_id, page.metadata);
        }
    }
    fn event(&mut self, table: usize, row: &Row<'_, '_>, batch_id: uuid::Uuid) {
        encode_row(&mut self.flush.per_table[table], &self.catalog.types()[table], row, &batch_id);
        self.flush.events += 1;
    }
    fn reject(&mut self, _: DeadLetter) {}
}

/// COPY of `records`' rows, encoded beforehand, as `run` says, into copies of
/// the event tables (and of `chronos.seen_batches`); PostgreSQL's CPU read
/// from `postmaster`'s processes (-1: not read). Installs the schema when missing.
pub fn copy_run(config: &Config, records: &[BatchRecord], run: CopyRun, postmaster: i32) -> anyhow::Result<CopyCost> {
    let catalog = chronos::catalog::EventCatalog::from_config(&config.events, config.limits.max_string_bytes);
    let statements: Vec<String> = catalog.types().iter().map(chronos::store::internals::copy_statement).collect();
    let policy = TimePolicy { max_past_ms: 86_400_000, max_future_ms: 86_400_000 };
    let new_flush =
        || Flush { per_table: statements.iter().map(|_| BytesMut::new()).collect(), batch_ids: Vec::new(), pages: Default::default(), events: 0 };
    let mut flushes = vec![];
    let mut e = Encode { catalog: &catalog, keep_pages: run.page_per_batch, flush: new_flush() };
    for r in records {
        walk(&mut r.value.clone(), &catalog, policy, &mut e).map_err(|e| anyhow::anyhow!(e))?;
        if run.flush_events.is_some_and(|n| e.flush.events >= n) {
            flushes.push(std::mem::replace(&mut e.flush, new_flush()));
        }
    }
    if e.flush.events > 0 {
        flushes.push(e.flush);
    }
    let schema = format!("ceiling_{}", uuid::Uuid::new_v4().simple());
    block_on(async {
        let mut client = chronos::store::connect(&config.postgres.url).await?;
        chronos::install(
            &mut client,
            &catalog,
            &chronos::config::LoadConfig { partitions_past_days: 1, partitions_ahead_days: 1, ..config.load.clone() },
        )
        .await?;
        client.batch_execute(&format!("CREATE SCHEMA {schema}")).await?;
        for ty in catalog.types() {
            client
                .batch_execute(&format!(
                    "CREATE TABLE {schema}.{0} (LIKE events.{0} INCLUDING DEFAULTS{1})",
                    ty.name,
                    if run.indexes { " INCLUDING INDEXES" } else { "" }
                ))
                .await?;
        }
        client.batch_execute(&format!("CREATE TABLE {schema}.seen_batches (LIKE chronos.seen_batches INCLUDING ALL)")).await?;
        client.batch_execute(&format!("CREATE TABLE {schema}.batches (LIKE chronos.batches INCLUDING ALL)")).await?;
        let claim = format!("INSERT INTO {schema}.seen_batches (batch_id) SELECT unnest($1::uuid[]) ON CONFLICT DO NOTHING RETURNING batch_id");
        let store_pages = chronos::store::internals::INSERT_PAGES.replace("chronos.batches", &format!("{schema}.batches"));
        let cpu0 = crate::stack::children_cpu_secs(postmaster);
        let t = Instant::now();
        for f in &flushes {
            let tx = client.transaction().await?;
            if run.claim_batches {
                tx.query(&claim, &[&f.batch_ids]).await?;
            }
            if run.page_per_batch {
                let p = &f.pages;
                tx.execute(&store_pages, &[&p.batch_ids, &p.received_at, &p.session_ids, &p.metadata]).await?;
            }
            for (i, stmt) in statements.iter().enumerate() {
                if f.per_table[i].is_empty() {
                    continue;
                }
                let mut data = BytesMut::from(HEADER);
                data.extend_from_slice(&f.per_table[i]);
                data.extend_from_slice(TRAILER);
                let sink = tx.copy_in::<_, Bytes>(stmt.replace("COPY events.", &format!("COPY {schema}.")).as_str()).await?;
                futures_util::pin_mut!(sink);
                sink.send(data.freeze()).await?;
                sink.finish().await?;
            }
            tx.commit().await?;
        }
        let secs = t.elapsed().as_secs_f64();
        let pg_cpu_secs = crate::stack::children_cpu_secs(postmaster) - cpu0;
        client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await?;
        anyhow::Ok(CopyCost { secs, pg_cpu_secs })
    })
}

/// The broker's own acknowledgement latency (send → ack with acks=all, chronosd's
/// producer settings) at a modest, paced rate of `per_sec` records for `secs`:
/// the floor under chronosd's HTTP latency.
pub fn broker_ack_latency(
    k: &KafkaConfig,
    topic: &str,
    records: &[BatchRecord],
    per_sec: f64,
    secs: f64,
) -> anyhow::Result<loadgen::report::Percentiles> {
    let producer = plain_producer(k)?;
    let n = ((per_sec * secs) as usize).min(records.len());
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    block_on(async {
        let start = tokio::time::Instant::now();
        let mut pending = futures_util::stream::FuturesUnordered::new();
        let mut i = 0;
        use futures_util::StreamExt;
        while i < n || !pending.is_empty() {
            let next_due = start + Duration::from_secs_f64(i as f64 / per_sec);
            tokio::select! {
                _ = tokio::time::sleep_until(next_due), if i < n => {
                    let r = &records[i];
                    let sent = Instant::now();
                    let fut = producer.send(FutureRecord::to(topic).key(&r.key).payload(&r.value), Duration::from_secs(60));
                    pending.push(async move { (fut.await, sent) });
                    i += 1;
                }
                Some((res, sent)) = pending.next() => {
                    res.map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
                    h.saturating_record((sent.elapsed().as_micros() as u64).max(1));
                }
            }
        }
        anyhow::Ok(())
    })?;
    Ok(loadgen::report::Percentiles::of(&h))
}
