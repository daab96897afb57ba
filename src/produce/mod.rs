//! Kafka: the producer and its settings, the `KafkaSink` actor, topic set-up.

pub mod admin;
pub mod kafka;
pub mod sink;

pub use kafka::{create_producer, ProducerHealth, StatsContext};
pub use sink::{KafkaSink, OutgoingBatch, Pending, Produce, ProduceError, Sink};
