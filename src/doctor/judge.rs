//! The doctor's judgement: gathered facts in, findings out, no I/O. Each
//! fault says what is wrong and the command or setting that fixes it.

use crate::config::Timescale;
use crate::health::cluster::{topic_health, ClusterFacts, TopicFacts};
use crate::telemetry::board::Snapshot;

use super::Finding;

/// What PostgreSQL said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostgresFacts {
    /// `server_version`.
    pub version: String,
    /// TimescaleDB is installed in the server (`pg_available_extensions`).
    pub timescaledb_available: bool,
    /// … and in `shared_preload_libraries`.
    pub timescaledb_preloaded: bool,
    /// Dead letters stored in the last window, and in the window before it
    /// (`None`: the schema is not installed).
    pub dead_letters: Option<(i64, i64)>,
}

/// The filesystem holding the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFacts {
    pub path: String,
    pub total_bytes: u64,
    /// Used, and available to an unprivileged writer (root's reserve left out).
    pub used_bytes: u64,
    pub available_bytes: u64,
}

impl DiskFacts {
    /// As `df` counts it: used of what users can have (used + available).
    pub fn used_percent(&self) -> f64 {
        let usable = self.used_bytes + self.available_bytes;
        if usable == 0 {
            return 0.0;
        }
        self.used_bytes as f64 * 100.0 / usable as f64
    }
}

/// Thresholds: `chronos doctor` flags.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Disk use (%) from which a warning, and a fault, is given.
    pub disk_warn_percent: f64,
    pub disk_fault_percent: f64,
    /// The window dead letters are counted in, in seconds.
    pub dead_letter_window_secs: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { disk_warn_percent: 90.0, disk_fault_percent: 95.0, dead_letter_window_secs: 900 }
    }
}

/// Everything the doctor looked at.
#[derive(Debug, Clone)]
pub struct Facts {
    pub now_ms: i64,
    /// `kafka.brokers`, `kafka.expected_brokers`, and the two topics' names.
    pub bootstrap: String,
    pub expected_brokers: Option<u32>,
    pub topics: Vec<String>,
    pub kafka: Result<ClusterFacts, String>,
    /// `postgres.url` without its password.
    pub postgres_at: String,
    pub postgres: Result<PostgresFacts, String>,
    pub timescaledb: Timescale,
    /// chronosd's health board, read at `admin` (`http.admin_listen`).
    pub admin: String,
    pub chronosd: Result<Snapshot, String>,
    pub stalled_after_secs: u64,
    pub disk: Result<DiskFacts, String>,
    pub limits: Limits,
}

/// Every finding, faults first.
pub fn diagnose(f: &Facts) -> Vec<Finding> {
    let mut out = kafka(f);
    out.extend(postgres(f));
    out.extend(loaders(f));
    out.extend(disk(f));
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

/// The `kafka-configs.sh` line that sets `key=value` on `topic`.
fn kafka_configs(bootstrap: &str, topic: &str, key: &str, value: impl std::fmt::Display) -> String {
    format!("kafka-configs.sh --bootstrap-server {bootstrap} --alter --entity-type topics --entity-name {topic} --add-config {key}={value}")
}

fn kafka(f: &Facts) -> Vec<Finding> {
    let facts = match &f.kafka {
        Ok(c) => c,
        Err(e) => {
            return vec![Finding::fault(
                "kafka",
                e.clone(),
                format!(
                    "start the broker (`chronos start broker` for the local stack) or check kafka.brokers (\"{}\") and kafka.security_protocol",
                    f.bootstrap
                ),
            )]
        }
    };
    let mut out = Vec::new();
    let n = facts.brokers.len();
    let ids = facts.brokers.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", ");
    match f.expected_brokers {
        Some(want) if (n as u32) < want => out.push(Finding::fault(
            "kafka.brokers",
            format!("{n} of {want} expected brokers in the cluster (ids {ids}): a broker is down"),
            "start the missing broker (`chronos start broker` for the local stack; its service elsewhere) and check its log; \
             kafka.expected_brokers sets the count expected",
        )),
        Some(want) => out.push(Finding::ok("kafka.brokers", format!("{n} brokers (ids {ids}), {want} expected"))),
        None => out.push(Finding::ok("kafka.brokers", format!("{n} broker(s) (ids {ids}); set kafka.expected_brokers to compare"))),
    }
    match facts.controller {
        Some(id) => out.push(Finding::ok("kafka.controller", format!("active controller known (broker {id})"))),
        None => out.push(Finding::fault(
            "kafka.controller",
            "no active controller: topics and leaders cannot change, a failed broker's partitions stay without a leader",
            "restore the controller quorum (start the stopped controller nodes; `chronos start broker` for the local stack)",
        )),
    }
    for name in &f.topics {
        match facts.topics.iter().find(|t| &t.name == name && t.exists) {
            Some(t) => out.extend(topic(f, facts, t)),
            None => out.push(Finding::fault(format!("topic {name}"), "does not exist", "create it: `chronos install-kafka`")),
        }
    }
    if let Some(e) = &facts.configs_error {
        out.push(Finding::warning(
            "kafka.topics",
            format!("topic settings not read: {e}"),
            "check the brokers' logs; doctor then checks min.insync.replicas and retention",
        ));
    }
    out
}

