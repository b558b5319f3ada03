//! `emperor::fuzzing::metrics` under libFuzzer; the entry point and its checks are shared with the corpus replay.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| emperor::fuzzing::metrics(data));
