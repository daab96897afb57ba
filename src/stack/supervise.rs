//! The supervisor of the local stack: `chronos start` runs one `chronos
//! supervise <service>` process per service it starts, the service's parent
//! (as runit's `runsv` and daemontools' `supervise` do), so that it learns
//! how the service ended (`waitpid`: exit status or signal). A service that
//! dies without `chronos stop` (which stops its supervisor first) is started
//! again after a backoff ([`Policy`]), once what it needs is back: chronosd
//! waits for PostgreSQL and the broker, PostgreSQL for the killed server's
//! processes to go. One that fails [`Policy::give_up_after`] times within
//! [`Policy::window`] is left down. Every death and restart is a line of
//! `logs/supervisor.log` and a [`Failure`] in `run/<service>.restarts.json`,
//! which `chronos status` reads.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{process, Service, Stack};

/// When a dead service is started again, and when it is left down.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Failures within `window` after which the service is left down.
    pub give_up_after: usize,
    pub window: Duration,
    /// Wait before the first restart; doubled for each failure within `window`.
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { give_up_after: 5, window: Duration::from_secs(300), first_delay: Duration::from_secs(1), max_delay: Duration::from_secs(30) }
    }
}

/// What the supervisor does after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    RestartAfter(Duration),
    LeaveDown { failures: usize },
}

impl Policy {
    /// The decision after failures at these times (ms; the newest included), at `now_ms`.
    pub fn next(&self, failures: impl IntoIterator<Item = u64>, now_ms: u64) -> Next {
        let recent = failures.into_iter().filter(|&at| now_ms.saturating_sub(at) < self.window.as_millis() as u64).count().max(1);
        if recent >= self.give_up_after {
            return Next::LeaveDown { failures: recent };
        }
        let delay = self.first_delay.saturating_mul(1 << (recent - 1).min(16));
        Next::RestartAfter(delay.min(self.max_delay))
    }
}

/// One death of a service that nobody asked to stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// When the supervisor saw it, ms since the Unix epoch.
    pub at_ms: u64,
    /// `exit by signal 9`, `exit status 1`, `could not start: …`.
    pub cause: String,
    /// Whether the supervisor started it again.
    pub restarted: bool,
    /// From the death to the restarted service serving again, seconds.
    pub back_after_secs: Option<f64>,
}

/// The service was left down: it kept failing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeftDown {
    pub at_ms: u64,
    pub failures: usize,
    pub within_secs: u64,
}

/// What the supervisor of one service records (`run/<service>.restarts.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The latest deaths, oldest first (at most [`Record::KEPT`]).
    pub failures: Vec<Failure>,
    pub left_down: Option<LeftDown>,
    /// While waiting to restart: when, ms since the Unix epoch.
    pub restart_at_ms: Option<u64>,
}

impl Record {
    const KEPT: usize = 100;

    /// The record at `path`; none yet (or unreadable) is an empty one.
    pub fn load(path: &Path) -> Record {
        std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// Writes it whole (a temporary file renamed: a reader never sees half).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    }

    fn push(&mut self, f: Failure) {
        self.failures.push(f);
        let over = self.failures.len().saturating_sub(Self::KEPT);
        self.failures.drain(..over);
    }

    /// What `chronos status` says of it at `now_ms`: the restarts of the last
    /// hour (`restarted 2× in the last hour, last: exit by signal 9`), a
    /// restart being waited for, or that it was left down.
    pub fn summary(&self, service: Service, now_ms: u64) -> Option<String> {
        if let Some(l) = &self.left_down {
            let last = self.failures.last().map(|f| f.cause.as_str()).unwrap_or("?");
            return Some(format!(
                "left down by the supervisor after {} failures within {} s (last: {last}); fix the cause (log below), then `chronos start {}`",
                l.failures,
                l.within_secs,
                service.name()
            ));
        }
        if let (Some(at), Some(last)) = (self.restart_at_ms, self.failures.last()) {
            if at <= now_ms {
                return Some(format!("died ({}); the supervisor is restarting it", last.cause));
            }
            let secs = (at - now_ms).div_ceil(1000);
            return Some(format!("died ({}); the supervisor restarts it in {secs} s", last.cause));
        }
        let hour: Vec<&Failure> = self.failures.iter().filter(|f| f.restarted && now_ms.saturating_sub(f.at_ms) < 3_600_000).collect();
        let last = hour.last()?;
        Some(format!("restarted {}× in the last hour, last: {}", hour.len(), last.cause))
    }
}

/// How a process ended, as `chronos status` says it.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("exit by signal {sig}"),
        (None, None) => status.to_string(),
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A line of the supervisor's log (its standard output is `logs/supervisor.log`).
fn log(s: Service, msg: &str) {
    let at = chrono::DateTime::from_timestamp_millis(now_ms() as i64).map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()).unwrap_or_default();
    println!("{at} {:<8} {msg}", s.name());
}

