//! chronos: the command-line tool (start/stop/status/log of the local stack,
//! topics, schema, continuous views, dead letters).

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use chronos::stack::{Service, Stack};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Chronos: self-hosted event capture (tracker.js → chronosd → Kafka → PostgreSQL).
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Config file; default ./chronos.toml, else one generated in .chronos/.
    #[arg(long, global = true, env = "CHRONOS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the local stack (PostgreSQL, broker, chronosd) or one service.
    Start { service: Option<Service> },
    /// Stop the local stack or one service (chronosd drains first).
    Stop { service: Option<Service> },
    /// Show each service (up or down, address, health), the loaders' consumer lag
    /// and the events stored in the last minute.
    Status,
    /// Print a service's log.
    Log {
        service: Service,
        /// Keep printing new lines as they are written.
        #[arg(short, long)]
        follow: bool,
        /// Print only the last N lines first.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
    },
    /// Create the events and dead-letter topics (idempotent; any Kafka-protocol cluster).
    InstallKafka,
    /// List or replay dead letters (events that could not be stored, with why).
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterCmd,
    },
    /// Create or update the PostgreSQL schema from the catalog (idempotent; adds new
    /// event tables and attribute columns online, never drops anything).
    InstallPipeline {
        /// Print the schema of the configured catalog (without daily partitions) and exit.
        #[arg(long)]
        print_sql: bool,
    },
    /// Continuous views: list, add from a SQL file, drop (no restart needed).
    Views {
        #[command(subcommand)]
        action: ViewsCmd,
    },
    /// Browser tracker: `build` writes chronos.js configured from the config file.
    Tracker {
        #[command(subcommand)]
        action: TrackerCmd,
    },
}

