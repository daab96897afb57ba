//! What `chronos reprocess` prints: per table and day what changed (or, dry,
//! would change), the totals, what could not be recomputed and why, the
//! visits, and the views to rebuild.

use super::rules::Counts;
use super::steps::Place;
use super::Report;

/// One count line: `N events; M changed: bot flag …, agent …, place …`.
fn counts_line(c: &Counts, verb: &str) -> String {
    format!(
        "{} events; {} {verb}: bot flag {} ({} flagged, {} no longer), agent {}, place {}",
        c.events, c.changed, c.bot, c.flagged, c.cleared, c.agent, c.geo
    )
}

/// The lines of `report`; `dry` says "would change".
pub fn lines(report: &Report, dry: bool, geoip_set: bool) -> Vec<String> {
    let verb = if dry { "would change" } else { "changed" };
    let mut out = Vec::new();
    for s in &report.steps {
        let place = match s.place {
            Place::Postgres => "PostgreSQL",
            Place::Archive => "archive file",
            Place::Sessions => continue,
        };
        out.push(format!("events.{} {} ({place}): {}", s.table, s.day_str(), counts_line(&s.counts, verb)));
    }
    out.push(format!("total: {}", counts_line(&report.total, verb)));
    out.extend(not_recomputed(report, geoip_set));
    for f in &report.no_columns {
        out.push(format!("  {f}: archived before the enrichment columns existed; left as it is"));
    }
    if !dry {
        out.push(format!(
            "visits (chronos.sessions): {} updated from their events in PostgreSQL (visits whose events are only in the archive keep theirs)",
            report.visits
        ));
    }
    if !report.stale_deleted.is_empty() {
        out.push(format!("{} archive objects of a run cut short deleted", report.stale_deleted.len()));
    }
    out.extend(views_lines(&report.views, dry));
    out
}

fn not_recomputed(report: &Report, geoip_set: bool) -> Vec<String> {
    let mut out = vec!["not recomputed:".to_string()];
    let t = &report.total;
    if report.stages.bots || report.stages.agent {
        out.push(format!(
            "  {} events whose batch page holds no user_agent (the User-Agent header is not stored; server-side senders, curl, imports without one): bot flag and agent kept as stored",
            t.no_user_agent
        ));
        out.push(
            "  events sent without a User-Agent header (bot_reason no_user_agent) keep it; webdriver batches stay bots, their agent re-read".into(),
        );
    }
    if report.stages.geo {
        out.push(format!(
            "  {} events whose place cannot be told again: no stored address, or the GeoIP database splits the /24 (IPv6: /48) it was anonymised to; place kept as stored",
            t.no_place
        ));
    } else if !geoip_set {
        out.push("  place (country, region, city): enrich.geoip_db is not set, so the geo stage did not run".into());
    }
    out
}

fn views_lines(views: &[String], dry: bool) -> Vec<String> {
    if views.is_empty() {
        return vec!["views: none reads a changed column".into()];
    }
    if dry {
        return vec![format!("views that read a would-be changed column (the run rebuilds them): {}", views.join(", "))];
    }
    vec![format!("views rebuilt from the raw events (they read a changed column): {}", views.join(", "))]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::reprocess::rules::Stages;
    use crate::lifecycle::reprocess::steps::Step;

    #[test]
    fn the_lines_name_each_day_the_totals_what_was_not_recomputed_and_the_views() {
        let mut step = Step::new(Place::Archive, "clicks", 20_000);
        step.counts = Counts { events: 10, changed: 4, bot: 4, flagged: 4, no_user_agent: 2, ..Counts::default() };
        let report =
            Report { stages: Stages::ALL, total: step.counts, steps: vec![step], views: vec!["clicks_by_element".into()], ..Report::default() };
        let text = lines(&report, true, true).join("\n");
        assert!(text.contains("events.clicks 2024-10-04 (archive file): 10 events; 4 would change: bot flag 4 (4 flagged, 0 no longer)"), "{text}");
        assert!(text.contains("  2 events whose batch page holds no user_agent"), "{text}");
        assert!(text.contains("views that read a would-be changed column (the run rebuilds them): clicks_by_element"), "{text}");
        assert!(!text.contains("visits") && !text.contains("rebuilt"), "a dry run changes none: {text}");
        let real = lines(&report, false, true).join("\n");
        assert!(
            real.contains("4 changed") && real.contains("views rebuilt from the raw events (they read a changed column): clicks_by_element"),
            "{real}"
        );
        assert!(real.contains("visits (chronos.sessions): 0 updated"), "{real}");
    }
}
