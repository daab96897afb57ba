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
#[command(version, about, long_about = None, disable_help_subcommand = true)]
struct Cli {
    /// Config file; default ./chronos.toml, else one generated in .chronos/.
    #[arg(long, global = true, env = "CHRONOS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the local stack (PostgreSQL, broker, chronosd) or one service, each
    /// under a supervisor that restarts it when it dies (1, 2, 4 … s apart; five
    /// failures within 5 min leave it down, as `chronos status` then shows).
    Start { service: Option<Service> },
    /// Stop the local stack or one service (its supervisor first; chronosd drains first).
    Stop { service: Option<Service> },
    /// Show each service (up or down, address, health, restarts by its
    /// supervisor), the loaders' consumer lag and the events stored in the last minute.
    Status,
    /// Run one service of the local stack and restart it when it dies
    /// (`chronos start` runs one per service; `chronos stop` stops it first).
    #[command(hide = true)]
    Supervise { service: Service },
    /// Diagnose the common faults (brokers, replicas, retention against lag, stalled
    /// loaders, dead letters, archive, disk, PostgreSQL) and print each fix; exit 0 healthy, 1 warnings, 2 faults.
    Doctor(chronos::doctor::Options),
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
    /// Create the events and dead-letter topics with kafka.partitions, kafka.replication
    /// and kafka.min_insync_replicas (idempotent; any Kafka-protocol cluster).
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
    /// Retention and cold storage: archive days past retention.raw_days to
    /// Parquet and drop them, list and verify the archive, restore days.
    Archive {
        #[command(subcommand)]
        action: ArchiveCmd,
    },
    /// Export raw events of a range of days (from PostgreSQL, and from the
    /// archive for days that left it) as Parquet, CSV or JSON lines.
    Export {
        /// First day, YYYY-MM-DD (UTC).
        #[arg(long)]
        from: String,
        /// Last day, YYYY-MM-DD (UTC); default: --from.
        #[arg(long)]
        to: Option<String>,
        /// Event types, comma-separated (default: every enabled type).
        #[arg(long, value_delimiter = ',')]
        types: Vec<String>,
        #[arg(long, value_enum, default_value = "parquet")]
        format: chronos::lifecycle::export::Format,
        /// A directory, or - for standard output (CSV of one type, or JSON lines).
        #[arg(long)]
        out: String,
    },
    /// Import historical events from a file of JSON lines: Kafka records v1 (a
    /// topic dump) or one event per line (as `export --format jsonl` writes).
    /// Checked like a batch (invalid events are dead-lettered), sent through
    /// Kafka, stored once: running the same file again stores nothing twice.
    Import {
        /// The file (gzip-compressed too), or - for standard input.
        file: String,
        /// Key id recorded with event lines (records keep their own).
        #[arg(long, default_value = "import")]
        key_id: String,
        /// Check and count only; nothing is sent.
        #[arg(long)]
        dry_run: bool,
        /// Then wait up to SECS for the loaders to store every batch, and say how long it took.
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
    },
    /// Erase one person's events: raw rows, dead letters, rows of views keyed by
    /// session, and archive files (rewritten); prints what cannot be erased.
    #[command(group(clap::ArgGroup::new("subject").required(true).args(["session", "user"])))]
    Erase {
        /// The session id whose events are erased.
        #[arg(long)]
        session: Option<String>,
        /// A user id (`chronos.identify`): every session the site named it in is erased, whole.
        #[arg(long)]
        user: Option<String>,
        /// Who asks, for the audit row (default: $SUDO_USER or $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Re-run enrichment (bot flag, user agent, GeoIP) over stored events of a range of
    /// UTC days with today's rules and databases: PostgreSQL in place, archived days'
    /// files rewritten (verified before the old ones go), visits followed, then the views
    /// that read a changed column rebuilt; prints what changed and what could not be recomputed.
    Reprocess {
        /// First day, YYYY-MM-DD (UTC).
        #[arg(long)]
        from: String,
        /// Last day, YYYY-MM-DD (UTC), included.
        #[arg(long)]
        to: String,
        /// Stages, comma-separated: bots, agent, geo.
        #[arg(long, default_value = "bots,agent,geo")]
        only: String,
        /// Count what would change, per table and day; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Events per PostgreSQL transaction, about.
        #[arg(long, default_value_t = chronos::lifecycle::reprocess::postgres::ROWS_PER_TX)]
        batch_rows: i64,
        /// Who asks, for the audit row (default: $SUDO_USER or $USER).
        #[arg(long)]
        by: Option<String>,
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
    /// Write keys stored in PostgreSQL: create, list, revoke, while chronosd runs
    /// (with `http.keys_from_postgres = true`); keys of the config file are listed too.
    Keys {
        #[command(subcommand)]
        action: KeysCmd,
    },
    /// The manual: every command, its options, files, environment, exit status
    /// (`chronos help views add` for one command).
    Help {
        /// A command, e.g. `status` or `views add`.
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Store a new key (it works within `http.keys_refresh_secs`); prints the key.
    Create {
        /// Public name of the key, recorded with every batch.
        id: String,
        /// An allowed page origin (`example.com`, `*.example.com`, `https://example.com:8443`); repeat for more.
        #[arg(long = "origin")]
        origins: Vec<String>,
        /// Accept requests without an `Origin` header (server-side senders).
        #[arg(long)]
        allow_no_origin: bool,
        /// `server`: for back ends and `POST /v1/import`, refused from pages; takes no --origin.
        #[arg(long, value_enum, default_value = "browser")]
        kind: chronos::config::KeyKind,
        /// Use this secret instead of a generated one (16-256 printable ASCII characters).
        #[arg(long)]
        key: Option<String>,
    },
    /// Show every key: the config file's and the stored ones, revoked included.
    List,
    /// Revoke a stored key (refused within `http.keys_refresh_secs`).
    Revoke { id: String },
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
enum ArchiveCmd {
    /// Archive every day older than retention.raw_days (write, verify, record),
    /// then drop it from PostgreSQL; what chronosd does on its schedule.
    Run,
    /// Show each archived day: table, day, rows, bytes, state, file.
    List,
    /// Re-read every archived file against its manifest and record
    /// (checksum, size, rows decoded); fails when one differs.
    Verify,
    /// Load archived days of one table back into PostgreSQL, each row once;
    /// they stay for retention.restore_keep_days.
    Restore {
        /// The event table (e.g. clicks).
        #[arg(long)]
        table: String,
        /// First day, YYYY-MM-DD (UTC).
        #[arg(long)]
        from: String,
        /// Last day, YYYY-MM-DD (UTC); default: --from.
        #[arg(long)]
        to: Option<String>,
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
        /// Fill the new views from the events already stored (PostgreSQL and the archive).
        #[arg(long)]
        backfill: bool,
        /// Only check the definitions against the catalog.
        #[arg(long)]
        check: bool,
    },
    /// Drop a view and its state table.
    Drop { name: String },
    /// Recompute a view from the raw events (PostgreSQL and the archive),
    /// online; the old state serves until the new one replaces it. Repairs a broken view.
    Rebuild {
        /// One or more views, rebuilt in one pass and replaced at one fence.
        #[arg(required = true)]
        names: Vec<String>,
        /// First day to recompute, YYYY-MM-DD (UTC); needs a time bucket of a day or less among the view's keys.
        #[arg(long)]
        from: Option<String>,
        /// Last day to recompute, YYYY-MM-DD (UTC).
        #[arg(long)]
        to: Option<String>,
    },
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
    // `chronos status | head -3`: end quietly when the reader closes the
    // pipe, as other command-line tools do (Rust ignores SIGPIPE, so every
    // later print would panic on the broken pipe).
    // SAFETY: called first thing, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    if let Err(e) = run(Cli::parse()) {
        eprintln!("chronos: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Cmd::Help { command } = &cli.command {
        return help(command);
    }
    let stack = Stack::open(cli.config.as_deref())?;
    match cli.command {
        Cmd::Start { service } => {
            stack.start(service)?;
            if service.is_none() || service == Some(Service::Chronosd) {
                print_where_to_send(&stack);
            }
        }
        Cmd::Stop { service } => stack.stop(service)?,
        Cmd::Supervise { service } => chronos::stack::supervise::run(&stack, service, Default::default())?,
        Cmd::Status => status(&stack),
        Cmd::Doctor(options) => std::process::exit(chronos::doctor::run(&stack.config, &stack.dir, &options)),
        Cmd::Log { service, follow, lines } => print_log(&stack.log_file(service), follow, lines)?,
        Cmd::InstallKafka => install_kafka(&stack.config)?,
        Cmd::DeadLetters { action } => dead_letters(&stack.config, action)?,
        Cmd::InstallPipeline { print_sql } => install_pipeline(&stack.config, print_sql)?,
        Cmd::Archive { action } => archive(&stack.config, action)?,
        Cmd::Erase { session, user, by } => {
            let subject = match (&session, &user) {
                (Some(s), _) => chronos::lifecycle::erase::Subject::Session(s),
                (None, Some(u)) => chronos::lifecycle::erase::Subject::User(u),
                (None, None) => unreachable!("clap requires one of --session and --user"),
            };
            erase(&stack.config, subject, by)?
        }
        Cmd::Import { file, key_id, dry_run, wait } => {
            let opts = chronos::import::send::Options { key_id, dry_run, wait: wait.map(Duration::from_secs) };
            if !import(&stack.config, &file, &opts)? {
                std::process::exit(4);
            }
        }
        Cmd::Export { from, to, types, format, out } => export(&stack.config, &from, to.as_deref(), types, format, &out)?,
        Cmd::Reprocess { from, to, only, dry_run, batch_rows, by } => reprocess(&stack.config, &from, &to, &only, dry_run, batch_rows, by)?,
        Cmd::Views { action } => views(&stack.config, action)?,
        Cmd::Tracker { action: TrackerCmd::Build { out } } => chronos::tracker::write_bundle(&stack.config, out.as_deref())?,
        Cmd::Keys { action } => keys(&stack.config, action)?,
        Cmd::Help { .. } => unreachable!("answered before the config is read"),
    }
    Ok(())
}

/// `chronos status`: one line per service, then the pipeline's figures; exit 3 when one is down.
fn status(stack: &Stack) {
    let mut all_up = true;
    for s in stack.status() {
        all_up &= s.up;
        let pid = s.pid.map(|p| format!("pid {p}")).unwrap_or_default();
        println!("{:<9} {:<5} {:<28} {:<10} {}", s.service.name(), if s.up { "up" } else { "down" }, s.address, pid, s.detail);
        if !s.log_tail.is_empty() {
            println!("{:<9} {:<5} last lines of {}:", "", "", stack.log_file(s.service).display());
            for l in &s.log_tail {
                println!("{:<9} {:<5} | {}", "", "", printable(l));
            }
        }
    }
    print_pipeline(&stack.config);
    if !all_up {
        std::process::exit(3);
    }
}

/// `chronos install-kafka`: the topics, created when missing.
fn install_kafka(c: &chronos::config::Config) -> Result<()> {
    use chronos::produce::admin;
    let k = &c.kafka;
    let max_record = chronos::produce::kafka::max_record_bytes(c.http.max_decompressed_bytes, c.http.max_events_per_batch);
    let wanted = admin::topic_max_message_bytes(k, max_record);
    let created = chronos::rt::block_on(admin::ensure_topics(k, max_record, Duration::from_secs(10)))
        .map_err(|e| anyhow::anyhow!("{e}; is the broker running? (`chronos start broker`)"))?;
    for t in [&k.topic, &k.dead_letter_topic] {
        let state = if created.contains(t) { "created" } else { "exists" };
        println!("{t}: {state} ({} partitions requested, replication {}, max.message.bytes {wanted})", k.partitions, k.replication);
        if created.contains(t) {
            continue;
        }
        // A topic made before (or by hand) may refuse chronosd's largest batches.
        match chronos::rt::block_on(admin::max_message_bytes(k, t, Duration::from_secs(10))) {
            Ok(has) if has < wanted as i64 => eprintln!(
                "warning: {t} has max.message.bytes = {has}, below the {wanted} chronosd's largest batch needs: the broker refuses such batches; \
                 raise it with `kafka-configs.sh --bootstrap-server {} --alter --entity-type topics --entity-name {t} --add-config max.message.bytes={wanted}`",
                k.brokers
            ),
            Ok(_) => {}
            Err(e) => eprintln!("warning: {t}: max.message.bytes not read ({e}); it must be at least {wanted}"),
        }
    }
    Ok(())
}

/// `chronos dead-letters list|replay`.
fn dead_letters(c: &chronos::config::Config, action: DeadLetterCmd) -> Result<()> {
    chronos::rt::block_on(async {
        let client = chronos::store::connect(&c.postgres.url).await?;
        match action {
            DeadLetterCmd::List { limit, all } => {
                for d in chronos::load::replay::list(&client, limit, all).await? {
                    let replayed = if d.replayed { " (replayed)" } else { "" };
                    println!("{:>6}  {}  {:<7}  {}{replayed}", d.id, d.at, d.stage, printable(&d.reason));
                    if let Some(e) = d.event {
                        println!("        {}", printable(&e));
                    }
                }
            }
            DeadLetterCmd::Replay { ids } => {
                let report = chronos::load::replay::replay(c, &client, &ids).await?;
                println!("replayed {} dead letter(s)", report.replayed.len());
                for (id, reason) in &report.still_invalid {
                    println!("{id:>6}  still refused: {}", printable(reason));
                }
            }
        }
        anyhow::Ok(())
    })
}

/// Text a client chose (a dead letter's reason or event, an import's
/// rejection), safe to print on a terminal: control characters (C0, DEL, C1:
/// escape sequences that move the cursor or retitle the window, a carriage
/// return that overwrites the line) and the bidirectional controls that
/// reorder what is shown become `\u{..}`.
fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `chronos install-pipeline [--print-sql]`.
fn install_pipeline(c: &chronos::config::Config, print_sql: bool) -> Result<()> {
    let catalog = chronos::catalog::EventCatalog::from_config(&c.events, c.limits.max_string_bytes);
    if print_sql {
        print!("{}", chronos::store::schema::static_sql(&catalog));
        return Ok(());
    }
    let installed = chronos::rt::block_on(async {
        let mut client = chronos::store::connect(&c.postgres.url).await?;
        chronos::install(&mut client, &catalog, &c.load).await
    })?;
    if let Some(w) = &installed.warning {
        eprintln!("warning: {w}");
    }
    let layout = match installed.layout {
        chronos::store::schema::Layout::Native => "native daily partitions".to_string(),
        chronos::store::schema::Layout::Hypertable { chunk_hours } => {
            format!("TimescaleDB hypertables, {chunk_hours}-hour chunks")
        }
    };
    println!(
        "schema installed at {}: {} event tables in schema events ({layout}), internals in schema chronos",
        chronos::store::redact(&c.postgres.url),
        catalog.types().len()
    );
    Ok(())
}

fn keys(c: &chronos::config::Config, action: KeysCmd) -> Result<()> {
    use chronos::http::stored_keys;
    let config_ids: Vec<&str> = c.keys.iter().map(|k| k.id.as_str()).collect();
    chronos::rt::block_on(async {
        let client = chronos::store::connect(&c.postgres.url).await?;
        stored_keys::install(&client).await?;
        match action {
            KeysCmd::Create { id, origins, allow_no_origin, kind, key } => {
                let key = key.unwrap_or_else(stored_keys::generate);
                stored_keys::create(&client, &id, &key, &origins, allow_no_origin, kind, &config_ids).await?;
                println!("{key}");
                eprintln!("stored key `{id}`; chronosd accepts it within {} s", c.http.keys_refresh_secs);
                if !c.http.keys_from_postgres {
                    eprintln!("note: http.keys_from_postgres is false in this config: chronosd ignores stored keys until it is set");
                }
            }
            KeysCmd::List => {
                // Where a key may be used from, as `chronos keys list` shows it.
                let access = |origins: &[String], allow_no_origin: bool, kind: chronos::config::KeyKind| {
                    if kind == chronos::config::KeyKind::Server {
                        return "server key (no Origin)".to_string();
                    }
                    let origins = if origins.is_empty() { "(none)".to_string() } else { origins.join(",") };
                    format!("origins {origins}{}", if allow_no_origin { " +no-origin" } else { "" })
                };
                for k in &c.keys {
                    println!("{:<20} config   {:<10} {}", k.id, "active", access(&k.origins, k.allow_no_origin, k.kind));
                }
                for k in stored_keys::list(&client).await? {
                    let state = if k.revoked_at.is_some() { "revoked" } else { "active" };
                    let revoked = k.revoked_at.map(|r| format!(", revoked {r}")).unwrap_or_default();
                    println!(
                        "{:<20} stored   {state:<10} {} (created {}{revoked})",
                        k.id,
                        access(&k.origins, k.allow_no_origin, k.kind),
                        k.created_at
                    );
                }
            }
            KeysCmd::Revoke { id } => {
                stored_keys::revoke(&client, &id, &config_ids).await?;
                println!("revoked key `{id}`; chronosd refuses it within {} s", c.http.keys_refresh_secs);
            }
        }
        anyhow::Ok(())
    })
}

fn views(c: &chronos::config::Config, action: ViewsCmd) -> Result<()> {
    let catalog = chronos::catalog::EventCatalog::from_config(&c.events, c.limits.max_string_bytes).with_id_bytes(c.limits.max_session_bytes);
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
    chronos::rt::block_on(async {
        let mut client = chronos::store::connect(&c.postgres.url).await?;
        match action {
            ViewsCmd::List { sql } => {
                let views = chronos::views::list(&client).await?;
                if views.is_empty() {
                    println!("no continuous views (chronos views add FILE adds some)");
                }
                for v in views {
                    println!("{:<28} from {:<18} {:>9} rows  created {}", v.name, v.source, v.rows, v.created_at);
                    if let Some(why) = &v.broken {
                        println!("  BROKEN, not maintained since a statement of it failed: {why}");
                        println!("  (fix the cause, then `chronos views rebuild {}`)", v.name);
                    }
                    if v.rebuilding {
                        println!(
                            "  being rebuilt, or a rebuild was cut short (the old state serves; `chronos views rebuild {}` finishes it)",
                            v.name
                        );
                    }
                    if sql {
                        println!("  {}\n", v.definition);
                    }
                }
            }
            ViewsCmd::Add { backfill, .. } => {
                // A backfill is a rebuild of the new views: PostgreSQL and the archive, online.
                chronos::views::add(&mut client, &defs, &catalog, false).await?;
                if backfill {
                    let names: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
                    let lock = chronos::lifecycle::rebuild::ArchiveLock::Take;
                    let done = chronos::lifecycle::rebuild::rebuild_views(c, &catalog, &names, None, None, lock, rebuild_progress()).await;
                    let done = done.map_err(|e| {
                        anyhow::anyhow!(
                            "{e:#}\n(the views were added and count from now; `chronos views rebuild NAME` fills one from the stored events)"
                        )
                    })?;
                    print_rebuilt(&done);
                }
                for d in &defs {
                    let filled = if backfill { ", filled from the stored events" } else { ", counting from now" };
                    println!("added view {}{filled}: SELECT * FROM views.{};", d.name, d.name);
                }
            }
            ViewsCmd::Rebuild { names, from, to } => {
                let day = |flag: &str, v: Option<String>| {
                    v.map(|v| chronos::lifecycle::parse_day(&v).ok_or_else(|| anyhow::anyhow!("--{flag} {v}: not a day (YYYY-MM-DD)"))).transpose()
                };
                let (from, to) = (day("from", from)?, day("to", to)?);
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let lock = chronos::lifecycle::rebuild::ArchiveLock::Take;
                let done = chronos::lifecycle::rebuild::rebuild_views(c, &catalog, &names, from, to, lock, rebuild_progress()).await?;
                print_rebuilt(&done);
            }
            ViewsCmd::Drop { name } => {
                chronos::views::drop(&mut client, &name).await?;
                println!("dropped view {name}");
            }
        }
        anyhow::Ok(())
    })
}

/// A rebuild's progress on stderr when it is a terminal: days, events, rate.
fn rebuild_progress() -> impl FnMut(&chronos::lifecycle::rebuild::Progress) {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let style = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} days  {msg}").expect("a valid template");
    let bar = if terminal { indicatif::ProgressBar::new(0).with_style(style) } else { indicatif::ProgressBar::hidden() };
    let started = std::time::Instant::now();
    move |p| {
        bar.set_length(p.days as u64);
        bar.set_position(p.days_done as u64);
        let rate = p.rows as f64 / started.elapsed().as_secs_f64().max(1e-3);
        bar.set_message(format!("{} events, {rate:.0}/s  {}", p.rows, p.step));
        if p.step == "swapping" {
            bar.finish_and_clear();
        }
    }
}

fn print_rebuilt(done: &chronos::lifecycle::rebuild::Rebuilt) {
    let rate = |rows: u64, secs: f64| if secs > 0.0 { format!("{:.0} events/s", rows as f64 / secs) } else { "-".into() };
    println!(
        "rebuilt {}: {} events from PostgreSQL ({} table-days, {:.1} s, {}), {} from the archive ({} files, {:.1} s, {}); \
         {} groups written by the loaders meanwhile",
        done.views.join(", "),
        done.pg_rows,
        done.pg_days,
        done.pg_secs,
        rate(done.pg_rows, done.pg_secs),
        done.archive_rows,
        done.archive_days,
        done.archive_secs,
        rate(done.archive_rows, done.archive_secs),
        done.loader_groups
    );
}

/// The manual's sections around the commands (as in the original's `chronos help`).
const MANUAL_HEAD: &str = "\
NAME
    chronos - run and operate Chronos: tracker.js -> chronosd -> Kafka -> PostgreSQL

SYNOPSIS
    chronos [--config FILE] COMMAND [ARGS]
    chronos help [COMMAND [SUBCOMMAND]]

DESCRIPTION
    chronos starts and stops the local stack (PostgreSQL, one Apache Kafka
    node in KRaft mode or an external cluster, chronosd), shows its status and
    logs, creates the Kafka topics and
    the PostgreSQL schema, manages continuous views and dead letters, and
    builds the browser tracker. Every command reads the same config file as
    chronosd. Production deployments (systemd, docker) are described in
    docs/operations.md.
";

const MANUAL_TAIL: &str = "\
FILES
    ./chronos.toml
        The config file when --config is not given. Without it, the first
        command writes .chronos/chronos.toml with a fresh write key.
    .chronos/
        The local stack ([stack] dir): PostgreSQL data, Kafka data (kafka/),
        logs (logs/supervisor.log: each death and restart of a service), pid
        files and the supervisors' restart records (run/).
    ~/.cache/chronos/kafka-<version>/
        Apache Kafka's broker jars, fetched once by .ci/setup.
    chronos.example.toml
        Every key with its default and meaning.

ENVIRONMENT
    CHRONOS_CONFIG
        The config file (same as --config).
    CHRONOS_<SECTION>__<KEY>
        Overrides one config key, e.g. CHRONOS_KAFKA__BROKERS=k1:9092,k2:9092.
    CHRONOS_LOG
        chronosd's log filter (e.g. info, or warn,chronos=debug).
    KAFKA_HOME
        An unpacked Apache Kafka release for the local stack's broker
        (instead of the jars in ~/.cache/chronos).
    JAVA_HOME
        The Java (17 or later) that runs the local broker; else `java`.

EXIT STATUS
    0   success.
    1   the command failed; the message says what to do next. `chronos doctor`: warnings.
    2   bad arguments (and `chronosd --check-config` on an invalid file). `chronos doctor`: faults.
    3   `chronos status`: a service of the local stack is down.
    4   `chronos import`: done, but some lines or events were rejected (listed).

EXAMPLES
    chronos start                      start everything, print where to send events
    chronos status                     services, consumer lag, events in the last minute
    chronos log chronosd -f            follow chronosd's log
    chronos doctor                     what is wrong, and the command or setting that fixes it
    chronos views add my_views.sql --backfill
    chronos dead-letters list -n 5     why events were refused
    chronos keys create site-2026 --origin example.com   a new write key, no restart
    chronos keys revoke site-2025      the old one gets 401 within http.keys_refresh_secs
    chronos import events.jsonl.gz --wait 600   historical events, stored once
    chronos tracker build --out chronos.js

SEE ALSO
    chronosd --help, docs/operations.md, docs/views.md, docs/storage.md,
    docs/wire-format.md, docs/kafka-record.md, tracker/README.md
";

/// `chronos help`: the manual; `chronos help CMD [SUB]`: that command's full help.
fn help(path: &[String]) -> Result<()> {
    use clap::CommandFactory;
    let mut root = Cli::command();
    if path.is_empty() {
        let mut out = format!("{MANUAL_HEAD}\nCOMMANDS\n");
        manual_commands(&mut root, "chronos", &mut out);
        out.push('\n');
        out.push_str(MANUAL_TAIL);
        return print_page(&out);
    }
    let mut cmd = &mut root;
    let mut walked = String::from("chronos");
    for name in path {
        let names: Vec<String> = cmd.get_subcommands().map(|c| c.get_name().to_string()).collect();
        cmd = match cmd.find_subcommand_mut(name) {
            Some(c) => c,
            None if names.is_empty() => anyhow::bail!("`{walked}` has no subcommands; see `chronos help`"),
            None => anyhow::bail!("`{walked} {name}` is not a command; known: {}", names.join(", ")),
        };
        walked = format!("{walked} {name}");
    }
    let mut cmd = cmd.clone().bin_name(walked);
    print_page(&cmd.render_long_help().to_string())
}

/// Prints a page; a reader that quits early (`| head`, `less`) is not an error.
fn print_page(text: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Every command's long help, indented, depth first.
fn manual_commands(cmd: &mut clap::Command, path: &str, out: &mut String) {
    let subs: Vec<String> = cmd.get_subcommands().map(|c| c.get_name().to_string()).collect();
    for name in subs {
        let full = format!("{path} {name}");
        let sub = cmd.find_subcommand_mut(&name).unwrap();
        let has_children = sub.get_subcommands().next().is_some();
        let mut c = sub.clone().bin_name(full.clone());
        out.push_str(&format!("\n    {full}\n"));
        for line in c.render_long_help().to_string().lines() {
            out.push_str(if line.is_empty() { "" } else { "        " });
            out.push_str(line);
            out.push('\n');
        }
        if has_children {
            manual_commands(sub, &full, out);
        }
    }
}

/// The data-flow lines of `chronos status`; a part that cannot be read says why.
fn print_pipeline(c: &chronos::config::Config) {
    use chronos::stack::pipeline;
    let (lag, recent, layout, refused) = chronos::rt::block_on(async {
        (
            pipeline::consumer_lag(c, Duration::from_secs(5)).await,
            pipeline::events_last_minute(c).await,
            pipeline::table_layout(c).await,
            pipeline::refused(c).await,
        )
    });
    chronos::rt::block_on(pipeline::cluster_lines(c, Duration::from_secs(5))).iter().for_each(|l| println!("{l}"));
    match lag {
        Ok(topics) => {
            for t in topics {
                println!("{:<9} {:<5} {:<28} {} records not yet loaded ({} partitions)", "lag", "", t.topic, t.lag, t.partitions.len());
            }
        }
        Err(e) => println!("{:<9} {:<5} {:<28} unknown: {e:#}", "lag", "", c.load.group_id),
    }
    match recent {
        Ok((n, bots)) => println!(
            "{:<9} {:<5} {:<28} {n} events stored in the last minute ({:.1}/s), {}",
            "ingest",
            "",
            "",
            n as f64 / 60.0,
            chronos::stack::bot_share(n, bots)
        ),
        Err(e) => println!("{:<9} {:<5} {:<28} unknown: {e:#}", "ingest", "", ""),
    }
    match layout {
        Ok(l) => println!("{:<9} {:<5} {:<28} {l}", "tables", "", "events.*"),
        Err(e) => println!("{:<9} {:<5} {:<28} unknown: {e:#}", "tables", "", "events.*"),
    }
    match refused {
        Ok(r) => {
            for (topic, n) in &r.set_aside {
                println!("{:<9} {:<5} {:<28} {n} records set aside: PostgreSQL refused them (chronos dead-letters list)", "set-aside", "", topic);
            }
            for (view, why) in &r.broken_views {
                println!("{:<9} {:<5} {:<28} broken, not maintained: {why}", "view", "", format!("views.{view}"));
            }
        }
        Err(e) => println!("{:<9} {:<5} {:<28} unknown: {e:#}", "set-aside", "", ""),
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
            "    curl -s http://{addr}/v1/batch -A '{}' -H 'Content-Type: text/plain' -d '{{\"v\":1,\"key\":\"{}\",\"batch\":\"'$(cat /proc/sys/kernel/random/uuid)'\",\"sent_at\":'$(date +%s%3N)',\"session\":\"demo\",\"page\":{{\"url\":\"http://localhost/\"}},\"events\":[[\"clicks\",'$(date +%s%3N)',\"BUTTON\",1,10,20,\"main>button\"]]}}'",
            chronos::stack::DEMO_USER_AGENT,
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

/// `chronos import`; `false` when something was rejected.
fn import(c: &chronos::config::Config, file: &str, opts: &chronos::import::send::Options) -> Result<bool> {
    use std::io::BufRead;
    let (raw, len): (Box<dyn std::io::Read>, Option<u64>) = if file == "-" {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let f = std::fs::File::open(file).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(f), len)
    };
    // Progress counts the bytes read from the file (compressed, for a gzip file).
    let bar = match len {
        Some(n) => indicatif::ProgressBar::new(n)
            .with_style(indicatif::ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {msg} ({eta} left)").expect("a valid template")),
        None => indicatif::ProgressBar::new_spinner()
            .with_style(indicatif::ProgressStyle::with_template("{spinner} {bytes} {msg}").expect("a valid template")),
    };
    let mut input = std::io::BufReader::with_capacity(1 << 20, bar.wrap_read(raw));
    let gzip = input.fill_buf().map_err(|e| anyhow::anyhow!("{file}: {e}"))?.starts_with(&[0x1f, 0x8b]);
    let input: Box<dyn BufRead> =
        if gzip { Box::new(std::io::BufReader::with_capacity(1 << 20, flate2::bufread::MultiGzDecoder::new(input))) } else { Box::new(input) };
    let report = chronos::rt::block_on(chronos::import::send::run(c, input, opts, |s| {
        bar.set_message(format!("{} lines, {} events accepted, {} rejected, {} duplicate", s.lines, s.accepted, s.rejected, s.duplicate_events));
    }))
    .map_err(|e| anyhow::anyhow!("{file}: {e:#}"))?;
    bar.finish_and_clear();
    let s = &report.summary;
    let secs = report.produced_in.as_secs_f64();
    let verb = if opts.dry_run { "checked (dry run, nothing sent)" } else { "imported" };
    println!(
        "{verb} {file}: {} lines; {} events accepted in {} batches, {} rejected, {} duplicate ({} batches stored before); {secs:.1} s, {:.0} events/s",
        s.lines, s.accepted, s.batches, s.rejected, s.duplicate_events, s.duplicate_batches,
        (s.accepted + s.rejected) as f64 / secs.max(1e-3)
    );
    if let Some(t) = report.stored_in {
        println!(
            "stored by the loaders: {} batches, {:.1} s after the start ({:.0} events/s end to end)",
            report.sent.len(),
            t.as_secs_f64(),
            (s.accepted + s.rejected) as f64 / t.as_secs_f64().max(1e-3)
        );
    }
    for r in &s.reasons {
        eprintln!("rejected: {}", printable(r));
    }
    if s.rejected as usize > s.reasons.len() {
        eprintln!("rejected: … {} more (dead letters: `chronos dead-letters list`)", s.rejected as usize - s.reasons.len());
    }
    Ok(s.rejected == 0)
}

fn reprocess(c: &chronos::config::Config, from: &str, to: &str, only: &str, dry_run: bool, rows_per_tx: i64, by: Option<String>) -> Result<()> {
    use chronos::lifecycle::{parse_day, reprocess};
    let day = |flag: &str, s: &str| parse_day(s).ok_or_else(|| anyhow::anyhow!("{flag} {s:?}: expected a day, YYYY-MM-DD"));
    let stages = reprocess::rules::Stages::parse(only).map_err(anyhow::Error::msg)?;
    let by = by.or_else(|| std::env::var("SUDO_USER").ok()).or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "unknown".into());
    let opts = reprocess::Options { from: day("--from", from)?, to: day("--to", to)?, stages, dry_run, rows_per_tx, by };
    let rules = reprocess::rules(c, stages)?;
    let catalog = chronos::catalog::EventCatalog::from_config(&c.events, c.limits.max_string_bytes);
    let archiver = chronos::lifecycle::archive::Archiver::new(c)?;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let report = chronos::rt::block_on(async {
        let mut client = chronos::store::connect(&c.postgres.url).await?;
        reprocess::run(&mut client, c, &archiver, &catalog, &rules, &opts, |step| {
            if terminal {
                eprint!("\r\x1b[Kreprocessing: {step}");
            }
        })
        .await
    })?;
    if terminal {
        eprint!("\r\x1b[K");
    }
    let stages = report.stages.names().join(", ");
    match report.run {
        None => println!("dry run ({stages}): nothing is changed"),
        Some(id) => println!("reprocess run #{id} ({stages}){}", if report.resumed { ", cut short before: finished now" } else { "" }),
    }
    for line in reprocess::report::lines(&report, dry_run, c.enrich.geoip_db.is_some()) {
        println!("{line}");
    }
    if let Some(id) = report.run {
        println!("recorded in chronos.reprocessings (#{id}, by {}) and chronos.reprocess_steps", opts.by);
    }
    Ok(())
}

fn erase(c: &chronos::config::Config, subject: chronos::lifecycle::erase::Subject<'_>, by: Option<String>) -> Result<()> {
    use chronos::lifecycle::erase;
    let by = by.or_else(|| std::env::var("SUDO_USER").ok()).or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "unknown".into());
    let catalog = chronos::catalog::EventCatalog::from_config(&c.events, c.limits.max_string_bytes);
    let archiver = chronos::lifecycle::archive::Archiver::new(c)?;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (done, not_erased) = chronos::rt::block_on(async {
        let mut client = chronos::store::connect(&c.postgres.url).await?;
        let done = erase::erase(c, &mut client, &archiver, &catalog, subject, &by, |step| {
            if terminal {
                eprint!("\r\x1b[Kerasing: {step}");
            }
        })
        .await?;
        anyhow::Ok((done, erase::not_erased(c).await))
    })?;
    if terminal {
        eprint!("\r\x1b[K");
    }
    let raw: u64 = done.raw.iter().map(|(_, n)| n).sum();
    if let erase::Subject::User(u) = subject {
        println!("user {u}: {} sessions", done.sessions);
    }
    let what = if done.sessions == 1 { "session" } else { "sessions" };
    println!(
        "erased {what}: {raw} raw events ({})",
        done.raw.iter().filter(|(_, n)| *n > 0).map(|(t, n)| format!("{t} {n}")).collect::<Vec<_>>().join(", ")
    );
    println!("  {} archived events in {} files rewritten", done.archived_rows, done.files.len());
    println!("  {} dead letters", done.dead_letters);
    println!("  {} identities (session → user), {} visits, {} batch pages", done.identities, done.visits, done.pages);
    for (v, n) in &done.view_rows {
        println!("  {n} rows of view {v} (keyed by session_id)");
    }
    if !done.views_corrected.is_empty() {
        println!("  the groups their events fed recomputed without them in views {}", done.views_corrected.join(", "));
    }
    if !done.stale_deleted.is_empty() {
        println!("  {} stale archive objects deleted", done.stale_deleted.len());
    }
    println!("recorded in chronos.erasures (by {by}; the session and user ids are not kept)");
    println!("not erased:");
    for l in not_erased {
        println!("  {l}");
    }
    if done.dead_letters_unattributed > 0 {
        println!(
            "  {} dead letters that name no session (no batch facts, and no readable session_id in their raw record): no field says whose they are",
            done.dead_letters_unattributed
        );
    }
    Ok(())
}

/// `--from` / `--to` as day numbers, checked.
fn day_range_args(from: &str, to: Option<&str>) -> Result<(i64, i64)> {
    let day = |flag: &str, v: &str| chronos::lifecycle::parse_day(v).ok_or_else(|| anyhow::anyhow!("--{flag} {v}: not a day (YYYY-MM-DD)"));
    let from_day = day("from", from)?;
    let to_day = match to {
        Some(t) => day("to", t)?,
        None => from_day,
    };
    if to_day < from_day {
        anyhow::bail!("--to {} is before --from {from}", to.unwrap_or_default());
    }
    Ok((from_day, to_day))
}

fn export(
    c: &chronos::config::Config,
    from: &str,
    to: Option<&str>,
    types: Vec<String>,
    format: chronos::lifecycle::export::Format,
    out: &str,
) -> Result<()> {
    use chronos::lifecycle::export::{self, Format, Out, Source};
    let (from, to) = day_range_args(from, to)?;
    let catalog = chronos::catalog::EventCatalog::from_config(&c.events, c.limits.max_string_bytes);
    let known: Vec<String> = catalog.types().iter().map(|t| t.name.to_string()).collect();
    let tables = if types.is_empty() { known.clone() } else { types };
    for t in &tables {
        if !known.contains(t) {
            anyhow::bail!("--types {t}: not an event type of the catalog ({})", known.join(", "));
        }
    }
    let out = if out == "-" { Out::Stdout } else { Out::Dir(PathBuf::from(out)) };
    if matches!(out, Out::Stdout) {
        match format {
            Format::Parquet => anyhow::bail!("--format parquet writes one file per table and day: give --out DIR, not -"),
            Format::Csv if tables.len() != 1 => {
                anyhow::bail!("--format csv to standard output takes one event type (--types); {} given", tables.len())
            }
            _ => {}
        }
    }
    let archiver = chronos::lifecycle::archive::Archiver::new(c)?;
    let spec = export::Spec { from, to, tables, format, out };
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let done = chronos::rt::block_on(async {
        let client = chronos::store::connect(&c.postgres.url).await?;
        client.batch_execute("SET TIME ZONE 'UTC'").await?;
        export::export(&client, &archiver, &spec, |e| {
            if terminal {
                eprint!("\r\x1b[K{} {}: {} rows", e.table, e.day, e.rows);
            }
        })
        .await
    })?;
    if terminal {
        eprint!("\r\x1b[K");
    }
    let rows: u64 = done.iter().map(|e| e.rows).sum();
    let archived = done.iter().filter(|e| e.source == Source::Archive && e.rows > 0).count();
    eprintln!("exported {rows} events ({} table-days, {archived} of them from the archive)", done.len());
    Ok(())
}

fn archive(c: &chronos::config::Config, action: ArchiveCmd) -> Result<()> {
    use chronos::lifecycle::archive::{self, Archiver};
    let catalog = chronos::catalog::EventCatalog::from_config(&c.events, c.limits.max_string_bytes);
    let archiver = Archiver::new(c)?;
    chronos::rt::block_on(async {
        let mut client = chronos::store::connect(&c.postgres.url).await?;
        match action {
            ArchiveCmd::Run => {
                println!("archive: {}; keeping {} days of raw events", archiver.location(), c.retention.raw_days);
                let Some(report) = archiver.run(&mut client, &catalog, chronos::store::today()).await? else {
                    anyhow::bail!("another archive run holds the lock (chronosd's schedule?); try again when it ends");
                };
                for l in &report.lines {
                    println!("{l}");
                }
                println!("{} days archived, {} dropped", report.archived, report.dropped);
                if !report.errors.is_empty() {
                    anyhow::bail!("{}", report.errors.join("\n"));
                }
            }
            ArchiveCmd::List => {
                let records = archive::list(&client).await?;
                if records.is_empty() {
                    println!("no day archived yet ({})", archiver.location());
                }
                for r in records {
                    let m = &r.manifest;
                    let state = match (&r.restored_until, r.dropped) {
                        (Some(until), _) => format!("restored until {until}"),
                        (None, true) => "dropped".into(),
                        (None, false) => "archived, not dropped yet".into(),
                    };
                    let file = if m.location.is_empty() { "(no rows)" } else { &m.location };
                    println!("{:<18} {} {:>10} rows {:>12} bytes  {:<26} {file}", m.table, m.day, m.rows, m.bytes, state);
                }
            }
            ArchiveCmd::Verify => {
                let records = archive::list(&client).await?;
                let mut failed = 0;
                let with_files: Vec<_> = records.iter().map(|r| &r.manifest).filter(|m| m.has_file()).collect();
                let files = with_files.len();
                for (i, m) in with_files.into_iter().enumerate() {
                    match archiver.verify_one(m).await {
                        Ok(()) => println!("ok      {} {} ({} rows)", m.table, m.day, m.rows),
                        Err(e) => {
                            failed += 1;
                            println!("FAILED  {} {}: {e:#}", m.table, m.day);
                        }
                    }
                    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                        eprint!("\r{} of {files} files", i + 1);
                    }
                }
                if failed > 0 {
                    anyhow::bail!("{failed} of {files} archived files do not match their manifest");
                }
                println!("{files} archived files verified");
            }
            ArchiveCmd::Restore { table, from, to } => {
                let (from_day, to_day) = day_range_args(&from, to.as_deref())?;
                if !catalog.types().iter().any(|t| *t.name == table) {
                    anyhow::bail!("--table {table}: not an event type of the catalog");
                }
                for l in archiver.restore(&mut client, &table, from_day, to_day).await? {
                    println!("{l}");
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn client_text_prints_without_control_characters() {
        assert_eq!(printable("events[3]: unknown type `clicks`"), "events[3]: unknown type `clicks`");
        assert_eq!(printable("a\u{1b}]0;owned\u{7}b\u{1b}[2J"), "a\\u{1b}]0;owned\\u{7}b\\u{1b}[2J");
        assert_eq!(printable("ok\rFAKE\nline\ttab\0"), "ok\\u{d}FAKE\\u{a}line\\u{9}tab\\u{0}");
        assert_eq!(printable("\u{7f}\u{9b}31m"), "\\u{7f}\\u{9b}31m", "DEL and the C1 CSI");
        assert_eq!(printable("abc\u{202e}fed"), "abc\\u{202e}fed", "a right-to-left override");
        assert_eq!(printable("Café ✓ 東京"), "Café ✓ 東京", "printable text is kept");
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            assert!(!printable(&format!("x{c}y")).chars().any(char::is_control), "{:x}", c as u32);
        }
    }
}
