//! The bridge's exit codes: an API between the bridge and the emperor.
//!
//! A bridge exits with its container's exit code (Docker reports a signal death as 128+signal, as a
//! shell does), so the emperor sees the app's fate as if the app were its own child. The codes from
//! [`BAD_CONFIG`] up are the bridge's own verdicts; an app exit code that would collide with them is
//! reported as [`APP_CODE_MAX`].

/// Highest exit code passed through from the app.
pub const APP_CODE_MAX: u8 = 249;
/// The vassal's file cannot work as it is (e.g. a mount the daemon rejects): do not retry until the
/// file changes.
pub const BAD_CONFIG: u8 = 250;
/// The Docker daemon did not answer: retry with backoff.
pub const DOCKER_UNAVAILABLE: u8 = 251;
/// The image is not there (no registry is consulted): retry with backoff, it may be built meanwhile.
pub const IMAGE_MISSING: u8 = 252;
/// Creating or starting the container failed for another reason: retry with backoff.
pub const START_FAILED: u8 = 253;
/// The container never connected to the proxy socket in time.
pub const NO_HANDSHAKE: u8 = 254;

/// Maps an app's exit code to the bridge's.
pub fn from_app(code: i64) -> u8 {
    u8::try_from(code).map_or(APP_CODE_MAX, |c| c.min(APP_CODE_MAX))
}

/// What a bridge exit code means, for the emperor's log.
pub fn describe(code: i32) -> Option<&'static str> {
    match u8::try_from(code).ok()? {
        BAD_CONFIG => Some("the container cannot run with this vassal file; fix the file"),
        DOCKER_UNAVAILABLE => Some("the Docker daemon is unreachable"),
        IMAGE_MISSING => Some("the image is missing"),
        START_FAILED => Some("the container could not be created or started"),
        NO_HANDSHAKE => Some("the container never connected to its proxy socket"),
        _ => None,
    }
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
}
