//! Old instances on their way out: the previous process of an overlapping reload once the new one is
//! ready, a new one that failed to become ready, a container created ahead of time that no bridge will
//! start. They stop in the background, so the actor keeps serving commands meanwhile, and the actor
//! waits for all of them before it ends (a vassal is gone only when everything it started is).

use std::time::Duration;

use log::{info, warn};
use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::launch::{Proc, write_all_now};
use crate::protocol::EmperorMsg;

#[derive(Debug)]
pub struct Retiring {
    tasks: Vec<JoinHandle<()>>,
    /// A retiring process has exited (true: it was a bridge, so the container name is free).
    done: (mpsc::UnboundedSender<bool>, mpsc::UnboundedReceiver<bool>),
}

impl Default for Retiring {
    fn default() -> Self {
        Retiring {
            tasks: Vec::new(),
            done: mpsc::unbounded_channel(),
        }
    }
}

impl Retiring {
    /// Stops `old` in the background: byte 2 to a speaker, SIGTERM to a bridge, `stop_signal` otherwise;
    /// its process group is killed when `stop_timeout` runs out.
    pub fn retire(&mut self, name: &str, mut old: Proc, stop_timeout: Duration, stop_signal: Signal) {
        let name = name.to_owned();
        let done = self.done.0.clone();
        self.tasks.retain(|t| !t.is_finished());
        self.tasks.push(tokio::task::spawn_local(async move {
            // The whole Proc lives until the end: a bridge reads EOF on its lifeline as "the emperor is gone".
            let exit = stop(&name, "the old instance", &mut old, stop_timeout, stop_signal).await;
            match exit {
                Ok(e) => info!("[{name}] the old instance (pid {}) exited {e}", old.child.pid()),
                Err(e) => warn!("[{name}] cannot wait for the old instance: {e}"),
            }
            let _ = done.send(old.bridged);
        }));
    }

    /// Some other clean-up the actor must wait for before it ends.
    pub fn push(&mut self, task: JoinHandle<()>) {
        self.tasks.retain(|t| !t.is_finished());
        self.tasks.push(task);
    }

    /// The next retired process that exited: whether it was a bridge.
    pub async fn exited(&mut self) -> bool {
        match self.done.1.recv().await {
            Some(bridged) => bridged,
            // Never: we hold a sender.
            None => std::future::pending().await,
        }
    }

    /// Waits for every retiring process and clean-up.
    pub async fn finish(&mut self) {
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

/// Stops `p` and waits for it: byte 2 to a speaker, SIGTERM to a bridge (which hands the vassal's own stop
/// signal to `docker stop`), `stop_signal` otherwise; its process group is killed when `stop_timeout` runs out.
/// `what` names it in the log line of that kill. Shared with the replicas' supervisors (`replicas.rs`).
pub async fn stop(
    name: &str,
    what: &str,
    p: &mut Proc,
    stop_timeout: Duration,
    stop_signal: Signal,
) -> std::io::Result<crate::emperor::spawn::Exit> {
    match &p.control {
        Some(c) if p.speaks && !p.bridged => {
            let _ = write_all_now(c, &[EmperorMsg::GracefulStop.byte()]);
        }
        _ => p.child.signal(if p.bridged { Signal::SIGTERM } else { stop_signal }),
    }
    match tokio::time::timeout(stop_timeout, p.child.wait()).await {
        Ok(r) => r,
        Err(_) => {
            warn!(
                "[{name}] {what} did not stop within {:.1}s; killing it",
                stop_timeout.as_secs_f64()
            );
            p.child.kill_group();
            p.child.wait().await
        }
    }
}
