//! Fuzz target: any Kafka record value through the loaders' decode of an
//! events record (walk and COPY encoding) and of a dead-letter record; every
//! dead letter made must be storable. Never a panic.
//! Entry point and checks: `chronos::fuzz::decode`. Run: perf/fuzz.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chronos::fuzz::decode(data));
