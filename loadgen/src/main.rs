//! `loadgen`: parses the command line, runs on a tokio runtime, prints the
//! report. SIGINT or SIGTERM stops the run and prints the report of what was
//! sent (exit status 128 + the signal); a second one quits at once.

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> anyhow::Result<()> {
    let args = loadgen::Args::parse();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()?
    };
    let (report, signalled) = runtime.block_on(async {
        let (tx, stop) = tokio::sync::watch::channel(false);
        let signo = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
        let got = signo.clone();
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let watcher = tokio::spawn(async move {
            let first = tokio::select! {
                _ = int.recv() => ("SIGINT", libc::SIGINT),
                _ = term.recv() => ("SIGTERM", libc::SIGTERM),
            };
            eprintln!("loadgen: {}: stopping; answers in flight get 2 s, then the report (again to quit at once)", first.0);
            got.store(first.1, std::sync::atomic::Ordering::SeqCst);
            let _ = tx.send(true);
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            std::process::exit(128 + first.1);
        });
        let outcome = loadgen::execute_until(&args, stop).await;
        watcher.abort();
        let signalled = signo.load(std::sync::atomic::Ordering::SeqCst);
        anyhow::Ok((outcome?.report, signalled))
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    // 128 + the signal, as a shell reports a command the signal ended.
    std::process::exit(if signalled != 0 { 128 + signalled } else { report.exit_code() });
}
