//! Sending an import: batches an earlier run stored are skipped
//! (`chronos.seen_batches`), the others produced exactly as receipt produces
//! them and acknowledged by the broker; then, if asked, waiting until the
//! loaders stored every one.

use std::collections::{HashSet, VecDeque};
use std::io::BufRead;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use tokio_postgres::Client;
use uuid::Uuid;

use super::{Batch, Importer, Summary};
use crate::clock::now_ms;
use crate::config::Config;
use crate::produce::kafka::{max_record_bytes, producer_config};

/// The batches of `$1` stored before: their events (the loaders' claim) or,
/// for a batch whose every event was rejected, its dead letters.
const STORED: &str = "SELECT batch_id FROM chronos.seen_batches WHERE batch_id = ANY($1)
    UNION SELECT batch_id FROM chronos.dead_letters WHERE stage = 'receipt' AND batch_id = ANY($1)";

/// Batches looked up at a time.
const CHUNK: usize = 256;
/// Records waiting for the broker's acknowledgement, at most.
const MAX_IN_FLIGHT: usize = 20_000;

/// How to run an import.
#[derive(Debug, Clone)]
pub struct Options {
    /// Key id recorded with event-form lines (records keep theirs).
    pub key_id: String,
    /// Check and count only: nothing is produced.
    pub dry_run: bool,
    /// After producing, wait up to this long for the loaders to store every batch.
    pub wait: Option<Duration>,
}

/// What a run did.
#[derive(Debug)]
pub struct Report {
    pub summary: Summary,
    /// Ids of the batches produced by this run.
    pub sent: Vec<Uuid>,
    /// Time to read, check and produce (acknowledged).
    pub produced_in: Duration,
    /// Time until the loaders had stored every batch (with `wait`).
    pub stored_in: Option<Duration>,
}

/// Reads `input` line by line and imports it; `progress` is called now and
/// then with the tally so far (the CLI's bar counts the bytes itself).
pub async fn run(config: &Config, mut input: impl BufRead, opts: &Options, mut progress: impl FnMut(&Summary)) -> Result<Report> {
    let started = Instant::now();
    let client = match opts.dry_run {
        true => None,
        false => Some(
            crate::store::connect(&config.postgres.url).await.context("connecting to PostgreSQL (postgres.url) to skip what is stored already")?,
        ),
    };
    let mut producer = match opts.dry_run {
        true => None,
        false => Some(Producer::new(config)?),
    };
    let enricher = config.enrich.enabled.then(|| std::sync::Arc::new(config.enrich.enricher()));
    let mut importer = Importer::new(config, &opts.key_id, now_ms(), enricher);
    let mut summary = Summary::default();
    let (mut seen, mut sent) = (HashSet::new(), Vec::new());
    let mut pending = Vec::new();
    let (mut line, mut number) = (Vec::new(), 0u64);
    loop {
        line.clear();
        let n = input.read_until(b'\n', &mut line).with_context(|| format!("reading line {}", number + 1))?;
        if n == 0 {
            importer.finish();
        } else {
            number += 1;
            importer.line(number, &line);
        }
        pending.extend(importer.drain().filter_map(|item| summary.take(item)));
        if pending.len() >= CHUNK || (n == 0 && !pending.is_empty()) {
            for b in fresh(client.as_ref(), std::mem::take(&mut pending), &mut seen, &mut summary).await? {
                if let Some(p) = producer.as_mut() {
                    p.send(&b).await?;
                    sent.push(b.batch_id);
                }
            }
        }
        if n == 0 {
            break;
        }
        if number % 1024 == 0 {
            summary.lines = number;
            progress(&summary);
        }
    }
    if let Some(p) = producer.as_mut() {
        p.finish().await?;
    }
    summary.lines = number;
    progress(&summary);
    let produced_in = started.elapsed();
    let stored_in = match (opts.wait, client.as_ref()) {
        (Some(limit), Some(client)) => Some(wait_stored(client, &sent, limit).await? + produced_in),
        _ => None,
    };
    Ok(Report { summary, sent, produced_in, stored_in })
}

