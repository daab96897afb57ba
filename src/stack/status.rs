//! `chronos status` of the local stack: each service up or down, its
//! address and health, what its supervisor did (restarts, left down with
//! the log's last lines), and the bots' share line.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::{broker, supervise, Service, Stack};

/// One line of `chronos status`.
#[derive(Debug, Clone)]
pub struct ServiceStatus {
    pub service: Service,
    pub pid: Option<i32>,
    pub address: String,
    pub up: bool,
    pub detail: String,
    /// The last lines of its log, when the supervisor left it down.
    pub log_tail: Vec<String>,
}

impl Stack {
    /// Each service: up or down, address, health.
    pub fn status(&self) -> Vec<ServiceStatus> {
        Service::ALL
            .iter()
            .map(|&s| {
                let pid = self.running_pid(s);
                let (address, probe) = match s {
                    Service::Postgres => {
                        let a = SocketAddr::from(([127, 0, 0, 1], self.config.stack.postgres_port));
                        (format!("postgres://127.0.0.1:{}", a.port()), port_probe(a))
                    }
                    Service::Broker if self.external_broker() => (format!("kafka://{}", self.config.kafka.brokers), self.broker_probe()),
                    Service::Broker => {
                        let a = SocketAddr::from(([127, 0, 0, 1], self.config.stack.broker_port));
                        (format!("kafka://{a}"), self.broker_probe())
                    }
                    Service::Chronosd => {
                        let a = self.config.http.listen;
                        let https = self.config.http.tls_cert.is_some();
                        let probe = match crate::probe::chronosd_get(a, "/readyz", Duration::from_secs(2), https) {
                            Ok((200, _)) => Ok("ready".to_string()),
                            Ok((code, body)) => Ok(format!("not ready ({code}): {}", body.trim())),
                            Err(e) => Err(e.to_string()),
                        };
                        (format!("{}://{a}", if https { "https" } else { "http" }), probe)
                    }
                };
                // An external broker is nobody's process here: it is up when it answers.
                let ours = !(s == Service::Broker && self.external_broker());
                let (up, mut detail) = match (pid, probe) {
                    (None, Ok(d)) if !ours => (true, d),
                    (None, Err(e)) if !ours => (false, e),
                    (Some(_), Ok(d)) => (true, d),
                    (Some(_), Err(e)) => (false, format!("process running but not answering: {e}")),
                    (None, Ok(_)) => (false, "something else answers on this address".into()),
                    (None, Err(_)) => (false, format!("stopped; start it with `chronos start {}`", s.name())),
                };
                let record = supervise::Record::load(&self.restarts_file(s));
                let mut log_tail = Vec::new();
                if ours {
                    match record.summary(s, supervise::now_ms()) {
                        Some(said) if pid.is_none() => {
                            detail = said;
                            if record.left_down.is_some() {
                                log_tail = last_lines(&self.log_file(s), 8);
                            }
                        }
                        Some(said) => detail = format!("{detail}; {said}"),
                        None => {}
                    }
                    if pid.is_some() && !self.supervised(s) {
                        detail.push_str("; not supervised");
                    }
                }
                ServiceStatus { service: s, pid, address, up, detail, log_tail }
            })
            .collect()
    }

    /// `Apache Kafka 4.1.1, 1 broker` (local) or `external cluster, 3 brokers`.
    fn broker_probe(&self) -> Result<String, String> {
        let ids = broker::broker_ids(&self.config.kafka.brokers, Duration::from_secs(3)).map_err(|e| format!("{e:#}"))?;
        let count = format!("{} broker{}", ids.len(), if ids.len() == 1 { "" } else { "s" });
        Ok(if self.external_broker() {
            format!("external cluster, {count} (ids {ids:?})")
        } else {
            let version = std::fs::read_to_string(self.version_file()).unwrap_or_else(|_| "?".into());
            format!("Apache Kafka {} (KRaft), {count}", version.trim())
        })
    }
}

/// The bots' share of `n` events in `chronos status`; when all of them are
/// a bot's, why that happens and where it matters.
pub fn bot_share(n: i64, bots: i64) -> String {
    if n > 0 && bots == n {
        return "all of them from bots: requests without a browser's User-Agent (curl, scripts) are flagged is_bot, \
                and the default views leave bots out (docs/enrichment.md, [enrich] bots)"
            .to_string();
    }
    format!("{bots} of them from bots ({:.0}%)", if n > 0 { bots as f64 * 100.0 / n as f64 } else { 0.0 })
}

/// The last `n` lines of a log file (none when it cannot be read).
pub(super) fn last_lines(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| l.to_string()).collect()
}

fn port_probe(addr: SocketAddr) -> Result<String, String> {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map(|_| "accepting connections".to_string()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bot_share_of_all_says_why_in_one_line() {
        assert_eq!(bot_share(10, 3), "3 of them from bots (30%)");
        assert_eq!(bot_share(0, 0), "0 of them from bots (0%)");
        let all = bot_share(1, 1);
        assert!(all.starts_with("all of them from bots: requests without a browser's User-Agent (curl, scripts) are flagged is_bot"), "{all}");
        assert!(all.contains("the default views leave bots out") && !all.contains('\n'), "{all}");
    }
}
