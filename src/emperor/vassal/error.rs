//! What can go wrong for one vassal: its own problem, never the emperor's. Every variant ends in a log
//! line with the vassal's name and, where it stops a start, in a throttled retry; none of them can stop
//! the emperor or touch another vassal (the emperor's own fatal errors are a different type).

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum VassalError {
    #[error("no valid config")]
    NoConfig,
    /// A socket the file declares cannot be bound (in use, bad permissions, a non-socket file in the way).
    #[error("{0}")]
    Socket(io::Error),
    /// A pipe or socketpair between the emperor and the instance (`what`: "control channel", ...).
    #[error("cannot {verb} the {what}: {source}")]
    Channel {
        verb: &'static str,
        what: &'static str,
        source: io::Error,
    },
    /// fork/exec of the command or of the bridge.
    #[error("{0}")]
    Spawn(io::Error),
    /// A Docker call made by the emperor itself (pause, unpause) for this vassal.
    #[error("{0}")]
    Docker(String),
}

impl VassalError {
    /// Creating a channel failed.
    pub fn create(what: &'static str) -> impl FnOnce(io::Error) -> VassalError {
        move |source| VassalError::Channel {
            verb: "create",
            what,
            source,
        }
    }

    /// Setting up a channel's emperor end failed.
    pub fn set_up(what: &'static str) -> impl FnOnce(io::Error) -> VassalError {
        move |source| VassalError::Channel {
            verb: "set up",
            what,
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_the_ones_the_log_always_had() {
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(
            VassalError::create("control channel")(e).to_string(),
            "cannot create the control channel: Too many open files (os error 24)"
        );
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(
            VassalError::set_up("config channel")(e).to_string(),
            "cannot set up the config channel: Too many open files (os error 24)"
        );
        assert_eq!(VassalError::NoConfig.to_string(), "no valid config");
    }
}
