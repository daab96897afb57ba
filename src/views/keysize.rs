//! Whether a view's group keys always fit in one B-tree index row.
//!
//! A view's state table has a unique index on its keys, and PostgreSQL
//! refuses an index row over 2,704 bytes (54000, "index row size exceeds
//! btree version 4 maximum"). Text the client chose is incompressible if it
//! wants to be, so a view whose keys *could* be that long is one hostile
//! event away from being broken: it is refused when it is added, naming the
//! view and what each key can take.

use super::expr::{Column, Expr, SqlType};
use super::parse::{Source, ViewDef, ViewError};
use crate::catalog::{AttrType, EventCatalog};

/// The largest B-tree index row PostgreSQL stores (btree version 4, 8 KiB pages).
pub const INDEX_ROW_MAX: usize = 2704;

/// What an index row holds beyond its key values: the tuple header (8), the
/// loader's shard (`integer`, 4), and for each key a varlena header and
/// alignment (at most 8).
fn overhead(keys: usize) -> usize {
    8 + 4 + 8 * keys
}

/// Longest text the enrichment writes (bot reason, browser, OS, device type).
const ENRICHED_BYTES: usize = 64;
/// Longest `key_id` (the write-key id rules) and client address text.
const KEY_ID_BYTES: usize = 64;
const CLIENT_IP_BYTES: usize = 45;

/// The most bytes `e` can take as a key of a view reading `source`.
pub fn max_bytes(e: &Expr, source: &Source, catalog: &EventCatalog) -> usize {
    match e {
        Expr::Col(c, ty) => match c {
            Column::SessionId | Column::UserId => catalog.id_bytes(),
            Column::KeyId => KEY_ID_BYTES,
            Column::ClientIp => CLIENT_IP_BYTES,
            Column::BotReason | Column::Browser | Column::Os | Column::DeviceType => ENRICHED_BYTES,
            Column::Type => catalog.types().iter().map(|t| t.name.len()).max().unwrap_or(0),
            Column::Attr(i) => match source {
                Source::Type(t) => catalog.types()[*t].attributes.get(*i).map_or(0, |a| match a.ty {
                    AttrType::Text => a.max_len,
                    AttrType::TextList => a.max_items * (a.max_len + 4),
                    _ => fixed(*ty),
                }),
                Source::All => fixed(*ty),
            },
            _ => fixed(*ty),
        },
        Expr::Meta(_) => catalog.page_value_bytes(),
        Expr::Lit(super::expr::Lit::Text(s)) => s.len(),
        other => fixed(other.ty()),
    }
}

fn fixed(ty: SqlType) -> usize {
    match ty {
        SqlType::Bool => 1,
        // Unbounded text never reaches here (columns and page values above).
        SqlType::Text => 0,
        SqlType::Int | SqlType::Float | SqlType::Time => 8,
    }
}

/// Refuses a view whose keys could make an index row PostgreSQL refuses.
pub fn check(view: &ViewDef, catalog: &EventCatalog) -> Result<(), ViewError> {
    let sizes: Vec<(&str, usize)> = view.keys.iter().map(|(n, e)| (n.as_str(), max_bytes(e, &view.source, catalog))).collect();
    let total = sizes.iter().map(|(_, b)| b).sum::<usize>() + overhead(sizes.len());
    if total <= INDEX_ROW_MAX {
        return Ok(());
    }
    let each: Vec<String> = sizes.iter().filter(|(_, b)| *b > 8).map(|(n, b)| format!("`{n}` up to {b}")).collect();
    Err(ViewError {
        view: Some(view.name.clone()),
        at: None,
        message: format!(
            "its group keys can take {total} bytes in one index row ({}), over the {INDEX_ROW_MAX} PostgreSQL stores: \
             one event with keys that long would stop the view. Group by fewer or shorter keys, or lower the attributes' max_len \
             (limits.max_string_bytes for page values)",
            each.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::views::parse_views;

    fn catalog(extra: &str) -> EventCatalog {
        let c = Config::from_toml(extra).unwrap();
        EventCatalog::from_config(&c.events, c.limits.max_string_bytes)
    }

    fn check_sql(sql: &str, catalog: &EventCatalog) -> Result<(), ViewError> {
        check(&parse_views(sql, catalog).unwrap().remove(0), catalog)
    }

    #[test]
    fn the_default_views_fit() {
        let catalog = catalog("");
        for v in parse_views(crate::views::DEFAULTS, &catalog).unwrap() {
            check(&v, &catalog).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn keys_that_could_pass_the_index_row_limit_are_refused_naming_them() {
        let catalog = catalog("");
        // action (2048) + page url (2048): one long event would stop the view.
        let e = check_sql(
            "CREATE CONTINUOUS VIEW wide AS SELECT action, metadata->>'url' AS url, count(*) FROM form_submissions GROUP BY action, url",
            &catalog,
        )
        .unwrap_err();
        assert_eq!(e.view.as_deref(), Some("wide"));
        assert!(e.message.contains("`action` up to 2048, `url` up to 2048"), "{e}");
        // One of them, with an hour, fits (2048 + 8 + overhead).
        check_sql(
            "CREATE CONTINUOUS VIEW narrow AS SELECT action, date_trunc('hour', time) AS hour, count(*) FROM form_submissions GROUP BY action, hour",
            &catalog,
        )
        .unwrap();
    }

    #[test]
    fn the_bound_follows_the_catalog_s_max_len() {
        let wide = catalog("[limits]\nmax_string_bytes = 4096\n");
        assert!(check_sql("CREATE CONTINUOUS VIEW t AS SELECT metadata->>'title' AS title, count(*) FROM pageviews GROUP BY title", &wide).is_err());
        let custom = catalog("[events.signup]\nattributes = [{ name = \"plan\", type = \"text\", max_len = 2600 }]\n");
        check_sql("CREATE CONTINUOUS VIEW p AS SELECT plan, count(*) FROM signup GROUP BY plan", &custom).unwrap();
        let over = catalog("[events.signup]\nattributes = [{ name = \"plan\", type = \"text\", max_len = 2700 }]\n");
        assert!(check_sql("CREATE CONTINUOUS VIEW p AS SELECT plan, count(*) FROM signup GROUP BY plan", &over).is_err());
    }
}
