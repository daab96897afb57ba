//! `KafkaSink`: the supervised actor that hands accepted batches to the
//! producer. It only enqueues (never blocks its thread); the request awaits
//! the broker's acknowledgement itself, under a deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::kafka::{classify, Disposition, StatsContext};
use super::ProducerHealth;
use crate::record;

/// Where records go.
pub enum Sink {
    /// The Kafka topics (production). `factory` recreates the producer after a fatal error.
    Kafka {
        producer: FutureProducer<StatsContext>,
        factory: Box<dyn Fn() -> Result<FutureProducer<StatsContext>, rdkafka::error::KafkaError> + Send>,
        health: Arc<ProducerHealth>,
        topic: String,
        dead_letter_topic: String,
    },
    /// Acknowledges at once and keeps nothing: for benchmarking receipt without a broker.
    Discard,
}

impl Sink {
    /// Waits up to `timeout` for every queued record to be acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<(), String> {
        match self {
            Sink::Kafka { producer, .. } => producer.flush(timeout).map_err(|e| e.to_string()),
            Sink::Discard => Ok(()),
        }
    }

    /// Records not yet acknowledged by the broker; `None` for the discard sink.
    pub fn in_flight(&self) -> Option<u64> {
        match self {
            Sink::Kafka { producer, .. } => Some(producer.in_flight_count().max(0) as u64),
            Sink::Discard => None,
        }
    }

    /// Replaces a producer that went fatal or whose idempotence state the
    /// broker keeps refusing (its queued records fail; their requests answer
    /// 503 and the tracker retries with the same batch id).
    fn recover(&mut self) {
        if let Sink::Kafka { producer, factory, health, .. } = self {
            if health.take_needs_recreate() {
                match factory() {
                    Ok(p) => {
                        let old = std::mem::replace(producer, p);
                        // Dropping purges and joins librdkafka's threads: not on this thread.
                        std::thread::spawn(move || drop(old));
                        tracing::warn!("Producer recreated (fatal error or repeated producer-state refusals).");
                    }
                    Err(e) => tracing::error!(error = %e, "Cannot recreate the producer."),
                }
            }
        }
    }
}

/// An accepted batch on its way to Kafka: the events record and/or the dead letters.
#[derive(Debug)]
pub struct OutgoingBatch {
    /// Partitioning key: the session id, so a session's batches stay in order.
    pub session: String,
    pub key_id: String,
    pub received_at: i64,
    pub record: Option<Vec<u8>>,
    pub dead_letter: Option<Vec<u8>>,
}

impl OutgoingBatch {
    /// The Kafka record of `payload` (its events record, or its dead letter
    /// when `dead_letter`) for `topic`: key and headers as docs/kafka-record.md says.
    pub fn record_to<'a>(&'a self, topic: &'a str, dead_letter: bool, payload: &'a [u8]) -> FutureRecord<'a, str, [u8]> {
        let format = if dead_letter { record::FORMAT_DEAD_LETTER } else { record::FORMAT_BATCH };
        let headers = record::headers(format, &self.key_id, self.received_at);
        FutureRecord::to(topic).key(self.session.as_str()).payload(payload).headers(headers)
    }
}

/// Message: enqueue a batch.
pub struct Produce(pub OutgoingBatch);

impl Message for Produce {
    type Result = Result<Pending, ProduceError>;
}

/// One record's acknowledgement.
pub enum Ack {
    Kafka(DeliveryFuture),
    Ready,
}

/// The acknowledgements a request waits for before answering 2xx.
pub struct Pending {
    acks: Vec<Ack>,
    health: Option<Arc<ProducerHealth>>,
    pub enqueued_at: Instant,
}

impl Pending {
    /// Resolves when the broker acknowledged every record, or fails (never early).
    pub async fn acknowledged(self, deadline: tokio::time::Instant) -> Result<(), ProduceError> {
        let wait = async {
            for ack in self.acks {
                if let Ack::Kafka(fut) = ack {
                    match fut.await {
                        Ok(Ok(_)) => {
                            if let Some(h) = &self.health {
                                h.note_delivered();
                            }
                        }
                        Ok(Err((err, _))) => {
                            if classify(&err) == Disposition::ProducerState {
                                if let Some(h) = &self.health {
                                    h.note_state_error();
                                }
                            }
                            return Err(produce_error(&err));
                        }
                        Err(_canceled) => return Err(ProduceError::Unavailable("producer closed".into())),
                    }
                }
            }
            Ok(())
        };
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(result) => result,
            Err(_) => Err(ProduceError::Timeout),
        }
    }
}

