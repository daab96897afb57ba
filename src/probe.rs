//! GET on chronosd's own port, for the liveness and readiness probes: the
//! systemd notifier's (`/healthz` before each WATCHDOG=1, `/readyz` before
//! READY=1) and `chronos start`'s. A loopback request to a server of our own,
//! `Connection: close`, status line and body read whole: a general HTTP
//! client (and the second TLS stack most bring) would add nothing here.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};

/// A plain HTTP GET on loopback; returns (status, body). No TLS, no redirects.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    get_over(s, addr, path)
}

/// [`http_get`] over TLS without checking the certificate: for chronosd's own
/// HTTPS port on loopback (readiness and liveness probes), nothing else.
pub fn https_get_unverified(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String)> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    b.set_verify(SslVerifyMode::NONE);
    let tls = b.build().configure()?.verify_hostname(false).use_server_name_indication(false).connect("localhost", s)?;
    get_over(tls, addr, path)
}

/// GET on chronosd's own port, over HTTPS when it serves that (`http.tls_cert`).
pub fn chronosd_get(addr: SocketAddr, path: &str, timeout: Duration, https: bool) -> Result<(u16, String)> {
    if https {
        https_get_unverified(addr, path, timeout)
    } else {
        http_get(addr, path, timeout)
    }
}

fn get_over(mut s: impl Read + Write, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    if let Err(e) = s.read_to_string(&mut resp) {
        // A TLS peer may close without close_notify after the whole answer.
        if resp.is_empty() {
            return Err(e.into());
        }
    }
    let status = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no HTTP status")?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}
