//! What chronosd knows of its own pipeline's health between two polls: per
//! assigned partition, when its loader last made progress and its last
//! error; the archive's last runs. The loaders and the archive schedule
//! write it, the health poll reads and completes it, and the admin listener
//! serves its [`Snapshot`] at `/health` (what `chronos doctor` reads).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One assigned partition, as the health poll last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionHealth {
    pub topic: String,
    pub partition: i32,
    /// Records in Kafka past the offset stored in PostgreSQL (last poll).
    pub lag: i64,
    /// Stored nothing for `load.stalled_after_secs` while `lag` > 0.
    pub stalled: bool,
    /// Last commit of rows (ms since the epoch), since this chronosd started.
    pub last_commit_ms: Option<i64>,
    /// The next offset to load as this loader last knew it stored (read at
    /// its start, then each commit's): the lag's base when PostgreSQL cannot
    /// be read.
    #[serde(default)]
    pub next_offset: Option<i64>,
    /// When the partition last progressed: a commit, its loader's start, or a poll that found no lag.
    pub progress_ms: i64,
    /// The last error of its loader (a failed flush or offset read), and when.
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
}

/// The archive schedule's runs in this chronosd.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveHealth {
    pub ok_runs: u64,
    pub failed_runs: u64,
    pub last_success_ms: Option<i64>,
    pub last_failure_ms: Option<i64>,
    /// Why the last failed run failed.
    pub last_failure: Option<String>,
}

/// What `/health` on the admin listener answers (JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub partitions: Vec<PartitionHealth>,
    /// `None` when this chronosd runs no archive schedule.
    pub archive: Option<ArchiveHealth>,
}

/// Shared by the loaders, the archive schedule, the health poll and `/health`.
#[derive(Default)]
pub struct Board {
    partitions: Mutex<BTreeMap<(String, i32), PartitionHealth>>,
    archive: Mutex<Option<ArchiveHealth>>,
}

impl Board {
    fn with<T>(&self, topic: &str, partition: i32, now_ms: i64, f: impl FnOnce(&mut PartitionHealth) -> T) -> T {
        let mut map = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        let p = map.entry((topic.to_string(), partition)).or_insert_with(|| PartitionHealth {
            topic: topic.to_string(),
            partition,
            progress_ms: now_ms,
            ..Default::default()
        });
        f(p)
    }

    /// A loader starts on the partition: the stall clock starts now.
    pub fn loader_started(&self, topic: &str, partition: i32, now_ms: i64) {
        self.with(topic, partition, now_ms, |p| p.progress_ms = now_ms);
    }

    /// The partition is no longer this chronosd's (revoked, or shutdown).
    pub fn loader_ended(&self, topic: &str, partition: i32) {
        self.partitions.lock().unwrap_or_else(|e| e.into_inner()).remove(&(topic.to_string(), partition));
    }

    /// The loader read its stored offset (`None`: nothing stored yet).
    pub fn resumed_at(&self, topic: &str, partition: i32, next: Option<i64>, now_ms: i64) {
        self.with(topic, partition, now_ms, |p| p.next_offset = next);
    }

    /// A commit stored rows; `next` is the offset stored with them.
    pub fn committed(&self, topic: &str, partition: i32, next: i64, now_ms: i64) {
        self.with(topic, partition, now_ms, |p| {
            p.last_commit_ms = Some(now_ms);
            p.progress_ms = now_ms;
            p.next_offset = Some(next);
        });
    }

    /// The next offset each partition's loader last stored, for lags read
    /// without PostgreSQL.
    pub fn positions(&self) -> BTreeMap<(String, i32), i64> {
        let map = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().filter_map(|(k, p)| p.next_offset.map(|n| (k.clone(), n))).collect()
    }

    /// The loader failed to store or to read its offset (kept until the next error).
    pub fn failed(&self, topic: &str, partition: i32, error: &str, now_ms: i64) {
        self.with(topic, partition, now_ms, |p| {
            p.last_error = Some(error.to_string());
            p.last_error_ms = Some(now_ms);
        });
    }

    /// The health poll's view of the partitions assigned here: records each
    /// lag (from `lags`; a partition missing from it keeps its last), moves
    /// the progress mark of those without lag to now, and decides who is
    /// stalled. Returns the partitions after the update.
    pub fn assess(&self, lags: &BTreeMap<(String, i32), i64>, now_ms: i64, stalled_after_ms: i64) -> Vec<PartitionHealth> {
        let mut map = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        for (key, p) in map.iter_mut() {
            if let Some(lag) = lags.get(key) {
                p.lag = *lag;
            }
            if p.lag == 0 {
                p.progress_ms = now_ms;
            }
            p.stalled = stalled(p.lag, p.progress_ms, now_ms, stalled_after_ms);
        }
        map.values().cloned().collect()
    }

