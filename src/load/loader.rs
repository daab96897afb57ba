//! `PartitionLoader`: one actor per assigned partition. It decodes records into
//! binary COPY tuples as they arrive, and flushes (N events or T ms) in one
//! PostgreSQL transaction: skip batch ids seen before, COPY into each event
//! table, write dead letters, move the partition's stored offset — fenced on
//! the offset it started from, so a loader that lost its partition can never
//! commit — then COMMIT. Only then is the offset committed to Kafka (for lag tools).

use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use futures_util::SinkExt;
use tokio_postgres::{Client, Statement, Transaction};
use uuid::Uuid;

use super::copy::{HEADER, TRAILER};
use super::decode::{decode_batch, decode_dead_letter, DeadLetter, DecodedBatch, TimePolicy};
use crate::catalog::EventCatalog;
use crate::store::schema::{ident, table, BASE_COLUMNS};
use crate::telemetry::Metrics;

/// COPY data is sent in pieces of about this size.
const COPY_CHUNK_BYTES: usize = 256 * 1024;

/// What every loader reads.
pub struct LoaderShared {
    pub catalog: EventCatalog,
    /// `COPY events."t" (…) FROM STDIN (FORMAT binary)` per catalog type.
    pub copy_statements: Vec<String>,
    pub policy: TimePolicy,
    pub group: String,
    pub dead_letter_topic: String,
    pub flush_rows: usize,
    pub flush_ms: u64,
    pub retry_max_ms: u64,
    pub pg_url: String,
    /// Offsets to commit to Kafka once stored in PostgreSQL: (topic, partition, next offset).
    pub kafka_commits: crossbeam_channel::Sender<(String, i32, i64)>,
    /// Where a fenced loader must read again from: (topic, partition, stored offset).
    pub seeks: crossbeam_channel::Sender<(String, i32, i64)>,
    pub metrics: Arc<Metrics>,
    /// The continuous views maintained in each flush's transaction.
    pub views: crate::views::Registry,
}

impl LoaderShared {
    pub fn copy_statements(catalog: &EventCatalog) -> Vec<String> {
        catalog
            .types()
            .iter()
            .map(|ty| {
                let cols: Vec<String> = BASE_COLUMNS
                    .iter()
                    .map(|(n, _)| ident(n))
                    .chain(ty.attributes.iter().map(|a| ident(&a.name)))
                    .collect();
                format!("COPY {} ({}) FROM STDIN (FORMAT binary)", table(ty), cols.join(", "))
            })
            .collect()
    }
}

/// A dead letter with where it came from.
struct PlacedDeadLetter {
    letter: DeadLetter,
    offset: i64,
}

#[derive(Default)]
struct Buffer {
    batches: Vec<DecodedBatch>,
    /// Each batch's record as received (the views parse it again at commit,
    /// with the view set of the transaction).
    records: Vec<Vec<u8>>,
    dead: Vec<PlacedDeadLetter>,
    events: usize,
    next_offset: Option<i64>,
    first_at: Option<Instant>,
}

