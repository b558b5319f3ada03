//! The committed fuzz corpora (`fuzz/corpus/<target>/`), replayed on stable through the entry points the
//! cargo-fuzz targets call (`emperor::fuzzing`): every input the fuzzer kept stays a test without nightly.
//! Its own test crate, apart from `tests.rs`, because it needs no binary, no process and no temp dir.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

/// Feeds every file of the target's corpus to `entry`; a panic names the file, an empty or missing
/// corpus fails (a replay of nothing would pass forever).
fn replay(target: &str, entry: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut replayed = 0;
    for file in entries {
        let path = file
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        if catch_unwind(AssertUnwindSafe(|| entry(&data))).is_err() {
            panic!(
                "{} fails (fuzz target {target}; the panic is printed above)",
                path.display()
            );
        }
        replayed += 1;
    }
    assert!(replayed > 0, "{} is empty", dir.display());
}

#[test]
fn config() {
    replay("config", emperor::fuzzing::config);
}

#[test]
fn domains() {
    replay("domains", emperor::fuzzing::domains);
}

#[test]
fn front() {
    replay("front", emperor::fuzzing::front);
}

#[test]
fn proxy_frame() {
    replay("proxy_frame", emperor::fuzzing::proxy_frame);
}

#[test]
fn protocol() {
    replay("protocol", emperor::fuzzing::protocol);
}

#[test]
fn control() {
    replay("control", emperor::fuzzing::control);
}

#[test]
fn stats() {
    replay("stats", emperor::fuzzing::stats);
}

#[test]
fn mail_auth() {
    replay("mail_auth", emperor::fuzzing::mail_auth);
}

#[test]
fn metrics() {
    replay("metrics", emperor::fuzzing::metrics);
}
