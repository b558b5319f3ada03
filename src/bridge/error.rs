//! Why a bridge gives up, as a type: each variant is one step's failure and says which exit code
//! ([`crate::exit`]) tells the emperor what to do about it. The messages are what the emperor logs (and
//! what operators and the tests read), word for word.

use std::io;
use std::path::PathBuf;

use bollard::errors::Error as DockerError;

use crate::docker::{self, short};
use crate::exit::{self, Verdict};

use crate::cli::ENV_VASSAL_TEXT;

#[derive(Debug, thiserror::Error)]
pub enum Fail {
    // The vassal file (BadConfig).
    #[error("{} is not set", ENV_VASSAL_TEXT)]
    NoVassalText,
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("the vassal has no docker-image")]
    NotDocker,
    #[error("the vassal has docker-build, and the emperor named no image it built (--image)")]
    NotBuilt,
    #[error("the policy: {0}")]
    Policy(String),
    #[error("image {0:?} has no Entrypoint or Cmd; set exec")]
    NothingToRun(String),

    // The daemon.
    #[error("{0}; start dockerd (or point --docker-daemon-socket / DOCKER_HOST at it)")]
    Unreachable(#[from] docker::daemon::Unreachable),
    #[error("cannot {step}: the Docker daemon did not answer: {detail}")]
    NoAnswer { step: &'static str, detail: String },
    #[error(
        "cannot {step}: this Docker daemon has no default bridge network ({message}); set `docker-network-mode = \
         none` in the vassal (the emperor hands its sockets in, so it needs no network) or `host`"
    )]
    NoDefaultBridge { step: &'static str, message: String },
    #[error("cannot {step}: {message}")]
    Refused { step: &'static str, message: String },
    #[error("{}", image_missing(.0))]
    ImageMissing(String),

    // Preparing the start (StartFailed).
    #[error("{0}")]
    Fds(String),
    #[error("cannot find the emperor binary for the shim: {0}")]
    NoBinary(io::Error),
    #[error("cannot copy the running binary for the shim: {0}")]
    ShimCopy(io::Error),
    #[error(
        "a container named {0:?} exists and was not created by an emperor; it is left alone — remove or rename \
         it, or rename the vassal file"
    )]
    Foreign(String),
    #[error(
        "a container named {name:?} belongs to another emperor that is running (pid {}, vassals directory {}); it \
         is left alone and the vassal is retried — give one of the two vassals another name",
        .owner.pid, .owner.vassals_dir
    )]
    Owned {
        name: String,
        owner: crate::docker::owner::Owner,
    },
    #[error("cannot create the proxy directory {}: {source}", .dir.display())]
    ProxyDir { dir: PathBuf, source: io::Error },
    #[error("cannot bind the proxy socket {}: {source}", .path.display())]
    ProxyBind { path: PathBuf, source: io::Error },
    #[error("cannot create container {name}: {message}")]
    Create { name: String, message: String },
    #[error("cannot attach to container {}: {source}", short(.id))]
    Attach { id: String, source: io::Error },
    #[error("cannot start container {name}: {message}")]
    Start { name: String, message: String },

    // The hand-over.
    #[error("cannot send the sockets over the proxy socket: {0}")]
    Send(io::Error),
    #[error("container {} exited with code {code} before it connected to the proxy socket", short(.id))]
    EarlyExit { id: String, code: i64 },
    #[error(
        "container {} did not connect to its proxy socket within {secs} s; its entrypoint must be the shim \
         (docker-shim = true) or a uWSGI that honours UWSGI_EMPEROR_PROXY",
        short(.id)
    )]
    NoHandshake { id: String, secs: u64 },

    // Carrying on with the container of a bridge that died.
    #[error("cannot carry on with container {}: {why}", short(.id))]
    NotAdoptable { id: String, why: String },

    // The daemon went away after the start.
    #[error("the Docker daemon went away and lost container {}: {how}; a new one is started", short(.id))]
    ContainerLost { id: String, how: String },
}

impl Fail {
    /// A failed request at `step`: a refusal is the start's failure, silence the daemon's.
    pub fn docker(step: &'static str, e: &DockerError) -> Fail {
        match e {
            DockerError::DockerResponseServerError { .. } if no_default_bridge(&docker::message(e)) => {
                Fail::NoDefaultBridge {
                    step,
                    message: docker::message(e),
                }
            }
            DockerError::DockerResponseServerError { .. } => Fail::Refused {
                step,
                message: docker::message(e),
            },
            other => Fail::NoAnswer {
                step,
                detail: other.to_string(),
            },
        }
    }

    /// The daemon did not answer: the step is retried once it does ([`super::outage`]).
    pub fn daemon_gone(&self) -> bool {
        self.verdict() == Verdict::DockerUnavailable
    }

