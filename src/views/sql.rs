//! SQL of a continuous view, generated from its checked definition (never
//! pasted from the user's text): the state table `views."<name>_mrel"`, the
//! companion view `views."<name>"` that finishes the values, the upsert that
//! merges a transaction's partial aggregates, and the backfill from the raw
//! tables.
//!
//! Group keys are unique with NULLS NOT DISTINCT (PostgreSQL 15), so a NULL
//! key is one group and `ON CONFLICT` matches it.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::types::ToSql;

use super::expr::{literal, Expr, SqlType};
use super::parse::{Agg, Output, Source, ViewDef};
use super::state::{Key, Partial, State};
use crate::catalog::EventCatalog;
use crate::store::schema::{ident, presented_base_columns};

/// t-digest compression of percentile states (≈ 1% error on the tails).
pub const TDIGEST_COMPRESSION: i32 = 100;

/// Column of the state table naming the writer: the Kafka partition of the
/// loader that wrote the row (-1: backfill). Each loader upserts only its own
/// rows, so loaders of different partitions never wait for each other's row
/// locks; the companion view merges a group's rows.
pub(super) const SHARD: &str = "__shard";

pub fn mrel(view: &ViewDef) -> String {
    format!("views.{}", ident(&format!("{}_mrel", view.name)))
}

pub fn companion(view: &ViewDef) -> String {
    format!("views.{}", ident(&view.name))
}

pub(super) fn sum_type(e: &Expr) -> &'static str {
    if e.ty() == SqlType::Float {
        "double precision"
    } else {
        "numeric"
    }
}

/// State columns of one aggregate: (column name, SQL type, NOT NULL).
pub(super) fn state_columns(name: &str, agg: &Agg) -> Vec<(String, &'static str)> {
    match agg {
        Agg::CountStar | Agg::Count(_) => vec![(name.into(), "bigint NOT NULL")],
        Agg::Sum(e) => vec![(name.into(), sum_type(e))],
        Agg::Min(e) | Agg::Max(e) => vec![(name.into(), e.ty().sql())],
        Agg::Avg(e) => vec![(format!("{name}__sum"), sum_type(e)), (format!("{name}__count"), "bigint NOT NULL")],
        Agg::Distinct(_) => vec![(format!("{name}__hll"), "hll NOT NULL")],
        Agg::Percentile(..) => vec![(format!("{name}__tdigest"), "tdigest")],
    }
}

pub(super) fn key_columns(view: &ViewDef) -> Vec<String> {
    std::iter::once(ident(SHARD)).chain(view.keys.iter().map(|(n, _)| ident(n))).collect()
}

/// Extensions the view needs.
pub fn extensions(view: &ViewDef) -> Vec<&'static str> {
    let mut e = Vec::new();
    if view.needs_hll() {
        e.push("hll");
    }
    if view.needs_tdigest() {
        e.push("tdigest");
    }
    e
}

/// The state table, its key index and the companion view.
pub fn ddl(view: &ViewDef) -> String {
    let mut sql = state_table_ddl(view, &mrel(view), &format!("{}_mrel_keys", view.name));
    sql.push_str(&companion_ddl(view));
    sql
}

/// A state table of `view` named `table` (schema-qualified) with its key index `index`.
pub fn state_table_ddl(view: &ViewDef, table: &str, index: &str) -> String {
    let mut cols: Vec<String> = vec![format!("{} integer NOT NULL", ident(SHARD))];
    for (n, e) in &view.keys {
        cols.push(format!("{} {}", ident(n), e.ty().sql()));
    }
    for (n, a) in &view.aggs {
        for (c, t) in state_columns(n, a) {
            cols.push(format!("{} {t}", ident(&c)));
        }
    }
    // Every flush updates its groups' rows in place: with half of each page
    // free, an update can stay on its page (a HOT update, no index entry).
    let mut sql = format!("CREATE TABLE {table} (\n  {}\n) WITH (fillfactor = 50);\n", cols.join(",\n  "));
    let _ = writeln!(sql, "CREATE UNIQUE INDEX {} ON {table} ({}) NULLS NOT DISTINCT;", ident(index), key_columns(view).join(", "));
    sql
}

