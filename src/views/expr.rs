//! The expressions a continuous view may use, evaluated in Rust on each event
//! of a loader transaction and written back as SQL (for backfill from the raw
//! tables). Both sides must give the same answer, so only constructs whose
//! PostgreSQL semantics are reproduced exactly are accepted (see `parse`).

use std::borrow::Cow;
use std::fmt::Write as _;

use simd_json::prelude::*;

use crate::record::Row;
use crate::store::schema::ident;

/// SQL type of an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlType {
    Text,
    Int,
    Float,
    Bool,
    Time,
}

impl SqlType {
    pub fn sql(self) -> &'static str {
        match self {
            SqlType::Text => "text",
            SqlType::Int => "bigint",
            SqlType::Float => "double precision",
            SqlType::Bool => "boolean",
            SqlType::Time => "timestamptz",
        }
    }

    pub fn numeric(self) -> bool {
        matches!(self, SqlType::Int | SqlType::Float)
    }
}

/// A column of the event tables a view can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Time,
    ClientTime,
    ReceivedAt,
    TimeFlagged,
    SessionId,
    Position,
    KeyId,
    ClientIp,
    /// Enrichment (`crate::enrich`): the bot flag, its reason, the parsed user agent.
    IsBot,
    BotReason,
    Browser,
    Os,
    DeviceType,
    UserId,
    /// The event type's name (only in views `FROM events`).
    Type,
    /// An attribute, by index in the event type's catalog order.
    Attr(usize),
}

/// `date_trunc` units, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    pub fn parse(s: &str) -> Option<Unit> {
        Some(match s.to_ascii_lowercase().as_str() {
            "second" => Unit::Second,
            "minute" => Unit::Minute,
            "hour" => Unit::Hour,
            "day" => Unit::Day,
            "week" => Unit::Week,
            "month" => Unit::Month,
            "year" => Unit::Year,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    /// Truncates ms since the Unix epoch (UTC).
    pub fn trunc(self, ms: i64) -> i64 {
        use crate::clock::DAY_MS as DAY;
        let fixed = |step: i64| ms.div_euclid(step) * step;
        match self {
            Unit::Second => fixed(1000),
            Unit::Minute => fixed(60_000),
            Unit::Hour => fixed(3_600_000),
            Unit::Day => fixed(DAY),
            // 1970-01-01 was a Thursday; ISO weeks start on Monday (1970-01-05).
            Unit::Week => (ms - 4 * DAY).div_euclid(7 * DAY) * 7 * DAY + 4 * DAY,
            Unit::Month | Unit::Year => {
                let (y, m, _) = crate::store::schema::civil_from_days(ms.div_euclid(DAY));
                let m = if self == Unit::Year { 1 } else { m };
                days_from_civil(y, m, 1) * DAY
            }
        }
    }
}

/// Days since the Unix epoch of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Origin of `time_bucket` (TimescaleDB's default: Monday 2000-01-03, UTC), ms.
pub const BUCKET_ORIGIN_MS: i64 = 946_857_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArOp {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

/// A literal, owned by the view.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
}

/// A typed expression (types checked when the view was parsed).
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Col(Column, SqlType),
    /// `metadata->>'key'`
    Meta(String),
    Lit(Lit),
    Trunc(Unit, Box<Expr>),
    /// `time_bucket(interval, t)`: width in ms.
    Bucket(i64, Box<Expr>),
    Arith(ArOp, Box<Expr>, Box<Expr>, SqlType),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    IsNull(Box<Expr>, bool),
    InList(Box<Expr>, Vec<Expr>, bool),
}

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    Null,
    Int(i64),
    Float(f64),
    Text(Cow<'a, str>),
    Bool(bool),
    /// ms since the Unix epoch.
    Time(i64),
}

impl Scalar<'_> {
    fn as_f64(&self) -> Option<f64> {
        match self {
            Scalar::Int(i) => Some(*i as f64),
            Scalar::Float(f) => Some(*f),
            _ => None,
        }
    }
}

