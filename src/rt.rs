//! One-off async calls from synchronous code (the `chronos` CLI, the local
//! stack, tests and benchmarks): a private current-thread tokio runtime. A
//! leaf module; the daemon runs on actix's runtimes instead.

/// Runs `f` to completion on a fresh current-thread runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime").block_on(f)
}
