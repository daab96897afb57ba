//! Fuzz target: any request body, read as sent plain and as sent gzipped,
//! through the whole receipt (decompress, parse, envelope, key, validate,
//! encode); what it accepts must decode in the loader. Never a panic.
//! Entry point and checks: `chronos::fuzz::receipt`. Run: perf/fuzz.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chronos::fuzz::receipt(data));