impl Column {
    /// The column's name in the event tables (`attr_names`: the attributes' names).
    pub fn name<'a>(&self, attr_names: &[&'a str]) -> &'a str {
        match self {
            Column::Time => "time",
            Column::ClientTime => "client_time",
            Column::ReceivedAt => "received_at",
            Column::TimeFlagged => "time_flagged",
            Column::SessionId => "session_id",
            Column::Position => "position",
            Column::KeyId => "key_id",
            Column::ClientIp => "client_ip",
            Column::IsBot => "is_bot",
            Column::BotReason => "bot_reason",
            Column::Browser => "browser",
            Column::Os => "os",
            Column::DeviceType => "device_type",
            Column::UserId => "user_id",
            Column::Type => "type",
            Column::Attr(i) => attr_names[*i],
        }
    }
}

impl Lit {
    /// The literal in SQL, typed as the view's Rust side reads it.
    pub fn to_sql(&self, out: &mut String) {
        match self {
            Lit::Null => out.push_str("NULL"),
            Lit::Int(i) => {
                let _ = write!(out, "{i}::bigint");
            }
            Lit::Float(f) => {
                let _ = write!(out, "'{f:?}'::double precision");
            }
            Lit::Text(s) => out.push_str(&literal(s)),
            Lit::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        }
    }
}

impl ArOp {
    /// The operator in SQL, with its spaces.
    pub fn sql(self) -> &'static str {
        match self {
            ArOp::Add => " + ",
            ArOp::Sub => " - ",
            ArOp::Mul => " * ",
            ArOp::Div => " / ",
        }
    }
}

impl CmpOp {
    /// The operator in SQL, with its spaces.
    pub fn sql(self) -> &'static str {
        match self {
            CmpOp::Eq => " = ",
            CmpOp::NotEq => " <> ",
            CmpOp::Lt => " < ",
            CmpOp::LtEq => " <= ",
            CmpOp::Gt => " > ",
            CmpOp::GtEq => " >= ",
        }
    }
}

impl Expr {
    pub fn ty(&self) -> SqlType {
        match self {
            Expr::Col(_, t) | Expr::Arith(_, _, _, t) => *t,
            Expr::Meta(_) => SqlType::Text,
            Expr::Lit(Lit::Int(_)) => SqlType::Int,
            Expr::Lit(Lit::Float(_)) => SqlType::Float,
            Expr::Lit(Lit::Text(_)) | Expr::Lit(Lit::Null) => SqlType::Text,
            Expr::Lit(Lit::Bool(_)) => SqlType::Bool,
            Expr::Trunc(..) | Expr::Bucket(..) => SqlType::Time,
            _ => SqlType::Bool,
        }
    }

