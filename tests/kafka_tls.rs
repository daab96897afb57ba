//! TLS and SASL to Kafka against a real Apache Kafka node with an SSL
//! listener and a SASL_SSL listener (SCRAM users added by Kafka's own
//! `kafka-storage format --add-scram`), certificates made here with openssl:
//! chronosd produces and its loaders consume over each, exactly once; a
//! refused handshake or login stops chronosd at start naming the setting; the
//! password is never shown.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chronos::stack::broker::KafkaNode;
use chronos::stack::postgres::PostgresServer;
use chronos::stack::process::free_port;
use common::*;

const USER: &str = "chronos-loader";
const PASSWORD: &str = "scram-pw-Q83v-not-in-any-log";

struct TlsKafka {
    kafka: Kafka,
    certs: certs::Certs,
    /// `localhost:<port>` of the SSL and SASL_SSL listeners (the certificate names `localhost`).
    ssl: String,
    sasl_ssl: String,
    ssl_port: u16,
    /// The SASL password in a file, as systemd's `LoadCredential=` would give it.
    password_file: std::path::PathBuf,
    dir: tempfile::TempDir,
}

/// A Kafka node with PLAINTEXT (the harness's own), SSL and SASL_SSL (SCRAM-SHA-256/512) listeners.
fn tls_kafka(partitions: i32) -> TlsKafka {
    let dir = temp_dir();
    let certs = certs::make(&dir.path().join("certs"));
    // Kafka's PEM key store: the PKCS#8 key, then the certificate.
    let store = dir.path().join("certs/server.pem");
    let key = std::fs::read_to_string(&certs.server_key).unwrap();
    let crt = std::fs::read_to_string(&certs.server_crt).unwrap();
    std::fs::write(&store, format!("{key}{crt}")).unwrap();
    let (ssl_port, sasl_port) = (free_port(), free_port());
    let kafka = Kafka::start_own_with(partitions, |node: &mut KafkaNode| {
        let (plain, controller) = (node.port, node.controller_port);
        let scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;";
        let properties = [
            (
                "listeners",
                format!(
                    "PLAINTEXT://127.0.0.1:{plain},SSL://127.0.0.1:{ssl_port},SASL_SSL://127.0.0.1:{sasl_port},CONTROLLER://127.0.0.1:{controller}"
                ),
            ),
            ("advertised.listeners", format!("PLAINTEXT://127.0.0.1:{plain},SSL://localhost:{ssl_port},SASL_SSL://localhost:{sasl_port}")),
            ("listener.security.protocol.map", "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL".into()),
            ("ssl.keystore.type", "PEM".into()),
            ("ssl.keystore.location", store.display().to_string()),
            ("sasl.enabled.mechanisms", "SCRAM-SHA-256,SCRAM-SHA-512".into()),
            ("listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config", scram.into()),
            ("listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config", scram.into()),
        ];
        node.overrides.extend(properties.into_iter().map(|(k, v)| (k.to_string(), v)));
        for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
            node.format_args.push("--add-scram".into());
            node.format_args.push(format!("{mechanism}=[name={USER},password={PASSWORD}]"));
        }
    });
    let password_file = dir.path().join("kafka-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    TlsKafka { kafka, certs, ssl: format!("localhost:{ssl_port}"), sasl_ssl: format!("localhost:{sasl_port}"), ssl_port, password_file, dir }
}

impl TlsKafka {
    /// `[kafka]` lines for TLS only.
    fn ssl_keys(&self, ca: &Path) -> String {
        format!("security_protocol = \"ssl\"\nssl_ca = \"{}\"\n", ca.display())
    }

    /// `[kafka]` lines for SASL/SCRAM over TLS, the password from its file.
    fn sasl_keys(&self, mechanism: &str) -> String {
        format!(
            "security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"{mechanism}\"\nsasl_username = \"{USER}\"\nsasl_password_file = \"{}\"\nssl_ca = \"{}\"\n",
            self.password_file.display(),
            self.certs.ca.display()
        )
    }

    /// A test config whose clients reach `brokers` with `[kafka]` lines `keys`.
    fn config(&self, base: String, brokers: &str, keys: &str) -> String {
        let base = base.replace(&format!("brokers = \"{}\"", self.kafka.bootstrap), &format!("brokers = \"{brokers}\"\n{keys}"));
        assert!(base.contains(keys), "the test config has no [kafka] brokers line to replace");
        base
    }
}