    /// The bridge's exit code.
    pub fn code(&self) -> u8 {
        match self {
            Fail::EarlyExit { code, .. } => exit::from_app(*code),
            other => other.verdict().code(),
        }
    }

    fn verdict(&self) -> Verdict {
        match self {
            Fail::NoVassalText
            | Fail::Config(_)
            | Fail::NotDocker
            | Fail::NotBuilt
            | Fail::NothingToRun(_)
            | Fail::Policy(_) => Verdict::BadConfig,
            Fail::Unreachable(_) | Fail::NoAnswer { .. } => Verdict::DockerUnavailable,
            Fail::ImageMissing(_) => Verdict::ImageMissing,
            Fail::NoHandshake { .. } => Verdict::NoHandshake,
            Fail::ContainerLost { .. } => Verdict::ContainerLost,
            Fail::NoDefaultBridge { .. }
            | Fail::Refused { .. }
            | Fail::Fds(_)
            | Fail::NoBinary(_)
            | Fail::ShimCopy(_)
            | Fail::Foreign(_)
            | Fail::Owned { .. }
            | Fail::ProxyDir { .. }
            | Fail::ProxyBind { .. }
            | Fail::Create { .. }
            | Fail::Attach { .. }
            | Fail::Start { .. }
            | Fail::Send(_)
            | Fail::NotAdoptable { .. }
            | Fail::EarlyExit { .. } => Verdict::StartFailed,
        }
    }
}

/// What to do about a missing image. No registry is ever asked, so it must be built or loaded on this host; the
/// images of the emperor's own examples and tests have a script of their own.
fn image_missing(image: &str) -> String {
    let repo = image.split(':').next().unwrap_or(image);
    let how = match repo.strip_prefix("emperor-test/") {
        Some(which) => format!("build it from the emperor's source tree with `scripts/build-images {which}`"),
        None => format!("build it (`docker build -t {image} <dir>`) or load it (`docker load -i <file>`)"),
    };
    format!("image {image:?} not found and no registry is consulted: {how}")
}

/// A daemon without a default bridge (`dockerd --bridge=none`, as scripts/setup starts it) refuses every
/// container that asks for the default network, which is what a vassal without `docker-network-mode` does.
fn no_default_bridge(msg: &str) -> bool {
    msg.contains("could not find bridge") || msg.contains("network bridge not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_failures_say_what_to_change() {
        assert!(
            Fail::ImageMissing("emperor-test/testapp:v2".into())
                .to_string()
                .contains("`scripts/build-images testapp`")
        );
        assert!(
            Fail::ImageMissing("shop:1".into())
                .to_string()
                .contains("`docker build -t shop:1 <dir>`")
        );
        let e = DockerError::DockerResponseServerError {
            status_code: 500,
            message: "could not find bridge docker0: route ip+net: no such network interface".into(),
        };
        let f = Fail::docker("start container", &e);
        assert_eq!(f.code(), Verdict::StartFailed.code());
        let msg = f.to_string();
        assert!(
            msg.contains("docker-network-mode = none") && msg.contains("docker0"),
            "{msg}"
        );
    }

    #[test]
    fn every_step_keeps_its_code_and_words() {
        let refused = DockerError::DockerResponseServerError {
            status_code: 500,
            message: "boom".into(),
        };
        let f = Fail::docker("inspect image", &refused);
        assert_eq!(
            (f.code(), f.to_string()),
            (Verdict::StartFailed.code(), "cannot inspect image: boom".into())
        );
        let silent = DockerError::IOError {
            err: io::Error::other("connection refused"),
        };
        let f = Fail::docker("inspect image", &silent);
        assert_eq!(f.code(), Verdict::DockerUnavailable.code());
        assert!(
            f.to_string()
                .starts_with("cannot inspect image: the Docker daemon did not answer: "),
            "{f}"
        );
        assert_eq!(Fail::NoVassalText.to_string(), "EMPEROR_VASSAL_TEXT is not set");
        assert_eq!(Fail::NotDocker.code(), Verdict::BadConfig.code());
        assert_eq!(Fail::ImageMissing("x".into()).code(), Verdict::ImageMissing.code());
        let id = "0123456789abcdef".to_string();
        let late = Fail::NoHandshake {
            id: id.clone(),
            secs: 2,
        };
        assert_eq!(late.code(), Verdict::NoHandshake.code());
        assert!(
            late.to_string()
                .starts_with("container 0123456789ab did not connect to its proxy socket within 2 s;")
        );
        let early = Fail::EarlyExit { id, code: 3 };
        assert_eq!(early.code(), 3);
        assert_eq!(
            early.to_string(),
            "container 0123456789ab exited with code 3 before it connected to the proxy socket"
        );
    }
}
