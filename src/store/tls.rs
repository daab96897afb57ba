//! TLS to PostgreSQL with libpq's `sslmode` (`disable`, `prefer` — the
//! default —, `require`, `verify-ca`, `verify-full`) and `sslrootcert`, read
//! from the URL's query string as libpq reads them, so `postgres.url` is the
//! URL a managed PostgreSQL documents. Through OpenSSL with
//! `postgres-openssl`, tokio-postgres's own TLS adapter (rustls would need a
//! hand-written verifier for `require` and `verify-ca`; OpenSSL is also what
//! librdkafka uses for Kafka's TLS).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Result<SslMode> {
        Ok(match v {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => anyhow::bail!("postgres.url: sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A connection target: tokio-postgres's config without the TLS keys it does
/// not know, and those keys.
pub struct Target {
    pub config: tokio_postgres::Config,
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
}

/// Parses a libpq URL (`postgres://…?sslmode=…&sslrootcert=…`) or key=value
/// string (`host=… sslmode=…`).
pub fn parse(url: &str) -> Result<Target> {
    let (rest, mode, root_cert) = take_tls_keys(url)?;
    // The error names the option at fault, never a value (so never the password).
    let mut config: tokio_postgres::Config = rest.parse().map_err(|e| anyhow::anyhow!("postgres.url: {e}"))?;
    config.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    Ok(Target { config, mode, root_cert })
}

/// The hosts that `sslmode=prefer` reaches over a network, where it would
/// fall back to plain text without a word (and cannot detect a man in the
/// middle): every TCP host but loopback. Empty for any other mode.
pub fn prefer_over_network(url: &str) -> Vec<String> {
    let Ok(Target { config, mode: SslMode::Prefer, .. }) = parse(url) else { return Vec::new() };
    config
        .get_hosts()
        .iter()
        .filter_map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => {
                let loopback = name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
                (!loopback).then(|| name.clone())
            }
            tokio_postgres::config::Host::Unix(_) => None,
        })
        .collect()
}

/// `postgres.url` as messages, logs and the CLI show it, in either form
/// (URL or key=value): user, hosts, ports and database as PostgreSQL will be
/// reached, `***` where a password is set. Built from the parsed settings, so
/// no spelling of the password (`:pw@`, `?password=`, `password=`, quoted or
/// not) can pass through; a string that does not parse is not shown at all.
pub fn redact(url: &str) -> String {
    let Ok(Target { config, .. }) = parse(url) else { return "<postgres.url that does not parse>".into() };
    let mut shown = String::from("postgres://");
    if let Some(user) = config.get_user() {
        shown.push_str(user);
        if config.get_password().is_some() {
            shown.push_str(":***");
        }
        shown.push('@');
    }
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(name) if name.contains(':') => format!("[{name}]"),
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(dir) => dir.display().to_string(),
            };
            match ports.get(i).or(if ports.len() == 1 { ports.first() } else { None }) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    shown.push_str(&hosts.join(","));
    if let Some(db) = config.get_dbname() {
        shown.push('/');
        shown.push_str(db);
    }
    shown
}

/// The string without `sslmode` and `sslrootcert`, and their values.
fn take_tls_keys(url: &str) -> Result<(String, SslMode, Option<PathBuf>)> {
    let (mut mode, mut root) = (SslMode::Prefer, None);
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_string(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
                    match &*k {
                        "sslmode" => mode = SslMode::parse(&v)?,
                        "sslrootcert" => root = Some(PathBuf::from(&*v)),
                        _ => kept.push((k.into_owned(), v.into_owned())),
                    }
                }
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", url::form_urlencoded::Serializer::new(String::new()).extend_pairs(kept).finish())
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for token in url.split_whitespace() {
            match token.split_once('=') {
                Some(("sslmode", v)) => mode = SslMode::parse(v)?,
                Some(("sslrootcert", v)) => root = Some(PathBuf::from(v)),
                _ => kept.push(token),
            }
        }
        kept.join(" ")
    };
    Ok((rest, mode, root))
}

/// The OpenSSL connector for a mode: `verify-ca` checks the chain,
/// `verify-full` the chain and the host name; `prefer` and `require` encrypt
/// without checking, unless `sslrootcert` is given (then like `verify-ca`, as
/// libpq does). Without `sslrootcert` the system's trusted CAs are used.
pub fn connector(mode: SslMode, root_cert: Option<&Path>) -> Result<MakeTlsConnector> {
    // libpq ignores sslrootcert without TLS.
    let root_cert = root_cert.filter(|_| mode != SslMode::Disable);
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    if let Some(p) = root_cert {
        b.set_ca_file(p).with_context(|| format!("postgres.url sslrootcert={}: not a readable PEM certificate file", p.display()))?;
    }
    let verify = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) || root_cert.is_some();
    if !verify {
        b.set_verify(SslVerifyMode::NONE);
    }
    let mut c = MakeTlsConnector::new(b.build());
    let full = mode == SslMode::VerifyFull;
    c.set_callback(move |cfg, _host| {
        cfg.set_verify_hostname(full);
        Ok(())
    });
    Ok(c)
}

