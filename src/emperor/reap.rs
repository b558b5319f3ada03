//! Removing containers that an earlier run of this emperor left behind and no vassal owns any more.
//!
//! Containers carry `emperor.instance=<id>` (derived from the vassals directory) and
//! `emperor.vassal=<name>`. At start-up the emperor removes every container of its instance whose
//! vassal is not a current Docker vassal: its file was deleted while the emperor was down, or a
//! crash left it behind. Containers of current vassals are left to their bridges, which replace them.
//! Containers of other emperors (other directories) and foreign containers are never touched.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bollard::Docker;
use bollard::query_parameters::ListContainersOptions;
use log::{info, warn};

use crate::bridge::docker::{LABEL_INSTANCE, LABEL_VASSAL};
use crate::cli::EmperorOptions;

pub async fn orphans(opts: Arc<EmperorOptions>, current: HashSet<String>) {
    let docker = match &opts.docker_daemon_socket {
        Some(sock) => Docker::connect_with_unix(&sock.to_string_lossy(), 30, bollard::API_DEFAULT_VERSION),
        None => Docker::connect_with_local_defaults(),
    };
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
        match crate::bridge::docker::remove(&docker, &id).await {
            Ok(()) => info!("[{vassal}] removed orphaned container {}", id.get(..12).unwrap_or(&id)),
            Err(e) => warn!("[{vassal}] cannot remove orphaned container {id}: {e}"),
        }
    }
}
