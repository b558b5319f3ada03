//! What a bridge tells the emperor's stats about its container: a small JSON file,
//! `<run-dir>/<instance>/bridge-<bridge pid>.json`, holding the container's id, its init pid, when it
//! started and when it received its sockets (the hand-over).
//!
//! Why a file: the emperor knows a Docker vassal's container *name* and its bridge's pid, but its
//! cgroup (for memory and CPU) is named after the container's *id* and the daemon's cgroup driver,
//! and asking the daemon for every vassal of every stats document would take a round trip per
//! vassal. The bridge learns the id and the init pid anyway (it checks the proxy connection's
//! `SO_PEERCRED` against that pid), so it writes them down; the emperor then reads
//! `/proc/<init pid>/cgroup`, which names the cgroup whatever the driver and cgroup version. The
//! control channel cannot carry this: it is the vassal's uWSGI channel (single bytes), and any byte
//! on it would make the emperor take a silent vassal for a uWSGI speaker.
//!
//! The file is named by the bridge's pid, which the emperor has as the vassal's `pid`; it is written
//! whole (a temporary file renamed over it), and removed when the bridge ends. A file left by a
//! bridge that was killed is removed by the next bridge with the same pid before anything else, and
//! the emperor ignores one older than its vassal's last spawn.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The file of the bridge with pid `bridge_pid`.
pub fn path(run_dir: &Path, instance: &str, bridge_pid: i32) -> PathBuf {
    run_dir.join(instance).join(format!("bridge-{bridge_pid}.json"))
}

/// Where a bridge that gives up leaves its reason (`bridge-<pid>.verdict`), for the emperor to log: the emperor
/// sees every retry's outcome and can say a repeated reason (a missing image, no default bridge) once instead of
/// once per attempt, which a bridge, living for one attempt, cannot. Removed by the emperor once read; a stale
/// one is swept at start-up with the records.
pub fn verdict_path(run_dir: &Path, instance: &str, bridge_pid: i32) -> PathBuf {
    run_dir.join(instance).join(format!("bridge-{bridge_pid}.verdict"))
}

/// Writes this bridge's verdict; false if it could not (then the bridge logs it itself).
pub fn write_verdict(path: &Path, message: &str) -> bool {
    path.parent().is_some_and(|d| std::fs::create_dir_all(d).is_ok()) && std::fs::write(path, message).is_ok()
}

/// Reads and removes a bridge's verdict, if it left one.
pub fn take_verdict(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let _ = std::fs::remove_file(path);
    Some(text.trim_end().to_owned()).filter(|t| !t.is_empty())
}

/// The contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The container's full id.
    pub id: String,
    /// The container's init process, as the host sees it.
    pub init_pid: i64,
    /// When the container was started (UNIX milliseconds).
    pub started_ms: u64,
    /// When the container's entrypoint received its sockets (UNIX milliseconds).
    pub handover_ms: Option<u64>,
}

impl Info {
    pub fn to_json(&self) -> Vec<u8> {
        let v = json!({
            "id": self.id,
            "init_pid": self.init_pid,
            "started_ms": self.started_ms,
            "handover_ms": self.handover_ms,
        });
        v.to_string().into_bytes()
    }

    pub fn parse(text: &[u8]) -> Option<Info> {
        let v: Value = serde_json::from_slice(text).ok()?;
        Some(Info {
            id: v["id"].as_str()?.to_string(),
            init_pid: v["init_pid"].as_i64()?,
            started_ms: v["started_ms"].as_u64()?,
            handover_ms: v["handover_ms"].as_u64(),
        })
    }

    /// Reads the file; `None` if there is none (no bridge, or not started yet) or it is not ours.
    pub fn read(path: &Path) -> Option<Info> {
        Info::parse(&std::fs::read(path).ok()?)
    }

    /// Writes the file whole: readers see the old contents or the new, never a part.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = temp_path(path);
        std::fs::write(&tmp, self.to_json())?;
        std::fs::rename(&tmp, path)
    }
}

/// Where [`Info::write`] writes before it renames (left behind only if that write failed).
pub fn temp_path(path: &Path) -> PathBuf {
    path.with_extension("json.tmp")
}

/// UNIX milliseconds now.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_path() {
        let i = Info {
            id: "0123456789abcdef".into(),
            init_pid: 4242,
            started_ms: 1_700_000_000_000,
            handover_ms: None,
        };
        assert_eq!(Info::parse(&i.to_json()), Some(i.clone()));
        let done = Info {
            handover_ms: Some(1_700_000_000_350),
            ..i
        };
        assert_eq!(Info::parse(&done.to_json()), Some(done));
        assert_eq!(Info::parse(b"{\"id\": 1}"), None);
        assert_eq!(Info::parse(b"not json"), None);
        assert_eq!(
            path(Path::new("/run/emperor"), "abc", 17),
            PathBuf::from("/run/emperor/abc/bridge-17.json")
        );
    }
}
