//! `[kafka]`: the brokers, topics, producer settings and security.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::positive;
use crate::secret::Secret;

/// Kafka producer settings; every librdkafka setting chronosd uses is here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topic of accepted batches.
    pub topic: String,
    /// Topic of rejected events, with reasons.
    pub dead_letter_topic: String,
    /// Partitions when chronos creates the topics.
    pub partitions: i32,
    /// Replication factor when chronos creates the topics.
    pub replication: i32,
    /// `min.insync.replicas` of the topics chronos creates: with acks=all a record is
    /// acknowledged once this many replicas hold it. Default: replication − 1, at
    /// least 1 (2 of 3), so one broker may fail without refusing writes.
    pub min_insync_replicas: Option<i32>,
    /// `enable.idempotence`: no duplicates or reordering from producer retries
    /// (also across a broker failover). Keep it on.
    pub idempotence: bool,
    /// `compression.type`: `lz4` (default), `zstd`, `gzip` or `none` (never snappy; see
    /// docs/kafka-record.md).
    pub compression: String,
    /// `linger.ms`: how long a record may wait for others to share its request. 0 by
    /// default: with `max_in_flight` small, records batch up while requests are out
    /// anyway, and a light load pays no wait (perf/curves/producer.md).
    pub linger_ms: u32,
    /// `max.in.flight.requests.per.connection`: produce requests awaiting the broker per
    /// connection. librdkafka puts one partition in each produce request, so a
    /// small cap makes records that arrive while requests are out share the next
    /// request (larger requests under load, no wait at low load). At most 5 with
    /// idempotence (librdkafka's and Apache Kafka's limit).
    pub max_in_flight: u32,
    /// `batch.num.messages`.
    pub batch_num_messages: u32,
    /// `batch.size` in bytes.
    pub batch_bytes: u32,
    /// `queue.buffering.max.messages`: records waiting in the producer before 503.
    pub queue_max_messages: u32,
    /// `queue.buffering.max.kbytes`: producer memory bound.
    pub queue_max_kbytes: u32,
    /// `message.timeout.ms`: a record not acknowledged by then fails.
    pub message_timeout_ms: u32,
    /// `request.timeout.ms`.
    pub request_timeout_ms: u32,
    /// `statistics.interval.ms` (librdkafka statistics exported at /metrics).
    pub statistics_interval_ms: u32,
    /// `security.protocol`: `plaintext` (default), `ssl`, `sasl_plaintext` or
    /// `sasl_ssl`; the same for the producer, the loaders' consumer, the admin
    /// client and the CLI (docs/operations.md, managed Kafka).
    pub security_protocol: SecurityProtocol,
    /// `sasl.mechanism` with a `sasl_*` protocol: `PLAIN`, `SCRAM-SHA-256` or
    /// `SCRAM-SHA-512`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// `sasl.username`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sasl_username: Option<String>,
    /// `sasl.password`, best from the environment (`CHRONOS_KAFKA__SASL_PASSWORD`)
    /// or `sasl_password_file`; never shown.
    #[serde(skip_serializing)]
    pub sasl_password: Option<Secret>,
    /// A file holding `sasl_password` (systemd `LoadCredential=`, Docker secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sasl_password_file: Option<PathBuf>,
    /// `ssl.ca.location`: PEM file of the CA(s) that signed the brokers'
    /// certificates; unset, the system's CAs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_ca: Option<PathBuf>,
    /// `ssl.certificate.location`: client certificate (PEM) for brokers that
    /// require mutual TLS; with `ssl_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_cert: Option<PathBuf>,
    /// `ssl.key.location`: the client certificate's private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_key: Option<PathBuf>,
    /// `ssl.key.password` of an encrypted `ssl_key`; never shown.
    #[serde(skip_serializing)]
    pub ssl_key_password: Option<Secret>,
    /// A file holding `ssl_key_password`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_key_password_file: Option<PathBuf>,
    /// Check that a broker's certificate names the host it was reached at
    /// (`ssl.endpoint.identification.algorithm = https`). Keep it on.
    pub ssl_verify_hostname: bool,
    /// Any other librdkafka setting, passed as is (e.g. `ssl.cipher.suites`).
    pub extra: BTreeMap<String, String>,
    /// Brokers the cluster should have: chronosd exports it as
    /// `chronos_kafka_brokers_expected`, and `chronos doctor` reports a fault
    /// when fewer are in the cluster's metadata. Unset (the default): no
    /// comparison.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_brokers: Option<u32>,
    /// How often chronosd reads the cluster's health (brokers, controller,
    /// replicas, retention against the loaders' lag, stalled partitions), in
    /// seconds (docs/operations.md, health).
    pub health_poll_secs: u64,
}