    /// The value on one event; SQL's three-valued logic (NULL = unknown).
    pub fn eval<'a>(&'a self, row: &Row<'a, '_>) -> Scalar<'a> {
        match self {
            Expr::Col(c, ty) => column(row, *c, *ty),
            Expr::Meta(key) => match row.page.get(key.as_str()) {
                None => Scalar::Null,
                Some(v) if v.is_null() => Scalar::Null,
                Some(v) => match v.as_str() {
                    Some(s) => Scalar::Text(Cow::Borrowed(s)),
                    None => Scalar::Text(Cow::Owned(v.to_string())),
                },
            },
            Expr::Lit(l) => match l {
                Lit::Null => Scalar::Null,
                Lit::Int(i) => Scalar::Int(*i),
                Lit::Float(f) => Scalar::Float(*f),
                Lit::Text(s) => Scalar::Text(Cow::Borrowed(s)),
                Lit::Bool(b) => Scalar::Bool(*b),
            },
            Expr::Trunc(unit, e) => match e.eval(row) {
                Scalar::Time(t) => Scalar::Time(unit.trunc(t)),
                _ => Scalar::Null,
            },
            Expr::Bucket(width, e) => match e.eval(row) {
                Scalar::Time(t) => Scalar::Time((t - BUCKET_ORIGIN_MS).div_euclid(*width) * width + BUCKET_ORIGIN_MS),
                _ => Scalar::Null,
            },
            Expr::Arith(op, a, b, ty) => arithmetic(*op, *ty, &a.eval(row), &b.eval(row)),
            Expr::Cmp(op, a, b) => match compare(&a.eval(row), &b.eval(row)) {
                None => Scalar::Null,
                Some(o) => Scalar::Bool(match op {
                    CmpOp::Eq => o.is_eq(),
                    CmpOp::NotEq => o.is_ne(),
                    CmpOp::Lt => o.is_lt(),
                    CmpOp::LtEq => o.is_le(),
                    CmpOp::Gt => o.is_gt(),
                    CmpOp::GtEq => o.is_ge(),
                }),
            },
            Expr::And(a, b) => match (a.eval(row), b.eval(row)) {
                (Scalar::Bool(false), _) | (_, Scalar::Bool(false)) => Scalar::Bool(false),
                (Scalar::Bool(true), Scalar::Bool(true)) => Scalar::Bool(true),
                _ => Scalar::Null,
            },
            Expr::Or(a, b) => match (a.eval(row), b.eval(row)) {
                (Scalar::Bool(true), _) | (_, Scalar::Bool(true)) => Scalar::Bool(true),
                (Scalar::Bool(false), Scalar::Bool(false)) => Scalar::Bool(false),
                _ => Scalar::Null,
            },
            Expr::Not(e) => match e.eval(row) {
                Scalar::Bool(b) => Scalar::Bool(!b),
                _ => Scalar::Null,
            },
            Expr::IsNull(e, negated) => Scalar::Bool((e.eval(row) == Scalar::Null) != *negated),
            Expr::InList(e, list, negated) => in_list(&e.eval(row), list.iter().map(|item| item.eval(row)), *negated),
        }
    }

    /// The same expression as PostgreSQL SQL over an event table's columns.
    /// `attr_names` maps `Column::Attr` indexes to column names.
    pub fn to_sql(&self, attr_names: &[&str], out: &mut String) {
        match self {
            Expr::Col(c, _) => out.push_str(&ident(c.name(attr_names))),
            Expr::Meta(k) => {
                let _ = write!(out, "(metadata->>{})", literal(k));
            }
            Expr::Lit(l) => l.to_sql(out),
            Expr::Trunc(unit, e) => {
                let _ = write!(out, "date_trunc('{}', ", unit.name());
                e.to_sql(attr_names, out);
                out.push_str(", 'UTC')");
            }
            Expr::Bucket(width, e) => {
                let _ = write!(out, "date_bin('{width} milliseconds'::interval, ");
                e.to_sql(attr_names, out);
                out.push_str(", '2000-01-03 00:00:00+00'::timestamptz)");
            }
            Expr::Arith(op, a, b, ty) => {
                out.push('(');
                a.to_sql(attr_names, out);
                out.push_str(op.sql());
                b.to_sql(attr_names, out);
                let _ = write!(out, ")::{}", ty.sql());
            }
            Expr::Cmp(op, a, b) => {
                out.push('(');
                a.to_sql(attr_names, out);
                out.push_str(op.sql());
                b.to_sql(attr_names, out);
                out.push(')');
            }
            Expr::And(a, b) | Expr::Or(a, b) => {
                out.push('(');
                a.to_sql(attr_names, out);
                out.push_str(if matches!(self, Expr::And(..)) { " AND " } else { " OR " });
                b.to_sql(attr_names, out);
                out.push(')');
            }
            Expr::Not(e) => {
                out.push_str("(NOT ");
                e.to_sql(attr_names, out);
                out.push(')');
            }
            Expr::IsNull(e, negated) => {
                out.push('(');
                e.to_sql(attr_names, out);
                out.push_str(if *negated { " IS NOT NULL)" } else { " IS NULL)" });
            }
            Expr::InList(e, list, negated) => {
                out.push('(');
                e.to_sql(attr_names, out);
                out.push_str(if *negated { " NOT IN (" } else { " IN (" });
                for (i, item) in list.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.to_sql(attr_names, out);
                }
                out.push_str("))");
            }
        }
    }

    /// Whether any part reads an attribute (views `FROM events` cannot).
    pub fn reads_attr(&self) -> bool {
        match self {
            Expr::Col(Column::Attr(_), _) => true,
            Expr::Col(..) | Expr::Meta(_) | Expr::Lit(_) => false,
            Expr::Trunc(_, e) | Expr::Bucket(_, e) | Expr::Not(e) | Expr::IsNull(e, _) => e.reads_attr(),
            Expr::Arith(_, a, b, _) | Expr::Cmp(_, a, b) | Expr::And(a, b) | Expr::Or(a, b) => a.reads_attr() || b.reads_attr(),
            Expr::InList(e, l, _) => e.reads_attr() || l.iter().any(Expr::reads_attr),
        }
    }
}

