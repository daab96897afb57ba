//! The group's consumer: one per chronosd, on its own thread. Its rebalance
//! callback only bookkeeps — it assigns partitions paused, and tells revoked
//! partitions' loaders to stop — and never waits on PostgreSQL: each loader
//! reads its stored offset itself, seeks there and resumes its partition.
//! The thread keeps polling the main queue (rebalances, errors, statistics,
//! commit results), so the group membership never lapses while loaders wait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message as _;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use tokio::sync::watch;

use super::loader::Stop;
use super::partition::{Consumer, Partition};
use crate::telemetry::Metrics;

type Key = (String, i32);

/// The consumer's context: partition bookkeeping for the poll thread.
pub struct LoadContext {
    metrics: Arc<Metrics>,
    /// Assigned in a rebalance, not yet given a loader by the poll thread.
    assigned: Mutex<Vec<Key>>,
    /// How to stop each running loader.
    loaders: Mutex<HashMap<Key, watch::Sender<Stop>>>,
    /// The queue handle of each partition's latest loader: a partition
    /// assigned again gets its new loader only once the previous handle is
    /// dropped (see [`Partition::alive`]).
    handles: Mutex<HashMap<Key, std::sync::Weak<()>>>,
}

impl LoadContext {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        LoadContext { metrics, assigned: Mutex::default(), loaders: Mutex::default(), handles: Mutex::default() }
    }

    /// Asks every running loader to stop.
    pub fn stop_all(&self, stop: Stop) {
        for tx in self.loaders.lock().unwrap().values() {
            let _ = tx.send(stop);
        }
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        // Paused: nothing is fetched until the partition's loader has sought to
        // its stored offset. The offset given here must be an absolute one: a
        // logical one (End, Beginning, or none: the committed offset) makes
        // librdkafka ask the broker first, and when that answer comes after the
        // loader's seek it moves the fetch position back to what it asked for
        // (End: the loader then got no records until a later seek; measured
        // with loader_perf, up to 4.2 s after an assignment). Nothing is
        // fetched from 0 itself: the loader seeks before it resumes.
        let keys: Vec<Key> = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        for (topic, partition) in &keys {
            let _ = tpl.set_partition_offset(topic, *partition, Offset::Offset(0));
        }
        if let Err(e) = consumer.assign(tpl).and_then(|()| consumer.pause(tpl)) {
            tracing::error!(error = %e, "Cannot assign partitions.");
            return;
        }
        tracing::info!(partitions = ?keys, "Partitions assigned.");
        self.assigned.lock().unwrap().extend(keys);
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let mut loaders = self.loaders.lock().unwrap();
        let mut assigned = self.assigned.lock().unwrap();
        for e in tpl.elements() {
            let key = (e.topic().to_string(), e.partition());
            assigned.retain(|k| *k != key);
            if let Some(stop) = loaders.remove(&key) {
                // What it had not committed is read again by the next owner.
                let _ = stop.send(Stop::Revoked);
            }
        }
        if let Err(e) = consumer.unassign() {
            tracing::warn!(error = %e, "Cannot unassign partitions.");
        }
    }
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
        let lag = &self.metrics.load_consumer_lag;
        for (topic, t) in &s.topics {
            for part in t.partitions.values() {
                if part.partition >= 0 && part.desired {
                    lag.with_label_values(&[topic, &part.partition.to_string()]).set(part.consumer_lag.max(0));
                }
            }
        }
    }
}

impl ConsumerContext for LoadContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
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

/// Starts a loader for a partition: gets the partition and its stop signal.
pub type StartLoader = dyn Fn(Partition, watch::Receiver<Stop>) + Send;

/// Polls until `stop`: serves the consumer's callbacks and starts a loader,
/// with the partition's own queue, for every partition assigned.
pub fn poll_loop(consumer: Arc<Consumer>, start_loader: Box<StartLoader>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            // Fetched before its queue was split, or forwarded here by an
            // assignment librdkafka applied after the split: take the partition
            // off the main queue again. Its loader reads this record again (a
            // gap, or its idle check, makes it seek back).
            Some(Ok(m)) => {
                let key = (m.topic().to_string(), m.partition());
                if consumer.context().loaders.lock().unwrap().contains_key(&key) {
                    super::partition::unforward(&consumer, &key.0, key.1);
                }
                tracing::debug!(
                    topic = m.topic(),
                    partition = m.partition(),
                    offset = m.offset(),
                    "Record on the main queue; read again by its loader."
                );
            }
            Some(Err(e)) => tracing::warn!(error = %e, "Consumer error."),
            None => {}
        }
        let context = consumer.context();
        let assigned = std::mem::take(&mut *context.assigned.lock().unwrap());
        let mut wait = Vec::new();
        for (topic, partition) in assigned {
            let key = (topic, partition);
            if context.handles.lock().unwrap().get(&key).is_some_and(|h| h.strong_count() > 0) {
                // Its previous loader still holds the queue: next round.
                wait.push(key);
                continue;
            }
            let (topic, partition) = key;
            let Some(queue) = Partition::split(&consumer, &topic, partition) else {
                tracing::error!(topic, partition, "Cannot split the partition's queue; its records are not loaded until the next rebalance.");
                continue;
            };
            let (tx, rx) = watch::channel(Stop::No);
            context.handles.lock().unwrap().insert((topic.clone(), partition), queue.alive());
            context.loaders.lock().unwrap().insert((topic, partition), tx);
            start_loader(queue, rx);
        }
        if !wait.is_empty() {
            tracing::debug!(partitions = ?wait, "Assigned again; waiting for the previous loaders to let go of their queues.");
            context.assigned.lock().unwrap().extend(wait);
        }
    }
}
