//! The one typed configuration: a TOML file, every key overridable by a
//! `CHRONOS_…` environment variable (`CHRONOS_KAFKA__BROKERS`, sections joined
//! by `__`), validated once at boot with errors that name the key.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::catalog::{self, EventTypeConfig};
use crate::secret::Secret;

/// Environment variables with the `CHRONOS_` prefix that are not config keys.
const NOT_KEYS: &[&str] = &["config", "home", "log", "bin_dir", "broker_log", "failpoint"];

/// Everything chronosd and the chronos CLI read from the config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP receipt (`POST /v1/batch`).
    pub http: HttpConfig,
    /// Per-key and per-IP request rates and payload caps.
    pub limits: LimitsConfig,
    /// Write keys; several may be valid at once (rotation).
    pub keys: Vec<WriteKeyConfig>,
    /// Kafka producer and topics.
    pub kafka: KafkaConfig,
    /// PostgreSQL (raw tables, views, internals).
    pub postgres: PostgresConfig,
    /// The event catalog: `[events.<type>]`. Defaults to the six built-ins.
    #[serde(default = "catalog::built_in_events")]
    pub events: BTreeMap<String, EventTypeConfig>,
    /// Loaders: Kafka → PostgreSQL.
    pub load: LoadConfig,
    /// How long raw events stay in PostgreSQL, and where older days go.
    pub retention: RetentionConfig,
    /// Historical import (`chronos import`, `POST /v1/import`).
    pub import: ImportConfig,
    /// Enrichment at receipt: bots, user agents.
    pub enrich: EnrichConfig,
    /// The local stack started by `chronos start`.
    pub stack: StackConfig,
    /// What `chronos tracker build` puts into the browser tracker.
    pub tracker: crate::tracker::TrackerConfig,
    /// The file this config was loaded from (chronosd watches it), if any.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Loaders (Kafka → PostgreSQL) settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadConfig {
    /// Run the loaders in this chronosd (several chronosd share the partitions).
    pub enabled: bool,
    /// Kafka consumer group of the loaders.
    pub group_id: String,
    /// Flush a partition's buffer once it holds this many events.
    pub flush_rows: usize,
    /// … or this many ms after its first record arrived.
    pub flush_ms: u64,
    /// Threads the partition loaders run on; 0 = one per core.
    pub threads: usize,
    /// No longer used (each loader reads its partition's own queue, bounded by
    /// `prefetch_kbytes`); accepted so that older config files still start,
    /// with a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mailbox_capacity: Option<usize>,
    /// Records fetched ahead of the loaders, all partitions together (each
    /// partition's queue gets `queued.max.messages.kbytes` = this divided by
    /// the partitions of both topics, at least 1024). Bounds chronosd's memory
    /// while the loaders lag (perf/pipeline.md, RSS).
    pub prefetch_kbytes: u32,
    /// Event times more than this before receipt are clamped to it and flagged.
    pub max_past_secs: u64,
    /// Event times more than this after receipt are clamped to it and flagged.
    pub max_future_secs: u64,
    /// Daily partitions created for past days at install.
    pub partitions_past_days: i64,
    /// Daily partitions kept ready ahead of today.
    pub partitions_ahead_days: i64,
    /// New event tables as TimescaleDB hypertables: "auto" (when the extension
    /// is available), "always" (refuse to start without it) or "never".
    pub timescaledb: Timescale,
    /// Chunk width of new hypertables (and of new chunks of existing ones),
    /// in hours: a divisor of 24 or a whole number of days, so that chunks
    /// never straddle a UTC day (days are what retention archives and drops).
    pub chunk_interval_hours: u32,
    /// Batch ids remembered for deduplication of retries, in hours.
    pub seen_batches_retention_hours: u64,
    /// Longest wait between retries when PostgreSQL fails, in ms.
    pub retry_max_ms: u64,
    /// Consumer `session.timeout.ms`.
    pub session_timeout_ms: u32,
    /// Events of one session id further apart than this start a new visit
    /// in `chronos.sessions`, in seconds.
    pub session_gap_secs: u64,
    /// Consumer `max.poll.interval.ms`: also how long a rebalance waits for a
    /// member that crashed, on brokers that only expire members then.
    pub max_poll_interval_ms: u32,
    /// At shutdown, how long the loaders (all in parallel) may take to commit
    /// what they hold. Keep it below the service manager's stop timeout
    /// (the systemd unit's `TimeoutStopSec=50`).
    pub shutdown_timeout_secs: u64,
}

