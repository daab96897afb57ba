//! What enrichment costs per batch (it runs once per batch, at receipt):
//! - `agent/cached`: a user agent seen before (the usual case: one site's
//!   visitors send a few hundred distinct strings);
//! - `agent/uncached`: a user agent never seen (bot patterns + woothee parse);
//! - `isbot` and `woothee` alone, on the same user agents;
//! - `uaparser` (the ua-parser project's regexes.yaml, in Rust), the rival to
//!   woothee, on the same user agents, with the fields each one finds printed
//!   side by side first. It needs the file: `perf/enrichment` fetches it (npm
//!   package `uap-core`) and passes its path in `UAP_REGEXES`; without it the
//!   bench says so and times the rest.
//!
//! The receipt bench's `read_batch/50_events` includes enrichment (cached).
//!
//! Method and results: perf/enrichment.md.

use chronos::enrich::Enricher;
use criterion::{criterion_group, criterion_main, Criterion};

const UAS: [&str; 6] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
];

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("agent");
    let cached = Enricher::new(1000);
    let mut i = 0usize;
    g.bench_function("cached", |b| {
        b.iter(|| {
            i += 1;
            cached.agent(Some(UAS[i % UAS.len()]), false)
        })
    });
    // A fresh string each time (a token with a counter appended to each of the six
    // in turn): never in the cache.
    let uncached = Enricher::new(16);
    let mut n = 0u64;
    g.bench_function("uncached", |b| {
        b.iter_batched(
            || {
                n += 1;
                format!("{} r/{n}", UAS[(n as usize) % UAS.len()])
            },
            |ua| uncached.agent(Some(&ua), false),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
    let bots = isbot::Bots::default();
    c.bench_function("isbot", |b| {
        b.iter(|| {
            i += 1;
            bots.is_bot(UAS[i % UAS.len()])
        })
    });
    let parser = woothee::parser::Parser::new();
    c.bench_function("woothee", |b| {
        b.iter(|| {
            i += 1;
            parser.parse(UAS[i % UAS.len()]).map(|r| r.name.len())
        })
    });
}

/// uaparser next to woothee: what each reads from the six user agents, then
/// uaparser's parse time.
fn rival(c: &mut Criterion) {
    use uaparser::Parser as _;
    let Some(path) = std::env::var_os("UAP_REGEXES") else {
        eprintln!("uaparser: not timed (UAP_REGEXES, the path of uap-core's regexes.yaml, is not set; perf/enrichment sets it)");
        return;
    };
    let built = std::time::Instant::now();
    let uap = uaparser::UserAgentParser::builder()
        .build_from_yaml(path.to_str().expect("UAP_REGEXES is UTF-8"))
        .unwrap_or_else(|e| panic!("uaparser: {}: {e:?}", path.to_string_lossy()));
    eprintln!("uaparser: regexes.yaml compiled in {:.0} ms", built.elapsed().as_secs_f64() * 1e3);
    let woothee = woothee::parser::Parser::new();
    for ua in UAS {
        let w = woothee.parse(ua);
        let u = uap.parse(ua);
        eprintln!(
            "{ua}\n  woothee:  {} {} · {} {} · {}\n  uaparser: {} {} · {} {} · {}",
            w.as_ref().map_or("-", |w| w.name),
            w.as_ref().map_or("-", |w| w.version),
            w.as_ref().map_or("-", |w| w.os),
            w.as_ref().map_or("-", |w| w.os_version.as_ref()),
            w.as_ref().map_or("-", |w| w.category),
            u.user_agent.family,
            u.user_agent.major.as_deref().unwrap_or("-"),
            u.os.family,
            u.os.major.as_deref().unwrap_or("-"),
            u.device.family
        );
    }
    let mut i = 0usize;
    c.bench_function("uaparser", |b| {
        b.iter(|| {
            i += 1;
            uap.parse(UAS[i % UAS.len()]).user_agent.family.len()
        })
    });
}

criterion_group!(benches, bench, rival);
criterion_main!(benches);
