//! Removing containers that an earlier run of this emperor left behind and no vassal owns any more.
//!
//! Containers carry `emperor.instance=<id>` (derived from the vassals directory) and
//! `emperor.vassal=<name>`. At start-up the emperor removes every container of its instance whose
//! vassal is not a current Docker vassal: its file was deleted while the emperor was down, or a
//! crash left it behind. Containers of current vassals are left to their bridges, which replace them.
//! Containers of other emperors (other directories) and foreign containers are never touched.
//!
//! The same goes for the instance's run directory (`<run-dir>/<instance>/`): bridges that were killed
//! (SIGKILL, a crash) leave their empty proxy-socket directories, stats records and shim copies
//! behind, which [`run_dir_leftovers`] removes before any bridge of this run exists.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bollard::query_parameters::ListContainersOptions;
use log::{info, warn};

use crate::cli::EmperorOptions;
use crate::docker::{self, LABEL_INSTANCE, LABEL_VASSAL, daemon};

/// Removes empty directories and the records of bridges that no longer run from the instance's run
/// directory. Must run before this emperor spawns its first bridge; a directory still in use by a
/// bridge of an earlier run is not empty (its socket) and stays, and a container created ahead of
/// time gets its directory back from its bridge before it starts.
pub fn run_dir_leftovers(opts: &EmperorOptions) {
    let dir = opts.run_dir.join(&opts.instance);
    let Ok(entries) = std::fs::read_dir(&dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            // A proxy-socket directory; remove_dir refuses one that is not empty.
            let _ = std::fs::remove_dir(&path);
            continue;
        }
        let dead_record = name
            .strip_prefix("bridge-")
            .and_then(|r| r.split('.').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !alive(pid));
        // A private copy of a replaced emperor binary that a killed bridge mounted as the shim; a
        // container still running from it keeps its own reference to the file.
        let shim_copy = name.ends_with(".shim");
        if dead_record || shim_copy {
            let _ = std::fs::remove_file(&path);
        }
    }
    let _ = std::fs::remove_dir(&dir);
}

/// Whether the process runs (a zombie, killed and not yet reaped, does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        // `pid (comm) state ...`; comm may contain anything, so look after its last ')'.
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

pub async fn orphans(opts: Arc<EmperorOptions>, current: HashSet<String>) {
    let docker = daemon::client(opts.docker_daemon_socket.as_deref(), daemon::EMPEROR_TIMEOUT);
    let docker = match docker {
        Ok(d) => match d.negotiate_version().await {
            Ok(d) => d,
            Err(e) => return warn!("cannot reap orphaned containers: the Docker daemon did not answer: {e}"),
        },
        Err(e) => return warn!("cannot reap orphaned containers: {e}"),
    };
    let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_INSTANCE}={}", opts.instance)])]);
    let list = ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    };
    let containers = match docker.list_containers(Some(list)).await {
        Ok(c) => c,
        Err(e) => return warn!("cannot list this emperor's containers: {e}"),
    };
    for c in containers {
        let vassal = c
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_VASSAL))
            .cloned()
            .unwrap_or_default();
        if current.contains(&vassal) {
            continue;
        }
        let Some(id) = c.id else { continue };
        match docker::remove(&docker, &id).await {
            Ok(()) => {
                docker::labels::forget_cidfile(&c.labels.unwrap_or_default(), &id);
                info!("[{vassal}] removed orphaned container {}", docker::short(&id));
            }
            Err(e) => warn!("[{vassal}] cannot remove orphaned container {id}: {e}"),
        }
    }
}
