//! The bridge's requests about its one container: freeing the vassal's name, creating (or taking the one
//! made ahead of time), attaching, starting, stopping and renaming.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, ContainerInspectResponse};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, RenameContainerOptions,
    StopContainerOptions,
};
use log::{debug, info, warn};

use super::{Bridge, Fail, Target, attach};
use crate::config::VassalConfig;
use crate::docker::{self, record, short};

impl Bridge {
    /// Frees the vassal's name for this bridge's container, and returns the container the emperor created
    /// ahead of time (an on-demand vassal) if it is exactly this one, to start as it is.
    ///
    /// Only a bridge that starts alone removes the vassal's stale containers (all of this emperor's,
    /// whatever their name); in an overlap the others are the instances still serving.
    pub(super) async fn clear_the_name(
        &self,
        docker: &Docker,
        t: &Target,
        fingerprint: &str,
    ) -> Result<Option<String>, Fail> {
        if self.args.overlap {
            return Ok(None);
        }
        let existing = self.existing(docker, &t.d.container_name).await?;
        let found = existing
            .as_ref()
            .filter(|c| docker::reusable(c, &t.cfg.name, &self.args.instance, fingerprint))
            .and_then(|c| c.id.clone());
        if let Some(stale) = existing.filter(|_| found.is_none()) {
            self.remove_stale(docker, &t.d.container_name, stale).await?;
        }
        self.remove_stale_labelled(docker, &t.cfg.name, found.as_deref())
            .await?;
        Ok(found)
    }

    /// Creates the container, unless one made ahead of time is to be started instead.
    pub(super) async fn create(
        &self,
        docker: &Docker,
        t: &Target,
        ready_made: Option<String>,
        body: ContainerCreateBody,
        fingerprint: &str,
    ) -> Result<String, Fail> {
        if let Some(id) = ready_made {
            debug!(
                "[{}] bridge: starting container {}, created ahead of time",
                self.args.name,
                short(&id)
            );
            return Ok(id);
        }
        let opts = CreateContainerOptions {
            name: Some(t.create_name.clone()),
            ..Default::default()
        };
        let refused = |e: &bollard::errors::Error| Fail::Create {
            name: t.d.container_name.clone(),
            message: docker::message(e),
        };
        match docker.create_container(Some(opts), body).await {
            Ok(created) => Ok(created.id),
            // The emperor's creation ahead of time finished just after we looked: use it if it fits.
            Err(e) if docker::is_conflict(&e) && !self.args.overlap => self
                .ready_made(docker, &t.d.container_name, &t.cfg.name, fingerprint)
                .await
                .ok_or_else(|| refused(&e)),
            Err(e) => Err(refused(&e)),
        }
    }

    /// Attaches before start: with `logs` nothing the container prints is lost. Raw, over the
    /// daemon's unix socket (attach.rs says why); bollard's attach for a daemon over TCP. Without `logs`
    /// (attaching again after the daemon came back) only what it prints from now on.
    pub(super) async fn attach(&mut self, docker: &Docker, id: &str, logs: bool) -> Result<(), Fail> {
        let output = match attach::daemon_socket() {
            Some(sock) => {
                let (stream, first) = attach::attach(&sock, id, logs).await.map_err(|source| Fail::Attach {
                    id: id.to_string(),
                    source,
                })?;
                tokio::spawn(attach::forward(stream, first))
            }
            None => {
                let stream = attach::attach_bollard(docker, id, logs)
                    .await
                    .map_err(|e| Fail::docker("attach to the container", &e))?;
                tokio::spawn(attach::forward_output(stream))
            }
        };
        self.output = Some(output);
        Ok(())
    }

