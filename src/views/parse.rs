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

type Parts = (Source, String, Option<Expr>, Vec<(String, Expr)>, Vec<(String, Agg)>, Vec<Output>);

fn select(q: &ast::Query, catalog: &EventCatalog) -> Result<Parts, ViewError> {
    if q.with.is_some() || q.order_by.is_some() || q.limit_clause.is_some() || q.fetch.is_some() {
        return Err(err(q, "WITH, ORDER BY, LIMIT and FETCH cannot be maintained incrementally; query the view instead".into()));
    }
    let SetExpr::Select(s) = q.body.as_ref() else {
        return Err(err(q, "the view must be one SELECT (no UNION, VALUES or subquery)".into()));
    };
    if s.distinct.is_some() {
        return Err(err(q, "SELECT DISTINCT: use GROUP BY".into()));
    }
    if let Some(h) = &s.having {
        return Err(err(h, "HAVING cannot be maintained incrementally; filter when you query the view".into()));
    }
    let [from] = s.from.as_slice() else {
        return Err(err(q, "FROM must name exactly one event type (or `events`)".into()));
    };
    if let Some(j) = from.joins.first() {
        return Err(err(&j.relation, "joins cannot be maintained incrementally".into()));
    }
    let TableFactor::Table { name, alias: None, args: None, .. } = &from.relation else {
        return Err(err(&from.relation, "FROM must name an event type or `events`, without alias or arguments".into()));
    };
    let parts = idents(name);
    let stream = match parts.as_slice() {
        [t] => t.clone(),
        [s, t] if s == "events" => t.clone(),
        _ => return Err(err(name, format!("`{name}` is not an event type"))),
    };
    let source = if stream == ALL_EVENTS {
        Source::All
    } else {
        match catalog.types().iter().position(|t| *t.name == stream) {
            Some(i) => Source::Type(i),
            None => {
                let known: Vec<&str> = catalog.types().iter().map(|t| &*t.name).collect();
                return Err(err(name, format!("`{stream}` is not an enabled event type (known: {}, or `events` for all)", known.join(", "))));
            }
        }
    };
    let scope = Scope { catalog, source: source.clone() };
    let filter = match &s.selection {
        Some(w) => {
            let e = scope.expr(w)?;
            if e.ty() != SqlType::Bool {
                return Err(err(w, "WHERE must be a condition".into()));
            }
            Some(e)
        }
        None => None,
    };
    let GroupByExpr::Expressions(group_by, modifiers) = &s.group_by else {
        return Err(err(q, "GROUP BY ALL is not supported; list the keys".into()));
    };
    if !modifiers.is_empty() {
        return Err(err(q, "GROUP BY modifiers (ROLLUP, CUBE, …) are not supported".into()));
    }
    // SELECT items: aggregates, or keys that must be grouped.
    let mut keys: Vec<(String, Expr)> = Vec::new();
    let mut key_ast: Vec<&ast::Expr> = Vec::new();
    let mut aggs: Vec<(String, Agg)> = Vec::new();
    let mut outputs = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for item in &s.projection {
        let (e, alias) = match item {
            SelectItem::UnnamedExpr(e) => (e, None),
            SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.value.clone())),
            other => return Err(err(other, format!("`{other}`: name each output column (no *)"))),
        };
        let out_name = if let Some(agg) = scope.aggregate(e)? {
            let n = alias.unwrap_or_else(|| agg_default_name(&agg).to_string());
            aggs.push((n.clone(), agg));
            outputs.push(Output::Agg(aggs.len() - 1));
            n
        } else {
            let n = match (alias, e) {
                (Some(a), _) => a,
                (None, ast::Expr::Identifier(i)) => i.value.clone(),
                (None, ast::Expr::CompoundIdentifier(p)) => p.last().map(|i| i.value.clone()).unwrap_or_default(),
                (None, other) => return Err(err(other, format!("`{other}`: name this key with AS"))),
            };
            let x = scope.expr(e)?;
            keys.push((n.clone(), x));
            key_ast.push(e);
            outputs.push(Output::Key(keys.len() - 1));
            n
        };
        check_identifier(&out_name).map_err(|m| err(e, format!("output column name: {m}")))?;
        if out_name.contains("__") || out_name.len() > 50 {
            return Err(err(e, format!("output column `{out_name}`: at most 50 bytes and no `__`")));
        }
        if names.contains(&out_name) {
            return Err(err(e, format!("two output columns are named `{out_name}`; rename one with AS")));
        }
        names.push(out_name);
    }
    if aggs.is_empty() {
        return Err(err(q, "a continuous view needs at least one aggregate (count, sum, min, max, avg, count(DISTINCT …), percentile_cont)".into()));
    }
    // GROUP BY must list exactly the keys: by expression, output name or position.
    let mut grouped = vec![false; keys.len()];
    for g in group_by {
        let k = match g {
            ast::Expr::Value(v) if matches!(&v.value, ast::Value::Number(..)) => {
                let pos: usize = v.value.to_string().parse().map_err(|_| err(g, format!("GROUP BY {g}: not a column position")))?;
                match outputs.get(pos.wrapping_sub(1)) {
                    Some(Output::Key(k)) => *k,
                    Some(Output::Agg(_)) => return Err(err(g, format!("GROUP BY {pos} names an aggregate"))),
                    None => return Err(err(g, format!("GROUP BY {pos}: the SELECT list has {} items", outputs.len()))),
                }
            }
            _ => {
                let by_expr = key_ast.iter().position(|a| *a == g);
                let by_name = match g {
                    ast::Expr::Identifier(i) => keys.iter().position(|(n, _)| *n == i.value),
                    _ => None,
                };
                match by_expr.or(by_name) {
                    Some(k) => k,
                    None => return Err(err(g, format!("GROUP BY `{g}` is not in the SELECT list; select it (keys are the view's columns)"))),
                }
            }
        };
        grouped[k] = true;
    }
    if let Some(k) = grouped.iter().position(|g| !g) {
        return Err(err(key_ast[k], format!("`{}` must be in GROUP BY or inside an aggregate", key_ast[k])));
    }
    for (n, k) in &keys {
        if k.ty() == SqlType::Bool && !matches!(k, Expr::Col(..)) {
            return Err(ViewError { view: None, at: None, message: format!("key `{n}`: conditions cannot be keys") });
        }
    }
    Ok((source, stream, filter, keys, aggs, outputs))
}

