//! The pipeline benchmark (perf/pipeline): in one run, on one stack started
//! with the test helpers, measures
//!   (a) the broker's ceiling for chronosd's records: plain rdkafka produce, then consume;
//!   (b) the PostgreSQL COPY BINARY ceiling for their rows;
//!   (c) chronosd's highest sustained HTTP → Kafka rate with p99 ≤ 10 ms (loaders
//!       off), stepping loadgen's open-loop rate;
//!   (d) the end-to-end rate into PostgreSQL (loaders on) with loadgen --verify
//!       at 0 missing / 0 duplicated;
//! prints (c)/(a) and (d)/min(a, b), chronosd's RSS, and where the CPU went
//! per step; writes a Markdown report with `--out`.
//!
//! Phase x is an A/B of two chronosd configs in one run (loaders off, as in (c)):
//! A with `--set`, B with `--set` and `--compare`, both running on the same stack,
//! stepped through the same offered rates with the order alternated at each rate
//! (A B, B A, …) so that drift of the machine falls on both; it reports each
//! config's highest rate kept up and chronosd's CPU per accepted event.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chronos_bench::ceiling;
use chronos_bench::records::{self, KEY, ORIGIN};
use chronos_bench::stack::{self, Chronosd, PerfStack};
use clap::Parser;
use loadgen::report::Report;

#[derive(Debug, Parser)]
#[command(about = "HTTP → Kafka → PostgreSQL throughput next to the broker and COPY ceilings, in one run")]
struct Args {
    /// Records (50-event batches) for the ceilings (a) and (b).
    #[arg(long, default_value_t = 20_000)]
    records: usize,
    /// Seconds per rate step of (c).
    #[arg(long, default_value_t = 10.0)]
    step_secs: f64,
    /// Seconds per end-to-end run of (d).
    #[arg(long, default_value_t = 20.0)]
    e2e_secs: f64,
    /// First offered rate of (c), events/s.
    #[arg(long, default_value_t = 100_000.0)]
    start_rate: f64,
    /// p99 latency (from the intended send time) a step of (c) may have, ms.
    #[arg(long, default_value_t = 10.0)]
    max_p99_ms: f64,
    /// loadgen keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Events per batch.
    #[arg(long, default_value_t = 50)]
    batch_size: u32,
    /// chronosd config override, `section.key=value` (repeatable), e.g. kafka.linger_ms=2.
    #[arg(long = "set")]
    sets: Vec<String>,
    /// Which measurements to run: any of a, b, c, d (a and b run together), h
    /// (chronosd's HTTP path with a discard sink instead of the broker) and x
    /// (the A/B of `--compare`; not in the default).
    #[arg(long, default_value = "abhcd")]
    phases: String,
    /// Offered rates of (d), events/s, comma-separated; default 0.6, 0.8 and 1.0 × min(a, b, c).
    #[arg(long, value_delimiter = ',')]
    e2e_rates: Vec<f64>,
    /// Write the report (Markdown) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seconds of traffic at --start-rate before (c), or before (d) without (c), not recorded (broker JIT warm-up).
    #[arg(long, default_value_t = 30.0)]
    warmup_secs: f64,
    /// Phase x: the overrides that make config B from config A (repeatable), e.g.
    /// `--phases x --compare enrich.enabled=false`.
    #[arg(long = "compare")]
    compare: Vec<String>,
    /// Phase x: each offered rate is this factor above the one before.
    #[arg(long, default_value_t = 1.25)]
    compare_factor: f64,
    /// Apache Kafka nodes: 1 (one combined node) or 3 (a cluster; topics with
    /// replication 3 and min.insync.replicas 2).
    #[arg(long, default_value_t = 1)]
    brokers: usize,
}

/// Tries of each ceiling (a) and (b); the fastest counts.
const CEILING_TRIES: usize = 3;

/// One loadgen run and what the machine did meanwhile.
struct Step {
    report: Report,
    /// Highest chronosd VmRSS seen during the step, MiB.
    rss_mib: f64,
    /// CPU used during the step, in cores (CPU seconds / wall seconds).
    cpu: Cpu,
    /// The seconds `cpu` covers (see [`step`]).
    cpu_window_secs: f64,
    /// Records per produce request chronosd sent during the step (from its
    /// librdkafka statistics at /metrics); `None` without a broker.
    records_per_request: Option<f64>,
    /// All 2xx and accepted ≥ 97 % of the offered rate.
    kept_up: bool,
    pass: bool,
}

