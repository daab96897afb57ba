//! A three-node Apache Kafka cluster (KRaft, topics with replication 3 and
//! `min.insync.replicas` 2) under faults, with loadgen posting at a steady
//! rate and loadgen's verification counting, by (batch id, position), what
//! PostgreSQL holds against what got a 2xx:
//! - `kill -9` of one broker, then its restart (it rejoins the ISR under load),
//!   then a rolling restart of all three: 0 lost, 0 duplicated, chronosd up,
//!   503s only while leadership moves (the window and its cost are printed);
//! - two chronosd in one consumer group, one `kill -9`'d: the survivor takes its
//!   partitions within the session timeout, counts exact;
//! - PostgreSQL restarted mid-load: counts exact.
//!
//! The tests take turns (each runs three JVMs, PostgreSQL and chronosd on a
//! small machine); `cargo test --test cluster -- --nocapture` shows the figures.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chronos::rt::block_on;
use chronos::stack::postgres::PostgresServer;
use chronos::stack::process::free_port;
use common::*;
use rdkafka::consumer::Consumer;

/// One cluster test at a time.
static TURN: Mutex<()> = Mutex::new(());

/// Steady load: 2 000 events/s in 20-event batches (100 requests/s).
const RATE: &str = "2000";
const BATCH: &str = "20";

/// loadgen against `target` for `secs`, in a thread of its own.
fn loadgen(target: String, secs: u32) -> JoinHandle<loadgen::run::Outcome> {
    std::thread::spawn(move || {
        run_loadgen(&[
            "--rate",
            RATE,
            "--duration",
            &secs.to_string(),
            "--batch-size",
            BATCH,
            "--connections",
            "16",
            "--target",
            &target,
            "--key",
            KEY,
            "--origin",
            ORIGIN,
            "--timeout",
            "15",
            "--quiet",
        ])
    })
}

/// loadgen against `target` in back-to-back 10 s runs until `done` is set (and
/// the run in progress then ends), so the load covers a fault of any length.
fn loadgen_until(target: String, done: Arc<AtomicBool>) -> JoinHandle<Vec<loadgen::run::Outcome>> {
    std::thread::spawn(move || {
        let mut runs = Vec::new();
        while !done.load(Ordering::SeqCst) {
            runs.push(loadgen(target.clone(), 10).join().unwrap());
        }
        runs
    })
}

/// What a run's answers say: 2xx count, and the 503s (count, first and last answer, ms into the run).
struct Answers {
    ok: usize,
    unavailable: Vec<u32>,
    other: Vec<(u16, u32)>,
}

fn answers(out: &loadgen::run::Outcome) -> Answers {
    let mut a = Answers { ok: 0, unavailable: Vec::new(), other: Vec::new() };
    for b in &out.batches {
        match b.status {
            200..=299 => a.ok += 1,
            503 => a.unavailable.push(b.done_ms),
            s => a.other.push((s, b.done_ms)),
        }
    }
    a.unavailable.sort_unstable();
    a
}

impl Answers {
    /// "N 503s from t=a to t=b ms (window w ms)" or "no 503".
    fn describe(&self) -> String {
        match (self.unavailable.first(), self.unavailable.last()) {
            (Some(a), Some(b)) => format!("{} × 503 from {a} to {b} ms into the run (window {} ms)", self.unavailable.len(), b - a),
            _ => "no 503".into(),
        }
    }
}

/// loadgen's check of PostgreSQL: every 2xx batch stored once, nothing twice.
fn verify_exact(url: &str, runs: &[&loadgen::run::Outcome], d: &Chronosd) -> loadgen::report::Verification {
    let types = loadgen::payload::Mix::parse(loadgen::payload::DEFAULT_MIX).unwrap().types();
    let batches: Vec<_> = runs.iter().flat_map(|o| o.batches.iter().copied()).collect();
    let v = block_on(loadgen::verify::verify(url, &types, &batches, Duration::from_secs(180), Duration::from_secs(2))).unwrap();
    assert_eq!((v.missing, v.duplicated), (0, 0), "{v:?}\n{}", d.log_text());
    assert!(v.expected > 0, "{v:?}");
    v
}

fn chronosd_on(kafka: &Kafka, url: &str, load: &str) -> Chronosd {
    let d = Chronosd::start(&config_toml_with_pg(kafka, free_port(), url, load, FAST_IPS));
    d.wait_ready(Duration::from_secs(60));
    d
}

