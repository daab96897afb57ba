//! Kafka record v1 → binary COPY tuples, one buffer per event table.
//! Attributes are matched by name through the record's `schema`, so records
//! written under an older or newer catalog still load (missing → NULL).
//! Event time: `time = client_time + (received_at − sent_at)`, clamped to a
//! window around receipt and flagged when clamped; an imported record's
//! times are not clamped (`chronos import` checked them against its own window).

use bytes::BytesMut;
use simd_json::prelude::*;
use simd_json::BorrowedValue as Value;
use uuid::Uuid;

use crate::catalog::{AttrType, EventCatalog, EventType};
use crate::payload::plausible_ms;
use crate::record::{self, field as f, Row};
use crate::store::copy::TupleWriter;
pub use crate::store::internals::DeadLetter;
use crate::store::schema::BASE_COLUMNS;

/// How event times are corrected and clamped.
#[derive(Debug, Clone, Copy)]
pub struct TimePolicy {
    pub max_past_ms: i64,
    pub max_future_ms: i64,
}

impl TimePolicy {
    /// Corrected event time and whether it was clamped (never for an import).
    pub fn event_time(&self, client_time: i64, sent_at: i64, received_at: i64, imported: bool) -> (i64, bool) {
        let t = client_time.saturating_add(received_at - sent_at);
        if imported {
            return (t, false);
        }
        let (lo, hi) = (received_at - self.max_past_ms, received_at + self.max_future_ms);
        if t < lo {
            (lo, true)
        } else if t > hi {
            (hi, true)
        } else {
            (t, false)
        }
    }
}

/// The batch facts of a record, as the JSON `context` of its dead letters
/// (`record::context_fields`: what a replay needs to rebuild the record).
fn context_of(root: &Value<'_>) -> Option<String> {
    let mut ctx = serde_json::Map::new();
    for &k in record::context_fields() {
        if let Some(v) = root.get(k) {
            ctx.insert(k.to_string(), serde_json::to_value(v).ok()?);
        }
    }
    serde_json::to_string(&ctx).ok()
}

/// What a walk over one record reports, event by event.
pub trait Visit {
    /// Whether to load the batch `batch_id` at all (`false` skips all its
    /// events: a batch this loader knows is a duplicate); `imported` when it
    /// came from `chronos import` or `POST /v1/import`. Called once, first.
    fn batch(&mut self, _batch_id: Uuid, _imported: bool) -> bool {
        true
    }
    /// The batch's facts stored once per batch (`chronos.batches`), when
    /// `batch` took it; called once, before its events.
    fn page(&mut self, _page: BatchPage<'_>) {}
    /// A loadable event of catalog type `table`.
    fn event(&mut self, table: usize, row: &Row<'_, '_>, batch_id: Uuid);
    /// An event that cannot be loaded.
    fn reject(&mut self, letter: DeadLetter);
}

/// What `chronos.batches` keeps of a batch: its page once, not in every row.
#[derive(Debug, Clone)]
pub struct BatchPage<'a> {
    pub batch_id: Uuid,
    /// Milliseconds since the Unix epoch.
    pub received_at: i64,
    pub session_id: &'a str,
    /// The record's `page` as JSON text (made for the visitor to keep).
    pub metadata: String,
}

/// How a walk over a record ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walked {
    /// Its events were visited.
    Loaded(Uuid),
    /// `Visit::batch` declined it.
    Skipped(Uuid),
}

