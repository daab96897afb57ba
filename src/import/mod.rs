//! Historical import (`chronos import FILE|-`, `POST /v1/import`): lines of
//! JSON in one of two forms (docs/import.md) become the Kafka records receipt
//! writes, checked by receipt's own code (`payload::Envelope`,
//! `payload::validate_events`), so the loaders store them once and invalid
//! events get the same dead letters:
//! - the **record form**: one Kafka record v1 (`batch.v1`) per line, as
//!   chronosd wrote it (a topic dump): its batch id, session, times, key id,
//!   client IP and user agent are kept;
//! - the **event form**: one event per line with its own time and session
//!   (what `chronos export --format jsonl` writes). Consecutive events of one
//!   session, page, client IP and user agent make a batch, whose id is
//!   derived from its lines (number and bytes), so the same file imports once
//!   however often it is run.
//!
//! Imported records carry `"imported": true`: the loaders take their event
//! times as given (no clamp around receipt) and keep their batch ids for good.
//! In exchange, times outside `[import]`'s window are refused here.

pub mod send;

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::{Map, Value};
use sha2::Digest;
use simd_json::prelude::*;
use uuid::Uuid;

use crate::catalog::EventCatalog;
use crate::config::{Config, ImportConfig};
use crate::enrich::Enricher;
use crate::payload::{self, anonymise, encode_dead_letter, encode_record, Envelope, PayloadLimits, Rejection, ServerFacts};
use crate::produce::OutgoingBatch;
use crate::record::{self, field as f};

/// Namespace of the batch ids derived from an import's lines (UUID v5).
const NAMESPACE: Uuid = Uuid::from_u128(0x6368_726f_6e6f_5000_8000_696d_706f_7274);

/// Bookkeeping columns of `chronos export --format jsonl` that an import
/// recomputes (the import is a new receipt), so they are read past.
const RECOMPUTED: [&str; 6] = ["client_time", "received_at", "time_flagged", "batch_id", "position", "key_id"];

/// What a line or a batch of lines came to.
#[derive(Debug)]
pub enum Item {
    /// Records to produce, with the lines they hold.
    Batch(Batch),
    /// A line refused whole (it is not an event or a record); nothing of it is kept.
    Refused { line: u64, reason: String },
}

/// One batch of an import: its records (as receipt would produce them) and
/// what the lines came to.
#[derive(Debug)]
pub struct Batch {
    pub batch_id: Uuid,
    /// Line numbers (from 1) of its events or its record.
    pub first_line: u64,
    pub lines: u64,
    pub accepted: usize,
    /// Why each rejected event was rejected, naming its line (also in the dead letter).
    pub rejected: Vec<String>,
    pub outgoing: OutgoingBatch,
}

/// Consecutive event-form lines that share a batch.
struct Group {
    session: String,
    user: Option<String>,
    page: Value,
    client_ip: Option<IpAddr>,
    user_agent: Option<String>,
    lines: Vec<u64>,
    events: Vec<Value>,
    digest: sha2::Sha256,
}

/// Turns lines into batches; feed every line with [`Importer::line`], then call
/// [`Importer::finish`], and take what came out with [`Importer::drain`].
pub struct Importer {
    catalog: EventCatalog,
    limits: PayloadLimits,
    window: ImportConfig,
    batch_events: usize,
    key_id: String,
    now: i64,
    group: Option<Group>,
    out: Vec<Item>,
    /// Receipt's enricher (`None`: enrichment off).
    enricher: Option<Arc<Enricher>>,
}

impl Importer {
    /// An import received at `now` (ms since the epoch) under key id `key_id`
    /// (the event form's; records keep their own), enriched by `enricher`.
    pub fn new(config: &Config, key_id: &str, now: i64, enricher: Option<Arc<Enricher>>) -> Self {
        Importer {
            catalog: EventCatalog::from_config(&config.events, config.limits.max_string_bytes),
            limits: PayloadLimits::from_config(config),
            window: config.import.clone(),
            batch_events: config.import.batch_events.min(config.http.max_events_per_batch).max(1),
            key_id: key_id.to_string(),
            now,
            group: None,
            out: Vec::new(),
            enricher,
        }
    }