/// Whether event tables become TimescaleDB hypertables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Timescale {
    Auto,
    Always,
    Never,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            enabled: true,
            group_id: "chronos-loaders".into(),
            flush_rows: 20_000,
            flush_ms: 1000,
            threads: 0,
            mailbox_capacity: None,
            prefetch_kbytes: 16_384,
            max_past_secs: 7 * 86_400,
            max_future_secs: 86_400,
            partitions_past_days: 8,
            partitions_ahead_days: 7,
            timescaledb: Timescale::Auto,
            chunk_interval_hours: 24,
            seen_batches_retention_hours: 72,
            retry_max_ms: 10_000,
            session_timeout_ms: 6_000,
            session_gap_secs: 1800,
            max_poll_interval_ms: 60_000,
            shutdown_timeout_secs: 20,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http: HttpConfig::default(),
            limits: LimitsConfig::default(),
            keys: Vec::new(),
            kafka: KafkaConfig::default(),
            postgres: PostgresConfig::default(),
            load: LoadConfig::default(),
            events: catalog::built_in_events(),
            retention: RetentionConfig::default(),
            import: ImportConfig::default(),
            enrich: EnrichConfig::default(),
            stack: StackConfig::default(),
            tracker: crate::tracker::TrackerConfig::default(),
            source: None,
        }
    }
}

/// HTTP receipt settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address chronosd listens on.
    pub listen: SocketAddr,
    /// actix-web worker threads; 0 = one per core.
    pub workers: usize,
    /// Threads that parse and validate batches; 0 = one per core.
    pub receipt_threads: usize,
    /// Largest request body accepted, in bytes, as sent (compressed or not).
    pub max_body_bytes: usize,
    /// Largest body after gzip decompression, in bytes.
    pub max_decompressed_bytes: usize,
    /// Most events in one batch.
    pub max_events_per_batch: usize,
    /// Deadline for the broker to acknowledge a batch before the request gets 503.
    pub produce_deadline_ms: u64,
    /// `Retry-After` seconds sent with 503.
    pub retry_after_secs: u64,
    /// Peers whose `X-Forwarded-For` is trusted to name the client (reverse proxies).
    pub trusted_proxies: Vec<IpAddr>,
    /// Receipt and producer mailbox capacity (messages waiting per actor).
    pub mailbox_capacity: usize,
    /// Seconds in-flight requests get to finish on SIGTERM before they are cut.
    pub shutdown_grace_secs: u64,
    /// Most first rejection reasons echoed in a response.
    pub max_reasons: usize,
    /// Also accept the write keys stored in PostgreSQL (`chronos keys create|revoke`),
    /// reloaded while chronosd runs; chronosd does not start if it cannot read them.
    pub keys_from_postgres: bool,
    /// Seconds between reloads of the stored write keys (how long a new or
    /// revoked key takes to count).
    pub keys_refresh_secs: u64,
    /// Serve HTTPS with this certificate chain (PEM, leaf first) and
    /// `tls_key`, for chronosd exposed without a reverse proxy. Unset: HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Seconds between checks of `tls_cert` and `tls_key` for changes; a
    /// changed pair is used for new connections without a restart.
    pub tls_reload_secs: u64,
    /// Path of the batch endpoint (`POST`); the tracker chronosd builds and
    /// serves sends there. Any path of your own, e.g. `/e` behind your site's
    /// reverse proxy, so that blockers matching `/v1/batch` miss it.
    pub batch_path: String,
    /// Path at which chronosd serves the tracker bundle built from this
    /// config (`GET`), e.g. `/assets/app.js`; empty: not served.
    pub tracker_path: String,
    /// Seconds between checks of the config file for changes: a changed
    /// `[[keys]]` or `[tracker]` counts without a restart (the served tracker
    /// is rebuilt); other changes wait for one. 0: not watched.
    pub config_watch_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".parse().unwrap(),
            workers: 0,
            receipt_threads: 0,
            max_body_bytes: 256 * 1024,
            max_decompressed_bytes: 1024 * 1024,
            max_events_per_batch: 2000,
            produce_deadline_ms: 5000,
            retry_after_secs: 2,
            trusted_proxies: Vec::new(),
            mailbox_capacity: 1024,
            shutdown_grace_secs: 20,
            max_reasons: 5,
            keys_from_postgres: false,
            keys_refresh_secs: 5,
            tls_cert: None,
            tls_key: None,
            tls_reload_secs: 10,
            batch_path: "/v1/batch".into(),
            tracker_path: "/chronos.js".into(),
            config_watch_secs: 5,
        }
    }
}

/// Paths chronosd answers itself.
pub const OWN_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics", "/v1/import"];

