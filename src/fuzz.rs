//! What the fuzz targets (`tests/fuzz`) and the corpus test (`tests/fuzz_corpus.rs`)
//! run: client bytes through receipt, record bytes through the loaders' decode,
//! each checking what must hold for any input; and a seeded generator of
//! hostile JSON (deep, wide, escape-heavy, huge) for seeds and bounded runs.
//! Nothing in the daemon calls it. Method and figures: perf/fuzz.md.

use std::io::Write;
use std::sync::{Arc, OnceLock};

use serde_json::{json, Value};

use crate::catalog::AttrType;
use crate::config::Config;
use crate::http::body::Encoding;
use crate::http::receipt::{read_batch, Accepted, ReceiptShared, Receive};
use crate::load::decode::{decode_batch, decode_dead_letter, DeadLetter, TimePolicy};
use crate::store::internals::{storable_json, storable_text};
use crate::telemetry::Metrics;

/// The write key the fuzzed receipt knows (no `Origin` needed).
pub const KEY: &str = "wk_fuzz_0123456789abcdef";
/// The stack of the threads receipt and the loaders run on (Rust's default
/// for spawned threads, which actix's arbiters use): the fuzzed code must fit.
pub const STACK_BYTES: usize = 2 << 20;
/// The largest input worth trying: `http.max_decompressed_bytes` by default.
pub const MAX_INPUT: usize = 1 << 20;
/// Receipt's clock for every fuzzed body.
pub const RECEIVED_AT: i64 = 1_764_000_000_000;

/// The production defaults, with one write key and no rate limit in the way.
pub fn config() -> Config {
    Config::from_toml(&format!(
        "[limits]\nper_key_per_sec = 1000000000\nper_key_burst = 1000000000\n\
         [[keys]]\nid = \"f\"\nkey = \"{KEY}\"\norigins = [\"example.com\"]\nallow_no_origin = true\n"
    ))
    .expect("the fuzz config is valid")
}

struct Fixture {
    receipt: ReceiptShared,
    policy: TimePolicy,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let c = config();
        let policy = TimePolicy { max_past_ms: c.load.max_past_secs as i64 * 1000, max_future_ms: c.load.max_future_secs as i64 * 1000 };
        Fixture { receipt: ReceiptShared::from_config(&c, Arc::new(Metrics::new())), policy }
    })
}

/// Any body, read as sent plain and as sent gzipped: receipt answers Ok or an
/// error, never panics; what it accepts the loader decodes whole, and its
/// dead letter decodes to one row per rejected event.
pub fn receipt(data: &[u8]) {
    let f = fixture();
    for encoding in [Encoding::Identity, Encoding::Gzip] {
        let msg = Receive {
            body: data.to_vec(),
            encoding,
            origin: None,
            client_ip: "203.0.113.7".parse().expect("an address"),
            user_agent: None,
            received_at: RECEIVED_AT,
        };
        if let Ok(accepted) = read_batch(&f.receipt, msg) {
            check_accepted(f, &accepted);
        }
    }
}

fn check_accepted(f: &Fixture, a: &Accepted) {
    match &a.batch.record {
        Some(record) => {
            let d = decode_batch(&mut record.clone(), &f.receipt.catalog, f.policy)
                .unwrap_or_else(|e| panic!("the loader refuses a record receipt made: {e}"));
            assert!(d.dead.is_empty(), "the loader sets aside events receipt accepted: {:?}", d.dead);
            assert_eq!(d.events, a.summary.accepted, "events loaded ≠ events accepted");
        }
        None => assert_eq!(a.summary.accepted, 0, "accepted events but no record"),
    }
    match &a.batch.dead_letter {
        Some(letter) => {
            let rows = decode_dead_letter(&mut letter.clone()).unwrap_or_else(|e| panic!("the loader refuses a dead letter receipt made: {e}"));
            assert_eq!(rows.len(), a.summary.rejected, "dead-letter rows ≠ events rejected");
            rows.iter().for_each(check_storable);
        }
        None => assert_eq!(a.summary.rejected, 0, "rejected events but no dead letter"),
    }
}

/// Any Kafka record value, through the loaders' decode of an events record
/// (walk and COPY encoding) and of a dead-letter record: Ok or an error,
/// never a panic; every dead letter it makes can be stored.
pub fn decode(data: &[u8]) {
    let f = fixture();
    if let Ok(d) = decode_batch(&mut data.to_vec(), &f.receipt.catalog, f.policy) {
        d.dead.iter().for_each(check_storable);
    }
    if let Ok(rows) = decode_dead_letter(&mut data.to_vec()) {
        rows.iter().for_each(check_storable);
    }
}

