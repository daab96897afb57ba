//! # chronos-bench — benchmarks of the pipeline next to its ceilings
//!
//! # Layout
//! - `stack`: PostgreSQL and the broker started with the test helpers, the
//!   chronosd config of a run, chronosd as a process, CPU and memory readings.
//! - `records`: the benchmark's batches (loadgen's templates) and the Kafka
//!   records chronosd makes of them (the real receipt code).
//! - `ceiling`: what the pipeline is compared to — the broker's produce and
//!   consume rate for those records with plain rdkafka, and the PostgreSQL
//!   COPY BINARY rate for their rows.
//!
//! Binaries: `loader_perf` (loaders next to their ceilings), `pipeline`
//! (perf/pipeline: HTTP → Kafka → PostgreSQL next to every ceiling).

pub mod ceiling;
pub mod records;
pub mod stack;