    /// An archive run ended: `Ok` or why it failed.
    pub fn archive_run(&self, outcome: Result<(), String>, now_ms: i64) {
        let mut a = self.archive.lock().unwrap_or_else(|e| e.into_inner());
        let a = a.get_or_insert_with(ArchiveHealth::default);
        match outcome {
            Ok(()) => {
                a.ok_runs += 1;
                a.last_success_ms = Some(now_ms);
            }
            Err(why) => {
                a.failed_runs += 1;
                a.last_failure_ms = Some(now_ms);
                a.last_failure = Some(why);
            }
        }
    }

    /// The archive schedule runs in this chronosd (before its first run ends).
    pub fn archive_scheduled(&self) {
        self.archive.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(ArchiveHealth::default);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            partitions: self.partitions.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect(),
            archive: self.archive.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

/// A partition is stalled when records wait and nothing progressed for `after_ms`.
pub fn stalled(lag: i64, progress_ms: i64, now_ms: i64, after_ms: i64) -> bool {
    lag > 0 && now_ms - progress_ms >= after_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lags(entries: &[(&str, i32, i64)]) -> BTreeMap<(String, i32), i64> {
        entries.iter().map(|(t, p, l)| ((t.to_string(), *p), *l)).collect()
    }

    #[test]
    fn a_partition_with_lag_and_no_commit_for_the_window_is_stalled() {
        let b = Board::default();
        b.loader_started("t", 0, 1_000);
        b.loader_started("t", 1, 1_000);
        let after = 300_000;
        // Lag, but within the window: not yet.
        let p = b.assess(&lags(&[("t", 0, 5), ("t", 1, 0)]), 200_000, after);
        assert!(!p[0].stalled && !p[1].stalled);
        // Lag stays, nothing committed for 300 s: stalled; the one without lag is not.
        let p = b.assess(&lags(&[("t", 0, 9), ("t", 1, 0)]), 301_000, after);
        assert!(p[0].stalled, "{p:?}");
        assert!(!p[1].stalled);
        // A commit starts the clock again.
        b.committed("t", 0, 7, 302_000);
        let p = b.assess(&lags(&[("t", 0, 3)]), 303_000, after);
        assert!(!p[0].stalled);
        assert_eq!(p[0].last_commit_ms, Some(302_000));
        // A poll without lag does too (nothing to commit is progress enough).
        let p = b.assess(&lags(&[("t", 0, 0)]), 700_000, after);
        assert!(!p[0].stalled);
        let p = b.assess(&lags(&[("t", 0, 1)]), 900_000, after);
        assert!(!p[0].stalled, "lag again only 200 s after the poll that saw none");
    }

    #[test]
    fn the_last_error_is_kept_and_a_revoked_partition_leaves() {
        let b = Board::default();
        b.loader_started("t", 2, 0);
        b.failed("t", 2, "42P01: relation \"events_raw.clicks\" does not exist", 10);
        b.committed("t", 2, 40, 20);
        assert_eq!(b.positions().get(&("t".to_string(), 2)), Some(&40));
        let s = b.snapshot();
        assert_eq!(s.partitions[0].last_error.as_deref(), Some("42P01: relation \"events_raw.clicks\" does not exist"));
        assert_eq!(s.partitions[0].last_error_ms, Some(10));
        b.loader_ended("t", 2);
        assert!(b.snapshot().partitions.is_empty());
    }

    #[test]
    fn archive_runs_count_and_keep_the_last_failure() {
        let b = Board::default();
        assert_eq!(b.snapshot().archive, None, "no schedule: nothing to say");
        b.archive_scheduled();
        b.archive_run(Err("creating the archive directory /x: File exists".into()), 5);
        b.archive_run(Ok(()), 9);
        let a = b.snapshot().archive.unwrap();
        assert_eq!((a.ok_runs, a.failed_runs, a.last_success_ms, a.last_failure_ms), (1, 1, Some(9), Some(5)));
        assert!(a.last_failure.unwrap().contains("File exists"));
        let json = serde_json::to_string(&b.snapshot()).unwrap();
        assert_eq!(serde_json::from_str::<Snapshot>(&json).unwrap(), b.snapshot(), "what /health sends, doctor reads");
    }
}
