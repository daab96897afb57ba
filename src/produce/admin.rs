//! Topic set-up through the Kafka admin API (idempotent; works against any
//! Kafka-protocol cluster, and is required where topics are not auto-created).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::KafkaConfig;

fn admin(c: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>, String> {
    super::kafka::base_client_config(c).create().map_err(|e| format!("cannot create a Kafka admin client for {}: {e}", c.brokers))
}

/// The topic's `max.message.bytes` for a producer whose largest record is
/// `max_record` bytes (its `message.max.bytes`, `kafka::max_record_bytes`).
/// The broker checks the limit against a whole record batch: librdkafka puts
/// a record of up to `message.max.bytes` in a batch, or records up to
/// `batch.size` together, so the largest batch is the larger of the two, plus
/// lz4's worst-case growth (n/255 + 16) should compression not pay, plus the
/// batch's framing (61 bytes, and each record's length, key and headers).
/// Below it (Kafka's default is 1 MiB), a batch chronosd accepted would be
/// refused by the broker.
pub fn topic_max_message_bytes(c: &KafkaConfig, max_record: usize) -> usize {
    let largest = max_record.max(c.batch_bytes as usize);
    largest + largest / 255 + 16 * 1024
}

/// Every setting of the topics Chronos creates, explicit.
pub fn topic_config(c: &KafkaConfig, max_record: usize) -> Vec<(&'static str, String)> {
    vec![
        ("min.insync.replicas", c.topic_min_insync_replicas().to_string()),
        ("max.message.bytes", topic_max_message_bytes(c, max_record).to_string()),
    ]
}

/// Creates the events and dead-letter topics when missing, with
/// [`topic_config`] for a producer whose largest record is `max_record`
/// bytes. Returns the names created.
pub async fn ensure_topics(c: &KafkaConfig, max_record: usize, timeout: Duration) -> Result<Vec<String>, String> {
    let admin = admin(c)?;
    let config = topic_config(c, max_record);
    let topics: Vec<NewTopic<'_>> = [c.topic.as_str(), c.dead_letter_topic.as_str()]
        .into_iter()
        .map(|name| config.iter().fold(NewTopic::new(name, c.partitions, TopicReplication::Fixed(c.replication)), |t, (k, v)| t.set(k, v)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
    let results = admin.create_topics(&topics, &opts).await.map_err(|e| format!("the broker at {} did not answer: {e}", c.brokers))?;
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(format!("cannot create topic {name}: {code}")),
        }
    }
    Ok(created)
}

/// A topic's `retention.ms` (how long Kafka keeps its records), as the broker
/// reports it; `Ok(None)` when it keeps them forever (-1).
pub async fn retention_ms(c: &KafkaConfig, topic: &str, timeout: Duration) -> Result<Option<i64>, String> {
    let ms = topic_setting(c, topic, "retention.ms", timeout).await?;
    Ok((ms >= 0).then_some(ms))
}

/// A topic's `max.message.bytes` (the largest record batch its brokers
/// take), as the broker reports it.
pub async fn max_message_bytes(c: &KafkaConfig, topic: &str, timeout: Duration) -> Result<i64, String> {
    topic_setting(c, topic, "max.message.bytes", timeout).await
}

/// A numeric setting of a topic, as the broker reports it.
async fn topic_setting(c: &KafkaConfig, topic: &str, name: &str, timeout: Duration) -> Result<i64, String> {
    use rdkafka::admin::ResourceSpecifier;
    let admin = admin(c)?;
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let results = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &opts)
        .await
        .map_err(|e| format!("the broker at {} did not answer: {e}", c.brokers))?;
    let resource = results.into_iter().next().ok_or("no answer for the topic")?.map_err(|e| format!("topic {topic}: {e}"))?;
    let value =
        resource.entries.iter().find(|e| e.name == name).and_then(|e| e.value.clone()).ok_or_else(|| format!("topic {topic} reports no {name}"))?;
    value.parse().map_err(|_| format!("topic {topic}: {name} = {value} is not a number"))
}

/// What [`check_security`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityCheck {
    /// A broker answered over the configured protocol (and login).
    Accepted,
    /// A broker answered but refused the TLS handshake or the login: the
    /// message names the setting to change. chronosd does not start.
    Refused(String),
    /// No broker answered in time (down, or not reachable yet): chronosd starts
    /// anyway, as it does with plaintext, and answers 503 until one does.
    Unreachable(String),
}

