//! `PartitionLoader`: one per assigned partition, supervised (`supervise`).
//!
//! It reads its partition's own queue and decodes each record once, in one
//! walk, into binary COPY tuples and into the continuous views' partial
//! aggregates (of the view generation current when it decoded). When the
//! buffer is due (N events or T ms) it commits it in one transaction — see
//! `commit` — and only then tells Kafka the offset (for lag tools).
//!
//! Anything the transaction finds that the buffer did not account for —
//! another loader moved the stored offset (fenced), the view generation moved,
//! a batch id was loaded before (a tracker retry) — rolls the transaction
//! back and *rewinds*: the buffer is dropped and the partition read again
//! from the stored offset, this time knowing it. Every such case is rare; none
//! needs a second copy of the records.
//!
//! A PostgreSQL error is classified by SQLSTATE (`store::sqlstate`). A
//! transient one retries the same buffer with backoff. A permanent one is the
//! data's fault: a view's statement marks that view broken (the raw rows keep
//! loading without it); any other is traced to its record by splitting the
//! flush — the partition is read again and committed in halves of the failed
//! range until the failing record is alone — and that record is *set aside*:
//! read again, it becomes a dead letter with its raw bytes and the SQLSTATE,
//! committed with the offsets like any row, so it is stored exactly once.

use simd_json::prelude::{ValueAsScalar, ValueObjectAccess};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::FutureExt as _;
use rdkafka::message::Message as _;
use tokio::sync::watch;
use tokio_postgres::{Client, Statement, Transaction};
use uuid::Uuid;

use super::decode::{decode_dead_letter, encode_row, walk, BatchPage, DeadLetter, TimePolicy, Visit};
use super::partition::Partition;
use crate::catalog::{EventCatalog, EventType};
use crate::record::Row;
use crate::store::internals::{stored_offset, Internals, Pages};
use crate::store::sqlstate::{self, Class};
use crate::telemetry::Metrics;
use crate::views::{Accumulator, Registry};

/// Wait before a failed loader is started again.
const RESTART_DELAY: Duration = if cfg!(test) { Duration::from_millis(10) } else { Duration::from_secs(1) };
/// A gap in offsets asks for a seek at most this often (records fetched
/// before a seek may still arrive just after it).
const RESEEK_AFTER: Duration = Duration::from_secs(2);

/// A loader that got no record for this long while its partition has records
/// past its next offset takes its partition off the main queue again and
/// seeks again (see `partition::unforward`): nothing else may wake it.
const IDLE_CHECK: Duration = Duration::from_secs(3);
/// … and this long after a seek.
const FIRST_IDLE_CHECK: Duration = Duration::from_millis(500);

/// First wait before a failed commit is tried again (it doubles up to `load.retry_max_ms`).
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// What every loader reads.
pub struct LoaderShared {
    pub catalog: EventCatalog,
    pub policy: TimePolicy,
    pub group: String,
    pub dead_letter_topic: String,
    pub flush_rows: usize,
    pub flush_ms: u64,
    pub retry_max_ms: u64,
    pub pg_url: String,
    pub metrics: Arc<Metrics>,
    /// The continuous views maintained in each flush's transaction.
    pub views: Registry,
    /// `load.session_gap_secs`, in ms.
    pub session_gap_ms: i64,
}

/// What a loader is asked to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Keep loading.
    No,
    /// The partition went to another member: stop now; what is not committed
    /// is read again by the next owner.
    Revoked,
    /// chronosd stops: commit what is buffered if that is done by the deadline.
    Shutdown(Instant),
}

/// Which offset a loader takes next: exactly one, in order.
#[derive(Debug)]
pub struct Cursor {
    next: i64,
    /// The offset a seek was asked for, and when.
    sought: Option<(i64, Instant)>,
}

/// What to do with a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Take,
    /// Already loaded, or delivered again after a seek.
    Skip,
    /// Records were not delivered before this one: read again from here.
    Seek(i64),
}

impl Cursor {
    /// At `next`, just sought there.
    pub fn at(next: i64, now: Instant) -> Self {
        Cursor { next, sought: Some((next, now)) }
    }

    pub fn next(&self) -> i64 {
        self.next
    }

    pub fn step(&mut self, offset: i64, now: Instant) -> Step {
        if offset < self.next {
            return Step::Skip;
        }
        if offset == self.next {
            self.next += 1;
            self.sought = None;
            return Step::Take;
        }
        match self.sought {
            Some((at, when)) if at == self.next && now.duration_since(when) < RESEEK_AFTER => Step::Skip,
            _ => {
                self.sought = Some((self.next, now));
                Step::Seek(self.next)
            }
        }
    }
}

/// Why a flush was dropped and the partition read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewind {
    Fenced,
    Views,
    Duplicates,
    Gap,
    Panic,
    /// A permanent error: read again to split the flush (or set its record aside).
    SetAside,
}

impl Rewind {
    fn label(self) -> &'static str {
        match self {
            Rewind::Fenced => "fenced",
            Rewind::Views => "views",
            Rewind::Duplicates => "duplicates",
            Rewind::Gap => "gap",
            Rewind::Panic => "panic",
            Rewind::SetAside => "set_aside",
        }
    }
}

