//! The data lifecycle after loading: retention and cold storage
//! ([`archive`]: old days to Parquet, verified, then dropped; list, verify,
//! restore), [`export`] of raw events to other tools, and [`erase`] of one
//! person's events everywhere Chronos keeps them, and the [`rebuild`] of a
//! continuous view from the raw events of PostgreSQL and the archive
//! ([`source`] reads them); [`reprocess`] runs the enrichment again over
//! stored events.

pub mod archive;
pub mod columns;
pub mod erase;
pub mod export;
mod failpoint;
pub mod file;
pub mod rebuild;
pub mod reprocess;
pub mod source;
pub mod target;

pub use archive::{day_str, parse_day};