/// Appends the binary COPY tuple of one event to `buf`, in the column order
/// of `store::internals::copy_statement`.
pub fn encode_row(buf: &mut BytesMut, ty: &EventType, row: &Row<'_, '_>, batch_id: &Uuid) {
    let mut t = TupleWriter::begin(buf, (BASE_COLUMNS.len() + ty.attributes.len()) as u16);
    t.timestamp_ms(row.time);
    t.timestamp_ms(row.client_time);
    t.timestamp_ms(row.received_at);
    t.bool(row.time_flagged);
    t.text(row.session_id);
    t.uuid(batch_id);
    t.i32(row.position);
    t.text(row.key_id);
    match row.client_ip {
        Some(ip) => t.text(ip),
        None => t.null(),
    }
    t.bool(row.bot.is_some());
    let geo = |k: &str| row.geo.and_then(|g| g.get(k)).and_then(|v| v.as_str());
    for v in [
        row.bot,
        row.agent_field("browser"),
        row.agent_field("browser_version"),
        row.agent_field("os"),
        row.agent_field("os_version"),
        row.agent_field("device"),
        geo("country"),
        geo("region"),
        geo("city"),
        row.user_id,
    ] {
        match v {
            Some(s) => t.text(s),
            None => t.null(),
        }
    }
    // `walk` checked every value against its attribute's type.
    for (a, v) in ty.attributes.iter().zip(row.attrs) {
        match v {
            None => t.null(),
            Some(v) => match a.ty {
                AttrType::Text => t.text(v.as_str().unwrap_or_default()),
                AttrType::Int => t.i64(v.as_i64().unwrap_or_default()),
                AttrType::Float => t.f64(v.cast_f64().unwrap_or_default()),
                AttrType::Bool => t.bool(v.as_bool().unwrap_or_default()),
                AttrType::TextList => {
                    let items: Vec<&str> = v.as_array().map(|a| a.iter().filter_map(|s| s.as_str()).collect()).unwrap_or_default();
                    t.text_array(items.into_iter())
                }
            },
        }
    }
}

/// Rows of one table decoded from one record.
#[derive(Debug)]
pub struct TableRows {
    /// Index of the event type in `EventCatalog::types()`.
    pub table: usize,
    pub rows: u32,
    pub tuples: BytesMut,
}

/// One decoded batch record, on its own (tests and benchmarks; the loaders
/// visit records straight into their flush buffer instead).
#[derive(Debug)]
pub struct DecodedBatch {
    pub batch_id: Uuid,
    pub tables: Vec<TableRows>,
    pub dead: Vec<DeadLetter>,
    pub events: usize,
    /// The batch's page as JSON text, as `chronos.batches` stores it.
    pub page: Option<String>,
}

/// Decodes a batch record into COPY tuples (the buffer is parsed in place).
pub fn decode_batch(buf: &mut [u8], catalog: &EventCatalog, policy: TimePolicy) -> Result<DecodedBatch, String> {
    struct Collect<'c> {
        types: &'c [EventType],
        tables: Vec<TableRows>,
        dead: Vec<DeadLetter>,
        events: usize,
        page: Option<String>,
    }
    impl Visit for Collect<'_> {
        fn page(&mut self, page: BatchPage<'_>) {
            self.page = Some(page.metadata);
        }
        fn event(&mut self, table: usize, row: &Row<'_, '_>, batch_id: Uuid) {
            let found = self.tables.iter().position(|t| t.table == table);
            let i = found.unwrap_or_else(|| {
                self.tables.push(TableRows { table, rows: 0, tuples: BytesMut::with_capacity(4096) });
                self.tables.len() - 1
            });
            let rows = &mut self.tables[i];
            encode_row(&mut rows.tuples, &self.types[table], row, &batch_id);
            rows.rows += 1;
            self.events += 1;
        }
        fn reject(&mut self, letter: DeadLetter) {
            self.dead.push(letter);
        }
    }
    let mut c = Collect { types: catalog.types(), tables: Vec::new(), dead: Vec::new(), events: 0, page: None };
    let batch_id = match walk(buf, catalog, policy, &mut c)? {
        Walked::Loaded(id) | Walked::Skipped(id) => id,
    };
    Ok(DecodedBatch { batch_id, tables: c.tables, dead: c.dead, events: c.events, page: c.page })
}

/// Parses a record in place, no deeper than a Chronos record nests (the
/// parser recurses: a deeper one is refused before any value is built).
fn parse_record(buf: &mut [u8]) -> Result<simd_json::BorrowedValue<'_>, String> {
    crate::payload::depth::check(buf, crate::payload::depth::RECORD_DEPTH).map_err(|d| format!("not a record: {d}"))?;
    simd_json::to_borrowed_value(buf).map_err(|e| format!("not JSON: {e}"))
}