impl Step {
    /// The step's verdict as the report tables print it (see [`VERDICTS`]).
    fn verdict(&self) -> &'static str {
        if self.pass {
            "pass"
        } else if self.kept_up {
            "kept up"
        } else {
            "fell behind"
        }
    }
}

/// What the verdicts mean, for a report section's heading.
fn verdicts(max_p99_ms: f64) -> String {
    format!("kept up = all 2xx and accepted ≥ 97 % of offered; pass = kept up and p99 ≤ {max_p99_ms} ms")
}

/// The highest of `rates`, if any.
fn highest(rates: impl Iterator<Item = f64>) -> Option<f64> {
    rates.reduce(f64::max)
}

#[derive(Default, Clone, Copy)]
struct Cpu {
    chronosd: f64,
    loadgen: f64,
    broker: f64,
    postgres: f64,
    other: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin_dir = std::env::current_exe()?.parent().context("binary dir")?.to_path_buf();
    anyhow::ensure!(
        bin_dir.join("chronosd").is_file() && bin_dir.join("loadgen").is_file(),
        "chronosd and loadgen must be built beside this binary (perf/pipeline builds them)"
    );
    let machine = machine(args.brokers);
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("{machine}\nload average before: {load_before}");
    let stack = PerfStack::start_with(args.brokers)?;
    let mut out = String::new();

    // (a) and (b): the same records chronosd would produce, and their rows.
    let mut ceilings = None;
    if args.phases.contains('a') || args.phases.contains('b') {
        let (config, _) = stack.config(stack::port(), false, &args.sets)?;
        let recs = records::records(&config, records::bodies(args.records, args.batch_size))?;
        let events = (args.records * args.batch_size as usize) as f64;
        let bytes: usize = recs.iter().map(|r| r.value.len()).sum();
        // Ceilings are the best of three tries: other users of the machine only ever lower them.
        let (mut produce, mut consume, mut copy) = (f64::MAX, f64::MAX, f64::MAX);
        for _ in 0..CEILING_TRIES {
            produce = produce.min(ceiling::broker_produce(&config.kafka, &config.kafka.topic, &recs, true)?);
            consume = consume.min(ceiling::broker_consume(&config.kafka.brokers, &config.kafka.topic, config.kafka.partitions, recs.len())?);
            copy = copy.min(ceiling::copy_ceiling(&config, &recs)?);
        }
        let floor = ceiling::broker_ack_latency(&config.kafka, &config.kafka.topic, &recs, 100.0, 5.0)?;
        // What the four record headers cost the broker: the same records without them.
        let (bare, _) = stack.config(stack::port(), false, &args.sets)?;
        let produce_bare = ceiling::broker_produce(&bare.kafka, &bare.kafka.topic, &recs, false)?;
        let consume_bare = ceiling::broker_consume(&bare.kafka.brokers, &bare.kafka.topic, bare.kafka.partitions, recs.len())?;
        let (p, c, b) = (events / produce, events / consume, events / copy);
        let line = format!(
            "{} records of {} events ({:.1} MB of JSON), {} partitions, compression {}, linger.ms {}\n\
             (a) broker produce ceiling (plain rdkafka, acks=all): {:>10.0} events/s ({:.0} records/s)\n\
             (a) broker consume ceiling (plain rdkafka):           {:>10.0} events/s ({:.0} records/s)\n\
             (b) PostgreSQL COPY BINARY ceiling:                    {:>10.0} events/s\n\
             broker ack latency at 100 records/s (plain rdkafka): p50 {:.2} · p90 {:.2} · p99 {:.2} · max {:.2} ms\n\
             for comparison, the same records without their 4 headers: produce {:.0}, consume {:.0} events/s\n",
            recs.len(),
            args.batch_size,
            bytes as f64 / 1e6,
            config.kafka.partitions,
            config.kafka.compression,
            config.kafka.linger_ms,
            p,
            p / args.batch_size as f64,
            c,
            c / args.batch_size as f64,
            b,
            floor.p50,
            floor.p90,
            floor.p99,
            floor.max,
            events / produce_bare,
            events / consume_bare
        );
        eprint!("{line}");
        out.push_str(&format!("## Ceilings\n\n```\n{line}```\n\n"));
        ceilings = Some((p, c, b));
    }

