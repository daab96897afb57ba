//! View definitions in SQL, parsed with sqlparser (PostgreSQL dialect) and
//! checked against the event catalog:
//!
//! ```sql
//! CREATE CONTINUOUS VIEW name AS SELECT … FROM <event type | events> [WHERE …] GROUP BY …;
//! CREATE VIEW name AS SELECT … FROM <stream> …;   -- PipelineDB 1.x form
//! ```
//!
//! Anything that cannot be maintained incrementally, or whose PostgreSQL
//! meaning is not reproduced exactly in Rust, is refused with a message that
//! names the construct and its line and column.

use std::fmt;

use sqlparser::ast::{
    self, BinaryOperator, DuplicateTreatment, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, ObjectName, ObjectNamePart, SelectItem,
    SetExpr, Spanned, Statement, TableFactor, UnaryOperator,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::expr::{ArOp, CmpOp, Column, Expr, Lit, SqlType, Unit};
use crate::catalog::{check_identifier, AttrType, EventCatalog};

mod scope;
mod select;

use select::select;

/// The source every view `FROM events` reads: all event types, base columns only.
pub const ALL_EVENTS: &str = "events";

/// What a view reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Every event type (`FROM events`).
    All,
    /// One event type, by index in `EventCatalog::types()`.
    Type(usize),
}

/// An aggregate and its argument.
#[derive(Debug, Clone, PartialEq)]
pub enum Agg {
    CountStar,
    Count(Expr),
    Sum(Expr),
    Min(Expr),
    Max(Expr),
    Avg(Expr),
    /// `count(DISTINCT x)`: HyperLogLog (approximate).
    Distinct(Expr),
    /// `percentile_cont(p) WITHIN GROUP (ORDER BY x)`: t-digest (approximate).
    Percentile(f64, Expr),
}

impl Agg {
    pub fn arg(&self) -> Option<&Expr> {
        match self {
            Agg::CountStar => None,
            Agg::Count(e) | Agg::Sum(e) | Agg::Min(e) | Agg::Max(e) | Agg::Avg(e) | Agg::Distinct(e) | Agg::Percentile(_, e) => Some(e),
        }
    }
}

/// One output column of a view, in SELECT order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Key(usize),
    Agg(usize),
}

/// A checked continuous view.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewDef {
    pub name: String,
    pub source: Source,
    /// The event type's name, or `events`.
    pub source_name: String,
    pub filter: Option<Expr>,
    /// Group keys: output name and expression.
    pub keys: Vec<(String, Expr)>,
    /// Aggregates: output name and aggregate.
    pub aggs: Vec<(String, Agg)>,
    pub outputs: Vec<Output>,
    /// The statement as parsed, printed back (what is stored in `chronos.views`).
    pub definition: String,
}

impl ViewDef {
    pub fn needs_hll(&self) -> bool {
        self.aggs.iter().any(|(_, a)| matches!(a, Agg::Distinct(_)))
    }

    pub fn needs_tdigest(&self) -> bool {
        self.aggs.iter().any(|(_, a)| matches!(a, Agg::Percentile(..)))
    }
}

/// A refused definition: what and where.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewError {
    pub view: Option<String>,
    /// Line and column (1-based) of the construct.
    pub at: Option<(u64, u64)>,
    pub message: String,
}

impl fmt::Display for ViewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, col)) = self.at {
            write!(f, "line {line}, column {col}: ")?;
        }
        if let Some(v) = &self.view {
            write!(f, "view `{v}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ViewError {}

fn err(node: &impl Spanned, message: String) -> ViewError {
    let s = node.span().start;
    let at = (s.line > 0).then_some((s.line, s.column));
    ViewError { view: None, at, message }
}

/// Parses every view in `sql` (one or more statements separated by `;`).
pub fn parse_views(sql: &str, catalog: &EventCatalog) -> Result<Vec<ViewDef>, ViewError> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql).tokenize_with_location().map_err(|e| ViewError {
        view: None,
        at: Some((e.location.line, e.location.column)),
        message: e.message,
    })?;
    // `CREATE CONTINUOUS VIEW` is `CREATE VIEW` with one more word: drop the
    // word from the token stream (the text is never edited).
    let mut kept = Vec::with_capacity(tokens.len());
    let mut last_word: Option<Keyword> = None;
    for t in tokens {
        if let Token::Word(w) = &t.token {
            if last_word == Some(Keyword::CREATE) && w.value.eq_ignore_ascii_case("continuous") && w.quote_style.is_none() {
                last_word = None;
                continue;
            }
            last_word = Some(w.keyword);
        } else if !matches!(t.token, Token::Whitespace(_)) {
            last_word = None;
        }
        kept.push(t);
    }
    let statements = Parser::new(&dialect).with_tokens_with_locations(kept).parse_statements().map_err(|e| {
        let text = e.to_string();
        let message = text.strip_prefix("sql parser error: ").unwrap_or(&text).to_string();
        ViewError { view: None, at: None, message }
    })?;
    if statements.is_empty() {
        return Err(ViewError { view: None, at: None, message: "no view definition found".into() });
    }
    let mut views: Vec<ViewDef> = Vec::new();
    for st in &statements {
        let v = view(st, catalog)?;
        if views.iter().any(|o| o.name == v.name) {
            return Err(err(st, format!("view `{}` is defined twice", v.name)));
        }
        views.push(v);
    }
    Ok(views)
}