    /// Reads line `number` (from 1); blank lines are skipped.
    pub fn line(&mut self, number: u64, bytes: &[u8]) {
        let text = bytes.trim_ascii();
        if text.is_empty() {
            return;
        }
        let refused = |reason: String| Item::Refused { line: number, reason };
        // A line is an event (3 levels with a text_list) or a record: the
        // record's bound covers both, checked before any value is built.
        if let Err(d) = crate::payload::depth::check(text, crate::payload::depth::RECORD_DEPTH) {
            return self.out.push(refused(format!("not JSON Chronos reads: {d}")));
        }
        let value: Value = match serde_json::from_slice(text) {
            Ok(v) => v,
            Err(e) => return self.out.push(refused(format!("not JSON: {e}"))),
        };
        let Value::Object(obj) = value else {
            return self.out.push(refused("expected a JSON object (an event, or a Kafka record v1)".into()));
        };
        if obj.contains_key("v") {
            self.flush();
            match self.record(number, obj) {
                Ok(item) => self.out.push(item),
                Err(reason) => self.out.push(refused(reason)),
            }
        } else if let Err(reason) = self.event(number, text, obj) {
            self.out.push(refused(reason));
        }
    }

    /// Ends the input: the last batch is built.
    pub fn finish(&mut self) {
        self.flush();
    }

