//! Cluster and pipeline health: what the Kafka cluster says of Chronos's
//! topics (`cluster`), and the poll (`poll`) that turns it and what chronosd
//! knows of its loaders and archive (`telemetry::board`) into metrics. Read by
//! `/metrics` and `/health` on the admin listener, `chronos status` and
//! `chronos doctor` (docs/operations.md, "Health and doctor").

pub mod cluster;
pub mod poll;
