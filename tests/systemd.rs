//! chronosd under systemd, the way `docs/systemd/chronosd.service` runs it:
//! the unit's own ExecStart arguments and Environment, a notify socket
//! (`NOTIFY_SOCKET`, a unix datagram socket this test reads) and
//! `WATCHDOG_USEC`, against the real broker. Checks READY=1 only once the
//! HTTP port answers and the broker is reachable, WATCHDOG=1 pings, and
//! STOPPING=1 then exit 0 on SIGTERM; and that the unit file itself is
//! accepted by systemd and by chronosd.

mod common;

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use chronos::probe::http_get;
use chronos::stack::process::free_port;
use common::*;

const UNIT: &str = "docs/systemd/chronosd.service";
/// The config path the unit uses; the tests put their own file there instead.
const UNIT_CONFIG: &str = "/etc/chronos/chronos.toml";
const UNIT_BIN: &str = "/usr/local/bin/chronosd";

/// A unit file: section → key → values (a key may repeat).
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.to_string());
            unit.entry(name.to_string()).or_default();
            continue;
        }
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("{UNIT}:{}: not `Key=value`: {line}", n + 1));
        let section = section.as_ref().unwrap_or_else(|| panic!("{UNIT}:{}: key before any [Section]", n + 1));
        assert!(!value.ends_with('\\'), "{UNIT}:{}: continuation lines are not supported by this test", n + 1);
        unit.get_mut(section).unwrap().entry(key.trim().to_string()).or_default().push(value.trim().to_string());
    }
    unit
}

fn unit() -> Unit {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(UNIT);
    parse_unit(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// The one value of `[Service] key`.
fn service(u: &Unit, key: &str) -> String {
    let values = u["Service"].get(key).unwrap_or_else(|| panic!("{UNIT}: [Service] has no {key}="));
    assert_eq!(values.len(), 1, "{UNIT}: [Service] {key}= given {} times", values.len());
    values[0].clone()
}

/// The command line of an Exec line with the binary and config path swapped for the test's.
fn exec_args(line: &str, config: &Path) -> Vec<String> {
    assert!(!line.contains('"') && !line.contains('\''), "{UNIT}: quoting in `{line}` is not supported by this test");
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some(UNIT_BIN), "{UNIT}: `{line}` does not run {UNIT_BIN}");
    words.map(|w| if w == UNIT_CONFIG { config.display().to_string() } else { w.to_string() }).collect()
}

/// The unit's `Environment=` assignments.
fn unit_environment(u: &Unit) -> Vec<(String, String)> {
    u["Service"]
        .get("Environment")
        .into_iter()
        .flatten()
        .flat_map(|v| v.split_whitespace())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("{UNIT}: Environment entry `{kv}` is not NAME=value"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn unit_is_notify_hardened_and_waits_for_the_drain() {
    let u = unit();
    assert_eq!(service(&u, "Type"), "notify");
    assert_eq!(service(&u, "Restart"), "on-failure");
    assert_eq!(service(&u, "KillSignal"), "SIGTERM");
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(service(&u, key), want, "{UNIT}: [Service] {key}");
    }
    let user = service(&u, "User");
    assert!(!user.is_empty() && user != "root", "{UNIT}: runs as `{user}`, not a dedicated user");
    // The notify socket is AF_UNIX: without it READY=1 could never be sent.
    let families = service(&u, "RestrictAddressFamilies");
    for f in ["AF_UNIX", "AF_INET", "AF_INET6"] {
        assert!(families.split_whitespace().any(|x| x == f), "{UNIT}: RestrictAddressFamilies lacks {f}");
    }
    // ProtectSystem=strict makes / read-only: the writable paths must be named.
    assert!(u["Service"].contains_key("ReadWritePaths"), "{UNIT}: ProtectSystem=strict without ReadWritePaths");
    // systemd must not kill chronosd in the middle of its drain: requests in
    // flight get shutdown_grace_secs, the producer flush as long again.
    let grace = chronos::config::Config::default().http.shutdown_grace_secs;
    let stop = service(&u, "TimeoutStopSec").parse::<u64>().expect("TimeoutStopSec in plain seconds");
    assert!(stop >= 2 * grace + 10, "TimeoutStopSec={stop} is shorter than the drain (2 x {grace} s + 10)");
    let watchdog = service(&u, "WatchdogSec").parse::<u64>().expect("WatchdogSec in plain seconds");
    assert!(watchdog >= 10, "WatchdogSec={watchdog}: too tight for a loaded host");
    assert_eq!(u["Install"]["WantedBy"], ["multi-user.target"]);
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = temp_dir();
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(UNIT)).unwrap();
    let local = dir.path().join("chronosd.service");
    std::fs::write(&local, text.replace(UNIT_BIN, env!("CARGO_BIN_EXE_chronosd"))).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&local).output().expect("systemd-analyze (package systemd, installed by .ci/setup)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // It prints unknown keys and bad values as warnings and still exits 0.
    let own: Vec<&str> = stderr.lines().filter(|l| l.contains("chronosd.service")).collect();
    assert!(out.status.success() && own.is_empty(), "systemd-analyze verify {UNIT}:\n{stderr}");

    // With the credentials drop-in's lines in its [Service] section.
    let dropin = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(CREDENTIALS)).unwrap();
    let lines: Vec<&str> = dropin.lines().filter(|l| l.starts_with("LoadCredential=")).collect();
    assert!(!lines.is_empty(), "{CREDENTIALS} has no LoadCredential= line");
    let with = std::fs::read_to_string(&local).unwrap().replace("[Service]\n", &format!("[Service]\n{}\n", lines.join("\n")));
    std::fs::write(&local, with).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&local).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let own: Vec<&str> = stderr.lines().filter(|l| l.contains("chronosd.service")).collect();
    assert!(out.status.success() && own.is_empty(), "systemd-analyze verify with {CREDENTIALS}:\n{stderr}");
}

