//! Server-side sessions (`chronos.sessions`), kept by the loaders in the
//! transaction that stores the events, so they are exact across restarts and
//! re-deliveries (a record loaded again is skipped whole with its batch).
//!
//! A visit is the tracker's session id split at idle gaps: events of one
//! session id more than `load.session_gap_secs` (30 min) apart start a new
//! row. Each record (one batch: seconds of one page) is one piece; which
//! pieces make a visit and what its row holds depend on the events' times
//! only, never on the order records arrive in (`visits`): a late piece joins
//! the visit it falls within a gap of, and one that bridges two visits merges
//! them into one row. Sessions do not split at midnight.
//!
//! One loader at a time writes a session's rows: the record key is the
//! session id, so all of a session's records are on one partition (while
//! the topic's partition count stays the same), and the offset fence keeps a
//! deposed loader of that partition from committing. The rows read are also
//! locked (`FOR UPDATE`).

use tokio_postgres::{Error, Row, Transaction};

pub use super::visits::Piece;
use super::visits::{plan, Entry, Plan, Visit};

/// The rows of each session id that could be within the gap of its pieces:
/// those that end at most the gap before its first piece starts and start
/// at most the gap after its last piece ends.
const SELECT: &str = "SELECT s.id, s.session_id, (extract(epoch FROM s.started_at) * 1000)::bigint, (extract(epoch FROM s.ended_at) * 1000)::bigint,
       s.events, s.pageviews, s.entry_url, s.exit_url, s.referrer, s.user_id, s.is_bot, s.browser, s.os, s.device_type, s.country, s.region, s.city
     FROM chronos.sessions s JOIN unnest($1::text[], $2::bigint[], $3::bigint[]) AS x(session_id, low, high) ON s.session_id = x.session_id
     WHERE s.ended_at >= to_timestamp(x.low / 1000.0) AND s.started_at <= to_timestamp(x.high / 1000.0)
     ORDER BY s.id FOR UPDATE OF s";

const INSERT: &str = "INSERT INTO chronos.sessions (session_id, started_at, ended_at, events, pageviews, entry_url, exit_url, referrer,
       user_id, is_bot, browser, os, device_type, country, region, city)
     SELECT s, to_timestamp(a / 1000.0), to_timestamp(b / 1000.0), e, p, eu, xu, r, u, bot, br, o, d, c, rg, ci
     FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[], $7::text[], $8::text[],
                 $9::text[], $10::bool[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[])
       AS x(s, a, b, e, p, eu, xu, r, u, bot, br, o, d, c, rg, ci)";

const UPDATE: &str = "UPDATE chronos.sessions t SET started_at = to_timestamp(x.a / 1000.0), ended_at = to_timestamp(x.b / 1000.0),
       events = x.e, pageviews = x.p, entry_url = x.eu, exit_url = x.xu, referrer = x.r, user_id = x.u, is_bot = x.bot,
       browser = x.br, os = x.o, device_type = x.d, country = x.c, region = x.rg, city = x.ci
     FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[], $7::text[], $8::text[],
                 $9::text[], $10::bool[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[])
       AS x(id, a, b, e, p, eu, xu, r, u, bot, br, o, d, c, rg, ci)
     WHERE t.id = x.id";

const DELETE: &str = "DELETE FROM chronos.sessions WHERE id = ANY($1)";

/// Folds `pieces` into `chronos.sessions` inside `tx`; returns the rows
/// written (inserted, updated and deleted).
pub async fn apply(tx: &Transaction<'_>, pieces: &[Piece], gap_ms: i64) -> Result<u64, Error> {
    if pieces.is_empty() {
        return Ok(0);
    }
    let (ids, low, high) = bounds(pieces, gap_ms);
    let existing = tx.query(SELECT, &[&ids, &low, &high]).await?.iter().map(stored).collect();
    write(tx, &plan(existing, pieces, gap_ms)).await
}

/// Each session id of `pieces` once, with the window its rows are read in.
fn bounds(pieces: &[Piece], gap_ms: i64) -> (Vec<&str>, Vec<i64>, Vec<i64>) {
    let mut by_session: std::collections::BTreeMap<&str, (i64, i64)> = Default::default();
    for p in pieces {
        let w = by_session.entry(&p.session_id).or_insert((p.start, p.end));
        *w = (w.0.min(p.start), w.1.max(p.end));
    }
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for (id, (start, end)) in by_session {
        out.0.push(id);
        out.1.push(start.saturating_sub(gap_ms));
        out.2.push(end.saturating_add(gap_ms));
    }
    out
}

