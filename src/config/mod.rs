//! The one typed configuration: a TOML file, every key overridable by a
//! `CHRONOS_…` environment variable (`CHRONOS_KAFKA__BROKERS`, sections joined
//! by `__`), validated once at boot with errors that name the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::catalog::{self, EventTypeConfig};
use crate::secret::Secret;

mod enrich;
mod http;
mod kafka;
mod keys;
mod stack;
mod storage;
mod tracker;

pub use enrich::*;
pub use http::*;
pub use kafka::*;
pub use keys::{id_problem, origins_problems, secret_problem, KeyKind, OriginsProblem, WriteKeyConfig};
pub use stack::*;
pub use storage::*;
pub use tracker::{server_key as tracker_server_key_problem, TrackerConfig};

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
    pub tracker: TrackerConfig,
    /// The file this config was loaded from (chronosd watches it), if any.
    #[serde(skip)]
    pub source: Option<PathBuf>,
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
            tracker: TrackerConfig::default(),
            source: None,
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
        let mut config: Config =
            fig.merge(env).extract().map_err(|e| ConfigError::Load(e.into_iter().map(|e| describe(&e)).collect::<Vec<_>>().join("\n")))?;
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
        errors.extend(tracker::errors(self));
        self.http.errors(&mut errors);
        self.limits.errors(&mut errors);
        keys::errors(&self.keys, &mut errors);
        self.kafka.errors(&mut errors);
        self.load.errors(&mut errors);
        self.retention.errors(&self.load, &mut errors);
        if let Err(e) = self.archive_target() {
            errors.push(e);
        }
        self.import.errors(&mut errors);
        self.enrich.errors(&mut errors);
        self.stack.errors(&mut errors);
        // Across sections.
        if (self.kafka.message_timeout_ms as u64) > self.http.produce_deadline_ms {
            errors.push(format!(
                "kafka.message_timeout_ms: {} exceeds http.produce_deadline_ms ({}); a request would give up before the producer does",
                self.kafka.message_timeout_ms, self.http.produce_deadline_ms
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }
}

/// A `threads` setting resolved: `configured` threads, or one per core when 0.
pub fn threads(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
    }
}

/// `{key}: must be greater than 0` for each value that is 0.
fn positive<const N: usize>(errors: &mut Vec<String>, values: [(&str, u64); N]) {
    for (key, v) in values {
        if v == 0 {
            errors.push(format!("{key}: must be greater than 0"));
        }
    }
}

fn describe(e: &figment::Error) -> String {
    let key = e.path.join(".");
    let source = e.metadata.as_ref().and_then(|m| m.source.as_ref()).map(|s| format!(" (from {s})")).unwrap_or_default();
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
        assert!(
            matches!(with("[retention]\narchive = \"s3://bucket/chronos\"").unwrap().archive_target().unwrap(), ArchiveTarget::Url(u) if u.scheme() == "s3")
        );
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
    fn connection_limits_are_checked_naming_their_key() {
        let c = Config::from_toml(key_section()).unwrap();
        assert_eq!((c.http.body_timeout_secs, c.http.max_bodies_in_flight, c.limits.ipv6_prefix), (10, 256, 64));
        assert!(c.http.admin_listen.ip().is_loopback(), "the operational endpoints are local by default");
        let with = |extra: &str| Config::from_toml(&format!("{}{extra}", key_section())).unwrap_err().to_string();
        assert_eq!(c.import.body_timeout_secs, 600, "an import body gets its own, longer deadline");
        let err = with("[http]\nbody_timeout_secs = 0\nmax_connections = 0\nmax_bodies_in_flight = 0\n[limits]\nipv6_prefix = 129\n[import]\nbody_timeout_secs = 0\n");
        for says in [
            "import.body_timeout_secs: must be greater than 0",
            "http.body_timeout_secs: must be greater than 0",
            "http.max_connections: must be greater than 0",
            "http.max_bodies_in_flight: must be greater than 0",
            "limits.ipv6_prefix: 129 must be 1 to 128",
        ] {
            assert!(err.contains(says), "{says} in {err}");
        }
        let err = with("[http]\nlisten = \"0.0.0.0:9000\"\nadmin_listen = \"127.0.0.1:9000\"\n");
        assert!(err.contains("http.admin_listen: 127.0.0.1:9000 is also http.listen"), "{err}");
    }

    #[test]
    fn the_tracker_refuses_a_server_key() {
        let server = "[[keys]]\nid = \"backend\"\nkey = \"wk_backend_0123456789abcdef\"\nkind = \"server\"\nallow_no_origin = true\n";
        let err = Config::from_toml(&format!("{}{server}[tracker]\nkey_id = \"backend\"\n", key_section())).unwrap_err().to_string();
        assert!(err.contains("tracker.key_id: `backend` is a server key"), "{err}");
        assert!(Config::from_toml(&format!("{}{server}[tracker]\nkey_id = \"site\"\n", key_section())).is_ok());
    }

    #[test]
    fn debug_shows_no_key_and_no_database_password() {
        let text = format!(
            "{}[[keys]]\nid = \"backend\"\nkey = \"wk_server_secret_0123456789\"\nkind = \"server\"\nallow_no_origin = true\n[postgres]\nurl = \"host=db user=u password=pg-secret-pw dbname=c\"\n",
            key_section()
        );
        let shown = format!("{:?}", Config::from_toml(&text).unwrap());
        for secret in ["wk_server_secret_0123456789", "wk_0123456789abcdef", "pg-secret-pw"] {
            assert!(!shown.contains(secret), "Debug shows {secret}: {shown}");
        }
        assert!(shown.contains("backend"), "{shown}");
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