fn idents(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => i.value.clone(),
            other => other.to_string(),
        })
        .collect()
}

fn view(st: &Statement, catalog: &EventCatalog) -> Result<ViewDef, ViewError> {
    let Statement::CreateView(cv) = st else {
        return Err(err(st, format!("only CREATE [CONTINUOUS] VIEW statements are allowed here, not `{}`", first_words(st))));
    };
    let name = match idents(&cv.name).as_slice() {
        [n] => n.clone(),
        [s, n] if s == "views" => n.clone(),
        _ => return Err(err(&cv.name, format!("view name `{}`: give a plain name (views live in schema `views`)", cv.name))),
    };
    let name_err = |m: String| ViewError { view: Some(name.clone()), ..err(&cv.name, m) };
    check_identifier(&name).map_err(|e| name_err(format!("bad view name: {e}")))?;
    if name.len() > 50 {
        return Err(name_err("view names are at most 50 bytes".into()));
    }
    if cv.materialized || cv.or_replace || !cv.columns.is_empty() || cv.options != ast::CreateTableOptions::None {
        return Err(name_err("write `CREATE [CONTINUOUS] VIEW name AS SELECT …` (no MATERIALIZED, OR REPLACE, column list or options)".into()));
    }
    let in_view = |mut e: ViewError| {
        e.view = Some(name.clone());
        e
    };
    let def = select(&cv.query, catalog).map_err(in_view)?;
    let (source, source_name, filter, keys, aggs, outputs) = def;
    Ok(ViewDef { name, source, source_name, filter, keys, aggs, outputs, definition: format!("{st};") })
}

