//! One line when the Docker daemon goes away and one when it is back, for the whole emperor.
//!
//! Each bridge copes with a daemon that went away on its own (`bridge/outage.rs`): it waits, keeps a
//! container that live-restore kept, and says when the daemon lost one. What no bridge can say without
//! repeating it per vassal is the event itself, so the emperor follows the daemon too: it holds the
//! daemon's event stream (filtered to this emperor's containers, so it is quiet), whose end means the
//! daemon went away, then pings it until it answers again and says how long it was gone.
//!
//! Each time the daemon answers (the first time, and after each absence) the emperor reaps orphaned
//! containers: a vassal removed while the daemon was away leaves its container behind, since its bridge
//! could not remove it.

use bollard::Docker;
use bollard::query_parameters::EventsOptions;
use futures_util::StreamExt;
use log::{info, warn};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::docker::{LABEL_INSTANCE, daemon};

/// Starts following the daemon; a message arrives each time it answers (first, and after an absence).
pub fn start(socket: Option<std::path::PathBuf>, instance: String) -> mpsc::UnboundedReceiver<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::task::spawn_local(follow(socket, instance, tx));
    rx
}

async fn follow(socket: Option<std::path::PathBuf>, instance: String, answered: mpsc::UnboundedSender<()>) {
    let address = daemon::address(socket.as_deref());
    let mut said = false;
    // bollard makes no client for a socket that does not exist (yet): wait for it.
    let docker = loop {
        match daemon::client(socket.as_deref(), daemon::EMPEROR_TIMEOUT) {
            Ok(d) => break d,
            Err(e) if daemon::is_missing_socket(&e) => {
                if !said {
                    not_answering(&address);
                    said = true;
                }
                tokio::time::sleep(daemon::POLL).await;
            }
            Err(e) => return warn!("cannot follow the Docker daemon at {address}: {e}"),
        }
    };
    let mut first = true;
    let mut since = Instant::now();
    loop {
        // At the start, a daemon that does not answer is reported once; later its going away was.
        said |= wait_until_it_answers(&docker, &address, !first || said).await;
        if said {
            info!(
                "the Docker daemon at {address} answers again, after {:.1} s",
                since.elapsed().as_secs_f64()
            );
        }
        first = false;
        if answered.send(()).is_err() {
            return;
        }
        follow_events(&docker, &instance).await;
        // The stream may also end for a reason of its own: only a daemon that does not answer is gone.
        said = !daemon::answers(&docker).await;
        if said {
            since = Instant::now();
            warn!(
                "the Docker daemon at {address} went away; Docker vassals keep their containers where it keeps \
                 them (live-restore) and are restarted if it lost them, once it answers"
            );
        }
    }
}

/// Pings until the daemon answers; unless `quiet`, says once that it does not. Returns whether it said so.
async fn wait_until_it_answers(docker: &Docker, address: &str, quiet: bool) -> bool {
    let mut said = false;
    loop {
        if daemon::answers(docker).await {
            return said;
        }
        if !quiet && !said {
            not_answering(address);
            said = true;
        }
        tokio::time::sleep(daemon::POLL).await;
    }
}

/// Reads the daemon's events about this emperor's containers until the stream ends.
async fn follow_events(docker: &Docker, instance: &str) {
    let filters = std::collections::HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        ("label".to_string(), vec![format!("{LABEL_INSTANCE}={instance}")]),
    ]);
    let mut events = docker.events(Some(EventsOptions {
        filters: Some(filters),
        ..Default::default()
    }));
    while let Some(Ok(_)) = events.next().await {}
}

fn not_answering(address: &str) {
    warn!(
        "the Docker daemon at {address} does not answer; Docker vassals wait for it: start dockerd, or point \
         --docker-daemon-socket (or DOCKER_HOST) at it"
    );
}