const TOTAL: &str =
    "SELECT (SELECT count(*) FROM events.pageviews) + (SELECT count(*) FROM events.clicks) + (SELECT count(*) FROM events.link_clicks)
     + (SELECT count(*) FROM events.mouse_moves) + (SELECT count(*) FROM events.key_presses) + (SELECT count(*) FROM events.form_submissions)";

/// Sends `batches` batches of 12 events and waits until PostgreSQL holds `expect` events in all.
fn send_and_wait(d: &Chronosd, pg_url: &str, tag: &str, batches: usize, expect: i64) {
    let c = client();
    for i in 0..batches {
        let (s, body, _) = post(&c, d, &batch(&format!("{tag}-{i}"), 12), "198.51.100.40");
        assert_eq!(s, 200, "{tag}: {body}\n{}", d.log_text());
    }
    let until = Instant::now() + Duration::from_secs(60);
    while count(pg_url, TOTAL) < expect {
        assert!(Instant::now() < until, "{tag}: {} of {expect} loaded\n{}", count(pg_url, TOTAL), d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn chronosd_produces_and_its_loaders_consume_over_ssl_and_over_sasl_ssl_scram_exactly_once() {
    let tls = tls_kafka(2);
    let pg = PostgresServer::start_in(&tls.dir.path().join("pg")).expect("start PostgreSQL");
    let base = || config_toml_with_pg(&tls.kafka, free_port(), &pg.url(), "", "");

    // TLS only: the producer and the loaders' consumer both go over the SSL listener.
    let mut d = Chronosd::start(&tls.config(base(), &tls.ssl, &tls.ssl_keys(&tls.certs.ca)));
    d.wait_ready(Duration::from_secs(30));
    send_and_wait(&d, &pg.url(), "ssl", 5, 60);
    assert!(d.log_text().contains("Kafka accepted the connection."), "{}", d.log_text());
    assert!(d.terminate().success());

    // SASL_SSL with SCRAM-SHA-512, the password from a file: the same group goes on where the first stopped.
    let toml = tls.config(base(), &tls.sasl_ssl, &tls.sasl_keys("SCRAM-SHA-512"));
    let mut d = Chronosd::start(&toml);
    d.wait_ready(Duration::from_secs(30));
    send_and_wait(&d, &pg.url(), "scram512", 5, 120);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&pg.url(), TOTAL), 120, "exactly once across the two chronosd");
    // The CLI reaches Kafka with the same settings (status reads the group's lag).
    let config = tls.dir.path().join("chronos.toml");
    std::fs::write(&config, &toml).unwrap();
    let status = chronos_cli(&config, &["status"]);
    let status_text = output_text(&status);
    let lag = format!("{} 0 records not yet loaded", tls.kafka.topic);
    assert!(status_text.contains(&lag), "{status_text}");
    // The password is never shown: --check-config, status, /metrics, the log.
    let check = Command::new(env!("CARGO_BIN_EXE_chronosd")).arg("--check-config").arg(&config).output().unwrap();
    assert!(check.status.success(), "{}", output_text(&check));
    for (what, text) in [("check-config", output_text(&check)), ("status", status_text), ("log", d.log_text())] {
        assert!(!text.contains(PASSWORD), "{what} shows the SASL password:\n{text}");
    }
    let metrics = client().get(d.admin_url("/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains("chronos_") && !metrics.contains(PASSWORD));
    assert!(d.terminate().success());

    // SCRAM-SHA-256, the password from the environment instead.
    let toml = tls
        .config(base(), &tls.sasl_ssl, &tls.sasl_keys("SCRAM-SHA-256"))
        .replace(&format!("sasl_password_file = \"{}\"\n", tls.password_file.display()), "");
    let dir = temp_dir();
    let file = dir.path().join("chronos.toml");
    std::fs::write(&file, &toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chronos"))
        .args(["--config"])
        .arg(&file)
        .arg("status")
        .env("CHRONOS_KAFKA__SASL_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(output_text(&out).contains(&lag) && !output_text(&out).contains(PASSWORD), "{}", output_text(&out));
    let out = Command::new(env!("CARGO_BIN_EXE_chronos")).args(["--config"]).arg(&file).arg("status").output().unwrap();
    assert!(output_text(&out).contains("kafka.sasl_password_file: kafka.security_protocol = \"sasl_ssl\" needs a password"), "{}", output_text(&out));
}

/// Starts chronosd with `toml`, expects it to exit 1 within 30 s, and returns what it printed.
fn refused_at_start(toml: &str) -> String {
    let dir = temp_dir();
    let file = dir.path().join("chronos.toml");
    std::fs::write(&file, toml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chronosd"))
        .arg("--config")
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("chronosd did not refuse to start:\n{}", output_text(&out));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    let text = output_text(&out);
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(!text.contains(PASSWORD), "the password is shown:\n{text}");
    text
}

#[test]
fn a_refused_handshake_or_login_stops_the_start_and_names_the_setting() {
    let tls = tls_kafka(1);
    let base = || config_toml(&tls.kafka, free_port(), "");

    // A wrong password.
    let wrong = tls.dir.path().join("wrong-password");
    std::fs::write(&wrong, "not-the-password").unwrap();
    let keys = tls.sasl_keys("SCRAM-SHA-256").replace(&tls.password_file.display().to_string(), &wrong.display().to_string());
    let text = refused_at_start(&tls.config(base(), &tls.sasl_ssl, &keys));
    assert!(
        text.contains(&format!("the brokers refused the SASL login of kafka.sasl_username = \"{USER}\" with kafka.sasl_mechanism = \"SCRAM-SHA-256\": check kafka.sasl_password_file")),
        "{text}"
    );
    // A certificate the configured CA did not sign.
    let text = refused_at_start(&tls.config(base(), &tls.ssl, &tls.ssl_keys(&tls.certs.other_ca)));
    assert!(text.contains("not signed by a trusted CA: set kafka.ssl_ca"), "{text}");
    // The system's CAs do not know the test CA either.
    let text = refused_at_start(&tls.config(base(), &tls.ssl, "security_protocol = \"ssl\"\n"));
    assert!(text.contains("set kafka.ssl_ca"), "{text}");
    // A certificate for another name than the one in kafka.brokers.
    let text = refused_at_start(&tls.config(base(), &format!("127.0.0.1:{}", tls.ssl_port), &tls.ssl_keys(&tls.certs.ca)));
    assert!(text.contains("does not name the host it was reached at"), "{text}");
    // TLS against the plaintext listener, and plaintext against a TLS listener.
    let plain = tls.kafka.bootstrap.clone();
    let text = refused_at_start(&tls.config(base(), &plain, &tls.ssl_keys(&tls.certs.ca)));
    assert!(text.contains("kafka.security_protocol = \"ssl\" is not what the brokers' listener"), "{text}");
    let text = refused_at_start(&tls.config(base(), &tls.sasl_ssl, &tls.ssl_keys(&tls.certs.ca)));
    assert!(text.contains("kafka.security_protocol"), "{text}");

    // Settings that cannot work are refused before any connection (exit 2).
    let check = |keys: &str| {
        let dir = temp_dir();
        let file = dir.path().join("chronos.toml");
        std::fs::write(&file, tls.config(base(), &tls.sasl_ssl, keys)).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_chronosd")).arg("--check-config").arg(&file).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
        output_text(&out)
    };
    let text = check("security_protocol = \"sasl_ssl\"\nsasl_username = \"u\"\nsasl_password = \"p\"\n");
    assert!(text.contains("kafka.sasl_mechanism: kafka.security_protocol = \"sasl_ssl\" needs one"), "{text}");
    let text = check("security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"GSSAPI\"\n");
    assert!(text.contains("kafka.sasl_mechanism") && text.contains("GSSAPI"), "{text}");
    let missing = tls.dir.path().join("missing-ca.pem");
    let text = check(&format!("security_protocol = \"ssl\"\nssl_ca = \"{}\"\n", missing.display()));
    assert!(text.contains(&format!("kafka.ssl_ca: cannot read {}", missing.display())), "{text}");
    let text = check(&format!("ssl_ca = \"{}\"\n", tls.certs.ca.display()));
    assert!(text.contains("kafka.ssl_ca: set, but kafka.security_protocol = \"plaintext\" uses no TLS"), "{text}");
    let dir = temp_dir();
    let file = dir.path().join("chronos.toml");
    let toml =
        tls.config(base(), &tls.ssl, &tls.ssl_keys(&tls.certs.ca)).replace("extra = { ", &format!("extra = {{ \"sasl.password\" = \"{PASSWORD}\", "));
    std::fs::write(&file, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chronosd")).arg("--check-config").arg(&file).output().unwrap();
    let text = output_text(&out);
    assert!(text.contains("kafka.extra.\"sasl.password\": set by chronosd itself; use the typed kafka.* key") && !text.contains(PASSWORD), "{text}");
}
