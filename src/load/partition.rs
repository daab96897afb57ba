//! One assigned partition as its loader sees it: a queue of its own for the
//! records librdkafka fetches (`split_partition_queue`), a wake-up when that
//! queue stops being empty, and the seek, resume and commit calls the loader
//! makes on the group's consumer. A loader that does not read its queue
//! simply lets it fill: librdkafka stops fetching that partition at
//! `queued.max.messages.kbytes` while the consumer thread keeps the group
//! membership alive.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::BorrowedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::Notify;

use super::consumer::LoadContext;

/// How long a seek or a watermark query may take.
const KAFKA_CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub type Consumer = BaseConsumer<LoadContext>;

/// An assigned partition with its own record queue.
pub struct Partition {
    pub topic: String,
    pub partition: i32,
    queue: rdkafka::consumer::base_consumer::PartitionQueue<LoadContext>,
    ready: Arc<Notify>,
    consumer: Arc<Consumer>,
    /// Alive while this handle is; the consumer thread holds a `Weak` of it
    /// (see [`Partition::alive`]).
    alive: Arc<()>,
}

impl Partition {
    /// Splits the partition's records off the consumer's main queue. Call
    /// right after the assignment, before the partition is resumed.
    pub fn split(consumer: &Arc<Consumer>, topic: &str, partition: i32) -> Option<Partition> {
        let mut queue = consumer.split_partition_queue(topic, partition)?;
        let ready = Arc::new(Notify::new());
        let wake = ready.clone();
        // Called by librdkafka when the queue goes from empty to non-empty.
        queue.set_nonempty_callback(move || wake.notify_one());
        Some(Partition { topic: topic.to_string(), partition, queue, ready, consumer: consumer.clone(), alive: Arc::new(()) })
    }

    /// Dangles once this handle is dropped. Every handle of a partition shares
    /// librdkafka's one queue, and dropping a handle turns that queue's wake-up
    /// callback off, so a later loader of the same partition must split its
    /// queue only after the previous handle is gone: otherwise the previous
    /// loader, stopping after a quick revoke and re-assign, silences the new
    /// one, which then never wakes for its records.
    pub fn alive(&self) -> std::sync::Weak<()> {
        Arc::downgrade(&self.alive)
    }

    /// The next fetched record, if one is waiting.
    pub fn poll(&self) -> Option<KafkaResult<BorrowedMessage<'_>>> {
        self.queue.poll(Duration::ZERO)
    }

    /// Resolves once records may be waiting. Only a `poll` that returned
    /// `None` empties the queue, so wait only after one did.
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// The earliest offset the broker still holds for this partition, and
    /// the offset its next record will get.
    pub async fn watermarks(&self) -> KafkaResult<(i64, i64)> {
        let (consumer, topic, partition) = (self.consumer.clone(), self.topic.clone(), self.partition);
        blocking(move || consumer.fetch_watermarks(&topic, partition, KAFKA_CALL_TIMEOUT)).await
    }

    /// Moves the fetch position to `offset` and resumes fetching (partitions
    /// are assigned paused: nothing is fetched before the loader says where).
    /// Records fetched before the seek are not delivered after it. The
    /// partition is first taken off the main queue again (see `unforward`).
    pub async fn seek(&self, offset: i64) -> KafkaResult<()> {
        let (consumer, topic, partition) = (self.consumer.clone(), self.topic.clone(), self.partition);
        blocking(move || {
            unforward(&consumer, &topic, partition);
            consumer.seek(&topic, partition, Offset::Offset(offset), KAFKA_CALL_TIMEOUT)?;
            consumer.resume(&one_partition(&topic, partition, None))
        })
        .await
    }

    /// Records and events waiting in this partition's queue (see [`queued`]).
    pub fn queued(&self) -> Option<usize> {
        queued(&self.consumer, &self.topic, self.partition)
    }

    /// Tells Kafka the next offset too (lag tools read it; PostgreSQL holds the truth).
    pub fn commit(&self, next: i64) {
        if let Err(e) = self.consumer.commit(&one_partition(&self.topic, self.partition, Some(next)), CommitMode::Async) {
            tracing::debug!(topic = %self.topic, partition = self.partition, error = %e, "Kafka offset commit not sent.");
        }
    }
}

/// Stops librdkafka forwarding a partition's queue to the consumer's main
/// queue. librdkafka applies an assignment on its own thread and forwards the
/// partition's queue to the main one as it does; when that lands after the
/// split, the partition's records would reach the main queue, not its loader.
/// Touches only the forwarding (not the queue's wake-up callback).
pub fn unforward(consumer: &Consumer, topic: &str, partition: i32) {
    // SAFETY: a null destination is how librdkafka is told to stop forwarding.
    with_queue(consumer, topic, partition, |q| unsafe { rdkafka::bindings::rd_kafka_queue_forward(q, std::ptr::null_mut()) });
}

/// How many records and events wait in the partition's queue (librdkafka's
/// count; for the log when a loader finds its partition silent).
pub fn queued(consumer: &Consumer, topic: &str, partition: i32) -> Option<usize> {
    // SAFETY: reads the queue's count only.
    with_queue(consumer, topic, partition, |q| unsafe { rdkafka::bindings::rd_kafka_queue_length(q) })
}

/// Runs `f` on a handle of librdkafka's queue for the partition (`None` when
/// librdkafka has none), released after.
fn with_queue<T>(consumer: &Consumer, topic: &str, partition: i32, f: impl FnOnce(*mut rdkafka::bindings::rd_kafka_queue_t) -> T) -> Option<T> {
    let topic = std::ffi::CString::new(topic).ok()?;
    // SAFETY: the client outlives this call; the queue handle got here is
    // released here, and the queue itself lives on in librdkafka.
    unsafe {
        let q = rdkafka::bindings::rd_kafka_queue_get_partition(consumer.client().native_ptr(), topic.as_ptr(), partition);
        if q.is_null() {
            return None;
        }
        let out = f(q);
        rdkafka::bindings::rd_kafka_queue_destroy(q);
        Some(out)
    }
}

/// `topic`/`partition` (at `offset`) as a list.
pub fn one_partition(topic: &str, partition: i32, offset: Option<i64>) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    match offset {
        Some(o) => {
            let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(o));
        }
        None => {
            tpl.add_partition(topic, partition);
        }
    }
    tpl
}

/// Runs a blocking librdkafka call off the loaders' threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> KafkaResult<T> + Send + 'static) -> KafkaResult<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|_| Err(KafkaError::Canceled))
}