fn agg_default_name(a: &Agg) -> &'static str {
    match a {
        Agg::CountStar | Agg::Count(_) | Agg::Distinct(_) => "count",
        Agg::Sum(_) => "sum",
        Agg::Min(_) => "min",
        Agg::Max(_) => "max",
        Agg::Avg(_) => "avg",
        Agg::Percentile(..) => "percentile_cont",
    }
}

/// Aggregates PostgreSQL has that a view cannot maintain by merging partial states.
const NOT_INCREMENTAL: &[&str] = &[
    "array_agg",
    "string_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "mode",
    "percentile_disc",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "xmlagg",
    "corr",
    "covar_pop",
    "covar_samp",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
];

struct Scope<'c> {
    catalog: &'c EventCatalog,
    source: Source,
}

impl Scope<'_> {
    fn column(&self, node: &ast::Expr, name: &str) -> Result<Expr, ViewError> {
        let base = match name {
            "time" => Some((Column::Time, SqlType::Time)),
            "client_time" => Some((Column::ClientTime, SqlType::Time)),
            "received_at" => Some((Column::ReceivedAt, SqlType::Time)),
            "time_flagged" => Some((Column::TimeFlagged, SqlType::Bool)),
            "session_id" => Some((Column::SessionId, SqlType::Text)),
            "position" => Some((Column::Position, SqlType::Int)),
            "key_id" => Some((Column::KeyId, SqlType::Text)),
            "client_ip" => Some((Column::ClientIp, SqlType::Text)),
            "is_bot" => Some((Column::IsBot, SqlType::Bool)),
            "bot_reason" => Some((Column::BotReason, SqlType::Text)),
            "browser" => Some((Column::Browser, SqlType::Text)),
            "os" => Some((Column::Os, SqlType::Text)),
            "device_type" => Some((Column::DeviceType, SqlType::Text)),
            "user_id" => Some((Column::UserId, SqlType::Text)),
            _ => None,
        };
        if let Some((c, t)) = base {
            return Ok(Expr::Col(c, t));
        }
        match (&self.source, name) {
            (_, "metadata") => Err(err(node, "read page metadata with metadata->>'key'".into())),
            (_, "batch_id") => Err(err(node, "batch_id cannot be used in a view".into())),
            (Source::All, "type") => Ok(Expr::Col(Column::Type, SqlType::Text)),
            (Source::All, _) => Err(err(node, format!("`{name}`: views FROM events see only the columns every event has and `type`"))),
            (Source::Type(t), _) => {
                let ty = &self.catalog.types()[*t];
                let Some(i) = ty.attributes.iter().position(|a| &*a.name == name) else {
                    let known: Vec<&str> = ty.attributes.iter().map(|a| &*a.name).collect();
                    return Err(err(node, format!("`{}` has no column `{name}` (attributes: {})", ty.name, known.join(", "))));
                };
                let sql = match ty.attributes[i].ty {
                    AttrType::Text => SqlType::Text,
                    AttrType::Int => SqlType::Int,
                    AttrType::Float => SqlType::Float,
                    AttrType::Bool => SqlType::Bool,
                    AttrType::TextList => return Err(err(node, format!("`{name}` is a list; lists cannot be used in views"))),
                };
                Ok(Expr::Col(Column::Attr(i), sql))
            }
        }
    }

    fn expr(&self, e: &ast::Expr) -> Result<Expr, ViewError> {
        use ast::Expr as A;
        Ok(match e {
            A::Identifier(i) => self.column(e, &i.value)?,
            A::CompoundIdentifier(p) => match p.as_slice() {
                [t, c]
                    if matches!(&self.source, Source::Type(i) if *self.catalog.types()[*i].name == t.value)
                        || (self.source == Source::All && t.value == ALL_EVENTS) =>
                {
                    self.column(e, &c.value)?
                }
                _ => return Err(err(e, format!("`{e}` is not a column of this view's source"))),
            },
            A::Nested(inner) => self.expr(inner)?,
            A::Value(v) => Expr::Lit(literal(e, &v.value)?),
            A::UnaryOp { op: UnaryOperator::Minus, expr } => match self.expr(expr)? {
                Expr::Lit(Lit::Int(i)) => Expr::Lit(Lit::Int(-i)),
                Expr::Lit(Lit::Float(f)) => Expr::Lit(Lit::Float(-f)),
                _ => return Err(err(e, format!("`{e}`: unary minus only on number literals"))),
            },
            A::UnaryOp { op: UnaryOperator::Not, expr } => Expr::Not(Box::new(self.condition(expr)?)),
            A::IsNull(x) => Expr::IsNull(Box::new(self.expr(x)?), false),
            A::IsNotNull(x) => Expr::IsNull(Box::new(self.expr(x)?), true),
            A::In { expr, target: ast::InTarget::List(list), negated, global: false } => {
                let x = self.expr(expr)?;
                let mut items = Vec::new();
                for item in list {
                    let i = self.expr(item)?;
                    if !matches!(i, Expr::Lit(_)) {
                        return Err(err(item, format!("IN (…): `{item}` must be a literal")));
                    }
                    comparable(e, x.ty(), i.ty(), true)?;
                    items.push(i);
                }
                Expr::InList(Box::new(x), items, *negated)
            }
            A::BinaryOp { left, op: BinaryOperator::LongArrow, right } => match (left.as_ref(), right.as_ref()) {
                (A::Identifier(m), A::Value(v)) if m.value == "metadata" => match &v.value {
                    ast::Value::SingleQuotedString(k) => Expr::Meta(k.clone()),
                    _ => return Err(err(e, "metadata->>… takes a quoted key".into())),
                },
                _ => return Err(err(e, format!("`{e}`: ->> only reads page metadata (metadata->>'key')"))),
            },
            A::BinaryOp { left, op, right } => {
                let (l, r) = (self.expr(left)?, self.expr(right)?);
                match op {
                    BinaryOperator::And | BinaryOperator::Or => {
                        let (l, r) = (condition(left, l)?, condition(right, r)?);
                        if *op == BinaryOperator::And {
                            Expr::And(Box::new(l), Box::new(r))
                        } else {
                            Expr::Or(Box::new(l), Box::new(r))
                        }
                    }
                    BinaryOperator::Plus | BinaryOperator::Minus | BinaryOperator::Multiply | BinaryOperator::Divide => {
                        if !l.ty().numeric() || !r.ty().numeric() || matches!(l, Expr::Lit(Lit::Null)) || matches!(r, Expr::Lit(Lit::Null)) {
                            return Err(err(e, format!("`{e}`: arithmetic needs two numbers")));
                        }
                        let ar = match op {
                            BinaryOperator::Plus => ArOp::Add,
                            BinaryOperator::Minus => ArOp::Sub,
                            BinaryOperator::Multiply => ArOp::Mul,
                            _ => ArOp::Div,
                        };
                        if ar == ArOp::Div && !matches!(r, Expr::Lit(Lit::Int(n)) if n != 0) && !matches!(r, Expr::Lit(Lit::Float(f)) if f != 0.0) {
                            return Err(err(
                                right.as_ref(),
                                format!("`{e}`: divide only by a non-zero number literal (PostgreSQL stops on division by zero)"),
                            ));
                        }
                        let ty = if l.ty() == SqlType::Int && r.ty() == SqlType::Int { SqlType::Int } else { SqlType::Float };
                        Expr::Arith(ar, Box::new(l), Box::new(r), ty)
                    }
                    BinaryOperator::Eq
                    | BinaryOperator::NotEq
                    | BinaryOperator::Lt
                    | BinaryOperator::LtEq
                    | BinaryOperator::Gt
                    | BinaryOperator::GtEq => {
                        let eq = matches!(op, BinaryOperator::Eq | BinaryOperator::NotEq);
                        comparable(e, l.ty(), r.ty(), eq)?;
                        let c = match op {
                            BinaryOperator::Eq => CmpOp::Eq,
                            BinaryOperator::NotEq => CmpOp::NotEq,
                            BinaryOperator::Lt => CmpOp::Lt,
                            BinaryOperator::LtEq => CmpOp::LtEq,
                            BinaryOperator::Gt => CmpOp::Gt,
                            _ => CmpOp::GtEq,
                        };
                        Expr::Cmp(c, Box::new(l), Box::new(r))
                    }
                    other => return Err(err(e, format!("operator `{other}` is not supported in views"))),
                }
            }
            A::Function(f) => self.function(e, f)?,
            other => return Err(err(other, format!("`{other}` is not supported in views"))),
        })
    }

    fn condition(&self, e: &ast::Expr) -> Result<Expr, ViewError> {
        condition(e, self.expr(e)?)
    }

    fn function(&self, node: &ast::Expr, f: &ast::Function) -> Result<Expr, ViewError> {
        let name = idents(&f.name).join(".").to_ascii_lowercase();
        if is_aggregate_name(&name) {
            return Err(err(node, format!("aggregate `{node}` cannot be nested in an expression")));
        }
        let args = plain_args(node, f)?;
        match (name.as_str(), args.as_slice()) {
            ("date_trunc", [unit, t]) => {
                let Some(u) = string_literal(unit).and_then(Unit::parse) else {
                    return Err(err(*unit, format!("date_trunc unit `{unit}`: one of 'second', 'minute', 'hour', 'day', 'week', 'month', 'year'")));
                };
                Ok(Expr::Trunc(u, Box::new(self.time_arg(t)?)))
            }
            ("time_bucket", [width, t]) => {
                let text = match width {
                    ast::Expr::Interval(i) if i.leading_field.is_none() => string_literal(&i.value),
                    other => string_literal(other),
                };
                let Some(ms) = text.and_then(interval_ms) else {
                    return Err(err(
                        *width,
                        format!("time_bucket width `{width}`: a fixed interval such as interval '5 minutes' (no months or years)"),
                    ));
                };
                Ok(Expr::Bucket(ms, Box::new(self.time_arg(t)?)))
            }
            ("date_trunc" | "time_bucket", _) => Err(err(node, format!("`{name}` takes two arguments"))),
            _ => Err(err(node, format!("function `{name}` is not supported in views"))),
        }
    }

    fn time_arg(&self, e: &ast::Expr) -> Result<Expr, ViewError> {
        let x = self.expr(e)?;
        if x.ty() != SqlType::Time {
            return Err(err(e, format!("`{e}` is not a time column")));
        }
        Ok(x)
    }

    /// `Some` when `e` is an aggregate call (checked), `None` for a plain expression.
    fn aggregate(&self, e: &ast::Expr) -> Result<Option<Agg>, ViewError> {
        let ast::Expr::Function(f) = e else { return Ok(None) };
        let name = idents(&f.name).join(".").to_ascii_lowercase();
        if NOT_INCREMENTAL.contains(&name.as_str()) {
            return Err(err(
                e,
                format!(
                    "aggregate `{name}` cannot be maintained incrementally; supported: count, sum, min, max, avg, count(DISTINCT …), percentile_cont"
                ),
            ));
        }
        if !is_aggregate_name(&name) {
            return Ok(None);
        }
        if f.over.is_some() {
            return Err(err(e, format!("`{e}`: window functions cannot be maintained incrementally")));
        }
        if let Some(flt) = &f.filter {
            return Err(err(flt.as_ref(), "FILTER (WHERE …) on an aggregate is not supported; use the view's WHERE".into()));
        }
        let FunctionArguments::List(list) = &f.args else {
            return Err(err(e, format!("`{e}`: give the aggregate's argument")));
        };
        if !list.clauses.is_empty() {
            return Err(err(e, format!("`{e}`: ORDER BY / LIMIT inside an aggregate is not supported")));
        }
        let distinct = matches!(list.duplicate_treatment, Some(DuplicateTreatment::Distinct));
        if name == "percentile_cont" {
            let [FunctionArg::Unnamed(FunctionArgExpr::Expr(p))] = list.args.as_slice() else {
                return Err(err(e, "percentile_cont takes one fraction, e.g. percentile_cont(0.95) WITHIN GROUP (ORDER BY x)".into()));
            };
            let frac = match self.expr(p)? {
                Expr::Lit(Lit::Float(f)) => f,
                Expr::Lit(Lit::Int(i)) => i as f64,
                _ => -1.0,
            };
            if !(0.0..=1.0).contains(&frac) {
                return Err(err(p, format!("percentile_cont({p}): the fraction must be a number literal between 0 and 1")));
            }
            let [ob] = f.within_group.as_slice() else {
                return Err(err(e, "percentile_cont needs WITHIN GROUP (ORDER BY x)".into()));
            };
            if ob.options.sort.as_ref().is_some_and(|s| !matches!(s, ast::OrderBySort::Asc)) {
                return Err(err(e, "percentile_cont: ORDER BY … DESC is not supported; use 1 - p".into()));
            }
            let x = self.expr(&ob.expr)?;
            if !x.ty().numeric() {
                return Err(err(&ob.expr, format!("percentile_cont over `{}`: needs a number", ob.expr)));
            }
            return Ok(Some(Agg::Percentile(frac, x)));
        }
        if !f.within_group.is_empty() {
            return Err(err(e, format!("`{name}` takes no WITHIN GROUP")));
        }
        if name == "count" {
            if let [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)] = list.args.as_slice() {
                return Ok(Some(Agg::CountStar));
            }
        }
        let [FunctionArg::Unnamed(FunctionArgExpr::Expr(a))] = list.args.as_slice() else {
            return Err(err(e, format!("`{e}`: {name} takes one argument")));
        };
        let x = self.expr(a)?;
        let ty = x.ty();
        let need_number = |what: &str| -> Result<(), ViewError> {
            if ty.numeric() {
                Ok(())
            } else {
                Err(err(a, format!("{what}({a}): needs a number, `{a}` is {}", ty.sql())))
            }
        };
        if distinct && name != "count" {
            return Err(err(e, format!("`{e}`: DISTINCT is supported only in count(DISTINCT …)")));
        }
        Ok(Some(match name.as_str() {
            "count" if distinct => {
                if !matches!(ty, SqlType::Text | SqlType::Int) {
                    return Err(err(
                        a,
                        format!("count(DISTINCT {a}): only text and integer values can be counted distinctly, `{a}` is {}", ty.sql()),
                    ));
                }
                Agg::Distinct(x)
            }
            "count" => Agg::Count(x),
            "sum" => {
                need_number("sum")?;
                Agg::Sum(x)
            }
            "avg" => {
                need_number("avg")?;
                Agg::Avg(x)
            }
            "min" | "max" => {
                if !(ty.numeric() || ty == SqlType::Time) {
                    return Err(err(
                        a,
                        format!("{name}({a}): only numbers and times (text order depends on the database collation), `{a}` is {}", ty.sql()),
                    ));
                }
                if name == "min" {
                    Agg::Min(x)
                } else {
                    Agg::Max(x)
                }
            }
            _ => unreachable!("is_aggregate_name"),
        }))
    }
}

