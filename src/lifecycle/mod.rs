//! The data lifecycle after loading: retention and cold storage
//! ([`archive`]: old days to Parquet, verified, then dropped; list, verify,
//! restore), [`export`] of raw events to other tools, and [`erase`] of one
//! person's events everywhere Chronos keeps them.

pub mod archive;
pub mod columns;
pub mod erase;
pub mod export;
pub mod file;
pub mod target;

pub use archive::{day_str, parse_day};
