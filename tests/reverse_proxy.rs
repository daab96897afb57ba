//! Same-origin delivery behind a real nginx running `docs/nginx/chronos.conf`:
//! nginx serves a site and proxies the tracker (`/assets/app.js`) and the
//! batch path (`/e`) to chronosd; headless Chromium loads the site, the
//! tracker sends same-origin (no CORS preflight), and the events land with the
//! client address taken from `X-Forwarded-For` only when nginx is a trusted
//! proxy. nginx connects to chronosd from 127.0.3.3 and the browser reaches
//! nginx from 127.0.0.1, so the stored (anonymised) address tells which was used.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use chronos::stack::postgres::PostgresServer;
use chronos::stack::process::free_port;
use common::*;

/// The address nginx connects to chronosd from.
const PROXY_ADDR: &str = "127.0.3.3";

struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

/// nginx on `port` serving a one-page site and, with the docs' locations, proxying to `chronosd`.
fn nginx(chronosd: std::net::SocketAddr, port: u16) -> Nginx {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| Path::new(p).exists());
    let nginx = nginx.expect("nginx is missing: apt install nginx-light (see .ci/setup)");
    let dir = temp_dir();
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(
        site.join("index.html"),
        "<!doctype html><html><head><title>Shop</title><script src=\"/assets/app.js\" defer></script></head>\
         <body style=\"height:900px\"><h1>Shop</h1><button id=\"buy\">Buy</button></body></html>",
    )
    .unwrap();
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/nginx/chronos.conf")).unwrap();
    assert!(docs.contains("proxy_pass http://127.0.0.1:8080;"), "the docs' upstream changed; update this test");
    let locations = docs.replace("proxy_pass http://127.0.0.1:8080;", &format!("proxy_pass http://{chronosd};"));
    let d = dir.path().display();
    let conf = format!(
        "daemon off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         types {{ text/html html; }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    root {site};\n    proxy_bind {PROXY_ADDR};\n{locations}\n  }}\n}}\n",
        site = site.display()
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let mut n = Nginx { child, dir };
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = n.child.try_wait() {
            panic!("nginx exited ({status}): {}{}", std::fs::read_to_string(n.dir.path().join("stderr.log")).unwrap_or_default(), n.error_log());
        }
        assert!(Instant::now() < until, "nginx did not listen: {}", n.error_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    n
}

/// Runs chronosd with `trusted_proxies`, nginx in front, and Chromium on the
/// site; returns the stored client addresses of the session's events.
fn browse_through_nginx(trusted_proxies: &str) -> Vec<String> {
    let tracker = Path::new(env!("CARGO_MANIFEST_DIR")).join("tracker");
    assert!(tracker.join("node_modules/playwright-core").exists(), "tracker/node_modules is missing: run `npm ci --prefix tracker` (see .ci/setup)");
    let dir = temp_dir();
    let pg = PostgresServer::start_in(&dir.path().join("pg")).expect("start PostgreSQL");
    let kafka = Kafka::start(1);
    let port = free_port();
    let nginx_port = free_port();
    let origin = format!("http://127.0.0.1:{nginx_port}");
    let extra = format!(
        "[[keys]]\nid = \"site\"\nkey = \"wk_same_origin_0123456789\"\norigins = [\"{origin}\"]\n\n[tracker]\nendpoint = \"{origin}\"\nkey_id = \"site\"\nflush_interval_ms = 500\n"
    );
    let toml = config_toml_with_pg(&kafka, port, &pg.url(), "", &extra)
        .replacen("[http]\n", "[http]\nbatch_path = \"/e\"\ntracker_path = \"/assets/app.js\"\n", 1)
        .replace("trusted_proxies = [\"127.0.0.1\"]", &format!("trusted_proxies = [{trusted_proxies}]"));
    let d = Chronosd::start(&toml);
    d.wait_ready(Duration::from_secs(30));
    let n = nginx(d.addr, nginx_port);
    let out = Command::new("timeout")
        .args(["120", "node", "test/pageview.mjs"])
        .current_dir(&tracker)
        .env("SITE_URL", format!("{origin}/"))
        .env("OPTIONS", serde_json::json!({ "endpoint": format!("{origin}/e") }).to_string())
        .env("CHROMIUM", std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()))
        .output()
        .expect("node (see .ci/setup)");
    let text = output_text(&out);
    assert!(out.status.success(), "browser run failed:\n{text}\n--- nginx\n{}\n--- chronosd\n{}", n.error_log(), d.log_text());
    let result: serde_json::Value = serde_json::from_str(text.lines().rev().find_map(|l| l.strip_prefix("RESULT ")).expect("RESULT line")).unwrap();
    assert!(result["statuses"].as_array().unwrap().iter().all(|s| s == 200), "{result}");
    // Same origin: the tracker came through nginx, and no preflight was sent.
    assert!(result["scripts"].as_array().unwrap().iter().any(|s| s == &serde_json::json!(format!("200 {origin}/assets/app.js"))), "{result}");
    assert!(result["methods"].as_array().unwrap().iter().all(|m| m == "POST"), "{result}");
    let access = n.access_log();
    assert!(access.contains("GET /assets/app.js") && access.contains("POST /e") && !access.contains("OPTIONS"), "{access}");
    let session = result["session"].as_str().expect("a session id").to_string();
    let sql = format!("SELECT DISTINCT client_ip FROM events.pageviews WHERE session_id = '{session}'");
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let ips: Vec<String> = query(&pg.url(), &sql).iter().map(|r| r.get::<_, Option<String>>(0).unwrap_or_default()).collect();
        if !ips.is_empty() {
            return ips;
        }
        assert!(Instant::now() < until, "the pageview did not land\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn behind_a_trusted_nginx_the_client_address_comes_from_x_forwarded_for() {
    let ips = browse_through_nginx(&format!("\"{PROXY_ADDR}\""));
    // The browser's 127.0.0.1, anonymised; not nginx's 127.0.3.3.
    assert_eq!(ips, ["127.0.0.0"]);
}

#[test]
fn behind_an_untrusted_nginx_x_forwarded_for_is_ignored() {
    let ips = browse_through_nginx("");
    // nginx's own address, anonymised: the header it sent counted for nothing.
    assert_eq!(ips, ["127.0.3.0"]);
}
