//! Every PostgreSQL advisory-lock key Chronos takes, in one place, so that no
//! two uses share a key by accident and a reader can see what excludes what.
//! The values are kept as they were first chosen: a chronosd and a CLI of
//! different versions running at once must still exclude each other.

/// The storage schema's install (transaction-scoped): two chronosd starting
/// together do not race on `CREATE … IF NOT EXISTS` (`store::install_tables`).
pub const INSTALL: i64 = 7_243_001;

/// The one archive run at a time (session-scoped; `lifecycle::archive`);
/// erasure, rebuild and reprocess take it too, so none rewrites or reads a
/// day's file while another moves it.
pub const ARCHIVE_RUN: i64 = 7_243_002;

/// The one `chronos reprocess` run at a time (session-scoped); a run holds
/// [`ARCHIVE_RUN`] as well.
pub const REPROCESS: i64 = 7_243_003;

/// The set of continuous views: loaders take it shared in each transaction,
/// `views add|drop`, the rebuild's start and swap take it exclusively.
pub const VIEWS: i64 = 0x6368_726f_6e76_6977; // "chronviw"

/// The one view rebuild at a time (session-scoped; `lifecycle::rebuild`).
pub const REBUILD: i64 = 0x6368_726f_6e72_6264; // "chronrbd"

#[cfg(test)]
mod tests {
    #[test]
    fn no_two_locks_share_a_key() {
        let keys = [super::INSTALL, super::ARCHIVE_RUN, super::REPROCESS, super::VIEWS, super::REBUILD];
        let distinct: std::collections::HashSet<i64> = keys.into_iter().collect();
        assert_eq!(distinct.len(), keys.len());
    }
}
