//! Visits as a function of event times: which pieces (one per loaded record)
//! make one visit, and what the visit's row holds — the pure part of
//! `chronos.sessions`, whatever the order the pieces arrive in.
//!
//! A visit is a maximal run of one session id's pieces in which each piece
//! starts at most the gap after the run so far ends (`load.session_gap_secs`).
//! Every figure of a row is an associative, commutative fold of its pieces
//! (min, max, sum, or "the piece that starts first / ends last" with a fixed
//! tie-break), so folding a late piece into stored rows gives the row that
//! in-order arrival would have given — including a piece that bridges two
//! stored visits, which become one.

use std::collections::BTreeMap;

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

/// The facts a visit takes from its first piece (the one with the earliest
/// start; among pieces starting in the same millisecond, the least of these
/// facts in field order, so the choice never depends on arrival order).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub url: Option<String>,
    pub referrer: Option<String>,
    pub browser: Option<String>,
    pub os: Option<String>,
    pub device_type: Option<String>,
    pub country: Option<String>,
    pub region: Option<String>,
    pub city: Option<String>,
}

/// The figures of one row of `chronos.sessions` (without its id).
#[derive(Debug, Clone, PartialEq)]
pub struct Visit {
    pub session_id: String,
    pub start: i64,
    pub end: i64,
    pub events: i64,
    pub pageviews: i64,
    pub entry: Entry,
    /// The URL of the piece that ends last (ties: the greatest).
    pub exit_url: Option<String>,
    /// The least user id among the pieces that have one (a visit has one
    /// user unless the site called `reset()` and `identify` again).
    pub user_id: Option<String>,
    /// Any piece was a bot's.
    pub is_bot: bool,
}

impl Visit {
    /// The visit of `p` alone.
    pub fn of(p: &Piece) -> Visit {
        Visit {
            session_id: p.session_id.clone(),
            start: p.start,
            end: p.end,
            events: p.events,
            pageviews: p.pageviews,
            entry: Entry {
                url: p.url.clone(),
                referrer: p.referrer.clone(),
                browser: p.browser.clone(),
                os: p.os.clone(),
                device_type: p.device_type.clone(),
                country: p.country.clone(),
                region: p.region.clone(),
                city: p.city.clone(),
            },
            exit_url: p.url.clone(),
            user_id: p.user_id.clone(),
            is_bot: p.is_bot,
        }
    }

    /// Folds `other` (of the same session id) into this visit. Commutative
    /// and associative: the order visits and pieces are folded in never shows.
    pub fn absorb(&mut self, other: &Visit) {
        if (other.start, &other.entry) < (self.start, &self.entry) {
            self.entry.clone_from(&other.entry);
        }
        if (other.end, &other.exit_url) > (self.end, &self.exit_url) {
            self.exit_url.clone_from(&other.exit_url);
        }
        self.start = self.start.min(other.start);
        self.end = self.end.max(other.end);
        self.events += other.events;
        self.pageviews += other.pageviews;
        self.user_id = match (self.user_id.take(), &other.user_id) {
            (Some(mine), Some(theirs)) => Some(mine.min(theirs.clone())),
            (mine, theirs) => mine.or_else(|| theirs.clone()),
        };
        self.is_bot |= other.is_bot;
    }
}

/// What to write to `chronos.sessions` so that it holds the visits of its
/// rows and the new pieces.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub inserts: Vec<Visit>,
    /// Rows whose figures change, by id.
    pub updates: Vec<(i64, Visit)>,
    /// Rows folded into another (a piece bridged them), by id.
    pub deletes: Vec<i64>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.inserts.is_empty() && self.updates.is_empty() && self.deletes.is_empty()
    }
}

/// A stored row (`Some(id)`) or a new piece, on its way into a visit.
type Item = (Option<i64>, Visit);

/// Folds `pieces` into the stored rows `existing` (every row of their session
/// ids that could be within `gap_ms` of one of them): runs of rows and pieces
/// each within the gap of the run so far become one visit, kept in the run's
/// row with the least id (the others deleted), or inserted when it has none.
/// Rows that do not change are left out of the plan.
pub fn plan(existing: Vec<(i64, Visit)>, pieces: &[Piece], gap_ms: i64) -> Plan {
    let mut by_session: BTreeMap<String, Vec<Item>> = BTreeMap::new();
    for (id, v) in existing {
        by_session.entry(v.session_id.clone()).or_default().push((Some(id), v));
    }
    for p in pieces {
        by_session.entry(p.session_id.clone()).or_default().push((None, Visit::of(p)));
    }
    let mut plan = Plan::default();
    for (_, mut items) in by_session {
        items.sort_by_key(|(id, v)| (v.start, v.end, *id));
        let mut run: Vec<Item> = Vec::new();
        let mut run_end = i64::MIN;
        for item in items {
            if !run.is_empty() && item.1.start > run_end.saturating_add(gap_ms) {
                settle(std::mem::take(&mut run), &mut plan);
            }
            run_end = if run.is_empty() { item.1.end } else { run_end.max(item.1.end) };
            run.push(item);
        }
        settle(run, &mut plan);
    }
    plan
}