/// What a loader holds between commits, built as records are decoded.
struct Buffer {
    /// COPY tuples (no header or trailer) per catalog type, in catalog order.
    tuples: Vec<BytesMut>,
    batch_ids: HashSet<Uuid>,
    /// The imported ones among them (their claims are kept for good).
    imported: HashSet<Uuid>,
    /// Their pages, once per batch.
    pages: Pages,
    /// One piece of a visit per record, for `chronos.sessions` and `chronos.identities`.
    pieces: crate::store::sessions::Pieces,
    views: Accumulator,
    /// Dead letters with the offset of their record.
    dead: Vec<(i64, DeadLetter)>,
    events: usize,
    records: usize,
    first_at: Option<Instant>,
    /// The offset after its last record (set when it is handed to a commit).
    next: i64,
}

impl Buffer {
    /// An empty buffer for the view set current now.
    fn current(shared: &LoaderShared) -> Self {
        Buffer::new(shared.catalog.types().len(), Accumulator::new(shared.views.current()))
    }

    fn new(types: usize, views: Accumulator) -> Self {
        Buffer {
            tuples: (0..types).map(|_| BytesMut::new()).collect(),
            batch_ids: HashSet::new(),
            imported: HashSet::new(),
            pages: Pages::default(),
            pieces: Default::default(),
            views,
            dead: Vec::new(),
            events: 0,
            records: 0,
            first_at: None,
            next: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.records == 0
    }
}

/// A record's walk into the buffer.
struct IntoBuffer<'a> {
    buffer: &'a mut Buffer,
    types: &'a [EventType],
    offset: i64,
    /// Batch ids a rolled-back commit found loaded before.
    duplicates: &'a HashSet<Uuid>,
}

impl Visit for IntoBuffer<'_> {
    fn batch(&mut self, batch_id: Uuid, imported: bool) -> bool {
        // A retry of a batch loaded before, or twice in this buffer: skipped whole.
        let fresh = !self.duplicates.contains(&batch_id) && self.buffer.batch_ids.insert(batch_id);
        if fresh && imported {
            self.buffer.imported.insert(batch_id);
        }
        fresh
    }

    fn page(&mut self, page: BatchPage<'_>) {
        self.buffer.pages.push(page.batch_id, page.received_at, page.session_id, page.metadata);
    }

    fn event(&mut self, table: usize, row: &Row<'_, '_>, batch_id: Uuid) {
        encode_row(&mut self.buffer.tuples[table], &self.types[table], row, &batch_id);
        self.buffer.views.add(table, row);
        let piece = self.buffer.pieces.of(batch_id, || {
            let geo = |k: &str| row.geo.and_then(|g| g.get(k)).and_then(|v| v.as_str()).map(str::to_string);
            crate::store::sessions::Piece {
                session_id: row.session_id.to_string(),
                start: row.time,
                end: row.time,
                url: row.page.get("url").and_then(|u| u.as_str()).map(str::to_string),
                user_id: row.user_id.map(str::to_string),
                is_bot: row.bot.is_some(),
                browser: row.agent_field("browser").map(str::to_string),
                os: row.agent_field("os").map(str::to_string),
                device_type: row.agent_field("device").map(str::to_string),
                country: geo("country"),
                region: geo("region"),
                city: geo("city"),
                ..Default::default()
            }
        });
        piece.start = piece.start.min(row.time);
        piece.end = piece.end.max(row.time);
        piece.events += 1;
        if row.type_name == "pageviews" {
            piece.pageviews += 1;
            if piece.referrer.is_none() {
                let ty = &self.types[table];
                let at = ty.attributes.iter().position(|a| &*a.name == "referrer");
                piece.referrer = at.and_then(|i| row.attrs.get(i).copied().flatten()).and_then(|v| v.as_str()).map(str::to_string);
            }
        }
        self.buffer.events += 1;
    }

    fn reject(&mut self, letter: DeadLetter) {
        self.buffer.dead.push((self.offset, letter));
    }
}

/// A loader's connection and the statements prepared on it.
struct Db {
    client: Client,
    internals: Internals,
    /// View upserts, by SQL (views come and go with their generation).
    upserts: HashMap<String, Statement>,
}

impl Db {
    /// The connection in `db`, opened again (statements prepared) when there
    /// is none or PostgreSQL closed it.
    async fn connected<'a>(db: &'a mut Option<Db>, shared: &LoaderShared) -> anyhow::Result<&'a mut Db> {
        if db.as_ref().is_none_or(|d| d.client.is_closed()) {
            let client = crate::store::connect(&shared.pg_url).await?;
            let internals = Internals::prepare(&client, &shared.catalog).await?;
            *db = Some(Db { client, internals, upserts: Default::default() });
        }
        Ok(db.as_mut().expect("connected above"))
    }
}

/// The upserts of `views`, prepared once per connection (in `tx`: a
/// statement's preparation outlives its transaction).
async fn prepared_upserts(
    cache: &mut HashMap<String, Statement>,
    tx: &Transaction<'_>,
    views: &crate::views::ViewSet,
) -> Result<Vec<Statement>, tokio_postgres::Error> {
    let mut out = Vec::with_capacity(views.views.len());
    for v in &views.views {
        if !cache.contains_key(&v.upsert) {
            let s = tx.prepare(&v.upsert).await?;
            cache.insert(v.upsert.clone(), s);
        }
        out.push(cache[&v.upsert].clone());
    }
    Ok(out)
}

/// How a commit attempt ended (errors aside).
enum Committed {
    Rows(u64),
    /// Rolled back; read again from the stored offset (`Option<i64>`), skipping
    /// these batch ids (found loaded before).
    Rewind(Rewind, Option<i64>, Vec<Uuid>),
}

