//! The ceilings the pipeline is measured against, for the same records and
//! rows: the broker with plain rdkafka (no Chronos code), and PostgreSQL COPY
//! BINARY of pre-encoded rows in one transaction.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chronos::config::{Config, KafkaConfig};
use chronos::load::copy::{HEADER, TRAILER};
use chronos::load::decode::{decode_batch, TimePolicy};
use chronos::stack::postgres::block_on;
use futures_util::SinkExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::records::BatchRecord;

/// A plain rdkafka producer with the same settings chronosd's producer gets from `k`.
pub fn plain_producer(k: &KafkaConfig) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &k.brokers)
        .set("socket.nagle.disable", "true")
        .set("acks", "all")
        .set("enable.idempotence", k.idempotence.to_string())
        .set("compression.type", &k.compression)
        .set("linger.ms", k.linger_ms.to_string())
        .set("max.in.flight.requests.per.connection", k.max_in_flight.to_string())
        .set("batch.num.messages", k.batch_num_messages.to_string())
        .set("batch.size", k.batch_bytes.to_string())
        .set("queue.buffering.max.messages", k.queue_max_messages.to_string())
        .set("queue.buffering.max.kbytes", k.queue_max_kbytes.to_string())
        .set("message.timeout.ms", "60000")
        .create()?)
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
            let received_at = r.received_at.to_string();
            let headers = OwnedHeaders::new_with_capacity(4)
                .insert(Header { key: "chronos-format", value: Some("batch.v1") })
                .insert(Header { key: "content-type", value: Some("application/json") })
                .insert(Header { key: "chronos-key-id", value: Some("perf") })
                .insert(Header { key: "chronos-received-at", value: Some(received_at.as_str()) });
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
    let catalog = chronos::catalog::EventCatalog::from_config(&config.events, config.limits.max_string_bytes);
    let statements: Vec<String> = catalog.types().iter().map(chronos::store::internals::copy_statement).collect();
    let policy = TimePolicy { max_past_ms: 86_400_000, max_future_ms: 86_400_000 };
    let mut per_table: Vec<BytesMut> = statements.iter().map(|_| BytesMut::new()).collect();
    for r in records {
        let d = decode_batch(&mut r.value.clone(), &catalog, policy).map_err(|e| anyhow::anyhow!(e))?;
        for t in d.tables {
            per_table[t.table].extend_from_slice(&t.tuples);
        }
    }
    let schema = format!("ceiling_{}", uuid::Uuid::new_v4().simple());
    block_on(async {
        let mut client = chronos::store::connect(&config.postgres.url).await?;
        chronos::store::install(&mut client, &catalog, &chronos::config::LoadConfig { partitions_past_days: 1, partitions_ahead_days: 1, ..config.load.clone() }).await?;
        client.batch_execute(&format!("CREATE SCHEMA {schema}")).await?;
        for ty in catalog.types() {
            client
                .batch_execute(&format!("CREATE TABLE {schema}.{0} (LIKE events.{0} INCLUDING DEFAULTS)", ty.name))
                .await?;
        }
        let t = Instant::now();
        let tx = client.transaction().await?;
        for (i, stmt) in statements.iter().enumerate() {
            let mut data = BytesMut::from(HEADER);
            data.extend_from_slice(&per_table[i]);
            data.extend_from_slice(TRAILER);
            let sink = tx.copy_in::<_, Bytes>(stmt.replace("COPY events.", &format!("COPY {schema}.")).as_str()).await?;
            futures_util::pin_mut!(sink);
            sink.send(data.freeze()).await?;
            sink.finish().await?;
        }
        tx.commit().await?;
        let secs = t.elapsed().as_secs_f64();
        client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await?;
        anyhow::Ok(secs)
    })
}

/// The broker's own acknowledgement latency (send → ack with acks=all, chronosd's
/// producer settings) at a modest, paced rate of `per_sec` records for `secs`:
/// the floor under chronosd's HTTP latency.
pub fn broker_ack_latency(k: &KafkaConfig, topic: &str, records: &[BatchRecord], per_sec: f64, secs: f64) -> anyhow::Result<loadgen::report::Percentiles> {
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
