//! The rdkafka producer: explicit settings from `KafkaConfig`, librdkafka
//! statistics exported as metrics, broker health for `/readyz`, and the one
//! function that classifies producer errors.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::statistics::Statistics;

use crate::clock::now_ms;
use crate::config::KafkaConfig;
use crate::telemetry::Metrics;

/// Broker health as last seen in librdkafka's statistics.
#[derive(Debug, Default)]
pub struct ProducerHealth {
    broker_up: AtomicBool,
    stats_at_ms: AtomicI64,
    /// Set when librdkafka reports a fatal error (the producer is unusable).
    fatal: AtomicBool,
    /// Deliveries refused for the producer's own state (sequence, epoch) since the last reset.
    state_errors: std::sync::atomic::AtomicU32,
}

/// Producer-state refusals in a row after which the producer is recreated.
pub const STATE_ERRORS_BEFORE_RECREATE: u32 = 3;

impl ProducerHealth {
    /// Whether some broker connection was UP in statistics no older than `max_age_ms`.
    pub fn broker_up(&self, max_age_ms: i64) -> bool {
        let age = now_ms() - self.stats_at_ms.load(Ordering::Relaxed);
        self.broker_up.load(Ordering::Relaxed) && age <= max_age_ms
    }
}

impl ProducerHealth {
    /// Counts a delivery refused for the producer's state (`Disposition::ProducerState`).
    pub fn note_state_error(&self) {
        self.state_errors.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts a successful delivery (the producer is healthy).
    pub fn note_delivered(&self) {
        if self.state_errors.load(Ordering::Relaxed) != 0 {
            self.state_errors.store(0, Ordering::Release);
        }
    }

    /// Whether the producer must be recreated (fatal error, or its idempotence
    /// state is refused again and again); clears the condition.
    pub fn take_needs_recreate(&self) -> bool {
        let stuck = self.state_errors.load(Ordering::Acquire) >= STATE_ERRORS_BEFORE_RECREATE;
        let fatal = self.fatal.swap(false, Ordering::AcqRel);
        if stuck || fatal {
            self.state_errors.store(0, Ordering::Release);
        }
        stuck || fatal
    }
}

/// librdkafka client context: turns statistics into metrics and health.
pub struct StatsContext {
    pub metrics: Arc<Metrics>,
    pub health: Arc<ProducerHealth>,
}

impl ClientContext for StatsContext {
    fn stats(&self, s: Statistics) {
        let m = &self.metrics;
        m.producer_queue_depth.set(s.msg_cnt as i64);
        m.producer_queue_bytes.set(s.msg_size as i64);
        m.kafka_tx_messages.set(s.txmsgs);
        m.kafka_tx_bytes.set(s.txmsg_bytes);
        let mut up = false;
        let mut errors = 0u64;
        let mut produce_requests = 0i64;
        for (name, b) in &s.brokers {
            // Skip the internal pseudo-broker librdkafka lists.
            if b.nodeid == -1 && b.source == "internal" {
                continue;
            }
            let is_up = b.state == "UP";
            up |= is_up;
            errors += b.txerrs;
            produce_requests += b.req.get("Produce").copied().unwrap_or(0);
            m.kafka_broker_up.with_label_values(&[name]).set(is_up as i64);
            if let Some(rtt) = &b.rtt {
                m.kafka_broker_rtt.with_label_values(&[name]).set(rtt.avg);
            }
        }
        m.kafka_tx_errors.set(errors as i64);
        m.kafka_produce_requests.set(produce_requests);
        self.health.broker_up.store(up, Ordering::Relaxed);
        self.health.stats_at_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal)) {
            // Idempotent producers go fatal on sequence errors (for example a
            // broker that lost producer state); the sink recreates the producer.
            tracing::error!(%error, reason, "Fatal producer error; the producer will be recreated.");
            self.health.fatal.store(true, Ordering::Release);
        } else {
            tracing::warn!(%error, reason, "Kafka client error.");
        }
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_to_tracing(level, fac, log_message);
    }
}