/// A commit in flight: it owns the connection and the buffer, and gives them back.
struct Flushing {
    db: Option<Db>,
    buffer: Buffer,
    started: Instant,
    result: anyhow::Result<Committed>,
}

type InFlight = futures_util::future::BoxFuture<'static, Flushing>;

/// What the first statements of a flush's transaction found.
struct Found<'a> {
    /// The offset fence held.
    advanced: bool,
    /// The view generation under the views lock.
    generation: i64,
    /// The buffer's batch ids not seen before.
    fresh: &'a HashSet<Uuid>,
}

/// Whether a flush may go on to COPY and COMMIT.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Commit,
    Rewind(Rewind),
}

impl Found<'_> {
    fn verdict(&self, buffer: &Buffer, ids: &[Uuid]) -> Verdict {
        if !self.advanced {
            // Another loader owns what comes next: nothing else matters.
            Verdict::Rewind(Rewind::Fenced)
        } else if buffer.events > 0 && self.generation != buffer.views.generation() {
            // Aggregated for another set of views.
            Verdict::Rewind(Rewind::Views)
        } else if self.fresh.len() != ids.len() {
            Verdict::Rewind(Rewind::Duplicates)
        } else {
            Verdict::Commit
        }
    }
}

/// A PostgreSQL error as PostgreSQL said it (tokio-postgres prints only "db error").
/// A view's failure names the view.
fn db_error(e: &anyhow::Error) -> String {
    let view = e.downcast_ref::<crate::views::ViewFailure>().map(|v| format!("view `{}`: ", v.view)).unwrap_or_default();
    match e.chain().find_map(|c| c.downcast_ref::<tokio_postgres::Error>()).filter(|pg| pg.as_db_error().is_some()) {
        Some(pg) => format!("{view}{}", sqlstate::describe(pg).1),
        None => format!("{e:#}"),
    }
}

/// Why a record is set aside when it is read again.
#[derive(Debug, Clone)]
struct SetAside {
    reason: String,
    sqlstate: Option<String>,
}

/// Offsets `from..to` of a partition hold a record a permanent error comes
/// from: the next flushes end at the middle of what is left, until it fails alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Suspect {
    from: i64,
    to: i64,
}

impl Suspect {
    /// Where the next flush ends: the middle of the range (at least one record).
    fn split(&self) -> i64 {
        self.from + ((self.to - self.from) / 2).max(1)
    }

    /// After a commit of records before `next`: what is left, if anything.
    fn committed(self, next: i64) -> Option<Suspect> {
        let from = self.from.max(next);
        (from < self.to).then_some(Suspect { from, ..self })
    }
}

/// What a failed commit asks for.
#[derive(Debug)]
enum Failure {
    /// Try the same buffer again later.
    Transient,
    /// A view's statement failed for good: mark it broken.
    View { view: String, reason: String },
    /// The rows themselves: find the record at fault.
    Data { reason: String, sqlstate: Option<String> },
}

impl Failure {
    fn of(e: &anyhow::Error) -> Self {
        if let Some(v) = e.downcast_ref::<crate::views::ViewFailure>() {
            if sqlstate::classify(&v.source) == Class::Permanent {
                return Failure::View { view: v.view.clone(), reason: sqlstate::describe(&v.source).1 };
            }
            return Failure::Transient;
        }
        match e.downcast_ref::<tokio_postgres::Error>() {
            Some(pg) if sqlstate::classify(pg) == Class::Permanent => {
                let (sqlstate, reason) = sqlstate::describe(pg);
                Failure::Data { reason, sqlstate }
            }
            _ => Failure::Transient,
        }
    }
}

/// The loader of one partition.
pub struct PartitionLoader {
    shared: Arc<LoaderShared>,
    partition: Arc<Partition>,
    stop: watch::Receiver<Stop>,
    db: Option<Db>,
    cursor: Cursor,
    /// The next offset stored in PostgreSQL when this loader last committed
    /// or read it: the fence of its next commit.
    expected: Option<i64>,
    /// The records being decoded.
    buffer: Buffer,
    /// The commit of the buffer before, while this one fills.
    inflight: Option<InFlight>,
    /// A buffer whose commit failed, and when to try again.
    retry: Option<(Buffer, Instant)>,
    backoff: Duration,
    duplicates: HashSet<Uuid>,
    /// Offsets set aside (their decoding panicked, or a permanent PostgreSQL
    /// error was traced to them): dead-lettered whole when read again.
    poisoned: HashMap<i64, SetAside>,
    /// A range of offsets known to hold the record of a permanent error.
    suspect: Option<Suspect>,
    /// A rewind asked for while taking records.
    rewind: Option<Rewind>,
    /// A seek asked for while taking records (an offset gap).
    reseek: Option<i64>,
    /// When the partition's queue last gave a record (or the loader sought).
    last_record_at: Instant,
    /// The record being decoded (simd-json parses in place).
    scratch: Vec<u8>,
    /// This partition is of the dead-letter topic.
    dead_letters: bool,
    /// `chronos_load_wait_seconds_total` of this loader's topic.
    waited: Waited,
}

/// The wait counters of one topic's loaders, looked up once per loader.
struct Waited {
    records: prometheus::Counter,
    commit: prometheus::Counter,
}

