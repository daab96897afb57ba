//! Expressions and aggregates of a view, read in the scope of its source:
//! the columns it may use, the functions and operators whose PostgreSQL
//! meaning is reproduced exactly, and the literals.

use super::*;

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

pub(super) struct Scope<'c> {
    pub(super) catalog: &'c EventCatalog,
    pub(super) source: Source,
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

    pub(super) fn expr(&self, e: &ast::Expr) -> Result<Expr, ViewError> {
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
            A::In { expr, target: ast::InTarget::List(list), negated, global: false } => self.in_list(e, expr, list, *negated)?,
            A::BinaryOp { left, op: BinaryOperator::LongArrow, right } => match (left.as_ref(), right.as_ref()) {
                (A::Identifier(m), A::Value(v)) if m.value == "metadata" => match &v.value {
                    ast::Value::SingleQuotedString(k) => Expr::Meta(k.clone()),
                    _ => return Err(err(e, "metadata->>… takes a quoted key".into())),
                },
                _ => return Err(err(e, format!("`{e}`: ->> only reads page metadata (metadata->>'key')"))),
            },
            A::BinaryOp { left, op, right } => self.binary(e, left, op, right)?,
            A::Function(f) => self.function(e, f)?,
            other => return Err(err(other, format!("`{other}` is not supported in views"))),
        })
    }

    /// `left op right`: AND, OR, arithmetic or a comparison.
    fn binary(&self, e: &ast::Expr, left: &ast::Expr, op: &BinaryOperator, right: &ast::Expr) -> Result<Expr, ViewError> {
        let (l, r) = (self.expr(left)?, self.expr(right)?);
        Ok(match op {
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
                    return Err(err(right, format!("`{e}`: divide only by a non-zero number literal (PostgreSQL stops on division by zero)")));
                }
                let ty = if l.ty() == SqlType::Int && r.ty() == SqlType::Int { SqlType::Int } else { SqlType::Float };
                Expr::Arith(ar, Box::new(l), Box::new(r), ty)
            }
            BinaryOperator::Eq | BinaryOperator::NotEq | BinaryOperator::Lt | BinaryOperator::LtEq | BinaryOperator::Gt | BinaryOperator::GtEq => {
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
        })
    }

    /// `expr [NOT] IN (literals…)`.
    fn in_list(&self, e: &ast::Expr, expr: &ast::Expr, list: &[ast::Expr], negated: bool) -> Result<Expr, ViewError> {
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
        Ok(Expr::InList(Box::new(x), items, negated))
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
    pub(super) fn aggregate(&self, e: &ast::Expr) -> Result<Option<Agg>, ViewError> {
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
            return self.percentile(e, f, list).map(Some);
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
        self.of_one(e, &name, distinct, a).map(Some)
    }

    /// `percentile_cont(fraction) WITHIN GROUP (ORDER BY x)`.
    fn percentile(&self, e: &ast::Expr, f: &ast::Function, list: &ast::FunctionArgumentList) -> Result<Agg, ViewError> {
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
        Ok(Agg::Percentile(frac, x))
    }

    /// count, count(DISTINCT …), sum, avg, min or max (`e`) of its one argument `a`.
    fn of_one(&self, e: &ast::Expr, name: &str, distinct: bool, a: &ast::Expr) -> Result<Agg, ViewError> {
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
        Ok(match name {
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
        })
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
pub(super) fn interval_ms(s: &str) -> Option<i64> {
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
