//! chronosd: the Chronos daemon. Parses arguments, loads config, binds, runs.

use std::net::TcpListener;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Receive event batches over HTTP and log them durably in Kafka.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Config file (TOML). Every key can be overridden by CHRONOS_<SECTION>__<KEY>.
    #[arg(long, env = "CHRONOS_CONFIG")]
    config: Option<PathBuf>,
    /// Validate this config file and exit (0 = valid).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = args.check_config {
        return match chronos::config::Config::load(Some(&path)) {
            Ok(c) => {
                let enabled = c.events.values().filter(|t| t.enabled).count();
                println!("{}: valid ({} event types enabled, {} write keys)", path.display(), enabled, c.keys.len());
                Ok(())
            }
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                std::process::exit(2);
            }
        };
    }
    chronos::telemetry::init_logging();
    let config = match chronos::config::Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chronosd: {e}");
            std::process::exit(2);
        }
    };
    let result = TcpListener::bind(config.http.listen)
        .with_context(|| format!("cannot listen on {} (http.listen)", config.http.listen))
        .and_then(|listener| actix_rt::System::new().block_on(chronos::run(config, listener, chronos::shutdown::signal())));
    if let Err(e) = result {
        // One line with the whole cause chain: what failed and what to do.
        eprintln!("chronosd: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}