impl HttpConfig {
    /// What is wrong with `batch_path` and `tracker_path`.
    fn path_errors(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let check = |key: &str, path: &str, errors: &mut Vec<String>| {
            let ok = path.starts_with('/')
                && path.len() > 1
                && path.len() <= 128
                && !path.ends_with('/')
                && path.chars().all(|c| c.is_ascii_alphanumeric() || "/-_.~".contains(c))
                && !path.contains("//")
                && !path.split('/').any(|seg| seg == "." || seg == "..");
            if !ok {
                errors.push(format!(
                    "http.{key}: `{path}` must be an absolute path of letters, digits and - _ . ~ (like /e or /assets/app.js), without a trailing slash"
                ));
            } else if OWN_PATHS.contains(&path) {
                errors.push(format!("http.{key}: `{path}` is chronosd's own endpoint"));
            }
        };
        check("batch_path", &self.batch_path, &mut errors);
        if !self.tracker_path.is_empty() {
            check("tracker_path", &self.tracker_path, &mut errors);
            if self.tracker_path == self.batch_path {
                errors.push("http.tracker_path: the same path as http.batch_path".into());
            }
        }
        errors
    }
}

/// Rates and payload caps.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Requests per second allowed per write key (sustained).
    pub per_key_per_sec: u32,
    /// Requests a write key may send in a burst above the sustained rate.
    pub per_key_burst: u32,
    /// Requests per second allowed per client IP (sustained).
    pub per_ip_per_sec: u32,
    /// Requests a client IP may send in a burst.
    pub per_ip_burst: u32,
    /// Default longest string attribute, in bytes.
    pub max_string_bytes: u32,
    /// Longest session id, in bytes.
    pub max_session_bytes: u32,
    /// Most keys in the page metadata object.
    pub max_page_keys: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            per_key_per_sec: 100_000,
            per_key_burst: 200_000,
            per_ip_per_sec: 50,
            per_ip_burst: 200,
            max_string_bytes: 2048,
            max_session_bytes: 128,
            max_page_keys: 32,
        }
    }
}

/// A write key: what the tracker sends in `key`, and where it may be used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteKeyConfig {
    /// Short public name of the key, recorded with every batch (never the secret).
    pub id: String,
    /// The key itself (at least 16 characters).
    #[serde(default)]
    pub key: String,
    /// A file holding the key instead (systemd `LoadCredential=`, Docker secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Allowed page origins: `example.com`, `*.example.com`, `https://example.com:8443`.
    #[serde(default)]
    pub origins: Vec<String>,
    /// Accept requests without an `Origin` header (server-side senders, curl).
    #[serde(default)]
    pub allow_no_origin: bool,
    /// `browser` (default): for pages, checked against `origins`; `server`:
    /// for back ends and `POST /v1/import`, never from a page (a request
    /// with an `Origin` header is refused).
    #[serde(default)]
    pub kind: KeyKind,
}

/// Who may use a write key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    #[default]
    Browser,
    Server,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Browser => "browser",
            KeyKind::Server => "server",
        }
    }
}

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

/// PostgreSQL connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// libpq-style URL; TLS with libpq's `sslmode` and `sslrootcert` in its
    /// query string (docs/operations.md).
    pub url: String,
    /// A file holding the password (systemd `LoadCredential=`, Docker
    /// secrets): read at start, never logged; the URL then has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig { url: "postgres://chronos@127.0.0.1:5433/chronos".into(), password_file: None }
    }
}

impl PostgresConfig {
    /// Puts the password of `password_file` into the URL (kept in memory only).
    fn resolve_password(&mut self) -> Result<(), String> {
        let Some(path) = &self.password_file else { return Ok(()) };
        let password = crate::secret::read_file("postgres.password_file", path)?;
        let password = password.expose();
        if self.url.starts_with("postgres://") || self.url.starts_with("postgresql://") {
            let mut u = url::Url::parse(&self.url).map_err(|e| format!("postgres.url: not a URL: {e}"))?;
            if u.password().is_some() {
                return Err("postgres.password_file: postgres.url has a password too; give one of them".into());
            }
            u.set_password(Some(password)).map_err(|_| "postgres.url: a URL without a host cannot take a password".to_string())?;
            self.url = u.to_string();
        } else {
            if self.url.split_whitespace().any(|t| t.starts_with("password=")) {
                return Err("postgres.password_file: postgres.url has a password too; give one of them".into());
            }
            self.url = format!("{} password='{}'", self.url, password.replace('\\', "\\\\").replace('\'', "\\'"));
        }
        Ok(())
    }
}

