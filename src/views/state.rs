//! Partial aggregates of one loader transaction, per view and group, computed
//! in Rust; `sql::upsert` merges them into the view's table in one statement.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};

use hashbrown::HashTable;

use super::expr::{Scalar, SqlType};
use super::parse::{Agg, Source, ViewDef};
use crate::record::Row;

/// An owned group key or distinct value. Floats are normalised so that
/// equal values (0.0 and -0.0) are one key, as in PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Null,
    Int(i64),
    Float(u64),
    Text(Box<str>),
    Bool(bool),
    Time(i64),
}

impl Key {
    fn float_bits(f: f64) -> u64 {
        if f == 0.0 {
            0
        } else if f.is_nan() {
            f64::NAN.to_bits()
        } else {
            f.to_bits()
        }
    }

    fn of(s: &Scalar<'_>) -> Key {
        match s {
            Scalar::Null => Key::Null,
            Scalar::Int(i) => Key::Int(*i),
            Scalar::Float(f) => Key::Float(Key::float_bits(*f)),
            Scalar::Text(t) => Key::Text(t.as_ref().into()),
            Scalar::Bool(b) => Key::Bool(*b),
            Scalar::Time(t) => Key::Time(*t),
        }
    }

    fn matches(&self, s: &Scalar<'_>) -> bool {
        match (self, s) {
            (Key::Null, Scalar::Null) => true,
            (Key::Int(a), Scalar::Int(b)) | (Key::Time(a), Scalar::Time(b)) => a == b,
            (Key::Float(a), Scalar::Float(b)) => *a == Key::float_bits(*b),
            (Key::Text(a), Scalar::Text(b)) => **a == **b,
            (Key::Bool(a), Scalar::Bool(b)) => a == b,
            _ => false,
        }
    }
}

/// Hashes a borrowed value exactly as its owned `Key` hashes.
fn hash_scalar(s: &Scalar<'_>, h: &mut impl Hasher) {
    match s {
        Scalar::Null => 0u8.hash(h),
        Scalar::Int(i) => (1u8, *i).hash(h),
        Scalar::Float(f) => (2u8, Key::float_bits(*f)).hash(h),
        Scalar::Text(t) => (3u8, t.as_ref()).hash(h),
        Scalar::Bool(b) => (4u8, *b).hash(h),
        Scalar::Time(t) => (5u8, *t).hash(h),
    }
}

fn hash_key(k: &Key, h: &mut impl Hasher) {
    match k {
        Key::Null => 0u8.hash(h),
        Key::Int(i) => (1u8, *i).hash(h),
        Key::Float(f) => (2u8, *f).hash(h),
        Key::Text(t) => (3u8, &**t).hash(h),
        Key::Bool(b) => (4u8, *b).hash(h),
        Key::Time(t) => (5u8, *t).hash(h),
    }
}

/// The running state of one aggregate in one group.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Count(i64),
    SumInt(Option<i128>),
    SumFloat(Option<f64>),
    MinInt(Option<i64>),
    MaxInt(Option<i64>),
    MinFloat(Option<f64>),
    MaxFloat(Option<f64>),
    AvgInt(i128, i64),
    AvgFloat(f64, i64),
    Distinct(DistinctSet),
    /// Value (as f64 bits) → how many times it was seen.
    Percentile(HashMap<u64, i64>),
}

impl State {
    fn new(agg: &Agg) -> State {
        let int = |e: &super::expr::Expr| matches!(e.ty(), SqlType::Int | SqlType::Time);
        match agg {
            Agg::CountStar | Agg::Count(_) => State::Count(0),
            Agg::Sum(e) if int(e) => State::SumInt(None),
            Agg::Sum(_) => State::SumFloat(None),
            Agg::Min(e) if int(e) => State::MinInt(None),
            Agg::Min(_) => State::MinFloat(None),
            Agg::Max(e) if int(e) => State::MaxInt(None),
            Agg::Max(_) => State::MaxFloat(None),
            Agg::Avg(e) if int(e) => State::AvgInt(0, 0),
            Agg::Avg(_) => State::AvgFloat(0.0, 0),
            Agg::Distinct(_) => State::Distinct(DistinctSet::default()),
            Agg::Percentile(..) => State::Percentile(HashMap::new()),
        }
    }

