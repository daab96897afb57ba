//! The columns of an event table as the archive stores them: each PostgreSQL
//! type maps to one Parquet/Arrow type, read out of PostgreSQL and written
//! back by `restore` without loss.

use std::sync::Arc;

use anyhow::Result;
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;

use crate::store::schema::ident;

/// How a column is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// timestamptz, as microseconds since the epoch (UTC).
    Timestamp,
    Bool,
    Int32,
    Int64,
    Float64,
    /// text, and the types whose text form is exact (uuid, jsonb, …): cast
    /// to text on the way out, back to `pg_type` on the way in.
    Text,
    /// text[]
    TextList,
}

/// The PostgreSQL types (`format_type` names) an event table's columns have:
/// its base columns', the page's and the catalog attributes'. The only ones
/// an archive file may name: `restore` casts its staging columns to them,
/// and a file naming another is not one Chronos wrote.
pub const KNOWN_PG_TYPES: [&str; 9] =
    ["timestamp with time zone", "boolean", "integer", "bigint", "double precision", "text", "text[]", "uuid", "jsonb"];

/// One column of an event table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// PostgreSQL's name for its type (`format_type`), kept in the file.
    pub pg_type: String,
    pub kind: Kind,
    pub nullable: bool,
}

impl Column {
    fn of(name: String, pg_type: String, nullable: bool) -> Column {
        let kind = match pg_type.as_str() {
            "timestamp with time zone" => Kind::Timestamp,
            "boolean" => Kind::Bool,
            "integer" => Kind::Int32,
            "bigint" => Kind::Int64,
            "double precision" => Kind::Float64,
            "text[]" => Kind::TextList,
            _ => Kind::Text,
        };
        Column { name, pg_type, kind, nullable }
    }

    /// The column in the archive's SELECT.
    pub fn select_expr(&self) -> String {
        let c = ident(&self.name);
        match self.kind {
            Kind::Timestamp => format!("(extract(epoch FROM {c}) * 1000000)::bigint"),
            Kind::Text if self.pg_type != "text" => format!("{c}::text"),
            _ => c,
        }
    }

    /// Its type in `restore`'s staging table (what the file holds).
    pub fn staging_type(&self) -> Type {
        match self.kind {
            Kind::Timestamp | Kind::Int64 => Type::INT8,
            Kind::Bool => Type::BOOL,
            Kind::Int32 => Type::INT4,
            Kind::Float64 => Type::FLOAT8,
            Kind::Text => Type::TEXT,
            Kind::TextList => Type::TEXT_ARRAY,
        }
    }

    /// The staging column turned back into the table's type.
    pub fn restore_expr(&self, from: &str) -> String {
        let c = format!("{from}.{}", ident(&self.name));
        match self.kind {
            Kind::Timestamp => format!("timestamptz 'epoch' + {c} * interval '1 microsecond'"),
            Kind::Text if self.pg_type != "text" => format!("{c}::{}", self.pg_type),
            _ => c,
        }
    }

    pub fn arrow_type(&self) -> DataType {
        match self.kind {
            Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Kind::Bool => DataType::Boolean,
            Kind::Int32 => DataType::Int32,
            Kind::Int64 => DataType::Int64,
            Kind::Float64 => DataType::Float64,
            Kind::Text => DataType::Utf8,
            Kind::TextList => DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        }
    }
}

/// The columns of `events.<table>` (the raw table with each row's page), in
/// its order; nullable as in the raw table (the page never is).
pub async fn of_table(client: &impl GenericClient, table: &str) -> Result<Vec<Column>> {
    let rows = client
        .query(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), coalesce(NOT r.attnotnull, a.attname <> 'metadata')
             FROM pg_attribute a
             LEFT JOIN pg_attribute r ON r.attrelid = to_regclass($2) AND r.attname = a.attname AND NOT r.attisdropped
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&format!("events.{}", ident(table)), &crate::store::schema::raw(table)],
        )
        .await?;
    if rows.is_empty() {
        anyhow::bail!("events.{table} does not exist");
    }
    Ok(rows.iter().map(|r| Column::of(r.get(0), r.get(1), r.get(2))).collect())
}

