//! Property tests for parse → validate → encode (no services needed).

use std::sync::Arc;

use chronos::config::Config;
use chronos::http::body::Encoding;
use chronos::http::error::IngestError;
use chronos::http::receipt::{read_batch, ReceiptShared, Receive};
use chronos::load::decode::{encode_row, walk, DeadLetter, TimePolicy, Visit};
use chronos::record::Row;
use chronos::telemetry::Metrics;
use proptest::prelude::*;
use serde_json::{json, Value};

const KEY: &str = "wk_prop_0123456789abcdef";

fn shared() -> ReceiptShared {
    let c = Config::from_toml(&format!(
        "[limits]\nper_key_per_sec = 1000000000\nper_key_burst = 1000000000\n\
         [[keys]]\nid = \"p\"\nkey = \"{KEY}\"\norigins = [\"example.com\"]\nallow_no_origin = true\n"
    ))
    .unwrap();
    ReceiptShared::from_config(&c, Arc::new(Metrics::new()))
}

fn receive(body: Vec<u8>) -> Receive {
    Receive {
        body,
        encoding: Encoding::Identity,
        origin: None,
        client_ip: "203.0.113.0".parse().unwrap(),
        user_agent: None,
        received_at: 1_764_000_000_000,
    }
}

/// Any string, including quotes, escapes, control characters and non-ASCII
/// (but NUL, which PostgreSQL cannot store and receipt refuses).
fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>().prop_filter("no NUL", |c| *c != '\0'), 0..max)
        .prop_map(|c| c.into_iter().collect::<String>())
        .prop_filter("fits the byte cap", move |s| s.len() <= max)
}

fn time() -> impl Strategy<Value = i64> {
    946_684_800_000i64..4_102_444_799_999
}

fn coord() -> impl Strategy<Value = i64> {
    -1_000_000i64..=10_000_000
}

/// A valid event of a random built-in type.
fn event() -> impl Strategy<Value = Value> {
    prop_oneof![
        (time(), text(16), proptest::option::of(text(64))).prop_map(|(t, n, r)| json!(["pageviews", t, n, r])),
        (time(), text(64), 0i64..=31, coord(), coord(), proptest::option::of(text(100)))
            .prop_map(|(t, e, b, x, y, s)| json!(["clicks", t, e, b, x, y, s])),
        (time(), proptest::option::of(text(100)), proptest::option::of(text(100))).prop_map(|(t, l, h)| json!(["link_clicks", t, l, h])),
        (time(), coord(), coord()).prop_map(|(t, x, y)| json!(["mouse_moves", t, x, y])),
        (time(), proptest::option::of(text(32)), text(64)).prop_map(|(t, k, e)| json!(["key_presses", t, k, e])),
        (time(), proptest::option::of(text(50)), proptest::option::of(text(50)), proptest::collection::vec(text(20), 0..8))
            .prop_map(|(t, f, a, fields)| json!(["form_submissions", t, f, a, fields])),
    ]
}

fn batch(events: Vec<Value>, title: String) -> Value {
    json!({
        "v": 1, "key": KEY, "batch": "0b6f5e2c-3f0e-4bb1-9a57-8f6c2a0c1d2e", "sent_at": 1_764_000_000_000i64,
        "session": "s-1", "page": {"url": "https://example.com/", "title": title}, "events": events,
    })
}

/// One event as the loader's walk saw it, and its COPY tuple's fields
/// (`None`: SQL NULL) read back from the binary encoding.
struct Seen {
    type_name: String,
    position: i32,
    client_time: i64,
    attrs: Vec<Value>,
    fields: Vec<Option<Vec<u8>>>,
}

struct Collect<'c> {
    catalog: &'c chronos::catalog::EventCatalog,
    seen: Vec<Seen>,
    rejected: usize,
    /// Each batch's page, as the loaders store it once per batch.
    pages: Vec<String>,
}