    /// What the lines read so far came to, in input order.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Item> {
        self.out.drain(..)
    }

    /// One event-form line into the current group.
    fn event(&mut self, number: u64, text: &[u8], mut obj: Map<String, Value>) -> Result<(), String> {
        let ty = match obj.remove("type") {
            Some(Value::String(s)) => s,
            Some(_) => return Err("`type`: expected the event type as a string".into()),
            None => return Err("`type`: missing (an event line has type, time, session_id, page and its attributes)".into()),
        };
        let time = match obj.remove("time") {
            Some(Value::Number(n)) => n.as_i64().ok_or("`time`: expected ms since the Unix epoch as an integer")?,
            Some(Value::String(s)) => {
                chrono::DateTime::parse_from_rfc3339(&s).map_err(|e| format!("`time`: {s:?} is not an RFC 3339 time ({e})"))?.timestamp_millis()
            }
            Some(_) => return Err("`time`: expected ms since the Unix epoch or an RFC 3339 string".into()),
            None => return Err("`time`: missing".into()),
        };
        let session = match obj.remove("session_id").or_else(|| obj.remove("session")) {
            Some(Value::String(s)) => s,
            Some(_) => return Err("`session_id`: expected a string".into()),
            None => return Err("`session_id`: missing".into()),
        };
        let page = match obj.remove("page").or_else(|| obj.remove("metadata")) {
            Some(p @ Value::Object(_)) => p,
            Some(_) => return Err("`page`: expected an object with at least `url`".into()),
            None => return Err("`page`: missing (an object with at least `url`)".into()),
        };
        let user = match obj.remove("user_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err("`user_id`: expected a string".into()),
        };
        let client_ip = match obj.remove("client_ip") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(anonymise(s.parse::<IpAddr>().map_err(|_| format!("`client_ip`: {s:?} is not an IP address"))?)),
            Some(_) => return Err("`client_ip`: expected an IP address as a string".into()),
        };
        let user_agent = user_agent(obj.remove("user_agent").as_ref())?;
        for k in RECOMPUTED {
            obj.remove(k);
        }
        // The wire form [type, time, attributes in catalog order]; receipt's
        // validation decides the rest (an unknown type is dead-lettered there).
        let mut event = vec![Value::String(ty.clone()), Value::from(time)];
        if let Some(t) = self.catalog.get(&ty) {
            if let Some(k) = obj.keys().find(|k| !t.attributes.iter().any(|a| *a.name == **k)) {
                let names: Vec<&str> = t.attributes.iter().map(|a| &*a.name).collect();
                return Err(format!("`{k}` is not an attribute of `{ty}` (it has {})", names.join(", ")));
            }
            event.extend(t.attributes.iter().map(|a| obj.remove(&*a.name).unwrap_or(Value::Null)));
            while event.len() > 2 && event.last() == Some(&Value::Null) {
                event.pop();
            }
        }
        let same = self.group.as_ref().is_some_and(|g| {
            g.session == session
                && g.user == user
                && g.page == page
                && g.client_ip == client_ip
                && g.user_agent == user_agent
                && g.events.len() < self.batch_events
        });
        if !same {
            self.flush();
            self.group =
                Some(Group { session, user, page, client_ip, user_agent, lines: Vec::new(), events: Vec::new(), digest: sha2::Sha256::new() });
        }
        let g = self.group.as_mut().expect("set above");
        g.digest.update(number.to_le_bytes());
        g.digest.update(text);
        g.lines.push(number);
        g.events.push(Value::Array(event));
        Ok(())
    }

    /// Builds the current group's batch.
    fn flush(&mut self) {
        let Some(g) = self.group.take() else { return };
        let batch_id = Uuid::new_v5(&NAMESPACE, &g.digest.finalize());
        let mut wire = serde_json::json!({
            "v": 1, "key": "import", "batch": batch_id, "sent_at": self.now,
            "session": g.session, "page": g.page, "events": g.events,
        });
        if let Some(u) = g.user {
            wire["user"] = Value::String(u);
        }
        let facts = Facts { received_at: self.now, client_ip: g.client_ip, key_id: self.key_id.clone(), user_agent: g.user_agent };
        match self.build(wire, &facts, &g.lines) {
            Ok(batch) => self.out.push(Item::Batch(batch)),
            Err(reason) => {
                for &line in &g.lines {
                    self.out.push(Item::Refused { line, reason: reason.clone() });
                }
            }
        }
    }

    /// A record-form line: its events put into the catalog's attribute order.
    fn record(&self, number: u64, obj: Map<String, Value>) -> Result<Item, String> {
        if obj.contains_key(f::STAGE) {
            return Err("a dead-letter record (dead_letter.v1): replay dead letters with `chronos dead-letters replay`".into());
        }
        if obj.get(f::V).and_then(Value::as_u64) != Some(record::VERSION) {
            return Err("`v`: unsupported record version (this import reads Kafka record v1)".into());
        }
        let get = |k: &str| obj.get(k).ok_or_else(|| format!("`{k}`: missing (a Kafka record v1 has it)"));
        let int = |k: &str| get(k)?.as_i64().ok_or_else(|| format!("`{k}`: expected an integer"));
        let text = |k: &str| get(k)?.as_str().ok_or_else(|| format!("`{k}`: expected a string"));
        let (received_at, key_id) = (int(f::RECEIVED_AT)?, text(f::KEY_ID)?.to_string());
        // What receipt would have written: a key id by the config's rules.
        if crate::config::id_problem(&key_id).is_some() {
            return Err(format!("`{}`: must be 1-64 letters, digits, - _ . (a write key's id)", f::KEY_ID));
        }
        let client_ip = match obj.get(f::CLIENT_IP) {
            None | Some(Value::Null) => None,
            Some(v) => Some(anonymise(v.as_str().and_then(|s| s.parse().ok()).ok_or("`client_ip`: expected an IP address as a string")?)),
        };
        let user_agent = user_agent(obj.get(f::USER_AGENT))?;
        let schema = get(f::SCHEMA)?.as_object().ok_or("`schema`: expected an object")?;
        let events = get(f::EVENTS)?.as_array().ok_or("`events`: expected an array")?;
        let events: Vec<Value> = events.iter().map(|e| self.reorder(e, schema)).collect();
        let mut wire = serde_json::json!({
            "v": 1, "key": "import", "batch": get(f::BATCH_ID)?, "sent_at": get(f::SENT_AT)?,
            "session": get(f::SESSION_ID)?, "page": get(f::PAGE)?, "events": events,
        });
        if let Some(u) = obj.get(f::USER_ID).filter(|u| !u.is_null()) {
            wire["user"] = u.clone();
        }
        let facts = Facts { received_at, client_ip, key_id, user_agent };
        self.build(wire, &facts, &[number]).map(Item::Batch)
    }

    /// A record's event `[type, time, values in the record's schema order]` in
    /// the catalog's order, by attribute name (as the loaders match them).
    fn reorder(&self, event: &Value, schema: &Map<String, Value>) -> Value {
        let Some(items) = event.as_array() else { return event.clone() };
        let Some(ty) = items.first().and_then(Value::as_str).and_then(|n| self.catalog.get(n)) else { return event.clone() };
        let names = schema.get(&*ty.name).and_then(Value::as_array);
        let mut out: Vec<Value> = items.iter().take(2).cloned().collect();
        for a in &ty.attributes {
            let at = names.and_then(|n| n.iter().position(|n| n.as_str() == Some(&a.name)));
            out.push(at.and_then(|i| items.get(2 + i)).cloned().unwrap_or(Value::Null));
        }
        while out.len() > 2 && out.last() == Some(&Value::Null) {
            out.pop();
        }
        Value::Array(out)
    }

    /// Receipt's checks on a wire batch, then the import window, then the records.
    fn build(&self, wire: Value, facts: &Facts, lines: &[u64]) -> Result<Batch, String> {
        let mut buf = serde_json::to_vec(&wire).expect("a Value serialises");
        let root = payload::parse(&mut buf).map_err(|e| e.to_string())?;
        let env = Envelope::from_value(&root, &self.limits).map_err(|e| e.to_string())?;
        let mut validated = payload::validate_events(env.events, &self.catalog);
        // An import without a user agent is not a bot's for lacking one: enriched only when it has one.
        let agent = self.enricher.as_ref().zip(facts.user_agent.as_deref()).map(|(e, ua)| e.agent(Some(ua), false));
        let skew = facts.received_at - env.sent_at;
        let (lo, hi) = self.window_ms();
        validated.accepted.retain(|&i| {
            let t = env.events[i as usize].get_idx(1).and_then(|v| v.as_i64()).unwrap_or_default() + skew;
            let inside = (lo..=hi).contains(&t);
            if !inside {
                let reason = format!(
                    "events[{i}][1]: {t} is outside the import window (import.max_past_days = {}, import.max_future_secs = {})",
                    self.window.max_past_days, self.window.max_future_secs
                );
                validated.rejected.push(Rejection { index: i as usize, reason });
            }
            inside
        });
        validated.rejected.sort_by_key(|r| r.index);
        let server = ServerFacts {
            received_at: facts.received_at,
            client_ip: facts.client_ip,
            key_id: &facts.key_id,
            user_agent: facts.user_agent.as_deref(),
            imported: true,
            agent: agent.as_deref(),
            place: None,
        };
        let record = encode_record(&env, &validated, &server, &self.catalog);
        let dead_letter = encode_dead_letter(&env, &validated, &server);
        // A record's events are all on its line; an event-form batch has one line per event.
        let line_of = |i: usize| if lines.len() == 1 { lines[0] } else { lines[i] };
        let rejected = validated
            .rejected
            .iter()
            .map(|r| {
                let prefix = format!("events[{}]", r.index);
                match (lines.len(), r.reason.strip_prefix(&prefix)) {
                    (n, Some(rest)) if n > 1 => match rest.strip_prefix(": ") {
                        Some(rest) => format!("line {}: {rest}", line_of(r.index)),
                        None => format!("line {}, event{rest}", line_of(r.index)),
                    },
                    _ => format!("line {}, {}", line_of(r.index), r.reason),
                }
            })
            .collect();
        Ok(Batch {
            batch_id: env.batch_id,
            first_line: lines[0],
            lines: lines.len() as u64,
            accepted: validated.accepted.len(),
            rejected,
            outgoing: OutgoingBatch {
                session: env.session.to_string(),
                key_id: facts.key_id.clone(),
                received_at: facts.received_at,
                record,
                dead_letter,
            },
        })
    }

    /// The plausible event times, ms since the epoch.
    fn window_ms(&self) -> (i64, i64) {
        let lo = match self.window.max_past_days {
            0 => payload::MIN_PLAUSIBLE_MS,
            d => self.now - i64::from(d) * crate::clock::DAY_MS,
        };
        (lo, self.now.saturating_add(self.window.max_future_secs as i64 * 1000))
    }
}