fn topic(f: &Facts, facts: &ClusterFacts, t: &TopicFacts) -> Vec<Finding> {
    let check = format!("topic {}", t.name);
    let h = topic_health(t, facts.offsets_error.is_none(), f.now_ms);
    let brokers = facts.brokers.len();
    let mut out = Vec::new();
    if h.offline > 0 {
        out.push(Finding::fault(
            &check,
            format!("{} of {} partitions offline (no leader): neither written nor loaded", h.offline, h.partitions),
            "start the brokers holding their replicas (`chronos start broker` for the local stack)",
        ));
    }
    let min_isr = t.min_insync.unwrap_or(1);
    let replication = h.replication as i32;
    // Below a minimum that can never be met: said once, below, with its fix.
    if h.below_min_isr > 0 && min_isr <= replication {
        out.push(Finding::fault(
            &check,
            format!(
                "{} partition(s) with fewer in-sync replicas than min.insync.replicas = {min_isr}: writes (acks=all) are refused, batches get 503",
                h.below_min_isr
            ),
            "bring the missing brokers back so that the replicas catch up",
        ));
    } else if h.under_replicated > 0 {
        out.push(Finding::warning(
            &check,
            format!(
                "{} of {} partitions under-replicated (replicas out of sync): one more broker lost and writes stop",
                h.under_replicated, h.partitions
            ),
            "bring the missing broker back; its replicas catch up on their own",
        ));
    }
    if min_isr > replication {
        out.push(Finding::fault(
            &check,
            format!("min.insync.replicas = {min_isr} can never be met with {replication} replica(s): every write (acks=all) is refused"),
            format!(
                "lower it: `{}` (or raise the replication factor)",
                kafka_configs(&f.bootstrap, &t.name, "min.insync.replicas", replication.max(1))
            ),
        ));
    } else if replication as usize > brokers.max(f.expected_brokers.unwrap_or(0) as usize) {
        out.push(Finding::fault(
            &check,
            format!("replication factor {replication} above the {brokers} broker(s) of the cluster: partitions can never be fully replicated"),
            "add brokers, or recreate the topic with kafka.replication at most the broker count (`chronos install-kafka`)",
        ));
    } else {
        let cluster = brokers.max(f.expected_brokers.unwrap_or(0) as usize);
        let allowed = cluster.min(3) as i32;
        if replication < allowed {
            out.push(Finding::warning(
                &check,
                format!("replication factor {replication} on a {cluster}-broker cluster: losing one broker loses records"),
                format!("raise it to {allowed} with kafka-reassign-partitions.sh (set kafka.replication = {allowed} for topics chronos creates)"),
            ));
        } else if replication >= 3 && min_isr < 2 {
            out.push(Finding::warning(
                &check,
                format!("min.insync.replicas = {min_isr} with {replication} replicas: a write is acknowledged when one broker holds it"),
                format!(
                    "`{}` (kafka.min_insync_replicas for topics chronos creates)",
                    kafka_configs(&f.bootstrap, &t.name, "min.insync.replicas", 2)
                ),
            ));
        }
    }
    if let (Some(age), Some(retention)) = (h.oldest_unloaded_secs, t.retention_ms.map(|ms| ms / 1000)) {
        let lag = h.lag.unwrap_or(0);
        let keep = (age * 2).max(retention) * 1000;
        let fix = format!(
            "raise its retention above the loaders' delay: `{}`, and let the loaders catch up (is one stalled? more loader threads: load.threads, or another chronosd)",
            kafka_configs(&f.bootstrap, &t.name, "retention.ms", keep)
        );
        if age >= retention {
            out.push(Finding::fault(
                &check,
                format!("retention ({retention} s) shorter than the lag: {lag} records not loaded, the oldest {age} s old, past retention and deleted at the next segment roll"),
                fix,
            ));
        } else if age * 2 >= retention {
            out.push(Finding::warning(
                &check,
                format!(
                    "the oldest of {lag} unloaded records is {age} s old: {} s left before retention ({retention} s) deletes it",
                    retention - age
                ),
                fix,
            ));
        }
    }
    if out.is_empty() {
        let lag = h.lag.map_or("lag unknown".to_string(), |l| format!("{l} records not loaded"));
        out.push(Finding::ok(
            &check,
            format!("{} partitions, replication {replication}, min.insync.replicas {min_isr}, all in sync; {lag}", h.partitions),
        ));
    }
    out
}

