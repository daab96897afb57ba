//! Shutdown signals: SIGTERM (systemd, containers) and SIGINT (Ctrl-C).

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "Shutdown requested."),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "Shutdown requested."),
    }
}