/// Parses a batch record (in place) and reports to `visit` each loadable
/// event (its table index, the row, the batch id) and each event that cannot
/// be loaded. The one place that decides which events load: the raw rows and
/// the continuous views both read through it, in the same walk.
pub fn walk(buf: &mut [u8], catalog: &EventCatalog, policy: TimePolicy, visit: &mut impl Visit) -> Result<Walked, String> {
    let root = parse_record(buf)?;
    let b = Batch::of(&root)?;
    if !visit.batch(b.id, b.imported) {
        return Ok(Walked::Skipped(b.id));
    }
    let metadata = serde_json::to_string(b.page).unwrap_or_else(|_| "{}".into());
    visit.page(BatchPage { batch_id: b.id, received_at: b.received_at, session_id: b.session, metadata });

    // Made for the first dead letter only: most records have none.
    let mut context: Option<Option<String>> = None;
    let types = catalog.types();
    let mut values: Vec<Option<&Value>> = Vec::new();
    for (position, event) in b.events.iter().enumerate() {
        let (table, client_time) = match resolve(event, b.schema, types, &mut values) {
            Ok(found) => found,
            Err(reason) => {
                visit.reject(DeadLetter {
                    stage: "load",
                    reason: format!("events[{position}]{reason}"),
                    batch_id: Some(b.id),
                    position: Some(position as i32),
                    event: serde_json::to_string(event).ok(),
                    raw: None,
                    context: context.get_or_insert_with(|| context_of(&root)).clone(),
                    sqlstate: None,
                });
                continue;
            }
        };
        let (time, time_flagged) = policy.event_time(client_time, b.sent_at, b.received_at, b.imported);
        let row = Row {
            type_name: &types[table].name,
            time,
            client_time,
            received_at: b.received_at,
            time_flagged,
            session_id: b.session,
            position: position as i32,
            key_id: b.key_id,
            client_ip: b.client_ip,
            page: b.page,
            attrs: &values,
            bot: b.bot,
            agent: b.agent,
            geo: b.geo,
            user_id: b.user_id,
        };
        visit.event(table, &row, b.id);
    }
    Ok(Walked::Loaded(b.id))
}

/// What every event of a record shares: its batch's facts, and where its
/// schema and events are.
struct Batch<'r, 'v> {
    id: Uuid,
    session: &'r str,
    key_id: &'r str,
    sent_at: i64,
    received_at: i64,
    client_ip: Option<&'r str>,
    imported: bool,
    bot: Option<&'r str>,
    agent: Option<&'r Value<'v>>,
    geo: Option<&'r Value<'v>>,
    user_id: Option<&'r str>,
    page: &'r Value<'v>,
    schema: &'r simd_json::borrowed::Object<'v>,
    events: &'r [Value<'v>],
}

impl<'r, 'v> Batch<'r, 'v> {
    /// The batch of record `root`; the error names the field that is missing or wrong.
    fn of(root: &'r Value<'v>) -> Result<Self, String> {
        let field = |name: &str| root.get(name).ok_or_else(|| format!("record has no `{name}`"));
        let optional = |name: &str| root.get(name);
        if field(f::V)?.as_u64() != Some(record::VERSION) {
            return Err(format!("unsupported record version (this loader reads v{})", record::VERSION));
        }
        // Checked in this order: the error names the first field that is wrong.
        Ok(Batch {
            id: field(f::BATCH_ID)?.as_str().and_then(|s| Uuid::try_parse(s).ok()).ok_or("`batch_id` is not a UUID")?,
            session: field(f::SESSION_ID)?.as_str().ok_or("`session_id` is not a string")?,
            key_id: field(f::KEY_ID)?.as_str().ok_or("`key_id` is not a string")?,
            // Times within receipt's years (2000-2099): the event-time arithmetic
            // and the COPY encoding cannot overflow, whoever wrote the record.
            sent_at: plausible_ms(field(f::SENT_AT)?).map_err(|m| format!("`sent_at` {m}"))?,
            received_at: plausible_ms(field(f::RECEIVED_AT)?).map_err(|m| format!("`received_at` {m}"))?,
            client_ip: optional(f::CLIENT_IP).and_then(|v| v.as_str()),
            imported: optional(f::IMPORTED).and_then(|v| v.as_bool()) == Some(true),
            bot: optional(f::BOT).and_then(|v| v.as_str()),
            agent: optional(f::AGENT).filter(|a| a.is_object()),
            geo: optional(f::GEO).filter(|g| g.is_object()),
            user_id: optional(f::USER_ID).and_then(|v| v.as_str()),
            page: Some(field(f::PAGE)?).filter(|p| p.is_object()).ok_or("`page` is not an object")?,
            schema: field(f::SCHEMA)?.as_object().ok_or("`schema` is not an object")?,
            events: field(f::EVENTS)?.as_array().ok_or("`events` is not an array")?,
        })
    }
}