/// The companion view `views."<name>"`, which finishes the values of the state table.
pub fn companion_ddl(view: &ViewDef) -> String {
    let mut sql = String::new();
    let outputs: Vec<String> = view
        .outputs
        .iter()
        .map(|o| match o {
            Output::Key(k) => format!("m.{}", ident(&view.keys[*k].0)),
            Output::Agg(a) => {
                let (n, agg) = &view.aggs[*a];
                let c = |suffix: &str| format!("m.{}", ident(&format!("{n}{suffix}")));
                let value = match agg {
                    Agg::CountStar | Agg::Count(_) => format!("sum({})::bigint", c("")),
                    Agg::Sum(_) => format!("sum({})", c("")),
                    Agg::Min(_) => format!("min({})", c("")),
                    Agg::Max(_) => format!("max({})", c("")),
                    Agg::Avg(_) => format!("CASE WHEN sum({n}) = 0 THEN NULL ELSE sum({s}) / sum({n}) END", n = c("__count"), s = c("__sum")),
                    Agg::Distinct(_) => format!("hll_cardinality(hll_union_agg({}))::bigint", c("__hll")),
                    Agg::Percentile(p, _) => format!("tdigest_percentile({}, {p:?}::double precision)", c("__tdigest")),
                };
                format!("{value} AS {}", ident(n))
            }
        })
        .collect();
    let group = if view.keys.is_empty() {
        " HAVING count(*) > 0".to_string()
    } else {
        let keys: Vec<String> = view.keys.iter().map(|(n, _)| format!("m.{}", ident(n))).collect();
        format!(" GROUP BY {}", keys.join(", "))
    };
    let _ = writeln!(sql, "CREATE VIEW {} AS SELECT {} FROM {} AS m{group};", companion(view), outputs.join(", "), mrel(view));
    sql
}

pub fn drop_sql(view_name: &str) -> String {
    format!("DROP VIEW IF EXISTS views.{}; DROP TABLE IF EXISTS views.{};", ident(view_name), ident(&format!("{view_name}_mrel")))
}

fn array_type(t: SqlType) -> &'static str {
    match t {
        SqlType::Text => "text[]",
        SqlType::Int => "bigint[]",
        SqlType::Float => "double precision[]",
        SqlType::Bool => "boolean[]",
        SqlType::Time => "timestamptz[]",
    }
}

/// The upsert merging one transaction's partial aggregates. Parameters come
/// from `upsert_params`, in the same order.
pub fn upsert(view: &ViewDef) -> String {
    upsert_into(view, &[mrel(view)])
}

/// The upsert of `upsert`, into each of `tables` (state tables of `view`):
/// while a view is rebuilt, loaders write its live state and the rebuild's
/// shadow in one statement.
pub fn upsert_into(view: &ViewDef, tables: &[String]) -> String {
    let mut q = UpsertSql::default();
    for (_, e) in &view.keys {
        q.array(array_type(e.ty()), "");
    }
    for (i, (n, agg)) in view.aggs.iter().enumerate() {
        q.aggregate(i, n, agg);
    }
    // The writer's shard: the last parameter.
    let shard = q.param("integer");
    q.select.insert(0, shard);
    let cols = state_column_list(view).join(", ");
    let aliases: Vec<String> = (1..=q.arrays.len()).map(|i| format!("c{i}")).collect();
    let from = format!("FROM unnest({}) WITH ORDINALITY AS u({}, i){}\nORDER BY u.i", q.arrays.join(", "), aliases.join(", "), q.joins);
    let conflict = format!("ON CONFLICT ({}) DO UPDATE SET {}", key_columns(view).join(", "), q.sets.join(", "));
    if let [table] = tables {
        return format!("INSERT INTO {table} AS t ({cols})\nSELECT {}\n{from}\n{conflict}", q.select.join(", "));
    }
    // One computation of the rows, inserted into each table.
    let select: Vec<String> = q.select.iter().enumerate().map(|(i, s)| format!("{s} AS x{i}")).collect();
    let mut sql = format!("WITH s AS MATERIALIZED (SELECT {}\n{from})", select.join(", "));
    let (last, others) = tables.split_last().expect("at least one table");
    for (i, t) in others.iter().enumerate() {
        let _ = write!(sql, ",\nw{i} AS (INSERT INTO {t} AS t ({cols}) SELECT * FROM s {conflict})");
    }
    let _ = write!(sql, "\nINSERT INTO {last} AS t ({cols}) SELECT * FROM s {conflict}");
    sql
}