/// Why a batch did not reach Kafka: what happened, and whether trying again
/// may help ([`ProduceError::retryable`]). The HTTP layer turns it into a status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProduceError {
    /// The producer's local queue is full: retry soon.
    #[error("the producer queue is full")]
    Saturated,
    /// The broker did not acknowledge by the deadline.
    #[error("the broker did not acknowledge in time")]
    Timeout,
    /// The broker cannot store it now (down, leaderless, refused the
    /// producer's state); it may pass.
    #[error("{0}")]
    Unavailable(String),
    /// The broker refused it for good (too large, not authorised…).
    #[error("{0}")]
    Rejected(String),
}

impl ProduceError {
    /// Whether the same batch may be stored if sent again.
    pub fn retryable(&self) -> bool {
        !matches!(self, ProduceError::Rejected(_))
    }
}

fn produce_error(err: &rdkafka::error::KafkaError) -> ProduceError {
    match classify(err) {
        Disposition::Saturated => ProduceError::Saturated,
        Disposition::Transient | Disposition::ProducerState => ProduceError::Unavailable(err.to_string()),
        Disposition::Permanent => {
            tracing::error!(error = %err, "Broker refused a batch for good; it was not stored.");
            ProduceError::Rejected(err.to_string())
        }
    }
}

/// The producer actor.
pub struct KafkaSink {
    sink: Sink,
    mailbox_capacity: usize,
}

impl KafkaSink {
    pub fn new(sink: Sink, mailbox_capacity: usize) -> Self {
        KafkaSink { sink, mailbox_capacity }
    }

    fn enqueue(&self, dead_letters: bool, batch: &OutgoingBatch, payload: &[u8]) -> Result<Ack, ProduceError> {
        let Sink::Kafka { producer, topic, dead_letter_topic, .. } = &self.sink else { return Ok(Ack::Ready) };
        let topic = if dead_letters { dead_letter_topic } else { topic };
        producer.send_result(batch.record_to(topic, dead_letters, payload)).map(Ack::Kafka).map_err(|(err, _)| produce_error(&err))
    }
}

impl Actor for KafkaSink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.mailbox_capacity);
    }
}

impl Supervised for KafkaSink {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        tracing::warn!("KafkaSink restarting.");
    }
}

impl Handler<Produce> for KafkaSink {
    type Result = Result<Pending, ProduceError>;

    fn handle(&mut self, Produce(batch): Produce, _ctx: &mut Context<Self>) -> Self::Result {
        self.sink.recover();
        let enqueued_at = Instant::now();
        let mut acks = Vec::with_capacity(2);
        if let Some(record) = &batch.record {
            acks.push(self.enqueue(false, &batch, record)?);
        }
        if let Some(dead) = &batch.dead_letter {
            acks.push(self.enqueue(true, &batch, dead)?);
        }
        let health = match &self.sink {
            Sink::Kafka { health, .. } => Some(health.clone()),
            Sink::Discard => None,
        };
        Ok(Pending { acks, health, enqueued_at })
    }
}

/// Message: how many records wait for the broker (for `/readyz`); `None` for the discard sink.
pub struct InFlight;

impl Message for InFlight {
    type Result = Option<u64>;
}

impl Handler<InFlight> for KafkaSink {
    type Result = Option<u64>;

    fn handle(&mut self, _: InFlight, _ctx: &mut Context<Self>) -> Self::Result {
        self.sink.in_flight()
    }
}

/// Message: flush the producer (shutdown). Blocks the sink's own arbiter only.
pub struct Flush(pub Duration);

impl Message for Flush {
    type Result = Result<(), String>;
}

impl Handler<Flush> for KafkaSink {
    type Result = Result<(), String>;

    fn handle(&mut self, Flush(timeout): Flush, _ctx: &mut Context<Self>) -> Self::Result {
        let result = self.sink.flush(timeout);
        let left = self.sink.in_flight().unwrap_or(0);
        if left > 0 {
            return Err(format!("{left} records still unacknowledged after {timeout:?}"));
        }
        result
    }
}