/// The Arrow schema of an archive file; each field keeps its PostgreSQL type.
pub fn arrow_schema(columns: &[Column]) -> Schema {
    let fields: Vec<Field> = columns
        .iter()
        .map(|c| {
            Field::new(&c.name, c.arrow_type(), c.nullable).with_metadata([("chronos.pg_type".to_string(), c.pg_type.clone())].into_iter().collect())
        })
        .collect();
    Schema::new(fields)
}

/// The columns an archive file holds, from its Arrow schema.
pub fn from_arrow(schema: &Schema) -> Result<Vec<Column>> {
    schema
        .fields()
        .iter()
        .map(|f| {
            let pg_type = f
                .metadata()
                .get("chronos.pg_type")
                .ok_or_else(|| anyhow::anyhow!("column {} has no chronos.pg_type: not a Chronos archive file", f.name()))?;
            if !KNOWN_PG_TYPES.contains(&pg_type.as_str()) {
                // Debug-quoted: the file's text, shown as data.
                anyhow::bail!(
                    "column {:?} has chronos.pg_type {pg_type:?}, which is not a type Chronos archives ({}): refused",
                    f.name(),
                    KNOWN_PG_TYPES.join(", ")
                );
            }
            let c = Column::of(f.name().clone(), pg_type.clone(), f.is_nullable());
            if c.arrow_type() != *f.data_type() {
                anyhow::bail!("column {} is {} in the file, expected {} for {}", f.name(), f.data_type(), c.arrow_type(), pg_type);
            }
            Ok(c)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_round_trip_through_the_arrow_schema() {
        let cols = vec![
            Column::of("time".into(), "timestamp with time zone".into(), false),
            Column::of("batch_id".into(), "uuid".into(), false),
            Column::of("metadata".into(), "jsonb".into(), false),
            Column::of("tags".into(), "text[]".into(), true),
            Column::of("position".into(), "integer".into(), false),
        ];
        assert_eq!(cols[0].select_expr(), "(extract(epoch FROM \"time\") * 1000000)::bigint");
        assert_eq!(cols[1].select_expr(), "\"batch_id\"::text");
        assert_eq!(cols[1].restore_expr("s"), "s.\"batch_id\"::uuid");
        assert_eq!(cols[3].kind, Kind::TextList);
        assert_eq!(from_arrow(&arrow_schema(&cols)).unwrap(), cols);
    }

    #[test]
    fn every_type_an_event_table_has_is_known() {
        use crate::catalog::AttrType;
        // The base columns' declarations, as format_type names them.
        let declared = crate::store::schema::BASE_COLUMNS.iter().map(|(_, decl)| decl.split(' ').next().unwrap());
        // A new attribute type stops this compiling until it is listed.
        let _every = |t: AttrType| match t {
            AttrType::Text | AttrType::Int | AttrType::Float | AttrType::Bool | AttrType::TextList => (),
        };
        let attrs = [AttrType::Text, AttrType::Int, AttrType::Float, AttrType::Bool, AttrType::TextList].map(crate::store::schema::sql_type);
        for ty in declared.chain(attrs).chain(["jsonb"]) {
            let name = if ty == "timestamptz" { "timestamp with time zone" } else { ty };
            assert!(KNOWN_PG_TYPES.contains(&name), "{ty}");
        }
    }

    #[test]
    fn a_file_naming_an_unknown_type_is_refused_naming_it() {
        for evil in ["text); DROP TABLE chronos.archives; --", "inet", "Text", ""] {
            let cols = vec![Column { name: "x".into(), pg_type: evil.into(), kind: Kind::Text, nullable: true }];
            let e = from_arrow(&arrow_schema(&cols)).unwrap_err().to_string();
            assert!(e.contains(&format!("{evil:?}")) && e.contains("not a type Chronos archives"), "{e}");
        }
    }
}