/// librdkafka's log lines, as tracing events (target `librdkafka`).
pub fn log_to_tracing(level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
    use rdkafka::config::RDKafkaLogLevel::*;
    match level {
        Emerg | Alert | Critical | Error => tracing::error!(target: "librdkafka", fac, "{log_message}"),
        Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
        Notice | Info => tracing::info!(target: "librdkafka", fac, "{log_message}"),
        Debug => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
    }
}

/// Largest record a batch can produce: the decompressed body, plus per-event
/// reasons in dead letters, plus the server's fields.
pub fn max_record_bytes(max_decompressed_bytes: usize, max_events: usize) -> usize {
    max_decompressed_bytes + max_events * 320 + 64 * 1024
}

/// What every chronos Kafka client shares: the bootstrap servers, Nagle off, and
/// `kafka.extra` (security, SASL, broker-specific settings).
pub fn base_client_config(c: &KafkaConfig) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &c.brokers);
    // librdkafka leaves Nagle's algorithm on by default: a small produce request
    // then waits for the broker's delayed ACK (40 ms on Linux) before the next
    // goes out. Measured against Apache Kafka on loopback (perf/curves/nagle.md):
    // it is the whole p90/p99 of an acknowledgement at light load.
    cc.set("socket.nagle.disable", "true");
    set_security(&mut cc, c);
    for (k, v) in &c.extra {
        cc.set(k, v);
    }
    cc
}

/// `security.protocol`, SASL and TLS settings from their typed keys.
fn set_security(cc: &mut ClientConfig, c: &KafkaConfig) {
    let p = c.security_protocol;
    cc.set("security.protocol", p.as_str());
    if p.sasl() {
        if let Some(m) = c.sasl_mechanism {
            cc.set("sasl.mechanism", m.as_str());
        }
        if let Some(u) = &c.sasl_username {
            cc.set("sasl.username", u);
        }
        if let Some(pw) = &c.sasl_password {
            cc.set("sasl.password", pw.expose());
        }
    }
    if p.tls() {
        let path = |p: &std::path::Path| p.display().to_string();
        if let Some(ca) = &c.ssl_ca {
            cc.set("ssl.ca.location", path(ca));
        }
        if let Some(cert) = &c.ssl_cert {
            cc.set("ssl.certificate.location", path(cert));
        }
        if let Some(key) = &c.ssl_key {
            cc.set("ssl.key.location", path(key));
        }
        if let Some(pw) = &c.ssl_key_password {
            cc.set("ssl.key.password", pw.expose());
        }
        cc.set("ssl.endpoint.identification.algorithm", if c.ssl_verify_hostname { "https" } else { "none" });
    }
}

/// Every librdkafka producer setting chronosd uses, from config.
/// `max_record` is `max_record_bytes(…)` of the HTTP caps.
pub fn producer_config(c: &KafkaConfig, max_record: usize) -> ClientConfig {
    let mut cc = base_client_config(c);
    cc.set("client.id", "chronosd")
        .set("acks", "all")
        .set("enable.idempotence", c.idempotence.to_string())
        .set("compression.type", &c.compression)
        .set("linger.ms", c.linger_ms.to_string())
        .set("max.in.flight.requests.per.connection", c.max_in_flight.to_string())
        .set("batch.num.messages", c.batch_num_messages.to_string())
        .set("batch.size", c.batch_bytes.to_string())
        .set("queue.buffering.max.messages", c.queue_max_messages.to_string())
        .set("queue.buffering.max.kbytes", c.queue_max_kbytes.to_string())
        .set("message.timeout.ms", c.message_timeout_ms.to_string())
        .set("request.timeout.ms", c.request_timeout_ms.min(c.message_timeout_ms).to_string())
        .set("statistics.interval.ms", c.statistics_interval_ms.to_string())
        .set("message.max.bytes", max_record.to_string());
    cc
}

/// Creates the producer (it connects in the background).
pub fn create_producer(
    c: &KafkaConfig,
    max_record: usize,
    metrics: Arc<Metrics>,
    health: Arc<ProducerHealth>,
) -> Result<FutureProducer<StatsContext>, KafkaError> {
    producer_config(c, max_record).create_with_context(StatsContext { metrics, health })
}