/// How chronos reaches the Kafka brokers (`security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's name.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    pub fn sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }
}

/// SASL mechanisms librdkafka has built in (GSSAPI/Kerberos is not built).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "chronos.events".into(),
            dead_letter_topic: "chronos.dead_letters".into(),
            partitions: 6,
            replication: 1,
            min_insync_replicas: None,
            idempotence: true,
            compression: "lz4".into(),
            linger_ms: 0,
            max_in_flight: 2,
            batch_num_messages: 10_000,
            batch_bytes: 1_000_000,
            queue_max_messages: 100_000,
            queue_max_kbytes: 65_536,
            message_timeout_ms: 5_000,
            request_timeout_ms: 4_000,
            statistics_interval_ms: 1_000,
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            sasl_password_file: None,
            ssl_ca: None,
            ssl_cert: None,
            ssl_key: None,
            ssl_key_password: None,
            ssl_key_password_file: None,
            ssl_verify_hostname: true,
            extra: BTreeMap::new(),
            expected_brokers: None,
            health_poll_secs: 15,
        }
    }
}

impl KafkaConfig {
    /// What is wrong with the security settings, each naming its key: SASL
    /// settings without a SASL protocol (and the reverse), TLS files without
    /// TLS, files that cannot be read.
    fn security_errors(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let p = self.security_protocol;
        let name = p.as_str();
        if p.sasl() {
            if self.sasl_mechanism.is_none() {
                errors.push(format!("kafka.sasl_mechanism: kafka.security_protocol = \"{name}\" needs one (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"));
            }
            if self.sasl_username.as_deref().unwrap_or("").is_empty() {
                errors.push(format!("kafka.sasl_username: kafka.security_protocol = \"{name}\" needs one"));
            }
            if self.sasl_password.is_none() {
                errors.push(format!(
                    "kafka.sasl_password_file: kafka.security_protocol = \"{name}\" needs a password (kafka.sasl_password_file, or CHRONOS_KAFKA__SASL_PASSWORD)"
                ));
            }
        } else {
            let set = [
                ("kafka.sasl_mechanism", self.sasl_mechanism.is_some()),
                ("kafka.sasl_username", self.sasl_username.is_some()),
                ("kafka.sasl_password", self.sasl_password.is_some() && self.sasl_password_file.is_none()),
                ("kafka.sasl_password_file", self.sasl_password_file.is_some()),
            ];
            for (key, _) in set.iter().filter(|(_, set)| *set) {
                errors.push(format!("{key}: set, but kafka.security_protocol = \"{name}\" uses no SASL (sasl_plaintext or sasl_ssl does)"));
            }
        }
        let files = [("kafka.ssl_ca", &self.ssl_ca), ("kafka.ssl_cert", &self.ssl_cert), ("kafka.ssl_key", &self.ssl_key)];
        for (key, path) in files {
            let Some(path) = path else { continue };
            if !p.tls() {
                errors.push(format!("{key}: set, but kafka.security_protocol = \"{name}\" uses no TLS (ssl or sasl_ssl does)"));
            } else if let Err(e) = std::fs::File::open(path) {
                errors.push(format!("{key}: cannot read {}: {e}", path.display()));
            }
        }
        if self.ssl_cert.is_some() != self.ssl_key.is_some() {
            errors.push("kafka.ssl_key: kafka.ssl_cert and kafka.ssl_key go together (a client certificate and its key)".into());
        }
        if self.ssl_key_password.is_some() && self.ssl_key.is_none() {
            errors.push("kafka.ssl_key_password: set without kafka.ssl_key".into());
        }
        errors
    }