/// Adds what one run (one visit) needs written to `plan`.
fn settle(run: Vec<Item>, plan: &mut Plan) {
    let keep = run.iter().filter_map(|(id, _)| *id).min();
    let Some(mut visit) = run.first().map(|(_, v)| v.clone()) else { return };
    for (_, v) in &run[1..] {
        visit.absorb(v);
    }
    let Some(keep) = keep else {
        plan.inserts.push(visit);
        return;
    };
    plan.deletes.extend(run.iter().filter_map(|(id, _)| *id).filter(|id| *id != keep));
    let stored = run.iter().find(|(id, _)| *id == Some(keep)).map(|(_, v)| v);
    if run.len() > 1 || stored != Some(&visit) {
        plan.updates.push((keep, visit));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const MIN: i64 = 60_000;
    const GAP: i64 = 30 * MIN;

    fn piece(session: &str, start: i64, end: i64, url: &str) -> Piece {
        Piece { session_id: session.into(), start, end, events: 2, pageviews: 1, url: Some(url.into()), ..Piece::default() }
    }

    /// A table of visits by id that plans are applied to, as PostgreSQL would.
    #[derive(Default)]
    struct Table {
        rows: HashMap<i64, Visit>,
        next_id: i64,
    }

    impl Table {
        /// One flush: `pieces` planned against every stored row (`apply`
        /// reads a superset of the rows that matter; `plan` must not care).
        fn load(&mut self, pieces: &[Piece]) -> &mut Self {
            let existing = self.rows.iter().map(|(id, v)| (*id, v.clone())).collect();
            let plan = plan(existing, pieces, GAP);
            for id in plan.deletes {
                assert!(self.rows.remove(&id).is_some(), "deleted a row it read");
            }
            for (id, v) in plan.updates {
                assert!(self.rows.insert(id, v).is_some(), "updated a row it read");
            }
            for v in plan.inserts {
                self.next_id += 1;
                self.rows.insert(self.next_id, v);
            }
            self
        }

        /// The visits without their ids, in session and time order.
        fn visits(&self) -> Vec<Visit> {
            let mut v: Vec<Visit> = self.rows.values().cloned().collect();
            v.sort_by(|a, b| (&a.session_id, a.start).cmp(&(&b.session_id, b.start)));
            v
        }
    }

    fn spans(t: &Table) -> Vec<(&'static str, i64, i64, i64)> {
        t.visits().iter().map(|v| (if v.session_id == "s" { "s" } else { "t" }, v.start / MIN, v.end / MIN, v.events)).collect()
    }

    #[test]
    fn an_idle_gap_splits_a_session_and_pieces_within_the_gap_join_their_visit() {
        let mut t = Table::default();
        t.load(&[piece("s", 0, MIN, "/a"), piece("s", 10 * MIN, 11 * MIN, "/b"), piece("s", 50 * MIN, 51 * MIN, "/c"), piece("t", 0, 0, "/x")]);
        assert_eq!(spans(&t), vec![("s", 0, 11, 4), ("s", 50, 51, 2), ("t", 0, 0, 2)]);
        let first = &t.visits()[0];
        assert_eq!((first.entry.url.as_deref(), first.exit_url.as_deref()), (Some("/a"), Some("/b")));
        // Late, before the visit's start but within the gap: it widens it and is its entry.
        t.load(&[piece("s", -5 * MIN, -4 * MIN, "/early")]);
        assert_eq!(spans(&t), vec![("s", -5, 11, 6), ("s", 50, 51, 2), ("t", 0, 0, 2)]);
        assert_eq!(t.visits()[0].entry.url.as_deref(), Some("/early"));
        // Exactly the gap after the last visit's end still joins it; one ms more starts a new one.
        t.load(&[piece("s", 81 * MIN, 81 * MIN, "/d")]);
        assert_eq!(spans(&t)[1], ("s", 50, 81, 4));
        t.load(&[piece("s", 111 * MIN + 1, 112 * MIN, "/e")]);
        assert_eq!(spans(&t).len(), 4);
    }

    #[test]
    fn a_piece_that_bridges_two_visits_merges_them_into_the_older_row() {
        let mut t = Table::default();
        t.load(&[piece("s", 0, MIN, "/a")]).load(&[piece("s", 45 * MIN, 46 * MIN, "/c")]).load(&[piece("t", 0, 0, "/x")]);
        assert_eq!(spans(&t), vec![("s", 0, 1, 2), ("s", 45, 46, 2), ("t", 0, 0, 2)]);
        let existing: Vec<(i64, Visit)> = t.rows.iter().map(|(id, v)| (*id, v.clone())).collect();
        let p = plan(existing, &[piece("s", 20 * MIN, 21 * MIN, "/b")], GAP);
        assert_eq!((p.inserts.len(), p.deletes.clone(), p.updates.iter().map(|(id, _)| *id).collect::<Vec<_>>()), (0, vec![2], vec![1]));
        let merged = &p.updates[0].1;
        assert_eq!((merged.start, merged.end, merged.events, merged.pageviews), (0, 46 * MIN, 6, 3));
        assert_eq!((merged.entry.url.as_deref(), merged.exit_url.as_deref()), (Some("/a"), Some("/c")));
    }

    #[test]
    fn a_piece_within_the_gap_of_only_one_visit_leaves_two() {
        let mut t = Table::default();
        t.load(&[piece("s", 0, MIN, "/a")]).load(&[piece("s", 70 * MIN, 71 * MIN, "/c")]);
        t.load(&[piece("s", 45 * MIN, 46 * MIN, "/b")]);
        assert_eq!(spans(&t), vec![("s", 0, 1, 2), ("s", 45, 71, 4)], "44 min after the first visit, 24 before the second");
        t.load(&[piece("s", 20 * MIN, 20 * MIN, "/b2")]);
        assert_eq!(spans(&t), vec![("s", 0, 71, 8)], "19 and 25 min from the two: it bridges them");
    }

    #[test]
    fn a_row_that_nothing_changes_is_not_written() {
        let mut t = Table::default();
        t.load(&[piece("s", 0, MIN, "/a")]).load(&[piece("s", 100 * MIN, 100 * MIN, "/z")]);
        let existing: Vec<(i64, Visit)> = t.rows.iter().map(|(id, v)| (*id, v.clone())).collect();
        assert!(plan(existing.clone(), &[], GAP).is_empty());
        let p = plan(existing, &[piece("s", 2 * MIN, 3 * MIN, "/b")], GAP);
        assert_eq!((p.updates.len(), p.updates[0].0, p.inserts.len(), p.deletes.len()), (1, 1, 0, 0));
    }

    /// Pieces of two sessions whose facts differ, so that any figure folded
    /// in an order-dependent way would show: same-ms starts and ends, a user
    /// identified mid-visit and another after a reset, a bot piece, a bridge.
    fn mixed() -> Vec<Piece> {
        let with = |mut p: Piece, f: &dyn Fn(&mut Piece)| {
            f(&mut p);
            p
        };
        vec![
            with(piece("s", 0, 2 * MIN, "/a"), &|p| (p.referrer, p.browser) = (Some("https://ref/".into()), Some("Firefox".into()))),
            with(piece("s", 0, MIN, "/a2"), &|p| p.country = Some("NL".into())),
            with(piece("s", 20 * MIN, 21 * MIN, "/b"), &|p| p.user_id = Some("u2".into())),
            with(piece("s", 45 * MIN, 46 * MIN, "/c"), &|p| p.user_id = Some("u1".into())),
            piece("s", 44 * MIN, 46 * MIN, "/c2"),
            with(piece("s", 120 * MIN, 120 * MIN, "/later"), &|p| p.is_bot = true),
            piece("t", 30 * MIN, 30 * MIN, "/t"),
        ]
    }

    #[test]
    fn every_arrival_order_and_flush_split_gives_the_visits_of_in_order_arrival() {
        let pieces = mixed();
        let expected = Table::default().load(&pieces).visits();
        assert_eq!(expected.len(), 3, "{expected:#?}");
        let s = &expected[0];
        assert_eq!((s.start, s.end, s.events, s.pageviews, s.user_id.as_deref()), (0, 46 * MIN, 10, 5, Some("u1")));
        assert_eq!((s.entry.url.as_deref(), s.entry.referrer.as_deref(), s.exit_url.as_deref()), (Some("/a"), Some("https://ref/"), Some("/c2")));
        assert!(!s.is_bot && expected[1].is_bot);
        let mut orders = std::collections::HashSet::new();
        permutations(pieces.len(), &mut |order| {
            // Each piece its own flush, and the same order in flushes of two.
            let mut single = Table::default();
            let mut pairs = Table::default();
            for i in order {
                single.load(std::slice::from_ref(&pieces[*i]));
            }
            for pair in order.chunks(2) {
                pairs.load(&pair.iter().map(|i| pieces[*i].clone()).collect::<Vec<_>>());
            }
            assert_eq!(single.visits(), expected, "arrival order {order:?}");
            assert_eq!(pairs.visits(), expected, "arrival order {order:?}, two per flush");
            orders.insert(order.to_vec());
        });
        assert_eq!(orders.len(), 5040, "every order of 7 pieces");
    }

    /// Calls `f` with every order of `0..n` (Heap's algorithm).
    fn permutations(n: usize, f: &mut dyn FnMut(&[usize])) {
        fn go(k: usize, a: &mut [usize], f: &mut dyn FnMut(&[usize])) {
            if k <= 1 {
                return f(a);
            }
            go(k - 1, a, f);
            for i in 0..k - 1 {
                a.swap(if k % 2 == 0 { i } else { 0 }, k - 1);
                go(k - 1, a, f);
            }
        }
        go(n, &mut (0..n).collect::<Vec<_>>(), f);
    }
}