/// Retention of raw events, and their archive (docs/lifecycle.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days of raw events kept in PostgreSQL (UTC days before today); older
    /// days are archived, verified, then dropped. 0 keeps everything.
    pub raw_days: u32,
    /// Where archived days go: a directory, a `file://` URL, or an object
    /// store URL (`s3://bucket/prefix`, credentials from the usual `AWS_*`
    /// environment). Empty: `<stack.dir>/archive`. `"off"` drops old days
    /// without archiving them.
    pub archive: String,
    /// How often chronosd looks for days to archive, in seconds.
    pub every_secs: u64,
    /// How long `chronos archive restore` keeps restored days before the
    /// schedule drops them again (the archive keeps them), in days.
    pub restore_keep_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { raw_days: 30, archive: String::new(), every_secs: 3600, restore_keep_days: 7 }
    }
}

/// Historical import (docs/import.md): which event times are plausible, and
/// how events of the JSON-lines form are grouped into batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImportConfig {
    /// Events older than this many days before the import are refused
    /// (dead-lettered, like any invalid event). 0: any time since 2000.
    pub max_past_days: u32,
    /// Events more than this many seconds after the import are refused.
    pub max_future_secs: u64,
    /// Events of one session and page per batch, at most (JSON-lines form;
    /// also capped by `http.max_events_per_batch`).
    pub batch_events: usize,
    /// Largest `POST /v1/import` body, after decompression.
    pub max_body_bytes: usize,
}

impl Default for ImportConfig {
    fn default() -> Self {
        ImportConfig { max_past_days: 3660, max_future_secs: 3600, batch_events: 500, max_body_bytes: 64 << 20 }
    }
}

/// Enrichment at receipt (docs/enrichment.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichConfig {
    /// Off: no bot detection, user-agent parsing or GeoIP (the columns stay
    /// false/NULL); for measuring what enrichment costs.
    pub enabled: bool,
    /// `flag` (default): bots' events are stored with `is_bot` and
    /// `bot_reason`; `drop`: they are answered 200 and not stored.
    pub bots: BotPolicy,
    /// Distinct user agents whose parse is kept (bounded cache).
    pub ua_cache_entries: usize,
    /// A MaxMind-format City database (GeoLite2-City.mmdb): country, region
    /// and city of the client IP, looked up before it is anonymised. None:
    /// those columns stay NULL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geoip_db: Option<PathBuf>,
    /// How often the database file is checked for a new version, in seconds.
    pub geoip_reload_secs: u64,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        EnrichConfig { enabled: true, bots: BotPolicy::Flag, ua_cache_entries: 10_000, geoip_db: None, geoip_reload_secs: 60 }
    }
}

/// What happens to a bot's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BotPolicy {
    Flag,
    Drop,
}

/// Where `retention.archive` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveTarget {
    /// Drop old days without archiving them.
    Off,
    /// An `object_store` URL (`file:///…` for a local directory).
    Url(url::Url),
}

impl Config {
    /// `retention.archive` resolved: a plain path (relative to the working
    /// directory) becomes a `file://` URL; empty means `<stack.dir>/archive`.
    pub fn archive_target(&self) -> Result<ArchiveTarget, String> {
        let a = self.retention.archive.trim();
        if a == "off" {
            return Ok(ArchiveTarget::Off);
        }
        let dir_url = |p: &Path| {
            let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().map_err(|e| e.to_string())?.join(p) };
            url::Url::from_directory_path(&abs).map_err(|_| format!("retention.archive: {} is not a usable directory path", abs.display()))
        };
        let url = match a {
            "" => dir_url(&self.stack.dir.join("archive"))?,
            a if a.contains("://") => url::Url::parse(a).map_err(|e| format!("retention.archive: `{a}` is not a URL: {e}"))?,
            a => dir_url(Path::new(a))?,
        };
        match url.scheme() {
            "file" | "s3" | "memory" => Ok(ArchiveTarget::Url(url)),
            other => Err(format!("retention.archive: scheme `{other}` is not supported (a directory, file://, s3:// or \"off\")")),
        }
    }
}

/// The local stack (`chronos start`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StackConfig {
    /// Directory holding every service's data, logs and pid files.
    pub dir: PathBuf,
    /// Port of the local PostgreSQL.
    pub postgres_port: u16,
    /// `local`: `chronos start` runs one Apache Kafka node (broker and controller,
    /// KRaft) in `dir`. `external`: `kafka.brokers` is a cluster you run; `chronos
    /// start` starts no broker and only creates the topics there.
    pub broker: BrokerMode,
    /// Client port of the local Kafka node (`kafka.brokers` must name it).
    pub broker_port: u16,
    /// Controller (KRaft quorum) port of the local Kafka node.
    pub controller_port: u16,
    /// Java heap of the local Kafka node, MiB.
    pub broker_heap_mb: u32,
}