    /// `min.insync.replicas` for the topics chronos creates.
    pub fn topic_min_insync_replicas(&self) -> i32 {
        self.min_insync_replicas.unwrap_or(self.replication - 1).max(1)
    }
}

/// librdkafka security keys chronosd sets from the typed `kafka.security_protocol`,
/// `kafka.sasl_*` and `kafka.ssl_*` settings.
const SECURITY_KAFKA_KEYS: &[&str] = &[
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
];

/// librdkafka keys chronosd sets from typed fields (or must own for its guarantees).
const MANAGED_KAFKA_KEYS: &[&str] = &[
    "bootstrap.servers",
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "compression.type",
    "compression.codec",
    "linger.ms",
    "queue.buffering.max.ms",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "queued.max.messages.kbytes",
    "batch.num.messages",
    "batch.size",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "request.timeout.ms",
    "statistics.interval.ms",
    "message.max.bytes",
];

impl KafkaConfig {
    /// What is wrong with `[kafka]`, each naming its key.
    pub(super) fn errors(&self, errors: &mut Vec<String>) {
        positive(
            errors,
            [
                ("kafka.partitions", self.partitions.max(0) as u64),
                ("kafka.replication", self.replication.max(0) as u64),
                ("kafka.queue_max_messages", self.queue_max_messages as u64),
                ("kafka.message_timeout_ms", self.message_timeout_ms as u64),
                ("kafka.max_in_flight", self.max_in_flight as u64),
                ("kafka.health_poll_secs", self.health_poll_secs),
            ],
        );
        if self.brokers.trim().is_empty() {
            errors.push("kafka.brokers: must name at least one host:port".into());
        }
        for (key, topic) in [("kafka.topic", &self.topic), ("kafka.dead_letter_topic", &self.dead_letter_topic)] {
            let ok = !topic.is_empty() && topic.len() <= 249 && topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                errors.push(format!("{key}: `{topic}` is not a valid topic name (letters, digits, . _ -)"));
            }
        }
        if self.expected_brokers == Some(0) {
            errors.push("kafka.expected_brokers: 0 brokers cannot serve; leave it unset for no comparison".into());
        }
        if self.topic == self.dead_letter_topic {
            errors.push("kafka.dead_letter_topic: must differ from kafka.topic".into());
        }
        if !matches!(self.compression.as_str(), "zstd" | "lz4" | "gzip" | "none") {
            errors.push(format!(
                "kafka.compression: `{}` is not supported (use zstd, lz4, gzip or none; snappy records cannot be fetched from every broker)",
                self.compression
            ));
        }
        if let Some(m) = self.min_insync_replicas {
            if m < 1 || m > self.replication {
                errors.push(format!("kafka.min_insync_replicas: {m} must be between 1 and kafka.replication ({})", self.replication));
            }
        }
        if self.idempotence && self.max_in_flight > 5 {
            errors.push(format!(
                "kafka.max_in_flight: {} is more than 5, which idempotence (kafka.idempotence = true) does not allow",
                self.max_in_flight
            ));
        }
        errors.extend(self.security_errors());
        for key in self.extra.keys() {
            if MANAGED_KAFKA_KEYS.contains(&key.as_str()) || SECURITY_KAFKA_KEYS.contains(&key.as_str()) {
                errors.push(format!("kafka.extra.\"{key}\": set by chronosd itself; use the typed kafka.* key"));
            }
        }
    }
}
