//! `loadgen`: parses the command line, runs on a tokio runtime, prints the report.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = loadgen::Args::parse();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()?
    };
    let report = runtime.block_on(loadgen::execute(&args))?.report;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    std::process::exit(report.exit_code());
}