    // (h): chronosd's own HTTP path, no broker: the real server (chronos::serve,
    // in this process) with the discard sink, which acknowledges every record at once.
    let mut best_discard: Option<(Option<f64>, Option<f64>)> = None;
    if args.phases.contains('h') {
        let (config, _) = stack.config(stack::port(), false, &args.sets)?;
        let listener = std::net::TcpListener::bind(config.http.listen)?;
        let target = Target { pid: std::process::id() as i32, url: format!("http://{}", config.http.listen) };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let shutdown = async move {
                    let _ = stop_rx.await;
                };
                let health = Arc::new(chronos::produce::ProducerHealth::default());
                chronos::serve(config, listener, chronos::produce::Sink::Discard, Arc::new(chronos::telemetry::Metrics::new()), health, shutdown)
                    .await
            })
        });
        let (mut steps, kept_up, pass) = ladder(&args, &bin_dir, &stack, &target, args.start_rate.max(100_000.0))?;
        let _ = stop_tx.send(());
        let _ = server.join();
        steps.sort_by(|a, b| a.report.rate.total_cmp(&b.report.rate));
        out.push_str("## (h) chronosd's HTTP path alone: discard sink, no broker (chronos::serve in the bench process; its CPU and RSS count as chronosd's)\n\n");
        out.push_str(&table(&steps, false));
        out.push('\n');
        best_discard = Some((kept_up, pass));
    }

    // (c): loaders off, step the offered rate.
    let mut best_http: Option<f64> = None;
    let mut rss_max: f64 = 0.0;
    let mut best_kept_up: Option<f64> = None;
    if args.phases.contains('c') {
        let (config, text) = stack.config(stack::port(), false, &args.sets)?;
        let d = Chronosd::start(&bin_dir, stack.dir.path(), &config, &text)?;
        let target = Target { pid: d.pid(), url: d.url() };
        if args.warmup_secs > 0.0 {
            // The broker JVMs compile their produce and replication paths during the
            // first minute of traffic: a step then measures the JIT, not the broker.
            eprintln!("  warm-up: {} s at {:.0} events/s (not recorded)", args.warmup_secs, args.start_rate);
            step(&args, &bin_dir, &stack, &target, args.start_rate, args.warmup_secs, None)?;
        }
        let (steps, kept_up, pass) = ladder(&args, &bin_dir, &stack, &target, args.start_rate)?;
        best_kept_up = kept_up;
        best_http = pass;
        let mut steps = steps;
        steps.sort_by(|a, b| a.report.rate.total_cmp(&b.report.rate));
        rss_max = steps.iter().map(|s| s.rss_mib).fold(0.0, f64::max);
        out.push_str(&format!(
            "## (c) HTTP → Kafka, loaders off ({} s per step, {} connections; {})\n\n",
            args.step_secs,
            args.connections,
            verdicts(args.max_p99_ms)
        ));
        out.push_str(&table(&steps, false));
        drop(d);
    }

    // (x): A/B of two configs in one run.
    let mut ab_summary = None;
    if args.phases.contains('x') {
        let (section, summary) = compare(&args, &bin_dir, &stack)?;
        out.push_str(&section);
        ab_summary = Some(summary);
    }

    // (d): loaders on, the end-to-end rate with --verify.
    let mut best_e2e: Option<f64> = None;
    let mut e2e_budget: Option<String> = None;
    if args.phases.contains('d') {
        if args.warmup_secs > 0.0 && !args.phases.contains('c') {
            // As before (c): without it the broker's JIT compiler took a sixth
            // of the machine during (d)'s send (perf record, 2026-12-03).
            let (config, text) = stack.config(stack::port(), false, &args.sets)?;
            let d = Chronosd::start(&bin_dir, stack.dir.path(), &config, &text)?;
            eprintln!("  warm-up: {} s at {:.0} events/s, loaders off (not recorded)", args.warmup_secs, args.start_rate);
            step(&args, &bin_dir, &stack, &Target { pid: d.pid(), url: d.url() }, args.start_rate, args.warmup_secs, None)?;
        }
        let (config, text) = stack.config(stack::port(), true, &args.sets)?;
        let d = Chronosd::start(&bin_dir, stack.dir.path(), &config, &text)?;
        let rates: Vec<f64> = if !args.e2e_rates.is_empty() {
            args.e2e_rates.clone()
        } else {
            let cap = [ceilings.map(|(p, c, b)| p.min(c).min(b)), best_kept_up].into_iter().flatten().fold(f64::MAX, f64::min);
            let cap = if cap == f64::MAX { 20_000.0 } else { cap };
            vec![0.6 * cap, 0.8 * cap, cap]
        };
        let mut steps = Vec::new();
        for (i, rate) in rates.into_iter().enumerate() {
            if i > 0 {
                std::thread::sleep(Duration::from_secs(2));
            }
            let s = step(&args, &bin_dir, &stack, &Target { pid: d.pid(), url: d.url() }, rate, args.e2e_secs, Some(&config.postgres.url))?;
            let v = s.report.verify.clone().context("verify ran")?;
            let total = s.report.elapsed_secs + v.wait_secs;
            let e2e = s.report.events_accepted as f64 / total;
            eprintln!(
                "    end to end: {e2e:.0} events/s ({} events in {total:.2} s), missing {}, duplicated {}",
                s.report.events_accepted, v.missing, v.duplicated
            );
            if v.passed() && best_e2e.is_none_or(|b| e2e > b) {
                best_e2e = Some(e2e);
                e2e_budget = Some(cpu_budget(&s, e2e));
            }
            rss_max = rss_max.max(s.rss_mib);
            let failed = !v.passed();
            steps.push(s);
            if failed {
                break;
            }
        }
        out.push_str(&format!(
            "\n## (d) End to end into PostgreSQL, loaders on, loadgen --verify ({} s per run; end-to-end rate = accepted events / (send time + wait until the last batch was loaded))\n\n",
            args.e2e_secs
        ));
        out.push_str(&table(&steps, true));
        drop(d);
    }

    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut summary = String::new();
    if let Some((p, c, b)) = ceilings {
        let a_e2e = p.min(c);
        summary.push_str(&format!("(a) broker ceiling: produce {p:.0}, consume {c:.0} events/s\n(b) COPY ceiling: {b:.0} events/s\n"));
        match best_http {
            Some(h) => {
                summary.push_str(&format!("(c) HTTP → Kafka, p99 ≤ {} ms: {h:.0} events/s   (c)/(a produce) = {:.2}\n", args.max_p99_ms, h / p))
            }
            None if args.phases.contains('c') => {
                summary.push_str(&format!("(c) HTTP → Kafka, p99 ≤ {} ms: no step met the bound\n", args.max_p99_ms))
            }
            None => {}
        }
        if let Some(k) = best_kept_up {
            summary.push_str(&format!("(c') HTTP → Kafka, highest rate kept up (any p99): {k:.0} events/s   (c')/(a produce) = {:.2}\n", k / p));
        }
        if let Some(e) = best_e2e {
            summary.push_str(&format!("(d) end to end, 0 missing / 0 duplicated: {e:.0} events/s   (d)/min(a, b) = {:.2}\n", e / a_e2e.min(b)));
        }
    } else {
        if let Some(h) = best_http {
            summary.push_str(&format!("(c) HTTP → Kafka, p99 ≤ {} ms: {h:.0} events/s\n", args.max_p99_ms));
        }
        if let Some(k) = best_kept_up {
            summary.push_str(&format!("(c') HTTP → Kafka, highest rate kept up (any p99): {k:.0} events/s\n"));
        }
        if let Some(e) = best_e2e {
            summary.push_str(&format!("(d) end to end, 0 missing / 0 duplicated: {e:.0} events/s\n"));
        }
    }
    if let Some(b) = &e2e_budget {
        summary.push_str(b);
    }
    if let Some((kept_up, pass)) = best_discard {
        summary.push_str(&format!(
            "(h) chronosd HTTP path alone (discard sink): p99 ≤ {} ms up to {}, kept up to {} events/s\n",
            args.max_p99_ms,
            pass.map_or("none".into(), |r| format!("{r:.0}")),
            kept_up.map_or("none".into(), |r| format!("{r:.0}"))
        ));
    }
    if let Some(ab) = &ab_summary {
        summary.push_str(ab);
    }
    if rss_max > 0.0 {
        summary.push_str(&format!("chronosd RSS, highest seen (loaders off and on): {rss_max:.0} MiB\n"));
    }
    println!("{summary}");
    if let Some(path) = &args.out {
        let command = std::env::var("PERF_COMMAND").unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" "));
        let text = format!(
            "# Pipeline benchmark\n\nCommand: `{command}`\n\nWhen: {}\n\n{machine}\n\nLoad average before: {load_before}After: {load_after}\n\
             ## Summary\n\n```\n{summary}```\n\n{out}",
            date()
        );
        std::fs::write(path, text)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Phase x: configs A (`--set`) and B (`--set` + `--compare`) side by side, loaders