#[derive(Subcommand)]
enum TrackerCmd {
    /// Write the script-tag bundle with `Chronos.init(...)` from [tracker], [[keys]] and [events].
    Build {
        /// Output file; default stdout.
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ViewsCmd {
    /// Show each view: source, rows, creation time (and its SQL with --sql).
    List {
        #[arg(long)]
        sql: bool,
    },
    /// Add the views defined in FILE (`CREATE [CONTINUOUS] VIEW …;`), all or none.
    Add {
        file: PathBuf,
        /// Fill the new views from the events already in the raw tables.
        #[arg(long)]
        backfill: bool,
        /// Only check the definitions against the catalog.
        #[arg(long)]
        check: bool,
    },
    /// Drop a view and its state table.
    Drop { name: String },
}

#[derive(Subcommand)]
enum DeadLetterCmd {
    /// Show the newest dead letters not yet replayed.
    List {
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: i64,
        /// Include replayed ones.
        #[arg(long)]
        all: bool,
    },
    /// Re-submit dead letters that the current catalog accepts (all, or the given ids).
    Replay { ids: Vec<i64> },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("chronos: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let stack = Stack::open(cli.config.as_deref())?;
    match cli.command {
        Cmd::Start { service } => {
            stack.start(service)?;
            if service.is_none() || service == Some(Service::Chronosd) {
                print_where_to_send(&stack);
            }
        }
        Cmd::Stop { service } => stack.stop(service)?,
        Cmd::Status => {
            let mut all_up = true;
            for s in stack.status() {
                all_up &= s.up;
                let pid = s.pid.map(|p| format!("pid {p}")).unwrap_or_default();
                println!(
                    "{:<9} {:<5} {:<28} {:<10} {}",
                    s.service.name(),
                    if s.up { "up" } else { "down" },
                    s.address,
                    pid,
                    s.detail
                );
            }
            print_pipeline(&stack.config);
            if !all_up {
                std::process::exit(3);
            }
        }
        Cmd::Log { service, follow, lines } => print_log(&stack.log_file(service), follow, lines)?,
        Cmd::InstallKafka => {
            let k = &stack.config.kafka;
            let created = chronos::stack::postgres::block_on(chronos::produce::admin::ensure_topics(k, Duration::from_secs(10)))
                .map_err(|e| anyhow::anyhow!("{e}; is the broker running? (`chronos start broker`)"))?;
            for t in [&k.topic, &k.dead_letter_topic] {
                let state = if created.contains(t) { "created" } else { "exists" };
                println!("{t}: {state} ({} partitions requested, replication {})", k.partitions, k.replication);
            }
        }
        Cmd::DeadLetters { action } => {
            let c = &stack.config;
            chronos::stack::postgres::block_on(async {
                let client = chronos::store::connect(&c.postgres.url).await?;
                match action {
                    DeadLetterCmd::List { limit, all } => {
                        for d in chronos::load::replay::list(&client, limit, all).await? {
                            let replayed = if d.replayed { " (replayed)" } else { "" };
                            println!("{:>6}  {}  {:<7}  {}{replayed}", d.id, d.at, d.stage, d.reason);
                            if let Some(e) = d.event {
                                println!("        {e}");
                            }
                        }
                    }
                    DeadLetterCmd::Replay { ids } => {
                        let report = chronos::load::replay::replay(c, &client, &ids).await?;
                        println!("replayed {} dead letter(s)", report.replayed.len());
                        for (id, reason) in &report.still_invalid {
                            println!("{id:>6}  still refused: {reason}");
                        }
                    }
                }
                anyhow::Ok(())
            })?;
        }
        Cmd::InstallPipeline { print_sql } => {
            let c = &stack.config;
            let catalog = chronos::catalog::EventCatalog::from_config(&c.events, c.limits.max_string_bytes);
            if print_sql {
                print!("{}", chronos::store::schema::static_sql(&catalog));
                return Ok(());
            }
            chronos::stack::postgres::block_on(async {
                let mut client = chronos::store::connect(&c.postgres.url).await?;
                chronos::store::install(&mut client, &catalog, &c.load).await
            })?;
            println!(
                "schema installed at {}: {} event tables in schema events, internals in schema chronos",
                chronos::store::redact(&c.postgres.url),
                catalog.types().len()
            );
        }
        Cmd::Views { action } => views(&stack.config, action)?,
        Cmd::Tracker { action: TrackerCmd::Build { out } } => chronos::tracker::write_bundle(&stack.config, out.as_deref())?,
    }
    Ok(())
}

fn views(c: &chronos::config::Config, action: ViewsCmd) -> Result<()> {
    let catalog = chronos::catalog::EventCatalog::from_config(&c.events, c.limits.max_string_bytes);
    let defs = match &action {
        ViewsCmd::Add { file, .. } => {
            let sql = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            chronos::views::parse_views(&sql, &catalog).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
        }
        _ => Vec::new(),
    };
    if let ViewsCmd::Add { check: true, .. } = action {
        for d in &defs {
            println!("{}: ok ({} keys, {} aggregates, from {})", d.name, d.keys.len(), d.aggs.len(), d.source_name);
        }
        return Ok(());
    }
    chronos::stack::postgres::block_on(async {
        let mut client = chronos::store::connect(&c.postgres.url).await?;
        match action {
            ViewsCmd::List { sql } => {
                let views = chronos::views::list(&client).await?;
                if views.is_empty() {
                    println!("no continuous views (chronos views add FILE adds some)");
                }
                for v in views {
                    println!("{:<28} from {:<18} {:>9} rows  created {}", v.name, v.source, v.rows, v.created_at);
                    if sql {
                        println!("  {}\n", v.definition);
                    }
                }
            }
            ViewsCmd::Add { backfill, .. } => {
                chronos::views::add(&mut client, &defs, &catalog, backfill).await?;
                for d in &defs {
                    let filled = if backfill { ", filled from the raw tables" } else { ", counting from now" };
                    println!("added view {}{filled}: SELECT * FROM views.{};", d.name, d.name);
                }
            }
            ViewsCmd::Drop { name } => {
                chronos::views::drop(&mut client, &name).await?;
                println!("dropped view {name}");
            }
        }
        anyhow::Ok(())
    })
}

/// The data-flow lines of `chronos status`; a part that cannot be read says why.
fn print_pipeline(c: &chronos::config::Config) {
    use chronos::stack::pipeline;
    let (lag, recent) = chronos::stack::postgres::block_on(async {
        (pipeline::consumer_lag(c, Duration::from_secs(5)).await, pipeline::events_last_minute(c).await)
    });
    match lag {
        Ok(topics) => {
            for t in topics {
                println!("{:<9} {:<5} {:<28} {} records not yet loaded ({} partitions)", "lag", "", t.topic, t.lag, t.partitions.len());
            }
        }
        Err(e) => println!("{:<9} {:<5} {:<28} unknown: {e:#}", "lag", "", c.load.group_id),
    }
    match recent {
        Ok(n) => println!("{:<9} {:<5} {:<28} {n} events stored in the last minute ({:.1}/s)", "ingest", "", "", n as f64 / 60.0),
        Err(e) => println!("{:<9} {:<5} {:<28} unknown: {e:#}", "ingest", "", ""),
    }
}

fn print_where_to_send(stack: &Stack) {
    let addr = stack.config.http.listen;
    println!();
    println!("Chronos is receiving events at http://{addr}/v1/batch");
    if let Some(k) = stack.first_key() {
        println!("  write key: {} (id {}), origins: {}", k.key, k.id, k.origins.join(", "));
        println!("  try it:");
        println!(
            "    curl -s http://{addr}/v1/batch -H 'Content-Type: text/plain' -d '{{\"v\":1,\"key\":\"{}\",\"batch\":\"'$(cat /proc/sys/kernel/random/uuid)'\",\"sent_at\":'$(date +%s%3N)',\"session\":\"demo\",\"page\":{{\"url\":\"http://localhost/\"}},\"events\":[[\"clicks\",'$(date +%s%3N)',\"BUTTON\",1,10,20,\"main>button\"]]}}'",
            k.key
        );
    }
    println!("  browser: chronos tracker build --out chronos.js, then <script src=\"/chronos.js\" defer></script> in your pages");
    println!("  status: chronos status · logs: chronos log chronosd · stop: chronos stop");
    println!("  config: {}", stack.config_path.display());
}

fn print_log(path: &std::path::Path, follow: bool, lines: usize) -> Result<()> {
    let mut f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}; has the service been started?", path.display()))?;
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    let all: Vec<&str> = text.lines().collect();
    for l in &all[all.len().saturating_sub(lines)..] {
        println!("{l}");
    }
    if follow {
        let mut pos = f.stream_position()?;
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let len = std::fs::metadata(path)?.len();
            if len < pos {
                pos = 0; // truncated
            }
            if len > pos {
                f.seek(SeekFrom::Start(pos))?;
                let mut chunk = String::new();
                f.read_to_string(&mut chunk)?;
                print!("{chunk}");
                pos = len;
            }
        }
    }
    Ok(())
}