/// An event's table (index in `types`) and client time, with its attribute
/// values put into `values` in the table's order, matched by name through
/// the record's `schema`; or why it cannot be loaded (what follows
/// `events[i]` in the dead letter's reason). Every attribute is resolved
/// before any is used, so a bad value leaves no partial row.
fn resolve<'r, 'v>(
    event: &'r Value<'v>,
    schema: &'r simd_json::borrowed::Object<'v>,
    types: &[EventType],
    values: &mut Vec<Option<&'r Value<'v>>>,
) -> Result<(usize, i64), String> {
    let items = event.as_array().ok_or(": not an array")?;
    let name = items.first().and_then(|v| v.as_str()).unwrap_or_default();
    let table = types.iter().position(|t| &*t.name == name).ok_or_else(|| format!("[0]: event type `{name}` is not in this loader's catalog"))?;
    let client_time = plausible_ms(items.get(1).ok_or("[1]: no client time")?).map_err(|m| format!("[1]: client time {m}"))?;
    let names = schema.get(name).and_then(|n| n.as_array());
    values.clear();
    for a in &types[table].attributes {
        let idx = names.and_then(|names| names.iter().position(|n| n.as_str() == Some(&a.name)));
        let v = idx.and_then(|i| items.get(2 + i)).filter(|v| !v.is_null());
        if v.is_some_and(|v| !fits(v, a.ty)) {
            return Err(format!(": `{}` does not fit column type {:?}", a.name, a.ty));
        }
        values.push(v);
    }
    Ok((table, client_time))
}

fn fits(v: &Value<'_>, ty: AttrType) -> bool {
    match ty {
        AttrType::Text => v.is_str(),
        AttrType::Int => v.as_i64().is_some(),
        AttrType::Float => v.is_number() && v.cast_f64().is_some_and(f64::is_finite),
        AttrType::Bool => v.is_bool(),
        AttrType::TextList => v.as_array().is_some_and(|a| a.iter().all(|s| s.is_str())),
    }
}