/// A row of `SELECT`.
fn stored(r: &Row) -> (i64, Visit) {
    let visit = Visit {
        session_id: r.get(1),
        start: r.get(2),
        end: r.get(3),
        events: r.get(4),
        pageviews: r.get(5),
        entry: Entry {
            url: r.get(6),
            referrer: r.get(8),
            browser: r.get(11),
            os: r.get(12),
            device_type: r.get(13),
            country: r.get(14),
            region: r.get(15),
            city: r.get(16),
        },
        exit_url: r.get(7),
        user_id: r.get(9),
        is_bot: r.get(10),
    };
    (r.get(0), visit)
}

/// Writes `plan`: the merged-away rows deleted, then the updates and inserts.
async fn write(tx: &Transaction<'_>, plan: &Plan) -> Result<u64, Error> {
    let mut written = 0;
    if !plan.deletes.is_empty() {
        written += tx.execute(DELETE, &[&plan.deletes]).await?;
    }
    if !plan.updates.is_empty() {
        let keys: Vec<i64> = plan.updates.iter().map(|(id, _)| *id).collect();
        let rows: Vec<&Visit> = plan.updates.iter().map(|(_, v)| v).collect();
        written += upsert(tx, UPDATE, &keys, &rows).await?;
    }
    if !plan.inserts.is_empty() {
        let sessions: Vec<&str> = plan.inserts.iter().map(|v| v.session_id.as_str()).collect();
        let rows: Vec<&Visit> = plan.inserts.iter().collect();
        written += upsert(tx, INSERT, &sessions, &rows).await?;
    }
    Ok(written)
}

/// Runs `INSERT` (`key` the session ids) or `UPDATE` (`key` the row ids)
/// with the columns of `rows`.
async fn upsert<K>(tx: &Transaction<'_>, sql: &str, key: &K, rows: &[&Visit]) -> Result<u64, Error>
where
    K: tokio_postgres::types::ToSql + Sync,
{
    let text = |f: fn(&Visit) -> Option<&str>| rows.iter().map(|v| f(v)).collect::<Vec<Option<&str>>>();
    let big = |f: fn(&Visit) -> i64| rows.iter().map(|v| f(v)).collect::<Vec<i64>>();
    let (a, b, e, p) = (big(|v| v.start), big(|v| v.end), big(|v| v.events), big(|v| v.pageviews));
    let (eu, xu, r, u) =
        (text(|v| v.entry.url.as_deref()), text(|v| v.exit_url.as_deref()), text(|v| v.entry.referrer.as_deref()), text(|v| v.user_id.as_deref()));
    let bots: Vec<bool> = rows.iter().map(|v| v.is_bot).collect();
    let (br, o, d) = (text(|v| v.entry.browser.as_deref()), text(|v| v.entry.os.as_deref()), text(|v| v.entry.device_type.as_deref()));
    let (c, rg, ci) = (text(|v| v.entry.country.as_deref()), text(|v| v.entry.region.as_deref()), text(|v| v.entry.city.as_deref()));
    tx.execute(sql, &[key, &a, &b, &e, &p, &eu, &xu, &r, &u, &bots, &br, &o, &d, &c, &rg, &ci]).await
}

/// Pieces of one flush, one per record (built while its events are walked).
#[derive(Debug, Default)]
pub struct Pieces {
    pub pieces: Vec<Piece>,
    /// Batch id of the last piece (a new record starts a new piece).
    last: Option<uuid::Uuid>,
}

impl Pieces {
    /// The piece of the record `batch_id`, started from `fresh` when it is a new one.
    pub fn of(&mut self, batch_id: uuid::Uuid, fresh: impl FnOnce() -> Piece) -> &mut Piece {
        if self.last != Some(batch_id) || self.pieces.is_empty() {
            self.pieces.push(fresh());
            self.last = Some(batch_id);
        }
        self.pieces.last_mut().expect("pushed above")
    }
}