/// Why a flush did not commit.
#[derive(Debug)]
enum FlushError {
    /// Another loader moved this partition's offset past ours (the stored offset).
    Fenced(Option<i64>),
    Db(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for FlushError {
    fn from(e: tokio_postgres::Error) -> Self {
        FlushError::Db(e)
    }
}

/// The loader of one topic partition.
pub struct PartitionLoader {
    shared: Arc<LoaderShared>,
    topic: String,
    partition: i32,
    /// The partition's next offset as stored in PostgreSQL when this loader
    /// last committed (or was assigned); the fence for the next commit.
    expected: Option<i64>,
    db: Option<Db>,
    buffer: Buffer,
    mailbox_capacity: usize,
    /// After a fence: the stored offset the consumer was sent back to. Records
    /// queued before the seek are skipped until this exact offset comes again.
    resync_at: Option<i64>,
}

impl PartitionLoader {
    pub fn new(shared: Arc<LoaderShared>, topic: String, partition: i32, expected: Option<i64>, mailbox_capacity: usize) -> Self {
        PartitionLoader { shared, topic, partition, expected, db: None, buffer: Buffer::default(), mailbox_capacity, resync_at: None }
    }

    fn is_dead_letter_topic(&self) -> bool {
        self.topic == self.shared.dead_letter_topic
    }

    fn due(&self) -> bool {
        self.buffer.events >= self.shared.flush_rows
            || self.buffer.first_at.is_some_and(|t| t.elapsed() >= Duration::from_millis(self.shared.flush_ms))
    }

    /// Flushes the buffer, retrying with backoff until it commits or the loader is fenced.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.buffer.next_offset.is_none() {
            return;
        }
        let buffer = std::mem::take(&mut self.buffer);
        let db = self.db.take();
        let shared = self.shared.clone();
        let (topic, partition, expected) = (self.topic.clone(), self.partition, self.expected);
        let fut = async move {
            let mut client = db;
            let mut backoff = Duration::from_millis(100);
            loop {
                if client.as_ref().is_none_or(|d| d.client.is_closed()) {
                    client = crate::store::connect(&shared.pg_url).await.ok().map(Db::new);
                }
                if let Some(c) = client.as_mut() {
                    let started = Instant::now();
                    match commit(c, &shared, &topic, partition, expected, &buffer).await {
                        Ok(loaded) => {
                            shared.metrics.load_flush_seconds.observe(started.elapsed().as_secs_f64());
                            shared.metrics.load_events.inc_by(loaded);
                            return (client, Ok(buffer.next_offset.unwrap()));
                        }
                        Err(FlushError::Fenced(stored)) => return (client, Err(stored)),
                        Err(FlushError::Db(e)) => {
                            // tokio-postgres prints only "db error": say what PostgreSQL said.
                            let error = match e.as_db_error() {
                                Some(db) => format!("{}: {}", db.code().code(), db.message()),
                                None => e.to_string(),
                            };
                            tracing::warn!(topic, partition, error, retry_in_ms = backoff.as_millis() as u64, "Flush failed; retrying.");
                        }
                    }
                } else {
                    tracing::warn!(topic, partition, retry_in_ms = backoff.as_millis() as u64, "PostgreSQL unreachable; retrying.");
                }
                shared.metrics.load_flush_retries.inc();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(shared.retry_max_ms));
            }
        };
        // `wait`: no other message is handled until the flush ends, so the
        // mailbox fills and the poller waits (backpressure).
        ctx.wait(fut.into_actor(self).map(|(client, result), act, _ctx| {
            act.db = client;
            match result {
                Ok(next) => {
                    act.expected = Some(next);
                    let _ = act.shared.kafka_commits.try_send((act.topic.clone(), act.partition, next));
                }
                Err(stored) => {
                    // Another loader committed this range first (a rebalance race):
                    // drop ours and read again from what is stored.
                    tracing::warn!(topic = %act.topic, partition = act.partition, ?stored, "Offset moved by another loader; re-reading from the stored offset.");
                    act.expected = stored;
                    act.buffer = Buffer::default();
                    if let Some(o) = stored {
                        act.resync_at = Some(o);
                        let _ = act.shared.seeks.try_send((act.topic.clone(), act.partition, o));
                    }
                }
            }
        }));
    }
}

/// A connection of a loader and the statements prepared on it.
struct Db {
    client: Client,
    prepared: HashMap<String, Statement>,
}

impl Db {
    fn new(client: Client) -> Self {
        Db { client, prepared: HashMap::new() }
    }
}

/// `sql` prepared once per connection (saves a round trip and the planning per flush).
async fn prepared(
    prepared: &mut HashMap<String, Statement>,
    tx: &Transaction<'_>,
    sql: &str,
) -> Result<Statement, tokio_postgres::Error> {
    if let Some(s) = prepared.get(sql) {
        return Ok(s.clone());
    }
    let s = tx.prepare(sql).await?;
    prepared.insert(sql.to_string(), s.clone());
    Ok(s)
}

