//! A view's one SELECT: its source, filter, keys and aggregates, and the
//! checks that it can be maintained incrementally.

use super::scope::Scope;
use super::*;

type Parts = (Source, String, Option<Expr>, Vec<(String, Expr)>, Vec<(String, Agg)>, Vec<Output>);

/// A view's query, read and checked: its source, filter, keys, aggregates
/// and the order of its output columns.
pub(super) fn select(q: &ast::Query, catalog: &EventCatalog) -> Result<Parts, ViewError> {
    let s = one_select(q)?;
    let (source, stream) = source(q, s, catalog)?;
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
    let group_by = group_by(q, s)?;
    let p = projection(q, s, &scope)?;
    check_grouping(group_by, &p)?;
    Ok((source, stream, filter, p.keys, p.aggs, p.outputs))
}

/// The query's one SELECT, refusing what cannot be maintained incrementally.
fn one_select(q: &ast::Query) -> Result<&ast::Select, ViewError> {
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
    Ok(s)
}

/// The event type the query reads (or all of them, `events`), and its name.
fn source(q: &ast::Query, s: &ast::Select, catalog: &EventCatalog) -> Result<(Source, String), ViewError> {
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
    Ok((source, stream))
}

/// The SELECT list: aggregates, and keys (which must be grouped).
struct Projection<'q> {
    keys: Vec<(String, Expr)>,
    /// Each key as written, for GROUP BY.
    key_ast: Vec<&'q ast::Expr>,
    aggs: Vec<(String, Agg)>,
    outputs: Vec<Output>,
}

/// Reads the SELECT list: each item an aggregate or a key, with an output
/// name that is a valid, unique column name.
fn projection<'q>(q: &ast::Query, s: &'q ast::Select, scope: &Scope<'_>) -> Result<Projection<'q>, ViewError> {
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
    Ok(Projection { keys, key_ast, aggs, outputs })
}

/// The GROUP BY list (a list it must be: no ALL, no modifiers).
fn group_by<'q>(q: &ast::Query, s: &'q ast::Select) -> Result<&'q [ast::Expr], ViewError> {
    let GroupByExpr::Expressions(group_by, modifiers) = &s.group_by else {
        return Err(err(q, "GROUP BY ALL is not supported; list the keys".into()));
    };
    if !modifiers.is_empty() {
        return Err(err(q, "GROUP BY modifiers (ROLLUP, CUBE, …) are not supported".into()));
    }
    Ok(group_by)
}

/// GROUP BY must list exactly the keys (by expression, output name or
/// position), and no key may be a condition.
fn check_grouping(group_by: &[ast::Expr], p: &Projection<'_>) -> Result<(), ViewError> {
    let mut grouped = vec![false; p.keys.len()];
    for g in group_by {
        let k = match g {
            ast::Expr::Value(v) if matches!(&v.value, ast::Value::Number(..)) => {
                let pos: usize = v.value.to_string().parse().map_err(|_| err(g, format!("GROUP BY {g}: not a column position")))?;
                match p.outputs.get(pos.wrapping_sub(1)) {
                    Some(Output::Key(k)) => *k,
                    Some(Output::Agg(_)) => return Err(err(g, format!("GROUP BY {pos} names an aggregate"))),
                    None => return Err(err(g, format!("GROUP BY {pos}: the SELECT list has {} items", p.outputs.len()))),
                }
            }
            _ => {
                let by_expr = p.key_ast.iter().position(|a| *a == g);
                let by_name = match g {
                    ast::Expr::Identifier(i) => p.keys.iter().position(|(n, _)| *n == i.value),
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
        return Err(err(p.key_ast[k], format!("`{}` must be in GROUP BY or inside an aggregate", p.key_ast[k])));
    }
    for (n, k) in &p.keys {
        if k.ty() == SqlType::Bool && !matches!(k, Expr::Col(..)) {
            return Err(ViewError { view: None, at: None, message: format!("key `{n}`: conditions cannot be keys") });
        }
    }
    Ok(())
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
