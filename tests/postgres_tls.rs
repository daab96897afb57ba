//! TLS to PostgreSQL against a real server started with `ssl = on` and
//! `hostssl` only in pg_hba.conf, certificates made here with openssl: each
//! libpq `sslmode` does what libpq's does, a refused or untrusted connection
//! says which setting to change, and the loaders store events over TLS.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use chronos::rt::block_on;
use chronos::stack::postgres::PostgresServer;
use chronos::stack::process::free_port;
use common::*;

struct TlsPg {
    server: PostgresServer,
    dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
}

/// PostgreSQL with TLS on and plain TCP refused.
fn tls_postgres() -> TlsPg {
    let dir = temp_dir();
    let mut server = PostgresServer::start_in(&dir.path().join("pg")).expect("start PostgreSQL");
    let certs = common::certs::make(&dir.path().join("certs"));
    let data = server.spec.data_dir.clone();
    for (from, f) in [(&certs.server_crt, "server.crt"), (&certs.server_key, "server.key")] {
        std::fs::copy(from, data.join(f)).unwrap();
        let owner = std::fs::metadata(data.join("PG_VERSION")).unwrap();
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        std::os::unix::fs::chown(data.join(f), Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(data.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
    conf.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    std::fs::write(data.join("postgresql.conf"), conf).unwrap();
    std::fs::write(data.join("pg_hba.conf"), "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n").unwrap();
    server.restart().expect("restart PostgreSQL with TLS");
    TlsPg { server, ca: certs.ca, other_ca: certs.other_ca, dir }
}

/// `chronos://…` URL of the server with `host` and a query.
fn url(pg: &TlsPg, host: &str, query: &str) -> String {
    format!("postgres://chronos@{host}:{}/chronos?{query}", pg.server.spec.port)
}

/// Connects and says whether the session is encrypted, or the error.
fn try_connect(url: &str) -> Result<bool, String> {
    let url = url.to_string();
    block_on(async move {
        let client = chronos::store::connect(&url).await.map_err(|e| format!("{e:#}"))?;
        let row = client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.map_err(|e| e.to_string())?;
        Ok(row.get(0))
    })
}

#[test]
fn each_sslmode_does_what_libpq_does_and_failures_name_the_setting() {
    let pg = tls_postgres();
    let ca = pg.ca.display().to_string();
    let other = pg.other_ca.display().to_string();
    // Encrypted without checks (prefer, the default; require).
    assert_eq!(try_connect(&url(&pg, "127.0.0.1", "")), Ok(true));
    assert_eq!(try_connect(&url(&pg, "127.0.0.1", "sslmode=require")), Ok(true));
    // Checked: the chain (verify-ca), and the name too (verify-full).
    assert_eq!(try_connect(&url(&pg, "127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}"))), Ok(true));
    assert_eq!(try_connect(&url(&pg, "localhost", &format!("sslmode=verify-full&sslrootcert={ca}"))), Ok(true));
    let err = try_connect(&url(&pg, "127.0.0.1", &format!("sslmode=verify-full&sslrootcert={ca}"))).unwrap_err();
    assert!(err.contains("TLS with sslmode=verify-full failed: its certificate does not name this host"), "{err}");
    let err = try_connect(&url(&pg, "localhost", &format!("sslmode=verify-full&sslrootcert={other}"))).unwrap_err();
    assert!(err.contains("its certificate is not signed by a trusted CA; set sslrootcert=<CA file> in postgres.url"), "{err}");
    // require with a root certificate checks the chain, as libpq does.
    let err = try_connect(&url(&pg, "127.0.0.1", &format!("sslmode=require&sslrootcert={other}"))).unwrap_err();
    assert!(err.contains("not signed by a trusted CA"), "{err}");
    // The system's CAs do not know the test CA.
    let err = try_connect(&url(&pg, "localhost", "sslmode=verify-full")).unwrap_err();
    assert!(err.contains("not signed by a trusted CA"), "{err}");
    // Without TLS the server refuses, and the message says what to set.
    let err = try_connect(&url(&pg, "127.0.0.1", "sslmode=disable")).unwrap_err();
    assert!(err.contains("refuses connections without TLS: set sslmode=require"), "{err}");
    // Bad settings are named.
    let err = try_connect(&url(&pg, "127.0.0.1", "sslmode=yes")).unwrap_err();
    assert!(err.contains("postgres.url: sslmode=yes is not one of"), "{err}");
    let missing = pg.dir.path().join("missing.pem");
    let err = try_connect(&url(&pg, "127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={}", missing.display()))).unwrap_err();
    assert!(err.contains(&format!("sslrootcert={}: not a readable PEM certificate file", missing.display())), "{err}");
}

#[test]
fn the_loaders_store_events_over_verified_tls() {
    let pg = tls_postgres();
    let kafka = Kafka::start(1);
    let url = url(&pg, "localhost", &format!("sslmode=verify-full&sslrootcert={}", pg.ca.display()));
    let d = Chronosd::start(&config_toml_with_pg(&kafka, free_port(), &url, "", ""));
    d.wait_ready(Duration::from_secs(30));
    let c = client();
    for i in 0..5 {
        let (s, body, _) = post(&c, &d, &batch(&format!("tls-{i}"), 12), "198.51.100.30");
        assert_eq!(s, 200, "{body}");
    }
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let total = "SELECT (SELECT count(*) FROM events.pageviews) + (SELECT count(*) FROM events.clicks) + (SELECT count(*) FROM events.link_clicks)
                 + (SELECT count(*) FROM events.mouse_moves) + (SELECT count(*) FROM events.key_presses) + (SELECT count(*) FROM events.form_submissions)";
    while count(&url, total) < 60 {
        assert!(std::time::Instant::now() < until, "not loaded over TLS\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count(&url, total), 60, "exactly once");
    // Every session of chronosd is encrypted.
    let plain =
        count(&url, "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.backend_type = 'client backend' AND NOT s.ssl");
    assert_eq!(plain, 0);
    // The CLI goes over the same URL.
    let dir = temp_dir();
    let file = dir.path().join("chronos.toml");
    std::fs::write(&file, config_toml_with_pg(&kafka, free_port(), &url, "", "")).unwrap();
    let out = chronos_cli(&file, &["install-pipeline"]);
    assert!(out.status.success(), "{}", output_text(&out));
}

const SECRET: &str = "pw-7Hq2-not-in-any-log";

#[test]
fn a_password_from_a_file_is_used_and_never_shown() {
    let dir = temp_dir();
    let mut pg = PostgresServer::start_in(&dir.path().join("pg")).expect("start PostgreSQL");
    query(&pg.url(), &format!("ALTER ROLE chronos PASSWORD '{SECRET}'"));
    std::fs::write(pg.spec.data_dir.join("pg_hba.conf"), "host all all 127.0.0.1/32 scram-sha-256\n").unwrap();
    pg.restart().expect("restart with password authentication");
    let with_password = pg.url().replace("chronos@", &format!("chronos:{SECRET}@"));

    let kafka = Kafka::start(1);
    let secret_file = dir.path().join("pg-password");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let port = free_port();
    let toml = config_toml_with_pg(&kafka, port, &pg.url(), "", "")
        .replace("[postgres]\n", &format!("[postgres]\npassword_file = \"{}\"\n", secret_file.display()));
    let config = dir.path().join("chronos.toml");
    std::fs::write(&config, &toml).unwrap();

    // Used: the CLI and chronosd connect with it.
    let out = chronos_cli(&config, &["install-pipeline"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(!output_text(&out).contains(SECRET));
    let d = Chronosd::start(&toml);
    d.wait_ready(Duration::from_secs(30));
    let c = client();
    let (s, body, _) = post(&c, &d, &batch("pw", 6), "198.51.100.31");
    assert_eq!(s, 200, "{body}");
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while count(&with_password, "SELECT count(*) FROM events.clicks") < 1 {
        assert!(std::time::Instant::now() < until, "not loaded\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Never shown: --check-config, status, /metrics, the log, an error body.
    let check = Command::new(env!("CARGO_BIN_EXE_chronosd")).arg("--check-config").arg(&config).output().unwrap();
    assert!(check.status.success() && !output_text(&check).contains(SECRET), "{}", output_text(&check));
    let status = output_text(&chronos_cli(&config, &["status"]));
    assert!(!status.contains(SECRET), "{status}");
    let metrics = c.get(d.admin_url("/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains("chronos_") && !metrics.contains(SECRET));
    let (_, bad, _) = post_raw(&c, &d, b"{".to_vec(), &[("Content-Type", "text/plain"), ("Origin", ORIGIN)]);
    assert!(!bad.to_string().contains(SECRET));
    assert!(!d.log_text().contains(SECRET), "the log holds the password");

    // A wrong password, a missing file, and two passwords are named.
    std::fs::write(&secret_file, "wrong\n").unwrap();
    let out = chronos_cli(&config, &["install-pipeline"]);
    let text = output_text(&out);
    assert!(!out.status.success() && text.contains("password authentication failed") && text.contains("check postgres.password_file"), "{text}");
    std::fs::remove_file(&secret_file).unwrap();
    let text = output_text(&chronos_cli(&config, &["install-pipeline"]));
    assert!(text.contains(&format!("postgres.password_file: cannot read {}", secret_file.display())), "{text}");
    std::fs::write(&secret_file, SECRET).unwrap();
    std::fs::write(&config, toml.replace(&format!("url = \"{}\"", pg.url()), &format!("url = \"{with_password}\""))).unwrap();
    let text = output_text(&chronos_cli(&config, &["install-pipeline"]));
    assert!(text.contains("postgres.url has a password too; give one of them") && !text.contains(SECRET), "{text}");
}