impl PartitionLoader {
    pub fn new(shared: Arc<LoaderShared>, partition: Arc<Partition>, stop: watch::Receiver<Stop>) -> Self {
        let buffer = Buffer::current(&shared);
        let dead_letters = partition.topic == shared.dead_letter_topic;
        let wait = |on: &str| shared.metrics.load_wait_seconds.with_label_values(&[&partition.topic, on]);
        let waited = Waited { records: wait("records"), commit: wait("commit") };
        PartitionLoader {
            shared,
            partition,
            stop,
            db: None,
            cursor: Cursor::at(0, Instant::now()),
            expected: None,
            buffer,
            inflight: None,
            retry: None,
            backoff: FIRST_BACKOFF,
            duplicates: HashSet::new(),
            poisoned: HashMap::new(),
            suspect: None,
            rewind: None,
            reseek: None,
            last_record_at: Instant::now(),
            scratch: Vec::new(),
            dead_letters,
            waited,
        }
    }

    fn stop_request(&self) -> Stop {
        if self.stop.has_changed().is_err() {
            return Stop::Revoked; // the consumer is gone
        }
        *self.stop.borrow()
    }

    fn due(&self) -> bool {
        self.buffer.events >= self.shared.flush_rows
            || self.buffer.first_at.is_some_and(|t| t.elapsed() >= Duration::from_millis(self.shared.flush_ms))
            || self.suspect.is_some_and(|s| !self.buffer.is_empty() && self.cursor.next() >= s.split())
    }

    /// Loads until stopped. An error ends this loader (its supervisor starts
    /// a new one, from the stored offset). While a buffer commits, the next
    /// one fills: decoding and PostgreSQL's work on the partition overlap.
    pub async fn run(mut self) -> anyhow::Result<()> {
        if !self.start().await? {
            return Ok(());
        }
        loop {
            let more = self.drain();
            if let Some(why) = self.rewind.take() {
                // Settle the commit in flight first: it may move the stored offset.
                if let Some(f) = self.inflight.take() {
                    self.settle(f.await).await?;
                }
                self.rewind_to(why, self.expected).await?;
                continue;
            }
            if let Some(next) = self.reseek.take() {
                // The buffer holds every record before `next`: keep it.
                self.seek_again(next).await?;
                continue;
            }
            match self.stop_request() {
                Stop::No => {}
                Stop::Revoked => return Ok(()),
                Stop::Shutdown(deadline) => {
                    let _ = tokio::time::timeout_at(deadline.into(), self.finish()).await;
                    return Ok(());
                }
            }
            let due = self.due();
            if due && self.inflight.is_none() && self.retry.is_none() {
                self.hand_over();
                continue;
            }
            if more && !due {
                continue;
            }
            let flush_at = self.buffer.first_at.map(|t| t + Duration::from_millis(self.shared.flush_ms));
            let retry_at = self.retry.as_ref().map(|(_, at)| *at);
            let idle_at = self.last_record_at + IDLE_CHECK;
            let waiting = Instant::now();
            tokio::select! {
                done = async { self.inflight.as_mut().expect("checked").await }, if self.inflight.is_some() => {
                    self.inflight = None;
                    self.settle(done).await?;
                }
                _ = sleep_until(retry_at), if self.inflight.is_none() => {
                    let (buffer, _) = self.retry.take().expect("retry_at is set");
                    self.commit(buffer);
                }
                _ = self.stop.changed() => {}
                _ = self.partition.ready(), if !due => {}
                _ = sleep_until(flush_at), if !due => {}
                _ = tokio::time::sleep_until(idle_at.into()), if !due => self.check_idle().await?,
            }
            let on = if due { &self.waited.commit } else { &self.waited.records };
            on.inc_by(waiting.elapsed().as_secs_f64());
        }
    }

    /// Hands the buffer to a commit and starts a new one.
    fn hand_over(&mut self) {
        let mut buffer = std::mem::replace(&mut self.buffer, Buffer::current(&self.shared));
        buffer.next = self.cursor.next();
        self.commit(buffer);
    }

    /// Starts committing `buffer` (one at a time: its fence is the offset the
    /// commit before it stored).
    fn commit(&mut self, buffer: Buffer) {
        assert!(self.inflight.is_none(), "one commit at a time");
        let (shared, db, expected) = (self.shared.clone(), self.db.take(), self.expected);
        let (topic, partition) = (self.partition.topic.clone(), self.partition.partition);
        self.inflight = Some(Box::pin(async move {
            let started = Instant::now();
            let mut db = db;
            let result = commit(&shared, &mut db, &topic, partition, expected, &buffer).await;
            Flushing { db, buffer, started, result }
        }));
    }