fn assert_up(d: &Chronosd) {
    assert!(chronos::stack::process::alive(d.pid()), "chronosd exited\n{}", d.log_text());
    let (code, _) = chronos::probe::http_get(d.addr, "/healthz", Duration::from_secs(5)).unwrap();
    assert_eq!(code, 200);
}

/// Partition leaders of `topic`, by partition.
fn leaders(kafka: &Kafka) -> Vec<i32> {
    let client = chronos::stack::broker::metadata_client(&kafka.bootstrap).unwrap();
    let m = client.fetch_metadata(Some(&kafka.topic), Duration::from_secs(5)).unwrap();
    let mut ps: Vec<(i32, i32)> = m.topics()[0].partitions().iter().map(|p| (p.id(), p.leader())).collect();
    ps.sort_unstable();
    ps.into_iter().map(|(_, l)| l).collect()
}

/// Waits until no partition of the events topic is led by `node_id`; returns how long that took.
fn leadership_moved_from(kafka: &Kafka, node_id: i32, since: Instant) -> Duration {
    loop {
        if let Ok(l) = std::panic::catch_unwind(|| leaders(kafka)) {
            if !l.contains(&node_id) && !l.contains(&-1) {
                return since.elapsed();
            }
        }
        assert!(since.elapsed() < Duration::from_secs(60), "leadership never moved off node {node_id}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_broker_killed_restarted_and_a_rolling_restart_under_load_lose_and_duplicate_nothing() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let mut kafka = Kafka::start_cluster(3);
    let pg_dir = temp_dir();
    let pg = PostgresServer::start_in(pg_dir.path()).expect("start PostgreSQL");
    let url = pg.url();
    let d = chronosd_on(&kafka, &url, "flush_rows = 500");
    let target = d.url("");

    // 1. kill -9 of the node leading partition 0, 5 s into a 40 s run; restarted at 20 s.
    let victim = leaders(&kafka)[0];
    let index = (victim - 1) as usize;
    let run = loadgen(target.clone(), 40);
    std::thread::sleep(Duration::from_secs(5));
    let killed = Instant::now();
    kafka.cluster().kill(index);
    let moved = leadership_moved_from(&kafka, victim, killed);
    std::thread::sleep(Duration::from_secs(15).saturating_sub(killed.elapsed()));
    kafka.cluster().start(index).expect("restart the killed node");
    let rejoin_started = Instant::now();
    let topic = kafka.topic.clone();
    kafka.cluster().wait_in_sync(&topic, 3, Duration::from_secs(60)).expect("the restarted node rejoins the ISR");
    let rejoined = rejoin_started.elapsed();
    let crash = run.join().unwrap();
    let a = answers(&crash);
    assert_up(&d);
    assert!(a.other.is_empty(), "only 2xx and 503 during a broker crash: {:?}", a.other);
    // 503s only after the kill (5 s in) and while leadership moved (plus the producer's timeout).
    if let Some(first) = a.unavailable.first() {
        assert!(*first >= 4_900, "503 before the kill: {}", a.describe());
        let last = *a.unavailable.last().unwrap() as u64;
        let bound = 5_000 + moved.as_millis() as u64 + 8_000;
        assert!(last <= bound, "503s after leadership had moved ({} ms): {}", moved.as_millis(), a.describe());
    }
    eprintln!(
        "kill -9 of node {victim}: leadership moved in {:.1} s; {}; {} × 2xx of {}; restarted node back in the ISR {:.1} s after its start",
        moved.as_secs_f64(),
        a.describe(),
        a.ok,
        crash.batches.len(),
        rejoined.as_secs_f64()
    );

    // 2. Rolling restart, one node at a time (SIGTERM: controlled shutdown),
    // under load from 3 s before it until up to 10 s after it.
    let done = Arc::new(AtomicBool::new(false));
    let run = loadgen_until(target.clone(), done.clone());
    std::thread::sleep(Duration::from_secs(3));
    let rolling = Instant::now();
    for i in 0..3 {
        assert!(kafka.cluster().stop(i, Duration::from_secs(30)), "node {} stopped cleanly", i + 1);
        kafka.cluster().start(i).expect("restart a node");
        let topic = kafka.topic.clone();
        kafka.cluster().wait_in_sync(&topic, 3, Duration::from_secs(60)).expect("back in the ISR");
    }
    let took = rolling.elapsed();
    done.store(true, Ordering::SeqCst);
    let roll = run.join().unwrap();
    assert_up(&d);
    let (mut ok, mut sent, mut unavailable) = (0, 0, 0);
    for r in &roll {
        let b = answers(r);
        assert!(b.other.is_empty(), "only 2xx and 503 during a rolling restart: {:?}", b.other);
        (ok, sent, unavailable) = (ok + b.ok, sent + r.batches.len(), unavailable + b.unavailable.len());
    }
    eprintln!(
        "rolling restart of 3 nodes in {:.1} s under load ({} loadgen runs of 10 s): {unavailable} × 503; {ok} × 2xx of {sent}",
        took.as_secs_f64(),
        roll.len()
    );

    let mut runs = vec![&crash];
    runs.extend(roll.iter());
    let v = verify_exact(&url, &runs, &d);
    eprintln!("verified: {} events expected, {} missing, {} duplicated", v.expected, v.missing, v.duplicated);
}

#[test]
fn two_chronosd_in_one_group_one_killed_9_the_survivor_takes_over_exact() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let kafka = Kafka::start_cluster(4);
    let pg_dir = temp_dir();
    let pg = PostgresServer::start_in(pg_dir.path()).expect("start PostgreSQL");
    let url = pg.url();
    let a = chronosd_on(&kafka, &url, "flush_rows = 200");
    let mut b = chronosd_on(&kafka, &url, "flush_rows = 200");
    let run = loadgen(a.url(""), 30);
    let offsets = format!("SELECT count(DISTINCT partition) FROM chronos.offsets WHERE topic = '{}'", kafka.topic);
    let until = Instant::now() + Duration::from_secs(40);
    while count(&url, &offsets) < 4 {
        assert!(Instant::now() < until, "not every partition loading\n{}\n{}", a.log_text(), b.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Both members hold partitions: each has stored offsets since it joined.
    std::thread::sleep(Duration::from_secs(3));
    let at_kill: String = query(&url, "SELECT clock_timestamp()::text")[0].get(0);
    let killed = Instant::now();
    b.kill9();
    // The survivor stores offsets for every partition after the kill.
    let taken = format!("{offsets} AND updated_at > '{at_kill}'::timestamptz");
    while count(&url, &taken) < 4 {
        assert!(killed.elapsed() < Duration::from_secs(30), "the survivor never took every partition\n{}", a.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let takeover = killed.elapsed();
    let out = run.join().unwrap();
    assert_up(&a);
    let ans = answers(&out);
    assert_eq!(ans.ok, out.batches.len(), "the front door was not affected: {}", ans.describe());
    // session.timeout.ms is 6 s in these tests; then a rebalance and one flush.
    assert!(takeover < Duration::from_secs(6 + 6), "takeover took {takeover:?}");
    let v = verify_exact(&url, &[&out], &a);
    eprintln!(
        "kill -9 of one of two loaders: every partition loading on the survivor {:.1} s later (session timeout 6 s); {} events, {} missing, {} duplicated",
        takeover.as_secs_f64(), v.expected, v.missing, v.duplicated
    );
}

#[test]
fn postgres_restarted_mid_load_on_the_cluster_is_exact() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let kafka = Kafka::start_cluster(3);
    let pg_dir = temp_dir();
    let mut pg = PostgresServer::start_in(pg_dir.path()).expect("start PostgreSQL");
    let url = pg.url();
    let d = chronosd_on(&kafka, &url, "flush_rows = 200\nretry_max_ms = 500");
    let run = loadgen(d.url(""), 20);
    std::thread::sleep(Duration::from_secs(5));
    pg.stop();
    std::thread::sleep(Duration::from_secs(4));
    pg.restart().expect("restart PostgreSQL");
    let out = run.join().unwrap();
    assert_up(&d);
    let ans = answers(&out);
    assert_eq!(ans.ok, out.batches.len(), "PostgreSQL is behind Kafka: the front door never noticed ({})", ans.describe());
    let v = verify_exact(&url, &[&out], &d);
    eprintln!("PostgreSQL restarted mid-load on the cluster: {} events, {} missing, {} duplicated", v.expected, v.missing, v.duplicated);
}
