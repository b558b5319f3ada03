//! The uWSGI emperor protocol on a vassal's control channel.
//!
//! This is a wire contract with real uWSGI (Debian ships 2.0.21), so it follows
//! `core/emperor.c` byte for byte (see `shared/reference/uwsgi-protocol.md` §1.2 and §2):
//!
//! * The control channel is a `socketpair(AF_UNIX, SOCK_STREAM)`; the vassal finds its end in
//!   `UWSGI_EMPEROR_FD`. Messages are single raw bytes with no framing, in both directions, and a
//!   byte nobody knows is ignored (uWSGI logs and drops it, so do we).
//! * Byte 0 (uWSGI's brutal stop) is never sent: the emperor always asks for a graceful stop (2)
//!   and kills the process group itself when the stop timeout runs out.
//! * The config channel (`UWSGI_EMPEROR_FD_CONFIG`) carries the vassal file as one uwsgi packet:
//!   `modifier1 = 115`, a little-endian `u16` length, `modifier2 = 0`, then the bytes. It is pushed
//!   at spawn and again whenever the vassal sends [`VassalMsg::ConfigRequest`], never on reload:
//!   uWSGI 2.0.x pushed on reload too and its vassals then read a stale config (§2). Only Docker
//!   `[uwsgi]` vassals (`--ini emperor://<name>`) get one; process vassals read their own file, as
//!   under uWSGI's directory monitor.

/// Variables a vassal must not inherit from whoever started it (the emperor, or a container image):
/// they describe someone else's socket activation or uWSGI state (uWSGI's emperor drops the same
/// ones) and would mislead the vassal. The emperor and the shim set the ones that apply.
pub const SCRUBBED_ENV: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NGINX",
    "NOTIFY_SOCKET",
    "UWSGI_RELOADS",
    "UWSGI_EMPEROR_FD",
    "UWSGI_EMPEROR_FD_CONFIG",
    "UWSGI_EMPEROR_PROXY",
];

/// What a vassal says to its emperor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VassalMsg {
    /// `1`: the master is set up ("spawned"). Not re-sent after an in-place reload.
    Ready,
    /// `2`: about to re-exec for a reload; send the config again.
    ConfigRequest,
    /// `5`: worker 1 accepts connections. Re-sent after every reload.
    Accepting,
    /// `17`: served its first request.
    Loyal,
    /// `22`: voluntary shutdown (`--idle` with `--die-on-idle`).
    VoluntaryShutdown,
    /// `26`: heartbeat (`--heartbeat N`).
    Heartbeat,
    /// `30`: broodlord asks for a zerg. We have no broodlord mode; logged and ignored.
    Sos,
    /// Anything else, ignored as uWSGI does.
    Unknown(u8),
}

impl From<u8> for VassalMsg {
    fn from(b: u8) -> Self {
        match b {
            1 => Self::Ready,
            2 => Self::ConfigRequest,
            5 => Self::Accepting,
            17 => Self::Loyal,
            22 => Self::VoluntaryShutdown,
            26 => Self::Heartbeat,
            30 => Self::Sos,
            other => Self::Unknown(other),
        }
    }
}

/// What the emperor says to a vassal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmperorMsg {
    /// `1`: graceful reload in place; the master re-execs itself and keeps its sockets.
    Reload = 1,
    /// `2`: graceful stop; understood by uWSGI since 2.0.19, ignored by older ones (they are killed
    /// after the mercy period instead).
    GracefulStop = 2,
}

impl EmperorMsg {
    pub fn byte(self) -> u8 {
        self as u8
    }
}

/// uWSGI's `modifier1` for an emperor config packet.
const CONFIG_MODIFIER1: u8 = 115;

/// Frames a vassal file for the config channel.
///
/// uWSGI keeps the length in a `u16` and silently truncates larger configs, which corrupts the stream,
/// and it rejects empty ones, so both are refused here with a message for the vassal's log.
pub fn config_frame(config: &[u8]) -> Result<Vec<u8>, String> {
    let len = u16::try_from(config.len()).map_err(|_| {
        format!(
            "config is {} bytes; uWSGI's config pipe takes at most 65535",
            config.len()
        )
    })?;
    if len == 0 {
        return Err("config is empty; uWSGI refuses an empty config".into());
    }
    let mut frame = Vec::with_capacity(4 + config.len());
    frame.push(CONFIG_MODIFIER1);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.push(0);
    frame.extend_from_slice(config);
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_match_uwsgi() {
        assert_eq!(VassalMsg::from(1), VassalMsg::Ready);
        assert_eq!(VassalMsg::from(2), VassalMsg::ConfigRequest);
        assert_eq!(VassalMsg::from(5), VassalMsg::Accepting);
        assert_eq!(VassalMsg::from(17), VassalMsg::Loyal);
        assert_eq!(VassalMsg::from(22), VassalMsg::VoluntaryShutdown);
        assert_eq!(VassalMsg::from(26), VassalMsg::Heartbeat);
        assert_eq!(VassalMsg::from(30), VassalMsg::Sos);
        assert_eq!(VassalMsg::from(99), VassalMsg::Unknown(99));
        assert_eq!(EmperorMsg::Reload.byte(), 1);
        assert_eq!(EmperorMsg::GracefulStop.byte(), 2);
    }

    #[test]
    fn config_frame_layout() {
        let f = config_frame(b"[uwsgi]\nx=1\n").unwrap();
        assert_eq!(&f[..4], &[115, 12, 0, 0]);
        assert_eq!(&f[4..], b"[uwsgi]\nx=1\n");
        assert_eq!(&config_frame(&[b'a'; 300]).unwrap()[..4], &[115, 44, 1, 0]);
        assert!(config_frame(b"").is_err());
        assert!(config_frame(&vec![b'a'; 65535]).is_ok());
        assert!(config_frame(&vec![b'a'; 65536]).is_err());
    }
}
