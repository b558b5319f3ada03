//! What the main loop, the control socket and the stats server say to a vassal's actor.
//!
//! These types live apart from the actor so that the servers that talk to actors (`control.rs`,
//! `stats.rs`) depend on the messages only, not on the actor's internals.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::config::{ConfigError, VassalConfig};
use crate::emperor::control::Op;
use crate::emperor::stats::VassalStats;

/// What the main loop tells an actor.
#[derive(Debug)]
pub enum Command {
    /// The file was added or changed; parsed once by the main loop.
    Update(Result<Arc<VassalConfig>, Arc<ConfigError>>),
    /// The file is gone.
    Remove,
    /// The emperor is stopping.
    Shutdown,
    /// SIGHUP.
    Reload,
    /// SIGURG.
    ClearThrottle,
    /// SIGUSR1: log one status line.
    Status,
    /// The stats server wants the vassal's state.
    Snapshot(oneshot::Sender<VassalStats>),
    /// `emperor restart|stop|start` from the control socket; answered with the reply line's text.
    Control(Op, oneshot::Sender<Result<String, String>>),
}

/// An actor's state changed (its name, see [`crate::emperor::fsm::State::name`]); the main loop keeps counts for
/// systemd.
pub type StateReport = (String, &'static str);

/// The main loop's end of an actor.
#[derive(Debug)]
pub struct VassalHandle {
    pub tx: mpsc::UnboundedSender<Command>,
    /// Identifies the actor's task in the emperor's `JoinSet`, also when it panicked.
    pub task: tokio::task::Id,
}
