//! Server-side sessions (`chronos.sessions`), kept by the loaders in the
//! transaction that stores the events, so they are exact across restarts and
//! re-deliveries (a record loaded again is skipped whole with its batch).
//!
//! A visit is the tracker's session id split at idle gaps: events of one
//! session id more than `load.session_gap_secs` (30 min) apart start a new
//! row. Each record (one batch: seconds of one page) is one piece that goes
//! whole into one row; a piece that arrives late joins the row it falls
//! within a gap of (widening its start and entry URL). Sessions do not split
//! at midnight: one row runs as long as its events keep coming.

use tokio_postgres::{Error, Transaction};

/// What one record contributes: its events' span and counts, and the batch's facts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Piece {
    pub session_id: String,
    pub start: i64,
    pub end: i64,
    pub events: i64,
    pub pageviews: i64,
    pub url: Option<String>,
    /// The `referrer` attribute of the record's first pageview.
    pub referrer: Option<String>,
    pub user_id: Option<String>,
    pub is_bot: bool,
    pub browser: Option<String>,
    pub os: Option<String>,
    pub device_type: Option<String>,
    pub country: Option<String>,
    pub region: Option<String>,
    pub city: Option<String>,
}

/// One row of `chronos.sessions` (`id` is `None` until inserted).
#[derive(Debug, Clone, PartialEq)]
pub struct Visit {
    pub id: Option<i64>,
    pub first: Piece,
    pub entry_url: Option<String>,
    pub exit_url: Option<String>,
    pub changed: bool,
}

impl Visit {
    fn new(p: &Piece) -> Visit {
        Visit { id: None, first: p.clone(), entry_url: p.url.clone(), exit_url: p.url.clone(), changed: true }
    }

    fn absorbs(&self, p: &Piece, gap: i64) -> bool {
        p.start <= self.first.end + gap && p.end >= self.first.start - gap
    }

    fn add(&mut self, p: &Piece) {
        let s = &mut self.first;
        if p.start < s.start {
            s.start = p.start;
            self.entry_url = p.url.clone().or(self.entry_url.take());
            if p.referrer.is_some() {
                s.referrer = p.referrer.clone();
            }
        }
        if p.end >= s.end {
            s.end = p.end;
            self.exit_url = p.url.clone().or(self.exit_url.take());
        }
        s.events += p.events;
        s.pageviews += p.pageviews;
        s.user_id = s.user_id.take().or_else(|| p.user_id.clone());
        s.referrer = s.referrer.take().or_else(|| p.referrer.clone());
        s.is_bot |= p.is_bot;
        for (mine, theirs) in [
            (&mut s.browser, &p.browser),
            (&mut s.os, &p.os),
            (&mut s.device_type, &p.device_type),
            (&mut s.country, &p.country),
            (&mut s.region, &p.region),
            (&mut s.city, &p.city),
        ] {
            if mine.is_none() {
                mine.clone_from(theirs);
            }
        }
        self.changed = true;
    }
}

/// Merges `pieces` into the rows `existing` (those of the same session ids
/// that could absorb them); returns every row, changed ones marked.
pub fn merge(mut existing: Vec<Visit>, pieces: &[Piece], gap_ms: i64) -> Vec<Visit> {
    let mut sorted: Vec<&Piece> = pieces.iter().collect();
    sorted.sort_by(|a, b| (&a.session_id, a.start).cmp(&(&b.session_id, b.start)));
    for p in sorted {
        match existing.iter_mut().filter(|v| v.first.session_id == p.session_id && v.absorbs(p, gap_ms)).min_by_key(|v| (p.start - v.first.end).abs())
        {
            Some(v) => v.add(p),
            None => existing.push(Visit::new(p)),
        }
    }
    existing
}

const SELECT: &str = "SELECT id, session_id, (extract(epoch FROM started_at) * 1000)::bigint, (extract(epoch FROM ended_at) * 1000)::bigint,
       events, pageviews, entry_url, exit_url, referrer, user_id, is_bot, browser, os, device_type, country, region, city
     FROM chronos.sessions WHERE session_id = ANY($1) AND ended_at >= to_timestamp($2::bigint / 1000.0) FOR UPDATE";

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