impl Visit for Collect<'_> {
    fn page(&mut self, page: chronos::load::decode::BatchPage<'_>) {
        self.pages.push(page.metadata);
    }
    fn event(&mut self, table: usize, row: &Row<'_, '_>, batch_id: uuid::Uuid) {
        let ty = &self.catalog.types()[table];
        let mut buf = bytes::BytesMut::new();
        encode_row(&mut buf, ty, row, &batch_id);
        let attrs = row.attrs.iter().map(|v| v.map_or(Value::Null, |v| serde_json::to_value(v).unwrap())).collect();
        self.seen.push(Seen {
            type_name: ty.name.to_string(),
            position: row.position,
            client_time: row.client_time,
            attrs,
            fields: tuple_fields(&buf),
        });
    }
    fn reject(&mut self, _: DeadLetter) {
        self.rejected += 1;
    }
}

/// The fields of one binary COPY tuple: a 16-bit count, then each field's
/// 32-bit length (-1 for NULL) and bytes; nothing may follow.
fn tuple_fields(buf: &[u8]) -> Vec<Option<Vec<u8>>> {
    let n = i16::from_be_bytes([buf[0], buf[1]]) as usize;
    let mut at = 2;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(buf[at..at + 4].try_into().unwrap());
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            out.push(Some(buf[at..at + len as usize].to_vec()));
            at += len as usize;
        }
    }
    assert_eq!(at, buf.len(), "the tuple is exactly its fields");
    out
}

