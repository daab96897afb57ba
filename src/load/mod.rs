//! Loaders: Kafka → PostgreSQL, exactly once.
//!
//! One consumer (in the group `load.group_id`) polls on its own thread. On
//! assignment it reads each partition's next offset from `chronos.offsets`
//! (stored in the same transactions as the rows) and starts there, with one
//! `PartitionLoader` actor per partition on a pool of arbiters. Records go to
//! their loader with `send` (waits when the loader's mailbox is full, so a
//! slow PostgreSQL slows polling). On revocation the loaders stop; anything
//! they had not committed is read again by the next owner.

pub mod copy;
pub mod decode;
pub mod loader;
pub mod replay;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use anyhow::{Context as _, Result};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message as _;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;

use self::decode::TimePolicy;
use self::loader::{FlushNow, LoaderShared, PartitionLoader, Record, Revoked};
use crate::catalog::EventCatalog;
use crate::config::Config;
use crate::telemetry::Metrics;

type Loaders = Arc<Mutex<HashMap<(String, i32), Addr<PartitionLoader>>>>;

/// The consumer's context: starts and stops loaders on rebalance.
struct LoadContext {
    shared: Arc<LoaderShared>,
    loaders: Loaders,
    arbiters: Vec<ArbiterHandle>,
    mailbox_capacity: usize,
    rt: tokio::runtime::Runtime,
    next_arbiter: std::sync::atomic::AtomicUsize,
    /// Bumped on every assignment or revocation (the poll loop forgets its pauses).
    rebalances: std::sync::atomic::AtomicU64,
}

impl ClientContext for LoadContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::produce::kafka::log_to_tracing(level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "Loader consumer error.");
    }

    fn stats(&self, s: rdkafka::statistics::Statistics) {
        // consumer_lag = high watermark − committed offset, and Kafka offsets are
        // committed only after PostgreSQL committed: records not yet in the tables.
        let lag = &self.shared.metrics.load_consumer_lag;
        for (topic, t) in &s.topics {
            for part in t.partitions.values() {
                if part.partition >= 0 && part.desired {
                    lag.with_label_values(&[topic, &part.partition.to_string()]).set(part.consumer_lag.max(0));
                }
            }
        }
    }
}

impl LoadContext {
    /// Stored next offsets of `topic` for this group.
    fn stored_offsets(&self, topic: &str) -> Result<HashMap<i32, i64>> {
        self.rt.block_on(async {
            let client = crate::store::connect(&self.shared.pg_url).await?;
            let rows = client
                .query(
                    "SELECT partition, next_offset FROM chronos.offsets WHERE consumer_group = $1 AND topic = $2",
                    &[&self.shared.group, &topic],
                )
                .await?;
            Ok(rows.iter().map(|r| (r.get::<_, i32>(0), r.get::<_, i64>(1))).collect())
        })
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let mut by_topic: HashMap<String, HashMap<i32, i64>> = HashMap::new();
        let elements: Vec<(String, i32)> = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        for (topic, partition) in elements {
            if !by_topic.contains_key(&topic) {
                // PostgreSQL is the source of truth; without it we cannot start safely.
                let offsets = loop {
                    match self.stored_offsets(&topic) {
                        Ok(o) => break o,
                        Err(e) => {
                            tracing::warn!(error = %e, "Cannot read stored offsets; retrying.");
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                };
                by_topic.insert(topic.clone(), offsets);
            }
            let stored = by_topic[&topic].get(&partition).copied();
            let offset = stored.map(Offset::Offset).unwrap_or(Offset::Beginning);
            let _ = tpl.set_partition_offset(&topic, partition, offset);
            let i = self.next_arbiter.fetch_add(1, Ordering::Relaxed) % self.arbiters.len();
            let (shared, t, cap) = (self.shared.clone(), topic.clone(), self.mailbox_capacity);
            let addr = PartitionLoader::start_in_arbiter(&self.arbiters[i], move |_| PartitionLoader::new(shared, t, partition, stored, cap));
            tracing::info!(topic, partition, ?stored, "Partition assigned; loading from the stored offset.");
            self.loaders.lock().unwrap().insert((topic, partition), addr);
        }
        if let Err(e) = consumer.assign(tpl) {
            tracing::error!(error = %e, "Cannot assign partitions.");
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let mut loaders = self.loaders.lock().unwrap();
        for e in tpl.elements() {
            if let Some(addr) = loaders.remove(&(e.topic().to_string(), e.partition())) {
                // Stopping drops the uncommitted buffer; the next owner reads it again.
                addr.do_send(Revoked);
            }
        }
        if let Err(e) = consumer.unassign() {
            tracing::warn!(error = %e, "Cannot unassign partitions.");
        }
    }
}

impl ConsumerContext for LoadContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        self.rebalances.fetch_add(1, Ordering::SeqCst);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl),
            other => tracing::error!(?other, "Rebalance error."),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::debug!(error = %e, "Kafka offset commit failed (PostgreSQL holds the truth).");
        }
    }
}