/// Longest wait for a restarted service to serve, and for chronosd's dependencies.
const SERVE_TIMEOUT: Duration = Duration::from_secs(120);

/// `chronos supervise <service>`: starts the service and keeps it running
/// until this process is stopped (by `chronos stop`) or the service is left down.
pub fn run(stack: &Stack, s: Service, policy: Policy) -> Result<()> {
    let path = stack.restarts_file(s);
    // Failures before this supervisor (a service left down, fixed and started
    // again) do not count towards leaving it down.
    let since_ms = now_ms();
    let mut record = Record::load(&path);
    record.left_down = None;
    record.restart_at_ms = None;
    record.save(&path)?;
    let first = stack.spawn_service(s)?;
    log(s, &format!("started (pid {}), supervised by pid {}", first.id(), std::process::id()));
    // The running service, or why it could not be started again.
    let mut current: Result<Child, String> = Ok(first);
    loop {
        let cause = match current {
            Ok(mut c) => {
                let status = c.wait().context("waiting for the service")?;
                // `chronos stop` stops this process first; a pid file that no
                // longer names the child means someone else runs the service now.
                if process::read_pid(&stack.pid_file(s)) != Some(c.id() as i32) {
                    log(s, &format!("exited ({}) and its pid file no longer names it: not restarted", describe(status)));
                    return Ok(());
                }
                describe(status)
            }
            Err(why) => why,
        };
        let died = Instant::now();
        record.push(Failure { at_ms: now_ms(), cause: cause.clone(), restarted: false, back_after_secs: None });
        match policy.next(record.failures.iter().map(|f| f.at_ms).filter(|&at| at >= since_ms), now_ms()) {
            Next::LeaveDown { failures } => {
                record.left_down = Some(LeftDown { at_ms: now_ms(), failures, within_secs: policy.window.as_secs() });
                record.restart_at_ms = None;
                record.save(&path)?;
                let _ = std::fs::remove_file(stack.pid_file(s));
                log(
                    s,
                    &format!(
                        "{cause}: left down after {failures} failures within {} s; see {}",
                        policy.window.as_secs(),
                        stack.log_file(s).display()
                    ),
                );
                return Ok(());
            }
            Next::RestartAfter(delay) => {
                record.restart_at_ms = Some(now_ms() + delay.as_millis() as u64);
                record.save(&path)?;
                log(s, &format!("died ({cause}); restarting in {} s", delay.as_secs_f64()));
                std::thread::sleep(delay);
            }
        }
        current = match restart(stack, s) {
            Ok(c) => {
                let pid = c.id() as i32;
                let last = record.failures.last_mut().expect("a failure was recorded");
                last.restarted = true;
                record.restart_at_ms = None;
                record.save(&path)?;
                match stack.wait_serving(s, SERVE_TIMEOUT, || process::alive(pid)) {
                    Ok(()) => {
                        let back = died.elapsed().as_secs_f64();
                        if let Some(last) = record.failures.last_mut() {
                            last.back_after_secs = Some(back);
                        }
                        record.save(&path)?;
                        log(s, &format!("restarted (pid {pid}) after {cause}: serving again {back:.1} s after it died"));
                    }
                    Err(e) => log(s, &format!("restarted (pid {pid}) after {cause}, not serving: {e:#}")),
                }
                Ok(c)
            }
            Err(e) => {
                let why = format!("could not start: {e:#}");
                log(s, &why);
                Err(why)
            }
        };
    }
}