    /// Takes in what a commit ended with.
    async fn settle(&mut self, done: Flushing) -> anyhow::Result<()> {
        self.db = done.db;
        match done.result {
            Ok(Committed::Rows(rows)) => {
                let m = &self.shared.metrics;
                m.load_flush_seconds.observe(done.started.elapsed().as_secs_f64());
                m.load_events.inc_by(rows);
                let next = done.buffer.next;
                self.expected = Some(next);
                self.partition.commit(next);
                let (topic, partition, now) = (&self.partition.topic, self.partition.partition, crate::clock::now_ms());
                m.board.committed(topic, partition, next, now);
                m.load_last_commit.with_label_values(&[topic, &partition.to_string()]).set(now as f64 / 1000.0);
                self.duplicates.clear();
                self.poisoned.retain(|o, _| *o >= next);
                self.suspect = self.suspect.and_then(|s| s.committed(next));
                self.backoff = FIRST_BACKOFF;
                Ok(())
            }
            Ok(Committed::Rewind(why, to, duplicates)) => {
                self.duplicates.extend(duplicates);
                self.rewind_to(why, to).await
            }
            Err(e) => match Failure::of(&e) {
                Failure::Transient => {
                    let (topic, partition) = (&self.partition.topic, self.partition.partition);
                    let error = db_error(&e);
                    tracing::warn!(topic, partition, error, retry_in_ms = self.backoff.as_millis() as u64, "Flush failed; retrying.");
                    self.shared.metrics.board.failed(topic, partition, &format!("flush failed: {error}"), crate::clock::now_ms());
                    self.shared.metrics.load_flush_retries.inc();
                    self.retry = Some((done.buffer, Instant::now() + self.backoff));
                    self.backoff = (self.backoff * 2).min(Duration::from_millis(self.shared.retry_max_ms));
                    Ok(())
                }
                Failure::View { view, reason } => self.break_view(&view, &reason).await,
                Failure::Data { reason, sqlstate } => self.trace(&done.buffer, reason, sqlstate).await,
            },
        }
    }

    /// A view's statement failed for good: the view is marked broken (no
    /// loader maintains it any more) and the flush is read again without it.
    async fn break_view(&mut self, view: &str, reason: &str) -> anyhow::Result<()> {
        let (topic, partition) = (&self.partition.topic, self.partition.partition);
        let db = Db::connected(&mut self.db, &self.shared).await?;
        if crate::views::mark_broken(&mut db.client, view, reason).await? {
            self.shared.metrics.views_broken.with_label_values(&[view]).inc();
            tracing::error!(
                topic,
                partition,
                view,
                error = reason,
                "Continuous view failed for good: marked broken and no longer maintained (chronos views list); raw rows keep loading."
            );
        }
        self.rewind_to(Rewind::Views, self.expected).await
    }

    /// A permanent error in the flush of `buffer`: narrows down the record at
    /// fault (the next flushes end at the middle of the failed range), or,
    /// when the flush held that record alone, sets it aside. Then reads again.
    async fn trace(&mut self, buffer: &Buffer, reason: String, sqlstate: Option<String>) -> anyhow::Result<()> {
        let (topic, partition) = (self.partition.topic.clone(), self.partition.partition);
        // Its records are consecutive offsets (the cursor takes each once, in order).
        let from = buffer.next - buffer.records as i64;
        if buffer.next - from <= 1 {
            if let Some(again) = self.poisoned.get(&from) {
                // Its dead letter itself failed: that must not happen (dead
                // letters are made storable); retry rather than lose it.
                tracing::error!(
                    topic,
                    partition,
                    offset = from,
                    error = reason,
                    set_aside = again.reason,
                    "A record set aside cannot be stored as a dead letter; retrying."
                );
                self.shared.metrics.load_flush_retries.inc();
                let wait = self.backoff;
                self.pause(wait).await;
                self.backoff = (self.backoff * 2).min(Duration::from_millis(self.shared.retry_max_ms));
            } else {
                tracing::error!(
                    topic,
                    partition,
                    offset = from,
                    error = reason,
                    "Record set aside as a dead letter: PostgreSQL refuses it for good."
                );
                self.shared.metrics.load_set_aside.with_label_values(&[&topic]).inc();
                self.poisoned.insert(from, SetAside { reason, sqlstate });
            }
            self.suspect = None;
        } else {
            tracing::warn!(
                topic,
                partition,
                from,
                to = buffer.next,
                error = reason,
                "Permanent error in a flush; splitting it to find the record at fault."
            );
            self.suspect = Some(Suspect { from, to: buffer.next });
        }
        self.rewind_to(Rewind::SetAside, self.expected).await
    }

    /// At shutdown: commits everything held (the commit in flight, one to
    /// retry, the buffer), retrying with backoff; the caller bounds it.
    async fn finish(&mut self) {
        loop {
            if let Some(f) = self.inflight.take() {
                let done = f.await;
                if self.settle(done).await.is_err() {
                    return;
                }
            } else if let Some((buffer, at)) = self.retry.take() {
                tokio::time::sleep_until(at.into()).await;
                self.commit(buffer);
            } else if !self.buffer.is_empty() {
                self.hand_over();
            } else {
                return;
            }
        }
    }

