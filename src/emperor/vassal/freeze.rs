//! Freezing and thawing the current instance (`idle-action = pause`, `prewarm`): SIGSTOP/SIGCONT of a
//! process vassal's process group, `docker pause`/`unpause` (the cgroup freezer) of a container, one
//! Docker call after the other.
//!
//! A freeze is decided on what the emperor saw a moment before (nothing open, nothing arriving), and an
//! app blocked in `accept` can take a connection in between; frozen with it, that client would wait for
//! some later connection to thaw the app. So once a pause has taken effect ([`Freezer::frozen`]: every
//! thread of the process group stopped, or `docker pause` returned, which runc does once the cgroup is
//! frozen), the actor counts the connections open on the vassal's sockets once more and thaws the
//! instance if there is any. A connection that comes later waits in the backlog, where the activation
//! watch (`watch.rs`) sees it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::warn;
use nix::sys::signal::Signal;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::error::VassalError;
use super::launch::Instance;
use crate::emperor::listening;

/// How long a stopped process group may take to show every thread stopped before the check runs anyway
/// (a thread in uninterruptible sleep stops only once it wakes).
const STOP_WAIT: Duration = Duration::from_secs(1);
/// How often /proc is read meanwhile.
const STOP_POLL: Duration = Duration::from_millis(1);

/// What is frozen: a process group, or a container.
pub enum Target<'a> {
    Group(&'a dyn Instance),
    Container {
        /// The Docker daemon's socket (`--docker-daemon-socket`), if not the default.
        daemon: Option<PathBuf>,
        container: String,
    },
}

/// The pauses and resumes of one vassal.
#[derive(Debug, Default)]
pub struct Freezer {
    /// The last Docker pause or unpause still in flight, so the next one runs after it.
    last: Option<JoinHandle<()>>,
    /// Completes once the latest pause has taken effect; `None` when no pause awaits that.
    frozen: Option<oneshot::Receiver<()>>,
}

impl Freezer {
    /// Freezes (`pause`) or thaws `target`; `name` is the vassal's, for the log.
    pub fn set(&mut self, name: &str, target: Target<'_>, pause: bool) {
        let (done, frozen) = oneshot::channel();
        self.frozen = pause.then_some(frozen);
        match target {
            Target::Group(child) => {
                child.signal_group(if pause { Signal::SIGSTOP } else { Signal::SIGCONT });
                if pause {
                    let pgid = child.pid().as_raw();
                    tokio::task::spawn_blocking(move || {
                        wait_stopped(pgid);
                        let _ = done.send(());
                    });
                }
            }
            Target::Container { daemon, container } => {
                let prev = self.last.take();
                let name = name.to_owned();
                self.last = Some(tokio::task::spawn_local(async move {
                    if let Some(prev) = prev {
                        let _ = prev.await;
                    }
                    if let Err(e) = docker_freeze(daemon.as_deref(), &container, pause).await {
                        warn!(
                            "[{name}] cannot {} container {container}: {e}",
                            if pause { "pause" } else { "unpause" }
                        );
                    }
                    let _ = done.send(());
                }));
            }
        }
    }

    /// Completes once the latest pause has taken effect (also if it failed: the count after it is
    /// harmless); never, when no pause awaits that. Cancel-safe.
    pub async fn frozen(&mut self) {
        match &mut self.frozen {
            Some(rx) => {
                let _ = rx.await;
                self.frozen = None;
            }
            None => std::future::pending().await,
        }
    }
}

/// Waits, at most [`STOP_WAIT`], until every thread of the process group `pgid` is stopped (or gone).
fn wait_stopped(pgid: i32) {
    let until = Instant::now() + STOP_WAIT;
    while !group_stopped(pgid) && Instant::now() < until {
        std::thread::sleep(STOP_POLL);
    }
}

/// Whether no thread of `pgid`'s leader and its descendants in that group runs any more: each is
/// stopped, traced, a zombie or gone. (A member that left the leader's tree, an orphan reparented to
/// init, is not looked at.)
fn group_stopped(pgid: i32) -> bool {
    listening::tree(pgid).into_iter().all(|pid| {
        let in_group = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| stat_fields(&s))
            .is_some_and(|(_, pgrp)| pgrp == pgid);
        !in_group
            || listening::tasks(pid).into_iter().all(|tid| {
                std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
                    .ok()
                    .and_then(|s| stat_fields(&s))
                    .is_none_or(|(state, _)| matches!(state, 'T' | 't' | 'Z' | 'X'))
            })
    })
}

/// The state letter and process group of a `/proc/.../stat` line (`pid (comm) state ppid pgrp ...`;
/// comm may hold spaces and parentheses, so fields are counted after its last `)`).
fn stat_fields(text: &str) -> Option<(char, i32)> {
    let (_, rest) = text.rsplit_once(')')?;
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let pgrp = f.nth(1)?.parse().ok()?;
    Some((state, pgrp))
}

async fn docker_freeze(socket: Option<&std::path::Path>, container: &str, pause: bool) -> Result<(), VassalError> {
    let docker = crate::docker::daemon::client(socket, crate::docker::daemon::EMPEROR_TIMEOUT)
        .map_err(|e| VassalError::Docker(e.to_string()))?;
    let r = if pause {
        docker.pause_container(container).await
    } else {
        docker.unpause_container(container).await
    };
    r.map_err(|e| VassalError::Docker(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_state_and_group_past_a_comm_with_parentheses() {
        assert_eq!(stat_fields("42 (a) b) (c) T 1 40 40 0"), Some(('T', 40)));
        assert_eq!(stat_fields("42 (x) S 1"), None);
    }

    /// A child in its own process group: running it is not stopped; after SIGSTOP it is, and a pid
    /// that is gone counts as stopped.
    #[test]
    fn a_stopped_process_group_is_seen_stopped() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = i32::try_from(child.id()).unwrap();
        assert!(!group_stopped(pgid), "a sleeping process runs");
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), Signal::SIGSTOP).unwrap();
        let t0 = Instant::now();
        wait_stopped(pgid);
        assert!(group_stopped(pgid), "stopped after {:?}", t0.elapsed());
        assert!(t0.elapsed() < STOP_WAIT, "seen before the deadline");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(group_stopped(pgid), "gone counts as stopped");
    }
}