fn postgres(f: &Facts) -> Vec<Finding> {
    let pg = match &f.postgres {
        Ok(pg) => pg,
        Err(e) => {
            let tls = ["TLS", "sslmode", "sslrootcert", "certificate"].iter().any(|w| e.contains(w));
            return vec![if tls {
                Finding::fault(
                    "postgres.tls",
                    format!("TLS to PostgreSQL misconfigured: {e}"),
                    "make sslmode in postgres.url match the server: enable ssl on the server (ssl = on, ssl_cert_file, ssl_key_file) or change sslmode; set sslrootcert=<CA file> for verify-ca/verify-full",
                )
            } else {
                Finding::fault(
                    "postgres",
                    format!("unreachable: {e}"),
                    format!("start it (`chronos start postgres` for the local stack) or check postgres.url ({})", f.postgres_at),
                )
            }];
        }
    };
    let mut out = vec![Finding::ok("postgres", format!("reachable at {} (PostgreSQL {})", f.postgres_at, pg.version))];
    match (pg.timescaledb_available, pg.timescaledb_preloaded, f.timescaledb) {
        (true, false, Timescale::Never) | (false, _, Timescale::Never) => {}
        (true, false, mode) => {
            let what = "TimescaleDB is installed but not preloaded: new event tables are native partitions, not hypertables";
            let fix = "add shared_preload_libraries = 'timescaledb' to postgresql.conf (or `ALTER SYSTEM SET shared_preload_libraries = 'timescaledb'`) and restart PostgreSQL; or set load.timescaledb = \"never\"";
            out.push(if mode == Timescale::Always {
                Finding::fault("postgres.timescaledb", format!("{what}; load.timescaledb = \"always\" stops chronosd"), fix)
            } else {
                Finding::warning("postgres.timescaledb", what, fix)
            });
        }
        (false, _, Timescale::Always) => out.push(Finding::fault(
            "postgres.timescaledb",
            "TimescaleDB is not installed, and load.timescaledb = \"always\" requires it: chronosd does not start",
            "install TimescaleDB (.ci/setup, docs/operations.md) or set load.timescaledb = \"auto\"",
        )),
        _ => {}
    }
    if let Some((recent, before)) = pg.dead_letters {
        let window = f.limits.dead_letter_window_secs / 60;
        if recent > 0 {
            let trend = if recent > before { "rising" } else { "arriving" };
            out.push(Finding::warning(
                "dead letters",
                format!("{trend}: {recent} stored in the last {window} min ({before} in the {window} min before)"),
                "see why with `chronos dead-letters list`; fix the catalog ([events]) or the client, then `chronos dead-letters replay`",
            ));
        }
    }
    out
}

