//! The bridge's exit codes: an API between the bridge and the emperor.
//!
//! A bridge exits with its container's exit code (Docker reports a signal death as 128+signal, as a
//! shell does), so the emperor sees the app's fate as if the app were its own child. The codes from
//! [`BAD_CONFIG`] up are the bridge's own verdicts ([`Verdict`]); an app exit code that would collide with
//! them is reported as [`APP_CODE_MAX`]. The verdicts, their codes and what they mean are one table
//! ([`VERDICTS`]), read by the bridge when it exits and by the emperor when it logs.

/// Highest exit code passed through from the app.
pub const APP_CODE_MAX: u8 = 249;

/// Why a bridge gave up; the discriminant is its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Verdict {
    /// The vassal's file cannot work as it is (e.g. a mount the daemon rejects): do not retry until the
    /// file changes.
    BadConfig = 250,
    /// The Docker daemon did not answer: retry with backoff.
    DockerUnavailable = 251,
    /// The image is not there (no registry is consulted): retry with backoff, it may be built meanwhile.
    ImageMissing = 252,
    /// Creating or starting the container failed for another reason: retry with backoff.
    StartFailed = 253,
    /// The container never connected to the proxy socket in time.
    NoHandshake = 254,
    /// The Docker daemon went away and its container with it (a restart without live-restore): nobody's
    /// fault, restarted at once and never throttled.
    ContainerLost = 255,
}

/// Every verdict and what it means, for the emperor's log.
pub const VERDICTS: [(Verdict, &str); 6] = [
    (
        Verdict::BadConfig,
        "the container cannot run with this vassal file; fix the file",
    ),
    (Verdict::DockerUnavailable, "the Docker daemon is unreachable"),
    (Verdict::ImageMissing, "the image is missing"),
    (Verdict::StartFailed, "the container could not be created or started"),
    (
        Verdict::NoHandshake,
        "the container never connected to its proxy socket",
    ),
    (
        Verdict::ContainerLost,
        "the Docker daemon went away and lost the container",
    ),
];

impl Verdict {
    /// The bridge's exit code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The verdict an exit code stands for; `None` for an app's own code.
    pub fn from_code(code: i32) -> Option<Verdict> {
        VERDICTS.iter().map(|(v, _)| *v).find(|v| i32::from(v.code()) == code)
    }

    /// What it means, for the emperor's log.
    pub fn describe(self) -> &'static str {
        VERDICTS.iter().find(|(v, _)| *v == self).map_or("", |(_, d)| d)
    }
}

/// The codes the emperor and the bridge name outside a [`Verdict`].
pub const BAD_CONFIG: u8 = Verdict::BadConfig.code();
pub const START_FAILED: u8 = Verdict::StartFailed.code();
pub const CONTAINER_LOST: u8 = Verdict::ContainerLost.code();

/// Maps an app's exit code to the bridge's.
pub fn from_app(code: i64) -> u8 {
    u8::try_from(code).map_or(APP_CODE_MAX, |c| c.min(APP_CODE_MAX))
}

/// What a bridge exit code means, for the emperor's log; `None` for an app's own code.
pub fn describe(code: i32) -> Option<&'static str> {
    Verdict::from_code(code).map(Verdict::describe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_codes_pass_through_below_the_bridge_range() {
        assert_eq!(from_app(0), 0);
        assert_eq!(from_app(137), 137);
        assert_eq!(from_app(250), APP_CODE_MAX);
        assert_eq!(from_app(-1), APP_CODE_MAX);
        assert_eq!(describe(3), None);
        assert!(describe(i32::from(BAD_CONFIG)).is_some());
    }

    #[test]
    fn the_codes_are_the_api() {
        // The emperor of one build reads the codes of a bridge of the same build only, but the values are
        // documented and logged: they do not move.
        let codes: Vec<u8> = VERDICTS.iter().map(|(v, _)| v.code()).collect();
        assert_eq!(codes, [250, 251, 252, 253, 254, 255]);
        for (v, d) in VERDICTS {
            assert!(v.code() > APP_CODE_MAX);
            assert_eq!(Verdict::from_code(i32::from(v.code())), Some(v));
            assert_eq!(describe(i32::from(v.code())), Some(d));
        }
        assert_eq!(describe(-1), None);
    }
}