/// Connects once with the configured `security.protocol`, TLS and SASL
/// settings and asks for metadata, so that a wrong password, an untrusted
/// certificate or the wrong protocol stop chronosd at start with the setting
/// named, instead of 503s and retries in the log. Blocking (run it off the
/// async runtime).
pub fn check_security(c: &KafkaConfig, timeout: Duration) -> SecurityCheck {
    use rdkafka::producer::{BaseProducer, Producer};
    let mut cc = super::kafka::base_client_config(c);
    cc.set("log_level", "6");
    // A producer: its poll serves the main queue, where librdkafka puts its
    // log lines and errors (the `FAIL` of a refused connection).
    let probe: BaseProducer<ProbeContext> = match cc.create_with_context(ProbeContext::default()) {
        Ok(probe) => probe,
        Err(e) => return SecurityCheck::Refused(explain_client_error(c, &e.to_string())),
    };
    let until = std::time::Instant::now() + timeout;
    loop {
        if probe.client().fetch_metadata(None, Duration::from_millis(300)).is_ok() {
            return SecurityCheck::Accepted;
        }
        probe.poll(Duration::from_millis(200));
        if let Some(reason) = probe.context().refusal() {
            if reason.contains("certificate verify failed") && c.ssl_verify_hostname && tls_trusted_without_hostname(c) {
                let hint = "a broker's certificate does not name the host it was reached at";
                return SecurityCheck::Refused(explain_client_error(c, &format!("{reason} ({hint}: hostname mismatch)")));
            }
            return SecurityCheck::Refused(explain_client_error(c, &reason));
        }
        if std::time::Instant::now() >= until {
            let last = probe.context().last().unwrap_or_else(|| "no answer".into());
            if accepts_tcp(c) {
                // The port is open, yet no metadata came back in all this
                // time: the listener closes the connection during the
                // handshake (e.g. TLS only against a SASL_SSL listener).
                let why = format!("the brokers accept TCP connections but close them before answering ({last})");
                return SecurityCheck::Refused(explain_client_error(c, &why));
            }
            return SecurityCheck::Unreachable(format!("no Kafka broker at {} answered within {timeout:?} ({last})", c.brokers));
        }
    }
}

/// A TCP connection to the first broker of `kafka.brokers`, with its host name.
fn connect_first_broker(c: &KafkaConfig) -> Option<(String, std::net::TcpStream)> {
    let addr = c.brokers.split(',').next()?.trim();
    let (host, _) = addr.rsplit_once(':')?;
    let sock = std::net::ToSocketAddrs::to_socket_addrs(addr).ok()?.next()?;
    let stream = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    Some((host.to_string(), stream))
}

/// Whether the first broker's port accepts a TCP connection.
fn accepts_tcp(c: &KafkaConfig) -> bool {
    connect_first_broker(c).is_some()
}

/// Whether the first broker's certificate chain is trusted when its host name
/// is not checked: OpenSSL reports both a foreign CA and a wrong name as
/// "certificate verify failed", and the fix differs.
fn tls_trusted_without_hostname(c: &KafkaConfig) -> bool {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let Ok(mut builder) = SslConnector::builder(SslMethod::tls_client()) else { return false };
    builder.set_verify(SslVerifyMode::PEER);
    let loaded = match &c.ssl_ca {
        Some(ca) => builder.set_ca_file(ca),
        None => builder.set_default_verify_paths(),
    };
    if loaded.is_err() {
        return false;
    }
    let connector = builder.build();
    let Ok(config) = connector.configure() else { return false };
    let config = config.verify_hostname(false).use_server_name_indication(false);
    let Some((host, stream)) = connect_first_broker(c) else { return false };
    config.connect(&host, stream).is_ok()
}

/// The setting to change for librdkafka's account of a refused connection.
fn explain_client_error(c: &KafkaConfig, reason: &str) -> String {
    let protocol = c.security_protocol.as_str();
    let lower = reason.to_ascii_lowercase();
    let hint = if lower.contains("sasl authentication") || lower.contains("invalid credentials") || lower.contains("authentication failed") {
        format!(
            "the brokers refused the SASL login of kafka.sasl_username = \"{}\" with kafka.sasl_mechanism = \"{}\": check kafka.sasl_password_file (or CHRONOS_KAFKA__SASL_PASSWORD) and kafka.sasl_mechanism",
            c.sasl_username.as_deref().unwrap_or(""),
            c.sasl_mechanism.map(|m| m.as_str()).unwrap_or("")
        )
    } else if lower.contains("plaintext broker listener")
        || lower.contains("wrong version number")
        || lower.contains("security.protocol")
        || lower.contains("close them before answering")
    {
        format!("kafka.security_protocol = \"{protocol}\" is not what the brokers' listener at {} speaks: check kafka.security_protocol and kafka.brokers", c.brokers)
    } else if lower.contains("hostname mismatch") || lower.contains("does not match") {
        "a broker's certificate does not name the host it was reached at: use the name it was issued for in kafka.brokers (or, knowing the risk, kafka.ssl_verify_hostname = false)".to_string()
    } else if lower.contains("certificate verify failed") || lower.contains("could not be verified") {
        "the brokers' certificate is not signed by a trusted CA: set kafka.ssl_ca to the PEM file of the CA that signed it".to_string()
    } else if lower.contains("ssl") {
        "TLS to the brokers failed: check kafka.ssl_ca, kafka.ssl_cert and kafka.ssl_key".to_string()
    } else if lower.contains("sasl") || lower.contains("mechanism") {
        format!("the brokers refused SASL: check kafka.sasl_mechanism and kafka.security_protocol (\"{protocol}\")")
    } else {
        format!("check kafka.security_protocol (\"{protocol}\") and kafka.brokers")
    };
    format!("Kafka at {}: {hint} (librdkafka: {reason})", c.brokers)
}