/// Starts `s` again once what it needs is there.
fn restart(stack: &Stack, s: Service) -> Result<Child> {
    match s {
        Service::Postgres => {
            stack.postgres().wait_for_old_server(Duration::from_secs(60), |pids| {
                log(s, &format!("waiting for the processes of the killed server to exit (pids {pids:?})"));
            })?;
        }
        Service::Chronosd => {
            for dep in [Service::Postgres, Service::Broker] {
                if !stack.supervised(dep) || stack.wait_serving(dep, Duration::from_millis(500), || true).is_ok() {
                    continue;
                }
                log(s, &format!("waiting for {} to serve before the restart", dep.name()));
                let waited = Instant::now();
                if let Err(e) = stack.wait_serving(dep, SERVE_TIMEOUT, || true) {
                    log(s, &format!("{} is still not serving after {:.0} s ({e:#}); restarting anyway", dep.name(), waited.elapsed().as_secs_f64()));
                }
            }
        }
        Service::Broker => {}
    }
    stack.spawn_service(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(at_ms: u64) -> Failure {
        Failure { at_ms, cause: "exit by signal 9".into(), restarted: true, back_after_secs: Some(2.0) }
    }

    #[test]
    fn restarts_back_off_and_a_service_failing_five_times_in_the_window_is_left_down() {
        let p = Policy::default();
        let mut f = Vec::new();
        let mut delays = Vec::new();
        for i in 0..5u64 {
            f.push(1_000_000 + i * 10_000);
            delays.push(p.next(f.clone(), 1_000_000 + i * 10_000));
        }
        let s = Duration::from_secs;
        assert_eq!(
            delays,
            [Next::RestartAfter(s(1)), Next::RestartAfter(s(2)), Next::RestartAfter(s(4)), Next::RestartAfter(s(8)), Next::LeaveDown { failures: 5 }]
        );
        // Failures older than the window no longer count.
        assert_eq!(p.next(f[4..].to_vec(), 1_040_000 + 300_000 - 1), Next::RestartAfter(s(1)));
        assert_eq!(p.next(f.clone(), 1_000_000 + 300_000 + 5_000), Next::RestartAfter(s(8)), "the first fell out of the window");
        let long = Policy { give_up_after: 100, ..p };
        assert_eq!(long.next(0..20, 20), Next::RestartAfter(s(30)), "capped");
    }

    #[test]
    fn status_counts_the_restarts_of_the_last_hour_and_says_the_last_cause() {
        let now = 10_000_000;
        let mut r = Record::default();
        assert_eq!(r.summary(Service::Broker, now), None);
        r.failures = vec![failure(now - 3_700_000), failure(now - 600_000), Failure { cause: "exit status 1".into(), ..failure(now - 1000) }];
        assert_eq!(r.summary(Service::Broker, now).unwrap(), "restarted 2× in the last hour, last: exit status 1");
        r.restart_at_ms = Some(now + 4_000);
        assert_eq!(r.summary(Service::Broker, now).unwrap(), "died (exit status 1); the supervisor restarts it in 4 s");
        assert_eq!(r.summary(Service::Broker, now + 4_000).unwrap(), "died (exit status 1); the supervisor is restarting it");
        r.left_down = Some(LeftDown { at_ms: now, failures: 5, within_secs: 300 });
        let s = r.summary(Service::Broker, now).unwrap();
        assert!(s.starts_with("left down by the supervisor after 5 failures within 300 s (last: exit status 1)"), "{s}");
        assert!(s.ends_with("`chronos start broker`"), "{s}");
    }

    #[test]
    fn a_record_keeps_the_latest_hundred_failures_and_survives_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.restarts.json");
        assert_eq!(Record::load(&path), Record::default(), "none yet");
        let mut r = Record::default();
        for i in 0..150 {
            r.push(failure(i));
        }
        assert_eq!((r.failures.len(), r.failures[0].at_ms), (100, 50));
        r.save(&path).unwrap();
        assert_eq!(Record::load(&path), r);
    }

    #[test]
    fn a_death_is_described_by_its_signal_or_exit_status() {
        let killed = std::process::Command::new("sh").args(["-c", "kill -9 $$"]).status().unwrap();
        assert_eq!(describe(killed), "exit by signal 9");
        let failed = std::process::Command::new("sh").args(["-c", "exit 3"]).status().unwrap();
        assert_eq!(describe(failed), "exit status 3");
    }
}