/// The dead letter's text columns hold no NUL and its jsonb columns are JSON
/// with no NUL: what PostgreSQL refuses with 22021 / 22P05.
fn check_storable(letter: &DeadLetter) {
    assert!(!storable_text(&letter.reason).contains('\0'), "a NUL reaches the reason column");
    for text in [&letter.event, &letter.context].into_iter().flatten() {
        let stored = storable_json(text);
        let v: Value = serde_json::from_str(&stored).unwrap_or_else(|e| panic!("jsonb column is not JSON ({e}): {stored:?}"));
        assert!(!holds_nul(&v), "a NUL reaches a jsonb column: {stored:?}");
    }
}

fn holds_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(holds_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// Runs `f` on a thread with the production stack, so recursion that would
/// abort the daemon aborts here too (an unwinding panic comes back as `Err`).
pub fn on_production_stack<T: Send>(f: impl FnOnce() -> T + Send) -> std::thread::Result<T> {
    std::thread::scope(|s| std::thread::Builder::new().stack_size(STACK_BYTES).spawn_scoped(s, f).expect("spawn a thread").join())
}

/// The two fuzz targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Receipt,
    Decode,
}

impl Target {
    pub const ALL: [Target; 2] = [Target::Receipt, Target::Decode];

    /// The cargo-fuzz target's name, also its corpus folder.
    pub fn name(self) -> &'static str {
        match self {
            Target::Receipt => "receipt",
            Target::Decode => "decode",
        }
    }

    /// Feeds one input to this target's entry point.
    pub fn run(self, data: &[u8]) {
        match self {
            Target::Receipt => receipt(data),
            Target::Decode => decode(data),
        }
    }
}

/// A seeded source of hostile inputs (xorshift64*: the same seed gives the
/// same inputs, so a failure names its seed and reproduces).
#[derive(Debug, Clone)]
pub struct Hostile {
    state: u64,
}