/// The columns of a state table in order: shard, keys, aggregate states.
pub(super) fn state_column_list(view: &ViewDef) -> Vec<String> {
    let mut cols = vec![ident(SHARD)];
    cols.extend(view.keys.iter().map(|(n, _)| ident(n)));
    cols.extend(view.aggs.iter().flat_map(|(n, agg)| state_columns(n, agg)).map(|(c, _)| ident(&c)));
    cols
}

/// `ON CONFLICT … DO UPDATE SET` of a state table (`t`, `EXCLUDED`): how two
/// states of a group merge.
pub(super) fn merge_sets(view: &ViewDef) -> String {
    let mut q = UpsertSql::default();
    for (i, (n, agg)) in view.aggs.iter().enumerate() {
        q.aggregate(i, n, agg);
    }
    q.sets.join(", ")
}

/// The parts of a view's upsert, as its keys and aggregates are added.
#[derive(Default)]
struct UpsertSql {
    /// `unnest` arguments: one array parameter per column of the partial states.
    arrays: Vec<String>,
    /// What is inserted, column by column.
    select: Vec<String>,
    /// Subqueries that aggregate a group's values (hll, tdigest).
    joins: String,
    /// `ON CONFLICT … DO UPDATE SET` merges.
    sets: Vec<String>,
    params: usize,
}

impl UpsertSql {
    /// The next parameter, cast to `t`.
    fn param(&mut self, t: &str) -> String {
        self.params += 1;
        format!("${}::{t}", self.params)
    }

    /// An array parameter of type `t` unnested and inserted (with `cast`).
    fn array(&mut self, t: &str, cast: &str) {
        let p = self.param(t);
        self.arrays.push(p);
        self.select.push(format!("u.c{}{cast}", self.arrays.len()));
    }

