//! `import_perf [events]`: the historical import's rate on the real stack.
//! Writes a file of `events` event lines (default 1,000,000; every built-in
//! type, 50 events per session, times over the last 20 days), then with
//! chronosd (release, loaders on) running against Apache Kafka and
//! PostgreSQL:
//! 1. imports it (`chronos::import::send::run`, the code `chronos import`
//!    runs): read, check, produce, acknowledged; then until the loaders
//!    stored every batch;
//! 2. checks PostgreSQL holds each event exactly once (count and distinct
//!    (batch id, position));
//! 3. imports it again: every batch a duplicate, nothing stored twice.
//!
//! Method and results: perf/import.md.

use std::io::{BufReader, BufWriter, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chronos::import::send::{run, Options};
use chronos::rt::block_on;
use chronos_bench::stack::{children_cpu_secs, cpu_secs, port, Chronosd, PerfStack};

fn main() -> Result<()> {
    let events: usize = std::env::args().nth(1).map(|a| a.parse().context("events: a number")).transpose()?.unwrap_or(1_000_000);
    let bin_dir = std::env::current_exe()?.parent().context("the binary's directory")?.to_path_buf();
    let stack = PerfStack::start()?;
    let overrides = ["retention.raw_days=0".to_string(), "import.max_past_days=30".to_string(), "kafka.partitions=2".to_string()];
    let (config, text) = stack.config(port(), true, &overrides)?;
    let chronosd = Chronosd::start(&bin_dir, stack.dir.path(), &config, &text)?;
    let file = stack.dir.path().join("events.jsonl");
    let bytes = write_events(&file, events)?;
    println!("{events} event lines, {:.1} MB; chronosd {} (loaders on), PostgreSQL {}", bytes as f64 / 1e6, chronosd.url(), stack.pg.url());

    let postmaster = stack.pg.spec.postmaster_pid().unwrap_or(-1);
    let (pg_cpu, d_cpu, own_cpu) = (children_cpu_secs(postmaster), cpu_secs(chronosd.pid()), cpu_secs(std::process::id() as i32));
    let opts = Options { key_id: "import".into(), dry_run: false, wait: Some(Duration::from_secs(1800)) };
    let started = Instant::now();
    let report = block_on(run(&config, BufReader::with_capacity(1 << 20, std::fs::File::open(&file)?), &opts, |s| {
        eprint!("\r{} lines read, {} accepted, {:.0} s", s.lines, s.accepted, started.elapsed().as_secs_f64());
    }))?;
    eprintln!();
    let s = &report.summary;
    anyhow::ensure!(s.accepted as usize == events && s.rejected == 0 && s.duplicate_batches == 0, "unexpected summary: {s:?}");
    let produced = report.produced_in.as_secs_f64();
    let stored = report.stored_in.context("waited")?.as_secs_f64();
    let (pg_cpu, d_cpu, own_cpu) =
        (children_cpu_secs(postmaster) - pg_cpu, cpu_secs(chronosd.pid()) - d_cpu, cpu_secs(std::process::id() as i32) - own_cpu);

    let (rows, distinct) = block_on(async {
        let c = chronos::store::connect(&config.postgres.url).await?;
        let mut rows = 0i64;
        let mut distinct = 0i64;
        for t in ["pageviews", "clicks", "link_clicks", "mouse_moves", "key_presses", "form_submissions"] {
            let r = c.query_one(&format!("SELECT count(*), count(DISTINCT (batch_id, position)) FROM events.{t}"), &[]).await?;
            rows += r.get::<_, i64>(0);
            distinct += r.get::<_, i64>(1);
        }
        anyhow::Ok((rows, distinct))
    })?;
    anyhow::ensure!(rows == events as i64 && distinct == rows, "PostgreSQL holds {rows} rows, {distinct} distinct, for {events} events");

    let again_started = Instant::now();
    let again =
        block_on(run(&config, BufReader::with_capacity(1 << 20, std::fs::File::open(&file)?), &Options { wait: None, ..opts.clone() }, |_| {}))?;
    let again_secs = again_started.elapsed().as_secs_f64();
    anyhow::ensure!(again.summary.accepted == 0 && again.summary.duplicate_events as usize == events, "second run: {:?}", again.summary);
    std::thread::sleep(Duration::from_secs(3));
    let after: i64 = block_on(async {
        let c = chronos::store::connect(&config.postgres.url).await?;
        let r = c.query_one("SELECT (SELECT count(*) FROM events.pageviews) + (SELECT count(*) FROM events.clicks) + (SELECT count(*) FROM events.link_clicks) + (SELECT count(*) FROM events.mouse_moves) + (SELECT count(*) FROM events.key_presses) + (SELECT count(*) FROM events.form_submissions)", &[]).await?;
        anyhow::Ok(r.get::<_, i64>(0))
    })?;
    anyhow::ensure!(after == rows, "the second run stored more: {after} rows");

    let n = events as f64;
    println!("| step | seconds | events/s |");
    println!("|---|---|---|");
    println!("| read, check, produce (acknowledged), {} batches | {produced:.1} | {:.0} |", s.batches, n / produced);
    println!("| … until the loaders stored every batch (end to end) | {stored:.1} | {:.0} |", n / stored);
    println!("| second run: every batch a duplicate, nothing sent | {again_secs:.1} | {:.0} |", n / again_secs);
    println!();
    println!("PostgreSQL: {rows} rows, {distinct} distinct (batch id, position): exact.");
    println!(
        "CPU per event over the first run: import {:.2} µs, chronosd (loaders) {:.2} µs, PostgreSQL {:.2} µs",
        own_cpu * 1e6 / n,
        d_cpu * 1e6 / n,
        pg_cpu * 1e6 / n
    );
    drop(chronosd);
    Ok(())
}

/// `n` event lines, 50 per session (one page per session), times over the last
/// 20 days in file order; returns the bytes written.
fn write_events(path: &std::path::Path, n: usize) -> Result<u64> {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let span = 20 * 86_400_000i64;
    let mut bytes = 0u64;
    for i in 0..n {
        let t = now - span + (i as i64) * span / n as i64;
        let s = i / 50;
        let common = format!(
            r#""time":{t},"session_id":"imp_{s:08x}","page":{{"url":"https://shop.example.com/p/{}","title":"Product {} | Shop","language":"en-GB"}},"client_ip":"198.51.{}.{}""#,
            s % 4096,
            s % 4096,
            s % 250,
            s / 250 % 250
        );
        let line = match i % 6 {
            0 => format!(r#"{{"type":"pageviews",{common},"navigation":"navigate","referrer":"https://search.example.org/?q={}"}}"#, s % 97),
            1 => format!(
                r#"{{"type":"clicks",{common},"element":"BUTTON","buttons":1,"x":{},"y":{},"selector":"main > div.product > button"}}"#,
                i % 1280,
                i % 800
            ),
            2 => format!(r#"{{"type":"link_clicks",{common},"link_text":"Docs","target_url":"https://shop.example.com/docs"}}"#),
            3 => format!(r#"{{"type":"mouse_moves",{common},"x":{},"y":{}}}"#, i % 1280, i % 800),
            4 => format!(r#"{{"type":"key_presses",{common},"key":null,"element":"INPUT"}}"#),
            _ => format!(r#"{{"type":"form_submissions",{common},"form_id":"signup","action":"/join","fields":["email","plan"]}}"#),
        };
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
        bytes += line.len() as u64 + 1;
        if i % 100_000 == 0 {
            eprint!("\rwriting {i} of {n} lines");
        }
    }
    eprintln!("\rwrote {n} lines               ");
    out.flush()?;
    Ok(bytes)
}