/// `x` (the checked form of `e`) when it is a condition.
fn condition(e: &ast::Expr, x: Expr) -> Result<Expr, ViewError> {
    if x.ty() != SqlType::Bool {
        return Err(err(e, format!("`{e}` is not a condition")));
    }
    Ok(x)
}

fn is_aggregate_name(name: &str) -> bool {
    matches!(name, "count" | "sum" | "min" | "max" | "avg" | "percentile_cont")
}

fn plain_args<'a>(node: &ast::Expr, f: &'a ast::Function) -> Result<Vec<&'a ast::Expr>, ViewError> {
    if f.over.is_some() || f.filter.is_some() || !f.within_group.is_empty() {
        return Err(err(node, format!("`{node}` is not supported in views")));
    }
    let FunctionArguments::List(list) = &f.args else {
        return Err(err(node, format!("`{node}`: arguments expected")));
    };
    list.args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e),
            other => Err(err(node, format!("argument `{other}` is not supported"))),
        })
        .collect()
}

fn string_literal(e: &ast::Expr) -> Option<&str> {
    match e {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

fn literal(node: &ast::Expr, v: &ast::Value) -> Result<Lit, ViewError> {
    Ok(match v {
        ast::Value::Number(n, _) => match n.parse::<i64>() {
            Ok(i) => Lit::Int(i),
            Err(_) => match n.parse::<f64>() {
                Ok(f) if f.is_finite() => Lit::Float(f),
                _ => return Err(err(node, format!("number `{n}` is out of range"))),
            },
        },
        ast::Value::SingleQuotedString(s) => Lit::Text(s.clone()),
        ast::Value::Boolean(b) => Lit::Bool(*b),
        ast::Value::Null => Lit::Null,
        other => return Err(err(node, format!("literal `{other}` is not supported"))),
    })
}

/// Checks that two types can be compared; text only for (in)equality.
fn comparable(node: &ast::Expr, a: SqlType, b: SqlType, equality: bool) -> Result<(), ViewError> {
    let ok = a == b || (a.numeric() && b.numeric());
    if !ok {
        return Err(err(node, format!("`{node}` compares {} with {}", a.sql(), b.sql())));
    }
    if a == SqlType::Text && !equality {
        return Err(err(node, format!("`{node}`: text can only be compared with = or <> (ordering depends on the database collation)")));
    }
    if a == SqlType::Time {
        return Err(err(node, format!("`{node}`: comparing times is not supported in views; bucket with date_trunc or time_bucket")));
    }
    Ok(())
}

/// `'5 minutes'` → 300 000 ms; fixed units only.
fn interval_ms(s: &str) -> Option<i64> {
    let mut total: i64 = 0;
    let words: Vec<&str> = s.split_whitespace().collect();
    if words.is_empty() || words.len() % 2 != 0 {
        return None;
    }
    for pair in words.chunks(2) {
        let n: i64 = pair[0].parse().ok().filter(|n| *n > 0)?;
        let unit = match pair[1].to_ascii_lowercase().trim_end_matches('s') {
            "millisecond" | "m" => 1,
            "second" | "sec" => 1000,
            "minute" | "min" => 60_000,
            "hour" => 3_600_000,
            "day" => 86_400_000,
            "week" => 7 * 86_400_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
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
