//! What the file watchers compare (the config file, the HTTPS certificate,
//! the GeoIP database): a file's modification time. A leaf module.

use std::path::Path;
use std::time::SystemTime;

/// `path`'s modification time; `None` when it cannot be read.
pub fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