/// off, stepped up together by `--compare-factor` from `--start-rate` until both
/// fall behind; at each rate both run one step, in alternating order. Returns the
/// report's section and the summary lines.
fn compare(args: &Args, bin_dir: &Path, stack: &PerfStack) -> anyhow::Result<(String, String)> {
    anyhow::ensure!(!args.compare.is_empty(), "phase x compares two configs: give B's difference with --compare section.key=value");
    anyhow::ensure!(args.compare_factor > 1.0, "--compare-factor must be above 1, got {}", args.compare_factor);
    let b_sets: Vec<String> = args.sets.iter().chain(&args.compare).cloned().collect();
    let mut daemons = Vec::new();
    for sets in [&args.sets, &b_sets] {
        let (config, text) = stack.config(stack::port(), false, sets)?;
        daemons.push(Chronosd::start(bin_dir, stack.dir.path(), &config, &text)?);
    }
    let targets: Vec<Target> = daemons.iter().map(|d| Target { pid: d.pid(), url: d.url() }).collect();
    let names = ["A", "B"];
    if args.warmup_secs > 0.0 {
        for (t, name) in targets.iter().zip(names) {
            eprintln!("  warm-up {name}: {} s at {:.0} events/s (not recorded)", args.warmup_secs / 2.0, args.start_rate);
            step(args, bin_dir, stack, t, args.start_rate, args.warmup_secs / 2.0, None)?;
        }
    }
    // (rate, [A's step, B's step])
    let mut rows: Vec<(f64, [Step; 2])> = Vec::new();
    let mut rate = args.start_rate;
    for round in 0.. {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut got: [Option<Step>; 2] = [None, None];
        for i in order {
            std::thread::sleep(Duration::from_secs(2));
            eprint!("  {} ", names[i]);
            got[i] = Some(step(args, bin_dir, stack, &targets[i], rate, args.step_secs, None)?);
        }
        let [Some(a), Some(b)] = got else { unreachable!("both configs ran") };
        let neither = !a.kept_up && !b.kept_up;
        rows.push((rate, [a, b]));
        if neither || rate > 5e6 {
            break;
        }
        rate *= args.compare_factor;
    }
    drop(daemons);

    // chronosd's CPU per accepted event, µs: its cores during the step over the accepted rate.
    let per_event = |s: &Step| if s.report.accepted_rate > 0.0 { s.cpu.chronosd / s.report.accepted_rate * 1e6 } else { f64::NAN };
    let mut t = format!(
        "## (x) A/B in one run, loaders off ({} s per step, order alternated at each rate; {})\n\n\
         A: {}\n\nB: A with `{}`\n\n\
         | offered ev/s | A accepted | A p99 ms | A chronosd µs CPU/event | A | B accepted | B p99 ms | B chronosd µs CPU/event | B |\n\
         |---:|---:|---:|---:|:-:|---:|---:|---:|:-:|\n",
        args.step_secs,
        verdicts(args.max_p99_ms),
        if args.sets.is_empty() { "the defaults".to_string() } else { format!("`{}`", args.sets.join("`, `")) },
        args.compare.join("`, `")
    );
    for (rate, [a, b]) in &rows {
        t.push_str(&format!(
            "| {rate:.0} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {:.2} | {:.2} | {} |\n",
            a.report.accepted_rate,
            a.report.latency_ms.p99,
            per_event(a),
            a.verdict(),
            b.report.accepted_rate,
            b.report.latency_ms.p99,
            per_event(b),
            b.verdict()
        ));
    }
    let best = |i: usize| highest(rows.iter().filter(|(_, s)| s[i].kept_up).map(|(r, _)| *r));
    // CPU per event compared only where both kept up (where one fell behind, its
    // queueing costs CPU the other did not pay).
    let both: Vec<(f64, f64)> =
        rows.iter().filter(|(_, s)| s[0].kept_up && s[1].kept_up).map(|(_, s)| (per_event(&s[0]), per_event(&s[1]))).collect();
    let mean = |f: fn(&(f64, f64)) -> f64| both.iter().map(f).sum::<f64>() / both.len() as f64;
    let fmt = |r: Option<f64>| r.map_or("none".into(), |r| format!("{r:.0}"));
    let mut summary = format!("(x) A/B, highest rate kept up: A {} · B {} events/s", fmt(best(0)), fmt(best(1)));
    if let (Some(a), Some(b)) = (best(0), best(1)) {
        summary.push_str(&format!("   B/A = {:.2}", b / a));
    }
    summary.push('\n');
    if !both.is_empty() {
        let (a, b) = (mean(|p| p.0), mean(|p| p.1));
        summary.push_str(&format!(
            "(x) A/B, chronosd CPU per accepted event (mean of the {} rates both kept up): A {a:.2} µs · B {b:.2} µs   B/A = {:.2}\n",
            both.len(),
            b / a
        ));
    }
    t.push_str(&format!("\n```\n{summary}```\n"));
    Ok((t, summary))
}

