//! chronosd's optional HTTPS listener (`http.tls_cert`, `http.tls_key`),
//! certificates made here with openssl: curl posts a batch and reads
//! /readyz over verified TLS (/metrics is on the plain admin listener); a renewed certificate is served without a
//! restart, a broken one is refused and the previous one stays; headless
//! Chromium runs the tracker against it and the events land in PostgreSQL.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chronos::stack::postgres::PostgresServer;
use chronos::stack::process::free_port;
use common::*;

/// `curl` against `localhost:<port>` (resolved to loopback) trusting `ca`;
/// returns (HTTP status or 0 when TLS failed, body, curl's stderr).
fn curl(port: u16, ca: &Path, path: &str, post: Option<&str>) -> (u16, String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}{path}"));
    if let Some(body) = post {
        cmd.args(["-H", "Content-Type: application/json", "-H", &format!("Origin: {ORIGIN}"), "--data-binary", body]);
    }
    let out = cmd.output().expect("curl (apt install curl)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The `[http]` lines that turn HTTPS on.
fn https_keys(certs: &certs::Certs) -> String {
    format!("[http]\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_reload_secs = 1\n", certs.server_crt.display(), certs.server_key.display())
}

#[test]
fn batches_over_verified_https_and_a_renewed_certificate_counts_without_a_restart() {
    let dir = temp_dir();
    let served = certs::make(&dir.path().join("served"));
    let renewed = certs::make(&dir.path().join("renewed"));
    let kafka = Kafka::start(1);
    let port = free_port();
    let toml = config_toml(&kafka, port, "").replacen("[http]\n", &https_keys(&served), 1);
    let d = Chronosd::start(&toml);
    d.wait_until("ready over HTTPS", Duration::from_secs(30), || curl(port, &served.ca, "/readyz", None).0 == 200);
    assert!(d.log_text().contains(&format!("Receiving batches at https://127.0.0.1:{port}/v1/batch.")), "{}", d.log_text());

    // A batch over TLS checked against the CA (and the name localhost).
    let body = batch("https-1", 6).to_string();
    let (code, answer, err) = curl(port, &served.ca, "/v1/batch", Some(&body));
    assert_eq!(code, 200, "{answer} {err}");
    assert!(answer.contains("\"accepted\":6"), "{answer}");
    // Plain HTTP on the HTTPS port gets no answer a client could take for one.
    let plain =
        Command::new("curl").args(["-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}"]).arg(d.url("/readyz")).output().unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200");
    // Another CA does not vouch for it.
    let (code, _, err) = curl(port, &renewed.ca, "/readyz", None);
    assert_eq!(code, 0, "{err}");

    // Renewed files (as certbot replaces them): served for new connections, no restart.
    std::fs::copy(&renewed.server_crt, &served.server_crt).unwrap();
    std::fs::copy(&renewed.server_key, &served.server_key).unwrap();
    d.wait_until("the renewed certificate served", Duration::from_secs(15), || curl(port, &renewed.ca, "/readyz", None).0 == 200);
    let (code, _, _) = curl(port, &served.ca, "/readyz", None);
    assert_eq!(code, 0, "the old certificate is still served");
    // The admin listener (plain HTTP on loopback) counts the reloads.
    assert_eq!(d.metric("chronos_http_tls_reloads_total{result=\"ok\"}"), Some(1.0));
    // A broken file is refused; the renewed certificate stays in use.
    std::fs::write(&served.server_crt, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    d.wait_until("the broken file refused", Duration::from_secs(15), || d.metric("chronos_http_tls_reloads_total{result=\"failed\"}") == Some(1.0));
    let (code, answer, err) = curl(port, &renewed.ca, "/v1/batch", Some(&batch("https-2", 3).to_string()));
    assert_eq!(code, 200, "{answer} {err}");
    assert!(d.log_text().contains("still serving the previous certificate"), "{}", d.log_text());

    // Settings that cannot work are named at start (exit 2).
    let file = dir.path().join("bad.toml");
    let other_key = dir.path().join("renewed/other.key");
    let foreign_key = https_keys(&renewed).replace(&renewed.server_key.display().to_string(), &other_key.display().to_string());
    for (keys, says) in [
        (foreign_key, "is not the key of the certificate"),
        (format!("[http]\ntls_cert = \"{}\"\n", renewed.server_crt.display()), "http.tls_key: http.tls_cert is set; HTTPS needs its key too"),
    ] {
        std::fs::write(&file, config_toml(&kafka, free_port(), "").replacen("[http]\n", &keys, 1)).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_chronosd")).arg("--check-config").arg(&file).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
        assert!(output_text(&out).contains(says), "{}", output_text(&out));
    }
}

/// Base64 SHA-256 of the certificate's public key (what Chromium's SPKI list takes).
fn spki_sha256(cert: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -pubkey -noout -in '{}' | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
            cert.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn the_tracker_in_chromium_sends_over_https_and_the_events_land() {
    let dir = temp_dir();
    let certs = certs::make(&dir.path().join("certs"));
    let pg = PostgresServer::start_in(&dir.path().join("pg")).expect("start PostgreSQL");
    let kafka = Kafka::start(1);
    let (port, site_port) = (free_port(), free_port());
    let extra = format!(
        "[[keys]]\nid = \"browser\"\nkey = \"wk_https_browser_0123456789\"\norigins = [\"http://127.0.0.1:{site_port}\"]\n\n[tracker]\nendpoint = \"https://localhost:{port}\"\nkey_id = \"browser\"\nflush_interval_ms = 500\n"
    );
    let toml = config_toml_with_pg(&kafka, port, &pg.url(), "", &extra).replacen("[http]\n", &https_keys(&certs), 1);
    let d = Chronosd::start(&toml);
    d.wait_until("ready over HTTPS", Duration::from_secs(30), || curl(port, &certs.ca, "/readyz", None).0 == 200);

    let config = chronos::config::Config::from_toml(&toml).unwrap();
    let bundle = dir.path().join("chronos.js");
    std::fs::write(&bundle, chronos::tracker::build(&config).unwrap()).unwrap();
    let options = chronos::tracker::init_options(&config).unwrap();
    let result = run_pageview(&d, &bundle, &options, site_port, &[("SPKI", &spki_sha256(&certs.server_crt))]);
    assert!(result["statuses"].as_array().unwrap().iter().all(|s| s == 200), "{result}");
    let session = result["session"].as_str().expect("a session id").to_string();
    let pageviews = format!("SELECT count(*) FROM events.pageviews WHERE session_id = '{session}'");
    d.wait_until("the pageview loaded", Duration::from_secs(60), || count(&pg.url(), &pageviews) >= 1);
}