async fn commit(
    db: &mut Db,
    shared: &LoaderShared,
    topic: &str,
    partition: i32,
    expected: Option<i64>,
    buffer: &Buffer,
) -> Result<u64, FlushError> {
    let Db { client, prepared: statements } = db;
    let tx = client.transaction().await?;
    // Batch ids seen before (tracker retries) are skipped whole.
    let mut ids: Vec<Uuid> = buffer.batches.iter().map(|b| b.batch_id).collect();
    ids.sort_unstable();
    ids.dedup();
    // Pipelined: the views lock and generation, and the batch ids.
    let (views, fresh) = futures_util::future::try_join(shared.views.lock_current(&tx, &shared.catalog), async {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let rows = tx
            .query(
                "INSERT INTO chronos.seen_batches (batch_id) SELECT unnest($1::uuid[]) ON CONFLICT DO NOTHING RETURNING batch_id",
                &[&ids],
            )
            .await?;
        Ok::<HashSet<Uuid>, tokio_postgres::Error>(rows.iter().map(|r| r.get(0)).collect())
    })
    .await?;
    let mut taken: HashSet<Uuid> = HashSet::with_capacity(fresh.len());
    let kept: Vec<usize> =
        (0..buffer.batches.len()).filter(|i| fresh.contains(&buffer.batches[*i].batch_id) && taken.insert(buffer.batches[*i].batch_id)).collect();
    let keep: Vec<&DecodedBatch> = kept.iter().map(|i| &buffer.batches[*i]).collect();
    let mut loaded = 0u64;
    for (table, statement) in shared.copy_statements.iter().enumerate() {
        let parts: Vec<&BytesMut> = keep.iter().flat_map(|b| b.tables.iter()).filter(|t| t.table == table).map(|t| &t.tuples).collect();
        if parts.is_empty() {
            continue;
        }
        let statement = prepared(statements, &tx, statement).await?;
        let sink = tx.copy_in::<_, Bytes>(&statement).await?;
        futures_util::pin_mut!(sink);
        // Streamed in chunks: the buffer already holds every tuple, and a second
        // copy of a whole table's rows per partition is what set chronosd's peak
        // memory while the loaders lagged (perf/pipeline.md, RSS).
        let mut chunk = BytesMut::with_capacity(COPY_CHUNK_BYTES * 2);
        chunk.extend_from_slice(HEADER);
        for p in parts {
            chunk.extend_from_slice(p);
            if chunk.len() >= COPY_CHUNK_BYTES {
                sink.feed(chunk.split().freeze()).await?;
            }
        }
        chunk.extend_from_slice(TRAILER);
        sink.feed(chunk.freeze()).await?;
        loaded += sink.finish().await?;
    }
    if !views.views.is_empty() && !kept.is_empty() {
        let started = Instant::now();
        let mut acc = crate::views::Accumulator::new(&views);
        for i in &kept {
            let mut record = buffer.records[*i].clone();
            let walked = crate::load::decode::walk(&mut record, &shared.catalog, shared.policy, |t, row, _| acc.add(t, row), |_| {});
            debug_assert!(walked.is_ok(), "a decoded record decodes again");
        }
        let mut upserts = Vec::with_capacity(views.views.len());
        for v in &views.views {
            upserts.push(prepared(statements, &tx, &v.upsert).await?);
        }
        let groups = acc.apply(&tx, &upserts, partition).await?;
        shared.metrics.view_groups.inc_by(groups);
        shared.metrics.view_seconds.observe(started.elapsed().as_secs_f64());
    }
    let dead: Vec<&PlacedDeadLetter> = buffer.dead.iter().collect();
    if !dead.is_empty() {
        let stages: Vec<&str> = dead.iter().map(|d| d.letter.stage).collect();
        let reasons: Vec<&str> = dead.iter().map(|d| d.letter.reason.as_str()).collect();
        let offsets: Vec<i64> = dead.iter().map(|d| d.offset).collect();
        let batch_ids: Vec<Option<Uuid>> = dead.iter().map(|d| d.letter.batch_id).collect();
        let positions: Vec<Option<i32>> = dead.iter().map(|d| d.letter.position).collect();
        let events: Vec<Option<&str>> = dead.iter().map(|d| d.letter.event.as_deref()).collect();
        let raws: Vec<Option<&[u8]>> = dead.iter().map(|d| d.letter.raw.as_deref()).collect();
        let contexts: Vec<Option<&str>> = dead.iter().map(|d| d.letter.context.as_deref()).collect();
        tx.execute(
            "INSERT INTO chronos.dead_letters (stage, reason, topic, partition, \"offset\", batch_id, position, event, raw, context)
             SELECT s, r, $3, $4, o, b, p, e::jsonb, w, c::jsonb
             FROM unnest($1::text[], $2::text[], $5::bigint[], $6::uuid[], $7::int[], $8::text[], $9::bytea[], $10::text[])
                  AS u(s, r, o, b, p, e, w, c)
             ON CONFLICT DO NOTHING",
            &[&stages, &reasons, &topic, &partition, &offsets, &batch_ids, &positions, &events, &raws, &contexts],
        )
        .await?;
    }
    let next = buffer.next_offset.expect("flush only with records");
    let moved = tx
        .execute(
            "INSERT INTO chronos.offsets (consumer_group, topic, partition, next_offset) VALUES ($1, $2, $3, $4)
             ON CONFLICT (consumer_group, topic, partition) DO UPDATE
             SET next_offset = EXCLUDED.next_offset, updated_at = now()
             WHERE chronos.offsets.next_offset IS NOT DISTINCT FROM $5",
            &[&shared.group, &topic, &partition, &next, &expected],
        )
        .await?;
    if moved != 1 {
        tx.rollback().await?;
        let stored = client
            .query_opt(
                "SELECT next_offset FROM chronos.offsets WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
                &[&shared.group, &topic, &partition],
            )
            .await?
            .map(|r| r.get::<_, i64>(0));
        return Err(FlushError::Fenced(stored));
    }
    tx.commit().await?;
    tracing::debug!(topic, partition, rows = loaded, next_offset = next, "Loaded batch.");
    Ok(loaded)
}