    /// Starts the container and records it for the emperor's stats; the record is returned for the
    /// hand-over time.
    pub(super) async fn start(&self, docker: &Docker, t: &Target, id: &str) -> Result<record::Info, Fail> {
        let name = &self.args.name;
        docker.start_container(id, None).await.map_err(|e| Fail::Start {
            name: t.d.container_name.clone(),
            message: docker::message(&e),
        })?;
        let inspect = docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| Fail::docker("inspect the container", &e))?;
        let init_pid = inspect.state.and_then(|s| s.pid).unwrap_or(0);
        info!("[{name}] bridge: container {} started (pid {init_pid})", short(id));
        let record = record::Info {
            id: id.to_string(),
            init_pid,
            started_ms: record::unix_ms(),
            handover_ms: None,
        };
        if let Err(e) = record.write(&self.info_path) {
            warn!(
                "[{name}] bridge: cannot write {} (the stats will lack its memory and CPU): {e}",
                self.info_path.display()
            );
        }
        Ok(record)
    }

    /// `docker stop` with the vassal's stop signal and timeout (Docker SIGKILLs after it). Without
    /// `stop-signal`, the daemon sends the container's own, which the plan took from the image.
    pub(super) async fn stop(&self, docker: &Docker, id: &str, cfg: &VassalConfig) {
        let t = i32::try_from(self.args.stop_timeout).unwrap_or(i32::MAX);
        let why = match (&cfg.stop_signal, &self.stop_signal) {
            (Some(_), _) => "stop-signal",
            (None, Some(_)) => "the image's STOPSIGNAL",
            (None, None) => "Docker's default",
        };
        info!(
            "[{}] bridge: stopping container {} with {} ({why}), forced after {t} s",
            self.args.name,
            short(id),
            self.stop_signal.as_deref().unwrap_or("SIGTERM"),
        );
        let opts = StopContainerOptions {
            t: Some(t),
            signal: cfg.stop_signal.map(|s| s.as_str().to_string()),
        };
        match docker.stop_container(id, Some(opts)).await {
            Ok(()) => {}
            Err(e) if matches!(docker::status(&e), Some(304 | 404)) => {}
            Err(e) => warn!("[{}] bridge: cannot stop container {}: {e}", self.args.name, short(id)),
        }
    }

    /// Removes every container of this emperor for this vassal (left by a bridge that could not clean
    /// up, e.g. one killed during an overlapping reload).
    async fn remove_stale_labelled(&self, docker: &Docker, vassal: &str, keep: Option<&str>) -> Result<(), Fail> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{}={vassal}", docker::LABEL_VASSAL),
                format!("{}={}", docker::LABEL_INSTANCE, self.args.instance),
            ],
        )]);
        let list = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let found = docker
            .list_containers(Some(list))
            .await
            .map_err(|e| Fail::docker("list stale containers", &e))?;
        let replica = self.args.replica.map(|k| k.to_string());
        for c in found {
            let Some(id) = c.id else { continue };
            // A sibling replica's container serves: only this replica's own are stale.
            let theirs = c.labels.as_ref().and_then(|l| l.get(docker::LABEL_REPLICA));
            if keep == Some(id.as_str()) || theirs != replica.as_ref() {
                continue;
            }
            info!("[{}] bridge: removing stale container {}", self.args.name, short(&id));
            docker::remove(docker, &id)
                .await
                .map_err(|e| Fail::docker("remove a stale container", &e))?;
            docker::labels::forget_cidfile(&c.labels.unwrap_or_default(), &id);
        }
        Ok(())
    }

    /// The id of a container the emperor created ahead of time (on-demand vassals) under the vassal's
    /// name, if it is exactly the one this bridge would create and was never started.
    async fn ready_made(
        &self,
        docker: &Docker,
        container_name: &str,
        vassal: &str,
        fingerprint: &str,
    ) -> Option<String> {
        let c = self.existing(docker, container_name).await.ok()??;
        if docker::reusable(&c, vassal, &self.args.instance, fingerprint) {
            c.id
        } else {
            None
        }
    }

    /// The container that holds the vassal's name, if any.
    async fn existing(&self, docker: &Docker, container_name: &str) -> Result<Option<ContainerInspectResponse>, Fail> {
        match docker
            .inspect_container(container_name, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(Some(c)),
            Err(e) if docker::is_not_found(&e) => Ok(None),
            Err(e) => Err(Fail::docker("look for a stale container", &e)),
        }
    }

    /// Removes a container left with the vassal's name by an earlier emperor; refuses a foreign one, and one
    /// of another emperor that is still running.
    async fn remove_stale(
        &self,
        docker: &Docker,
        container_name: &str,
        existing: ContainerInspectResponse,
    ) -> Result<(), Fail> {
        let labels: HashMap<String, String> = existing.config.and_then(|c| c.labels).unwrap_or_default();
        if !labels.contains_key(docker::LABEL_VASSAL) {
            return Err(Fail::Foreign(container_name.to_string()));
        }
        // Another emperor's, and that emperor runs: not ours to replace (it would replace ours in turn).
        if let Some(other) = labels.get(docker::LABEL_INSTANCE).filter(|i| **i != self.args.instance)
            && let Some(owner) = docker::owner::alive(&self.args.run_dir, other)
        {
            return Err(Fail::Owned {
                name: container_name.to_string(),
                owner,
            });
        }
        let id = existing.id.unwrap_or_else(|| container_name.to_string());
        info!("[{}] bridge: removing stale container {}", self.args.name, short(&id));
        docker::remove(docker, &id)
            .await
            .map_err(|e| Fail::docker("remove the stale container", &e))?;
        docker::labels::forget_cidfile(&labels, &id);
        Ok(())
    }
}

/// Gives the container of an overlapping reload the vassal's own name, once the old container is gone
/// (it may still be being removed: retried for a few seconds).
/// Returns whether the container now has the name.
pub(super) async fn rename(docker: &Docker, id: &str, to: &str, vassal: &str) -> bool {
    for _ in 0..20 {
        match docker
            .rename_container(id, RenameContainerOptions { name: to.to_string() })
            .await
        {
            Ok(()) => {
                debug!("[{vassal}] bridge: container {} is now {to}", short(id));
                return true;
            }
            Err(e) if docker::is_conflict(&e) => tokio::time::sleep(Duration::from_millis(250)).await,
            Err(e) => {
                warn!("[{vassal}] bridge: cannot rename container {} to {to}: {e}", short(id));
                return false;
            }
        }
    }
    warn!(
        "[{vassal}] bridge: container {} keeps its temporary name; {to} is still taken",
        short(id)
    );
    false
}