/// Where loadgen sends and whose CPU and memory count as chronosd's.
struct Target {
    pid: i32,
    url: String,
}

/// Steps the offered rate: up by 1.5× while chronosd keeps up (down by 2× while it
/// does not), then halves the gap twice; then, when no step met the p99 bound,
/// steps down from the lowest rate tried. Returns the steps, the highest rate
/// kept up and the highest rate that passed.
fn ladder(args: &Args, bin_dir: &Path, stack: &PerfStack, target: &Target, start_rate: f64) -> anyhow::Result<(Vec<Step>, Option<f64>, Option<f64>)> {
    let mut steps: Vec<Step> = Vec::new();
    let run = |rate: f64, steps: &mut Vec<Step>| -> anyhow::Result<bool> {
        if !steps.is_empty() {
            std::thread::sleep(Duration::from_secs(2));
        }
        let s = step(args, bin_dir, stack, target, rate, args.step_secs, None)?;
        let kept_up = s.kept_up;
        steps.push(s);
        Ok(kept_up)
    };
    // Throughput: up by 1.5× while chronosd keeps up (down by 2× while it does not),
    // then halve the gap twice.
    let mut rate = start_rate;
    let (mut lo, mut hi): (Option<f64>, Option<f64>) = (None, None);
    loop {
        if run(rate, &mut steps)? {
            lo = Some(rate);
            if hi.is_some() || rate > 5e6 {
                break;
            }
            rate *= 1.5;
        } else {
            hi = Some(rate);
            if lo.is_some() || rate < 2_000.0 {
                break;
            }
            rate /= 2.0;
        }
    }
    if let (Some(mut l), Some(mut h)) = (lo, hi) {
        for _ in 0..2 {
            let mid = (l + h) / 2.0;
            if run(mid, &mut steps)? {
                l = mid;
            } else {
                h = mid;
            }
        }
        lo = Some(l);
    }
    // Latency: when no step met the p99 bound, step down from the lowest rate tried.
    let mut low = steps.iter().map(|s| s.report.rate).fold(f64::MAX, f64::min);
    for _ in 0..3 {
        if steps.iter().any(|s| s.pass) || low < 1_000.0 {
            break;
        }
        low /= 2.0;
        run(low, &mut steps)?;
    }
    let best_pass = highest(steps.iter().filter(|s| s.pass).map(|s| s.report.rate));
    Ok((steps, lo, best_pass))
}

