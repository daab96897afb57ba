//! What one loader transaction writes, statement by statement: the batch ids
//! it claims (`chronos.seen_batches`), their pages (`chronos.batches`), the
//! COPY into each raw event table, its
//! dead letters, and the partition's next offset, fenced on the offset the
//! loader started from. The tables are created by `schema::INTERNALS`; the
//! loader (`load::loader`) calls these in turn inside one transaction.
//!
//! The statements are prepared once per connection (`Internals::prepare`):
//! a flush then costs no parse or plan round trip.

use std::collections::HashSet;

use bytes::{Bytes, BytesMut};
use futures_util::SinkExt;
use tokio_postgres::{Client, Error, GenericClient, Statement, Transaction};
use uuid::Uuid;

use super::copy::{HEADER, TRAILER};
use super::schema::{ident, table, BASE_COLUMNS};
use crate::catalog::{EventCatalog, EventType};

/// COPY data is sent in pieces of about this size.
const COPY_CHUNK_BYTES: usize = 256 * 1024;

const CLAIM_BATCHES: &str =
    "INSERT INTO chronos.seen_batches (batch_id, kept) SELECT * FROM unnest($1::uuid[], $2::bool[]) ON CONFLICT DO NOTHING RETURNING batch_id";

pub const INSERT_PAGES: &str = "INSERT INTO chronos.batches (batch_id, received_at, session_id, metadata)
     SELECT b, 'epoch'::timestamptz + r * interval '1 millisecond', s, m::jsonb FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[]) AS u(b, r, s, m)
     ON CONFLICT DO NOTHING";

const INSERT_DEAD_LETTERS: &str =
    "INSERT INTO chronos.dead_letters (stage, reason, topic, partition, \"offset\", batch_id, position, event, raw, context, sqlstate)
     SELECT s, r, $3, $4, o, b, p, e::jsonb, w, c::jsonb, q
     FROM unnest($1::text[], $2::text[], $5::bigint[], $6::uuid[], $7::int[], $8::text[], $9::bytea[], $10::text[], $11::text[])
          AS u(s, r, o, b, p, e, w, c, q)
     ON CONFLICT DO NOTHING";

const ADVANCE_OFFSET: &str = "INSERT INTO chronos.offsets (consumer_group, topic, partition, next_offset) VALUES ($1, $2, $3, $4)
     ON CONFLICT (consumer_group, topic, partition) DO UPDATE
     SET next_offset = EXCLUDED.next_offset, updated_at = now()
     WHERE chronos.offsets.next_offset IS NOT DISTINCT FROM $5";

const UPSERT_IDENTITIES: &str = "INSERT INTO chronos.identities (session_id, user_id, first_seen, last_seen)
     SELECT s, u, to_timestamp(f / 1000.0), to_timestamp(l / 1000.0) FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS x(s, u, f, l)
     ON CONFLICT (session_id, user_id) DO UPDATE
     SET first_seen = least(chronos.identities.first_seen, EXCLUDED.first_seen),
         last_seen = greatest(chronos.identities.last_seen, EXCLUDED.last_seen)";

const STORED_OFFSET: &str = "SELECT next_offset FROM chronos.offsets WHERE consumer_group = $1 AND topic = $2 AND partition = $3";

/// An event or record that cannot be loaded, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub stage: &'static str,
    pub reason: String,
    pub batch_id: Option<Uuid>,
    pub position: Option<i32>,
    /// The event as JSON text.
    pub event: Option<String>,
    /// The whole record, when it could not be decoded.
    pub raw: Option<Vec<u8>>,
    /// The batch's facts as JSON (session_id, key_id, sent_at, received_at,
    /// client_ip, user_agent, page): what a replay needs to rebuild a record.
    pub context: Option<String>,
    /// PostgreSQL's SQLSTATE, when a permanent error of PostgreSQL's was
    /// traced to this record (set aside whole: `raw` holds it).
    pub sqlstate: Option<String>,
}

/// `text` as PostgreSQL's text columns take it: a NUL (which no text or
/// jsonb value can hold) written as the six characters `\u0000`. The raw
/// bytes, when kept, stay verbatim in `raw` (bytea).
pub fn storable_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\\u0000"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// JSON text as a jsonb column takes it: every NUL in a string or a key (the
/// escape `\u0000`, which jsonb refuses with 22P05) becomes the visible
/// text `\u0000`. Text that is not JSON serde_json reads is kept as one
/// JSON string. Most texts have no such escape and are returned as they are.
pub fn storable_json(text: &str) -> std::borrow::Cow<'_, str> {
    use serde_json::Value;
    fn clean(v: Value) -> Value {
        match v {
            Value::String(s) => Value::String(storable_text(&s).into_owned()),
            Value::Array(a) => Value::Array(a.into_iter().map(clean).collect()),
            Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (storable_text(&k).into_owned(), clean(v))).collect()),
            other => other,
        }
    }
    if !text.contains("\\u0000") && !text.contains('\0') {
        return std::borrow::Cow::Borrowed(text);
    }
    let cleaned = match serde_json::from_str::<Value>(text) {
        Ok(v) => clean(v),
        Err(_) => Value::String(storable_text(text).into_owned()),
    };
    std::borrow::Cow::Owned(cleaned.to_string())
}