/// What an attribute value must look like in binary COPY.
fn expected_field(ty: chronos::catalog::AttrType, v: &Value) -> Option<Vec<u8>> {
    use chronos::catalog::AttrType;
    if v.is_null() {
        return None;
    }
    Some(match ty {
        AttrType::Text => v.as_str().unwrap().as_bytes().to_vec(),
        AttrType::Int => v.as_i64().unwrap().to_be_bytes().to_vec(),
        AttrType::Float => v.as_f64().unwrap().to_be_bytes().to_vec(),
        AttrType::Bool => vec![v.as_bool().unwrap() as u8],
        AttrType::TextList => {
            // ndim, has-null flag, element type (text), then length and lower bound, then the items.
            let items = v.as_array().unwrap();
            let mut b = Vec::new();
            b.extend(1i32.to_be_bytes());
            b.extend(0i32.to_be_bytes());
            b.extend(25u32.to_be_bytes());
            b.extend((items.len() as i32).to_be_bytes());
            b.extend(1i32.to_be_bytes());
            for s in items {
                let s = s.as_str().unwrap().as_bytes();
                b.extend((s.len() as i32).to_be_bytes());
                b.extend(s);
            }
            b
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Every event of every catalog type that receipt encodes into a Kafka
    /// record comes out of the loader's walk at its position with the same
    /// attribute values, and its binary COPY tuple holds exactly those values.
    #[test]
    fn encoded_records_decode_to_the_same_events(events in proptest::collection::vec(event(), 1..60), title in text(200)) {
        let shared = shared();
        let a = read_batch(&shared, receive(batch(events.clone(), title.clone()).to_string().into_bytes())).unwrap();
        let mut record = a.batch.record.unwrap();
        let catalog = &shared.catalog;
        let mut c = Collect { catalog, seen: Vec::new(), rejected: 0, pages: Vec::new() };
        let policy = TimePolicy { max_past_ms: i64::MAX / 4, max_future_ms: i64::MAX / 4 };
        walk(&mut record, catalog, policy, &mut c).unwrap();
        prop_assert_eq!(c.rejected, 0);
        prop_assert_eq!(c.seen.len(), events.len());
        prop_assert_eq!(c.pages.len(), 1);
        let page: Value = serde_json::from_str(&c.pages[0]).unwrap();
        prop_assert_eq!(&page["title"], &json!(title));
        prop_assert_eq!(&page["url"], &json!("https://example.com/"));
        let base = chronos::store::schema::BASE_COLUMNS.len();
        for (i, (sent, seen)) in events.iter().zip(&c.seen).enumerate() {
            let sent = sent.as_array().unwrap();
            prop_assert_eq!(seen.position, i as i32);
            prop_assert_eq!(&seen.type_name, sent[0].as_str().unwrap());
            prop_assert_eq!(seen.client_time, sent[1].as_i64().unwrap());
            let ty = catalog.types().iter().find(|t| *t.name == seen.type_name).unwrap();
            prop_assert_eq!(seen.fields.len(), base + ty.attributes.len());
            for (j, a) in ty.attributes.iter().enumerate() {
                let value = sent.get(2 + j).cloned().unwrap_or(Value::Null);
                prop_assert_eq!(&seen.attrs[j], &value, "{}.{}", seen.type_name, a.name);
                prop_assert_eq!(&seen.fields[base + j], &expected_field(a.ty, &value), "{}.{} in COPY", seen.type_name, a.name);
            }
        }
    }

    /// Valid events survive parse → validate → encode unchanged, in order.
    #[test]
    fn valid_batches_round_trip(events in proptest::collection::vec(event(), 1..60), title in text(200)) {
        let sent = batch(events.clone(), title);
        let a = read_batch(&shared(), receive(sent.to_string().into_bytes())).unwrap();
        prop_assert_eq!(a.summary.accepted, events.len());
        prop_assert_eq!(a.summary.rejected, 0);
        prop_assert!(a.batch.dead_letter.is_none());
        let record: Value = serde_json::from_slice(a.batch.record.as_ref().unwrap()).unwrap();
        prop_assert_eq!(&record["events"], &Value::Array(events));
        prop_assert_eq!(&record["page"], &sent["page"]);
    }

    /// One corrupted attribute rejects that event alone, with its position in the reason.
    #[test]
    fn a_corrupted_event_is_rejected_alone(
        events in proptest::collection::vec(event(), 2..30),
        pick in any::<prop::sample::Index>(),
        // Nesting past what a batch needs refuses the whole batch instead (400 too_deep,
        // tests/hostile.rs), so the junk stays within one level of the attribute.
        junk in prop_oneof![Just(json!({"x": 1})), Just(json!([1, 2])), Just(json!(1.5e300)), Just(json!(-1e18))],
    ) {
        let mut events = events;
        let i = pick.index(events.len());
        let n = events[i].as_array().unwrap().len();
        events[i][n.max(3) - 1] = junk;
        let a = read_batch(&shared(), receive(batch(events.clone(), "t".into()).to_string().into_bytes())).unwrap();
        prop_assert_eq!(a.summary.accepted + a.summary.rejected, events.len());
        prop_assert!(a.summary.rejected <= 1);
        if a.summary.rejected == 1 {
            let prefix = format!("events[{i}]");
            prop_assert!(a.summary.reasons[0].starts_with(&prefix), "{}", a.summary.reasons[0]);
            let dead: Value = serde_json::from_slice(a.batch.dead_letter.as_ref().unwrap()).unwrap();
            prop_assert_eq!(&dead["rejected"][0]["event"], &events[i]);
        }
    }

    /// Arbitrary bytes never panic: the answer is a batch or a specific 400.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        match read_batch(&shared(), receive(bytes)) {
            Ok(_) | Err(IngestError::Payload(_)) | Err(IngestError::UnknownKey) => {}
            Err(e) => prop_assert!(false, "unexpected error {e:?}"),
        }
    }

    /// Truncating a valid batch anywhere gives a malformed-JSON error at an offset inside the body.
    #[test]
    fn truncation_names_an_offset_inside_the_body(events in proptest::collection::vec(event(), 1..10), cut in any::<prop::sample::Index>()) {
        let text = batch(events, "t".into()).to_string().into_bytes();
        let at = cut.index(text.len() - 1);
        match read_batch(&shared(), receive(text[..at].to_vec())) {
            Err(IngestError::Payload(chronos::payload::PayloadError::Malformed { offset, .. })) => prop_assert!(offset <= at),
            other => prop_assert!(false, "cut at {at}: {other:?}"),
        }
    }
}