    /// The columns of aggregate `i`, `n`, and how a conflicting row merges them.
    fn aggregate(&mut self, i: usize, n: &str, agg: &Agg) {
        let t = |suffix: &str| format!("t.{}", ident(&format!("{n}{suffix}")));
        let x = |suffix: &str| format!("EXCLUDED.{}", ident(&format!("{n}{suffix}")));
        let add_nullable = |s: &str| format!("CASE WHEN {t} IS NULL THEN {x} WHEN {x} IS NULL THEN {t} ELSE {t} + {x} END", t = t(s), x = x(s));
        match agg {
            Agg::CountStar | Agg::Count(_) => {
                self.array("bigint[]", "");
                self.sets.push(format!("{} = {} + {}", ident(n), t(""), x("")));
            }
            Agg::Sum(e) | Agg::Avg(e) => {
                let (col, arr) = if e.ty() == SqlType::Float { ("double precision", "double precision[]") } else { ("numeric", "text[]") };
                let sum_col = if matches!(agg, Agg::Avg(_)) { "__sum" } else { "" };
                self.array(arr, &format!("::{col}"));
                self.sets.push(format!("{} = {}", ident(&format!("{n}{sum_col}")), add_nullable(sum_col)));
                if matches!(agg, Agg::Avg(_)) {
                    self.array("bigint[]", "");
                    self.sets.push(format!("{} = {} + {}", ident(&format!("{n}__count")), t("__count"), x("__count")));
                }
            }
            Agg::Min(e) | Agg::Max(e) => {
                self.array(array_type(e.ty()), "");
                let f = if matches!(agg, Agg::Min(_)) { "LEAST" } else { "GREATEST" };
                self.sets.push(format!("{} = {f}({}, {})", ident(n), t(""), x("")));
            }
            Agg::Distinct(e) => {
                let (g, v) = (self.param("bigint[]"), self.param(array_type(e.ty())));
                let hash = if e.ty() == SqlType::Int { "hll_hash_bigint" } else { "hll_hash_text" };
                let _ = write!(
                    self.joins,
                    "\nLEFT JOIN (SELECT g, hll_add_agg({hash}(v)) AS v FROM unnest({g}, {v}) AS d(g, v) GROUP BY g) AS a{i} ON a{i}.g = u.i"
                );
                self.select.push(format!("COALESCE(a{i}.v, hll_empty())"));
                self.sets.push(format!("{} = hll_union({}, {})", ident(&format!("{n}__hll")), t("__hll"), x("__hll")));
            }
            Agg::Percentile(..) => {
                let (g, v, c) = (self.param("bigint[]"), self.param("double precision[]"), self.param("bigint[]"));
                let _ = write!(
                    self.joins,
                    "\nLEFT JOIN (SELECT g, tdigest(v, c, {TDIGEST_COMPRESSION}) AS v FROM unnest({g}, {v}, {c}) AS d(g, v, c) GROUP BY g) AS a{i} ON a{i}.g = u.i"
                );
                self.select.push(format!("a{i}.v"));
                self.sets.push(format!(
                    "{} = (SELECT tdigest(d) FROM (VALUES ({}), ({})) AS m(d))",
                    ident(&format!("{n}__tdigest")),
                    t("__tdigest"),
                    x("__tdigest")
                ));
            }
        }
    }
}

/// A statement parameter.
pub type Param = Box<dyn ToSql + Sync + Send>;

