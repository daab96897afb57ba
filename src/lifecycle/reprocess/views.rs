//! Which continuous views a reprocess run changed the inputs of: those that
//! read a column a stage changed (`is_bot`, `bot_reason` for bots; `browser`,
//! `os`, `device_type` for agent) in an event table that had changes. Views
//! cannot read the place columns, so geo changes none.

use std::collections::HashMap;

use anyhow::Result;
use tokio_postgres::GenericClient;

use super::rules::Counts;
use crate::catalog::EventCatalog;
use crate::views::expr::{Column, Expr};
use crate::views::parse::{parse_views, ViewDef};

const BOT_COLUMNS: [Column; 2] = [Column::IsBot, Column::BotReason];
const AGENT_COLUMNS: [Column; 3] = [Column::Browser, Column::Os, Column::DeviceType];

/// Whether `e` reads any of `cols`.
fn reads(e: &Expr, cols: &[Column]) -> bool {
    match e {
        Expr::Col(c, _) => cols.contains(c),
        Expr::Meta(_) | Expr::Lit(_) => false,
        Expr::Trunc(_, e) | Expr::Bucket(_, e) | Expr::Not(e) | Expr::IsNull(e, _) => reads(e, cols),
        Expr::Arith(_, a, b, _) | Expr::Cmp(_, a, b) | Expr::And(a, b) | Expr::Or(a, b) => reads(a, cols) || reads(b, cols),
        Expr::InList(e, l, _) => reads(e, cols) || l.iter().any(|x| reads(x, cols)),
    }
}

/// Whether any part of `view` (filter, keys, aggregates) reads any of `cols`.
pub fn view_reads(view: &ViewDef, cols: &[Column]) -> bool {
    let keys = view.keys.iter().map(|(_, e)| e);
    let aggs = view.aggs.iter().filter_map(|(_, a)| a.arg());
    view.filter.iter().chain(keys).chain(aggs).any(|e| reads(e, cols))
}

/// Whether `changed` (per event table) touched what `view` reads.
pub fn affected(view: &ViewDef, changed: &HashMap<String, Counts>) -> bool {
    let mut c = Counts::default();
    for (table, counts) in changed {
        if view.source_name == "events" || *table == view.source_name {
            c.add(counts);
        }
    }
    (c.bot > 0 && view_reads(view, &BOT_COLUMNS)) || (c.agent > 0 && view_reads(view, &AGENT_COLUMNS))
}

/// The maintained views whose inputs `changed` touched, by name.
pub async fn to_rebuild(client: &impl GenericClient, catalog: &EventCatalog, changed: &HashMap<String, Counts>) -> Result<Vec<String>> {
    let rows = client.query("SELECT name, definition FROM chronos.views WHERE broken IS NULL ORDER BY name", &[]).await?;
    let mut names = Vec::new();
    for r in rows {
        let (name, definition): (String, String) = (r.get(0), r.get(1));
        // A definition that no longer parses is not maintained, so not rebuilt either.
        let Ok(defs) = parse_views(&definition, catalog) else { continue };
        if defs.iter().any(|d| affected(d, changed)) {
            names.push(name);
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(sql: &str) -> ViewDef {
        let config: crate::config::Config = toml::from_str("").unwrap();
        let catalog = EventCatalog::from_config(&config.events, config.limits.max_string_bytes);
        parse_views(sql, &catalog).unwrap().remove(0)
    }

    #[test]
    fn a_view_is_affected_when_it_reads_a_changed_column_of_a_changed_table() {
        let by_element = view("CREATE VIEW v AS SELECT element, count(*) FROM clicks WHERE NOT is_bot GROUP BY element");
        let by_browser = view("CREATE VIEW b AS SELECT browser, count(*) FROM pageviews GROUP BY browser");
        let all = view("CREATE VIEW a AS SELECT type, count(*) FROM events WHERE NOT is_bot GROUP BY type");
        let bots = HashMap::from([("clicks".to_string(), Counts { bot: 3, ..Counts::default() })]);
        assert!(affected(&by_element, &bots) && affected(&all, &bots));
        assert!(!affected(&by_browser, &bots), "another table, another column");
        let agents = HashMap::from([("pageviews".to_string(), Counts { agent: 1, geo: 5, ..Counts::default() })]);
        assert!(affected(&by_browser, &agents) && !affected(&all, &agents) && !affected(&by_element, &agents));
        let geo = HashMap::from([("clicks".to_string(), Counts { geo: 5, changed: 5, ..Counts::default() })]);
        assert!(!affected(&by_element, &geo), "no view reads the place");
    }
}