/// The running loaders.
pub struct LoaderHandle {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    arbiters: Vec<Arbiter>,
}

impl LoaderHandle {
    /// Flushes every loader (up to 30 s each), leaves the group and stops.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for a in &self.arbiters {
            a.stop();
        }
    }
}

/// Starts the loaders of `config` (call inside an actix System).
pub fn start(config: &Config, metrics: Arc<Metrics>) -> Result<LoaderHandle> {
    let catalog = EventCatalog::from_config(&config.events, config.limits.max_string_bytes);
    let (commit_tx, commit_rx) = crossbeam_channel::bounded::<(String, i32, i64)>(10_000);
    let (seek_tx, seek_rx) = crossbeam_channel::bounded::<(String, i32, i64)>(1_000);
    let shared = Arc::new(LoaderShared {
        copy_statements: LoaderShared::copy_statements(&catalog),
        catalog,
        policy: TimePolicy {
            max_past_ms: config.load.max_past_secs as i64 * 1000,
            max_future_ms: config.load.max_future_secs as i64 * 1000,
        },
        group: config.load.group_id.clone(),
        dead_letter_topic: config.kafka.dead_letter_topic.clone(),
        flush_rows: config.load.flush_rows,
        flush_ms: config.load.flush_ms,
        retry_max_ms: config.load.retry_max_ms,
        pg_url: config.postgres.url.clone(),
        kafka_commits: commit_tx,
        seeks: seek_tx,
        metrics,
        views: crate::views::Registry::default(),
    });
    let threads = if config.load.threads > 0 {
        config.load.threads
    } else {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
    };
    let arbiters: Vec<Arbiter> = (0..threads).map(|_| Arbiter::new()).collect();
    let context = LoadContext {
        shared,
        loaders: Arc::new(Mutex::new(HashMap::new())),
        arbiters: arbiters.iter().map(|a| a.handle()).collect(),
        mailbox_capacity: config.load.mailbox_capacity,
        rt: tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        next_arbiter: Default::default(),
        rebalances: Default::default(),
    };
    let mut cc = crate::produce::kafka::base_client_config(&config.kafka);
    cc.set("group.id", &config.load.group_id)
        .set("client.id", "chronosd-loader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", config.load.session_timeout_ms.to_string())
        .set("max.poll.interval.ms", config.load.max_poll_interval_ms.to_string())
        .set("heartbeat.interval.ms", (config.load.session_timeout_ms / 3).max(100).to_string())
        .set("enable.partition.eof", "false")
        .set("queued.max.messages.kbytes", config.load.prefetch_kbytes.to_string())
        .set("statistics.interval.ms", config.kafka.statistics_interval_ms.to_string());
    let consumer: BaseConsumer<LoadContext> = cc.create_with_context(context).context("creating the loader consumer")?;
    let topics = [config.kafka.topic.clone(), config.kafka.dead_letter_topic.clone()];
    consumer.subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>()).context("subscribing")?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new().name("chronos-poll".into()).spawn(move || poll_loop(consumer, commit_rx, seek_rx, stop2))?;
    Ok(LoaderHandle { stop, thread: Some(thread), arbiters })
}

type OffsetQueue = crossbeam_channel::Receiver<(String, i32, i64)>;

/// How long polling waits for a full loader mailbox before pausing its partition.
const HAND_OVER_WAIT: Duration = Duration::from_millis(500);

/// Gives a record to its partition's loader, waiting up to `HAND_OVER_WAIT`
/// while the mailbox is full (a flush in progress). `None` when no loader owns
/// the partition. Always through the same stored address: an actix sender may
/// overfill a mailbox by one and is then refused until it drains, so a fresh
/// clone per record would never be refused.
fn hand_over(
    consumer: &BaseConsumer<LoadContext>,
    key: &(String, i32),
    mut rec: Record,
) -> Option<Result<(), actix::prelude::SendError<Record>>> {
    let until = std::time::Instant::now() + HAND_OVER_WAIT;
    loop {
        let sent = consumer.context().loaders.lock().unwrap().get(key).map(|addr| addr.try_send(rec))?;
        match sent {
            Err(actix::prelude::SendError::Full(back)) if std::time::Instant::now() < until => {
                rec = back;
                std::thread::sleep(Duration::from_millis(2));
            }
            other => return Some(other),
        }
    }
}