fn first_words(st: &Statement) -> String {
    st.to_string().split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::scope::interval_ms;
    use super::*;
    use crate::catalog::{built_in_events, EventCatalog};

    fn catalog() -> EventCatalog {
        EventCatalog::from_config(&built_in_events(), 2048)
    }

    fn refuse(sql: &str) -> String {
        parse_views(sql, &catalog()).expect_err(sql).to_string()
    }

    #[test]
    fn both_forms_parse() {
        let v = parse_views(
            "CREATE CONTINUOUS VIEW a AS SELECT element, count(*) FROM clicks GROUP BY element;\n\
             create view b as select link_text, count(*) AS n from link_clicks group by 1",
            &catalog(),
        )
        .unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].name, "a");
        assert_eq!(v[0].keys[0].0, "element");
        assert_eq!(v[0].aggs[0], ("count".to_string(), Agg::CountStar));
        assert_eq!(v[1].aggs[0].0, "n");
        assert!(v[0].definition.starts_with("CREATE VIEW a AS SELECT"), "{}", v[0].definition);
    }

    #[test]
    fn every_aggregate_and_key_form() {
        let v = parse_views(
            "CREATE CONTINUOUS VIEW m AS SELECT metadata->>'url' AS url, date_trunc('hour', time) AS hour,
               time_bucket(interval '5 minutes', time) AS b5, x / 50 * 50 AS bx,
               count(*), count(y) AS cy, sum(x) AS sx, min(x) AS mn, max(time) AS mx, avg(y) AS ay,
               count(DISTINCT session_id) AS sessions, percentile_cont(0.9) WITHIN GROUP (ORDER BY y) AS p90
             FROM mouse_moves WHERE x > 10 AND (y IS NOT NULL OR x IN (1, 2)) AND NOT time_flagged
             GROUP BY url, hour, 3, bx",
            &catalog(),
        )
        .unwrap();
        let m = &v[0];
        assert_eq!(m.keys.len(), 4);
        assert_eq!(m.aggs.len(), 8);
        assert!(matches!(m.keys[2].1, Expr::Bucket(300_000, _)));
        assert!(m.needs_hll() && m.needs_tdigest());
        assert!(m.filter.is_some());
    }

    #[test]
    fn refusals_name_the_construct_and_place() {
        let cases = [
            (
                "CREATE VIEW v AS SELECT element, stddev(x) FROM clicks GROUP BY element",
                "line 1, column 34: view `v`: aggregate `stddev` cannot be maintained incrementally",
            ),
            ("CREATE VIEW v AS SELECT element, count(*) FROM clicks", "`element` must be in GROUP BY"),
            ("CREATE VIEW v AS SELECT nope, count(*) FROM clicks GROUP BY nope", "`clicks` has no column `nope`"),
            ("CREATE VIEW v AS SELECT count(*) FROM nowhere", "`nowhere` is not an enabled event type"),
            (
                "CREATE VIEW v AS SELECT element, count(*) FROM clicks GROUP BY element HAVING count(*) > 1",
                "HAVING cannot be maintained incrementally",
            ),
            ("CREATE VIEW v AS SELECT x, count(*) FROM clicks c JOIN pageviews p ON true GROUP BY x", "joins cannot be maintained incrementally"),
            ("CREATE VIEW v AS SELECT count(*) FROM clicks c", "without alias"),
            ("CREATE VIEW v AS SELECT count(*) FROM clicks ORDER BY 1", "ORDER BY"),
            ("CREATE VIEW v AS SELECT element, min(element) FROM clicks GROUP BY element", "only numbers and times"),
            ("CREATE VIEW v AS SELECT x / 0 AS z, count(*) FROM clicks GROUP BY z", "divide only by a non-zero number literal"),
            ("CREATE VIEW v AS SELECT count(*) FROM clicks WHERE element > 'a'", "text can only be compared with = or <>"),
            ("CREATE VIEW v AS SELECT x, count(*) FROM events GROUP BY x", "views FROM events see only"),
            ("CREATE VIEW v AS SELECT element FROM clicks GROUP BY element", "needs at least one aggregate"),
            ("CREATE VIEW v AS SELECT count(*), count(x) FROM clicks", "two output columns are named `count`"),
            ("CREATE VIEW v AS SELECT sum(element) FROM clicks", "needs a number"),
            ("CREATE VIEW v AS SELECT count(DISTINCT x + 0.5) FROM clicks", "only text and integer values"),
            ("CREATE VIEW v AS SELECT percentile_cont(2) WITHIN GROUP (ORDER BY x) FROM clicks", "between 0 and 1"),
            ("CREATE VIEW v AS SELECT date_trunc('fortnight', time) AS t, count(*) FROM clicks GROUP BY t", "date_trunc unit"),
            ("CREATE VIEW v AS SELECT time_bucket(interval '1 month', time) AS t, count(*) FROM clicks GROUP BY t", "a fixed interval"),
            ("CREATE VIEW v AS SELECT fields, count(*) FROM form_submissions GROUP BY fields", "lists cannot be used"),
            ("CREATE VIEW v AS SELECT count(*) OVER () FROM clicks", "window functions"),
            ("CREATE TABLE t (a int)", "only CREATE [CONTINUOUS] VIEW statements"),
            ("CREATE MATERIALIZED VIEW v AS SELECT count(*) FROM clicks", "no MATERIALIZED"),
            ("CREATE VIEW v AS SELECT count(*) FROM clicks; CREATE VIEW v AS SELECT count(*) FROM clicks", "defined twice"),
            ("CREATE VIEW v AS SELECT lower(element) AS e, count(*) FROM clicks GROUP BY e", "function `lower` is not supported"),
            ("CREATE VIEW v AS SELECT count(*) FROM clicks WHERE", "Expected"),
        ];
        for (sql, want) in cases {
            let got = refuse(sql);
            assert!(got.contains(want), "{sql}\n  got:  {got}\n  want: {want}");
        }
    }

    #[test]
    fn positions_are_reported_on_later_lines() {
        let got = refuse("CREATE CONTINUOUS VIEW v AS\nSELECT element,\n       array_agg(x)\nFROM clicks GROUP BY element");
        assert!(got.starts_with("line 3, column 8:"), "{got}");
    }

    #[test]
    fn intervals() {
        assert_eq!(interval_ms("5 minutes"), Some(300_000));
        assert_eq!(interval_ms("1 hour 30 minutes"), Some(5_400_000));
        assert_eq!(interval_ms("1 month"), None);
        assert_eq!(interval_ms("0 seconds"), None);
    }
}