fn loaders(f: &Facts) -> Vec<Finding> {
    let board = match &f.chronosd {
        Ok(b) => b,
        Err(e) => {
            return vec![Finding::warning(
                "chronosd",
                format!("its admin listener at {} did not answer ({e}): stalled loaders and the archive not checked", f.admin),
                "start it (`chronos start chronosd`) or check http.admin_listen",
            )]
        }
    };
    let mut out = Vec::new();
    for p in board.partitions.iter().filter(|p| p.stalled) {
        let error = p.last_error.as_deref().unwrap_or("none recorded");
        let fix = if error.contains("42P01") || error.contains("42703") || error.contains("does not exist") {
            "the schema is incomplete: `chronos install-pipeline`; the loader retries on its own".to_string()
        } else if error.contains("none recorded") {
            "look for what blocks it in `chronos log chronosd` (a lock held in PostgreSQL, a slow disk); restart chronosd if it stays".to_string()
        } else {
            "fix what the last error names (`chronos log chronosd`); the loader retries on its own".to_string()
        };
        out.push(Finding::fault(
            format!("loader {}/{}", p.topic, p.partition),
            format!("stalled: {} records waiting and nothing stored for over {} s; last error: {error}", p.lag, f.stalled_after_secs),
            fix,
        ));
    }
    if out.is_empty() {
        out.push(Finding::ok("loaders", format!("{} partition(s) loading here, none stalled", board.partitions.len())));
    }
    if let Some(a) = &board.archive {
        let failing = a.last_failure_ms.is_some_and(|t| a.last_success_ms.is_none_or(|s| t > s));
        if failing {
            out.push(Finding::fault(
                "archive",
                format!("failing: {} failed run(s), {} ok; last: {}", a.failed_runs, a.ok_runs, a.last_failure.as_deref().unwrap_or("no message")),
                "fix retention.archive (a writable directory or reachable bucket) or what the message names; `chronos archive run` tries now",
            ));
        } else {
            out.push(Finding::ok("archive", format!("{} ok run(s), {} failed", a.ok_runs, a.failed_runs)));
        }
    }
    out
}

