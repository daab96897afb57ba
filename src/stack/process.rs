//! Starting, watching and stopping the local services' processes.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The account a process runs as: PostgreSQL refuses to run as root, so when
/// we are root it runs as the `postgres` user.
#[derive(Debug, Clone, Copy)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// `Some(postgres)` when running as root, `None` otherwise.
    pub fn postgres_if_root() -> Result<Option<RunAs>> {
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        let name = std::ffi::CString::new("postgres").unwrap();
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if pw.is_null() {
            bail!("running as root, and there is no `postgres` user to run PostgreSQL as (install postgresql-15)");
        }
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Ok(Some(RunAs { uid, gid }))
    }

    /// Makes `path` (recursively) owned by this account.
    pub fn chown(&self, path: &Path) -> Result<()> {
        let status = Command::new("chown").arg("-R").arg(format!("{}:{}", self.uid, self.gid)).arg(path).status().context("running chown")?;
        if !status.success() {
            bail!("chown of {} failed", path.display());
        }
        Ok(())
    }
}

/// How a spawned process relates to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Outlives this process (the `chronos start` daemons), in its own process group.
    Detached,
    /// Dies with the thread that spawned it (tests): `PR_SET_PDEATHSIG`.
    Owned,
}

/// Prepares `cmd`: logs to `log`, runs as `run_as`, with the given lifetime.
pub fn spawn(mut cmd: Command, log: &Path, run_as: Option<RunAs>, lifetime: Lifetime) -> Result<Child> {
    if let Some(parent) = log.parent() {
        fs::create_dir_all(parent)?;
    }
    let out = OpenOptions::new().create(true).append(true).open(log).with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    if lifetime == Lifetime::Detached {
        cmd.process_group(0);
    }
    unsafe {
        cmd.pre_exec(move || {
            if let Some(r) = run_as {
                if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(r.gid) != 0 || libc::setuid(r.uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // After setuid: a credential change clears the parent-death signal.
            if lifetime == Lifetime::Owned {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            }
            Ok(())
        });
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.spawn().with_context(|| format!("starting {program}"))
}

/// Whether a process with this pid runs. A zombie (killed, not yet reaped
/// by its parent: after `kill -9`, until init or whoever adopted it waits
/// for it) does not, though `kill(pid, 0)` still succeeds for it.
pub fn alive(pid: i32) -> bool {
    if pid <= 0 || unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    !matches!(state(pid), Some('Z' | 'X'))
}

/// Whether `pid` is a zombie: dead, not yet reaped by its parent.
pub fn zombie(pid: i32) -> bool {
    pid > 0 && state(pid) == Some('Z')
}

/// The process's state letter from `/proc/<pid>/stat` (`R`, `S`, `Z`, …);
/// `None` where there is no `/proc`.
fn state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces and parentheses.
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Sends `signal`, then waits up to `grace` for the process to go; SIGKILL after.
/// Returns whether it stopped within the grace period.
pub fn stop_pid(pid: i32, signal: i32, grace: Duration) -> bool {
    reap(pid);
    if !alive(pid) {
        return true;
    }
    unsafe { libc::kill(pid, signal) };
    let until = Instant::now() + grace;
    while Instant::now() < until {
        reap(pid);
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reap(pid);
    false
}

fn reap(pid: i32) {
    // Our own children stay zombies (and "alive") until waited for.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
}

/// Pid file helpers.
pub fn write_pid(path: &Path, pid: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    File::create(path)?.write_all(format!("{pid}\n").as_bytes())?;
    Ok(())
}

pub fn read_pid(path: &Path) -> Option<i32> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    s.lines().next()?.trim().parse().ok()
}

/// Waits until `addr` accepts TCP connections, or fails after `timeout`
/// (sooner if `still_running` says the process died).
pub fn wait_for_port(addr: SocketAddr, timeout: Duration, mut still_running: impl FnMut() -> bool) -> Result<()> {
    let until = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if !still_running() {
            bail!("the process exited before {addr} accepted connections");
        }
        if Instant::now() > until {
            bail!("nothing accepted connections on {addr} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free loopback port (for tests and first-time set-up).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind 127.0.0.1:0")
}

/// Waits until chronosd's `/readyz` at `addr` says ready (HTTP up and the broker
/// reached); the error carries the last answer.
pub fn wait_ready(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let until = Instant::now() + timeout;
    loop {
        let last = match crate::probe::http_get(addr, "/readyz", Duration::from_secs(2)) {
            Ok((200, _)) => return Ok(()),
            Ok((code, body)) => format!("{code}: {}", body.trim()),
            Err(e) => e.to_string(),
        };
        if Instant::now() > until {
            bail!("chronosd is not ready after {timeout:?} (/readyz {last})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The directory of the running executable (where `chronosd` sits beside `chronos`).
pub fn bin_dir() -> PathBuf {
    std::env::var_os("CHRONOS_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)))
        .unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_child_not_yet_reaped_is_not_alive() {
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id() as i32;
        assert!(alive(pid));
        unsafe { libc::kill(pid, libc::SIGKILL) };
        // Not waited for: a zombie, which `kill(pid, 0)` still finds.
        let until = Instant::now() + Duration::from_secs(10);
        while state(pid) != Some('Z') {
            assert!(Instant::now() < until, "no zombie: state {:?}", state(pid));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(unsafe { libc::kill(pid, 0) }, 0);
        assert!(!alive(pid), "a zombie counts as stopped");
        child.wait().unwrap();
        assert!(!alive(pid));
    }
}