/// The drop-in that gives chronosd its secrets as systemd credentials.
const CREDENTIALS: &str = "docs/systemd/credentials.conf";

#[test]
fn each_credential_of_the_drop_in_is_a_secret_file_setting_of_the_example_config() {
    let dropin = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(CREDENTIALS)).unwrap();
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/chronos.example.toml")).unwrap();
    let ids: Vec<&str> = dropin.lines().filter_map(|l| l.strip_prefix("LoadCredential=")?.split(':').next()).collect();
    assert_eq!(ids, ["kafka-password", "pg-password"]);
    for id in ids {
        let path = format!("/run/credentials/chronosd.service/{id}\"");
        let setting = example.lines().find(|l| l.contains(&path)).unwrap_or_else(|| panic!("chronos.example.toml does not use the credential {id}"));
        assert!(setting.trim_start_matches("# ").split(" = ").next().unwrap().ends_with("_file"), "{setting}");
    }
}

#[test]
fn unit_exec_lines_are_accepted_by_chronosd() {
    let u = unit();
    let kafka = Kafka::start(1);
    let dir = temp_dir();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, config_toml(&kafka, free_port(), "")).unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, config_toml(&kafka, free_port(), "").replace("retry_after_secs = 1", "retry_after_secs = \"soon\"")).unwrap();

    let pre = service(&u, "ExecStartPre");
    let run = |args: &[String]| Command::new(env!("CARGO_BIN_EXE_chronosd")).args(args).output().unwrap();
    let ok = run(&exec_args(&pre, &good));
    assert!(ok.status.success(), "`{pre}` on a valid config: {}", String::from_utf8_lossy(&ok.stderr));
    let refused = run(&exec_args(&pre, &bad));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "`{pre}` on an invalid config must fail with 2: {err}");
    assert!(err.contains("retry_after_secs"), "the error names the key: {err}");

    // ExecStart parses: `--help` appended stops before anything starts.
    let mut start = exec_args(&service(&u, "ExecStart"), &good);
    assert!(start.iter().any(|a| a == &good.display().to_string()), "ExecStart does not read {UNIT_CONFIG}");
    start.push("--help".into());
    let help = run(&start);
    assert!(help.status.success(), "chronosd refuses the unit's ExecStart arguments: {}", String::from_utf8_lossy(&help.stderr));
}

/// chronosd started as the unit starts it, with a notify socket.
struct Notified {
    child: Option<Child>,
    socket: UnixDatagram,
    addr: std::net::SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Notified {
    fn start(toml: &str, watchdog: Duration, extra_env: &[(&str, String)]) -> Notified {
        let u = unit();
        let dir = temp_dir();
        let config = dir.path().join("chronos.toml");
        std::fs::write(&config, toml).unwrap();
        let addr = chronos::config::Config::from_toml(toml).unwrap().http.listen;
        let notify = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&notify).unwrap();
        let log = dir.path().join("chronosd.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_chronosd"))
            .args(exec_args(&service(&u, "ExecStart"), &config))
            .env_clear()
            .envs(unit_environment(&u))
            .envs(extra_env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("NOTIFY_SOCKET", &notify)
            .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn chronosd");
        // WATCHDOG_PID is left unset on purpose: systemd sets it to the main
        // PID, which the child only knows after the spawn.
        Notified { child: Some(child), socket, addr, log, _dir: dir }
    }