fn disk(f: &Facts) -> Vec<Finding> {
    match &f.disk {
        Err(e) => vec![Finding::warning("disk", format!("not checked: {e}"), "check stack.dir")],
        Ok(d) => {
            let used = d.used_percent();
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            let what =
                format!("{used:.0}% used on the filesystem of {} ({:.1} GiB free of {:.1} GiB)", d.path, gib(d.available_bytes), gib(d.total_bytes));
            let fix = "free space there (old logs, `chronos archive run` moves old days out of PostgreSQL) or move stack.dir to a larger disk; \
                       Kafka and PostgreSQL stop writing when it is full";
            if used >= f.limits.disk_fault_percent {
                vec![Finding::fault("disk", format!("nearly full: {what} (fault from {}%)", f.limits.disk_fault_percent), fix)]
            } else if used >= f.limits.disk_warn_percent {
                vec![Finding::warning("disk", format!("filling: {what} (warning from {}%)", f.limits.disk_warn_percent), fix)]
            } else {
                vec![Finding::ok("disk", what)]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{exit_code, Severity};
    use super::*;
    use crate::health::cluster::PartitionFacts;
    use crate::telemetry::board::{ArchiveHealth, PartitionHealth};

    const NOW: i64 = 1_800_000_000_000;

    fn part(id: i32, replicas: &[i32], isr: &[i32]) -> PartitionFacts {
        PartitionFacts { id, leader: isr.first().copied().unwrap_or(-1), replicas: replicas.to_vec(), isr: isr.to_vec(), ..Default::default() }
    }

    fn topic(name: &str, parts: Vec<PartitionFacts>, min_isr: i32) -> TopicFacts {
        TopicFacts { name: name.into(), exists: true, partitions: parts, min_insync: Some(min_isr), retention_ms: Some(604_800_000) }
    }

    fn healthy() -> Facts {
        let all = [1, 2, 3];
        Facts {
            now_ms: NOW,
            bootstrap: "k1:9092".into(),
            expected_brokers: Some(3),
            topics: vec!["ev".into(), "dl".into()],
            kafka: Ok(ClusterFacts {
                brokers: all.to_vec(),
                controller: Some(1),
                topics: vec![topic("ev", vec![part(0, &all, &all), part(1, &all, &all)], 2), topic("dl", vec![part(0, &all, &all)], 2)],
                ..Default::default()
            }),
            postgres_at: "postgres://chronos@db/chronos".into(),
            postgres: Ok(PostgresFacts {
                version: "17.2".into(),
                timescaledb_available: true,
                timescaledb_preloaded: true,
                dead_letters: Some((0, 0)),
            }),
            timescaledb: Timescale::Auto,
            admin: "127.0.0.1:9464".into(),
            chronosd: Ok(Snapshot { partitions: vec![], archive: Some(ArchiveHealth { ok_runs: 2, ..Default::default() }) }),
            stalled_after_secs: 300,
            disk: Ok(DiskFacts { path: "/var/lib/chronos".into(), total_bytes: 100 << 30, used_bytes: 50 << 30, available_bytes: 45 << 30 }),
            limits: Limits::default(),
        }
    }

    fn only(findings: &[Finding], severity: Severity) -> Vec<&Finding> {
        findings.iter().filter(|f| f.severity == severity).collect()
    }

    fn cluster(f: &mut Facts) -> &mut ClusterFacts {
        f.kafka.as_mut().unwrap()
    }

    #[test]
    fn a_healthy_installation_has_nothing_to_fix() {
        let findings = diagnose(&healthy());
        assert_eq!(exit_code(&findings), 0, "{findings:#?}");
        assert!(findings.iter().all(|f| f.fix.is_none()));
    }

    #[test]
    fn a_broker_down_is_a_fault_and_its_replicas_a_warning() {
        let mut f = healthy();
        let c = cluster(&mut f);
        c.brokers = vec![1, 2];
        c.topics[0].partitions[1].isr = vec![1, 2];
        let findings = diagnose(&f);
        let faults = only(&findings, Severity::Fault);
        assert_eq!(faults.len(), 1, "{findings:#?}");
        assert!(faults[0].what.contains("2 of 3 expected brokers") && faults[0].fix.as_ref().unwrap().contains("chronos start broker"));
        let warnings = only(&findings, Severity::Warning);
        assert!(warnings[0].check == "topic ev" && warnings[0].what.contains("1 of 2 partitions under-replicated"), "{warnings:#?}");
        // No broker at all.
        f.kafka = Err("no Kafka broker at k1:9092 answered".into());
        let findings = diagnose(&f);
        assert!(findings[0].severity == Severity::Fault && findings[0].check == "kafka", "{findings:#?}");
        assert!(findings[0].fix.as_ref().unwrap().contains("chronos start broker"), "{findings:#?}");
    }

    #[test]
    fn too_few_in_sync_replicas_no_leader_and_no_controller_are_faults() {
        let mut f = healthy();
        let c = cluster(&mut f);
        c.controller = None;
        c.topics[0].partitions[0].isr = vec![3];
        c.topics[1].partitions[0] = part(0, &[1, 2, 3], &[]);
        let findings = diagnose(&f);
        let faults: Vec<_> = only(&findings, Severity::Fault).iter().map(|f| f.what.clone()).collect();
        assert!(faults.iter().any(|w| w.contains("no active controller")), "{faults:?}");
        assert!(faults.iter().any(|w| w.contains("fewer in-sync replicas than min.insync.replicas = 2")), "{faults:?}");
        assert!(faults.iter().any(|w| w.contains("1 of 1 partitions offline")), "{faults:?}");
    }

    #[test]
    fn replication_and_min_isr_are_checked_against_the_cluster() {
        // min.insync.replicas above the replicas: never met.
        let mut f = healthy();
        f.expected_brokers = None;
        let c = cluster(&mut f);
        c.brokers = vec![1];
        c.topics = vec![topic("ev", vec![part(0, &[1], &[1])], 2), topic("dl", vec![part(0, &[1], &[1])], 1)];
        let findings = diagnose(&f);
        let fault = only(&findings, Severity::Fault)[0];
        assert!(fault.what.contains("min.insync.replicas = 2 can never be met with 1 replica(s)"), "{fault:?}");
        assert!(fault.fix.as_ref().unwrap().contains("--entity-name ev --add-config min.insync.replicas=1"), "{fault:?}");
        assert_eq!(exit_code(&findings), 2);
        // One copy on a three-broker cluster; min ISR 1 with three replicas.
        let mut f = healthy();
        cluster(&mut f).topics = vec![topic("ev", vec![part(0, &[1], &[1])], 1), topic("dl", vec![part(0, &[1, 2, 3], &[1, 2, 3])], 1)];
        let findings = diagnose(&f);
        let warnings: Vec<_> = only(&findings, Severity::Warning).iter().map(|f| (f.check.clone(), f.what.clone())).collect();
        assert!(
            warnings.contains(&("topic ev".into(), "replication factor 1 on a 3-broker cluster: losing one broker loses records".into())),
            "{warnings:?}"
        );
        assert!(warnings.iter().any(|(c, w)| c == "topic dl" && w.contains("min.insync.replicas = 1 with 3 replicas")), "{warnings:?}");
        // Three replicas on a cluster of two brokers (none expected): never fully replicated.
        let mut f = healthy();
        f.expected_brokers = None;
        cluster(&mut f).brokers = vec![1, 2];
        let findings = diagnose(&f);
        let fault = only(&findings, Severity::Fault)[0];
        assert!(fault.what.contains("replication factor 3 above the 2 broker(s) of the cluster"), "{fault:?}");
    }

    #[test]
    fn retention_shorter_than_the_lag_is_a_fault_and_half_of_it_a_warning() {
        let mut f = healthy();
        let ev = &mut cluster(&mut f).topics[0];
        ev.retention_ms = Some(3_600_000);
        ev.partitions[0].high = 100;
        ev.partitions[0].stored_next = Some(40);
        ev.partitions[0].oldest_unloaded_ms = Some(NOW - 4_000_000);
        let findings = diagnose(&f);
        let fault = only(&findings, Severity::Fault)[0];
        assert!(fault.what.starts_with("retention (3600 s) shorter than the lag: 60 records not loaded, the oldest 4000 s old"), "{fault:?}");
        assert!(fault.fix.as_ref().unwrap().contains("--add-config retention.ms=8000000"), "{fault:?}");
        cluster(&mut f).topics[0].partitions[0].oldest_unloaded_ms = Some(NOW - 2_000_000);
        let findings = diagnose(&f);
        assert_eq!(exit_code(&findings), 1);
        assert!(only(&findings, Severity::Warning)[0].what.contains("1600 s left before retention (3600 s)"), "{findings:#?}");
    }

    #[test]
    fn a_stalled_partition_shows_its_last_error_and_a_failing_archive_its_message() {
        let mut f = healthy();
        f.chronosd = Ok(Snapshot {
            partitions: vec![PartitionHealth {
                topic: "ev".into(),
                partition: 3,
                lag: 12,
                stalled: true,
                last_error: Some("flush failed: 42P01: relation \"events_raw.clicks\" does not exist".into()),
                ..Default::default()
            }],
            archive: Some(ArchiveHealth {
                ok_runs: 1,
                failed_runs: 2,
                last_success_ms: Some(NOW - 10_000),
                last_failure_ms: Some(NOW - 5_000),
                last_failure: Some("the archive cannot be opened: creating the archive directory /x: File exists".into()),
            }),
        });
        let findings = diagnose(&f);
        let faults = only(&findings, Severity::Fault);
        assert_eq!(faults[0].check, "loader ev/3");
        assert!(
            faults[0].what.contains("stalled: 12 records waiting") && faults[0].what.contains("42P01: relation \"events_raw.clicks\" does not exist")
        );
        assert!(faults[0].fix.as_ref().unwrap().contains("chronos install-pipeline"));
        assert!(faults[1].check == "archive" && faults[1].what.contains("2 failed run(s), 1 ok; last: the archive cannot be opened"), "{faults:#?}");
        // A success after the failure: healthy again.
        if let Ok(s) = &mut f.chronosd {
            s.partitions.clear();
            s.archive.as_mut().unwrap().last_success_ms = Some(NOW);
        }
        assert_eq!(exit_code(&diagnose(&f)), 0);
        // chronosd not answering is a warning: the rest still counts.
        f.chronosd = Err("connection refused".into());
        let findings = diagnose(&f);
        assert!(only(&findings, Severity::Warning)[0].what.contains("did not answer (connection refused)"), "{findings:#?}");
    }

    #[test]
    fn postgres_unreachable_tls_timescaledb_and_dead_letters() {
        let mut f = healthy();
        f.postgres =
            Err("PostgreSQL at postgres://chronos@db/chronos is not reachable; start it with `chronos start postgres`: error connecting".into());
        assert_eq!(only(&diagnose(&f), Severity::Fault)[0].check, "postgres");
        f.postgres = Err("PostgreSQL at postgres://chronos@db/chronos does not offer TLS, but sslmode=require requires it".into());
        assert_eq!(only(&diagnose(&f), Severity::Fault)[0].check, "postgres.tls");
        f.postgres =
            Ok(PostgresFacts { version: "17".into(), timescaledb_available: true, timescaledb_preloaded: false, dead_letters: Some((7, 2)) });
        let findings = diagnose(&f);
        let warnings = only(&findings, Severity::Warning);
        assert!(warnings
            .iter()
            .any(|w| w.check == "postgres.timescaledb" && w.fix.as_ref().unwrap().contains("shared_preload_libraries = 'timescaledb'")));
        assert!(
            warnings.iter().any(|w| w.check == "dead letters" && w.what == "rising: 7 stored in the last 15 min (2 in the 15 min before)"),
            "{warnings:#?}"
        );
        f.timescaledb = Timescale::Always;
        assert!(only(&diagnose(&f), Severity::Fault).iter().any(|w| w.check == "postgres.timescaledb"));
        f.timescaledb = Timescale::Never;
        assert!(!diagnose(&f).iter().any(|w| w.check == "postgres.timescaledb"), "native partitions chosen: nothing to say");
    }

    #[test]
    fn disk_use_warns_then_faults_at_the_thresholds() {
        let mut f = healthy();
        f.disk = Ok(DiskFacts { path: "/s".into(), total_bytes: 1100, used_bytes: 900, available_bytes: 100 });
        assert_eq!(exit_code(&diagnose(&f)), 1, "90% used: a warning");
        f.disk = Ok(DiskFacts { path: "/s".into(), total_bytes: 1100, used_bytes: 950, available_bytes: 50 });
        let findings = diagnose(&f);
        assert!(
            findings[0].severity == Severity::Fault && findings[0].what.starts_with("nearly full: 95% used on the filesystem of /s"),
            "{findings:#?}"
        );
        f.disk = Ok(DiskFacts { path: "/s".into(), total_bytes: 1100, used_bytes: 899, available_bytes: 101 });
        assert_eq!(exit_code(&diagnose(&f)), 0);
        f.limits.disk_warn_percent = 50.0;
        assert_eq!(exit_code(&diagnose(&f)), 1, "thresholds are settings");
    }
}
