//! `[http]` and `[limits]`: the receipt's listener, paths, TLS and caps.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::positive;

/// HTTP receipt settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address chronosd listens on.
    pub listen: SocketAddr,
    /// Address of the operational endpoints (`/metrics`, the detailed
    /// `/readyz`): loopback by default, so that only this host (a local
    /// Prometheus agent, `chronos status`) reads them. The public listener
    /// answers `/healthz` and a bare `/readyz` (`{"ready": bool}`) for load
    /// balancers; nothing else operational.
    pub admin_listen: SocketAddr,
    /// actix-web worker threads; 0 = one per core.
    pub workers: usize,
    /// Threads that parse and validate batches; 0 = one per core.
    pub receipt_threads: usize,
    /// Largest request body accepted, in bytes, as sent (compressed or not).
    pub max_body_bytes: usize,
    /// Seconds a client gets to send a whole request body; a slower one gets
    /// 408 and its connection is closed (slow-body clients hold no worker).
    pub body_timeout_secs: u64,
    /// Open client connections in all (each of the `workers` takes an equal
    /// share); past it, new connections wait in the kernel's backlog.
    pub max_connections: usize,
    /// Request bodies being read at once, in all; past it a request gets 503
    /// with `Retry-After`. With `max_body_bytes` it bounds body memory.
    pub max_bodies_in_flight: usize,
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
            admin_listen: "127.0.0.1:9464".parse().unwrap(),
            workers: 0,
            receipt_threads: 0,
            max_body_bytes: 256 * 1024,
            body_timeout_secs: 10,
            max_connections: 10_000,
            max_bodies_in_flight: 256,
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

/// Whether two listen addresses can clash (a wildcard clashes with any host).
fn same_host(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
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
    /// IPv6 clients share one per-IP bucket per network of this prefix
    /// length (a host usually holds a whole /64); IPv4 clients are one each.
    pub ipv6_prefix: u8,
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
            ipv6_prefix: 64,
        }
    }
}

impl HttpConfig {
    /// What is wrong with `[http]`, each naming its key.
    pub(super) fn errors(&self, errors: &mut Vec<String>) {
        positive(
            errors,
            [
                ("http.max_body_bytes", self.max_body_bytes as u64),
                ("http.max_decompressed_bytes", self.max_decompressed_bytes as u64),
                ("http.max_events_per_batch", self.max_events_per_batch as u64),
                ("http.produce_deadline_ms", self.produce_deadline_ms),
                ("http.mailbox_capacity", self.mailbox_capacity as u64),
                ("http.body_timeout_secs", self.body_timeout_secs),
                ("http.max_connections", self.max_connections as u64),
                ("http.max_bodies_in_flight", self.max_bodies_in_flight as u64),
            ],
        );
        if self.admin_listen.port() != 0 && self.admin_listen.port() == self.listen.port() && same_host(self.admin_listen, self.listen) {
            errors.push(format!(
                "http.admin_listen: {} is also http.listen; the operational endpoints need an address of their own",
                self.admin_listen
            ));
        }
        if self.max_decompressed_bytes < self.max_body_bytes {
            errors.push("http.max_decompressed_bytes: must be at least http.max_body_bytes".into());
        }
        errors.extend(self.path_errors());
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                if let Err(e) = crate::tls::load_context(cert, key) {
                    errors.push(e);
                }
                if self.tls_reload_secs == 0 {
                    errors.push("http.tls_reload_secs: must be greater than 0".into());
                }
            }
            (Some(_), None) => errors.push("http.tls_key: http.tls_cert is set; HTTPS needs its key too".into()),
            (None, Some(_)) => errors.push("http.tls_cert: http.tls_key is set; HTTPS needs the certificate too".into()),
            (None, None) => {}
        }
        if self.keys_from_postgres && self.keys_refresh_secs == 0 {
            errors.push("http.keys_refresh_secs: must be at least 1 with http.keys_from_postgres".into());
        }
    }
}

impl LimitsConfig {
    /// What is wrong with `[limits]`, each naming its key.
    pub(super) fn errors(&self, errors: &mut Vec<String>) {
        positive(
            errors,
            [
                ("limits.per_key_per_sec", self.per_key_per_sec as u64),
                ("limits.per_ip_per_sec", self.per_ip_per_sec as u64),
                ("limits.max_string_bytes", self.max_string_bytes as u64),
                ("limits.max_session_bytes", self.max_session_bytes as u64),
                ("limits.max_page_keys", self.max_page_keys as u64),
            ],
        );
        if self.per_key_burst < self.per_key_per_sec.min(1) {
            errors.push("limits.per_key_burst: must be at least 1".into());
        }
        if self.per_ip_burst == 0 {
            errors.push("limits.per_ip_burst: must be at least 1".into());
        }
        if !(1..=128).contains(&self.ipv6_prefix) {
            errors.push(format!("limits.ipv6_prefix: {} must be 1 to 128 (bits of an IPv6 address that make one client)", self.ipv6_prefix));
        }
    }
}
