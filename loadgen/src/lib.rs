//! # loadgen — open-loop load for chronosd
//!
//! # Layout
//! - `payload`: wire payload v1 batches as the tracker sends them; templates
//!   pre-encoded once and stamped per request (batch id, session, times).
//! - `schedule`: the open-loop schedule; latency counts from the intended send time.
//! - `run`: keep-alive HTTP/1.1 connections (hyper) driving the schedule,
//!   histograms, status counts, the live progress line.
//! - `verify`: `--verify`, every accepted event in PostgreSQL exactly once.
//! - `report`: the final report, text or JSON.

pub mod payload;
pub mod report;
pub mod run;
pub mod schedule;
pub mod verify;

use std::time::Duration;

use clap::Parser;

/// Command line of `loadgen`.
#[derive(Debug, Clone, Parser)]
#[command(name = "loadgen", about = "Open-loop load generator for chronosd (POST /v1/batch, wire payload v1)")]
pub struct Args {
    /// Offered load in events per second (requests/s = rate / batch-size), sent on schedule whatever the server does.
    #[arg(long)]
    pub rate: f64,
    /// Seconds to send for.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Events per batch (per request).
    #[arg(long, default_value_t = 50)]
    pub batch_size: u32,
    /// Keep-alive connections; each sends its share of the schedule, one request at a time.
    #[arg(long, default_value_t = 64)]
    pub connections: u32,
    /// chronosd base URL, `http://host:port` (path /v1/batch) or a full URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Write key sent in every batch.
    #[arg(long)]
    pub key: String,
    /// Page origin (Origin header, host of the page URLs); must be allowed for the key.
    #[arg(long, default_value = "https://shop.example.com")]
    pub origin: String,
    /// Event-type mix, `type=weight,…` (built-in types).
    #[arg(long, default_value = payload::DEFAULT_MIX)]
    pub mix: String,
    /// Simulated sessions (session ids and client IPs in X-Forwarded-For, which chronosd
    /// believes only from a trusted proxy: list 127.0.0.1 in http.trusted_proxies).
    #[arg(long, default_value_t = 10_000)]
    pub sessions: u64,
    /// Distinct pre-generated batches (pages and event sequences).
    #[arg(long, default_value_t = 64)]
    pub templates: usize,
    /// Seconds before a request without a response counts as failed.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Runtime worker threads (1 = everything on one thread, the leanest).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// After sending, wait until every accepted event is in this PostgreSQL
    /// (events.<type> tables) and report missing and duplicated ones; exit 1 unless both are 0.
    #[arg(long)]
    pub verify: Option<String>,
    /// Longest wait for --verify, seconds.
    #[arg(long, default_value_t = 120.0)]
    pub verify_timeout: f64,
    /// Print the final report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl Args {
    pub fn options(&self) -> anyhow::Result<run::Options> {
        anyhow::ensure!(self.duration > 0.0, "--duration must be above 0");
        Ok(run::Options {
            target: self.target.clone(),
            rate: self.rate,
            duration: Duration::from_secs_f64(self.duration),
            batch_size: self.batch_size,
            connections: self.connections,
            key: self.key.clone(),
            origin: self.origin.trim_end_matches('/').to_string(),
            mix: payload::Mix::parse(&self.mix).map_err(|e| anyhow::anyhow!("--mix: {e}"))?,
            sessions: self.sessions,
            templates: self.templates,
            timeout: Duration::from_secs_f64(self.timeout),
            progress: !self.quiet,
        })
    }
}

/// The whole command: run, then verify when asked (the result is in
/// `report.verify`). What the tests call.
pub async fn execute(args: &Args) -> anyhow::Result<run::Outcome> {
    let (_never, stop) = tokio::sync::watch::channel(false);
    execute_until(args, stop).await
}

/// [`execute`], stopping early when `stop` turns true (what `main` does on
/// SIGINT or SIGTERM): the report then covers what was sent, unverified.
pub async fn execute_until(args: &Args, stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<run::Outcome> {
    let opts = args.options()?;
    let mut outcome = run::run_until(&opts, stop).await?;
    if outcome.report.interrupted {
        return Ok(outcome);
    }
    if let Some(url) = &args.verify {
        let types = opts.mix.types();
        let v = verify::verify(url, &types, &outcome.batches, Duration::from_secs_f64(args.verify_timeout), Duration::from_millis(1000)).await?;
        outcome.report.verify = Some(v);
    }
    Ok(outcome)
}