impl Actor for PartitionLoader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.mailbox_capacity);
        let every = Duration::from_millis((self.shared.flush_ms / 4).max(10));
        ctx.run_interval(every, |act, ctx| {
            if act.due() {
                act.flush(ctx);
            }
        });
    }
}

/// Message: one Kafka record of this loader's partition.
pub struct Record {
    pub offset: i64,
    pub payload: Vec<u8>,
}

impl Message for Record {
    type Result = ();
}

impl Handler<Record> for PartitionLoader {
    type Result = ();

    fn handle(&mut self, mut rec: Record, ctx: &mut Context<Self>) {
        // After a fence, wait for the seek: skip everything until the stored
        // offset itself is delivered again (these topics have no offset gaps).
        if let Some(at) = self.resync_at {
            if rec.offset != at {
                return;
            }
            self.resync_at = None;
        }
        // Records below the next offset are already loaded (ours or another
        // loader's) or were delivered again after a seek: skip them. A record
        // past it means some were not handed over: read again from `next`.
        if let Some(next) = self.buffer.next_offset.or(self.expected) {
            if rec.offset < next {
                return;
            }
            if rec.offset > next {
                tracing::warn!(topic = %self.topic, partition = self.partition, next, got = rec.offset, "Offset gap; re-reading from the next offset.");
                self.resync_at = Some(next);
                let _ = self.shared.seeks.try_send((self.topic.clone(), self.partition, next));
                return;
            }
        }
        let raw_copy = rec.payload.clone();
        let dead_letters = self.is_dead_letter_topic();
        let decoded = catch_unwind(AssertUnwindSafe(|| {
            if dead_letters {
                decode_dead_letter(&mut rec.payload).map(Err)
            } else {
                decode_batch(&mut rec.payload, &self.shared.catalog, self.shared.policy).map(Ok)
            }
        }))
        .unwrap_or_else(|_| {
            self.shared.metrics.actor_panics.with_label_values(&["loader"]).inc();
            Err("the decoder panicked on this record".into())
        });
        let b = &mut self.buffer;
        match decoded {
            Ok(Ok(mut batch)) => {
                b.records.push(raw_copy);
                b.events += batch.events;
                for letter in batch.dead.drain(..) {
                    b.dead.push(PlacedDeadLetter { letter, offset: rec.offset });
                }
                b.batches.push(batch);
            }
            Ok(Err(letters)) => b.dead.extend(letters.into_iter().map(|letter| PlacedDeadLetter { letter, offset: rec.offset })),
            Err(reason) => b.dead.push(PlacedDeadLetter {
                letter: DeadLetter { stage: "load", reason, batch_id: None, position: None, event: None, raw: Some(raw_copy), context: None },
                offset: rec.offset,
            }),
        }
        b.next_offset = Some(rec.offset + 1);
        b.first_at.get_or_insert_with(Instant::now);
        if self.due() {
            self.flush(ctx);
        }
    }
}

/// Message: the partition was revoked; stop without committing what is buffered.
pub struct Revoked;

impl Message for Revoked {
    type Result = ();
}

impl Handler<Revoked> for PartitionLoader {
    type Result = ();

    fn handle(&mut self, _: Revoked, ctx: &mut Context<Self>) {
        self.buffer = Buffer::default();
        ctx.stop();
    }
}

/// Message: flush what is buffered now (shutdown).
pub struct FlushNow;

impl Message for FlushNow {
    type Result = ();
}

impl Handler<FlushNow> for PartitionLoader {
    type Result = ();

    fn handle(&mut self, _: FlushNow, ctx: &mut Context<Self>) {
        self.flush(ctx);
    }
}