/// A SQL string literal that reads the same whatever the server's
/// `standard_conforming_strings` is: an escape string (`E'…'`, where a
/// backslash always escapes), its backslashes and quotes doubled. A plain
/// `'…'` with a backslash before its closing quote ends later with the
/// setting off, and the rest of a definition's text would run as SQL.
pub fn literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// `a op b` as PostgreSQL computes it for result type `ty`: NULL when either
/// is NULL, integers checked (an overflow is NULL here, an error there), else
/// as floats.
fn arithmetic<'a>(op: ArOp, ty: SqlType, a: &Scalar<'_>, b: &Scalar<'_>) -> Scalar<'a> {
    match (ty, a, b) {
        (_, Scalar::Null, _) | (_, _, Scalar::Null) => Scalar::Null,
        (SqlType::Int, Scalar::Int(x), Scalar::Int(y)) => {
            let r = match op {
                ArOp::Add => x.checked_add(*y),
                ArOp::Sub => x.checked_sub(*y),
                ArOp::Mul => x.checked_mul(*y),
                // PostgreSQL's integer division truncates toward zero, as Rust's does.
                ArOp::Div => x.checked_div(*y),
            };
            r.map_or(Scalar::Null, Scalar::Int)
        }
        _ => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => Scalar::Float(match op {
                ArOp::Add => x + y,
                ArOp::Sub => x - y,
                ArOp::Mul => x * y,
                ArOp::Div => x / y,
            }),
            _ => Scalar::Null,
        },
    }
}

/// `v [NOT] IN (items)` with SQL's three values: NULL when `v` is, or when no
/// item matches and one of them is NULL.
fn in_list<'a, 'b>(v: &Scalar<'_>, items: impl Iterator<Item = Scalar<'b>>, negated: bool) -> Scalar<'a> {
    if *v == Scalar::Null {
        return Scalar::Null;
    }
    let mut unknown = false;
    for item in items {
        match compare(v, &item) {
            Some(o) if o.is_eq() => return Scalar::Bool(!negated),
            None => unknown = true,
            _ => {}
        }
    }
    if unknown {
        Scalar::Null
    } else {
        Scalar::Bool(negated)
    }
}

fn column<'a>(row: &Row<'a, '_>, c: Column, ty: SqlType) -> Scalar<'a> {
    match c {
        Column::Time => Scalar::Time(row.time),
        Column::ClientTime => Scalar::Time(row.client_time),
        Column::ReceivedAt => Scalar::Time(row.received_at),
        Column::TimeFlagged => Scalar::Bool(row.time_flagged),
        Column::SessionId => Scalar::Text(Cow::Borrowed(row.session_id)),
        Column::Position => Scalar::Int(row.position as i64),
        Column::KeyId => Scalar::Text(Cow::Borrowed(row.key_id)),
        Column::ClientIp => row.client_ip.map_or(Scalar::Null, |s| Scalar::Text(Cow::Borrowed(s))),
        Column::IsBot => Scalar::Bool(row.bot.is_some()),
        Column::BotReason => row.bot.map_or(Scalar::Null, |s| Scalar::Text(Cow::Borrowed(s))),
        Column::Browser => row.agent_field("browser").map_or(Scalar::Null, |s| Scalar::Text(Cow::Borrowed(s))),
        Column::Os => row.agent_field("os").map_or(Scalar::Null, |s| Scalar::Text(Cow::Borrowed(s))),
        Column::DeviceType => row.agent_field("device").map_or(Scalar::Null, |s| Scalar::Text(Cow::Borrowed(s))),
        Column::UserId => row.user_id.map_or(Scalar::Null, |s| Scalar::Text(Cow::Borrowed(s))),
        Column::Type => Scalar::Text(Cow::Borrowed(row.type_name)),
        Column::Attr(i) => match row.attrs.get(i).copied().flatten() {
            None => Scalar::Null,
            Some(v) => match ty {
                SqlType::Text => v.as_str().map_or(Scalar::Null, |s| Scalar::Text(Cow::Borrowed(s))),
                SqlType::Int => v.as_i64().map_or(Scalar::Null, Scalar::Int),
                SqlType::Float => v.cast_f64().map_or(Scalar::Null, Scalar::Float),
                SqlType::Bool => v.as_bool().map_or(Scalar::Null, Scalar::Bool),
                SqlType::Time => Scalar::Null,
            },
        },
    }
}