/// What a producer error means for the request that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The local queue is full: 503, retry soon.
    Saturated,
    /// A broker or network problem that may pass: 503, retry with backoff.
    Transient,
    /// The broker refused the producer's idempotence state (sequence or epoch,
    /// or a fatal error): 503, and the producer is recreated if it persists.
    ProducerState,
    /// Retrying the same record cannot succeed (too large, not authorised…): alert.
    Permanent,
}

/// Classifies a producer error (the one place that decides).
pub fn classify(err: &KafkaError) -> Disposition {
    use RDKafkaErrorCode::*;
    match err.rdkafka_error_code() {
        Some(QueueFull) => Disposition::Saturated,
        // A fresh producer (new producer id) gets past a broker that lost or
        // rejects this one's sequence state; `Unknown` is how some
        // Kafka-protocol brokers report it.
        Some(Fatal | OutOfOrderSequenceNumber | InvalidProducerEpoch | UnknownProducerId | InvalidProducerIdMapping | ProducerFenced | Unknown) => {
            Disposition::ProducerState
        }
        Some(
            MessageSizeTooLarge
            | InvalidMessageSize
            | InvalidMessage
            | TopicAuthorizationFailed
            | ClusterAuthorizationFailed
            | InvalidRecord
            | InvalidTopic
            | UnsupportedVersion
            | InvalidRequiredAcks
            | SaslAuthenticationFailed
            | Authentication,
        ) => Disposition::Permanent,
        _ => Disposition::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recreate_after_repeated_state_errors_or_a_fatal_one() {
        let h = ProducerHealth::default();
        h.note_state_error();
        h.note_state_error();
        assert!(!h.take_needs_recreate());
        h.note_delivered();
        for _ in 0..STATE_ERRORS_BEFORE_RECREATE {
            h.note_state_error();
        }
        assert!(h.take_needs_recreate());
        assert!(!h.take_needs_recreate(), "cleared");
        h.fatal.store(true, Ordering::Release);
        assert!(h.take_needs_recreate());
    }

    #[test]
    fn classification() {
        let e = |code| KafkaError::MessageProduction(code);
        assert_eq!(classify(&e(RDKafkaErrorCode::QueueFull)), Disposition::Saturated);
        assert_eq!(classify(&e(RDKafkaErrorCode::MessageTimedOut)), Disposition::Transient);
        assert_eq!(classify(&e(RDKafkaErrorCode::BrokerTransportFailure)), Disposition::Transient);
        assert_eq!(classify(&e(RDKafkaErrorCode::NotEnoughReplicas)), Disposition::Transient);
        assert_eq!(classify(&e(RDKafkaErrorCode::UnknownTopicOrPartition)), Disposition::Transient);
        assert_eq!(classify(&e(RDKafkaErrorCode::Fatal)), Disposition::ProducerState);
        assert_eq!(classify(&e(RDKafkaErrorCode::OutOfOrderSequenceNumber)), Disposition::ProducerState);
        assert_eq!(classify(&e(RDKafkaErrorCode::Unknown)), Disposition::ProducerState);
        assert_eq!(classify(&e(RDKafkaErrorCode::MessageSizeTooLarge)), Disposition::Permanent);
        assert_eq!(classify(&e(RDKafkaErrorCode::TopicAuthorizationFailed)), Disposition::Permanent);
    }

    #[test]
    fn every_setting_is_explicit() {
        let cc = producer_config(&KafkaConfig::default(), 2_000_000);
        assert_eq!(cc.get("message.max.bytes"), Some("2000000"));
        assert_eq!(cc.get("acks"), Some("all"));
        assert_eq!(cc.get("enable.idempotence"), Some("true"));
        assert_eq!(cc.get("compression.type"), Some("lz4"));
        assert_eq!(cc.get("queue.buffering.max.messages"), Some("100000"));
        assert_eq!(cc.get("max.in.flight.requests.per.connection"), Some("2"));
        assert_eq!(cc.get("linger.ms"), Some("0"));
        assert_eq!(cc.get("socket.nagle.disable"), Some("true"));
    }
}