    /// Adds one value (already evaluated; `None` for `count(*)`).
    fn add(&mut self, v: Option<&Scalar<'_>>) {
        let Some(v) = v else {
            if let State::Count(n) = self {
                *n += 1;
            }
            return;
        };
        if *v == Scalar::Null {
            return;
        }
        let int = match v {
            Scalar::Int(i) | Scalar::Time(i) => Some(*i),
            _ => None,
        };
        let float = match v {
            Scalar::Int(i) => Some(*i as f64),
            Scalar::Float(f) => Some(*f),
            _ => None,
        };
        match self {
            State::Count(n) => *n += 1,
            State::SumInt(s) => *s = Some(s.unwrap_or(0) + int.unwrap_or(0) as i128),
            State::SumFloat(s) => *s = Some(s.unwrap_or(0.0) + float.unwrap_or(0.0)),
            State::MinInt(m) => *m = Some(m.map_or(int.unwrap_or(0), |m| m.min(int.unwrap_or(0)))),
            State::MaxInt(m) => *m = Some(m.map_or(int.unwrap_or(0), |m| m.max(int.unwrap_or(0)))),
            State::MinFloat(m) => *m = Some(m.map_or(float.unwrap_or(0.0), |m| m.min(float.unwrap_or(0.0)))),
            State::MaxFloat(m) => *m = Some(m.map_or(float.unwrap_or(0.0), |m| m.max(float.unwrap_or(0.0)))),
            State::AvgInt(s, n) => {
                *s += int.unwrap_or(0) as i128;
                *n += 1;
            }
            State::AvgFloat(s, n) => {
                *s += float.unwrap_or(0.0);
                *n += 1;
            }
            State::Distinct(set) => set.insert(v),
            State::Percentile(m) => *m.entry(float.unwrap_or(0.0).to_bits()).or_insert(0) += 1,
        }
    }
}

/// The distinct values of a group. Looked up with the borrowed value, so a
/// value seen before (most are) costs no allocation.
#[derive(Debug, Clone, Default)]
pub struct DistinctSet {
    values: HashTable<Key>,
}

impl DistinctSet {
    fn insert(&mut self, v: &Scalar<'_>) {
        let hasher = foldhash::fast::FixedState::default();
        let mut h = hasher.build_hasher();
        hash_scalar(v, &mut h);
        let hash = h.finish();
        if self.values.find(hash, |k| k.matches(v)).is_none() {
            self.values.insert_unique(hash, Key::of(v), |k| {
                let mut h = hasher.build_hasher();
                hash_key(k, &mut h);
                h.finish()
            });
        }
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Key> {
        self.values.iter()
    }
}

impl PartialEq for DistinctSet {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|k| other.iter().any(|o| o == k))
    }
}

/// One group of a view: its keys and one state per aggregate.
#[derive(Debug)]
pub struct Group {
    pub keys: Box<[Key]>,
    pub states: Box<[State]>,
}

/// The partial aggregates of one view over the events of one transaction.
pub struct Partial {
    pub groups: HashTable<Group>,
    hasher: foldhash::fast::FixedState,
    scratch: Vec<Scalar<'static>>,
}

impl Default for Partial {
    fn default() -> Self {
        Partial { groups: HashTable::new(), hasher: foldhash::fast::FixedState::default(), scratch: Vec::new() }
    }
}