    /// Reads the stored offset and the current views (retrying while
    /// PostgreSQL is unreachable), then seeks there. `false`: stopped meanwhile.
    async fn start(&mut self) -> anyhow::Result<bool> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.open().await {
                Ok(()) => break,
                Err(e) => {
                    let (topic, partition) = (&self.partition.topic, self.partition.partition);
                    let error = db_error(&e);
                    tracing::warn!(topic, partition, error, "Cannot read the stored offset; retrying.");
                    self.shared.metrics.board.failed(topic, partition, &format!("cannot read the stored offset: {error}"), crate::clock::now_ms());
                    if !self.pause(backoff).await {
                        return Ok(false);
                    }
                    backoff = (backoff * 2).min(Duration::from_millis(self.shared.retry_max_ms));
                }
            }
        }
        let from = self.seek_to(self.expected).await?;
        tracing::info!(topic = %self.partition.topic, partition = self.partition.partition, stored = ?self.expected, from, "Loading from the stored offset.");
        Ok(true)
    }

    async fn open(&mut self) -> anyhow::Result<()> {
        let db = Db::connected(&mut self.db, &self.shared).await?;
        let (topic, partition) = (&self.partition.topic, self.partition.partition);
        self.expected = stored_offset(&db.client, &self.shared.group, topic, partition).await?;
        self.shared.metrics.board.resumed_at(topic, partition, self.expected, crate::clock::now_ms());
        self.shared.views.refresh(&db.client, &self.shared.catalog).await?;
        self.buffer = Buffer::current(&self.shared);
        Ok(())
    }

    /// Seeks to `offset` (`None`: the earliest kept) and returns where reading starts.
    async fn seek_to(&mut self, offset: Option<i64>) -> anyhow::Result<i64> {
        let from = match offset {
            Some(o) => o,
            None => self.partition.watermarks().await?.0,
        };
        self.seek_at(from).await?;
        Ok(from)
    }

    /// No record for `IDLE_CHECK`: seeks again if the partition has records
    /// this loader should have been given.
    async fn check_idle(&mut self) -> anyhow::Result<()> {
        self.last_record_at = Instant::now();
        let (_, high) = self.partition.watermarks().await?;
        let next = self.cursor.next();
        if high > next {
            let queued = self.partition.queued();
            tracing::info!(topic = %self.partition.topic, partition = self.partition.partition, next, high, ?queued, "No records delivered though the partition has some; seeking again.");
            self.seek_again(next).await?;
        }
        Ok(())
    }

    /// Fetches again from `next`, keeping the buffer (records before `next`
    /// are all in it): an offset gap, or records not delivered.
    async fn seek_again(&mut self, next: i64) -> anyhow::Result<()> {
        self.shared.metrics.load_rewinds.with_label_values(&[Rewind::Gap.label()]).inc();
        self.seek_at(next).await
    }

    /// Seeks the partition to `from`; the next record to take is `from`.
    async fn seek_at(&mut self, from: i64) -> anyhow::Result<()> {
        self.partition.seek(from).await?;
        self.cursor = Cursor::at(from, Instant::now());
        // The idle check comes soon after every seek, a repeated one included:
        // a seek made while librdkafka is still applying the assignment can
        // leave the partition not fetching (no records, an empty queue; seen
        // for one or two seeks in a row right after an assignment), and only
        // another seek starts it.
        self.last_record_at = Instant::now().checked_sub(IDLE_CHECK - FIRST_IDLE_CHECK).unwrap_or_else(Instant::now);
        Ok(())
    }

    /// Sleeps `d`; `false` when asked to stop meanwhile.
    async fn pause(&mut self, d: Duration) -> bool {
        let _ = tokio::time::timeout(d, self.stop.changed()).await;
        self.stop_request() == Stop::No
    }

    /// Takes the records waiting in the queue until it is empty (`false`) or
    /// the buffer is due (`true`: more may be waiting).
    fn drain(&mut self) -> bool {
        // Its own handle: a record borrows the queue while `take` borrows `self`.
        let partition = self.partition.clone();
        loop {
            if self.due() || self.rewind.is_some() || self.reseek.is_some() {
                return true;
            }
            let message = match partition.poll() {
                None => return false,
                Some(Err(e)) => {
                    tracing::warn!(topic = %partition.topic, partition = partition.partition, error = %e, "Consume error.");
                    continue;
                }
                Some(Ok(m)) => m,
            };
            let offset = message.offset();
            self.last_record_at = Instant::now();
            match self.cursor.step(offset, Instant::now()) {
                Step::Take => self.take(offset, message.payload().unwrap_or_default()),
                Step::Skip => {}
                Step::Seek(next) => {
                    tracing::warn!(topic = %partition.topic, partition = partition.partition, next, got = offset, "Offset gap; fetching again from the next offset.");
                    self.reseek = Some(next);
                    return true;
                }
            }
        }
    }

    /// Decodes one record into the buffer.
    fn take(&mut self, offset: i64, payload: &[u8]) {
        let failed = if let Some(aside) = self.poisoned.get(&offset) {
            Some((aside.reason.clone(), aside.sqlstate.clone()))
        } else {
            let dead_letters = self.dead_letters;
            self.scratch.clear();
            self.scratch.extend_from_slice(payload);
            let (shared, scratch) = (&self.shared, &mut self.scratch);
            let mut into = IntoBuffer { buffer: &mut self.buffer, types: shared.catalog.types(), offset, duplicates: &self.duplicates };
            let decoded = catch_unwind(AssertUnwindSafe(|| {
                if dead_letters {
                    decode_dead_letter(scratch).map(|letters| into.buffer.dead.extend(letters.into_iter().map(|l| (offset, l))))
                } else {
                    walk(scratch, &shared.catalog, shared.policy, &mut into).map(|_| ())
                }
            }));
            match decoded {
                Ok(Ok(())) => None,
                // Nothing of the record was taken: `walk` fails before its first event.
                Ok(Err(reason)) => Some((reason, None)),
                Err(_) => {
                    // Some of its rows may be in the buffer: drop the buffer and
                    // read again, dead-lettering this record whole.
                    self.shared.metrics.actor_panics.with_label_values(&["loader"]).inc();
                    tracing::error!(topic = %self.partition.topic, partition = self.partition.partition, offset, "The decoder panicked on a record; it becomes a dead letter.");
                    self.poisoned.insert(offset, SetAside { reason: "the decoder panicked on this record".into(), sqlstate: None });
                    self.rewind = Some(Rewind::Panic);
                    return;
                }
            }
        };
        if let Some((reason, sqlstate)) = failed {
            let letter = DeadLetter {
                stage: "load",
                reason,
                batch_id: None,
                position: None,
                event: None,
                raw: Some(payload.to_vec()),
                context: None,
                sqlstate,
            };
            self.buffer.dead.push((offset, letter));
        }
        self.buffer.records += 1;
        self.buffer.first_at.get_or_insert_with(Instant::now);
    }

    /// Drops the buffer and reads again from `to`, the stored offset.
    async fn rewind_to(&mut self, why: Rewind, to: Option<i64>) -> anyhow::Result<()> {
        self.shared.metrics.load_rewinds.with_label_values(&[why.label()]).inc();
        let (topic, partition) = (&self.partition.topic, self.partition.partition);
        match why {
            Rewind::Fenced => tracing::warn!(topic, partition, stored = ?to, "Offset moved by another loader; reading again from the stored offset."),
            _ => {
                tracing::info!(topic, partition, reason = why.label(), stored = ?to, "Flush dropped before commit; reading again from the stored offset.")
            }
        }
        self.expected = to;
        self.retry = None;
        // A suspect range holds from the stored offset, where reading starts
        // again; another rewind may mean another owner read past it.
        if why == Rewind::Fenced {
            self.suspect = None;
        }
        self.backoff = FIRST_BACKOFF;
        self.buffer = Buffer::current(&self.shared);
        self.seek_to(to).await?;
        Ok(())
    }
}