/// One loadgen run at `rate` against `target`, with chronosd's RSS and everyone's CPU.
/// With `verify`, the CPU counts until the last batch was loaded (loadgen's send
/// time and its wait), not the row count loadgen then runs on PostgreSQL.
fn step(args: &Args, bin_dir: &Path, stack: &PerfStack, target: &Target, rate: f64, secs: f64, verify: Option<&str>) -> anyhow::Result<Step> {
    let pid = target.pid;
    let broker_pids = stack.broker_pids();
    let postmaster = stack.pg.spec.postmaster_pid().unwrap_or(-1);
    // chronosd, loadgen, the brokers, PostgreSQL, the whole machine.
    let cpu_now = move |loadgen: i32| {
        let broker = broker_pids.iter().map(|p| stack::cpu_secs(*p)).sum::<f64>();
        [stack::cpu_secs(pid), stack::cpu_secs(loadgen), broker, stack::children_cpu_secs(postmaster), busy_secs()]
    };
    let produce0 = produce_counters(&target.url);
    let mut cmd = Command::new(bin_dir.join("loadgen"));
    cmd.args(["--rate", &format!("{rate:.0}"), "--duration", &secs.to_string(), "--batch-size", &args.batch_size.to_string()])
        .args(["--connections", &args.connections.to_string(), "--target", &target.url, "--key", KEY, "--origin", ORIGIN])
        .args(["--json", "--quiet"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(url) = verify {
        cmd.args(["--verify", url, "--verify-timeout", "300"]);
    }
    let cpu0 = cpu_now(-1); // loadgen: 0 (not started)
    let rusage0 = stack::waited_children_cpu_secs();
    let t = Instant::now();
    let child = cmd.spawn().context("running loadgen")?;
    let loadgen = child.id() as i32;
    let stop = Arc::new(AtomicBool::new(false));
    // chronosd's highest RSS, and everyone's CPU every 200 ms (seconds since the start).
    let sampler = {
        let stop = stop.clone();
        let cpu_now = cpu_now.clone();
        std::thread::spawn(move || {
            let (mut max, mut samples) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                max = max.max(stack::rss_kib(pid));
                samples.push((t.elapsed().as_secs_f64(), cpu_now(loadgen)));
                std::thread::sleep(Duration::from_millis(200));
            }
            (max, samples)
        })
    };
    let output = child.wait_with_output().context("running loadgen")?;
    let wall = t.elapsed().as_secs_f64();
    let mut cpu1 = cpu_now(-1);
    cpu1[1] = stack::waited_children_cpu_secs() - rusage0;
    let records_per_request = match (produce0, produce_counters(&target.url)) {
        (Some((m0, r0)), Some((m1, r1))) if r1 > r0 => Some((m1 - m0) / (r1 - r0)),
        _ => None,
    };
    stop.store(true, Ordering::Relaxed);
    let (rss_kib, samples) = sampler.join().unwrap_or_default();
    let rss_mib = rss_kib as f64 / 1024.0;
    let report: Report = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("loadgen output: {}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))?;
    // The window: the whole run, or until the last batch was loaded.
    let (secs, cpu1) = match &report.verify {
        Some(v) => {
            let loaded = report.elapsed_secs + v.wait_secs;
            match samples.iter().rev().find(|(at, _)| *at <= loaded) {
                Some((at, c)) if *at > 0.0 => (*at, *c),
                _ => (wall, cpu1),
            }
        }
        None => (wall, cpu1),
    };
    let c = |i: usize| (cpu1[i] - cpu0[i]).max(0.0) / secs;
    let mut cpu = Cpu { chronosd: c(0), loadgen: c(1), broker: c(2), postgres: c(3), other: 0.0 };
    cpu.other = (c(4) - cpu.chronosd - cpu.loadgen - cpu.broker - cpu.postgres).max(0.0);
    let st = &report.statuses;
    let all_ok = st.ok == report.requests;
    let kept_up = all_ok && report.accepted_rate >= 0.97 * rate;
    let pass = kept_up && report.latency_ms.p99 <= args.max_p99_ms;
    eprintln!(
        "  offered {rate:>9.0} → accepted {:>9.0} events/s · p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.1} ms · non-2xx {} · RSS {rss_mib:.0} MiB · CPU chronosd {:.2} loadgen {:.2} broker {:.2} pg {:.2} other {:.2} · records/request {} · {}",
        report.accepted_rate, report.latency_ms.p50, report.latency_ms.p99, report.latency_ms.p999, report.latency_ms.max,
        report.requests - st.ok, cpu.chronosd, cpu.loadgen, cpu.broker, cpu.postgres, cpu.other,
        records_per_request.map_or("–".into(), |v| format!("{v:.1}")),
        if pass { "pass" } else if kept_up { "kept up, p99 over" } else { "FELL BEHIND" }
    );
    Ok(Step { report, rss_mib, cpu, cpu_window_secs: secs, records_per_request, kept_up, pass })
}

/// chronosd's records sent and produce requests so far (librdkafka statistics, refreshed
/// every `kafka.statistics_interval_ms`), from its /metrics.
fn produce_counters(url: &str) -> Option<(f64, f64)> {
    let addr = url.strip_prefix("http://")?.parse().ok()?;
    let (status, body) = chronos::probe::http_get(addr, "/metrics", Duration::from_secs(2)).ok()?;
    if status != 200 {
        return None;
    }
    let value = |name: &str| body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok());
    Some((value(chronos::telemetry::KAFKA_TX_MESSAGES)?, value(chronos::telemetry::KAFKA_PRODUCE_REQUESTS)?))
}

/// Busy CPU seconds of the whole machine (all but idle and iowait).
fn busy_secs() -> f64 {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    if f.len() < 5 {
        return 0.0;
    }
    (f.iter().take(8).sum::<f64>() - f[3] - f[4]) / ticks
}

/// What one event cost each process in an end-to-end run (its CPU until the
/// last batch was loaded, over the events), and the rate the machine's CPUs
/// allow at those costs.
fn cpu_budget(s: &Step, e2e: f64) -> String {
    let per = |cores: f64| cores * s.cpu_window_secs / s.report.events_accepted.max(1) as f64 * 1e6;
    let c = &s.cpu;
    let parts = [("chronosd", c.chronosd), ("PostgreSQL", c.postgres), ("broker", c.broker), ("loadgen", c.loadgen), ("other", c.other)];
    let total: f64 = parts.iter().map(|(_, v)| per(*v)).sum();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let bound = cpus / total * 1e6;
    let list = parts.iter().map(|(n, v)| format!("{n} {:.2}", per(*v))).collect::<Vec<_>>().join(", ");
    format!(
        "(d) CPU per event, µs: {list} = {total:.2}; busy {:.2} of {cpus} cores; {cpus} cores at that cost: {bound:.0} events/s   (d)/that = {:.2}\n",
        parts.iter().map(|(_, v)| v).sum::<f64>(),
        e2e / bound
    )
}

fn table(steps: &[Step], e2e: bool) -> String {
    let mut t = String::from(
        "| offered ev/s | accepted ev/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | non-2xx | RSS MiB | CPU chronosd | loadgen | broker | postgres | other | records / produce request |",
    );
    t.push_str(if e2e { " end-to-end ev/s | missing | duplicated |\n" } else { " pass |\n" });
    t.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    t.push_str(if e2e { "---:|---:|---:|\n" } else { ":-:|\n" });
    for s in steps {
        let r = &s.report;
        let l = &r.latency_ms;
        t.push_str(&format!(
            "| {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            r.rate,
            r.accepted_rate,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            r.requests - r.statuses.ok,
            s.rss_mib,
            s.cpu.chronosd,
            s.cpu.loadgen,
            s.cpu.broker,
            s.cpu.postgres,
            s.cpu.other,
            s.records_per_request.map_or("–".into(), |v| format!("{v:.1}"))
        ));
        match (&r.verify, e2e) {
            (Some(v), true) => {
                t.push_str(&format!(" {:.0} | {} | {} |\n", r.events_accepted as f64 / (r.elapsed_secs + v.wait_secs), v.missing, v.duplicated))
            }
            _ => t.push_str(&format!(" {} |\n", s.verdict())),
        }
    }
    t
}

fn machine(brokers: usize) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()).unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "Machine: {} CPUs ({model}), {:.1} GiB memory, Linux {}; chronosd, loadgen, Apache Kafka {} ({brokers} node{}, KRaft, Java {}) and PostgreSQL on the same CPUs.",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        mem / 1024.0 / 1024.0,
        kernel.trim(),
        chronos::stack::broker::KafkaInstall::find().map(|i| i.version).unwrap_or_else(|_| "?".into()),
        if brokers == 1 { "" } else { "s" },
        java_version()
    )
}

fn java_version() -> String {
    let out = Command::new("java").arg("-version").output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).unwrap_or_default();
    out.split('"').nth(1).unwrap_or("?").to_string()
}

fn date() -> String {
    Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