/// `COPY events."<type>" (base columns, attributes) FROM STDIN (FORMAT binary)`:
/// the column order `load::decode` writes tuples in.
pub fn copy_statement(ty: &EventType) -> String {
    let cols: Vec<String> = BASE_COLUMNS.iter().map(|(n, _)| ident(n)).chain(ty.attributes.iter().map(|a| ident(&a.name))).collect();
    format!("COPY {} ({}) FROM STDIN (FORMAT binary)", table(ty), cols.join(", "))
}

/// The pages of a flush's batches, once per batch (`chronos.batches`), as
/// the arrays `Internals::store_pages` sends.
#[derive(Debug, Default)]
pub struct Pages {
    pub batch_ids: Vec<Uuid>,
    /// Milliseconds since the Unix epoch.
    pub received_at: Vec<i64>,
    pub session_ids: Vec<String>,
    /// Each page as JSON text.
    pub metadata: Vec<String>,
}

impl Pages {
    pub fn push(&mut self, batch_id: Uuid, received_at: i64, session_id: &str, metadata: String) {
        self.batch_ids.push(batch_id);
        self.received_at.push(received_at);
        self.session_ids.push(session_id.to_string());
        self.metadata.push(metadata);
    }
}

/// The loader's statements, prepared on one connection.
pub struct Internals {
    claim_batches: Statement,
    pages: Statement,
    identities: Statement,
    dead_letters: Statement,
    advance_offset: Statement,
    /// One per catalog type, in catalog order.
    copy: Vec<Statement>,
}

impl Internals {
    /// Prepares every statement on `client` (pipelined: one round trip).
    pub async fn prepare(client: &Client, catalog: &EventCatalog) -> Result<Self, Error> {
        let copies: Vec<String> = catalog.types().iter().map(copy_statement).collect();
        let (fixed, copy) = futures_util::future::try_join(
            futures_util::future::try_join5(
                client.prepare(CLAIM_BATCHES),
                client.prepare(INSERT_DEAD_LETTERS),
                client.prepare(ADVANCE_OFFSET),
                client.prepare(UPSERT_IDENTITIES),
                client.prepare(INSERT_PAGES),
            ),
            futures_util::future::try_join_all(copies.iter().map(|sql| client.prepare(sql))),
        )
        .await?;
        let (claim_batches, dead_letters, advance_offset, identities, pages) = fixed;
        Ok(Internals { claim_batches, pages, identities, dead_letters, advance_offset, copy })
    }

