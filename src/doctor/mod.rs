//! `chronos doctor`: gathers what the cluster, PostgreSQL, chronosd's admin
//! listener and the state directory's disk say (`gather`), judges it
//! without I/O (`judge`), and prints each fault with the command or setting
//! that fixes it. Exit status 0 healthy, 1 warnings, 2 faults.

pub mod gather;
pub mod judge;

use std::path::Path;

use serde::Serialize;

use crate::config::Config;

/// `chronos doctor`'s options.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Print the findings as one JSON object (status, exit, findings) for scripts.
    #[arg(long)]
    pub json: bool,
    /// Disk use (%) of the state directory's filesystem from which doctor warns.
    #[arg(long, default_value_t = 90.0, value_name = "PERCENT")]
    pub disk_warn_percent: f64,
    /// Disk use (%) from which it is a fault.
    #[arg(long, default_value_t = 95.0, value_name = "PERCENT")]
    pub disk_fault_percent: f64,
}

/// Gathers, judges and prints; returns the exit status.
pub fn run(config: &Config, state_dir: &Path, options: &Options) -> i32 {
    let limits = judge::Limits { disk_warn_percent: options.disk_warn_percent, disk_fault_percent: options.disk_fault_percent, ..Default::default() };
    let facts = crate::rt::block_on(gather::gather(config, state_dir, limits));
    let findings = judge::diagnose(&facts);
    if options.json {
        println!("{}", render_json(&findings));
    } else {
        print!("{}", render_text(&findings));
    }
    exit_code(&findings)
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Warning,
    Fault,
}

impl Severity {
    fn label(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Warning => "warning",
            Severity::Fault => "fault",
        }
    }
}

/// One diagnosis: what was checked, what is wrong (or fine), and the fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// What was checked: `kafka.brokers`, `topic chronos.events`, `postgres`, …
    pub check: String,
    pub what: String,
    /// The command or setting that fixes it (none for `ok`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(check: impl Into<String>, what: impl Into<String>) -> Self {
        Finding { severity: Severity::Ok, check: check.into(), what: what.into(), fix: None }
    }

    pub fn warning(check: impl Into<String>, what: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding { severity: Severity::Warning, check: check.into(), what: what.into(), fix: Some(fix.into()) }
    }

    pub fn fault(check: impl Into<String>, what: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding { severity: Severity::Fault, check: check.into(), what: what.into(), fix: Some(fix.into()) }
    }
}

/// 0 when every finding is ok, 1 with warnings, 2 with a fault.
pub fn exit_code(findings: &[Finding]) -> i32 {
    match findings.iter().map(|f| f.severity).max() {
        Some(Severity::Fault) => 2,
        Some(Severity::Warning) => 1,
        _ => 0,
    }
}

/// The findings as text: one line each (`fault    check  what`), the fix
/// indented below, then a summary line.
pub fn render_text(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        out.push_str(&format!("{:<8} {:<28} {}\n", f.severity.label(), f.check, f.what));
        if let Some(fix) = &f.fix {
            out.push_str(&format!("{:<8} {:<28} fix: {fix}\n", "", ""));
        }
    }
    let count = |s| findings.iter().filter(|f| f.severity == s).count();
    out.push_str(&match (count(Severity::Fault), count(Severity::Warning)) {
        (0, 0) => "healthy: nothing to fix\n".to_string(),
        (faults, warnings) => format!("{faults} fault(s), {warnings} warning(s)\n"),
    });
    out
}

/// The findings as JSON for scripts: `{"status": "fault"|"warning"|"ok", "exit": n, "findings": [...]}`.
pub fn render_json(findings: &[Finding]) -> String {
    let status = findings.iter().map(|f| f.severity).max().unwrap_or(Severity::Ok);
    serde_json::json!({ "status": status, "exit": exit_code(findings), "findings": findings }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_finding_sets_the_exit_status() {
        let ok = Finding::ok("postgres", "reachable");
        let warn = Finding::warning("disk", "91% used", "free space");
        let fault = Finding::fault("kafka", "no broker", "chronos start broker");
        assert_eq!(exit_code(&[]), 0);
        assert_eq!(exit_code(std::slice::from_ref(&ok)), 0);
        assert_eq!(exit_code(&[ok.clone(), warn.clone()]), 1);
        assert_eq!(exit_code(&[warn.clone(), fault.clone(), ok.clone()]), 2);
        let text = render_text(&[ok, warn, fault.clone()]);
        assert!(text.contains("fault    kafka") && text.contains("fix: chronos start broker"), "{text}");
        assert!(text.ends_with("1 fault(s), 1 warning(s)\n"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&render_json(&[fault])).unwrap();
        assert_eq!(json["status"], "fault");
        assert_eq!(json["exit"], 2);
        assert_eq!(json["findings"][0]["fix"], "chronos start broker");
        assert_eq!(render_text(&[]), "healthy: nothing to fix\n");
    }
}