/// Ordering of two non-NULL values of comparable types (text: equality only
/// is ever asked; see `parse`). NULL on either side: unknown.
fn compare(a: &Scalar<'_>, b: &Scalar<'_>) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Scalar::Int(x), Scalar::Int(y)) => Some(x.cmp(y)),
        (Scalar::Text(x), Scalar::Text(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Scalar::Bool(x), Scalar::Bool(y)) => Some(x.cmp(y)),
        (Scalar::Time(x), Scalar::Time(y)) => Some(x.cmp(y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads one SQL string literal at the start of `sql` as PostgreSQL does
    /// with `standard_conforming_strings` off (a backslash escapes the next
    /// character in every string) or on (only in `E'…'`); returns its value
    /// and what follows it.
    fn read_literal(sql: &str, standard_conforming: bool) -> Option<(String, &str)> {
        let (escapes, body) = match sql.strip_prefix("E'") {
            Some(body) => (true, body),
            None => (!standard_conforming, sql.strip_prefix('\'')?),
        };
        let (mut value, mut chars) = (String::new(), body.char_indices().peekable());
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' if escapes => value.push(chars.next()?.1),
                '\'' if chars.peek().is_some_and(|(_, n)| *n == '\'') => {
                    chars.next();
                    value.push('\'');
                }
                '\'' => return Some((value, &body[i + 1..])),
                c => value.push(c),
            }
        }
        None
    }

    #[test]
    fn literals_read_the_same_whatever_standard_conforming_strings_is() {
        for s in ["", "url", "it's", "a\\", "a\\' OR true --", "\\'; DROP TABLE chronos.views; --", "\\\\''\\", "é\n\t$$"] {
            let lit = literal(s);
            for standard_conforming in [true, false] {
                let followed = format!("{lit} AND x");
                let (value, rest) = read_literal(&followed, standard_conforming).unwrap_or_else(|| panic!("{lit} does not end"));
                assert_eq!((value.as_str(), rest), (s, " AND x"), "{lit}, standard_conforming_strings = {standard_conforming}");
            }
        }
    }

    #[test]
    fn truncation_matches_postgres_in_utc() {
        // 2026-11-26 12:34:56.789 UTC (a Thursday)
        let t = 1_764_160_496_789;
        assert_eq!(Unit::Second.trunc(t), 1_764_160_496_000);
        assert_eq!(Unit::Minute.trunc(t), 1_764_160_440_000);
        assert_eq!(Unit::Hour.trunc(t), 1_764_158_400_000);
        assert_eq!(Unit::Day.trunc(t), 1_764_115_200_000);
        assert_eq!(Unit::Week.trunc(t), 1_763_942_400_000, "Monday 2026-11-23");
        assert_eq!(Unit::Month.trunc(t), 1_761_955_200_000, "2026-11-01");
        assert_eq!(Unit::Year.trunc(t), 1_735_689_600_000, "2026-01-01");
        assert_eq!(Unit::Day.trunc(-1), -86_400_000, "before the epoch rounds down");
    }

    #[test]
    fn civil_round_trip() {
        for days in [-800_000, -1, 0, 59, 60, 365, 10_957, 20_418, 2_000_000] {
            let (y, m, d) = crate::store::schema::civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