impl Partial {
    /// Feeds one event of `type_index` (its index in the catalog).
    pub fn add(&mut self, view: &ViewDef, type_index: usize, row: &Row<'_, '_>) {
        if let Source::Type(t) = view.source {
            if t != type_index {
                return;
            }
        }
        if let Some(f) = &view.filter {
            if f.eval(row) != Scalar::Bool(true) {
                return;
            }
        }
        let mut h = self.hasher.build_hasher();
        let mut keys: Vec<Scalar<'_>> = std::mem::take(&mut self.scratch);
        for (_, e) in &view.keys {
            let v = e.eval(row);
            hash_scalar(&v, &mut h);
            keys.push(v);
        }
        let hash = h.finish();
        let hasher = &self.hasher;
        let group = match self.groups.find_mut(hash, |g| g.keys.iter().zip(&keys).all(|(k, s)| k.matches(s))) {
            Some(g) => g,
            None => {
                let g = Group { keys: keys.iter().map(Key::of).collect(), states: view.aggs.iter().map(|(_, a)| State::new(a)).collect() };
                self.groups
                    .insert_unique(hash, g, |g| {
                        let mut h = hasher.build_hasher();
                        g.keys.iter().for_each(|k| hash_key(k, &mut h));
                        h.finish()
                    })
                    .into_mut()
            }
        };
        for ((_, agg), state) in view.aggs.iter().zip(group.states.iter_mut()) {
            match agg.arg() {
                None => state.add(None),
                Some(e) => state.add(Some(&e.eval(row))),
            }
        }
        keys.clear();
        // The scratch vector holds no borrowed values once cleared.
        self.scratch = keys.into_iter().map(|_| Scalar::Null).collect();
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{built_in_events, EventCatalog};
    use crate::views::parse::parse_views;

    #[test]
    fn groups_with_null_keys_and_every_state() {
        let catalog = EventCatalog::from_config(&built_in_events(), 2048);
        let v = &parse_views(
            "CREATE VIEW v AS SELECT key, count(*), sum(position) AS s, min(position) AS mn, avg(position) AS a,
               count(DISTINCT session_id) AS d, percentile_cont(0.5) WITHIN GROUP (ORDER BY position) AS p
             FROM key_presses GROUP BY key",
            &catalog,
        )
        .unwrap()[0];
        let t = catalog.types().iter().position(|t| &*t.name == "key_presses").unwrap();
        let key_idx = catalog.types()[t].attributes.iter().position(|a| &*a.name == "key").unwrap();
        let page = simd_json::BorrowedValue::from(simd_json::value::borrowed::Object::new());
        let a = simd_json::BorrowedValue::from("a");
        let mut p = Partial::default();
        for (i, key) in [Some(&a), None, Some(&a), None, None].into_iter().enumerate() {
            let mut attrs = vec![None; catalog.types()[t].attributes.len()];
            attrs[key_idx] = key;
            let row = Row {
                type_name: "key_presses",
                time: 0,
                client_time: 0,
                received_at: 0,
                time_flagged: false,
                session_id: if i % 2 == 0 { "s1" } else { "s2" },
                position: i as i32,
                key_id: "k",
                client_ip: None,
                page: &page,
                attrs: &attrs,
                bot: None,
                agent: None,
                geo: None,
                user_id: None,
            };
            p.add(v, t, &row);
            p.add(v, t + 1, &row); // another type: ignored
        }
        assert_eq!(p.len(), 2, "NULL is one group");
        let null = p.groups.iter().find(|g| g.keys[0] == Key::Null).unwrap();
        assert_eq!(null.states[0], State::Count(3));
        assert_eq!(null.states[1], State::SumInt(Some(1 + 3 + 4)));
        assert_eq!(null.states[2], State::MinInt(Some(1)));
        assert_eq!(null.states[3], State::AvgInt(8, 3));
        assert!(matches!(&null.states[4], State::Distinct(s) if s.len() == 2));
        assert!(matches!(&null.states[5], State::Percentile(m) if m.values().sum::<i64>() == 3));
    }
}