impl Hostile {
    pub fn new(seed: u64) -> Self {
        Hostile { state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A size skewed small: mostly a few, sometimes thousands.
    fn size(&mut self, max: usize) -> usize {
        let bits = self.below(usize::BITS as usize - max.leading_zeros() as usize + 1);
        self.below((1usize << bits).min(max) + 1)
    }

    /// An input for `target`: deep, wide, escape-heavy, huge, gzipped or
    /// byte-mutated variants of valid batches (receipt) or of the records
    /// receipt makes from them (decode).
    pub fn input(&mut self, target: Target) -> Vec<u8> {
        let valid = match target {
            Target::Receipt => self.batch(),
            Target::Decode => self.record(),
        };
        let out = match self.below(8) {
            0 => valid,
            1 => self.deepen(&valid),
            2 => self.widen(&valid),
            3 | 4 => self.taint_strings(&valid),
            5 => self.huge_string(&valid),
            6 => self.mutate(valid),
            _ => {
                let mut v = self.taint_strings(&valid);
                v = self.deepen(&v);
                self.mutate(v)
            }
        };
        let mut out = if target == Target::Receipt && self.below(6) == 0 { gzip(&out) } else { out };
        out.truncate(MAX_INPUT);
        out
    }

    /// A batch the fuzz config accepts (a few events may be rejected).
    pub fn batch(&mut self) -> Vec<u8> {
        let n = self.size(2000);
        self.batch_of(n)
    }

    fn batch_of(&mut self, events: usize) -> Vec<u8> {
        let types = fixture().receipt.catalog.types();
        let events: Vec<Value> = (0..events)
            .map(|i| {
                let ty = &types[self.below(types.len())];
                let mut e = vec![json!(ty.name.as_ref()), json!(RECEIVED_AT - 5_000 + i as i64)];
                for a in &ty.attributes {
                    e.push(match a.ty {
                        _ if a.nullable && self.below(4) == 0 => Value::Null,
                        AttrType::Text => json!(self.word(a.max_len.min(40))),
                        AttrType::Int => json!(self.within(a.min, a.max) as i64),
                        AttrType::Float => json!(self.within(a.min, a.max)),
                        AttrType::Bool => json!(self.below(2) == 1),
                        AttrType::TextList => json!((0..self.below(a.max_items.min(4) + 1)).map(|_| self.word(10)).collect::<Vec<_>>()),
                    });
                }
                Value::Array(e)
            })
            .collect();
        let batch = format!("0b6f5e2c-3f0e-4bb1-9a57-{:012x}", self.next() & 0xffff_ffff_ffff);
        json!({
            "v": 1, "key": KEY, "batch": batch, "sent_at": RECEIVED_AT - 1_000,
            "session": format!("s-{}", self.word(12).replace(' ', "_")),
            "page": {"url": "https://example.com/cart?step=2", "title": self.word(30), "language": "en-GB"},
            "events": events,
        })
        .to_string()
        .into_bytes()
    }

    /// An events record as receipt writes it, or its dead letter (a batch
    /// with one event of an unknown type, so it always has one).
    pub fn record(&mut self) -> Vec<u8> {
        // One place left for the unknown event under `http.max_events_per_batch`.
        let n = self.size(1999);
        let mut batch: Value = serde_json::from_slice(&self.batch_of(n)).expect("a batch is JSON");
        batch["events"].as_array_mut().expect("events").push(json!(["no_such_type", RECEIVED_AT, 1]));
        let msg = Receive {
            body: batch.to_string().into_bytes(),
            encoding: Encoding::Identity,
            origin: None,
            client_ip: "2001:db8::7".parse().expect("an address"),
            user_agent: Some(format!("Mozilla/5.0 ({})", self.word(20))),
            received_at: RECEIVED_AT,
        };
        let a = read_batch(&fixture().receipt, msg).expect("the generated batch is accepted");
        let (record, letter) = (a.batch.record, a.batch.dead_letter);
        if self.below(3) == 0 { letter } else { record.or(letter) }.expect("a record or a dead letter")
    }

    /// A whole number in `min..=max`, kept within ±10⁶.
    fn within(&mut self, min: f64, max: f64) -> f64 {
        let (lo, hi) = (min.max(-1e6).ceil(), max.min(1e6).floor());
        lo + self.below((hi - lo).max(0.0) as usize + 1) as f64
    }

    /// A short printable word.
    fn word(&mut self, max: usize) -> String {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_ ";
        (0..self.below(max.max(1)) + 1).map(|_| CHARS[self.below(CHARS.len())] as char).collect()
    }

    /// A JSON string body (between its quotes) a client could send to hurt:
    /// NULs, lone and paired surrogates, invalid and cut escapes, long
    /// `\uXXXX` runs, raw control bytes, invalid UTF-8.
    pub fn hostile_text(&mut self) -> Vec<u8> {
        const PIECES: &[&[u8]] = &[
            b"\\u0000",
            b"\\ud800",
            b"\\udfff",
            b"\\ud83d\\ude00",
            b"\\ud83d",
            b"\\x41",
            b"\\u12",
            b"\\u00zz",
            b"\\",
            b"\\\"",
            b"\x00",
            b"\x01\x1f",
            b"\xff\xfe",
            b"\xc3",
            b"\xed\xa0\x80",
            b"\\u00e9",
            b"\\u2028",
            b"=cmd|' /C calc'!A0",
            b"\\n\\t\\r\\b\\f\\/",
            b"plain",
        ];
        let mut out = Vec::new();
        for _ in 0..self.size(64) + 1 {
            let piece = PIECES[self.below(PIECES.len())];
            let times = if self.below(8) == 0 { self.size(20_000) + 1 } else { 1 };
            for _ in 0..times {
                out.extend_from_slice(piece);
            }
        }
        out
    }

    /// `valid` with some of its string literals' contents replaced by hostile text.
    fn taint_strings(&mut self, valid: &[u8]) -> Vec<u8> {
        let strings = string_spans(valid);
        if strings.is_empty() {
            return valid.to_vec();
        }
        let mut chosen: Vec<(usize, usize)> = (0..self.size(8) + 1).map(|_| strings[self.below(strings.len())]).collect();
        chosen.sort_unstable();
        chosen.dedup();
        let mut out = Vec::with_capacity(valid.len() * 2);
        let mut at = 0;
        for (start, end) in chosen {
            out.extend_from_slice(&valid[at..start]);
            out.extend(self.hostile_text());
            at = end;
        }
        out.extend_from_slice(&valid[at..]);
        out
    }

    /// `valid` with one of its values wrapped in brackets: at the limits, or
    /// up to 500,000 deep.
    fn deepen(&mut self, valid: &[u8]) -> Vec<u8> {
        let depth = [1, 2, 3, 5, 7, 64, 1_000, 100_000, 500_000][self.below(9)];
        self.deepen_to(valid, depth)
    }

    fn deepen_to(&mut self, valid: &[u8], depth: usize) -> Vec<u8> {
        let (open, close): (&[u8], &[u8]) = match self.below(3) {
            0 => (b"[", b"]"),
            1 => (b"{\"a\":", b"}"),
            _ => (b"[{\"a\":", b"}]"),
        };
        let closed = self.below(4) != 0;
        let depth = depth.min(MAX_INPUT / open.len());
        // After an opening bracket outside strings: a new first element or member.
        let opens = openers(valid);
        let at = if opens.is_empty() { 0 } else { opens[self.below(opens.len())] + 1 };
        let mut out = valid[..at].to_vec();
        if at > 0 && valid[at - 1] == b'{' {
            out.extend_from_slice(b"\"d\":");
        }
        (0..depth).for_each(|_| out.extend_from_slice(open));
        out.extend_from_slice(b"1");
        if closed {
            (0..depth).for_each(|_| out.extend_from_slice(close));
        }
        out.extend_from_slice(b",");
        out.extend_from_slice(&valid[at..]);
        out
    }

    /// `valid` with its `events` array repeated until it is thousands wide.
    fn widen(&mut self, valid: &[u8]) -> Vec<u8> {
        let Some(start) = find(valid, b"\"events\":[").map(|i| i + b"\"events\":[".len()) else { return valid.to_vec() };
        let Some(end) = closing(valid, start - 1) else { return valid.to_vec() };
        let items = &valid[start..end];
        let mut out = valid[..start].to_vec();
        for i in 0..[2, 10, 100, 2_001][self.below(4)] {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(if items.is_empty() { b"[\"clicks\",1764000000000]" } else { items });
            if out.len() > MAX_INPUT {
                break;
            }
        }
        out.extend_from_slice(&valid[end..]);
        out
    }

    /// `valid` with one string literal grown to hundreds of KiB.
    fn huge_string(&mut self, valid: &[u8]) -> Vec<u8> {
        let len = [2_049, 65_536, 900_000][self.below(3)];
        self.huge_string_of(valid, len)
    }

    fn huge_string_of(&mut self, valid: &[u8], len: usize) -> Vec<u8> {
        let strings = string_spans(valid);
        let Some(&(start, end)) = strings.get(self.below(strings.len().max(1))) else { return valid.to_vec() };
        let fill: &[u8] = [&b"a"[..], b"\\u0041", b"\xc3\xa9"][self.below(3)];
        let mut out = valid[..start].to_vec();
        while out.len() - start < len {
            out.extend_from_slice(fill);
        }
        out.extend_from_slice(&valid[end..]);
        out
    }

    /// A few byte flips, cuts, duplications and inserted brackets or quotes.
    fn mutate(&mut self, mut v: Vec<u8>) -> Vec<u8> {
        for _ in 0..self.size(16) + 1 {
            if v.is_empty() {
                v.push(b'{');
            }
            let at = self.below(v.len());
            match self.below(5) {
                0 => v[at] ^= 1 << self.below(8),
                1 => v.truncate(at),
                2 => {
                    const BYTES: &[u8] = b"[]{}\",:\\0";
                    v.insert(at, BYTES[self.below(BYTES.len())]);
                }
                3 => {
                    v.remove(at);
                }
                _ => {
                    let end = (at + self.size(256)).min(v.len());
                    let copy = v[at..end].to_vec();
                    v.splice(at..at, copy);
                }
            }
        }
        v
    }
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Where each `[` or `{` outside strings is in JSON text.
fn openers(text: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    scan(text, |i, b| {
        if b == b'[' || b == b'{' {
            out.push(i);
        }
        true
    });
    out
}

/// Where the bracket opened at `open` closes.
fn closing(text: &[u8], open: usize) -> Option<usize> {
    let (mut depth, mut found) = (0usize, None);
    scan(&text[open..], |i, b| {
        match b {
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth -= 1,
            _ => return true,
        }
        if depth == 0 {
            found = Some(open + i);
        }
        depth > 0
    });
    found
}

/// Calls `f` with each byte outside strings (and its offset) while it returns true.
fn scan(text: &[u8], mut f: impl FnMut(usize, u8) -> bool) {
    let (mut in_string, mut escaped) = (false, false);
    for (i, &b) in text.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if !f(i, b) {
            return;
        }
    }
}

/// The contents (between the quotes) of every string literal in JSON text.
fn string_spans(text: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let (mut start, mut escaped) = (None, false);
    for (i, &b) in text.iter().enumerate() {
        match start {
            None if b == b'"' => start = Some(i + 1),
            None => {}
            Some(_) if escaped => escaped = false,
            Some(_) if b == b'\\' => escaped = true,
            Some(s) if b == b'"' => {
                spans.push((s, i));
                start = None;
            }
            Some(_) => {}
        }
    }
    spans
}

/// `data` gzipped, as a client sends `Content-Encoding: gzip`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).expect("writing to a Vec cannot fail");
    e.finish().expect("writing to a Vec cannot fail")
}

/// The committed seed corpus of `target` (`tests/fuzz/corpus/<name>/`), by
/// file name: valid inputs and the hostile classes of issue 27.
pub fn seeds(target: Target) -> Vec<(String, Vec<u8>)> {
    let mut g = Hostile::new(27);
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let valid = |g: &mut Hostile| match target {
        Target::Receipt => g.batch_of(50),
        Target::Decode => g.record(),
    };
    for i in 0..4 {
        out.push((format!("valid-{i}"), valid(&mut g)));
    }
    out.push(("deep-100k-brackets".into(), vec![b'['; 100_000]));
    out.push(("deep-20k-objects".into(), b"{\"a\":".repeat(20_000)));
    // One over the batch's limit, one over a record's, and far over.
    for depth in [5, 7, 1_000, 20_000] {
        let v = valid(&mut g);
        out.push((format!("deep-{depth}-in-valid"), g.deepen_to(&v, depth)));
    }
    out.push(("wide-2000-events".into(), if target == Target::Receipt { g.batch_of(2000) } else { wide_record(&mut g) }));
    let v = valid(&mut g);
    out.push(("wide-2001-events".into(), if target == Target::Receipt { g.batch_of(2001) } else { g.widen(&v) }));
    for i in 0..6 {
        let v = valid(&mut g);
        out.push((format!("escapes-{i}"), g.taint_strings(&v)));
    }
    let v = valid(&mut g);
    let mut nul = v.clone();
    if let Some(&(s, e)) = string_spans(&v).last() {
        nul.splice(s..e, b"k\\u0000".iter().copied());
    }
    out.push(("nul-in-last-string".into(), nul));
    // The generated runs go to 900 KB; the seeds stay small.
    for (i, len) in [2_049, 65_536, 256 * 1024].into_iter().enumerate() {
        let v = valid(&mut g);
        out.push((format!("huge-string-{i}"), g.huge_string_of(&v, len)));
    }
    if target == Target::Receipt {
        // Inflates to the limit, and one byte over; 500,000 `[` as in issue 27.
        out.push(("gzip-at-limit".into(), gzip(&vec![b' '; MAX_INPUT])));
        out.push(("gzip-over-limit".into(), gzip(&vec![b' '; MAX_INPUT + 1])));
        out.push(("gzip-500k-brackets".into(), gzip(&vec![b'['; 500_000])));
        let v = g.batch_of(200);
        out.push(("gzip-valid".into(), gzip(&v)));
    }
    for i in 0..4 {
        let v = valid(&mut g);
        out.push((format!("mutated-{i}"), g.mutate(v)));
    }
    out
}

/// An events record of 2,000 events, as receipt writes one.
fn wide_record(g: &mut Hostile) -> Vec<u8> {
    let body = g.batch_of(2000);
    let msg = Receive {
        body,
        encoding: Encoding::Identity,
        origin: None,
        client_ip: "203.0.113.7".parse().expect("an address"),
        user_agent: None,
        received_at: RECEIVED_AT,
    };
    read_batch(&fixture().receipt, msg).ok().and_then(|a| a.batch.record).expect("a 2,000-event batch is accepted")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_inputs_are_deterministic_and_bounded() {
        let (mut a, mut b) = (Hostile::new(7), Hostile::new(7));
        for t in Target::ALL {
            for _ in 0..20 {
                let x = a.input(t);
                assert_eq!(x, b.input(t));
                assert!(x.len() <= MAX_INPUT);
            }
        }
    }

    #[test]
    fn string_spans_skip_escaped_quotes() {
        assert_eq!(string_spans(br#"{"a":"b\"c","d":1}"#), vec![(2, 3), (6, 10), (13, 14)]);
    }
}