fn one_partition(topic: &str, partition: i32) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    tpl
}

fn poll_loop(consumer: BaseConsumer<LoadContext>, commits: OffsetQueue, seeks: OffsetQueue, stop: Arc<AtomicBool>) {
    // Partitions whose loader's mailbox was full: paused, with the first offset
    // not handed over and when to try again. Other partitions keep flowing and
    // the consumer keeps polling (its group membership never lapses).
    let mut paused: HashMap<(String, i32), (i64, std::time::Instant)> = HashMap::new();
    let mut seen_rebalances = 0;
    while !stop.load(Ordering::Relaxed) {
        let rebalances = consumer.context().rebalances.load(Ordering::SeqCst);
        if rebalances != seen_rebalances {
            // New loaders start from the offsets stored in PostgreSQL: old pauses are void.
            for (topic, partition) in paused.keys() {
                let _ = consumer.resume(&one_partition(topic, *partition));
            }
            paused.clear();
            seen_rebalances = rebalances;
        }
        let now = std::time::Instant::now();
        let due: Vec<(String, i32)> = paused.iter().filter(|(_, (_, at))| *at <= now).map(|(k, _)| k.clone()).collect();
        for key in due {
            let (offset, _) = paused[&key];
            // Seek back to the first record not handed over, then resume.
            match consumer.seek(&key.0, key.1, Offset::Offset(offset), Duration::from_secs(1)) {
                Ok(()) => {
                    let _ = consumer.resume(&one_partition(&key.0, key.1));
                    paused.remove(&key);
                }
                Err(e) => {
                    tracing::debug!(topic = %key.0, partition = key.1, error = %e, "Seek before resume failed; retrying.");
                    paused.insert(key, (offset, now + Duration::from_millis(100)));
                }
            }
        }
        for (topic, partition, offset) in seeks.try_iter() {
            if let Err(e) = consumer.seek(&topic, partition, Offset::Offset(offset), Duration::from_secs(5)) {
                tracing::warn!(topic, partition, offset, error = %e, "Cannot seek back to the stored offset.");
            }
        }
        // Offsets already stored in PostgreSQL: tell Kafka too, for lag tools.
        let latest: HashMap<(String, i32), i64> = commits.try_iter().map(|(t, p, o)| ((t, p), o)).collect();
        if !latest.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), next) in &latest {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
            }
            let _ = consumer.commit(&tpl, rdkafka::consumer::CommitMode::Async);
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let key = (m.topic().to_string(), m.partition());
                if paused.contains_key(&key) {
                    // Fetched before the pause took effect: read again after the seek.
                    continue;
                }
                let rec = Record { offset: m.offset(), payload: m.payload().unwrap_or_default().to_vec() };
                if let Some(sent) = hand_over(&consumer, &key, rec) {
                    match sent {
                        Ok(()) => {}
                        Err(actix::prelude::SendError::Full(_)) => {
                            // Backpressure: this loader is behind (PostgreSQL slow or down).
                            let _ = consumer.pause(&one_partition(&key.0, key.1));
                            consumer.context().shared.metrics.load_pauses.inc();
                            paused.insert(key, (m.offset(), std::time::Instant::now() + Duration::from_millis(20)));
                        }
                        Err(actix::prelude::SendError::Closed(_)) => {
                            tracing::debug!(topic = %key.0, partition = key.1, "Loader gone; record left for the next owner.");
                        }
                    }
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "Consumer error."),
            None => {}
        }
    }
    // Shutdown: flush every loader, then leave the group.
    let loaders: Vec<Addr<PartitionLoader>> = consumer.context().loaders.lock().unwrap().values().cloned().collect();
    for addr in &loaders {
        consumer.context().rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(10), addr.send(FlushNow)).await;
            // The flush runs inside the actor; a second message waits for it to end.
            let _ = tokio::time::timeout(Duration::from_secs(20), addr.send(FlushNow)).await;
        });
    }
    consumer.unsubscribe();
    tracing::info!(partitions = loaders.len(), "Loaders flushed and stopped.");
}
