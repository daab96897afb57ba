//! `chronos start|status|log|stop` brings up the real local stack (PostgreSQL
//! from the machine, the broker, chronosd) in one directory, and takes it down.

mod common;

use std::process::Output;
use std::time::Duration;

use chronos::stack::process::free_port;
use common::*;

struct StackGuard {
    config: std::path::PathBuf,
}

impl StackGuard {
    fn chronos(&self, args: &[&str]) -> Output {
        chronos_cli(&self.config, args)
    }
}

impl Drop for StackGuard {
    fn drop(&mut self) {
        let _ = self.chronos(&["stop"]);
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn chronos_start_status_log_stop() {
    let dir = temp_dir();
    let (http, pg, broker) = (free_port(), free_port(), free_port());
    let config = dir.path().join("chronos.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[http]
listen = "127.0.0.1:{http}"
[[keys]]
id = "local"
key = "{KEY}"
origins = ["shop.example.com"]
[kafka]
brokers = "127.0.0.1:{broker}"
partitions = 2
[postgres]
url = "postgres://chronos@127.0.0.1:{pg}/chronos"
[stack]
dir = "{}"
postgres_port = {pg}
broker_port = {broker}
"#,
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let stack = StackGuard { config };

    let out = stack.chronos(&["start"]);
    assert!(out.status.success(), "{}", text(&out));
    let started = text(&out);
    assert!(started.contains(&format!("http://127.0.0.1:{http}/v1/batch")), "{started}");

    let out = stack.chronos(&["status"]);
    let status = text(&out);
    assert!(out.status.success(), "{status}");
    for svc in ["postgres", "broker", "chronosd"] {
        assert!(status.lines().any(|l| l.starts_with(svc) && l.contains(" up ")), "{svc} not up:\n{status}");
    }

    // The stack ingests: a batch is acknowledged (so it is in the broker's topic).
    let d = std::net::SocketAddr::from(([127, 0, 0, 1], http));
    let c = client();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let res = c
            .post(format!("http://{d}/v1/batch"))
            .header("Origin", ORIGIN)
            .header("Content-Type", "text/plain")
            .body(batch("stack", 3).to_string())
            .send()
            .unwrap();
        if res.status().as_u16() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < until, "stack never accepted a batch: {}", res.text().unwrap());
        std::thread::sleep(Duration::from_millis(300));
    }
    // PostgreSQL answers on its port with the chronos database.
    let url = format!("host=127.0.0.1 port={pg} user=chronos dbname=chronos");
    let one: i32 = chronos::stack::postgres::block_on(async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client.query_one("SELECT 1", &[]).await.unwrap().get(0)
    });
    assert_eq!(one, 1);

    let out = stack.chronos(&["log", "chronosd", "-n", "20"]);
    assert!(text(&out).contains("Receiving batches"), "{}", text(&out));

    // Starting again is harmless.
    let out = stack.chronos(&["start", "broker"]);
    assert!(text(&out).contains("already running"), "{}", text(&out));

    let out = stack.chronos(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = stack.chronos(&["status"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).lines().all(|l| !l.contains(" up ")), "{}", text(&out));
}