/// Keeps librdkafka's errors for [`check_security`]: the first that means
/// "refused" (TLS, SASL, wrong protocol), and the last of any kind.
#[derive(Default)]
struct ProbeContext {
    refused: std::sync::Mutex<Option<String>>,
    last: std::sync::Mutex<Option<String>>,
}

impl ProbeContext {
    fn refusal(&self) -> Option<String> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn last(&self) -> Option<String> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl rdkafka::producer::ProducerContext for ProbeContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

impl rdkafka::client::ClientContext for ProbeContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let refused = matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL));
        self.note(refused, reason);
    }

    /// librdkafka logs a failed connection (`FAIL`, at error level) from its
    /// broker thread at once; the error event waits for a poll.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel::*;
        tracing::debug!(target: "librdkafka", ?level, fac, "{message}");
        if matches!(level, Emerg | Alert | Critical | Error) || message.contains("security.protocol") {
            self.note(false, message);
        }
    }
}

impl ProbeContext {
    fn note(&self, refused: bool, reason: &str) {
        let refused = refused
            || reason.contains("SASL")
            || reason.contains("SSL handshake failed")
            || reason.contains("security.protocol")
            || reason.contains("PLAINTEXT broker listener");
        if refused {
            self.refused.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(|| reason.to_string());
        }
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SaslMechanism, SecurityProtocol};

    fn sasl() -> KafkaConfig {
        KafkaConfig {
            brokers: "kafka.example:9094".into(),
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            sasl_username: Some("chronos".into()),
            ..Default::default()
        }
    }

    #[test]
    fn each_refusal_names_the_setting_to_change() {
        let c = sasl();
        let cases = [
            ("SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512", "check kafka.sasl_password_file"),
            ("ssl://kafka.example:9094/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured", "set kafka.ssl_ca to the PEM file"),
            ("SSL handshake failed: error:0A00010B:SSL routines::wrong version number: connecting to a PLAINTEXT broker listener?", "check kafka.security_protocol and kafka.brokers"),
            ("Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol configuration (connecting to a SSL listener?)", "is not what the brokers' listener"),
            ("SSL handshake failed: certificate verify failed: Hostname mismatch", "kafka.ssl_verify_hostname = false"),
        ];
        for (reason, hint) in cases {
            let text = explain_client_error(&c, reason);
            assert!(text.starts_with("Kafka at kafka.example:9094: "), "{text}");
            assert!(text.contains(hint), "{reason} → {text}");
            assert!(text.ends_with(&format!("(librdkafka: {reason})")), "{text}");
        }
        assert!(explain_client_error(&c, "SASL authentication error")
            .contains("kafka.sasl_username = \"chronos\" with kafka.sasl_mechanism = \"SCRAM-SHA-512\""));
    }

    #[test]
    fn topics_take_the_largest_batch_the_producer_sends() {
        let c = KafkaConfig::default();
        let max_record = super::super::kafka::max_record_bytes(1024 * 1024, 2000);
        let producer = super::super::kafka::producer_config(&c, max_record);
        let producer_max: usize = producer.get("message.max.bytes").unwrap().parse().unwrap();
        let batch_size: usize = producer.get("batch.size").unwrap().parse().unwrap();
        let config = topic_config(&c, max_record);
        let topic_max: usize = config.iter().find(|(k, _)| *k == "max.message.bytes").expect("set explicitly").1.parse().unwrap();
        assert!(topic_max > 1_048_588, "above Kafka's default, which the default caps exceed: {topic_max}");
        for largest in [producer_max, batch_size] {
            assert!(topic_max >= largest + largest / 255 + 61, "{topic_max} < batch of {largest}");
        }
        assert_eq!(config.iter().find(|(k, _)| *k == "min.insync.replicas").map(|(_, v)| v.as_str()), Some("1"));
        // A batch.size above the largest record raises the limit with it.
        let big_batches = KafkaConfig { batch_bytes: 8_000_000, ..KafkaConfig::default() };
        assert!(topic_max_message_bytes(&big_batches, max_record) > 8_000_000);
    }

    #[test]
    fn no_broker_is_unreachable_not_refused() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let c = KafkaConfig { brokers: format!("127.0.0.1:{port}"), ..Default::default() };
        match check_security(&c, Duration::from_millis(1200)) {
            SecurityCheck::Unreachable(text) => assert!(text.contains(&format!("no Kafka broker at 127.0.0.1:{port} answered")), "{text}"),
            other => panic!("{other:?}"),
        }
    }
}