/// The batches of `batches` to send: not stored by an earlier run, not seen
/// earlier in this one. Counts everything into `summary`.
pub async fn fresh(client: Option<&Client>, batches: Vec<Batch>, seen: &mut HashSet<Uuid>, summary: &mut Summary) -> Result<Vec<Batch>> {
    let stored: HashSet<Uuid> = match client {
        Some(c) => {
            let ids: Vec<Uuid> = batches.iter().map(|b| b.batch_id).collect();
            let rows = c.query(STORED, &[&ids]).await.context("looking up stored batches")?;
            rows.iter().map(|r| r.get(0)).collect()
        }
        None => HashSet::new(),
    };
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        if stored.contains(&b.batch_id) || !seen.insert(b.batch_id) {
            summary.duplicate_batches += 1;
            summary.duplicate_events += (b.accepted + b.rejected.len()) as u64;
            continue;
        }
        summary.batches += 1;
        summary.accepted += b.accepted as u64;
        summary.rejected += b.rejected.len() as u64;
        for r in &b.rejected {
            summary.reason(r.clone());
        }
        out.push(b);
    }
    Ok(out)
}

/// A producer with chronosd's own settings and a bounded window of records
/// waiting for their acknowledgement.
pub struct Producer {
    producer: FutureProducer,
    topic: String,
    dead_letter_topic: String,
    in_flight: VecDeque<(u64, DeliveryFuture)>,
}

impl Producer {
    pub fn new(config: &Config) -> Result<Self> {
        let max_record = max_record_bytes(config.http.max_decompressed_bytes, config.http.max_events_per_batch);
        let producer = producer_config(&config.kafka, max_record)
            .set("client.id", "chronos-import")
            .create()
            .context("creating the Kafka producer (kafka.*)")?;
        Ok(Producer {
            producer,
            topic: config.kafka.topic.clone(),
            dead_letter_topic: config.kafka.dead_letter_topic.clone(),
            in_flight: VecDeque::new(),
        })
    }

    /// Enqueues a batch's records (waiting for room when the queue is full).
    pub async fn send(&mut self, b: &Batch) -> Result<()> {
        let records = [(false, &b.outgoing.record), (true, &b.outgoing.dead_letter)];
        for (dead, payload) in records {
            let Some(payload) = payload else { continue };
            let topic = if dead { self.dead_letter_topic.clone() } else { self.topic.clone() };
            loop {
                match self.producer.send_result(b.outgoing.record_to(&topic, dead, payload)) {
                    Ok(f) => {
                        self.in_flight.push_back((b.first_line, f));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) if !self.in_flight.is_empty() => self.settle_one().await?,
                    Err((e, _)) => bail!("producing the batch of line {}: {e}", b.first_line),
                }
            }
            while self.in_flight.len() > MAX_IN_FLIGHT {
                self.settle_one().await?;
            }
        }
        Ok(())
    }

    /// Waits for every record sent to be acknowledged.
    pub async fn finish(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }

    async fn settle_one(&mut self) -> Result<()> {
        let Some((line, f)) = self.in_flight.pop_front() else { return Ok(()) };
        match f.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => {
                bail!("the broker did not take the batch of line {line}: {e}; run the same import again (batches already stored are skipped)")
            }
            Err(_) => bail!("the producer closed before the batch of line {line} was acknowledged"),
        }
    }
}

/// Waits until the loaders stored every batch of `ids` (its events, or its
/// dead letters when it has no events), up to `limit`; returns how long it took.
pub async fn wait_stored(client: &Client, ids: &[Uuid], limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let mut stored = 0;
        for chunk in ids.chunks(10_000) {
            stored += client.query(STORED, &[&chunk]).await?.len();
        }
        if stored == ids.len() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!("{stored} of {} batches stored after {limit:?}: are the loaders running (load.enabled, chronos status)?", ids.len());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