/// Decodes a dead-letter record of the receipt stage into one row per rejected event.
pub fn decode_dead_letter(buf: &mut [u8]) -> Result<Vec<DeadLetter>, String> {
    let root = parse_record(buf)?;
    let batch_id = root.get("batch_id").and_then(|v| v.as_str()).and_then(|s| Uuid::try_parse(s).ok());
    let context = context_of(&root);
    let rejected = root.get("rejected").and_then(|v| v.as_array()).ok_or("dead-letter record has no `rejected` array")?;
    Ok(rejected
        .iter()
        .map(|r| DeadLetter {
            stage: "receipt",
            reason: r.get("reason").and_then(|v| v.as_str()).unwrap_or("unknown").to_string(),
            batch_id,
            position: r.get("position").and_then(|v| v.as_i64()).map(|p| p as i32),
            event: r.get("event").and_then(|e| serde_json::to_string(e).ok()),
            raw: None,
            context: context.clone(),
            sqlstate: None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::built_in_events;

    const DAY: i64 = 86_400_000;

    #[test]
    fn event_time_cancels_the_clock_error_and_clamps() {
        let p = TimePolicy { max_past_ms: 7 * DAY, max_future_ms: DAY };
        // Client clock 1 h behind: sent_at says 09:00 while the server got it at 10:00.
        assert_eq!(p.event_time(1_000, 3_600_000, 3_600_000 + 3_600_000, false), (3_601_000, false));
        let now = 1_764_000_000_000;
        assert_eq!(p.event_time(now + 30 * DAY, now, now, false), (now + DAY, true));
        assert_eq!(p.event_time(now - 30 * DAY, now, now, false), (now - 7 * DAY, true));
        // An import's times stand as given (it checked them itself); the correction still applies.
        assert_eq!(p.event_time(now - 300 * DAY, now, now, true), (now - 300 * DAY, false));
        assert_eq!(p.event_time(1_000, 3_600_000, 7_200_000, true), (3_601_000, false));
    }

    #[test]
    fn attributes_are_matched_by_name_and_bad_values_dead_lettered() {
        let catalog = EventCatalog::from_config(&built_in_events(), 100);
        let text = r#"{"v":1,"batch_id":"0b6f5e2c-3f0e-4bb1-9a57-8f6c2a0c1d2e","session_id":"s","key_id":"k",
            "sent_at":1764000000000,"received_at":1764000000100,"client_ip":"203.0.113.0","page":{"url":"u"},
            "schema":{"mouse_moves":["y","x"],"clicks":["element"]},
            "events":[["mouse_moves",1764000000000,5,6],["mouse_moves",1764000000000,"no",6],["clicks",1764000000000,"A"],["nope",1]]}"#;
        let mut buf = text.as_bytes().to_vec();
        let d = decode_batch(&mut buf, &catalog, TimePolicy { max_past_ms: DAY, max_future_ms: DAY }).unwrap();
        assert_eq!(d.events, 2);
        assert_eq!(d.dead.len(), 2);
        assert!(d.dead[0].reason.starts_with("events[1]: `y` does not fit"), "{:?}", d.dead[0]);
        assert!(d.dead[1].reason.contains("`nope` is not in this loader's catalog"));
        assert_eq!(d.tables.len(), 2);
        assert!(d.tables.iter().all(|t| t.rows == 1));
    }

    #[test]
    fn undecodable_records_say_why() {
        let catalog = EventCatalog::from_config(&built_in_events(), 100);
        let p = TimePolicy { max_past_ms: DAY, max_future_ms: DAY };
        assert!(decode_batch(&mut b"nope".to_vec(), &catalog, p).unwrap_err().starts_with("not JSON"));
        assert_eq!(decode_batch(&mut br#"{"v":2}"#.to_vec(), &catalog, p).unwrap_err(), "unsupported record version (this loader reads v1)");
    }

    /// Found by the fuzzer: times far outside 2000-2099 overflowed the event
    /// time or the COPY encoding (a panic in test builds, a wrong time in release).
    #[test]
    fn implausible_times_are_refused_before_any_arithmetic() {
        let catalog = EventCatalog::from_config(&built_in_events(), 100);
        let p = TimePolicy { max_past_ms: DAY, max_future_ms: DAY };
        let record = |sent: &str, client: &str| {
            format!(
                r#"{{"v":1,"batch_id":"0b6f5e2c-3f0e-4bb1-9a57-8f6c2a0c1d2e","session_id":"s","key_id":"k","sent_at":{sent},"received_at":1764000000100,
                "page":{{}},"schema":{{}},"events":[["mouse_moves",{client}]]}}"#
            )
            .into_bytes()
        };
        let d = decode_batch(&mut record("1764000000000", "9300000000000000"), &catalog, p).unwrap();
        assert_eq!((d.events, d.dead.len()), (0, 1));
        assert!(d.dead[0].reason.starts_with("events[0][1]: client time 9300000000000000 is not a plausible time"), "{:?}", d.dead[0]);
        let e = decode_batch(&mut record("-9223372036854775808", "1764000000000"), &catalog, p).unwrap_err();
        assert!(e.starts_with("`sent_at` -9223372036854775808 is not a plausible time"), "{e}");
    }
}