/// Folds `pieces` into `chronos.sessions` inside `tx`; returns the rows written.
pub async fn apply(tx: &Transaction<'_>, pieces: &[Piece], gap_ms: i64) -> Result<u64, Error> {
    if pieces.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = {
        let mut v: Vec<&str> = pieces.iter().map(|p| p.session_id.as_str()).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let from = pieces.iter().map(|p| p.start).min().unwrap_or(0) - gap_ms;
    let rows = tx.query(SELECT, &[&ids, &from]).await?;
    let existing: Vec<Visit> = rows
        .iter()
        .map(|r| Visit {
            id: Some(r.get(0)),
            first: Piece {
                session_id: r.get(1),
                start: r.get(2),
                end: r.get(3),
                events: r.get(4),
                pageviews: r.get(5),
                url: None,
                referrer: r.get(8),
                user_id: r.get(9),
                is_bot: r.get(10),
                browser: r.get(11),
                os: r.get(12),
                device_type: r.get(13),
                country: r.get(14),
                region: r.get(15),
                city: r.get(16),
            },
            entry_url: r.get(6),
            exit_url: r.get(7),
            changed: false,
        })
        .collect();
    let merged = merge(existing, pieces, gap_ms);
    let mut written = 0;
    for insert in [true, false] {
        let rows: Vec<&Visit> = merged.iter().filter(|v| v.changed && v.id.is_none() == insert).collect();
        if rows.is_empty() {
            continue;
        }
        let text = |f: fn(&Visit) -> Option<&str>| rows.iter().map(|v| f(v)).collect::<Vec<Option<&str>>>();
        let big = |f: fn(&Visit) -> i64| rows.iter().map(|v| f(v)).collect::<Vec<i64>>();
        let sessions: Vec<&str> = rows.iter().map(|v| v.first.session_id.as_str()).collect();
        let keys: Vec<i64> = rows.iter().map(|v| v.id.unwrap_or_default()).collect();
        let (a, b, e, p) = (big(|v| v.first.start), big(|v| v.first.end), big(|v| v.first.events), big(|v| v.first.pageviews));
        let (eu, xu, r, u) = (
            text(|v| v.entry_url.as_deref()),
            text(|v| v.exit_url.as_deref()),
            text(|v| v.first.referrer.as_deref()),
            text(|v| v.first.user_id.as_deref()),
        );
        let bots: Vec<bool> = rows.iter().map(|v| v.first.is_bot).collect();
        let (br, o, d) = (text(|v| v.first.browser.as_deref()), text(|v| v.first.os.as_deref()), text(|v| v.first.device_type.as_deref()));
        let (c, rg, ci) = (text(|v| v.first.country.as_deref()), text(|v| v.first.region.as_deref()), text(|v| v.first.city.as_deref()));
        written += if insert {
            tx.execute(INSERT, &[&sessions, &a, &b, &e, &p, &eu, &xu, &r, &u, &bots, &br, &o, &d, &c, &rg, &ci]).await?
        } else {
            tx.execute(UPDATE, &[&keys, &a, &b, &e, &p, &eu, &xu, &r, &u, &bots, &br, &o, &d, &c, &rg, &ci]).await?
        };
    }
    Ok(written)
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Sessions per id in the order given (tests).
    fn by_session(v: &[Visit]) -> HashMap<&str, Vec<&Visit>> {
        let mut m: HashMap<&str, Vec<&Visit>> = HashMap::new();
        for x in v {
            m.entry(x.first.session_id.as_str()).or_default().push(x);
        }
        m
    }

    const MIN: i64 = 60_000;

    fn piece(session: &str, start: i64, end: i64, url: &str) -> Piece {
        Piece { session_id: session.into(), start, end, events: 2, pageviews: 1, url: Some(url.into()), ..Piece::default() }
    }

    #[test]
    fn an_idle_gap_splits_and_late_pieces_join_their_visit() {
        let gap = 30 * MIN;
        let pieces = [piece("s", 0, MIN, "/a"), piece("s", 10 * MIN, 11 * MIN, "/b"), piece("s", 50 * MIN, 51 * MIN, "/c"), piece("t", 0, 0, "/x")];
        let v = merge(Vec::new(), &pieces, gap);
        let m = by_session(&v);
        assert_eq!(m["s"].len(), 2, "{v:?}");
        let first = m["s"][0];
        assert_eq!(
            (first.first.start, first.first.end, first.first.events, first.entry_url.as_deref(), first.exit_url.as_deref()),
            (0, 11 * MIN, 4, Some("/a"), Some("/b"))
        );
        assert_eq!(m["t"].len(), 1);
        // A piece that arrives late, before the visit's start but within the gap, widens it.
        let v = merge(v, &[piece("s", -5 * MIN, -4 * MIN, "/early")], gap);
        let m = by_session(&v);
        assert_eq!(m["s"].len(), 2);
        assert_eq!((m["s"][0].first.start, m["s"][0].entry_url.as_deref(), m["s"][0].first.events), (-5 * MIN, Some("/early"), 6));
        // And one past the gap after the last visit starts a third.
        let v = merge(v, &[piece("s", 90 * MIN, 90 * MIN, "/d")], gap);
        assert_eq!(by_session(&v)["s"].len(), 3);
    }
}