    /// Records `ids` as seen, those in `kept` (imported batches) for good;
    /// returns those that were not seen before (a batch id seen before is a
    /// tracker retry of a batch already loaded, or an import run again).
    /// Blocks while another open transaction holds one of them.
    pub async fn claim_batches(&self, tx: &Transaction<'_>, ids: &[Uuid], kept: &HashSet<Uuid>) -> Result<HashSet<Uuid>, Error> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let keep: Vec<bool> = ids.iter().map(|id| kept.contains(id)).collect();
        let rows = tx.query(&self.claim_batches, &[&ids, &keep]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Stores each batch's page once (`chronos.batches`), keeping one stored
    /// before. Returns the pages added.
    pub async fn store_pages(&self, tx: &Transaction<'_>, pages: &Pages) -> Result<u64, Error> {
        if pages.batch_ids.is_empty() {
            return Ok(0);
        }
        tx.execute(&self.pages, &[&pages.batch_ids, &pages.received_at, &pages.session_ids, &pages.metadata]).await
    }

    /// Streams binary COPY tuples (without header or trailer) into the table
    /// of catalog type `table`. Returns the rows copied.
    pub async fn copy_rows(&self, tx: &Transaction<'_>, table: usize, tuples: &[u8]) -> Result<u64, Error> {
        let sink = tx.copy_in::<_, Bytes>(&self.copy[table]).await?;
        futures_util::pin_mut!(sink);
        // In pieces: a second whole copy of a table's rows is what set
        // chronosd's peak memory while the loaders lagged.
        let mut chunk = BytesMut::with_capacity(COPY_CHUNK_BYTES * 2);
        chunk.extend_from_slice(HEADER);
        for piece in tuples.chunks(COPY_CHUNK_BYTES) {
            chunk.extend_from_slice(piece);
            if chunk.len() >= COPY_CHUNK_BYTES {
                sink.feed(chunk.split().freeze()).await?;
            }
        }
        chunk.extend_from_slice(TRAILER);
        sink.feed(chunk.freeze()).await?;
        sink.finish().await
    }

    /// Records which user each session was and when, from the records'
    /// pieces (each has one session, user and span): first and last seen only
    /// widen, so a record loaded again changes nothing.
    pub async fn upsert_identities(&self, tx: &Transaction<'_>, pieces: &[super::sessions::Piece]) -> Result<u64, Error> {
        let mut seen: std::collections::HashMap<(&str, &str), (i64, i64)> = std::collections::HashMap::new();
        for p in pieces {
            let Some(user) = p.user_id.as_deref() else { continue };
            let span = seen.entry((p.session_id.as_str(), user)).or_insert((p.start, p.end));
            *span = (span.0.min(p.start), span.1.max(p.end));
        }
        if seen.is_empty() {
            return Ok(0);
        }
        let (mut sessions, mut users, mut firsts, mut lasts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((s, u), (f, l)) in seen {
            sessions.push(s);
            users.push(u);
            firsts.push(f);
            lasts.push(l);
        }
        tx.execute(&self.identities, &[&sessions, &users, &firsts, &lasts]).await
    }

    /// Inserts dead letters of `topic`/`partition`, each with the offset of its
    /// record; one a retried batch already wrote is skipped.
    pub async fn insert_dead_letters(&self, tx: &Transaction<'_>, topic: &str, partition: i32, letters: &[(i64, DeadLetter)]) -> Result<u64, Error> {
        if letters.is_empty() {
            return Ok(0);
        }
        // Dead letters hold what could not be stored elsewhere: every text is
        // made storable first, or one NUL would stall this partition too.
        let stages: Vec<&str> = letters.iter().map(|(_, d)| d.stage).collect();
        let reasons: Vec<std::borrow::Cow<'_, str>> = letters.iter().map(|(_, d)| storable_text(&d.reason)).collect();
        let offsets: Vec<i64> = letters.iter().map(|(o, _)| *o).collect();
        let batch_ids: Vec<Option<Uuid>> = letters.iter().map(|(_, d)| d.batch_id).collect();
        let positions: Vec<Option<i32>> = letters.iter().map(|(_, d)| d.position).collect();
        let events: Vec<Option<std::borrow::Cow<'_, str>>> = letters.iter().map(|(_, d)| d.event.as_deref().map(storable_json)).collect();
        let raws: Vec<Option<&[u8]>> = letters.iter().map(|(_, d)| d.raw.as_deref()).collect();
        let contexts: Vec<Option<std::borrow::Cow<'_, str>>> = letters.iter().map(|(_, d)| d.context.as_deref().map(storable_json)).collect();
        let sqlstates: Vec<Option<&str>> = letters.iter().map(|(_, d)| d.sqlstate.as_deref()).collect();
        let (reasons, events, contexts): (Vec<&str>, Vec<Option<&str>>, Vec<Option<&str>>) = (
            reasons.iter().map(|r| r.as_ref()).collect(),
            events.iter().map(|e| e.as_deref()).collect(),
            contexts.iter().map(|c| c.as_deref()).collect(),
        );
        tx.execute(
            &self.dead_letters,
            &[&stages, &reasons, &topic, &partition, &offsets, &batch_ids, &positions, &events, &raws, &contexts, &sqlstates],
        )
        .await
    }

    /// Moves the stored next offset of a partition to `next` if it still is
    /// `expected` (`None`: no row yet). `false` means another loader moved it
    /// (it owned the partition after us): this transaction must not commit.
    pub async fn advance_offset(
        &self,
        tx: &Transaction<'_>,
        group: &str,
        topic: &str,
        partition: i32,
        expected: Option<i64>,
        next: i64,
    ) -> Result<bool, Error> {
        Ok(tx.execute(&self.advance_offset, &[&group, &topic, &partition, &next, &expected]).await? == 1)
    }
}

/// The stored next offset of a partition for a group (`None`: never loaded).
pub async fn stored_offset(client: &impl GenericClient, group: &str, topic: &str, partition: i32) -> Result<Option<i64>, Error> {
    Ok(client.query_opt(STORED_OFFSET, &[&group, &topic, &partition]).await?.map(|r| r.get(0)))
}

#[cfg(test)]
mod storable {
    use super::*;

    #[test]
    fn nul_becomes_visible_text_and_everything_else_stays() {
        assert!(matches!(storable_text("plain"), std::borrow::Cow::Borrowed("plain")));
        assert_eq!(storable_text("a\0b"), "a\\u0000b");
        assert!(matches!(storable_json(r#"{"a":"b"}"#), std::borrow::Cow::Borrowed(_)));
        let cleaned: serde_json::Value = serde_json::from_str(&storable_json(r#"["k\u0000",{"x\u0000":"\u0000"}]"#)).unwrap();
        assert_eq!(cleaned, serde_json::json!(["k\\u0000", {"x\\u0000": "\\u0000"}]));
        // An escaped backslash before u0000 is no NUL: kept as it was.
        let text = r#"["\\u0000"]"#;
        let kept: serde_json::Value = serde_json::from_str(&storable_json(text)).unwrap();
        assert_eq!(kept, serde_json::from_str::<serde_json::Value>(text).unwrap());
        // Not JSON (or too deep for serde_json): one JSON string.
        assert_eq!(storable_json("{\"a\u{0}"), "\"{\\\"a\\\\u0000\"");
    }
}
