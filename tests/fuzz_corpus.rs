//! Fuzzing in the ordinary test build (no nightly, no second build of the
//! dependency tree): every file of the committed corpus of both cargo-fuzz
//! targets, then generated hostile inputs (deep, wide, escape-heavy, huge,
//! gzipped, mutated) for a bounded time, through the same entry points
//! (`chronos::fuzz::{receipt, decode}`), on a thread with the production
//! stack. Fails on any panic; a stack overflow aborts the test binary.
//!
//! `FUZZ_SECS` (default 20) is the generated run's time for both targets
//! together (they run side by side, so about half of it in wall time);
//! `FUZZ_SEED` (default 27; `random` for a new one) picks the inputs.
//! Figures: perf/fuzz.md.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chronos::fuzz::{self, Hostile, Target};

fn corpus_dir(t: Target) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus").join(t.name())
}

fn corpus(t: Target) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(t)).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

/// Says something even when the harness captures output (and when an abort
/// would lose what it captured).
fn note(line: &str) {
    let _ = writeln!(std::io::stderr(), "fuzz_corpus: {line}");
}

/// Runs `t` on each input `next` yields until it yields `None`, on the
/// production stack: how many, the time spent in the target, and the panics
/// by input name (each input kept under target/ to repeat).
fn run_all(t: Target, mut next: impl FnMut() -> Option<(String, Vec<u8>)> + Send) -> (usize, Duration, Vec<String>) {
    // The panic message is printed by the hook; the list says which input.
    fuzz::on_production_stack(move || {
        let (mut runs, mut busy, mut failed) = (0, Duration::ZERO, Vec::new());
        while let Some((name, data)) = next() {
            runs += 1;
            let started = Instant::now();
            let outcome = catch_unwind(AssertUnwindSafe(|| t.run(&data)));
            busy += started.elapsed();
            if outcome.is_err() {
                let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-{}-{}", t.name(), name.replace('/', "_")));
                let _ = std::fs::write(&keep, &data);
                failed.push(format!("{name} (kept as {})", keep.display()));
            }
        }
        (runs, busy, failed)
    })
    .expect("the runner does not panic")
}

fn committed_corpus_passes(t: Target) {
    let files = corpus(t);
    assert!(
        files.len() >= 20,
        "{}: only {} files; write the seeds (FUZZ_WRITE_SEEDS=1, see the_corpus_holds_every_seed)",
        corpus_dir(t).display(),
        files.len()
    );
    let mut queue = files.into_iter();
    let started = Instant::now();
    let (runs, _, failed) = run_all(t, move || {
        let path = queue.next()?;
        let data = std::fs::read(&path).unwrap();
        Some((path.file_name().unwrap().to_string_lossy().into_owned(), data))
    });
    note(&format!("{}: {runs} corpus files in {:.2} s", t.name(), started.elapsed().as_secs_f64()));
    assert!(failed.is_empty(), "{}: corpus inputs that panic: {failed:#?}", t.name());
}

fn generated_inputs_pass(t: Target) {
    let secs: f64 = std::env::var("FUZZ_SECS").ok().map(|s| s.parse().expect("FUZZ_SECS is a number of seconds")).unwrap_or(20.0);
    // A fixed seed unless asked: CI sees the same inputs each run (as many
    // as the time allows); `FUZZ_SEED=random` explores.
    let seed: u64 = match std::env::var("FUZZ_SEED").as_deref() {
        Err(_) => 27,
        Ok("random") => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
        Ok(s) => s.parse().expect("FUZZ_SEED is a number or `random`"),
    };
    note(&format!("{}: generated inputs from FUZZ_SEED={seed}", t.name()));
    let deadline = Duration::from_secs_f64(secs / 2.0);
    let mut g = Hostile::new(seed);
    let (started, mut i, mut bytes) = (Instant::now(), 0u64, 0usize);
    let (runs, busy, failed) = run_all(t, || {
        if started.elapsed() >= deadline {
            return None;
        }
        i += 1;
        let data = g.input(t);
        bytes += data.len();
        Some((format!("seed{seed}-{i}"), data))
    });
    let took = started.elapsed().as_secs_f64();
    note(&format!(
        "{}: {runs} generated inputs ({:.1} MB) in {took:.1} s: {:.0} exec/s ({:.1} s in the target, the rest generating)",
        t.name(),
        bytes as f64 / 1e6,
        runs as f64 / took,
        busy.as_secs_f64()
    ));
    assert!(runs > 0);
    assert!(failed.is_empty(), "{}: generated inputs that panic (FUZZ_SEED={seed}): {failed:#?}", t.name());
}

#[test]
fn receipt_corpus() {
    committed_corpus_passes(Target::Receipt);
}

#[test]
fn decode_corpus() {
    committed_corpus_passes(Target::Decode);
}

#[test]
fn receipt_generated() {
    generated_inputs_pass(Target::Receipt);
}

#[test]
fn decode_generated() {
    generated_inputs_pass(Target::Decode);
}

/// The committed corpus holds every seed the generator names (a seed whose
/// bytes changed with the catalog is still a seed; a missing one is not).
/// With `FUZZ_WRITE_SEEDS=1` the seeds are (re)written first, then checked:
/// `FUZZ_WRITE_SEEDS=1 cargo test --test fuzz_corpus the_corpus_holds_every_seed`.
#[test]
fn the_corpus_holds_every_seed() {
    let write = std::env::var_os("FUZZ_WRITE_SEEDS").is_some_and(|v| v == "1");
    for t in Target::ALL {
        if write {
            std::fs::create_dir_all(corpus_dir(t)).unwrap();
            for (name, data) in fuzz::seeds(t) {
                std::fs::write(corpus_dir(t).join(name), data).unwrap();
            }
        }
        let missing: Vec<String> = fuzz::seeds(t).into_iter().map(|(name, _)| name).filter(|name| !corpus_dir(t).join(name).is_file()).collect();
        assert!(missing.is_empty(), "{}: seeds missing from the corpus: {missing:?}; write them with FUZZ_WRITE_SEEDS=1", t.name());
    }
}