    /// The next notification (one datagram may hold several lines), or None after `timeout`.
    fn next(&self, timeout: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => None,
            Err(e) => panic!("notify socket: {e}"),
        }
    }

    /// Waits for a datagram with `line`; returns it and every datagram read before it.
    fn wait_for(&self, line: &str, timeout: Duration) -> (String, Vec<String>) {
        let until = Instant::now() + timeout;
        let mut before = Vec::new();
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.next(left) {
                Some(m) if m.lines().any(|l| l == line) => return (m, before),
                Some(m) => before.push(m),
                None => break,
            }
        }
        panic!("no {line} within {timeout:?}; got {before:?}\n{}", self.log_text())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn sigterm(&self) {
        let child = self.child.as_ref().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }

    fn wait(&mut self) -> ExitStatus {
        let status = self.child.as_mut().expect("running").wait().unwrap();
        self.child = None;
        status
    }
}

impl Drop for Notified {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn ready_after_healthz_then_watchdog_pings_then_stopping_and_exit_0() {
    let kafka = Kafka::start(1);
    // Pings every second; a loaded CI machine still keeps the gaps under 2 s.
    let watchdog = Duration::from_secs(2);
    let mut d = Notified::start(&config_toml(&kafka, free_port(), ""), watchdog, &[]);

    let (ready, _) = d.wait_for("READY=1", Duration::from_secs(60));
    // At the moment READY=1 arrives, the HTTP port answers and the broker is reachable.
    let health = http_get(d.addr, "/healthz", Duration::from_secs(2));
    assert!(matches!(health, Ok((200, _))), "READY=1 sent but /healthz gives {health:?}");
    let readyz = http_get(d.addr, "/readyz", Duration::from_secs(2));
    assert!(matches!(&readyz, Ok((200, body)) if body.contains("\"ready\":true")), "READY=1 sent but /readyz gives {readyz:?}");
    assert!(ready.lines().any(|l| l.starts_with("STATUS=") && l.contains(&d.addr.to_string())), "READY without a status line: {ready:?}");

    // Pings at half the watchdog timeout: never a gap systemd would act on.
    let mut pings = Vec::new();
    let window = Instant::now() + Duration::from_secs(5);
    while Instant::now() < window {
        if let Some(m) = d.next(Duration::from_millis(100)) {
            assert!(!m.contains("READY=1"), "READY=1 sent twice");
            if m.lines().any(|l| l == "WATCHDOG=1") {
                pings.push(Instant::now());
            }
        }
    }
    assert!(pings.len() >= 3, "{} WATCHDOG=1 pings in 5 s with WATCHDOG_USEC={watchdog:?}\n{}", pings.len(), d.log_text());
    for w in pings.windows(2) {
        let gap = w[1] - w[0];
        assert!(gap < watchdog, "{gap:?} between two pings, watchdog timeout {watchdog:?}");
    }

    // The batch path works under the unit's environment.
    let c = client();
    let body = batch("s-systemd", 6);
    let res = c
        .post(format!("http://{}/v1/batch", d.addr))
        .header("Content-Type", "text/plain")
        .header("Origin", ORIGIN)
        .body(body.to_string())
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "{}", res.text().unwrap_or_default());

    d.sigterm();
    let (stopping, _) = d.wait_for("STOPPING=1", Duration::from_secs(10));
    assert!(!stopping.contains("READY=1"), "{stopping:?}");
    let status = d.wait();
    assert_eq!(status.code(), Some(0), "chronosd exit after SIGTERM: {status:?}\n{}", d.log_text());
    assert_eq!(kafka.count(&kafka.topic), 1, "the batch acknowledged before SIGTERM is in Kafka");
}

#[test]
fn no_ready_while_the_broker_is_unreachable() {
    let kafka = Kafka::start(1);
    let dead = format!("127.0.0.1:{}", free_port());
    // The env override the unit's EnvironmentFile would carry.
    let mut d = Notified::start(&config_toml(&kafka, free_port(), ""), Duration::from_millis(600), &[("CHRONOS_KAFKA__BROKERS", dead)]);
    let until = Instant::now() + Duration::from_secs(20);
    while !matches!(http_get(d.addr, "/healthz", Duration::from_secs(1)), Ok((200, _))) {
        assert!(Instant::now() < until, "/healthz never answered\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut seen = Vec::new();
    let window = Instant::now() + Duration::from_secs(4);
    while Instant::now() < window {
        if let Some(m) = d.next(Duration::from_millis(200)) {
            seen.push(m);
        }
    }
    assert!(!seen.iter().any(|m| m.contains("READY=1")), "READY=1 with no broker: {seen:?}");
    assert!(seen.iter().any(|m| m.contains("STATUS=Waiting for the broker")), "no waiting status: {seen:?}");
    // The process is alive (HTTP answers), so the watchdog is fed while it waits.
    assert!(seen.iter().any(|m| m.lines().any(|l| l == "WATCHDOG=1")), "no WATCHDOG=1 while waiting: {seen:?}");
    d.sigterm();
    d.wait_for("STOPPING=1", Duration::from_secs(10));
    let status = d.wait();
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", d.log_text());
}