fn time_of(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

fn key_array(t: SqlType, keys: impl Iterator<Item = Key>) -> Param {
    match t {
        SqlType::Text => Box::new(
            keys.map(|k| match k {
                Key::Text(s) => Some(String::from(s)),
                _ => None,
            })
            .collect::<Vec<_>>(),
        ),
        SqlType::Int => Box::new(keys.map(|k| if let Key::Int(i) = k { Some(i) } else { None }).collect::<Vec<_>>()),
        SqlType::Float => Box::new(keys.map(|k| if let Key::Float(f) = k { Some(f64::from_bits(f)) } else { None }).collect::<Vec<_>>()),
        SqlType::Bool => Box::new(keys.map(|k| if let Key::Bool(b) = k { Some(b) } else { None }).collect::<Vec<_>>()),
        SqlType::Time => Box::new(keys.map(|k| if let Key::Time(t) = k { Some(time_of(t)) } else { None }).collect::<Vec<_>>()),
    }
}

/// Parameters of `upsert` for one partial (which must not be empty), written
/// by the loader of Kafka partition `shard`.
pub fn upsert_params(view: &ViewDef, partial: &Partial, shard: i32) -> Vec<Param> {
    // Groups in key order: concurrent loader transactions then lock a view's
    // rows in the same order (`ORDER BY u.i` in `upsert`), so they never deadlock.
    let mut groups: Vec<&super::state::Group> = partial.groups.iter().collect();
    groups.sort_unstable_by(|a, b| a.keys.cmp(&b.keys));
    let mut params: Vec<Param> = Vec::new();
    for (k, (_, e)) in view.keys.iter().enumerate() {
        params.push(key_array(e.ty(), groups.iter().map(|g| g.keys[k].clone())));
    }
    for (a, (_, agg)) in view.aggs.iter().enumerate() {
        let states: Vec<&State> = groups.iter().map(|g| &g.states[a]).collect();
        push_agg_params(agg, &states, &mut params);
    }
    params.push(Box::new(shard));
    params
}

/// The arrays of one aggregate's partial states, one element per group (in
/// the groups' order), as `upsert` takes them.
fn push_agg_params(agg: &Agg, states: &[&State], params: &mut Vec<Param>) {
    match agg {
        Agg::CountStar | Agg::Count(_) => {
            params.push(Box::new(states.iter().copied().map(|s| if let State::Count(n) = s { *n } else { 0 }).collect::<Vec<i64>>()))
        }
        Agg::Sum(_) | Agg::Avg(_) => {
            let first = states.iter().copied().next();
            match first {
                Some(State::SumFloat(_)) | Some(State::AvgFloat(..)) => params.push(Box::new(
                    states
                        .iter()
                        .copied()
                        .map(|s| match s {
                            State::SumFloat(v) => *v,
                            State::AvgFloat(v, _) => Some(*v),
                            _ => None,
                        })
                        .collect::<Vec<Option<f64>>>(),
                )),
                _ => params.push(Box::new(
                    states
                        .iter()
                        .copied()
                        .map(|s| match s {
                            State::SumInt(v) => v.map(|v| v.to_string()),
                            State::AvgInt(v, _) => Some(v.to_string()),
                            _ => None,
                        })
                        .collect::<Vec<Option<String>>>(),
                )),
            }
            if matches!(agg, Agg::Avg(_)) {
                params.push(Box::new(
                    states
                        .iter()
                        .copied()
                        .map(|s| match s {
                            State::AvgInt(_, n) | State::AvgFloat(_, n) => *n,
                            _ => 0,
                        })
                        .collect::<Vec<i64>>(),
                ));
            }
        }
        Agg::Min(e) | Agg::Max(e) => {
            let t = e.ty();
            let vals = states.iter().copied().map(|s| match s {
                State::MinInt(v) | State::MaxInt(v) => v.map_or(Key::Null, |i| if t == SqlType::Time { Key::Time(i) } else { Key::Int(i) }),
                State::MinFloat(v) | State::MaxFloat(v) => v.map_or(Key::Null, |f| Key::Float(f.to_bits())),
                _ => Key::Null,
            });
            params.push(key_array(t, vals.collect::<Vec<_>>().into_iter()));
        }
        Agg::Distinct(e) => {
            let mut g: Vec<i64> = Vec::new();
            let mut v: Vec<Key> = Vec::new();
            for (i, s) in states.iter().copied().enumerate() {
                if let State::Distinct(set) = s {
                    for k in set.iter() {
                        g.push(i as i64 + 1);
                        v.push(k.clone());
                    }
                }
            }
            params.push(Box::new(g));
            params.push(key_array(e.ty(), v.into_iter()));
        }
        Agg::Percentile(..) => {
            let (mut g, mut v, mut c) = (Vec::<i64>::new(), Vec::<f64>::new(), Vec::<i64>::new());
            for (i, s) in states.iter().copied().enumerate() {
                if let State::Percentile(m) = s {
                    for (bits, n) in m {
                        g.push(i as i64 + 1);
                        v.push(f64::from_bits(*bits));
                        c.push(*n);
                    }
                }
            }
            params.push(Box::new(g));
            params.push(Box::new(v));
            params.push(Box::new(c));
        }
    }
}

/// The rows a view reads, as SQL: the event table, or every table for `events`.
pub(super) fn source_sql(view: &ViewDef, catalog: &EventCatalog) -> String {
    match view.source {
        Source::Type(t) => crate::store::schema::view(&catalog.types()[t]),
        Source::All => {
            let base: Vec<String> = presented_base_columns().into_iter().map(ident).collect();
            let parts: Vec<String> = catalog
                .types()
                .iter()
                .map(|t| format!("SELECT {}::text AS \"type\", {} FROM {}", literal(&t.name), base.join(", "), crate::store::schema::view(t)))
                .collect();
            format!("({}) AS e", parts.join(" UNION ALL "))
        }
    }
}

/// Fills an empty state table from the raw tables (what the view would hold
/// had it existed since the first event).
pub fn backfill(view: &ViewDef, catalog: &EventCatalog) -> String {
    aggregate_insert(view, catalog, &mrel(view), &source_sql(view, catalog), None, false)
}

/// `INSERT INTO target` of `view`'s groups over the rows of `source` (a FROM
/// item with the columns of the view's source) that also pass `extra` (SQL
/// over those columns), as the writer -1; `merge`: a group already in
/// `target` is merged with (`ON CONFLICT … DO UPDATE`), as a rebuild that
/// reads day after day needs.
pub fn aggregate_insert(view: &ViewDef, catalog: &EventCatalog, target: &str, source: &str, extra: Option<&str>, merge: bool) -> String {
    let attr_names: Vec<&str> = match view.source {
        Source::Type(t) => catalog.types()[t].attributes.iter().map(|a| &*a.name).collect(),
        Source::All => Vec::new(),
    };
    let sql_of = |e: &Expr| {
        let mut s = String::new();
        e.to_sql(&attr_names, &mut s);
        s
    };
    let mut cols = vec![ident(SHARD)];
    let mut values = vec!["-1".to_string()];
    for (n, e) in &view.keys {
        cols.push(ident(n));
        values.push(sql_of(e));
    }
    for (n, agg) in &view.aggs {
        cols.extend(state_columns(n, agg).into_iter().map(|(c, _)| ident(&c)));
        match agg {
            Agg::CountStar => values.push("count(*)".into()),
            Agg::Count(e) => values.push(format!("count({})", sql_of(e))),
            Agg::Sum(e) => values.push(format!("sum({})::{}", sql_of(e), sum_type(e))),
            Agg::Min(e) => values.push(format!("min({})", sql_of(e))),
            Agg::Max(e) => values.push(format!("max({})", sql_of(e))),
            Agg::Avg(e) => {
                values.push(format!("sum({})::{}", sql_of(e), sum_type(e)));
                values.push(format!("count({})", sql_of(e)));
            }
            Agg::Distinct(e) => {
                let hash = if e.ty() == SqlType::Int { "hll_hash_bigint" } else { "hll_hash_text" };
                let x = sql_of(e);
                values.push(format!("COALESCE(hll_add_agg({hash}({x})) FILTER (WHERE {x} IS NOT NULL), hll_empty())"));
            }
            Agg::Percentile(_, e) => values.push(format!("tdigest(({})::double precision, {TDIGEST_COMPRESSION})", sql_of(e))),
        }
    }
    let alias = if merge { " AS t" } else { "" };
    let mut sql = format!("INSERT INTO {target}{alias} ({})\nSELECT {}\nFROM {source}", cols.join(", "), values.join(", "));
    let conditions: Vec<String> = view.filter.iter().map(sql_of).chain(extra.map(|e| format!("({e})"))).collect();
    if !conditions.is_empty() {
        let _ = write!(sql, "\nWHERE {}", conditions.join(" AND "));
    }
    if !view.keys.is_empty() {
        let ords: Vec<String> = (2..=view.keys.len() + 1).map(|i| i.to_string()).collect();
        let _ = write!(sql, "\nGROUP BY {}", ords.join(", "));
    } else {
        sql.push_str("\nHAVING count(*) > 0");
    }
    if merge {
        let _ = write!(sql, "\nON CONFLICT ({}) DO UPDATE SET {}", key_columns(view).join(", "), merge_sets(view));
    }
    sql
}

/// The SQL of expression `e` of `view` over its source's columns.
pub(super) fn expr_sql(view: &ViewDef, catalog: &EventCatalog, e: &Expr) -> String {
    let attr_names: Vec<&str> = match view.source {
        Source::Type(t) => catalog.types()[t].attributes.iter().map(|a| &*a.name).collect(),
        Source::All => Vec::new(),
    };
    let mut s = String::new();
    e.to_sql(&attr_names, &mut s);
    s
}