/// Who runs the stack's Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerMode {
    Local,
    External,
}

impl Default for StackConfig {
    fn default() -> Self {
        StackConfig {
            dir: ".chronos".into(),
            postgres_port: 5433,
            broker: BrokerMode::Local,
            broker_port: 9092,
            controller_port: 9093,
            broker_heap_mb: 512,
        }
    }
}

/// A config that could not be loaded or is invalid; each line names a key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(String),
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Loads defaults, then `path` (if any), then `CHRONOS_*` variables, and validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env = Env::prefixed("CHRONOS_").ignore(NOT_KEYS).split("__");
        Self::load_with(path, env)
    }

    fn load_with(path: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::Load(format!("config file {} does not exist", path.display())));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        let mut config: Config = fig.merge(env).extract().map_err(|e| {
            ConfigError::Load(e.into_iter().map(|e| describe(&e)).collect::<Vec<_>>().join("\n"))
        })?;
        config.resolve_secrets()?;
        config.validate()?;
        config.source = path.map(Path::to_path_buf);
        Ok(config)
    }

    /// Parses a TOML string (no environment), then validates. For tests and tools.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Load(e.into_iter().map(|e| describe(&e)).collect::<Vec<_>>().join("\n")))?;
        config.resolve_secrets()?;
        config.validate()?;
        Ok(config)
    }

    /// Reads every `…_file` secret into its setting (kept in memory only).
    fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        errors.extend(self.postgres.resolve_password().err());
        let k = &mut self.kafka;
        errors.extend(crate::secret::resolve("kafka.sasl_password", &mut k.sasl_password, k.sasl_password_file.as_deref()).err());
        errors.extend(crate::secret::resolve("kafka.ssl_key_password", &mut k.ssl_key_password, k.ssl_key_password_file.as_deref()).err());
        for (i, key) in self.keys.iter_mut().enumerate() {
            let mut inline = (!key.key.is_empty()).then(|| Secret::new(key.key.as_str()));
            match crate::secret::resolve(&format!("keys[{i}].key"), &mut inline, key.key_file.as_deref()) {
                Ok(()) => key.key = inline.map(|s| s.expose().to_string()).unwrap_or_default(),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// Checks every value; errors name the key and say why.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = catalog::validate_events(&self.events);
        errors.extend(crate::tracker::validate(self));
        let h = &self.http;
        let positive = [
            ("http.max_body_bytes", h.max_body_bytes as u64),
            ("http.max_decompressed_bytes", h.max_decompressed_bytes as u64),
            ("http.max_events_per_batch", h.max_events_per_batch as u64),
            ("http.produce_deadline_ms", h.produce_deadline_ms),
            ("http.mailbox_capacity", h.mailbox_capacity as u64),
            ("limits.per_key_per_sec", self.limits.per_key_per_sec as u64),
            ("limits.per_ip_per_sec", self.limits.per_ip_per_sec as u64),
            ("limits.max_string_bytes", self.limits.max_string_bytes as u64),
            ("limits.max_session_bytes", self.limits.max_session_bytes as u64),
            ("limits.max_page_keys", self.limits.max_page_keys as u64),
            ("kafka.partitions", self.kafka.partitions.max(0) as u64),
            ("kafka.replication", self.kafka.replication.max(0) as u64),
            ("kafka.queue_max_messages", self.kafka.queue_max_messages as u64),
            ("kafka.message_timeout_ms", self.kafka.message_timeout_ms as u64),
            ("kafka.max_in_flight", self.kafka.max_in_flight as u64),
            ("load.flush_rows", self.load.flush_rows as u64),
            ("load.flush_ms", self.load.flush_ms),
            ("load.shutdown_timeout_secs", self.load.shutdown_timeout_secs),
            ("load.prefetch_kbytes", self.load.prefetch_kbytes as u64),
            ("import.batch_events", self.import.batch_events as u64),
            ("load.session_gap_secs", self.load.session_gap_secs),
            ("import.max_body_bytes", self.import.max_body_bytes as u64),
            ("enrich.ua_cache_entries", self.enrich.ua_cache_entries as u64),
            ("enrich.geoip_reload_secs", self.enrich.geoip_reload_secs),
        ];
        for (key, v) in positive {
            if v == 0 {
                errors.push(format!("{key}: must be greater than 0"));
            }
        }
        let l = &self.load;
        if l.max_poll_interval_ms < l.session_timeout_ms {
            errors.push("load.max_poll_interval_ms: must be at least load.session_timeout_ms".into());
        }
        if l.group_id.is_empty() {
            errors.push("load.group_id: must not be empty".into());
        }
        let r = &self.retention;
        if r.raw_days > 0 && u64::from(r.raw_days) * 86_400 <= self.load.max_past_secs + 86_400 {
            errors.push(format!(
                "retention.raw_days: {} must be more than a day longer than load.max_past_secs ({} s), or late events could land in a day already archived",
                r.raw_days, self.load.max_past_secs
            ));
        }
        if r.every_secs == 0 {
            errors.push("retention.every_secs: must be greater than 0".into());
        }
        if let Err(e) = self.archive_target() {
            errors.push(e);
        }
        let chunk = self.load.chunk_interval_hours;
        if chunk == 0 || (24 % chunk != 0 && chunk % 24 != 0) {
            errors.push(format!(
                "load.chunk_interval_hours: {chunk} must divide 24 (1, 2, 3, 4, 6, 8, 12) or be a whole number of days (24, 48, …), so chunks never straddle a UTC day"
            ));
        }
        if (l.partitions_past_days * 86_400) < l.max_past_secs as i64 {
            errors.push("load.partitions_past_days: must cover load.max_past_secs (clamped times need a partition)".into());
        }
        if h.max_decompressed_bytes < h.max_body_bytes {
            errors.push("http.max_decompressed_bytes: must be at least http.max_body_bytes".into());
        }
        if self.limits.per_key_burst < self.limits.per_key_per_sec.min(1) {
            errors.push("limits.per_key_burst: must be at least 1".into());
        }
        if self.limits.per_ip_burst == 0 {
            errors.push("limits.per_ip_burst: must be at least 1".into());
        }
        let k = &self.kafka;
        if k.brokers.trim().is_empty() {
            errors.push("kafka.brokers: must name at least one host:port".into());
        }
        for (key, topic) in [("kafka.topic", &k.topic), ("kafka.dead_letter_topic", &k.dead_letter_topic)] {
            let ok = !topic.is_empty()
                && topic.len() <= 249
                && topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                errors.push(format!("{key}: `{topic}` is not a valid topic name (letters, digits, . _ -)"));
            }
        }
        if k.topic == k.dead_letter_topic {
            errors.push("kafka.dead_letter_topic: must differ from kafka.topic".into());
        }
        if !matches!(k.compression.as_str(), "zstd" | "lz4" | "gzip" | "none") {
            errors.push(format!(
                "kafka.compression: `{}` is not supported (use zstd, lz4, gzip or none; snappy records cannot be fetched from every broker)",
                k.compression
            ));
        }
        if let Some(m) = k.min_insync_replicas {
            if m < 1 || m > k.replication {
                errors.push(format!("kafka.min_insync_replicas: {m} must be between 1 and kafka.replication ({})", k.replication));
            }
        }
        let st = &self.stack;
        if st.broker_port == st.controller_port {
            errors.push(format!("stack.controller_port: {} is also stack.broker_port", st.controller_port));
        }
        if st.broker_heap_mb < 128 {
            errors.push(format!("stack.broker_heap_mb: {} is too small for a Kafka broker (at least 128)", st.broker_heap_mb));
        }
        if k.idempotence && k.max_in_flight > 5 {
            errors.push(format!(
                "kafka.max_in_flight: {} is more than 5, which idempotence (kafka.idempotence = true) does not allow",
                k.max_in_flight
            ));
        }
        if (k.message_timeout_ms as u64) > h.produce_deadline_ms {
            errors.push(format!(
                "kafka.message_timeout_ms: {} exceeds http.produce_deadline_ms ({}); a request would give up before the producer does",
                k.message_timeout_ms, h.produce_deadline_ms
            ));
        }
        errors.extend(k.security_errors());
        for key in k.extra.keys() {
            if MANAGED_KAFKA_KEYS.contains(&key.as_str()) || SECURITY_KAFKA_KEYS.contains(&key.as_str()) {
                errors.push(format!("kafka.extra.\"{key}\": set by chronosd itself; use the typed kafka.* key"));
            }
        }
        errors.extend(h.path_errors());
        match (&h.tls_cert, &h.tls_key) {
            (Some(cert), Some(key)) => {
                if let Err(e) = crate::http::tls::load_context(cert, key) {
                    errors.push(e);
                }
                if h.tls_reload_secs == 0 {
                    errors.push("http.tls_reload_secs: must be greater than 0".into());
                }
            }
            (Some(_), None) => errors.push("http.tls_key: http.tls_cert is set; HTTPS needs its key too".into()),
            (None, Some(_)) => errors.push("http.tls_cert: http.tls_key is set; HTTPS needs the certificate too".into()),
            (None, None) => {}
        }
        if self.http.keys_from_postgres && self.http.keys_refresh_secs == 0 {
            errors.push("http.keys_refresh_secs: must be at least 1 with http.keys_from_postgres".into());
        }
        if let Some(db) = &self.enrich.geoip_db {
            if let Err(e) = crate::enrich::GeoIp::open(db) {
                errors.push(e);
            }
        }
        let mut ids = std::collections::HashSet::new();
        let mut secrets = std::collections::HashSet::new();
        for (i, key) in self.keys.iter().enumerate() {
            let at = format!("keys[{i}]");
            if key.id.is_empty() || key.id.len() > 64 || !key.id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                errors.push(format!("{at}.id: `{}` must be 1-64 letters, digits, - _ .", key.id));
            }
            if !ids.insert(&key.id) {
                errors.push(format!("{at}.id: `{}` is used by another key", key.id));
            }
            if key.key.len() < 16 || key.key.len() > 256 || !key.key.chars().all(|c| c.is_ascii_graphic()) {
                errors.push(format!("{at}.key: must be 16-256 printable ASCII characters"));
            }
            if !secrets.insert(&key.key) {
                errors.push(format!("{at}.key: the same key is listed twice"));
            }
            if key.kind == KeyKind::Server && !key.origins.is_empty() {
                errors.push(format!("{at}.origins: a server key takes no origins (it is refused from pages, which send an Origin)"));
            } else if key.kind == KeyKind::Browser && key.origins.is_empty() && !key.allow_no_origin {
                errors.push(format!("{at}.origins: empty and allow_no_origin = false, so this key can never be used"));
            }
            for (j, o) in key.origins.iter().enumerate() {
                if let Err(e) = crate::http::auth::OriginPattern::parse(o) {
                    errors.push(format!("{at}.origins[{j}]: {e}"));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
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

fn describe(e: &figment::Error) -> String {
    let key = e.path.join(".");
    let source = e
        .metadata
        .as_ref()
        .and_then(|m| m.source.as_ref())
        .map(|s| format!(" (from {s})"))
        .unwrap_or_default();
    if key.is_empty() {
        format!("{}{source}", e.kind)
    } else {
        format!("{key}: {}{source}", e.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_section() -> &'static str {
        r#"
[[keys]]
id = "site"
key = "wk_0123456789abcdef"
origins = ["example.com", "*.example.org"]
"#
    }

    #[test]
    fn defaults_plus_a_key_are_valid() {
        let c = Config::from_toml(key_section()).unwrap();
        assert_eq!(c.events.len(), 6);
        assert_eq!(c.keys[0].origins.len(), 2);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml("[http]\nlisten_port = 3\n").unwrap_err().to_string();
        assert!(err.contains("http") && err.contains("listen_port"), "{err}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let err = Config::from_toml("[kafka]\npartitions = \"six\"\n").unwrap_err().to_string();
        assert!(err.contains("kafka.partitions"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let text = format!("{}\n[kafka]\ncompression = \"snappy\"\n[http]\nmax_body_bytes = 0\n", key_section());
        let err = Config::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("kafka.compression: `snappy`"), "{err}");
        assert!(err.contains("http.max_body_bytes: must be greater than 0"), "{err}");
    }

    #[test]
    fn retention_and_chunks_are_checked() {
        let with = |extra: &str| Config::from_toml(&format!("{}\n{extra}\n", key_section()));
        let err = with("[retention]\nraw_days = 7").unwrap_err().to_string();
        assert!(err.contains("retention.raw_days: 7 must be more than a day longer than load.max_past_secs (604800 s)"), "{err}");
        assert!(with("[retention]\nraw_days = 0").is_ok(), "0 keeps everything");
        let err = with("[retention]\narchive = \"ftp://host/x\"").unwrap_err().to_string();
        assert!(err.contains("retention.archive: scheme `ftp` is not supported"), "{err}");
        let c = with("[stack]\ndir = \"/srv/chronos\"").unwrap();
        assert_eq!(c.archive_target().unwrap(), ArchiveTarget::Url(url::Url::parse("file:///srv/chronos/archive/").unwrap()));
        assert_eq!(with("[retention]\narchive = \"off\"").unwrap().archive_target().unwrap(), ArchiveTarget::Off);
        assert!(matches!(with("[retention]\narchive = \"s3://bucket/chronos\"").unwrap().archive_target().unwrap(), ArchiveTarget::Url(u) if u.scheme() == "s3"));
        for bad in [0, 5, 36] {
            let err = with(&format!("[load]\nchunk_interval_hours = {bad}")).unwrap_err().to_string();
            assert!(err.contains(&format!("load.chunk_interval_hours: {bad} must divide 24")), "{err}");
        }
        for good in [1, 6, 24, 168] {
            assert!(with(&format!("[load]\nchunk_interval_hours = {good}")).is_ok());
        }
    }

    #[test]
    fn in_flight_cap_respects_idempotence() {
        let with = |kafka: &str| Config::from_toml(&format!("{}\n[kafka]\n{kafka}\n", key_section()));
        let err = with("max_in_flight = 6").unwrap_err().to_string();
        assert!(err.contains("kafka.max_in_flight: 6 is more than 5"), "{err}");
        assert!(with("max_in_flight = 0").unwrap_err().to_string().contains("kafka.max_in_flight: must be greater than 0"));
        assert_eq!(with("max_in_flight = 5").unwrap().kafka.max_in_flight, 5);
        assert_eq!(with("idempotence = false\nmax_in_flight = 100").unwrap().kafka.max_in_flight, 100);
        let err = with("[kafka.extra]\n\"max.in.flight.requests.per.connection\" = \"9\"").unwrap_err().to_string();
        assert!(err.contains("set by chronosd itself"), "{err}");
    }

    #[test]
    fn a_built_in_can_be_switched_off_and_a_custom_type_added() {
        let text = format!(
            "{}\n[events.mouse_moves]\nenabled = false\n[events.signup]\nattributes = [{{ name = \"plan\", type = \"text\", max_len = 32 }}]\n",
            key_section()
        );
        let c = Config::from_toml(&text).unwrap();
        assert!(!c.events["mouse_moves"].enabled);
        assert_eq!(c.events["mouse_moves"].attributes.len(), 2, "built-in attributes kept");
        assert!(c.events["signup"].enabled);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature
    fn env_overrides_every_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", key_section())?;
            jail.set_env("CHRONOS_KAFKA__BROKERS", "10.0.0.1:9092,10.0.0.2:9092");
            jail.set_env("CHRONOS_HTTP__MAX_BODY_BYTES", "1000");
            jail.set_env("CHRONOS_CONFIG", "ignored.toml");
            let c = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.kafka.brokers, "10.0.0.1:9092,10.0.0.2:9092");
            assert_eq!(c.http.max_body_bytes, 1000);
            Ok(())
        });
    }

    #[test]
    fn bad_origin_patterns_and_short_keys_are_refused() {
        let text = "[[keys]]\nid = \"a\"\nkey = \"short\"\norigins = [\"*.\", \"exa mple.com\"]\n";
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(err.contains("keys[0].key"), "{err}");
        assert!(err.contains("keys[0].origins[0]"), "{err}");
        assert!(err.contains("keys[0].origins[1]"), "{err}");
    }

    #[test]
    fn a_write_key_and_the_kafka_password_come_from_files_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let (key, pw) = (dir.path().join("key"), dir.path().join("pw"));
        std::fs::write(&key, "wk_from_a_file_0123456789\n").unwrap();
        std::fs::write(&pw, "scram-secret\n").unwrap();
        let text = format!(
            "[[keys]]\nid = \"backend\"\nkey_file = \"{}\"\nallow_no_origin = true\n[kafka]\nsecurity_protocol = \"sasl_plaintext\"\nsasl_mechanism = \"SCRAM-SHA-256\"\nsasl_username = \"u\"\nsasl_password_file = \"{}\"\n",
            key.display(),
            pw.display()
        );
        let c = Config::from_toml(&text).unwrap();
        assert_eq!(c.keys[0].key, "wk_from_a_file_0123456789");
        assert_eq!(c.kafka.sasl_password.as_ref().map(Secret::expose), Some("scram-secret"));
        assert!(!format!("{c:?}").contains("scram-secret"), "Debug shows the password");
        let both = text.replace("key_file", "key = \"wk_inline_0123456789abc\"\nkey_file");
        let err = Config::from_toml(&both).unwrap_err().to_string();
        assert!(err.contains("keys[0].key_file: keys[0].key is set too; give one of them"), "{err}");
        let err = Config::from_toml(&text.replace("sasl_plaintext", "ssl")).unwrap_err().to_string();
        assert!(err.contains("kafka.sasl_mechanism: set, but kafka.security_protocol = \"ssl\" uses no SASL"), "{err}");
        assert!(!err.contains("scram-secret"), "{err}");
    }
}
