//! What asks a bridge to stop its container, in one place: SIGTERM and SIGINT (the emperor stopping the
//! vassal, or `PR_SET_PDEATHSIG` when the emperor dies) and EOF on the lifeline (the emperor is gone).
//! SIGUSR1 (the vassal's name is free after an overlapping reload) is kept beside them.
//!
//! Every wait of the bridge (the hand-over, the container's life, a Docker daemon that went away) races
//! the same request; keeping the sources together lets each wait say `stop.requested()` once, and keeps
//! the lifeline's future from being polled again after it completed.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Why the bridge was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Request {
    /// SIGTERM or SIGINT.
    Signal,
    /// EOF on the lifeline: the emperor is gone.
    EmperorGone,
}

/// The stop requests.
pub(super) struct Stop {
    term: Signal,
    int: Signal,
    lifeline: Option<Pin<Box<dyn Future<Output = ()>>>>,
}

/// Everything the bridge listens to besides Docker.
pub(super) struct Signals {
    pub stop: Stop,
    /// SIGUSR1: take the vassal's name (overlapping reloads).
    pub usr1: Signal,
}

impl Signals {
    /// Installs the handlers; before anything else, since SIGUSR1's default action would kill the bridge.
    pub fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            stop: Stop {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
                lifeline: None,
            },
            usr1: signal(SignalKind::user_defined1())?,
        })
    }
}

impl Stop {
    /// Watches the lifeline pipe's read end from now on.
    pub fn watch_lifeline(&mut self, fd: Option<OwnedFd>) {
        let Some(rx) = fd.and_then(|fd| tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok()) else {
            return;
        };
        self.lifeline = Some(Box::pin(async move {
            let _ = rx.readable().await;
        }));
    }

    /// Completes at the next stop request. Cancel-safe. A lifeline that reported EOF reports it once:
    /// later calls wait for signals only.
    pub async fn requested(&mut self) -> Request {
        let Stop { term, int, lifeline } = self;
        let eof = async {
            match lifeline.as_mut() {
                Some(eof) => eof.await,
                None => std::future::pending().await,
            }
        };
        let request = tokio::select! {
            _ = term.recv() => Request::Signal,
            _ = int.recv() => Request::Signal,
            () = eof => Request::EmperorGone,
        };
        if request == Request::EmperorGone {
            self.lifeline = None;
        }
        request
    }
}
