//! `[stack]`: the local stack behind `chronos start`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The local stack (`chronos start`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StackConfig {
    /// Directory holding every service's data, logs and pid files.
    pub dir: PathBuf,
    /// Port of the local PostgreSQL.
    pub postgres_port: u16,
    /// `local`: `chronos start` runs one Apache Kafka node (broker and controller,
    /// KRaft) in `dir`. `external`: `kafka.brokers` is a cluster you run; `chronos
    /// start` starts no broker and only creates the topics there.
    pub broker: BrokerMode,
    /// Client port of the local Kafka node (`kafka.brokers` must name it).
    pub broker_port: u16,
    /// Controller (KRaft quorum) port of the local Kafka node.
    pub controller_port: u16,
    /// Java heap of the local Kafka node, MiB.
    pub broker_heap_mb: u32,
}

/// Who runs the stack's Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerMode {
    Local,
    External,
}

impl Default for StackConfig {
    fn default() -> Self {
        StackConfig {
            dir: ".chronos".into(),
            postgres_port: 5433,
            broker: BrokerMode::Local,
            broker_port: 9092,
            controller_port: 9093,
            broker_heap_mb: 512,
        }
    }
}

impl StackConfig {
    /// What is wrong with `[stack]`, each naming its key.
    pub(super) fn errors(&self, errors: &mut Vec<String>) {
        if self.broker_port == self.controller_port {
            errors.push(format!("stack.controller_port: {} is also stack.broker_port", self.controller_port));
        }
        if self.broker_heap_mb < 128 {
            errors.push(format!("stack.broker_heap_mb: {} is too small for a Kafka broker (at least 128)", self.broker_heap_mb));
        }
    }
}
