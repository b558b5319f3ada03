//! [`Fatal`]: what stops the emperor. Everything else (a broken vassal file, a vassal that cannot
//! start, a Docker daemon that is away) is handled by the vassal's actor and never reaches this type.
//!
//! Each message is complete on its own (it names its cause): it is logged as the emperor's last line,
//! and the emperor exits 1.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("cannot open the vassals directory {}: {source}", .path.display())]
    VassalsDir { path: PathBuf, source: io::Error },
    /// An option's value that cannot be used: a path that cannot be made absolute, a socket that
    /// cannot be bound.
    #[error("{flag} {value}: {source}")]
    Flag {
        flag: &'static str,
        value: String,
        source: io::Error,
    },
    #[error("cannot block the arrival signals: {0}")]
    BlockSignals(io::Error),
    #[error("cannot start the runtime: {0}")]
    Runtime(io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    #[error("cannot start inotify: {0}")]
    Inotify(io::Error),
    #[error("cannot read inotify events: {0}")]
    InotifyEvents(io::Error),
    #[error("cannot watch {}: {source}", .dir.display())]
    Watch { dir: PathBuf, source: io::Error },
    #[error("the inotify stream ended")]
    InotifyEnded,
    /// `--emperor-policy` names a file that cannot be read or has errors: no vassal may run unchecked.
    #[error("{0}")]
    Policy(String),
    /// `--routes-redis` cannot be used (a URL the client refuses).
    #[error("--routes-redis {0}")]
    Routes(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages are the ones the emperor always logged (tests and users match on them).
    #[test]
    fn messages() {
        let e = || io::Error::from_raw_os_error(libc::ENOENT);
        let cases = [
            (Fatal::NotADirectory("/a".into()), "/a is not a directory"),
            (
                Fatal::VassalsDir {
                    path: "/a".into(),
                    source: e(),
                },
                "cannot open the vassals directory /a: No such file or directory (os error 2)",
            ),
            (
                Fatal::Flag {
                    flag: "--emperor-stats",
                    value: "x:y".into(),
                    source: io::Error::other("not a unix path"),
                },
                "--emperor-stats x:y: not a unix path",
            ),
            (
                Fatal::Watch {
                    dir: "/a".into(),
                    source: e(),
                },
                "cannot watch /a: No such file or directory (os error 2)",
            ),
            (Fatal::InotifyEnded, "the inotify stream ended"),
        ];
        for (fatal, msg) in cases {
            assert_eq!(fatal.to_string(), msg);
        }
    }
}