/// A connection error in words that say which setting to change.
pub fn explain(e: &tokio_postgres::Error, url: &str, mode: SslMode) -> anyhow::Error {
    let text = format!("{e:#}");
    let detail = std::error::Error::source(e).map(|s| s.to_string()).unwrap_or_default();
    let at = super::redact(url);
    let all = format!("{text} {detail}");
    if all.contains("pg_hba.conf") && all.contains("no encryption") {
        anyhow::anyhow!(
            "PostgreSQL at {at} refuses connections without TLS: set sslmode=require (or verify-full with sslrootcert=…) in postgres.url ({text})"
        )
    } else if all.contains("certificate verify failed") {
        let why = if all.contains("mismatch") { "its certificate does not name this host" } else { "its certificate is not signed by a trusted CA" };
        anyhow::anyhow!(
            "PostgreSQL at {at}: TLS with sslmode={} failed: {why}; set sslrootcert=<CA file> in postgres.url, or connect by a name the certificate holds ({detail})",
            mode.name()
        )
    } else if all.contains("password authentication failed") {
        anyhow::anyhow!(
            "PostgreSQL at {at}: {}; check postgres.password_file (or the password in postgres.url)",
            if detail.is_empty() { &text } else { &detail }
        )
    } else if all.contains("server does not support TLS") {
        anyhow::anyhow!("PostgreSQL at {at} does not offer TLS, but sslmode={} requires it ({text})", mode.name())
    } else {
        anyhow::anyhow!("PostgreSQL at {at} is not reachable; start it with `chronos start postgres`: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_keys_are_taken_out_of_both_forms() {
        let (rest, mode, root) =
            take_tls_keys("postgres://u:p@db.example.com:5432/chronos?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x").unwrap();
        assert_eq!(
            (rest.as_str(), mode, root.as_deref()),
            ("postgres://u:p@db.example.com:5432/chronos?application_name=x", SslMode::VerifyFull, Some(Path::new("/etc/ca.pem")))
        );
        let (rest, mode, root) = take_tls_keys("host=db user=u sslmode=verify-ca sslrootcert=/ca.pem dbname=c").unwrap();
        assert_eq!((rest.as_str(), mode, root.as_deref()), ("host=db user=u dbname=c", SslMode::VerifyCa, Some(Path::new("/ca.pem"))));
        assert_eq!(take_tls_keys("postgres://u@h/db").unwrap().1, SslMode::Prefer, "libpq's default");
        let err = take_tls_keys("postgres://u@h/db?sslmode=on").unwrap_err().to_string();
        assert!(err.contains("sslmode=on is not one of disable, prefer, require, verify-ca, verify-full"), "{err}");
        assert!(parse("postgres://u@h/db?sslmode=verify-full").is_ok());
    }

    #[test]
    fn prefer_is_flagged_only_over_a_network() {
        assert_eq!(prefer_over_network("postgres://u@db.example.net/chronos"), vec!["db.example.net"], "prefer is the default");
        assert_eq!(prefer_over_network("host=10.0.0.5 user=u sslmode=prefer"), vec!["10.0.0.5"]);
        assert!(prefer_over_network("postgres://u@127.0.0.1:5433/chronos").is_empty());
        assert!(prefer_over_network("postgres://u@localhost/chronos?sslmode=prefer").is_empty());
        assert!(prefer_over_network("postgres://u@[::1]/chronos").is_empty());
        assert!(prefer_over_network("host=/var/run/postgresql user=u").is_empty());
        assert!(prefer_over_network("postgres://u@db.example.net/chronos?sslmode=verify-full").is_empty());
    }

    #[test]
    fn every_form_of_a_password_is_redacted() {
        assert_eq!(redact("postgres://u:secret@h:5/db"), "postgres://u:***@h:5/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h:5432/db", "the port it will use");
        for url in [
            "postgres://u@h:5/db?password=hunter2-secret",
            "postgresql://u@h:5/db?sslmode=disable&password=hunter2-secret",
            "postgres://u:hunter2-secret@h:5/db?sslmode=require",
            "host=h port=5 user=u password=hunter2-secret dbname=db",
            "host=h port=5 user=u password='hunter2-secret' dbname=db sslmode=disable",
            "host=h port=5 user=u dbname=db password = hunter2-secret",
        ] {
            assert_eq!(redact(url), "postgres://u:***@h:5/db", "{url}");
        }
        assert_eq!(redact("host=a,b port=1,2 user=u dbname=d"), "postgres://u@a:1,b:2/d");
        let unparsable = "host=h password='hunter2-secret";
        assert!(!redact(unparsable).contains("hunter2"), "{}", redact(unparsable));
        let err = parse(unparsable).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
