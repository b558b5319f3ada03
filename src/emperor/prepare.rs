//! Creating an on-demand Docker vassal's container ahead of time, while it waits for its first
//! connection, so that the connection waits for `docker start` only.
//!
//! A cold start is dominated by `docker start` (runc: namespaces, mounts, cgroup, exec), which nothing
//! outside Docker can shorten; what the emperor can take off the client's wait is everything before it:
//! the image inspect, the stale-container checks and above all `docker create` (the container's
//! writable layer), together a few tens of milliseconds. So when an on-demand vassal enters `waiting`,
//! its actor runs [`prepare`] in the background: it builds exactly the create body the bridge would
//! build (the same pure function, `docker::plan`), labels it with its fingerprint and creates
//! the container under the vassal's name without starting it. The bridge, spawned on the first
//! connection, starts that container as it is if its fingerprint still matches (a rebuilt image, an
//! edited file or a new emperor binary all change it) and replaces it otherwise. A connection that
//! arrives while the container is being created waits for the creation to finish, so two creations
//! never race for the name.
//!
//! The emperor talks to Docker itself here, as it does for pause/resume, rather than through a bridge:
//! no process, no fds to hand over, and a failure (missing image, daemon down) is only a missed
//! shortcut; the bridge reports it properly when the vassal really starts. A container created ahead
//! of time and never started is removed when the vassal goes away or the emperor stops ([`discard`]).

use std::collections::HashMap;
use std::path::Path;

use bollard::models::ContainerStateStatusEnum;
use bollard::query_parameters::{CreateContainerOptions, InspectContainerOptions};

use crate::cli::EmperorOptions;
use crate::config::VassalConfig;
use crate::docker::{self, daemon};

/// How long a creation ahead of time may take before a connection waiting for it starts the vassal
/// without it (the bridge then creates the container itself, or takes this one if it appeared).
pub const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Creates the vassal's container without starting it, unless an identical one already waits.
/// Returns its id, or `None` when there is nothing to gain (a foreign or running container holds the
/// name, or the emperor binary was replaced on disk and the bridge must mount a copy of it).
pub async fn prepare(
    opts: &EmperorOptions,
    cfg: &VassalConfig,
    socket_names: Vec<String>,
) -> Result<Option<String>, String> {
    let Some(d) = &cfg.docker else {
        return Ok(None);
    };
    let shim_host = std::env::current_exe().map_err(|e| e.to_string())?;
    if shim_host.to_string_lossy().ends_with(" (deleted)") {
        return Ok(None);
    }
    let docker = daemon::client(opts.docker_daemon_socket.as_deref(), daemon::EMPEROR_TIMEOUT)
        .map_err(|e| e.to_string())?
        .negotiate_version()
        .await
        .map_err(|e| format!("Docker: {e}"))?;
    let image = docker
        .inspect_image(&d.image)
        .await
        .map_err(|e| format!("image {:?}: {e}", d.image))?;
    let wrapper = opts.wrapper.to_string_lossy();
    let inputs = docker::Inputs {
        instance: &opts.instance,
        extra_labels: &opts.docker_labels,
        shim_host: &shim_host,
        run_dir: &opts.run_dir,
        create_name: &d.container_name,
        wrapper: &wrapper,
        socket_names,
        has_config: docker::is_uwsgi(cfg),
    };
    let Some(docker::Plan {
        proxy,
        body,
        fingerprint,
    }) = docker::plan(cfg, d, &image, inputs)
    else {
        return Ok(None);
    };

    match docker
        .inspect_container(&d.container_name, None::<InspectContainerOptions>)
        .await
    {
        Ok(c) if docker::reusable(&c, &cfg.name, &opts.instance, &fingerprint) => return Ok(c.id),
        Ok(c) => {
            // Only an unstarted leftover of this vassal is ours to replace here; anything else is for
            // the bridge to sort out (and report) when the vassal really starts.
            let labels: HashMap<String, String> = c.config.and_then(|c| c.labels).unwrap_or_default();
            let ours = labels.get(docker::LABEL_VASSAL) == Some(&cfg.name)
                && labels.get(docker::LABEL_INSTANCE) == Some(&opts.instance);
            let created = c.state.and_then(|s| s.status) == Some(ContainerStateStatusEnum::CREATED);
            match c.id {
                Some(id) if ours && created => docker::remove(&docker, &id).await.map_err(|e| e.to_string())?,
                _ => return Ok(None),
            }
        }
        Err(e) if docker::is_not_found(&e) => {}
        Err(e) => return Err(e.to_string()),
    }
    // A bind mount's source must exist at create time.
    if proxy.private {
        docker::make_proxy_dir(&proxy.host_dir).map_err(|e| format!("{}: {e}", proxy.host_dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&proxy.host_dir, std::fs::Permissions::from_mode(0o755));
    }
    let create = CreateContainerOptions {
        name: Some(d.container_name.clone()),
        ..Default::default()
    };
    match docker.create_container(Some(create), body).await {
        Ok(r) => Ok(Some(r.id)),
        // Someone else took the name meanwhile; the bridge will deal with it.
        Err(e) if docker::is_conflict(&e) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Removes a container created ahead of time, if it was never started; with `running`, also one that runs
/// (a stopping vassal whose bridge died: nobody else would stop it), with its cidfile.
pub async fn discard(socket: Option<&Path>, id: &str, running: bool) -> Result<(), String> {
    let docker = daemon::client(socket, daemon::EMPEROR_TIMEOUT).map_err(|e| e.to_string())?;
    let c = match docker.inspect_container(id, None::<InspectContainerOptions>).await {
        Ok(c) => c,
        Err(e) if docker::is_not_found(&e) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    if !running && c.state.and_then(|s| s.status) != Some(ContainerStateStatusEnum::CREATED) {
        return Ok(());
    }
    docker::remove(&docker, id).await.map_err(|e| e.to_string())?;
    docker::labels::forget_cidfile(&c.config.and_then(|c| c.labels).unwrap_or_default(), id);
    // The private proxy-socket directory made for it (empty once the fds were handed over, or if it never
    // started; remove_dir refuses anything else).
    for m in c.mounts.into_iter().flatten() {
        if m.destination.as_deref() == Some(docker::PROXY_DIR)
            && let Some(dir) = m.source
        {
            let _ = std::fs::remove_dir(dir);
        }
    }
    Ok(())
}
