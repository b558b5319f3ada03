//! A Docker daemon that goes away is nobody's fault (DESIGN.md, "Faults"): the bridge keeps its vassal and
//! waits for the daemon instead of exiting as if the app had failed.
//!
//! - Before the container runs, a step the daemon did not answer is retried from the start once the
//!   daemon answers again (a half-made container is removed first).
//! - Once it runs, the container's wait stream breaking without a verdict means the daemon went away (or
//!   restarted). When it answers again, a container that still runs (the daemon has `live-restore`) is
//!   kept: a new wait, and the output attached again from now on. One that does not run any more was lost
//!   with the daemon: the bridge says so with its own exit status ([`crate::exit::Verdict::ContainerLost`]),
//!   which the emperor restarts at once, unthrottled.
//!
//! The daemon is asked with `/_ping` every [`daemon::POLL`] (a unix connect that fails costs microseconds),
//! so a daemon that comes back is seen within that.

use bollard::Docker;
use bollard::query_parameters::InspectContainerOptions;
use log::debug;

use super::stop::{Request, Stop};
use super::{Bridge, Fail};
use crate::docker::{self, daemon, short};

/// What became of the container while the daemon was away.
pub(super) enum After {
    /// It still runs; `stop`: a stop was requested meanwhile.
    Running { stop: Option<Request> },
    /// It exited with this code, and a stop had been requested anyway: nothing was lost.
    Stopped(i64),
}

impl Bridge {
    /// Waits until the daemon answers. `Err` with the request if the bridge is asked to stop meanwhile.
    pub(super) async fn daemon_back(&self, docker: &Docker, stop: &mut Stop) -> Result<(), Request> {
        let mut said = false;
        loop {
            if daemon::answers(docker).await {
                if said {
                    debug!("[{}] bridge: the Docker daemon answers again", self.args.name);
                }
                return Ok(());
            }
            if !said {
                debug!(
                    "[{}] bridge: the Docker daemon does not answer; waiting for it",
                    self.args.name
                );
                said = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(daemon::POLL) => {}
                r = stop.requested() => return Err(r),
            }
        }
    }

    /// The container's wait stream ended without a verdict. Waits for the daemon (a stop request meanwhile
    /// is remembered: the container can be stopped only once the daemon answers; the emperor kills the
    /// bridge if that takes longer than the vassal's stop timeout), then looks at the container.
    pub(super) async fn after_outage(&self, docker: &Docker, id: &str, stop: &mut Stop) -> Result<After, Fail> {
        let mut requested = None;
        loop {
            match self.daemon_back(docker, stop).await {
                Ok(()) => {}
                Err(r) => {
                    requested = Some(r);
                    continue;
                }
            }
            let state = match docker.inspect_container(id, None::<InspectContainerOptions>).await {
                Ok(c) => c.state.unwrap_or_default(),
                Err(e) if docker::is_not_found(&e) => {
                    return Err(Fail::ContainerLost {
                        id: id.to_string(),
                        how: "it is gone".into(),
                    });
                }
                // Gone again, or answering slowly: wait once more.
                Err(e) => {
                    debug!(
                        "[{}] bridge: cannot inspect container {}: {e}",
                        self.args.name,
                        short(id)
                    );
                    tokio::time::sleep(daemon::POLL).await;
                    continue;
                }
            };
            if state.running == Some(true) {
                return Ok(After::Running { stop: requested });
            }
            let code = state.exit_code.unwrap_or(-1);
            if requested.is_some() {
                return Ok(After::Stopped(code));
            }
            return Err(Fail::ContainerLost {
                id: id.to_string(),
                how: format!("it exited with code {code} (the daemon stops its containers unless it has live-restore)"),
            });
        }
    }
}