/// The receipt facts of one import batch.
struct Facts {
    received_at: i64,
    client_ip: Option<IpAddr>,
    key_id: String,
    user_agent: Option<String>,
}

/// What an import came to, counted.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Summary {
    pub lines: u64,
    pub batches: u64,
    pub accepted: u64,
    /// Events dead-lettered (invalid, or outside the window) plus lines refused whole.
    pub rejected: u64,
    /// Batches (and their events) already stored by an earlier run, not sent again.
    pub duplicate_batches: u64,
    pub duplicate_events: u64,
    /// The first reasons, naming their line.
    pub reasons: Vec<String>,
}

impl Summary {
    /// Keeps at most this many reasons.
    pub const MAX_REASONS: usize = 20;

    pub fn reason(&mut self, r: String) {
        if self.reasons.len() < Self::MAX_REASONS {
            self.reasons.push(r);
        }
    }

    /// Counts a refused line; hands a batch back.
    pub fn take(&mut self, item: Item) -> Option<Batch> {
        match item {
            Item::Batch(b) => Some(b),
            Item::Refused { line, reason } => {
                self.rejected += 1;
                self.reason(format!("line {line}: {reason}"));
                None
            }
        }
    }
}

/// A line's `user_agent`, as receipt keeps a `User-Agent` header: printable
/// (an HTTP header cannot carry control characters, and PostgreSQL's text
/// refuses a NUL), its first `MAX_USER_AGENT_CHARS` characters.
fn user_agent(v: Option<&Value>) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().any(char::is_control) => {
            Err("`user_agent`: holds a control character (a User-Agent header cannot)".into())
        }
        Some(Value::String(s)) => Ok(Some(s.chars().take(payload::MAX_USER_AGENT_CHARS).collect())),
        Some(_) => Err("`user_agent`: expected a string".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_000_000_000;

    fn run(config: &Config, input: &str) -> Vec<Item> {
        let mut i = Importer::new(config, "import", NOW, Some(Arc::new(Enricher::new(100))));
        for (n, l) in input.lines().enumerate() {
            i.line(n as u64 + 1, l.as_bytes());
        }
        i.finish();
        i.drain().collect()
    }

    fn batches(items: &[Item]) -> Vec<&Batch> {
        items.iter().filter_map(|i| if let Item::Batch(b) = i { Some(b) } else { None }).collect()
    }

    fn record(b: &Batch) -> serde_json::Value {
        serde_json::from_slice(b.outgoing.record.as_ref().unwrap()).unwrap()
    }

    #[test]
    fn event_lines_group_by_session_and_page_into_batches_with_stable_ids() {
        let input = [
            r#"{"type":"clicks","time":1763990000000,"session_id":"s1","page":{"url":"https://a.test/"},"element":"button","buttons":0,"x":1,"y":2,"selector":".b"}"#,
            r#"{"type":"clicks","time":"2025-11-24T13:13:20.001Z","session_id":"s1","page":{"url":"https://a.test/"},"element":"button","buttons":0,"x":3,"y":4,"selector":".b"}"#,
            r#"{"type":"pageviews","time":1763990000002,"session_id":"s2","metadata":{"url":"https://a.test/2"},"navigation":"navigate","client_ip":"203.0.113.77","user_agent":"UA"}"#,
        ]
        .join("\n");
        let config = Config::default();
        let items = run(&config, &input);
        let b = batches(&items);
        assert_eq!(b.len(), 2, "{items:?}");
        assert_eq!((b[0].accepted, b[0].lines, b[1].accepted), (2, 2, 1));
        let r = record(b[0]);
        assert_eq!(r["imported"], true);
        assert_eq!(r["events"][1][1], 1_763_990_000_001_i64, "RFC 3339 times in ms");
        assert_eq!(r["sent_at"], r["received_at"], "no clock correction");
        assert!(r.get("client_ip").is_none());
        let r = record(b[1]);
        assert_eq!((r["client_ip"].as_str(), r["user_agent"].as_str()), (Some("203.0.113.0"), Some("UA")));
        // The same lines give the same ids; another line gives another.
        let again = run(&config, &input);
        assert_eq!(batches(&again).iter().map(|b| b.batch_id).collect::<Vec<_>>(), b.iter().map(|b| b.batch_id).collect::<Vec<_>>());
        let other = run(&config, &input.replace("\"x\":3", "\"x\":5"));
        assert_ne!(batches(&other)[0].batch_id, b[0].batch_id);
        assert_eq!(batches(&other)[1].batch_id, b[1].batch_id);
    }

    #[test]
    fn batches_are_cut_at_import_batch_events() {
        let mut config = Config::default();
        config.import.batch_events = 2;
        let line = r#"{"type":"pageviews","time":1763990000000,"session_id":"s","page":{"url":"https://a.test/"},"navigation":"navigate"}"#;
        let items = run(&config, &[line; 5].join("\n"));
        let sizes: Vec<usize> = batches(&items).iter().map(|b| b.accepted).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
        let ids: std::collections::HashSet<Uuid> = batches(&items).iter().map(|b| b.batch_id).collect();
        assert_eq!(ids.len(), 3, "identical lines at other places are other batches");
    }

    #[test]
    fn bad_lines_are_refused_by_line_and_bad_events_dead_lettered() {
        let config = Config::default();
        let input = [
            "not json",
            r#"{"type":"clicks","session_id":"s","page":{"url":"u"}}"#,
            r#"{"type":"clicks","time":1763990000000,"session_id":"s","page":{"url":"https://a.test/"},"colour":"red"}"#,
            r#"{"type":"clicks","time":1763990000000,"session_id":"s","page":{"url":"https://a.test/"},"element":"button","buttons":0,"x":"left","y":2}"#,
            r#"{"type":"nope","time":1763990000000,"session_id":"s","page":{"url":"https://a.test/"},"navigation":"navigate"}"#,
            r#"{"type":"pageviews","time":1000000000000,"session_id":"s","page":{"url":"https://a.test/"},"navigation":"navigate"}"#,
            r#"{"type":"pageviews","time":1763990000000,"session_id":"s","page":{"url":"https://a.test/"},"navigation":"navigate"}"#,
        ]
        .join("\n");
        let items = run(&config, &input);
        let refused: Vec<(u64, &str)> =
            items.iter().filter_map(|i| if let Item::Refused { line, reason } = i { Some((*line, reason.as_str())) } else { None }).collect();
        assert_eq!(refused.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(refused[0].1.starts_with("not JSON"), "{refused:?}");
        assert!(refused[1].1.contains("`time`: missing"), "{refused:?}");
        assert!(refused[2].1.contains("`colour` is not an attribute of `clicks`"), "{refused:?}");
        let b = batches(&items);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].accepted, 1);
        assert_eq!(b[0].rejected.len(), 3, "{:?}", b[0].rejected);
        assert!(b[0].rejected[0].starts_with("line 4, event[4] `x`"), "{:?}", b[0].rejected);
        assert!(b[0].rejected[1].starts_with("line 5, event[0]: unknown"), "{:?}", b[0].rejected);
        assert!(b[0].rejected[2].contains("line 6, event[1]: 1000000000000 is outside the import window"), "{:?}", b[0].rejected);
        let dead: serde_json::Value = serde_json::from_slice(b[0].outgoing.dead_letter.as_ref().unwrap()).unwrap();
        assert_eq!(dead["rejected"].as_array().unwrap().iter().map(|r| r["position"].as_u64().unwrap()).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(dead["imported"], true);
    }

    #[test]
    fn a_record_line_keeps_its_batch_and_receipt_and_is_matched_by_name() {
        let config = Config::default();
        let line = r#"{"v":1,"batch_id":"0b6f5e2c-3f0e-4bb1-9a57-8f6c2a0c1d2e","session_id":"s","key_id":"site","sent_at":1763990000500,"received_at":1763990001000,"client_ip":"198.51.100.0","page":{"url":"https://a.test/"},"schema":{"clicks":["y","x","buttons","element","selector"]},"events":[["clicks",1763990000000,20,10,0,"button",".b"]]}"#;
        let items = run(&config, line);
        let b = batches(&items);
        assert_eq!((b.len(), b[0].accepted), (1, 1), "{items:?}");
        assert_eq!(b[0].batch_id.to_string(), "0b6f5e2c-3f0e-4bb1-9a57-8f6c2a0c1d2e");
        let r = record(b[0]);
        assert_eq!(
            (r["key_id"].as_str(), r["received_at"].as_i64(), r["sent_at"].as_i64()),
            (Some("site"), Some(1763990001000), Some(1763990000500))
        );
        let names: Vec<&str> = r["schema"]["clicks"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let x = names.iter().position(|n| *n == "x").unwrap();
        assert_eq!(r["events"][0][2 + x], 10, "{r}");
        let dead = r#"{"v":1,"batch_id":"0b6f5e2c-3f0e-4bb1-9a57-8f6c2a0c1d2e","stage":"receipt"}"#;
        assert!(matches!(&run(&config, dead)[0], Item::Refused { reason, .. } if reason.contains("dead-letter record")));
    }

    /// What PostgreSQL would refuse later is refused at the door, naming the field.
    #[test]
    fn a_record_line_s_key_id_and_user_agent_pass_receipt_s_rules() {
        let config = Config::default();
        let line = r#"{"v":1,"batch_id":"0b6f5e2c-3f0e-4bb1-9a57-8f6c2a0c1d2e","session_id":"s","key_id":"site","sent_at":1763990000500,"received_at":1763990001000,"user_agent":"UA","page":{"url":"https://a.test/"},"schema":{"mouse_moves":["x","y"]},"events":[["mouse_moves",1763990000000,1,2]]}"#;
        assert_eq!(batches(&run(&config, line)).len(), 1);
        let refused = |l: &str| match &run(&config, l)[0] {
            Item::Refused { reason, .. } => reason.clone(),
            other => panic!("{other:?}"),
        };
        for key in [r#"k\u0000"#, "", "a b", &"k".repeat(65)] {
            let reason = refused(&line.replace(r#""key_id":"site""#, &format!(r#""key_id":"{key}""#)));
            assert!(reason.starts_with("`key_id`: must be 1-64"), "{key:?}: {reason}");
        }
        for ua in [r#"U\u0000A"#, r#"U\u001bA"#] {
            let reason = refused(&line.replace(r#""user_agent":"UA""#, &format!(r#""user_agent":"{ua}""#)));
            assert!(reason.starts_with("`user_agent`: holds a control character"), "{ua:?}: {reason}");
        }
        let event =
            r#"{"type":"mouse_moves","time":1763990000000,"session_id":"s","page":{"url":"https://a.test/"},"x":1,"y":2,"user_agent":"a\u0000b"}"#;
        assert!(refused(event).starts_with("`user_agent`: holds a control character"));
        let deep = format!(
            r#"{{"type":"mouse_moves","time":1763990000000,"session_id":"s","page":{{"url":"u"}},"x":{}1{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(refused(&deep).contains("nested deeper than 6 levels"), "{}", refused(&deep));
    }
}