/// One transaction: the offset fence, the batch ids and the views lock
/// (pipelined), then COPY per table, the views' upserts, the dead letters, COMMIT.
async fn commit(
    shared: &LoaderShared,
    db: &mut Option<Db>,
    topic: &str,
    partition: i32,
    expected: Option<i64>,
    buffer: &Buffer,
) -> anyhow::Result<Committed> {
    let Db { client, internals, upserts } = Db::connected(db, shared).await?;
    let next = buffer.next;
    let tx = client.transaction().await?;
    // Every batch taken has its page, in the order taken.
    let ids = &buffer.pages.batch_ids;
    let (advanced, fresh, views) = futures_util::future::try_join3(
        internals.advance_offset(&tx, &shared.group, topic, partition, expected, next),
        internals.claim_batches(&tx, ids, &buffer.imported),
        shared.views.lock_current(&tx, &shared.catalog),
    )
    .await?;
    let found = Found { advanced, generation: views.generation, fresh: &fresh };
    match found.verdict(buffer, ids) {
        Verdict::Commit => {}
        Verdict::Rewind(Rewind::Fenced) => {
            tx.rollback().await?;
            let stored = stored_offset(&*client, &shared.group, topic, partition).await?;
            return Ok(Committed::Rewind(Rewind::Fenced, stored, Vec::new()));
        }
        Verdict::Rewind(why) => {
            // Dropping `tx` rolls it back.
            let seen = ids.iter().filter(|id| !fresh.contains(id)).copied().collect();
            return Ok(Committed::Rewind(why, expected, seen));
        }
    }
    internals.store_pages(&tx, &buffer.pages).await?;
    let mut rows = 0;
    for (table, tuples) in buffer.tuples.iter().enumerate().filter(|(_, t)| !t.is_empty()) {
        rows += internals.copy_rows(&tx, table, tuples).await?;
    }
    if !buffer.views.is_empty() {
        let started = Instant::now();
        let upserts = prepared_upserts(upserts, &tx, &views).await?;
        let groups = buffer.views.apply(&tx, &upserts, partition).await?;
        shared.metrics.view_groups.inc_by(groups);
        shared.metrics.view_seconds.observe(started.elapsed().as_secs_f64());
    }
    internals.upsert_identities(&tx, &buffer.pieces.pieces).await?;
    crate::store::sessions::apply(&tx, &buffer.pieces.pieces, shared.session_gap_ms).await?;
    internals.insert_dead_letters(&tx, topic, partition, &buffer.dead).await?;
    tx.commit().await?;
    tracing::debug!(topic, partition, rows, next_offset = next, "Loaded.");
    Ok(Committed::Rows(rows))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Runs the loader that `make` builds until it stops on its own, and starts a
/// new one — which reads from the stored offset — each time one fails or
/// panics, counting it (`chronos_load_restarts_total`) and logging it at ERROR.
pub async fn supervise<F, Fut>(topic: String, partition: i32, metrics: Arc<Metrics>, mut stop: watch::Receiver<Stop>, make: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    metrics.board.loader_started(&topic, partition, crate::clock::now_ms());
    supervise_loader(&topic, partition, &metrics, &mut stop, make).await;
    metrics.board.loader_ended(&topic, partition);
}

async fn supervise_loader<F, Fut>(topic: &str, partition: i32, metrics: &Metrics, stop: &mut watch::Receiver<Stop>, mut make: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    loop {
        let error = match AssertUnwindSafe(make()).catch_unwind().await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("{e:#}"),
            Err(panic) => match panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()) {
                Some(msg) => format!("panicked: {msg}"),
                None => "panicked".to_string(),
            },
        };
        if stop.has_changed().is_err() || *stop.borrow() != Stop::No {
            return;
        }
        metrics.load_restarts.with_label_values(&[topic, &partition.to_string()]).inc();
        metrics.board.failed(topic, partition, &format!("loader failed: {error}"), crate::clock::now_ms());
        tracing::error!(topic, partition, error, "Loader failed; starting it again from the stored offset.");
        let _ = tokio::time::timeout(RESTART_DELAY, stop.changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn the_cursor_takes_each_offset_once_in_order() {
        let t0 = Instant::now();
        let mut c = Cursor::at(10, t0);
        assert_eq!(c.step(9, t0), Step::Skip, "below the stored offset: loaded before");
        assert_eq!(c.step(10, t0), Step::Take);
        assert_eq!(c.step(11, t0), Step::Take);
        assert_eq!(c.step(11, t0), Step::Skip, "delivered twice");
        assert_eq!(c.next(), 12);
    }

    #[test]
    fn a_gap_seeks_once_then_waits_for_the_seek() {
        let t0 = Instant::now();
        let mut c = Cursor::at(5, t0);
        assert_eq!(c.step(5, t0), Step::Take);
        assert_eq!(c.step(8, t0), Step::Seek(6), "6 and 7 were not delivered");
        assert_eq!(c.step(9, t0), Step::Skip, "fetched before the seek took effect");
        assert_eq!(c.step(6, t0), Step::Take);
        assert_eq!(c.step(9, t0 + Duration::from_millis(10)), Step::Seek(7), "a new gap after progress");
        assert_eq!(c.step(9, t0 + RESEEK_AFTER * 2), Step::Seek(7), "no answer to a seek: ask again");
    }

    #[test]
    fn just_after_a_seek_records_past_it_are_skipped() {
        let t0 = Instant::now();
        let mut c = Cursor::at(100, t0);
        assert_eq!(c.step(140, t0), Step::Skip, "fetched from where the assignment started, before the seek");
        assert_eq!(c.step(100, t0), Step::Take);
    }

    #[test]
    fn a_suspect_range_halves_towards_the_record_at_fault() {
        let s = Suspect { from: 10, to: 18 };
        assert_eq!(s.split(), 14, "the first half is flushed first");
        assert_eq!(s.committed(14), Some(Suspect { from: 14, to: 18 }), "the first half loaded: the record is in the second");
        assert_eq!(Suspect { from: 14, to: 15 }.split(), 15, "one record: flushed alone");
        assert_eq!(s.committed(18), None, "all of it loaded: nothing left to suspect");
        assert_eq!(s.committed(9), Some(s), "a commit before the range changes nothing");
    }

    fn buffer(generation: i64, events: usize) -> Buffer {
        let set = Arc::new(crate::views::ViewSet { generation, views: Vec::new() });
        Buffer { events, ..Buffer::new(1, Accumulator::new(set)) }
    }

    #[test]
    fn a_flush_commits_only_what_its_transaction_agrees_with() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let both: HashSet<Uuid> = [a, b].into();
        let only_b: HashSet<Uuid> = [b].into();
        let found = |advanced, generation, fresh| Found { advanced, generation, fresh };
        let buf = buffer(4, 100);
        assert_eq!(found(true, 4, &both).verdict(&buf, &[a, b]), Verdict::Commit);
        assert_eq!(found(false, 5, &only_b).verdict(&buf, &[a, b]), Verdict::Rewind(Rewind::Fenced), "the fence first");
        assert_eq!(found(true, 5, &both).verdict(&buf, &[a, b]), Verdict::Rewind(Rewind::Views), "a view added or dropped mid-flush");
        assert_eq!(found(true, 4, &only_b).verdict(&buf, &[a, b]), Verdict::Rewind(Rewind::Duplicates), "`a` was loaded before");
        let dead_letters_only = buffer(4, 0);
        assert_eq!(found(true, 5, &HashSet::new()).verdict(&dead_letters_only, &[]), Verdict::Commit, "no events: the views do not matter");
    }

    #[actix_rt::test]
    async fn a_failed_or_panicking_loader_is_started_again_and_counted() {
        let metrics = Arc::new(Metrics::new());
        let (_tx, rx) = watch::channel(Stop::No);
        let runs = Arc::new(AtomicUsize::new(0));
        let (r, m) = (runs.clone(), metrics.clone());
        // What the health board held as each run started (asserted after: a
        // panic in here would count as the loader's).
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        supervise("t".into(), 3, metrics.clone(), rx, move || {
            let n = r.fetch_add(1, Ordering::SeqCst);
            s.lock().unwrap().push(m.board.snapshot().partitions);
            async move {
                match n {
                    0 => anyhow::bail!("PostgreSQL said no"),
                    1 => panic!("a bug"),
                    _ => Ok(()),
                }
            }
        })
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "started again after each failure, then stopped on its own");
        assert_eq!(metrics.load_restarts.with_label_values(&["t", "3"]).get(), 2);
        let seen = seen.lock().unwrap();
        let errors: Vec<Option<&str>> = seen.iter().map(|p| p.first().and_then(|p| p.last_error.as_deref())).collect();
        assert!(seen.iter().all(|p| p.len() == 1), "on the board while it runs: {seen:?}");
        assert_eq!(errors, [None, Some("loader failed: PostgreSQL said no"), Some("loader failed: panicked: a bug")]);
        assert!(metrics.board.snapshot().partitions.is_empty(), "stopped: no longer this chronosd's partition");
    }

    #[actix_rt::test]
    async fn a_loader_failing_while_asked_to_stop_is_not_restarted() {
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = watch::channel(Stop::No);
        tx.send(Stop::Revoked).unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        supervise("t".into(), 0, metrics.clone(), rx, move || {
            r.fetch_add(1, Ordering::SeqCst);
            async { anyhow::bail!("connection closed") }
        })
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(metrics.load_restarts.with_label_values(&["t", "0"]).get(), 0);
    }
}
