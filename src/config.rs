//! Vassal files: `<vassals.d>/<name>.ini` → [`VassalConfig`].
//!
//! # Why two layers
//!
//! A vassal file is shared between two readers. The `[emperor]` section is ours; every other
//! section (`[uwsgi]`, ...) belongs to the vassal and is passed on untouched as [`VassalConfig::text`]
//! (uWSGI gets it over its config pipe). So parsing runs in two layers, as ripgrep's
//! `LowArgs` → `HiArgs` does:
//!
//! 1. **Raw** (`RawVassal`): the text is cut into sections line by line with uWSGI's own rules,
//!    only the `[emperor]` lines are handed to rust-ini, and each `key = value` is paired with its
//!    1-based line number (rust-ini does not report line numbers for keys).
//! 2. **Typed** ([`VassalConfig`]): every known key is checked and converted (socket specs through
//!    [`SocketSpec`]'s `FromStr`, signals, modes, owners, ...).
//!
//! Both layers *collect* problems instead of stopping at the first one, and each [`Problem`] carries
//! the file, line, key and value. A broken vassal therefore produces one message that lists
//! everything wrong with it (`vassals.d/app.ini:12: [emperor] listen = "0": ...`), is not started,
//! and never disturbs any other vassal: nothing here panics or unwraps on input.
//!
//! # rust-ini and uWSGI disagree; what we do about it
//!
//! rust-ini 0.21 is loaded with `enabled_escape: false` (so `C:\foo` keeps its backslash) and
//! `enabled_quote: false` (uWSGI never strips quotes). Even so its grammar is not uWSGI's, and
//! feeding it a whole uWSGI file goes wrong in ways that matter:
//!
//! - A bare key with no `=` (uWSGI: a flag such as `master`) is not rejected: rust-ini keeps
//!   reading the key across newlines up to the next `=`, so `master\n[emperor]\nsocket = /x` becomes
//!   one key `"master\n[emperor]\nsocket"` in `[uwsgi]` and our section silently disappears. At
//!   the end of the file the same line is a hard error (`expecting "=" but found EOF`).
//! - An indented comment (`  # note`) is parsed as the start of a key, with the same effect.
//! - A line ending in `\` continues onto the next line even with escapes off (uWSGI has no line
//!   continuation): `a = x\` + `b = 2` gives `a = "xb = 2"`.
//! - Text after a section header (`[uwsgi] ; note`) is rejected ("doesn't support inline comment").
//! - `:` is a key/value separator as well as `=`.
//! - A repeated section header makes a second section of the same name (`section_all` sees both).
//! - Line lengths are unlimited and `%(var)` placeholders are plain text; neither is a problem.
//!
//! So the raw layer never shows rust-ini a foreign section. It splits the text into sections as
//! uWSGI's `ini.c` does (a trimmed line starting with `[` is a header; `;`/`#` after leading
//! whitespace is a comment), and builds a *masked* copy of the text in which every line that is not
//! part of an `[emperor]` section is blank, so line and column numbers stay exact. Within
//! `[emperor]` it also blanks comments and reports lines with no `=` or `:` itself (one clear
//! problem instead of a swallowed next line), and appends a space to a line ending in `\` so the
//! backslash stays literal as in uWSGI. Whatever rust-ini still rejects (e.g. `= value`, a missing
//! key) is reported with its line and column. Repeated `[emperor]` sections are read in order, as
//! if they were one. `:` is accepted as a separator in `[emperor]` (rust-ini's rule); the line
//! locator mirrors rust-ini's key scanning (including `\` taking the next character) so the n-th
//! key it finds is the n-th entry rust-ini returns, and the two are cross-checked by key.
//!
//! # Keys
//!
//! All in `[emperor]`, case-sensitive, values trimmed, an empty value is an error. `socket`,
//! `env`, `docker-socket`, `docker-port`, `docker-mount`, `docker-env`, `docker-dns`, `domains`
//! and `domain` repeat; every other key may be given once. See [`KNOWN_KEYS`] and the fields of
//! [`VassalConfig`] and [`DockerConfig`]. A file with no `[emperor]` section is a classic uWSGI
//! vassal and is valid.
//!
//! # On-demand, idle and Host routes
//!
//! `on-demand` ([`VassalConfig::on_demand`]), `idle` ([`VassalConfig::idle`]) and `idle-action`
//! ([`IdleAction`]) apply to process and Docker vassals alike; `idle-action` without `idle` is an
//! error (`needs idle`). `domains = a.example b.example` and `domain = <host> [socket=<name>]`
//! become [`VassalConfig::routes`], which `emperor/routes.rs` turns into an nginx include file.
//! What is checked here, per vassal, with the line of the offending host:
//!
//! - a host is a DNS name, `*.name` or nginx's `.name` (both `name` and every name below it),
//!   lowercased; a port, a URL, or a `*` anywhere but in front is an error;
//! - two hosts of one vassal may not claim the same name ([`Route::overlaps`]: `a.b` twice, but
//!   also `.a.b` with `a.b` or `*.a.b`), since nginx refuses such a map ("conflicting parameter");
//! - a route needs a target: `socket=<name>` must name one of the vassal's `socket` or
//!   `docker-socket` lines (by its `name=`), and without it the target is the first socket, so a
//!   vassal with routes and no socket is an error; an abstract target (`@name`) is an error too,
//!   because nginx cannot connect to one (1.22 takes `unix:@name` for a file name).
//!
//! The same host in two vassals is not an error here (each file is valid on its own): the route
//! table resolves it, see `emperor/routes.rs`. These keys and `on-demand`/`idle`/`idle-action`
//! only change what the emperor does around the vassal, so they are left out of
//! [`VassalConfig::emperor_hash`]: editing them is a plain reload (in place for a vassal that speaks
//! the protocol), never a new container by itself.
//!
//! # Docker vassals
//!
//! A vassal with `docker-image` runs in a container ([`VassalConfig::docker`]); any other
//! `docker-*` key without it is an error (`needs docker-image`). uwsgi-docker's attributes keep
//! their names and syntax (see the fields of [`DockerConfig`]); where uwsgi-docker checked nothing
//! we check what Docker would later reject, so the error names the file and line instead of
//! arriving from the daemon at start time. On a Docker vassal:
//!
//! - `docker-socket` is `socket` under uwsgi-docker's name: same syntax, and the sockets of both
//!   keys land in [`VassalConfig::sockets`] in file order (one address may not appear twice
//!   across the two keys).
//! - `exec` is the command run inside the container instead of the image's Entrypoint and Cmd.
//!   Without `exec`, a file with a `[uwsgi]` section ([`VassalConfig::has_uwsgi_section`]) runs
//!   `<emperor-wrapper> --ini emperor://<name>` in the container and gets the file over the config
//!   pipe; any other runs the image's own command.
//! - `env` lines go into the container too: the container's environment is `env`, then
//!   `docker-env`, each in file order, later entries winning.
//! - `chdir` is an error (it names a host directory); `docker-workdir` sets the container's.
//! - `stop-signal`, `stop-timeout`, `chmod-socket`, `chown-socket` and `listen` keep their meaning.
//!
//! The container is named after the vassal, file name with `.ini` (uwsgi-docker's rule). Docker
//! accepts only `[a-zA-Z0-9][a-zA-Z0-9_.-]*`; a vassal whose name does not match is an error that
//! suggests a file name that would. Mapping the name silently instead (as DESIGN.md first
//! proposed) could give two vassals one container name (`a b.ini` and `a-b.ini` would both become
//! `a-b.ini`), and each would then remove the other's container as stale; an error is unambiguous.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ini::{Ini, ParseOption};
use nix::sys::signal::Signal;

/// The section of a vassal file that the emperor reads; all others belong to the vassal.
pub const SECTION: &str = "emperor";

/// The `[emperor]` keys accepted today. Adding one means: add it here, parse it in
/// `build`, add a field to [`VassalConfig`], and test it.
pub const KNOWN_KEYS: &[&str] = &[
    "socket",
    "exec",
    "env",
    "chdir",
    "stop-signal",
    "stop-timeout",
    "chmod-socket",
    "chown-socket",
    "listen",
    "docker-image",
    "docker-socket",
    "docker-port",
    "docker-workdir",
    "docker-mount",
    "docker-network-mode",
    "docker-hostname",
    "docker-proxy",
    "docker-env",
    "docker-user",
    "docker-memory",
    "docker-swap",
    "docker-cidfile",
    "docker-dns",
    "docker-shim",
    "on-demand",
    "docker-precreate",
    "idle",
    "idle-action",
    "domains",
    "domain",
    "reload-overlap",
    "ready-delay",
    "logto",
    "log-maxsize",
];

/// Keys that may be given more than once; each line adds one value, in order.
const REPEATABLE_KEYS: &[&str] = &[
    "socket",
    "env",
    "docker-socket",
    "docker-port",
    "docker-mount",
    "docker-env",
    "docker-dns",
    "domains",
    "domain",
];

/// uwsgi-docker attributes we do not take, with what to write instead.
const RETIRED_KEYS: &[(&str, &str)] = &[
    (
        "docker-uid",
        "not supported (an early uwsgi-docker name); use \"docker-user\"",
    ),
    (
        "docker-disable-network",
        "not supported (an early uwsgi-docker attribute); use \"docker-network-mode = none\"",
    ),
];

/// Docker's smallest memory limit (`linuxMinMemory` in the daemon): 6 MiB.
const DOCKER_MIN_MEMORY: i64 = 6 * 1024 * 1024;

/// Linux `HOST_NAME_MAX`: `sethostname` in the container fails above it.
const HOST_NAME_MAX: usize = 64;

/// `sizeof(sockaddr_un.sun_path)` on Linux; a path needs its NUL terminator inside it.
const SUN_PATH_LEN: usize = 108;

/// Socket names travel in `LISTEN_FDNAMES`, which systemd limits to 255 bytes per name.
const MAX_SOCKET_NAME_LEN: usize = 255;

/// Below this Jaro-Winkler similarity an unknown key gets no "did you mean".
const SUGGESTION_THRESHOLD: f64 = 0.8;

/// Longest DNS name (RFC 1035, without the trailing dot).
const MAX_HOST_LEN: usize = 253;

/// The latest a silent new instance counts as ready when the file sets no `ready-delay` and it is not
/// seen waiting for connections first.
pub const DEFAULT_READY_DELAY: Duration = Duration::from_secs(10);

/// One vassal, validated. Built only by [`parse`] / [`load`]; the emperor, bridges and actors see
/// nothing of the INI layer.
#[derive(Debug, Clone, PartialEq)]
pub struct VassalConfig {
    /// The file name including `.ini` (uWSGI rule); identifies the vassal everywhere (logs,
    /// container name, labels).
    pub name: String,
    /// The file as given; the watcher reports absolute paths, and errors name this path.
    pub path: PathBuf,
    /// `socket =` lines in declared order: the order fds are passed in (fd 3, 4, ... and the
    /// proxy socket's SCM_RIGHTS order), so it must be preserved.
    pub sockets: Vec<SocketSpec>,
    /// `exec = cmd line`, split shell-like (shlex) but never run through a shell. `None` means the
    /// default command (`<emperor-wrapper> --ini <file>` or the image's own).
    pub exec: Option<Vec<String>>,
    /// `env = K=V`, in order; later entries win when the process environment is built.
    pub env: Vec<(String, String)>,
    /// Working directory; a relative `chdir` is resolved against the vassals dir so it does not
    /// depend on the emperor's own cwd.
    pub chdir: Option<PathBuf>,
    /// Signal for a graceful stop (uWSGI wants SIGINT or SIGQUIT; other programs SIGTERM).
    pub stop_signal: Option<Signal>,
    /// How long a graceful stop may take before SIGKILL.
    pub stop_timeout: Option<Duration>,
    /// Mode for unix sockets the emperor binds, so a front-end in another group can connect.
    pub chmod_socket: Option<u32>,
    /// Owner for unix sockets the emperor binds; names are resolved once, here, so a typo is a
    /// config error and not a failure at bind time.
    pub chown_socket: Option<Owner>,
    /// Listen backlog for the sockets the emperor binds.
    pub listen: Option<u32>,
    /// Hash of the `[emperor]` (key, value) pairs in order. Same hash after a change means only
    /// the vassal's own sections changed, so an in-place reload is enough; a different hash means
    /// restart with new settings. FNV-1a, so it is stable across builds and can be stored in a
    /// container label.
    pub emperor_hash: u64,
    /// The whole file, unmodified: pushed to uWSGI over its config pipe.
    pub text: String,
    /// `Some` for a Docker vassal (the file has `docker-image`).
    pub docker: Option<DockerConfig>,
    /// The file has a `[uwsgi]` section (a header that uWSGI's ini reader would take as
    /// `[uwsgi]`). A Docker vassal without `exec` then runs `<emperor-wrapper> --ini
    /// emperor://<name>` in its container. For a Docker vassal this flag is part of
    /// [`VassalConfig::emperor_hash`], since it changes the container's command.
    pub uwsgi_section: bool,
    /// `on-demand = true|false|1|0|yes|no` (any case; default false): bind the sockets at once,
    /// start the vassal on the first connection.
    pub on_demand: bool,
    /// `docker-precreate = true|false|...` (default true): while an on-demand Docker vassal waits, its
    /// container is created ahead of time, so a connection waits for `docker start` only
    /// (`emperor/prepare.rs`).
    pub precreate: bool,
    /// `idle = <seconds>` (integer or decimal, > 0): the vassal is idle when no connection has been
    /// open on any of its sockets for that long.
    pub idle: Option<Duration>,
    /// `idle-action = stop|pause` (default stop); needs `idle`.
    pub idle_action: IdleAction,
    /// `domains = <host> <host> ...` and `domain = <host> [socket=<name>]`, in file order: the
    /// Host names nginx routes to this vassal (see `emperor/routes.rs`). Hosts are lowercase, and
    /// no two overlap within a vassal; a vassal with routes has at least one socket, and every
    /// `socket=` names one of its sockets that is not abstract.
    pub routes: Vec<Route>,
    /// `reload-overlap = true|false` (default true): on a reload that needs a new process or
    /// container, start it beside the old one on the same sockets and stop the old one only once the
    /// new one is ready. `false` stops the old one first (for apps that cannot run twice at once).
    pub reload_overlap: bool,
    /// `ready-delay = <seconds>`: a new instance that does not speak the uWSGI protocol counts as
    /// ready once it has been up this long. Unset (`None`): as soon as the kernel shows it waiting for
    /// connections on the vassal's sockets (`emperor/listening.rs`), at the latest after
    /// [`DEFAULT_READY_DELAY`]. One that speaks the protocol is ready when it says so.
    pub ready_delay: Option<Duration>,
    /// `logto = <file>` (uWSGI's name; relative to the vassals dir): the vassal's output lines go
    /// there, appended and without the `[name]` prefix, instead of to the emperor's stdout.
    pub logto: Option<PathBuf>,
    /// `log-maxsize = <bytes>` (k/m/g suffixes, > 0; needs `logto`): before a line would take the
    /// file past this size, it is renamed to `<file>.1` (replacing the previous one) and a new file
    /// is started.
    pub log_maxsize: Option<u64>,
}

/// What an idle vassal becomes (`idle-action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdleAction {
    /// Stop it; an on-demand vassal goes back to waiting for a connection.
    #[default]
    Stop,
    /// Freeze it (docker pause, the cgroup freezer); thawed on the next connection.
    Pause,
}

/// One Host route: requests whose `Host` matches `host` go to the vassal's socket `socket`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    /// A lowercase DNS name (`a.example`), a wildcard (`*.example`: every name below it) or
    /// nginx's suffix form (`.example`: `example` and every name below it). No port, no
    /// trailing dot.
    pub host: String,
    /// `socket=<name>`: a named socket of the vassal; `None`: its first socket.
    pub socket: Option<String>,
}

impl Route {
    /// What the host claims in an nginx `hostnames` map, as (exact name, wildcard suffix): `a.b`
    /// claims the exact name `a.b`, `*.a.b` the names below `a.b`, `.a.b` both. Two hosts conflict
    /// when they claim the same thing (nginx refuses such a map: "conflicting parameter").
    pub fn claims(&self) -> (Option<&str>, Option<&str>) {
        if let Some(base) = self.host.strip_prefix("*.") {
            (None, Some(base))
        } else if let Some(base) = self.host.strip_prefix('.') {
            (Some(base), Some(base))
        } else {
            (Some(&self.host), None)
        }
    }

    /// True if the two hosts claim a name in common (see [`Route::claims`]).
    pub fn overlaps(&self, other: &Route) -> bool {
        let (a_exact, a_wild) = self.claims();
        let (b_exact, b_wild) = other.claims();
        (a_exact.is_some() && a_exact == b_exact) || (a_wild.is_some() && a_wild == b_wild)
    }
}

impl VassalConfig {
    /// True if the file has a `[uwsgi]` section; see [`VassalConfig::uwsgi_section`].
    #[allow(dead_code, reason = "API for the emperor and bridge, which read the field today")]
    pub fn has_uwsgi_section(&self) -> bool {
        self.uwsgi_section
    }
}

/// The Docker side of a vassal: uwsgi-docker's `docker-*` attributes, checked and converted.
/// Paths on the host are absolute (relative ones are resolved against the vassals dir); paths in
/// the container are checked to be absolute and kept as written.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerConfig {
    /// `docker-image`: a name, `name:tag`, `name@digest` or an id; not pulled, so it must exist.
    pub image: String,
    /// The vassal name, checked against Docker's `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
    pub container_name: String,
    /// `docker-port = [hostip:]hostport:containerport[/tcp|/udp]`, repeatable (uwsgi-docker's
    /// syntax, plus the protocol suffix and `[v6]` host addresses, as `docker run -p`).
    pub ports: Vec<PortMap>,
    /// `docker-workdir`: absolute path inside the container.
    pub workdir: Option<String>,
    /// `docker-mount = host:container[:ro|rw]`, repeatable (`docker run -v` syntax without
    /// named volumes or other options: a host path without `/` is a path relative to the vassals
    /// dir, not a volume name).
    pub mounts: Vec<Mount>,
    /// `docker-network-mode`: `none`, `host`, `bridge`, `container:<name|id>` or a network name.
    pub network_mode: Option<String>,
    /// `docker-hostname`: RFC 1123 labels, at most 64 bytes in all (Linux `HOST_NAME_MAX`).
    pub hostname: Option<String>,
    /// `docker-proxy = hostpath:containerpath`, or one path used on both sides (uwsgi-docker):
    /// where the emperor proxy socket (reference/uwsgi-protocol.md §4) is bound on the host and
    /// where the container's uWSGI finds it. Both are socket paths, absolute. The emperor
    /// bind-mounts the host path's *parent directory* at the container path's parent directory,
    /// so everything in that directory is visible to the container: give it a directory of its
    /// own. A parent of `/` is refused on either side for that reason.
    pub proxy: Option<ProxyPaths>,
    /// `docker-env = K=V`, repeatable, same rules as `env`. The container gets
    /// [`VassalConfig::env`] followed by these (later entries win).
    pub env: Vec<(String, String)>,
    /// `docker-user`: `name`, `uid`, `uid:gid` or `name:group`, resolved inside the container
    /// (never on the host).
    pub user: Option<String>,
    /// `docker-memory`: bytes, a plain integer (as uwsgi-docker) or with a binary `k`, `m` or
    /// `g` suffix (as `docker run -m`); at least 6m, Docker's minimum.
    pub memory: Option<i64>,
    /// `docker-swap`: Docker's `MemorySwap`, i.e. memory *plus* swap, same syntax as
    /// `docker-memory`, or `-1` for unlimited swap. Needs `docker-memory` and is at least as large
    /// (Docker rejects both otherwise).
    pub swap: Option<i64>,
    /// `docker-cidfile`: host file the container id is written to.
    pub cidfile: Option<PathBuf>,
    /// `docker-dns`, repeatable: DNS server addresses for the container.
    pub dns: Vec<IpAddr>,
    /// `docker-shim = true|false|1|0|yes|no` (any case; default true): run the emperor's shim as
    /// the container's PID 1.
    pub shim: bool,
}

/// One `docker-port` line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortMap {
    /// `None`: all host addresses.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    /// `"tcp"` (the default) or `"udp"`.
    pub proto: String,
}

/// One `docker-mount` line: a bind mount.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub host: PathBuf,
    pub container: String,
    pub read_only: bool,
}

/// `docker-proxy`: the emperor proxy socket's path on each side.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyPaths {
    pub host: PathBuf,
    pub container: String,
}

/// `chown-socket = user:group`, resolved to ids. `None` leaves that id unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// One `socket =` line: an address and an optional name for `LISTEN_FDNAMES`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SocketSpec {
    pub name: Option<String>,
    pub addr: SocketAddrSpec,
}

/// Where a socket listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SocketAddrSpec {
    /// Filesystem unix socket; absolute after [`parse`] (relative paths are resolved against the
    /// vassals dir), as given when parsed through `FromStr`.
    Unix(PathBuf),
    /// Linux abstract unix socket, the name without the leading `@`.
    Abstract(String),
    /// TCP; `localhost` already resolved to 127.0.0.1 (no DNS, ever).
    Tcp(SocketAddr),
}

impl fmt::Display for SocketAddrSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketAddrSpec::Unix(path) => write!(f, "{}", path.display()),
            SocketAddrSpec::Abstract(name) => write!(f, "@{name}"),
            SocketAddrSpec::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

impl fmt::Display for SocketSpec {
    /// The same syntax `FromStr` accepts: `name=<n>,<addr>` or `<addr>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "name={name},{}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

impl FromStr for SocketSpec {
    type Err = String;

    /// Parses a socket spec without a vassals dir: relative unix paths stay relative.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        parse_socket(spec, None).map_err(|msg| format!("invalid socket \"{}\": {msg}", spec.trim()))
    }
}

/// Everything wrong with one vassal file, collected in one pass.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

/// One thing wrong with a vassal file, with as much location as is known.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// 1-based line.
    pub line: Option<usize>,
    /// 1-based column; only syntax errors from rust-ini know it.
    pub column: Option<usize>,
    /// The `[emperor]` key, when the problem is about one.
    pub key: Option<String>,
    /// The key's value as written (trimmed).
    pub value: Option<String>,
    /// Lowercase, no trailing period.
    pub message: String,
}

impl Problem {
    fn file(message: impl Into<String>) -> Problem {
        Problem {
            line: None,
            column: None,
            key: None,
            value: None,
            message: message.into(),
        }
    }

    fn at_line(line: usize, message: impl Into<String>) -> Problem {
        Problem {
            line: Some(line),
            ..Problem::file(message)
        }
    }

    fn for_entry(entry: &RawEntry, message: impl Into<String>) -> Problem {
        Problem {
            line: entry.line,
            column: None,
            key: Some(entry.key.clone()),
            value: Some(entry.value.clone()),
            message: message.into(),
        }
    }
}

impl ConfigError {
    /// A problem with the file as a whole (it cannot be read, it is not a file), no line or key.
    pub fn file(path: &Path, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.to_path_buf(),
            problems: vec![Problem::file(message)],
        }
    }
}

impl fmt::Display for ConfigError {
    /// One problem per line: `<path>:<line>: [emperor] <key> = "<value>": <message>`, leaving out
    /// what is unknown (`<path>: cannot read: ...`, `<path>:3:7: syntax error: ...`). Control characters
    /// (a NUL, a newline inside a value, a terminal escape) are escaped: one problem is one printable line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        if self.problems.is_empty() {
            return write!(
                f,
                "{}: invalid vassal file",
                printable(&self.path.display().to_string())
            );
        }
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let mut line = self.path.display().to_string();
            if let Some(n) = p.line {
                let _ = write!(line, ":{n}");
                if let Some(column) = p.column {
                    let _ = write!(line, ":{column}");
                }
            }
            line.push_str(": ");
            if let Some(key) = &p.key {
                let _ = write!(line, "[{SECTION}] {key}");
                if let Some(value) = &p.value {
                    let _ = write!(line, " = \"{value}\"");
                }
                line.push_str(": ");
            }
            line.push_str(&p.message);
            f.write_str(&printable(&line))?;
        }
        Ok(())
    }
}

/// `s` with its control characters escaped as Rust writes them (`\0`, `\n`, `\u{1b}`), everything else
/// as it is. Text that came from a vassal file or directory goes through this before it reaches a log line
/// or a terminal, so a NUL byte shows instead of vanishing and an escape sequence cannot drive the terminal.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

impl std::error::Error for ConfigError {}

/// Reads and parses the vassal file at `path`; its name is the file name.
pub fn load(path: &Path, vassals_dir: &Path) -> Result<VassalConfig, ConfigError> {
    let fail = |message: String| ConfigError {
        path: path.to_path_buf(),
        problems: vec![Problem::file(message)],
    };
    let name = match path.file_name().map(|n| n.to_str()) {
        Some(Some(name)) => name.to_owned(),
        Some(None) => return Err(fail("file name is not valid utf-8".into())),
        None => return Err(fail("path has no file name".into())),
    };
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        ConfigError {
            path: path.to_path_buf(),
            problems: vec![Problem::at_line(
                line,
                format!("not valid UTF-8 (bad byte at offset {at}); a vassal file is UTF-8 text"),
            )],
        }
    })?;
    parse(&name, path, &text, vassals_dir)
}

/// Parses vassal file content. `name` is the vassal name (`app.ini`), `path` is used in errors,
/// `vassals_dir` anchors relative paths.
pub fn parse(name: &str, path: &Path, text: &str, vassals_dir: &Path) -> Result<VassalConfig, ConfigError> {
    if let Some(at) = text.find('\0') {
        let line = text[..at].matches('\n').count() + 1;
        let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
        let shown = text[start..end].trim_end_matches('\r');
        return Err(ConfigError {
            path: path.to_path_buf(),
            problems: vec![Problem::at_line(
                line,
                format!("a NUL byte in \"{shown}\"; a vassal file is text (uWSGI would stop reading the line there)"),
            )],
        });
    }
    if is_blank(text) {
        return Err(ConfigError::file(
            path,
            "empty file: nothing to run (give it an [emperor] section with exec or docker-image, or a [uwsgi] section)",
        ));
    }
    let raw = RawVassal::read(text);
    let mut problems = raw.problems.clone();
    let config = build(name, path, text, vassals_dir, &raw, &mut problems);
    if problems.is_empty() {
        Ok(config)
    } else {
        // Stable: problems on the same line keep their order; file-level ones go last.
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Err(ConfigError {
            path: path.to_path_buf(),
            problems,
        })
    }
}

/// Nothing but blank lines and comments: such a file is not a uWSGI vassal either (uWSGI would fail with
/// `Can't find section "uwsgi"` and be restarted forever).
fn is_blank(text: &str) -> bool {
    text.strip_prefix('\u{feff}').unwrap_or(text).lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with(';') || l.starts_with('#')
    })
}

// ---------------------------------------------------------------------------------------------
// Raw layer
// ---------------------------------------------------------------------------------------------

/// One `key = value` of the `[emperor]` section, as rust-ini read it, with its line.
#[derive(Debug, Clone, PartialEq)]
struct RawEntry {
    key: String,
    value: String,
    line: Option<usize>,
}

/// The `[emperor]` section, untouched except for trimming, in file order (all `[emperor]`
/// sections of the file, concatenated), plus the syntax problems found on the way.
#[derive(Debug, Default)]
struct RawVassal {
    entries: Vec<RawEntry>,
    problems: Vec<Problem>,
    /// A `[uwsgi]` header was seen.
    uwsgi_section: bool,
}

impl RawVassal {
    fn read(text: &str) -> RawVassal {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut raw = RawVassal::default();
        // Keys in the order rust-ini will see them, with their lines.
        let mut located: Vec<(String, usize)> = Vec::new();
        let mut masked = String::with_capacity(text.len());
        let mut in_ours = false;

        for (index, line) in text.split('\n').enumerate() {
            let line_no = index + 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            let trimmed = line.trim();
            if index > 0 {
                masked.push('\n');
            }
            if trimmed.starts_with('[') {
                // uWSGI ini.c: a header is `[` ... last char; anything else on the line is part
                // of the name, so `[emperor] ; x` is not our section.
                let header =
                    (trimmed.ends_with(']') && trimmed.len() >= 2).then(|| trimmed[1..trimmed.len() - 1].trim());
                in_ours = header == Some(SECTION);
                raw.uwsgi_section |= header == Some("uwsgi");
                if in_ours {
                    masked.push('[');
                    masked.push_str(SECTION);
                    masked.push(']');
                }
                continue;
            }
            if !in_ours || trimmed.is_empty() || trimmed.starts_with(';') || trimmed.starts_with('#') {
                continue;
            }
            match key_end(line) {
                None => {
                    raw.problems.push(Problem::at_line(
                        line_no,
                        format!("expected \"key = value\", found \"{trimmed}\""),
                    ));
                }
                Some(end) => {
                    located.push((line[..end].trim().to_owned(), line_no));
                    masked.push_str(line);
                    if line.ends_with('\\') {
                        // Keep the backslash literal: rust-ini joins `\`+newline to the next line.
                        masked.push(' ');
                    }
                }
            }
        }

        let options = ParseOption {
            enabled_quote: false,
            enabled_escape: false,
            ..Default::default()
        };
        let ini = match Ini::load_from_str_opt(&masked, options) {
            Ok(ini) => ini,
            Err(e) => {
                raw.problems.push(Problem {
                    line: Some(e.line),
                    column: Some(e.col),
                    key: None,
                    value: None,
                    message: format!("syntax error: {}", e.msg.trim_end_matches('.')),
                });
                return raw;
            }
        };

        let mut located = located.into_iter();
        for props in ini.section_all(Some(SECTION)) {
            for (key, value) in props.iter() {
                let line = match located.next() {
                    Some((k, line)) if k == key => Some(line),
                    _ => None,
                };
                raw.entries.push(RawEntry {
                    key: key.to_owned(),
                    value: value.trim().to_owned(),
                    line,
                });
            }
        }
        raw
    }
}

/// Byte offset of the `=` or `:` that ends the key on this line, scanning as rust-ini does
/// (a backslash takes the next character into the key). `None`: no separator on the line.
fn key_end(line: &str) -> Option<usize> {
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '=' | ':' => return Some(i),
            '\\' => {
                chars.next();
            }
            _ => {}
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Typed layer
// ---------------------------------------------------------------------------------------------

fn empty_config(name: &str, path: &Path, text: &str) -> VassalConfig {
    VassalConfig {
        name: name.to_owned(),
        path: path.to_path_buf(),
        sockets: Vec::new(),
        exec: None,
        env: Vec::new(),
        chdir: None,
        stop_signal: None,
        stop_timeout: None,
        chmod_socket: None,
        chown_socket: None,
        listen: None,
        emperor_hash: 0,
        text: text.to_owned(),
        docker: None,
        uwsgi_section: false,
        on_demand: false,
        precreate: true,
        idle: None,
        idle_action: IdleAction::Stop,
        routes: Vec::new(),
        reload_overlap: true,
        ready_delay: None,
        logto: None,
        log_maxsize: None,
    }
}

fn empty_docker(name: &str) -> DockerConfig {
    DockerConfig {
        image: String::new(),
        container_name: name.to_owned(),
        ports: Vec::new(),
        workdir: None,
        mounts: Vec::new(),
        network_mode: None,
        hostname: None,
        proxy: None,
        env: Vec::new(),
        user: None,
        memory: None,
        swap: None,
        cidfile: None,
        dns: Vec::new(),
        shim: true,
    }
}

/// Checks and converts every entry, appending to `problems`. The returned config is meaningful
/// only if no problem was added.
fn build(
    name: &str,
    path: &Path,
    text: &str,
    vassals_dir: &Path,
    raw: &RawVassal,
    problems: &mut Vec<Problem>,
) -> VassalConfig {
    let mut config = empty_config(name, path, text);
    config.uwsgi_section = raw.uwsgi_section;
    // The first `docker-image` line makes this a Docker vassal, even if its value is invalid:
    // the other keys are then checked as Docker keys, which gives the most useful messages.
    let image_entry = raw.entries.iter().find(|e| e.key == "docker-image");
    let is_docker = image_entry.is_some();
    config.emperor_hash = emperor_hash(&raw.entries, is_docker && raw.uwsgi_section);
    let mut docker = empty_docker(name);
    let mut first_seen: HashMap<&str, Option<usize>> = HashMap::new();
    let mut socket_lines: HashMap<SocketAddrSpec, Option<usize>> = HashMap::new();
    let mut port_lines: HashMap<(Option<IpAddr>, u16, String), Option<usize>> = HashMap::new();
    let mut mount_lines: HashMap<String, Option<usize>> = HashMap::new();
    let mut swap_entry: Option<&RawEntry> = None;
    // An invalid socket line may be the one a route names; no route check then, only its problem.
    let mut socket_invalid = false;
    // Each route with the entry it came from, for the checks that need every socket first.
    let mut route_entries: Vec<&RawEntry> = Vec::new();
    let mut idle_action_entry: Option<&RawEntry> = None;
    let mut log_maxsize_entry: Option<&RawEntry> = None;

    for entry in &raw.entries {
        let key = entry.key.as_str();
        if !KNOWN_KEYS.contains(&key) {
            let message = match (RETIRED_KEYS.iter().find(|(k, _)| *k == key), suggest(key)) {
                (Some((_, hint)), _) => (*hint).to_owned(),
                (None, Some(known)) => format!("unknown key; did you mean \"{known}\"?"),
                (None, None) => "unknown key".to_owned(),
            };
            problems.push(Problem::for_entry(entry, message));
            continue;
        }
        if !REPEATABLE_KEYS.contains(&key) {
            if let Some(first) = first_seen.get(key) {
                let message = match first {
                    Some(line) => format!("given twice (first on line {line})"),
                    None => "given twice".to_owned(),
                };
                problems.push(Problem::for_entry(entry, message));
                continue;
            }
            first_seen.insert(key, entry.line);
        }
        if !is_docker && key.starts_with("docker-") {
            problems.push(Problem::for_entry(entry, "needs docker-image"));
            continue;
        }
        let value = entry.value.as_str();
        if value.is_empty() {
            problems.push(Problem::for_entry(entry, "empty value"));
            continue;
        }
        let result: Result<(), String> = match key {
            "socket" | "docker-socket" => parse_socket(value, Some(vassals_dir)).and_then(|spec| {
                if let Some(first) = socket_lines.get(&spec.addr) {
                    return Err(match first {
                        Some(line) => format!("address {} already used by the socket on line {line}", spec.addr),
                        None => format!("address {} already used by another socket", spec.addr),
                    });
                }
                socket_lines.insert(spec.addr.clone(), entry.line);
                config.sockets.push(spec);
                Ok(())
            }),
            "exec" => parse_exec(value).map(|argv| config.exec = Some(argv)),
            "env" => parse_env(value).map(|kv| config.env.push(kv)),
            "chdir" if is_docker => Err("use docker-workdir for a container's working directory".to_owned()),
            "chdir" => parse_chdir(value, vassals_dir).map(|dir| config.chdir = Some(dir)),
            "stop-signal" => parse_signal(value).map(|sig| config.stop_signal = Some(sig)),
            "stop-timeout" => parse_timeout(value).map(|t| config.stop_timeout = Some(t)),
            "chmod-socket" => parse_mode(value).map(|m| config.chmod_socket = Some(m)),
            "chown-socket" => parse_owner(value).map(|o| config.chown_socket = Some(o)),
            "listen" => parse_backlog(value).map(|n| config.listen = Some(n)),
            "docker-image" => parse_image(value).map(|image| docker.image = image),
            "docker-port" => parse_port_map(value).and_then(|port| {
                let id = (port.host_ip, port.host_port, port.proto.clone());
                if let Some(first) = port_lines.get(&id) {
                    let shown = match port.host_ip {
                        Some(IpAddr::V6(ip)) => format!("[{ip}]:{}/{}", port.host_port, port.proto),
                        Some(ip) => format!("{ip}:{}/{}", port.host_port, port.proto),
                        None => format!("{}/{}", port.host_port, port.proto),
                    };
                    return Err(match first {
                        Some(line) => format!("host port {shown} already mapped on line {line}"),
                        None => format!("host port {shown} already mapped"),
                    });
                }
                port_lines.insert(id, entry.line);
                docker.ports.push(port);
                Ok(())
            }),
            "docker-workdir" => parse_container_path(value, "working directory").map(|w| docker.workdir = Some(w)),
            "docker-mount" => parse_mount(value, vassals_dir).and_then(|mount| {
                if let Some(first) = mount_lines.get(&mount.container) {
                    return Err(match first {
                        Some(line) => format!("container path {} already mounted on line {line}", mount.container),
                        None => format!("container path {} already mounted", mount.container),
                    });
                }
                mount_lines.insert(mount.container.clone(), entry.line);
                docker.mounts.push(mount);
                Ok(())
            }),
            "docker-network-mode" => parse_network_mode(value).map(|n| docker.network_mode = Some(n)),
            "docker-hostname" => parse_hostname(value).map(|h| docker.hostname = Some(h)),
            "docker-proxy" => parse_proxy(value).map(|p| docker.proxy = Some(p)),
            "docker-env" => parse_env(value).map(|kv| docker.env.push(kv)),
            "docker-user" => parse_docker_user(value).map(|u| docker.user = Some(u)),
            "docker-memory" => parse_memory(value).map(|m| docker.memory = Some(m)),
            "docker-swap" => parse_swap(value).map(|m| {
                docker.swap = Some(m);
                swap_entry = Some(entry);
            }),
            "docker-cidfile" => parse_host_path(value, vassals_dir).map(|p| docker.cidfile = Some(p)),
            "docker-dns" => value
                .parse::<IpAddr>()
                .map(|ip| docker.dns.push(ip))
                .map_err(|_| format!("\"{value}\" is not an ip address")),
            "docker-shim" => parse_bool(value).map(|b| docker.shim = b),
            "on-demand" => parse_bool(value).map(|b| config.on_demand = b),
            "docker-precreate" => parse_bool(value).map(|b| config.precreate = b),
            "reload-overlap" => parse_bool(value).map(|b| config.reload_overlap = b),
            "ready-delay" => parse_seconds(value, "ready-delay").map(|t| config.ready_delay = Some(t)),
            "idle" => parse_seconds(value, "idle").map(|t| config.idle = Some(t)),
            "logto" => parse_host_path(value, vassals_dir).map(|p| config.logto = Some(p)),
            "log-maxsize" => parse_log_maxsize(value).map(|n| {
                config.log_maxsize = Some(n);
                log_maxsize_entry = Some(entry);
            }),
            "idle-action" => parse_idle_action(value).map(|a| {
                config.idle_action = a;
                idle_action_entry = Some(entry);
            }),
            "domains" => {
                let mut result = Ok(());
                for host in value.split_whitespace() {
                    let added = parse_host(host).and_then(|host| {
                        add_route(
                            &mut config.routes,
                            &mut route_entries,
                            entry,
                            Route { host, socket: None },
                        )
                    });
                    if let Err(message) = added {
                        // One problem per bad host, all on this line.
                        problems.push(Problem::for_entry(entry, message));
                        result = Err(String::new());
                    }
                }
                match result {
                    Err(_) => continue,
                    ok => ok,
                }
            }
            "domain" => {
                parse_domain(value).and_then(|route| add_route(&mut config.routes, &mut route_entries, entry, route))
            }
            // KNOWN_KEYS lists a key that has no parser: a bug here, reported rather than ignored.
            _ => Err("known key without a parser (emperor bug)".to_owned()),
        };
        if let Err(message) = result {
            if matches!(key, "socket" | "docker-socket") {
                socket_invalid = true;
            }
            problems.push(Problem::for_entry(entry, message));
        }
    }

    // Keys that depend on others, checked once every line is known (order in the file is free).
    if let Some(entry) = idle_action_entry
        && config.idle.is_none()
        && !first_seen.contains_key("idle")
    {
        problems.push(Problem::for_entry(
            entry,
            "needs idle: the action is taken after \"idle = <seconds>\" without a connection",
        ));
    }
    if let Some(entry) = log_maxsize_entry
        && !first_seen.contains_key("logto")
    {
        problems.push(Problem::for_entry(
            entry,
            "needs logto: only a vassal's own log file is rotated (Docker's copy is bounded already)",
        ));
    }
    if !socket_invalid {
        check_route_targets(&config, &route_entries, problems);
    }

    if let Some(image_entry) = image_entry {
        if let Err(message) = check_container_name(name) {
            problems.push(Problem::for_entry(image_entry, message));
        }
        // An invalid docker-memory has its own problem; comparing with it would only add noise.
        let memory_invalid = docker.memory.is_none() && first_seen.contains_key("docker-memory");
        if let (Some(swap), Some(swap_entry), false) = (docker.swap, swap_entry, memory_invalid) {
            let message = match docker.memory {
                _ if swap == -1 => None,
                None => Some(
                    "needs docker-memory: docker-swap is the limit on memory plus swap (Docker's MemorySwap), \
                     and Docker refuses it without a memory limit"
                        .to_owned(),
                ),
                Some(memory) if swap < memory => Some(format!(
                    "docker-swap is the limit on memory plus swap (Docker's MemorySwap), so it must be at \
                     least docker-memory ({memory} bytes), or -1 for unlimited swap"
                )),
                Some(_) => None,
            };
            if let Some(message) = message {
                problems.push(Problem::for_entry(swap_entry, message));
            }
        }
        config.docker = Some(docker);
    }
    config
}

/// The closest known key, if it is close enough to be a plausible typo.
fn suggest(key: &str) -> Option<&'static str> {
    KNOWN_KEYS
        .iter()
        .map(|known| (*known, strsim::jaro_winkler(key, known)))
        .filter(|(_, score)| *score >= SUGGESTION_THRESHOLD)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(known, _)| known)
}

/// FNV-1a 64 over length-prefixed keys and values: stable across builds and Rust versions,
/// unlike `DefaultHasher`, so it can outlive the process (container labels). `uwsgi_section`
/// adds a marker (for Docker vassals, whose container command depends on it); the marker's key
/// `[uwsgi]` cannot be an `[emperor]` key, so it cannot collide with a real entry.
/// Keys that change only what the emperor does around the vassal (when to start it, when it is idle,
/// which hosts route to it, where its output goes), not the process or container itself: changing
/// them must not restart it, so they are left out of [`VassalConfig::emperor_hash`]. Their new
/// values apply at once.
const EMPEROR_ONLY_KEYS: &[&str] = &[
    "on-demand",
    "docker-precreate",
    "idle",
    "idle-action",
    "domains",
    "domain",
    "reload-overlap",
    "ready-delay",
    "logto",
    "log-maxsize",
];

fn emperor_hash(entries: &[RawEntry], uwsgi_section: bool) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    for entry in entries.iter().filter(|e| !EMPEROR_ONLY_KEYS.contains(&e.key.as_str())) {
        feed(entry.key.as_bytes());
        feed(entry.value.as_bytes());
    }
    if uwsgi_section {
        feed(b"[uwsgi]");
        feed(b"");
    }
    hash
}

/// `base/rel` with `.` components dropped (no filesystem access, `..` kept: symlinks make
/// lexical `..` removal wrong).
fn resolve(base: &Path, rel: &Path) -> PathBuf {
    base.join(rel).components().collect()
}

fn parse_socket(spec: &str, base: Option<&Path>) -> Result<SocketSpec, String> {
    let spec = spec.trim();
    let (name, addr) = match spec.strip_prefix("name=") {
        Some(rest) => match rest.split_once(',') {
            Some((name, addr)) => (Some(check_socket_name(name.trim())?), addr.trim()),
            None => return Err("a named socket is written \"name=<name>,<address>\"".to_owned()),
        },
        None => (None, spec),
    };
    Ok(SocketSpec {
        name,
        addr: parse_socket_addr(addr, base)?,
    })
}

fn check_socket_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("socket name is empty".to_owned());
    }
    if name.len() > MAX_SOCKET_NAME_LEN {
        return Err(format!(
            "socket name is {} bytes; the limit is {MAX_SOCKET_NAME_LEN}",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(format!("socket name \"{name}\" may contain only A-Z a-z 0-9 _ . -"));
    }
    Ok(name.to_owned())
}

fn parse_socket_addr(addr: &str, base: Option<&Path>) -> Result<SocketAddrSpec, String> {
    if addr.is_empty() {
        return Err("empty socket address".to_owned());
    }
    if addr.contains('\0') {
        return Err("socket address contains a nul byte".to_owned());
    }
    if let Some(name) = addr.strip_prefix('@') {
        if name.is_empty() {
            return Err("abstract socket name after '@' is empty".to_owned());
        }
        // sun_path holds a leading NUL byte, then the name.
        if name.len() >= SUN_PATH_LEN {
            return Err(format!(
                "abstract socket name is {} bytes; the limit is {} (sun_path)",
                name.len(),
                SUN_PATH_LEN - 1
            ));
        }
        return Ok(SocketAddrSpec::Abstract(name.to_owned()));
    }
    if addr.contains('/') || addr.ends_with(".sock") {
        let path = Path::new(addr);
        let path = match base {
            Some(base) if path.is_relative() => resolve(base, path),
            _ => path.to_path_buf(),
        };
        let len = path.as_os_str().len();
        if len >= SUN_PATH_LEN {
            return Err(format!(
                "unix socket path {} is {len} bytes; it must be shorter than {SUN_PATH_LEN} (sun_path)",
                path.display()
            ));
        }
        return Ok(SocketAddrSpec::Unix(path));
    }
    if addr.contains(':') {
        return parse_tcp(addr).map(SocketAddrSpec::Tcp);
    }
    Err("not a unix socket path (containing '/' or ending in .sock), @abstract name or host:port".to_owned())
}

fn parse_tcp(addr: &str) -> Result<SocketAddr, String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err("expected host:port".to_owned());
    };
    let ip: IpAddr = if host.is_empty() {
        Ipv4Addr::UNSPECIFIED.into()
    } else if host == "localhost" {
        Ipv4Addr::LOCALHOST.into()
    } else if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<Ipv6Addr>()
            .map_err(|_| format!("\"{v6}\" is not an ipv6 address"))?
            .into()
    } else if host.contains(':') || host.contains('[') || host.contains(']') {
        return Err("an ipv6 address needs brackets, as in [::1]:8000".to_owned());
    } else {
        host.parse::<Ipv4Addr>()
            .map_err(|_| format!("\"{host}\" is not an ip address (only localhost is resolved; no dns)"))?
            .into()
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("\"{port}\" is not a port number"));
    }
    let port: u16 = port.parse().map_err(|_| format!("port {port} is above 65535"))?;
    if port == 0 {
        return Err("port 0 is not allowed: the socket must keep its address across restarts".to_owned());
    }
    Ok(SocketAddr::new(ip, port))
}

fn parse_exec(value: &str) -> Result<Vec<String>, String> {
    if value.contains('\0') {
        return Err("command contains a nul byte".to_owned());
    }
    match shlex::split(value) {
        None => Err("unbalanced quotes or trailing backslash".to_owned()),
        Some(argv) if argv.first().is_none_or(String::is_empty) => Err("empty command".to_owned()),
        Some(argv) => Ok(argv),
    }
}

fn parse_env(value: &str) -> Result<(String, String), String> {
    let Some((k, v)) = value.split_once('=') else {
        return Err("expected NAME=VALUE".to_owned());
    };
    if k.is_empty() {
        return Err("variable name is empty".to_owned());
    }
    if k.chars().any(char::is_whitespace) {
        return Err(format!("variable name \"{k}\" contains whitespace"));
    }
    if value.contains('\0') {
        return Err("contains a nul byte".to_owned());
    }
    Ok((k.to_owned(), v.to_owned()))
}

fn parse_chdir(value: &str, vassals_dir: &Path) -> Result<PathBuf, String> {
    if value.contains('\0') {
        return Err("path contains a nul byte".to_owned());
    }
    let path = Path::new(value);
    Ok(if path.is_relative() {
        resolve(vassals_dir, path)
    } else {
        path.to_path_buf()
    })
}

/// `SIGTERM`, `TERM`, `term` or a number such as `15`.
fn parse_signal(value: &str) -> Result<Signal, String> {
    if value.bytes().all(|b| b.is_ascii_digit()) {
        let n: i32 = value.parse().map_err(|_| "not a signal number".to_owned())?;
        return Signal::try_from(n).map_err(|_| format!("{n} is not a signal number"));
    }
    let upper = value.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&full).map_err(|_| "unknown signal".to_owned())
}

/// Seconds, integer or decimal (`2`, `0.5`); no sign, exponent, `inf` or `nan`.
fn parse_timeout(value: &str) -> Result<Duration, String> {
    parse_seconds(value, "timeout")
}

/// Seconds as for [`parse_timeout`]; `what` names the value in messages.
fn parse_seconds(value: &str, what: &str) -> Result<Duration, String> {
    let digits = value.bytes().filter(u8::is_ascii_digit).count();
    let dots = value.bytes().filter(|b| *b == b'.').count();
    if digits == 0 || dots > 1 || digits + dots != value.len() {
        return Err("expected seconds, such as 10 or 0.5".to_owned());
    }
    let secs: f64 = value
        .parse()
        .map_err(|_| "expected seconds, such as 10 or 0.5".to_owned())?;
    let timeout = Duration::try_from_secs_f64(secs).map_err(|_| format!("{what} is too large"))?;
    if timeout.is_zero() {
        return Err(format!("{what} must be greater than 0"));
    }
    Ok(timeout)
}

/// Octal `660` or `0660`, at most `7777`.
fn parse_mode(value: &str) -> Result<u32, String> {
    if !value.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err("expected an octal mode such as 660".to_owned());
    }
    match u32::from_str_radix(value, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err("mode is above 7777".to_owned()),
    }
}

/// `user`, `user:group` or `:group`; numeric ids are taken as they are, names must exist in
/// /etc/passwd or /etc/group (see `lookup_in_file`).
pub fn parse_owner(value: &str) -> Result<Owner, String> {
    let (user, group) = match value.split_once(':') {
        Some((user, group)) => (user.trim(), Some(group.trim())),
        None => (value, None),
    };
    if group == Some("") {
        return Err("empty group after ':'".to_owned());
    }
    let uid = if user.is_empty() {
        None
    } else {
        Some(lookup_user(user)?)
    };
    let gid = group.map(lookup_group).transpose()?;
    Ok(Owner { uid, gid })
}

fn numeric_id(name: &str, what: &str) -> Option<Result<u32, String>> {
    if !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(name.parse().map_err(|_| format!("{what} id {name} is out of range")))
}

fn lookup_user(name: &str) -> Result<u32, String> {
    if let Some(id) = numeric_id(name, "user") {
        return id;
    }
    match lookup_in_file(Path::new("/etc/passwd"), name)? {
        Some(id) => Ok(id),
        None => Err(format!("unknown user \"{name}\"")),
    }
}

fn lookup_group(name: &str) -> Result<u32, String> {
    if let Some(id) = numeric_id(name, "group") {
        return id;
    }
    match lookup_in_file(Path::new("/etc/group"), name)? {
        Some(id) => Ok(id),
        None => Err(format!("unknown group \"{name}\"")),
    }
}

/// The id (third field) of `name` in a passwd- or group-format file.
///
/// Not NSS (`getpwnam_r`): the binary is linked statically, and glibc then `dlopen`s the NSS
/// modules that follow `files` in nsswitch.conf (`systemd`, `sss`, `ldap`, ...), which crashes a
/// static process for any name the files do not have. Users and groups that exist only in such
/// databases must therefore be given by number.
fn lookup_in_file(file: &Path, name: &str) -> Result<Option<u32>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    for line in text.lines() {
        let mut fields = line.split(':');
        if fields.next() != Some(name) {
            continue;
        }
        let id = fields.nth(1).unwrap_or_default();
        return id
            .parse()
            .map(Some)
            .map_err(|_| format!("{}: \"{name}\" has an invalid id \"{id}\"", file.display()));
    }
    Ok(None)
}

fn parse_backlog(value: &str) -> Result<u32, String> {
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a number from 1 to 65535".to_owned());
    }
    match value.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n),
        _ => Err("expected a number from 1 to 65535".to_owned()),
    }
}

// ---------------------------------------------------------------------------------------------
// Docker keys
// ---------------------------------------------------------------------------------------------

/// Docker's rule for container (and network) names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn is_docker_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The container name is the vassal name; an error suggests a file name Docker would accept.
fn check_container_name(name: &str) -> Result<(), String> {
    if is_docker_name(name) {
        return Ok(());
    }
    let stem = name.strip_suffix(".ini").unwrap_or(name);
    let mapped: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let fixed = mapped.trim_start_matches(['_', '.', '-']);
    let suggested = format!("{}.ini", if fixed.is_empty() { "vassal" } else { fixed });
    Err(format!(
        "the vassal name \"{name}\" is not a valid container name ([a-zA-Z0-9][a-zA-Z0-9_.-]*); \
         rename the file, e.g. \"{suggested}\""
    ))
}

fn check_no_control(value: &str, what: &str) -> Result<(), String> {
    if value.chars().any(char::is_control) {
        return Err(format!("{what} contains a control character"));
    }
    Ok(())
}

/// An image reference; Docker checks the rest when it looks the image up.
fn parse_image(value: &str) -> Result<String, String> {
    if value.chars().any(char::is_whitespace) {
        return Err("an image name contains no whitespace".to_owned());
    }
    check_no_control(value, "image name")?;
    Ok(value.to_owned())
}

const PORT_SYNTAX: &str = "expected \"hostport:containerport\" or \"hostip:hostport:containerport\" \
                           (containerport optionally followed by /tcp or /udp; an ipv6 hostip in brackets)";

fn parse_port_number(value: &str, what: &str) -> Result<u16, String> {
    if value.is_empty() {
        return Err(format!("{what} is empty; {PORT_SYNTAX}"));
    }
    if value.contains('-') && value.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return Err(format!("{what} \"{value}\": port ranges are not supported"));
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} \"{value}\" is not a port number; {PORT_SYNTAX}"));
    }
    match value.parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        _ => Err(format!("{what} {value} is not from 1 to 65535")),
    }
}

/// `[hostip:]hostport:containerport[/tcp|/udp]`; `hostip` is IPv4 or `[IPv6]`.
fn parse_port_map(value: &str) -> Result<PortMap, String> {
    let (host_ip, rest) = if let Some(after) = value.strip_prefix('[') {
        let Some((ip, rest)) = after.split_once(']') else {
            return Err(PORT_SYNTAX.to_owned());
        };
        let ip: Ipv6Addr = ip.parse().map_err(|_| format!("\"{ip}\" is not an ipv6 address"))?;
        let Some(rest) = rest.strip_prefix(':') else {
            return Err(PORT_SYNTAX.to_owned());
        };
        (Some(IpAddr::V6(ip)), rest)
    } else {
        match value.split(':').count() {
            2 => (None, value),
            3 => {
                let (ip, rest) = value.split_once(':').unwrap_or_default();
                if ip.is_empty() {
                    return Err(format!("host ip is empty; {PORT_SYNTAX}"));
                }
                let ip: Ipv4Addr = ip
                    .parse()
                    .map_err(|_| format!("\"{ip}\" is not an ip address (an ipv6 one needs brackets)"))?;
                (Some(IpAddr::V4(ip)), rest)
            }
            _ => return Err(PORT_SYNTAX.to_owned()),
        }
    };
    let Some((host_port, container)) = rest.split_once(':') else {
        return Err(PORT_SYNTAX.to_owned());
    };
    if container.contains(':') {
        return Err(PORT_SYNTAX.to_owned());
    }
    let (container_port, proto) = match container.split_once('/') {
        Some((port, proto @ ("tcp" | "udp"))) => (port, proto),
        Some((_, proto)) => return Err(format!("protocol \"{proto}\" is not tcp or udp")),
        None => (container, "tcp"),
    };
    Ok(PortMap {
        host_ip,
        host_port: parse_port_number(host_port, "host port")?,
        container_port: parse_port_number(container_port, "container port")?,
        proto: proto.to_owned(),
    })
}

/// A path inside the container: absolute, kept as written.
fn parse_container_path(value: &str, what: &str) -> Result<String, String> {
    check_no_control(value, what)?;
    if !value.starts_with('/') {
        return Err(format!(
            "{what} \"{value}\" must be an absolute path inside the container"
        ));
    }
    Ok(value.to_owned())
}

/// A path on the host: relative to the vassals dir unless absolute.
fn parse_host_path(value: &str, vassals_dir: &Path) -> Result<PathBuf, String> {
    check_no_control(value, "path")?;
    let path = Path::new(value);
    Ok(if path.is_relative() {
        resolve(vassals_dir, path)
    } else {
        path.to_path_buf()
    })
}

const MOUNT_SYNTAX: &str = "expected \"hostpath:containerpath\" or \"hostpath:containerpath:ro\" (or :rw)";

/// `host:container[:ro|rw]`, `docker run -v` style.
fn parse_mount(value: &str, vassals_dir: &Path) -> Result<Mount, String> {
    let parts: Vec<&str> = value.split(':').collect();
    let (host, container, read_only) = match parts[..] {
        [host, container] => (host, container, false),
        [host, container, "ro"] => (host, container, true),
        [host, container, "rw"] => (host, container, false),
        [_, _, mode] => return Err(format!("mode \"{mode}\" is not ro or rw; {MOUNT_SYNTAX}")),
        _ => return Err(MOUNT_SYNTAX.to_owned()),
    };
    if host.is_empty() || container.is_empty() {
        return Err(format!("empty path; {MOUNT_SYNTAX}"));
    }
    Ok(Mount {
        host: parse_host_path(host, vassals_dir)?,
        container: parse_container_path(container, "container path")?,
        read_only,
    })
}

/// `none`, `host`, `bridge`, `container:<name|id>` or the name of a network.
fn parse_network_mode(value: &str) -> Result<String, String> {
    if let Some(container) = value.strip_prefix("container:") {
        if !is_docker_name(container) {
            return Err(format!(
                "\"{container}\" is not a container name or id ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"
            ));
        }
    } else if !is_docker_name(value) {
        return Err("expected none, host, bridge, container:<name|id> or a network name \
                    ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"
            .to_owned());
    }
    Ok(value.to_owned())
}

/// RFC 1123 labels joined by dots, within Linux's `HOST_NAME_MAX`.
fn parse_hostname(value: &str) -> Result<String, String> {
    if value.len() > HOST_NAME_MAX {
        return Err(format!(
            "hostname is {} bytes; the limit is {HOST_NAME_MAX} (linux HOST_NAME_MAX)",
            value.len()
        ));
    }
    for label in value.split('.') {
        let valid = (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(format!(
                "\"{label}\" is not a hostname label (rfc 1123: 1 to 63 of a-z A-Z 0-9 -, \
                 not starting or ending with -)"
            ));
        }
    }
    Ok(value.to_owned())
}

/// `hostpath:containerpath`, or one path for both; both absolute socket paths.
fn parse_proxy(value: &str) -> Result<ProxyPaths, String> {
    const SYNTAX: &str = "expected \"hostpath:containerpath\" or one path for both";
    let (host, container) = match value.split_once(':') {
        Some((host, container)) if !container.contains(':') => (host, container),
        Some(_) => return Err(SYNTAX.to_owned()),
        None => (value, value),
    };
    for (side, path) in [("host", host), ("container", container)] {
        if path.is_empty() {
            return Err(format!("{side} path is empty; {SYNTAX}"));
        }
        check_no_control(path, "path")?;
        if !path.starts_with('/') {
            return Err(format!("{side} path \"{path}\" must be absolute"));
        }
        if path.ends_with('/') {
            return Err(format!(
                "{side} path \"{path}\" names a directory; it must name the socket"
            ));
        }
        if path.len() >= SUN_PATH_LEN {
            return Err(format!(
                "{side} path {path} is {} bytes; it must be shorter than {SUN_PATH_LEN} (sun_path)",
                path.len()
            ));
        }
        if Path::new(path).parent() == Some(Path::new("/")) {
            return Err(format!(
                "{side} path \"{path}\" is directly in /: the socket's directory is bind-mounted into the \
                 container, so use a directory of its own, such as /run/emperor/<name>/proxy.sock"
            ));
        }
    }
    Ok(ProxyPaths {
        host: PathBuf::from(host),
        container: container.to_owned(),
    })
}

/// `name`, `uid`, `uid:gid` or `name:group`; resolved in the container, so only the form is checked.
fn parse_docker_user(value: &str) -> Result<String, String> {
    const SYNTAX: &str = "expected \"name\", \"uid\", \"uid:gid\" or \"name:group\"";
    let parts: Vec<&str> = value.split(':').collect();
    if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(SYNTAX.to_owned());
    }
    for part in parts {
        if part.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("\"{part}\" contains whitespace; {SYNTAX}"));
        }
        if part.bytes().all(|b| b.is_ascii_digit()) && part.parse::<u32>().is_err() {
            return Err(format!("id {part} is out of range"));
        }
    }
    Ok(value.to_owned())
}

/// Bytes: digits with an optional binary `k`/`m`/`g` suffix (either case).
fn parse_size(value: &str) -> Result<i64, String> {
    let (digits, unit) = match value.as_bytes().last() {
        Some(b'k' | b'K') => (&value[..value.len() - 1], 1i64 << 10),
        Some(b'm' | b'M') => (&value[..value.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&value[..value.len() - 1], 1 << 30),
        _ => (value, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "\"{value}\" is not a number of bytes; expected an integer with an optional k, m or g \
             suffix (binary: 1k = 1024), such as 536870912 or 512m"
        ));
    }
    digits
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{value} is too large"))
}

fn parse_log_maxsize(value: &str) -> Result<u64, String> {
    match parse_size(value)? {
        0 => Err("must be more than 0 bytes".to_owned()),
        n => Ok(n as u64),
    }
}

fn parse_memory(value: &str) -> Result<i64, String> {
    let bytes = parse_size(value)?;
    if bytes < DOCKER_MIN_MEMORY {
        return Err(format!(
            "{bytes} bytes is below Docker's minimum memory limit of 6m ({DOCKER_MIN_MEMORY} bytes)"
        ));
    }
    Ok(bytes)
}

/// A size as for `docker-memory`, or `-1` for unlimited; compared with the memory in `build`.
fn parse_swap(value: &str) -> Result<i64, String> {
    if value == "-1" {
        return Ok(-1);
    }
    parse_size(value).map_err(|e| format!("{e}, or -1 for unlimited"))
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err("expected true, false, 1, 0, yes or no".to_owned()),
    }
}

// ---------------------------------------------------------------------------------------------
// On-demand, idle and Host routes
// ---------------------------------------------------------------------------------------------

fn parse_idle_action(value: &str) -> Result<IdleAction, String> {
    match value.to_ascii_lowercase().as_str() {
        "stop" => Ok(IdleAction::Stop),
        "pause" => Ok(IdleAction::Pause),
        _ => Err("expected stop or pause".to_owned()),
    }
}

/// A Host for nginx's `hostnames` map: a DNS name, `*.name` or `.name`, lowercased, one trailing
/// dot dropped. Labels are RFC 1123 (`a-z 0-9 -`, 1 to 63, not starting or ending with `-`) plus
/// `_`, which real names use (`_acme-challenge`) and nginx matches like any other character.
fn parse_host(value: &str) -> Result<String, String> {
    let host = value.to_ascii_lowercase();
    if host.contains(':') || host.contains('[') {
        return Err(format!(
            "\"{value}\" has a port or is an ipv6 address: a route matches nginx's $host, which is the \
             name alone (no port); write the name"
        ));
    }
    if host.contains('/') {
        return Err(format!("\"{value}\" is a url or path; write the host name alone"));
    }
    let (prefix, name) = if let Some(rest) = host.strip_prefix("*.") {
        ("*.", rest)
    } else if let Some(rest) = host.strip_prefix('.') {
        (".", rest)
    } else {
        ("", host.as_str())
    };
    if name.contains('*') {
        return Err(format!(
            "\"{value}\": a wildcard is only allowed as a leading \"*.\" (as in *.example.com)"
        ));
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(format!("\"{value}\" has no name after \"{prefix}\""));
    }
    if name.len() > MAX_HOST_LEN {
        return Err(format!(
            "\"{value}\" is {} bytes; a dns name has at most {MAX_HOST_LEN}",
            name.len()
        ));
    }
    for label in name.split('.') {
        let valid = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(format!(
                "\"{value}\" is not a host name: \"{label}\" is not a dns label (1 to 63 of a-z 0-9 - _, \
                 not starting or ending with -)"
            ));
        }
    }
    Ok(format!("{prefix}{name}"))
}

/// `domain = <host> [socket=<name>]`.
fn parse_domain(value: &str) -> Result<Route, String> {
    const SYNTAX: &str = "expected \"<host>\" or \"<host> socket=<name>\"";
    let mut words = value.split_whitespace();
    let host = parse_host(words.next().unwrap_or_default())?;
    let mut socket = None;
    for word in words {
        match word.split_once('=') {
            Some(("socket", name)) if socket.is_none() => socket = Some(check_socket_name(name)?),
            Some(("socket", _)) => return Err(format!("socket= given twice; {SYNTAX}")),
            Some((option, _)) => return Err(format!("unknown option \"{option}\"; {SYNTAX}")),
            None => {
                return Err(format!(
                    "\"{word}\": one host per domain line (use domains = for several); {SYNTAX}"
                ));
            }
        }
    }
    Ok(Route { host, socket })
}

/// Adds a route unless its host overlaps one already declared by the vassal (nginx would refuse
/// the map).
fn add_route<'a>(
    routes: &mut Vec<Route>,
    entries: &mut Vec<&'a RawEntry>,
    entry: &'a RawEntry,
    route: Route,
) -> Result<(), String> {
    if let Some(i) = routes.iter().position(|r| r.overlaps(&route)) {
        let (first, line) = (&routes[i].host, entries[i].line);
        let same = if *first == route.host {
            format!("host {} is already routed", route.host)
        } else {
            format!(
                "host {} overlaps {first} (nginx matches {} through both)",
                route.host,
                overlap_example(&routes[i], &route)
            )
        };
        return Err(match line {
            Some(line) => format!("{same} on line {line}"),
            None => same,
        });
    }
    routes.push(route);
    entries.push(entry);
    Ok(())
}

/// A name two overlapping hosts both claim, for the message.
fn overlap_example(a: &Route, b: &Route) -> String {
    let (a_exact, a_wild) = a.claims();
    let (b_exact, b_wild) = b.claims();
    match (
        a_exact.filter(|e| Some(*e) == b_exact),
        a_wild.filter(|w| Some(*w) == b_wild),
    ) {
        (Some(exact), _) => exact.to_owned(),
        (None, Some(wild)) => format!("*.{wild}"),
        (None, None) => a.host.clone(),
    }
}

/// Every route needs a socket to go to: the named one, or the first. nginx cannot connect to an
/// abstract unix socket (1.22 takes `unix:@name` as a file name), so one is refused as a target.
fn check_route_targets(config: &VassalConfig, entries: &[&RawEntry], problems: &mut Vec<Problem>) {
    let mut reported: Vec<Option<usize>> = Vec::new();
    let mut report = |entry: &RawEntry, message: String, problems: &mut Vec<Problem>| {
        // One problem per line, even for a domains line with several hosts.
        if !reported.contains(&entry.line) || entry.line.is_none() {
            reported.push(entry.line);
            problems.push(Problem::for_entry(entry, message));
        }
    };
    for (route, entry) in config.routes.iter().zip(entries) {
        let target = match &route.socket {
            None => match config.sockets.first() {
                Some(first) => first,
                None => {
                    report(
                        entry,
                        "needs a socket: requests for the host go to the vassal's first socket \
                         (or the one named with socket=), and it has none"
                            .to_owned(),
                        problems,
                    );
                    continue;
                }
            },
            Some(name) => match config.sockets.iter().find(|s| s.name.as_deref() == Some(name)) {
                Some(spec) => spec,
                None => {
                    let named: Vec<&str> = config.sockets.iter().filter_map(|s| s.name.as_deref()).collect();
                    let known = if named.is_empty() {
                        "it has no named socket (socket = name=<name>,<address>)".to_owned()
                    } else {
                        format!("its named sockets: {}", named.join(", "))
                    };
                    report(
                        entry,
                        format!("the vassal has no socket named \"{name}\"; {known}"),
                        problems,
                    );
                    continue;
                }
            },
        };
        if let SocketAddrSpec::Abstract(_) = target.addr {
            report(
                entry,
                format!(
                    "routes to the abstract socket {}, which nginx cannot connect to; route to a socket \
                     with a path or host:port (domain = <host> socket=<name>)",
                    target.addr
                ),
                problems,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = "/srv/vassals.d";

    fn ok(text: &str) -> VassalConfig {
        match parse("app.ini", Path::new("/srv/vassals.d/app.ini"), text, Path::new(DIR)) {
            Ok(config) => config,
            Err(e) => panic!("expected {text:?} to parse, got:\n{e}"),
        }
    }

    fn err(text: &str) -> ConfigError {
        match parse("app.ini", Path::new("/srv/vassals.d/app.ini"), text, Path::new(DIR)) {
            Ok(config) => panic!("expected {text:?} to fail, got {config:?}"),
            Err(e) => e,
        }
    }

    /// `[emperor]` + one line.
    fn one(line: &str) -> String {
        format!("[emperor]\n{line}\n")
    }

    fn tcp(s: &str) -> SocketAddrSpec {
        SocketAddrSpec::Tcp(s.parse().expect("test address"))
    }

    #[test]
    fn no_emperor_section_is_a_classic_vassal() {
        let text = "[uwsgi]\nhttp-socket = :8080\nmaster = true\n";
        let c = ok(text);
        assert_eq!(c.name, "app.ini");
        assert_eq!(c.path, Path::new("/srv/vassals.d/app.ini"));
        assert_eq!(c.text, text);
        assert!(c.sockets.is_empty() && c.exec.is_none() && c.env.is_empty() && c.chdir.is_none());
        assert_eq!(
            (c.stop_signal, c.stop_timeout, c.chmod_socket, c.listen),
            (None, None, None, None)
        );
        assert_eq!(c.chown_socket, None);
        assert_eq!(ok("[uwsgi]\n").emperor_hash, c.emperor_hash);
    }

    #[test]
    fn every_key_valid() {
        let text = "[emperor]\n\
            socket = /run/app.sock\n\
            socket = name=web,127.0.0.1:8000\n\
            exec = /usr/bin/app --flag \"two words\" 'x y'\n\
            env = A=1\n\
            env = EMPTY=\n\
            env = B=x=y\n\
            chdir = app\n\
            stop-signal = INT\n\
            stop-timeout = 2.5\n\
            chmod-socket = 0660\n\
            chown-socket = root:root\n\
            listen = 128\n";
        let c = ok(text);
        assert_eq!(
            c.sockets,
            vec![
                SocketSpec {
                    name: None,
                    addr: SocketAddrSpec::Unix("/run/app.sock".into())
                },
                SocketSpec {
                    name: Some("web".into()),
                    addr: tcp("127.0.0.1:8000")
                },
            ]
        );
        assert_eq!(
            c.exec,
            Some(vec![
                "/usr/bin/app".into(),
                "--flag".into(),
                "two words".into(),
                "x y".into()
            ])
        );
        assert_eq!(
            c.env,
            vec![
                ("A".into(), "1".into()),
                ("EMPTY".into(), "".into()),
                ("B".into(), "x=y".into())
            ]
        );
        assert_eq!(c.chdir, Some(PathBuf::from("/srv/vassals.d/app")));
        assert_eq!(c.stop_signal, Some(Signal::SIGINT));
        assert_eq!(c.stop_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(c.chmod_socket, Some(0o660));
        assert_eq!(
            c.chown_socket,
            Some(Owner {
                uid: Some(0),
                gid: Some(0)
            })
        );
        assert_eq!(c.listen, Some(128));
        assert_eq!(c.text, text);
    }

    #[test]
    fn single_values_valid() {
        type Check = fn(&VassalConfig) -> bool;
        let cases: &[(&str, Check)] = &[
            ("stop-signal = SIGTERM", |c| c.stop_signal == Some(Signal::SIGTERM)),
            ("stop-signal = term", |c| c.stop_signal == Some(Signal::SIGTERM)),
            ("stop-signal = sigquit", |c| c.stop_signal == Some(Signal::SIGQUIT)),
            ("stop-signal = 15", |c| c.stop_signal == Some(Signal::SIGTERM)),
            ("stop-timeout = 2", |c| c.stop_timeout == Some(Duration::from_secs(2))),
            ("stop-timeout = 0.5", |c| {
                c.stop_timeout == Some(Duration::from_millis(500))
            }),
            ("chmod-socket = 660", |c| c.chmod_socket == Some(0o660)),
            ("chmod-socket = 7777", |c| c.chmod_socket == Some(0o7777)),
            ("chown-socket = root", |c| {
                c.chown_socket
                    == Some(Owner {
                        uid: Some(0),
                        gid: None,
                    })
            }),
            ("chown-socket = :root", |c| {
                c.chown_socket
                    == Some(Owner {
                        uid: None,
                        gid: Some(0),
                    })
            }),
            ("chown-socket = 1000:2000", |c| {
                c.chown_socket
                    == Some(Owner {
                        uid: Some(1000),
                        gid: Some(2000),
                    })
            }),
            ("chown-socket = :65534", |c| {
                c.chown_socket
                    == Some(Owner {
                        uid: None,
                        gid: Some(65534),
                    })
            }),
            ("listen = 1", |c| c.listen == Some(1)),
            ("listen = 65535", |c| c.listen == Some(65535)),
            ("chdir = /abs/dir", |c| c.chdir == Some(PathBuf::from("/abs/dir"))),
            ("chdir = ./rel", |c| {
                c.chdir == Some(PathBuf::from("/srv/vassals.d/rel"))
            }),
            ("exec = app", |c| c.exec == Some(vec!["app".to_owned()])),
            ("env = K=", |c| c.env == vec![("K".to_owned(), String::new())]),
            ("   exec   =   spaced   ", |c| c.exec == Some(vec!["spaced".to_owned()])),
            ("exec: colon-separated", |c| {
                c.exec == Some(vec!["colon-separated".to_owned()])
            }),
        ];
        for (line, check) in cases {
            let c = ok(&one(line));
            assert!(check(&c), "{line}: got {c:?}");
        }
    }

    #[test]
    fn single_values_invalid() {
        let cases: &[(&str, &str)] = &[
            ("socket =", "empty value"),
            ("exec =", "empty value"),
            ("exec = \"unbalanced", "unbalanced quotes or trailing backslash"),
            ("exec = ''", "empty command"),
            ("env = NOEQUALS", "expected NAME=VALUE"),
            ("env = =v", "variable name is empty"),
            ("env = A B=v", "variable name \"A B\" contains whitespace"),
            ("chdir =", "empty value"),
            ("stop-signal = SIGNOPE", "unknown signal"),
            ("stop-signal = 999", "999 is not a signal number"),
            ("stop-signal = 0", "0 is not a signal number"),
            ("stop-timeout = 0", "timeout must be greater than 0"),
            ("stop-timeout = 0.0", "timeout must be greater than 0"),
            ("stop-timeout = -1", "expected seconds, such as 10 or 0.5"),
            ("stop-timeout = 1e3", "expected seconds, such as 10 or 0.5"),
            ("stop-timeout = inf", "expected seconds, such as 10 or 0.5"),
            ("stop-timeout = 1.2.3", "expected seconds, such as 10 or 0.5"),
            ("stop-timeout = 10s", "expected seconds, such as 10 or 0.5"),
            ("chmod-socket = 0x1ff", "expected an octal mode such as 660"),
            ("chmod-socket = 680", "expected an octal mode such as 660"),
            ("chmod-socket = 17777", "mode is above 7777"),
            ("chmod-socket = 777777777777777777", "mode is above 7777"),
            ("chown-socket = no-such-user-xyz", "unknown user \"no-such-user-xyz\""),
            (
                "chown-socket = root:no-such-group-xyz",
                "unknown group \"no-such-group-xyz\"",
            ),
            ("chown-socket = root:", "empty group after ':'"),
            ("chown-socket = :", "empty group after ':'"),
            ("chown-socket = 99999999999", "user id 99999999999 is out of range"),
            ("listen = 0", "expected a number from 1 to 65535"),
            ("listen = 65536", "expected a number from 1 to 65535"),
            ("listen = -5", "expected a number from 1 to 65535"),
            ("listen = many", "expected a number from 1 to 65535"),
            (
                "socket = garbage",
                "not a unix socket path (containing '/' or ending in .sock), @abstract name or host:port",
            ),
        ];
        for (line, message) in cases {
            let e = err(&one(line));
            assert_eq!(e.problems.len(), 1, "{line}: {e}");
            let p = &e.problems[0];
            assert_eq!(p.message, *message, "{line}");
            assert_eq!(p.line, Some(2), "{line}");
            let (key, _) = line.split_once(['=', ':']).unwrap_or((line, ""));
            assert_eq!(p.key.as_deref(), Some(key.trim()), "{line}");
        }
    }

    #[test]
    fn non_repeatable_keys_given_twice() {
        for key in KNOWN_KEYS.iter().filter(|k| !REPEATABLE_KEYS.contains(k)) {
            let value = match *key {
                "exec" => "app",
                "chdir" => "/tmp",
                "stop-signal" => "TERM",
                "stop-timeout" => "1",
                "chmod-socket" => "600",
                "chown-socket" => "0:0",
                "listen" => "10",
                "docker-image" => "img",
                "docker-workdir" => "/srv",
                "docker-network-mode" => "none",
                "docker-hostname" => "h",
                "docker-proxy" => "/run/x/p.sock",
                "docker-user" => "1",
                "docker-memory" => "1g",
                "docker-swap" => "-1",
                "docker-cidfile" => "/c",
                "docker-shim" => "yes",
                "on-demand" => "true",
                "idle" => "30",
                "idle-action" => "pause",
                "reload-overlap" => "false",
                "docker-precreate" => "no",
                "ready-delay" => "0.5",
                "logto" => "app.log",
                "log-maxsize" => "1m",
                other => panic!("add a value for {other}"),
            };
            // Other docker-* keys need a docker-image line first, idle-action needs idle.
            let (prefix, first) = if key.starts_with("docker-") && *key != "docker-image" {
                ("docker-image = img\n", 3)
            } else if *key == "idle-action" {
                ("idle = 1\n", 3)
            } else if *key == "log-maxsize" {
                ("logto = a.log\n", 3)
            } else {
                ("", 2)
            };
            let e = err(&format!("[emperor]\n{prefix}{key} = {value}\n\n{key} = {value}\n"));
            assert_eq!(e.problems.len(), 1, "{key}: {e}");
            assert_eq!(e.problems[0].message, format!("given twice (first on line {first})"));
            assert_eq!(e.problems[0].line, Some(first + 2));
        }
    }

    #[test]
    fn repeatable_keys_keep_order_and_lines() {
        let text = "[uwsgi]\nmaster = true\n[emperor]\nsocket = /a.sock\nenv = A=1\nsocket = /b.sock\n\
                    env = A=2\nsocket = /a.sock\nsocket = :0\n";
        let e = err(text);
        let got: Vec<_> = e
            .problems
            .iter()
            .map(|p| (p.line, p.value.as_deref(), p.message.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    Some(8),
                    Some("/a.sock"),
                    "address /a.sock already used by the socket on line 4"
                ),
                (
                    Some(9),
                    Some(":0"),
                    "port 0 is not allowed: the socket must keep its address across restarts"
                ),
            ]
        );
        let c = ok("[emperor]\nenv = A=1\nenv = A=2\n");
        assert_eq!(c.env, vec![("A".into(), "1".into()), ("A".into(), "2".into())]);
    }

    #[test]
    fn line_numbers_after_foreign_sections_and_repeated_emperor() {
        let text = "; comment\n\
                    [uwsgi]\n\
                    socket = /not/ours\n\
                    master\n\
                    [emperor]\n\
                    listen = 5\n\
                    \n\
                    [uwsgi]\n\
                    workers = 4\n\
                    [emperor]\n\
                    # comment\n\
                    \x20  ; indented comment\n\
                    listen = 6\n\
                    bogus = 1\n";
        let e = err(text);
        let got: Vec<_> = e
            .problems
            .iter()
            .map(|p| (p.line, p.key.as_deref(), p.message.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(13), Some("listen"), "given twice (first on line 6)"),
                (Some(14), Some("bogus"), "unknown key"),
            ]
        );
    }

    #[test]
    fn crlf_line_endings() {
        let c = ok("[emperor]\r\nsocket = /a.sock\r\nexec = app arg\r\n");
        assert_eq!(c.exec, Some(vec!["app".into(), "arg".into()]));
        let e = err("[uwsgi]\r\nx = 1\r\n[emperor]\r\nlisten = 0\r\n");
        assert_eq!(e.problems[0].line, Some(4));
    }

    #[test]
    fn unknown_key_suggestions() {
        let cases: &[(&str, &str)] = &[
            ("sockte = /a.sock", "unknown key; did you mean \"socket\"?"),
            ("Socket = /a.sock", "unknown key; did you mean \"socket\"?"),
            ("stop-timout = 3", "unknown key; did you mean \"stop-timeout\"?"),
            ("chmod_socket = 660", "unknown key; did you mean \"chmod-socket\"?"),
            ("enviroment = A=1", "unknown key; did you mean \"env\"?"),
            ("workers = 4", "unknown key"),
            ("image = busybox", "unknown key"),
        ];
        for (line, message) in cases {
            let e = err(&one(line));
            assert_eq!(e.problems.len(), 1, "{line}");
            assert_eq!(e.problems[0].message, *message, "{line}");
        }
    }

    #[test]
    fn all_problems_in_one_pass() {
        let e = err("[emperor]\nsockte = /a.sock\nlisten = 0\nmaster\nlisten = 3\n");
        assert_eq!(
            e.to_string(),
            "/srv/vassals.d/app.ini:2: [emperor] sockte = \"/a.sock\": unknown key; did you mean \"socket\"?\n\
             /srv/vassals.d/app.ini:3: [emperor] listen = \"0\": expected a number from 1 to 65535\n\
             /srv/vassals.d/app.ini:4: expected \"key = value\", found \"master\"\n\
             /srv/vassals.d/app.ini:5: [emperor] listen = \"3\": given twice (first on line 3)"
        );
    }

    #[test]
    fn display_typical() {
        let e = err("[uwsgi]\nmodule = app\n\n[emperor]\nsocket = /run/a.sock\nsocket = 10.0.0.1:0\n");
        assert_eq!(
            e.to_string(),
            "/srv/vassals.d/app.ini:6: [emperor] socket = \"10.0.0.1:0\": \
             port 0 is not allowed: the socket must keep its address across restarts"
        );
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let e = err("[uwsgi]\nx = 1\n[emperor]\n= value\n");
        assert_eq!(e.problems.len(), 1);
        let p = &e.problems[0];
        assert_eq!((p.line, p.key.as_deref()), (Some(4), None));
        assert!(p.column.is_some());
        assert!(p.message.starts_with("syntax error: missing key"), "{}", p.message);
        let shown = e.to_string();
        assert!(shown.starts_with("/srv/vassals.d/app.ini:4:"), "{shown}");
        assert!(!shown.ends_with('.'), "{shown}");
    }

    #[test]
    fn backslashes_survive() {
        // No INI escapes: the file's `\\` reaches shlex, which makes it one backslash.
        let c = ok(&one(r"exec = C:\\foo"));
        assert_eq!(c.exec, Some(vec![r"C:\foo".to_owned()]));
        let c = ok(&one(r"chdir = /srv/a\tb\n"));
        assert_eq!(c.chdir, Some(PathBuf::from(r"/srv/a\tb\n")));
        let c = ok(&one(r"env = P=C:\Windows\x41"));
        assert_eq!(c.env, vec![("P".to_owned(), r"C:\Windows\x41".to_owned())]);
        // A trailing backslash is literal (uWSGI has no line continuation) and does not eat the
        // next line.
        let c = ok("[emperor]\nchdir = /srv/app\\\nlisten = 7\n");
        assert_eq!(c.chdir, Some(PathBuf::from("/srv/app\\")));
        assert_eq!(c.listen, Some(7));
    }

    #[test]
    fn quotes_are_not_stripped() {
        let c = ok(&one("env = A=\"quoted\""));
        assert_eq!(c.env, vec![("A".to_owned(), "\"quoted\"".to_owned())]);
        let c = ok(&one("chdir = '/srv/x'"));
        assert_eq!(c.chdir, Some(PathBuf::from("/srv/vassals.d/'/srv/x'")));
    }

    #[test]
    fn foreign_sections_never_cause_errors() {
        let long = "x".repeat(200_000);
        let texts = [
            "[uwsgi]\nmaster\n[emperor]\nlisten = 9\n".to_owned(),
            "[uwsgi]\nmaster\n".to_owned(),
            "[uwsgi]\n   # indented comment\nworkers = 2\n[emperor]\nlisten = 9\n".to_owned(),
            "[uwsgi]\nchdir = C:\\dir\\\n[emperor]\nlisten = 9\n".to_owned(),
            "[uwsgi] ; inline comment\nfoo = 1\n[emperor]\nlisten = 9\n".to_owned(),
            "[uwsgi]\nsocket = %(dir)/%n.sock\n%(weird) = key\n= novalue\nbare: colon\n[emperor]\nlisten = 9\n"
                .to_owned(),
            format!("[uwsgi]\nlong = {long}\n{long}\n[emperor]\nlisten = 9\n"),
            "general = before any section\n[emperor\n[emperor] trailing\nnot ours\n[emperor]\nlisten = 9\n".to_owned(),
            "\u{feff}[emperor]\nlisten = 9\n".to_owned(),
        ];
        for text in &texts {
            let c = ok(text);
            assert_eq!(c.text, *text);
            if text.contains("[emperor]\nlisten") {
                assert_eq!(c.listen, Some(9), "{:.80}", text);
            }
        }
        // The hash covers only [emperor]: changing the vassal's own sections keeps it.
        assert_eq!(ok(&texts[0]).emperor_hash, ok(&texts[2]).emperor_hash);
    }

    #[test]
    fn emperor_hash_tracks_emperor_section_only() {
        let a = ok("[emperor]\nlisten = 5\nexec = app\n[uwsgi]\nworkers = 1\n").emperor_hash;
        let b = ok("[emperor]\nlisten   =   5\nexec = app\n[uwsgi]\nworkers = 8\n").emperor_hash;
        let reordered = ok("[emperor]\nexec = app\nlisten = 5\n").emperor_hash;
        let changed = ok("[emperor]\nlisten = 6\nexec = app\n").emperor_hash;
        assert_eq!(a, b);
        assert_ne!(a, reordered);
        assert_ne!(a, changed);
        // Length prefixes: moving bytes between key and value changes the hash.
        let entry = |key: &str, value: &str| RawEntry {
            key: key.into(),
            value: value.into(),
            line: None,
        };
        assert_ne!(
            emperor_hash(&[entry("ab", "c")], false),
            emperor_hash(&[entry("a", "bc")], false)
        );
        // Pinned: the hash is stored in container labels, so it must not change between builds.
        assert_eq!(emperor_hash(&[], false), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn bare_line_in_emperor_is_reported_and_does_not_swallow_next() {
        let e = err("[emperor]\non-demand\nlisten = 0\n");
        let got: Vec<_> = e.problems.iter().map(|p| (p.line, p.message.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (Some(2), "expected \"key = value\", found \"on-demand\""),
                (Some(3), "expected a number from 1 to 65535"),
            ]
        );
    }

    #[test]
    fn socket_specs() {
        let dir = Some(Path::new(DIR));
        let unix = |p: &str| SocketAddrSpec::Unix(PathBuf::from(p));
        let cases: &[(&str, Option<&str>, SocketAddrSpec)] = &[
            ("/run/app.sock", None, unix("/run/app.sock")),
            ("/run/app", None, unix("/run/app")),
            ("app.sock", None, unix("/srv/vassals.d/app.sock")),
            ("./run/app", None, unix("/srv/vassals.d/run/app")),
            ("../run/app.sock", None, unix("/srv/vassals.d/../run/app.sock")),
            ("@abstract", None, SocketAddrSpec::Abstract("abstract".into())),
            ("@with/slash", None, SocketAddrSpec::Abstract("with/slash".into())),
            ("127.0.0.1:8000", None, tcp("127.0.0.1:8000")),
            (":8000", None, tcp("0.0.0.0:8000")),
            ("0.0.0.0:80", None, tcp("0.0.0.0:80")),
            ("localhost:80", None, tcp("127.0.0.1:80")),
            ("[::1]:80", None, tcp("[::1]:80")),
            ("[::]:65535", None, tcp("[::]:65535")),
            ("name=web,:8000", Some("web"), tcp("0.0.0.0:8000")),
            ("name=a.b-c_9,/run/x.sock", Some("a.b-c_9"), unix("/run/x.sock")),
            ("  name=web , /run/x.sock ", Some("web"), unix("/run/x.sock")),
        ];
        for (spec, name, addr) in cases {
            let got = parse_socket(spec, dir).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(
                got,
                SocketSpec {
                    name: name.map(str::to_owned),
                    addr: addr.clone()
                },
                "{spec}"
            );
        }
        // Through FromStr, relative paths stay relative.
        let got: SocketSpec = "app.sock".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.addr, unix("app.sock"));
    }

    #[test]
    fn socket_specs_invalid() {
        let long_path = format!("/{}", "p".repeat(107));
        let ok_path = format!("/{}", "p".repeat(106));
        assert!(parse_socket(&ok_path, None).is_ok());
        let long_name = format!("name={},/x.sock", "n".repeat(256));
        let long_abstract = format!("@{}", "a".repeat(108));
        let long_relative = format!("{}.sock", "r".repeat(90)); // fits alone, not after the dir
        let cases: &[(&str, &str)] = &[
            (
                "garbage",
                "not a unix socket path (containing '/' or ending in .sock), @abstract name or host:port",
            ),
            ("", "empty socket address"),
            ("@", "abstract socket name after '@' is empty"),
            (
                &long_abstract,
                "abstract socket name is 108 bytes; the limit is 107 (sun_path)",
            ),
            (&long_path, "is 108 bytes; it must be shorter than 108 (sun_path)"),
            (&long_relative, "is 110 bytes; it must be shorter than 108 (sun_path)"),
            (
                "127.0.0.1:0",
                "port 0 is not allowed: the socket must keep its address across restarts",
            ),
            (
                ":0",
                "port 0 is not allowed: the socket must keep its address across restarts",
            ),
            ("127.0.0.1:99999", "port 99999 is above 65535"),
            ("127.0.0.1:http", "\"http\" is not a port number"),
            ("127.0.0.1:", "\"\" is not a port number"),
            (
                "example.com:80",
                "\"example.com\" is not an ip address (only localhost is resolved; no dns)",
            ),
            ("::1:80", "an ipv6 address needs brackets, as in [::1]:8000"),
            ("[nope]:80", "\"nope\" is not an ipv6 address"),
            ("[::1]", "an ipv6 address needs brackets, as in [::1]:8000"),
            ("name=,/x.sock", "socket name is empty"),
            (
                "name=a:b,/x.sock",
                "socket name \"a:b\" may contain only A-Z a-z 0-9 _ . -",
            ),
            ("name=web", "a named socket is written \"name=<name>,<address>\""),
            (&long_name, "socket name is 256 bytes; the limit is 255"),
        ];
        for (spec, message) in cases {
            match parse_socket(spec, Some(Path::new(DIR))) {
                Ok(got) => panic!("{spec}: expected an error, got {got:?}"),
                Err(e) => assert!(e.ends_with(message), "{spec}: {e}"),
            }
        }
        // FromStr names the spec.
        let e = "garbage".parse::<SocketSpec>().err().unwrap_or_default();
        assert!(e.starts_with("invalid socket \"garbage\": "), "{e}");
    }

    #[test]
    fn socket_display_round_trips() {
        for spec in [
            "/run/a.sock",
            "@abs",
            "127.0.0.1:80",
            "[::1]:80",
            "name=web,0.0.0.0:8000",
        ] {
            let parsed: SocketSpec = spec.parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed.to_string(), spec);
        }
    }

    #[test]
    fn load_reads_file_and_reports_io_and_utf8() {
        let dir = std::env::temp_dir().join(format!("emperor-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let good = dir.join("good.ini");
        std::fs::write(&good, "[emperor]\nsocket = run/g.sock\n").unwrap_or_else(|e| panic!("{e}"));
        let c = load(&good, &dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.name, "good.ini");
        assert_eq!(c.sockets[0].addr, SocketAddrSpec::Unix(dir.join("run/g.sock")));

        let bad = dir.join("bad.ini");
        std::fs::write(&bad, b"[emperor]\nexec = \xff\n").unwrap_or_else(|e| panic!("{e}"));
        let e = load(&bad, &dir).err().unwrap_or_else(|| panic!("expected utf-8 error"));
        assert_eq!(e.problems.len(), 1);
        assert_eq!(e.problems[0].line, Some(2));
        assert_eq!(
            e.to_string(),
            format!(
                "{}:2: not valid UTF-8 (bad byte at offset 17); a vassal file is UTF-8 text",
                bad.display()
            )
        );

        let missing = dir.join("missing.ini");
        let e = load(&missing, &dir)
            .err()
            .unwrap_or_else(|| panic!("expected io error"));
        assert_eq!(e.problems[0].line, None);
        assert!(
            e.to_string()
                .starts_with(&format!("{}: cannot read: ", missing.display())),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn nul_bytes_and_empty_files_are_errors_and_messages_are_printable() {
        let p = Path::new("/v/x.ini");
        let e = parse("x.ini", p, "[emperor]\nexec = /bin/true\0 --evil\n", Path::new("/v")).unwrap_err();
        assert_eq!(e.problems[0].line, Some(2));
        assert!(e.to_string().starts_with("/v/x.ini:2: a NUL byte"), "{e}");
        for empty in ["", "\n\n", "  ; a comment\n# another\n", "\u{feff}"] {
            let e = parse("x.ini", p, empty, Path::new("/v")).unwrap_err();
            assert!(e.to_string().contains("empty file: nothing to run"), "{empty:?}: {e}");
        }
        // A control character in a value is shown escaped, never raw.
        let e = parse("x.ini", p, "[emperor]\nsockte = a\u{1b}[2Jb\n", Path::new("/v")).unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains("a\\u{1b}[2Jb") && !shown.contains('\u{1b}'), "{shown}");
        assert_eq!(printable("tab\there"), "tab\\there");
        assert_eq!(printable("caf\u{e9}"), "caf\u{e9}");
    }

    #[test]
    fn examples_in_vassals_d_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("vassals.d");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return; // no examples yet
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "ini"))
            .collect();
        paths.sort();
        for path in paths {
            if let Err(e) = load(&path, &dir) {
                panic!("example does not parse:\n{e}");
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Docker vassals
    // -----------------------------------------------------------------------------------------

    fn parse_as(name: &str, text: &str) -> Result<VassalConfig, ConfigError> {
        parse(name, &Path::new(DIR).join(name), text, Path::new(DIR))
    }

    fn docker(text: &str) -> DockerConfig {
        ok(text)
            .docker
            .unwrap_or_else(|| panic!("expected a docker vassal: {text:?}"))
    }

    /// `[emperor]` + `docker-image = img` + the given lines.
    fn with_image(lines: &str) -> String {
        format!("[emperor]\ndocker-image = img\n{lines}\n")
    }

    /// (line, key, message) of every problem.
    fn problems(e: &ConfigError) -> Vec<(Option<usize>, Option<&str>, &str)> {
        e.problems
            .iter()
            .map(|p| (p.line, p.key.as_deref(), p.message.as_str()))
            .collect()
    }

    #[test]
    fn docker_every_key_valid() {
        let text = "[uwsgi]\nmodule = app\n[emperor]\n\
            docker-image = registry.example:5000/team/app:1.2@sha256:abc\n\
            docker-socket = /run/app.sock\n\
            docker-port = 8080:80\n\
            docker-port = 127.0.0.1:5353:53/udp\n\
            docker-workdir = /srv/app\n\
            docker-mount = /data:/data:ro\n\
            docker-network-mode = none\n\
            docker-hostname = app.example\n\
            docker-proxy = /run/emperor/app/proxy.sock:/run/proxy/proxy.sock\n\
            docker-env = A=1\n\
            docker-user = 1000:1000\n\
            docker-memory = 512m\n\
            docker-swap = 1g\n\
            docker-cidfile = run/app.cid\n\
            docker-dns = 1.1.1.1\n\
            docker-dns = 2606:4700:4700::1111\n\
            docker-shim = no\n\
            exec = /app/server --port 80\n\
            env = B=2\n\
            stop-signal = TERM\n";
        let c = ok(text);
        assert!(c.has_uwsgi_section());
        assert_eq!(c.chdir, None);
        assert_eq!(c.exec, Some(vec!["/app/server".into(), "--port".into(), "80".into()]));
        assert_eq!(
            c.sockets,
            vec!["/run/app.sock".parse().unwrap_or_else(|e| panic!("{e}"))]
        );
        assert_eq!(
            c.docker,
            Some(DockerConfig {
                image: "registry.example:5000/team/app:1.2@sha256:abc".into(),
                container_name: "app.ini".into(),
                ports: vec![
                    PortMap {
                        host_ip: None,
                        host_port: 8080,
                        container_port: 80,
                        proto: "tcp".into()
                    },
                    PortMap {
                        host_ip: Some(Ipv4Addr::LOCALHOST.into()),
                        host_port: 5353,
                        container_port: 53,
                        proto: "udp".into()
                    },
                ],
                workdir: Some("/srv/app".into()),
                mounts: vec![Mount {
                    host: "/data".into(),
                    container: "/data".into(),
                    read_only: true
                }],
                network_mode: Some("none".into()),
                hostname: Some("app.example".into()),
                proxy: Some(ProxyPaths {
                    host: "/run/emperor/app/proxy.sock".into(),
                    container: "/run/proxy/proxy.sock".into()
                }),
                env: vec![("A".into(), "1".into())],
                user: Some("1000:1000".into()),
                memory: Some(512 << 20),
                swap: Some(1 << 30),
                cidfile: Some("/srv/vassals.d/run/app.cid".into()),
                dns: vec![
                    "1.1.1.1".parse().unwrap_or_else(|e| panic!("{e}")),
                    "2606:4700:4700::1111".parse().unwrap_or_else(|e| panic!("{e}")),
                ],
                shim: false,
            })
        );
        assert_eq!(c.env, vec![("B".into(), "2".into())]);
    }

    #[test]
    fn docker_defaults_and_process_vassals() {
        let d = docker(&with_image(""));
        assert_eq!(d, empty_docker("app.ini").tap_image("img"));
        assert!(d.shim);
        // No docker-image: a process vassal, with no container environment.
        let c = ok("[emperor]\nenv = A=1\n");
        assert_eq!(c.docker, None);
        assert!(!c.has_uwsgi_section());
        assert_eq!(ok("[uwsgi]\n").docker, None);
    }

    impl DockerConfig {
        fn tap_image(mut self, image: &str) -> DockerConfig {
            self.image = image.into();
            self
        }
    }

    #[test]
    fn docker_keys_valid_values() {
        type Check = fn(&DockerConfig) -> bool;
        let cases: &[(&str, Check)] = &[
            ("docker-image = busybox:latest", |d| d.image == "busybox:latest"),
            ("docker-workdir = /", |d| d.workdir.as_deref() == Some("/")),
            ("docker-network-mode = host", |d| {
                d.network_mode.as_deref() == Some("host")
            }),
            ("docker-network-mode = bridge", |d| {
                d.network_mode.as_deref() == Some("bridge")
            }),
            ("docker-network-mode = container:db.ini", |d| {
                d.network_mode.as_deref() == Some("container:db.ini")
            }),
            ("docker-network-mode = my_net-1", |d| {
                d.network_mode.as_deref() == Some("my_net-1")
            }),
            ("docker-hostname = web1", |d| d.hostname.as_deref() == Some("web1")),
            ("docker-hostname = 9a-b.c-d.E", |d| {
                d.hostname.as_deref() == Some("9a-b.c-d.E")
            }),
            ("docker-proxy = /run/x/p.sock", |d| {
                d.proxy
                    == Some(ProxyPaths {
                        host: "/run/x/p.sock".into(),
                        container: "/run/x/p.sock".into(),
                    })
            }),
            ("docker-env = K=", |d| d.env == vec![("K".into(), String::new())]),
            ("docker-env = K=a=b", |d| d.env == vec![("K".into(), "a=b".into())]),
            ("docker-user = www-data", |d| d.user.as_deref() == Some("www-data")),
            ("docker-user = 33", |d| d.user.as_deref() == Some("33")),
            ("docker-user = www-data:www-data", |d| {
                d.user.as_deref() == Some("www-data:www-data")
            }),
            ("docker-cidfile = /run/app.cid", |d| {
                d.cidfile == Some("/run/app.cid".into())
            }),
            ("docker-cidfile = ./app.cid", |d| {
                d.cidfile == Some("/srv/vassals.d/app.cid".into())
            }),
            ("docker-dns = ::1", |d| d.dns == vec![IpAddr::from(Ipv6Addr::LOCALHOST)]),
            ("docker-shim = TRUE", |d| d.shim),
            ("docker-shim = 1", |d| d.shim),
            ("docker-shim = yes", |d| d.shim),
            ("docker-shim = false", |d| !d.shim),
            ("docker-shim = 0", |d| !d.shim),
        ];
        for (line, check) in cases {
            let text = if line.starts_with("docker-image") {
                one(line)
            } else {
                with_image(line)
            };
            let d = docker(&text);
            assert!(check(&d), "{line}: {d:?}");
        }
    }

    #[test]
    fn docker_keys_invalid_values() {
        let long_host = format!("docker-hostname = {}", "h".repeat(65));
        let long_label = format!("docker-hostname = {}", "l".repeat(64));
        let cases: &[(&str, &str)] = &[
            ("docker-image = my image", "an image name contains no whitespace"),
            ("docker-image =", "empty value"),
            (
                "docker-workdir = srv/app",
                "working directory \"srv/app\" must be an absolute path inside the container",
            ),
            (
                "docker-network-mode = container:",
                "\"\" is not a container name or id ([a-zA-Z0-9][a-zA-Z0-9_.-]*)",
            ),
            (
                "docker-network-mode = bad:mode",
                "expected none, host, bridge, container:<name|id> or a network name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)",
            ),
            (
                "docker-network-mode = -net",
                "expected none, host, bridge, container:<name|id> or a network name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)",
            ),
            (
                "docker-hostname = -web",
                "\"-web\" is not a hostname label (rfc 1123: 1 to 63 of a-z A-Z 0-9 -, not starting or ending with -)",
            ),
            (
                "docker-hostname = a..b",
                "\"\" is not a hostname label (rfc 1123: 1 to 63 of a-z A-Z 0-9 -, not starting or ending with -)",
            ),
            (
                "docker-hostname = web_1",
                "\"web_1\" is not a hostname label (rfc 1123: 1 to 63 of a-z A-Z 0-9 -, not starting or ending with -)",
            ),
            (
                &long_host,
                "hostname is 65 bytes; the limit is 64 (linux HOST_NAME_MAX)",
            ),
            (
                &long_label,
                "is not a hostname label (rfc 1123: 1 to 63 of a-z A-Z 0-9 -, not starting or ending with -)",
            ),
            ("docker-proxy = run/p.sock", "host path \"run/p.sock\" must be absolute"),
            (
                "docker-proxy = /run/x/p.sock:p.sock",
                "container path \"p.sock\" must be absolute",
            ),
            (
                "docker-proxy = /a/b:/c/d:/e",
                "expected \"hostpath:containerpath\" or one path for both",
            ),
            (
                "docker-proxy = :/c/d",
                "host path is empty; expected \"hostpath:containerpath\" or one path for both",
            ),
            (
                "docker-proxy = /run/x/:/c/d",
                "host path \"/run/x/\" names a directory; it must name the socket",
            ),
            (
                "docker-proxy = /run/x/p.sock:/p.sock",
                "container path \"/p.sock\" is directly in /: the socket's directory is bind-mounted into the \
                 container, so use a directory of its own, such as /run/emperor/<name>/proxy.sock",
            ),
            ("docker-env = NOVALUE", "expected NAME=VALUE"),
            ("docker-env = =x", "variable name is empty"),
            (
                "docker-user = a:b:c",
                "expected \"name\", \"uid\", \"uid:gid\" or \"name:group\"",
            ),
            (
                "docker-user = :100",
                "expected \"name\", \"uid\", \"uid:gid\" or \"name:group\"",
            ),
            (
                "docker-user = a b",
                "\"a b\" contains whitespace; expected \"name\", \"uid\", \"uid:gid\" or \"name:group\"",
            ),
            ("docker-user = 4294967296", "id 4294967296 is out of range"),
            ("docker-dns = 8.8.8", "\"8.8.8\" is not an ip address"),
            ("docker-dns = dns.google", "\"dns.google\" is not an ip address"),
            ("docker-dns = 1.1.1.1:53", "\"1.1.1.1:53\" is not an ip address"),
            ("docker-shim = maybe", "expected true, false, 1, 0, yes or no"),
            ("docker-cidfile =", "empty value"),
        ];
        for (line, message) in cases {
            let text = if line.starts_with("docker-image") {
                one(line)
            } else {
                with_image(line)
            };
            let e = err(&text);
            assert_eq!(e.problems.len(), 1, "{line}: {e}");
            let p = &e.problems[0];
            let key = line.split_once('=').map(|(k, _)| k.trim());
            assert_eq!(
                (p.key.as_deref(), p.line),
                (key, Some(if line.starts_with("docker-image") { 2 } else { 3 })),
                "{line}"
            );
            assert!(p.message.ends_with(message), "{line}: {}", p.message);
        }
    }

    #[test]
    fn docker_ports() {
        let v4 = |s: &str| -> Option<IpAddr> { Some(s.parse().unwrap_or_else(|e| panic!("{e}"))) };
        let cases: &[(&str, Option<IpAddr>, u16, u16, &str)] = &[
            ("9001:3031", None, 9001, 3031, "tcp"),
            ("127.0.0.1:5001:5000", v4("127.0.0.1"), 5001, 5000, "tcp"),
            ("53:53/udp", None, 53, 53, "udp"),
            ("0.0.0.0:8080:80/tcp", v4("0.0.0.0"), 8080, 80, "tcp"),
            ("[::1]:8080:80", v4("::1"), 8080, 80, "tcp"),
            ("[::]:5353:53/udp", v4("::"), 5353, 53, "udp"),
            ("1:65535", None, 1, 65535, "tcp"),
        ];
        for (spec, host_ip, host_port, container_port, proto) in cases {
            let got = parse_port_map(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(
                got,
                PortMap {
                    host_ip: *host_ip,
                    host_port: *host_port,
                    container_port: *container_port,
                    proto: (*proto).into()
                },
                "{spec}"
            );
        }
        let bad: &[(&str, &str)] = &[
            ("8080", PORT_SYNTAX),
            ("a:b:c:d", PORT_SYNTAX),
            ("::1:8080:80", PORT_SYNTAX),
            ("0:80", "host port 0 is not from 1 to 65535"),
            ("80:0", "container port 0 is not from 1 to 65535"),
            ("70000:80", "host port 70000 is not from 1 to 65535"),
            ("http:80", "host port \"http\" is not a port number; "),
            (":80", "host port is empty; "),
            ("127.0.0.1::80", "host port is empty; "),
            (":8080:80", "host ip is empty; "),
            (
                "localhost:8080:80",
                "\"localhost\" is not an ip address (an ipv6 one needs brackets)",
            ),
            ("[nope]:8080:80", "\"nope\" is not an ipv6 address"),
            ("[::1]8080:80", PORT_SYNTAX),
            ("[::1]:8080", PORT_SYNTAX),
            ("80:80/sctp", "protocol \"sctp\" is not tcp or udp"),
            ("80:80/", "protocol \"\" is not tcp or udp"),
            ("8000-8010:80", "host port \"8000-8010\": port ranges are not supported"),
        ];
        for (spec, message) in bad {
            match parse_port_map(spec) {
                Ok(got) => panic!("{spec}: expected an error, got {got:?}"),
                Err(e) => assert!(e.starts_with(message) || e.ends_with(message), "{spec}: {e}"),
            }
        }
        // Through the file: the same host port twice is caught with both lines; the same
        // number on another protocol or address is a different binding.
        let e = err(&with_image(
            "docker-port = 8080:80\ndocker-port = 8080:81\ndocker-port = 8080:80/udp\n\
             docker-port = 127.0.0.1:8080:80\ndocker-port = [::1]:9:9\ndocker-port = [::1]:9:10",
        ));
        assert_eq!(
            problems(&e),
            vec![
                (
                    Some(4),
                    Some("docker-port"),
                    "host port 8080/tcp already mapped on line 3"
                ),
                (
                    Some(8),
                    Some("docker-port"),
                    "host port [::1]:9/tcp already mapped on line 7"
                ),
            ]
        );
    }

    #[test]
    fn docker_mounts() {
        let cases: &[(&str, &str, &str, bool)] = &[
            ("/srv/data:/data", "/srv/data", "/data", false),
            ("/srv/data:/data:ro", "/srv/data", "/data", true),
            ("/srv/data:/data:rw", "/srv/data", "/data", false),
            ("data:/data", "/srv/vassals.d/data", "/data", false),
            ("./shared/x:/x:ro", "/srv/vassals.d/shared/x", "/x", true),
            ("../pty/foo:/pty", "/srv/vassals.d/../pty/foo", "/pty", false),
        ];
        for (spec, host, container, read_only) in cases {
            let got = parse_mount(spec, Path::new(DIR)).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(
                got,
                Mount {
                    host: (*host).into(),
                    container: (*container).into(),
                    read_only: *read_only
                },
                "{spec}"
            );
        }
        let bad: &[(&str, &str)] = &[
            (
                "/srv/data:/data:rx",
                "mode \"rx\" is not ro or rw; expected \"hostpath:containerpath\" or \"hostpath:containerpath:ro\" (or :rw)",
            ),
            ("/srv/data:/data:ro,z", "mode \"ro,z\" is not ro or rw; "),
            (
                "/srv/data",
                "expected \"hostpath:containerpath\" or \"hostpath:containerpath:ro\" (or :rw)",
            ),
            (
                "/a:/b:ro:x",
                "expected \"hostpath:containerpath\" or \"hostpath:containerpath:ro\" (or :rw)",
            ),
            (
                "/srv/data:data",
                "container path \"data\" must be an absolute path inside the container",
            ),
            (
                "/srv/data:./data:ro",
                "container path \"./data\" must be an absolute path inside the container",
            ),
            (":/data", "empty path; expected"),
            ("/srv/data:", "empty path; expected"),
        ];
        for (spec, message) in bad {
            match parse_mount(spec, Path::new(DIR)) {
                Ok(got) => panic!("{spec}: expected an error, got {got:?}"),
                Err(e) => assert!(e.starts_with(message), "{spec}: {e}"),
            }
        }
        let e = err(&with_image("docker-mount = /a:/data\ndocker-mount = /b:/data:ro"));
        assert_eq!(
            problems(&e),
            vec![(
                Some(4),
                Some("docker-mount"),
                "container path /data already mounted on line 3"
            )]
        );
    }

    #[test]
    fn docker_memory_and_swap() {
        let sizes: &[(&str, i64)] = &[
            ("6291456", 6 << 20),
            ("6144k", 6 << 20),
            ("6144K", 6 << 20),
            ("512m", 512 << 20),
            ("512M", 512 << 20),
            ("2g", 2 << 30),
            ("2G", 2 << 30),
            ("536870912", 512 << 20),
        ];
        for (value, bytes) in sizes {
            let d = docker(&with_image(&format!("docker-memory = {value}")));
            assert_eq!(d.memory, Some(*bytes), "{value}");
        }
        let not_a_number = "is not a number of bytes; expected an integer with an optional k, m or g suffix \
                            (binary: 1k = 1024), such as 536870912 or 512m";
        let bad: &[(&str, String)] = &[
            (
                "docker-memory = 6291455",
                "6291455 bytes is below Docker's minimum memory limit of 6m (6291456 bytes)".into(),
            ),
            (
                "docker-memory = 5m",
                "5242880 bytes is below Docker's minimum memory limit of 6m (6291456 bytes)".into(),
            ),
            ("docker-memory = lots", format!("\"lots\" {not_a_number}")),
            ("docker-memory = 512mb", format!("\"512mb\" {not_a_number}")),
            ("docker-memory = 1.5g", format!("\"1.5g\" {not_a_number}")),
            ("docker-memory = -1", format!("\"-1\" {not_a_number}")),
            ("docker-memory = m", format!("\"m\" {not_a_number}")),
            ("docker-memory = 512 m", format!("\"512 m\" {not_a_number}")),
            ("docker-memory = 99999999999g", "99999999999g is too large".into()),
            (
                "docker-memory = 99999999999999999999",
                "99999999999999999999 is too large".into(),
            ),
            ("docker-swap = x", format!("\"x\" {not_a_number}, or -1 for unlimited")),
            (
                "docker-swap = 1g",
                "needs docker-memory: docker-swap is the limit on memory plus swap (Docker's MemorySwap), \
                 and Docker refuses it without a memory limit"
                    .into(),
            ),
        ];
        for (line, message) in bad {
            let e = err(&with_image(line));
            let key = line.split_once(' ').map(|(k, _)| k);
            assert_eq!(problems(&e), vec![(Some(3), key, message.as_str())], "{line}");
        }
        // The message names the file, line, key and value.
        let e = err(&with_image("docker-memory = lots"));
        assert_eq!(
            e.to_string(),
            format!("/srv/vassals.d/app.ini:3: [emperor] docker-memory = \"lots\": \"lots\" {not_a_number}")
        );

        // Swap is memory + swap: below memory is an error on the swap line, wherever it is.
        let e = err(&with_image("docker-swap = 256m\ndocker-memory = 512m"));
        assert_eq!(
            problems(&e),
            vec![(
                Some(3),
                Some("docker-swap"),
                "docker-swap is the limit on memory plus swap (Docker's MemorySwap), so it must be at least \
                 docker-memory (536870912 bytes), or -1 for unlimited swap"
            )]
        );
        let d = docker(&with_image("docker-memory = 512m\ndocker-swap = 512m"));
        assert_eq!((d.memory, d.swap), (Some(512 << 20), Some(512 << 20)));
        let d = docker(&with_image("docker-memory = 512m\ndocker-swap = -1"));
        assert_eq!((d.memory, d.swap), (Some(512 << 20), Some(-1)));
        let d = docker(&with_image("docker-swap = -1"));
        assert_eq!((d.memory, d.swap), (None, Some(-1)));
        // An invalid memory does not add a swap error on top.
        let e = err(&with_image("docker-memory = 1k\ndocker-swap = 1g"));
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(e.problems[0].key.as_deref(), Some("docker-memory"));
    }

    #[test]
    fn docker_keys_need_docker_image() {
        let keys = [
            "docker-socket = /run/a.sock",
            "docker-port = 80:80",
            "docker-workdir = /srv",
            "docker-mount = /a:/b",
            "docker-network-mode = none",
            "docker-hostname = h",
            "docker-proxy = /run/x/p.sock",
            "docker-env = A=1",
            "docker-user = 1",
            "docker-memory = 1g",
            "docker-swap = 1g",
            "docker-cidfile = /c",
            "docker-dns = 1.1.1.1",
            "docker-shim = false",
            "docker-precreate = false",
            "docker-memory = bad",
        ];
        let text = format!("[emperor]\nchdir = /srv\n{}\n", keys.join("\n"));
        let e = err(&text);
        let got = problems(&e);
        assert_eq!(got.len(), keys.len(), "{e}");
        for (i, (line, key, message)) in got.into_iter().enumerate() {
            assert_eq!(line, Some(i + 3));
            assert_eq!(key, keys[i].split_once(' ').map(|(k, _)| k));
            let expected = if i == keys.len() - 1 {
                "given twice (first on line 12)"
            } else {
                "needs docker-image"
            };
            assert_eq!(message, expected, "{}", keys[i]);
        }
        // Every docker-* key in KNOWN_KEYS except docker-image is covered.
        let covered: Vec<&str> = keys.iter().filter_map(|k| k.split_once(' ').map(|(k, _)| k)).collect();
        for key in KNOWN_KEYS
            .iter()
            .filter(|k| k.starts_with("docker-") && **k != "docker-image")
        {
            assert!(covered.contains(key), "{key}");
        }
    }

    #[test]
    fn docker_invalid_vassal_name() {
        let text = "[emperor]\nlisten = 5\ndocker-image = img\n";
        let cases = [
            ("my app.ini", "my-app.ini"),
            ("_app.ini", "app.ini"),
            ("-.app.ini", "app.ini"),
            ("café.ini", "caf-.ini"),
            ("é.ini", "vassal.ini"),
            ("a:b.ini", "a-b.ini"),
        ];
        for (name, suggested) in cases {
            let e = parse_as(name, text)
                .err()
                .unwrap_or_else(|| panic!("{name}: expected an error"));
            assert_eq!(
                problems(&e),
                vec![(
                    Some(3),
                    Some("docker-image"),
                    format!(
                        "the vassal name \"{name}\" is not a valid container name ([a-zA-Z0-9][a-zA-Z0-9_.-]*); \
                         rename the file, e.g. \"{suggested}\""
                    )
                    .as_str()
                )],
                "{name}"
            );
            // The suggestion is itself valid.
            assert!(is_docker_name(suggested), "{suggested}");
            // A process vassal may have any name.
            assert!(parse_as(name, "[emperor]\nlisten = 5\n").is_ok(), "{name}");
        }
        for name in ["app.ini", "A1.ini", "9_x-y.z.ini"] {
            let c = parse_as(name, text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.docker.map(|d| d.container_name), Some(name.to_owned()));
        }
        // Reported along with the image's own problem.
        let e = parse_as("a b.ini", "[emperor]\ndocker-image = x y\n")
            .err()
            .unwrap_or_else(|| panic!("error"));
        assert_eq!(e.problems.len(), 2, "{e}");
    }

    #[test]
    fn docker_socket_and_socket_keep_file_order() {
        let c = ok(&with_image(
            "socket = /run/a.sock\ndocker-socket = 127.0.0.1:9000\nsocket = name=b,/run/b.sock\n\
             docker-socket = name=c,@c",
        ));
        let got: Vec<String> = c.sockets.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            ["/run/a.sock", "127.0.0.1:9000", "name=b,/run/b.sock", "name=c,@c"]
        );
        // Same syntax, same checks, and one address may not appear under both keys.
        let e = err(&with_image(
            "socket = /run/a.sock\ndocker-socket = run/a.sock\ndocker-socket = /run/a.sock\ndocker-socket = garbage",
        ));
        let got = problems(&e);
        assert_eq!(got.len(), 2, "{e}");
        assert_eq!(
            got[0],
            (
                Some(5),
                Some("docker-socket"),
                "address /run/a.sock already used by the socket on line 3"
            )
        );
        assert_eq!((got[1].0, got[1].1), (Some(6), Some("docker-socket")));
        assert!(got[1].2.starts_with("not a unix socket path"), "{}", got[1].2);
        assert_eq!(
            ok(&with_image("docker-socket = run/a.sock")).sockets[0].addr,
            SocketAddrSpec::Unix("/srv/vassals.d/run/a.sock".into())
        );
    }

    #[test]
    fn docker_vassal_rejects_chdir() {
        let e = err(&with_image("chdir = /srv/app\ndocker-workdir = /srv/app"));
        assert_eq!(
            problems(&e),
            vec![(
                Some(3),
                Some("chdir"),
                "use docker-workdir for a container's working directory"
            )]
        );
        // Even before docker-image, and even if docker-image is itself invalid.
        let e = err("[emperor]\nchdir = /srv\ndocker-image = a b\n");
        assert_eq!(
            problems(&e),
            vec![
                (
                    Some(2),
                    Some("chdir"),
                    "use docker-workdir for a container's working directory"
                ),
                (Some(3), Some("docker-image"), "an image name contains no whitespace"),
            ]
        );
        // The other process keys keep their meaning.
        let c = ok(&with_image(
            "stop-signal = QUIT\nstop-timeout = 3\nchmod-socket = 660\nchown-socket = 0:0\nlisten = 64\nexec = sh -c 'x'",
        ));
        assert_eq!(c.stop_signal, Some(Signal::SIGQUIT));
        assert_eq!(c.stop_timeout, Some(Duration::from_secs(3)));
        assert_eq!((c.chmod_socket, c.listen), (Some(0o660), Some(64)));
        assert_eq!(
            c.chown_socket,
            Some(Owner {
                uid: Some(0),
                gid: Some(0)
            })
        );
        assert_eq!(c.exec, Some(vec!["sh".into(), "-c".into(), "x".into()]));
    }

    #[test]
    fn docker_unknown_and_retired_keys() {
        let cases: &[(&str, &str)] = &[
            ("docker-ports = 80:80", "unknown key; did you mean \"docker-port\"?"),
            ("docker-imge = img", "unknown key; did you mean \"docker-image\"?"),
            ("docker-mounts = /a:/b", "unknown key; did you mean \"docker-mount\"?"),
            (
                "docker-uid = 1000",
                "not supported (an early uwsgi-docker name); use \"docker-user\"",
            ),
            (
                "docker-disable-network = true",
                "not supported (an early uwsgi-docker attribute); use \"docker-network-mode = none\"",
            ),
        ];
        for (line, message) in cases {
            let e = err(&with_image(line));
            assert_eq!(e.problems.len(), 1, "{line}");
            assert_eq!(e.problems[0].message, *message, "{line}");
        }
        let e = err("[emperor]\ndocker-image = a\ndocker-image = b\n");
        assert_eq!(
            problems(&e),
            vec![(Some(3), Some("docker-image"), "given twice (first on line 2)")]
        );
    }

    #[test]
    fn uwsgi_section_flag_and_hash() {
        for (text, expected) in [
            ("[uwsgi]\nmaster = true\n", true),
            ("[emperor]\nlisten = 1\n  [ uwsgi ]  \nx = 1\n", true),
            ("[emperor]\nlisten = 1\n", false),
            ("[uwsgi-extra]\nx = 1\n", false),
            ("[uwsgi] ; note\nx = 1\n", false),
            ("; [uwsgi]\n[other]\n", false),
        ] {
            assert_eq!(ok(text).has_uwsgi_section(), expected, "{text:?}");
        }
        // Docker vassal: adding [uwsgi] changes the container's command, so it changes the hash;
        // the section's content does not.
        let base = "[emperor]\ndocker-image = img\n";
        let without = ok(base).emperor_hash;
        let with = ok(&format!("{base}[uwsgi]\nworkers = 1\n")).emperor_hash;
        let with_other = ok(&format!("{base}[uwsgi]\nworkers = 8\n")).emperor_hash;
        assert_ne!(without, with);
        assert_eq!(with, with_other);
        // Process vassal: the hash is that of the [emperor] pairs only, as before.
        assert_eq!(
            ok("[emperor]\nlisten = 1\n").emperor_hash,
            ok("[emperor]\nlisten = 1\n[uwsgi]\nx = 1\n").emperor_hash
        );
        // Every docker-* key is part of the hash.
        let a = ok(&with_image("docker-memory = 512m")).emperor_hash;
        let b = ok(&with_image("docker-memory = 1g")).emperor_hash;
        let c = ok(&with_image("docker-memory = 512m\ndocker-dns = 1.1.1.1")).emperor_hash;
        assert!(a != b && a != c && b != c);
    }

    #[test]
    fn owner_names_come_from_passwd_and_group_files() {
        let dir = std::env::temp_dir().join(format!("emperor-config-owner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.join("passwd");
        std::fs::write(
            &file,
            "# comment\nroot:x:0:0::/root:/bin/sh\nweb:x:33:33::/:/bin/false\nbad:x:nope:1::/:\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(lookup_in_file(&file, "web"), Ok(Some(33)));
        assert_eq!(lookup_in_file(&file, "root"), Ok(Some(0)));
        assert_eq!(lookup_in_file(&file, "we"), Ok(None));
        assert_eq!(lookup_in_file(&file, "x"), Ok(None));
        let e = lookup_in_file(&file, "bad").err().unwrap_or_default();
        assert!(e.ends_with("\"bad\" has an invalid id \"nope\""), "{e}");
        let e = lookup_in_file(&dir.join("missing"), "web").err().unwrap_or_default();
        assert!(e.starts_with("cannot read "), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
        // The real files: root exists on every system this runs on; an unknown name is an error
        // (through NSS it crashed the static test binary).
        assert_eq!(
            parse_owner("root:root"),
            Ok(Owner {
                uid: Some(0),
                gid: Some(0)
            })
        );
        assert_eq!(
            parse_owner("no-such-user-xyz").err().as_deref(),
            Some("unknown user \"no-such-user-xyz\"")
        );
    }

    // The vassal files of unbit/uwsgi-docker's README.md (and the two from its t/Emperor/), as
    // written there.

    /// README "Quickstart": a psgi vassal with two docker-port lines.
    const README_PSGI: &str = "\
; the [emperor] section is parsed ONLY by the Emperor
[emperor]
; use psgi001 as the docker image
docker-image = psgi001
; map host port 9001 to container port 3031/tcp
docker-port = 9001:3031
; map host port 127.0.0.1:5001 to container port 5000/tcp
docker-port = 127.0.0.1:5001:5000

[uwsgi]
psgi = /var/www/app.pl
processes = 4
; in bridged mode the class B network is allocated, so we can simply bind to the first address starting with 172
; so we use the very handy .* trick
socket = 172.*:3031
uid = www-data
gid = www-data
; we are free to bind the stats server to all of the address
; docker will protect it
stats = :5000
";

    /// README "Simplyfing socket management": docker-socket.
    const README_DOCKER_SOCKET: &str = "\
; the [emperor] section is parsed ONLY by the Emperor
[emperor]
; use psgi001 as the docker image
docker-image = psgi001
; bind to address /var/run/example.com.socket
docker-socket = /var/run/example.com.socket

[uwsgi]
psgi = /var/www/app.pl
processes = 4
uid = www-data
gid = www-data
";

    /// README "The Emperor Proxy": docker-proxy (written without spaces around `=`).
    const README_DOCKER_PROXY: &str = "\
; the [emperor] section is parsed ONLY by the Emperor
[emperor]
; use psgi001 as the docker image
docker-image = psgi001
; bind to address /var/run/example.com.socket
docker-socket = /var/run/example.com.socket

docker-proxy=/var/run/foobar.sock:/tmp/foosocket

[uwsgi]
psgi = /var/www/app.pl
processes = 4
uid = www-data
gid = www-data
";

    /// README "Integration with the forkpty router plugin": docker-mount.
    const README_DOCKER_MOUNT: &str = "\
; the [emperor] section is parsed ONLY by the Emperor
[emperor]
; use psgi001 as the docker image
docker-image = psgi001
; bind to address /var/run/example.com.socket
docker-socket = /var/run/example.com.socket

; mount /pty/foo as /foo (ensure it is owned by www-data)
docker-mount = /pty/foo:/pty

[uwsgi]
plugin = path_to/forkptyrouter_plugin.so
psgi = /var/www/app.pl
processes = 4
uid = www-data
gid = www-data
forkpty-router = /pty/socket
forkptyrouter-command = /bin/bash
";

    /// t/Emperor/vassal_with_standard_socket.ini: ports, proxy and mount together.
    const T_STANDARD_SOCKET: &str = "\
; the [emperor] section is parsed ONLY by the Emperor
[emperor]
; use psgi001 as the docker image
docker-image = psgi001
; map host port 9001 to container port 3031/tcp
docker-port = 9001:3031
; map host port 127.0.0.1:5001 to container port 5000/tcp
docker-port = 127.0.0.1:5001:5000
docker-proxy=/tmp/vassal_with_standard_socket.sock:/tmp/vassal_with_standard_socket
; mount /pty/foo as /foo (ensure it is owned by www-data)
docker-mount = /pty/foo:/pty

[uwsgi]
psgi = /var/www/app.pl
processes = 4
socket = :3031
uid = www-data
gid = www-data
stats = :5000
forkpty-router = /pty/socket
forkptyrouter-command = /bin/bash
chmod-socket = 666
";

    #[test]
    fn uwsgi_docker_readme_examples() {
        let psgi001 = |d: DockerConfig| DockerConfig {
            image: "psgi001".into(),
            ..d
        };
        let example_sock = || {
            vec![SocketSpec {
                name: None,
                addr: SocketAddrSpec::Unix("/var/run/example.com.socket".into()),
            }]
        };
        let port = |host_ip: Option<IpAddr>, host_port, container_port| PortMap {
            host_ip,
            host_port,
            container_port,
            proto: "tcp".into(),
        };
        let readme_ports = vec![
            port(None, 9001, 3031),
            port(Some(Ipv4Addr::LOCALHOST.into()), 5001, 5000),
        ];
        let pty_mount = vec![Mount {
            host: "/pty/foo".into(),
            container: "/pty".into(),
            read_only: false,
        }];

        let c = parse_as("psgi.ini", README_PSGI).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.sockets.is_empty() && c.exec.is_none() && c.has_uwsgi_section());
        assert_eq!(
            c.docker,
            Some(psgi001(DockerConfig {
                ports: readme_ports.clone(),
                ..empty_docker("psgi.ini")
            }))
        );

        let c = parse_as("example.com.ini", README_DOCKER_SOCKET).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.sockets, example_sock());
        assert!(c.has_uwsgi_section());
        assert_eq!(c.docker, Some(psgi001(empty_docker("example.com.ini"))));

        let c = parse_as("foobar.ini", README_DOCKER_PROXY).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.sockets, example_sock());
        assert_eq!(
            c.docker,
            Some(psgi001(DockerConfig {
                proxy: Some(ProxyPaths {
                    host: "/var/run/foobar.sock".into(),
                    container: "/tmp/foosocket".into(),
                }),
                ..empty_docker("foobar.ini")
            }))
        );

        let c = parse_as("foo.ini", README_DOCKER_MOUNT).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.sockets, example_sock());
        assert_eq!(
            c.docker,
            Some(psgi001(DockerConfig {
                mounts: pty_mount.clone(),
                ..empty_docker("foo.ini")
            }))
        );

        let c = parse_as("vassal_with_standard_socket.ini", T_STANDARD_SOCKET).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.sockets.is_empty());
        assert_eq!(
            c.docker,
            Some(psgi001(DockerConfig {
                ports: readme_ports,
                mounts: pty_mount,
                proxy: Some(ProxyPaths {
                    host: "/tmp/vassal_with_standard_socket.sock".into(),
                    container: "/tmp/vassal_with_standard_socket".into(),
                }),
                ..empty_docker("vassal_with_standard_socket.ini")
            }))
        );
        // The vassal's own sections (uwsgi's `socket`, `chmod-socket`, ...) are not ours.
        assert_eq!(c.chmod_socket, None);
        assert_eq!(c.text, T_STANDARD_SOCKET);
    }

    // On-demand, idle and Host routes.

    fn route(host: &str, socket: Option<&str>) -> Route {
        Route {
            host: host.into(),
            socket: socket.map(Into::into),
        }
    }

    #[test]
    fn on_demand_and_idle() {
        let c = ok("[emperor]\nsocket = /run/a.sock\n");
        assert_eq!((c.on_demand, c.idle, c.idle_action), (false, None, IdleAction::Stop));
        assert!(c.routes.is_empty());
        for (value, expected) in [
            ("true", true),
            ("YES", true),
            ("1", true),
            ("no", false),
            ("False", false),
            ("0", false),
        ] {
            assert_eq!(ok(&one(&format!("on-demand = {value}"))).on_demand, expected, "{value}");
        }
        let c = ok("[emperor]\non-demand = yes\nidle = 2.5\nidle-action = pause\n");
        assert!(c.on_demand);
        assert_eq!(c.idle, Some(Duration::from_millis(2500)));
        assert_eq!(c.idle_action, IdleAction::Pause);
        // Order in the file does not matter.
        let c = ok("[emperor]\nidle-action = Stop\nidle = 60\n");
        assert_eq!(
            (c.idle, c.idle_action),
            (Some(Duration::from_secs(60)), IdleAction::Stop)
        );
        // Docker vassals take them too.
        let c = ok(&with_image("on-demand = true\nidle = 1\nidle-action = pause"));
        assert!(c.on_demand && c.docker.is_some());
    }

    #[test]
    fn on_demand_and_idle_invalid() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "on-demand = maybe",
                "on-demand",
                "expected true, false, 1, 0, yes or no",
            ),
            ("idle = 0", "idle", "idle must be greater than 0"),
            ("idle = 0.0", "idle", "idle must be greater than 0"),
            ("idle = -3", "idle", "expected seconds, such as 10 or 0.5"),
            ("idle = 5m", "idle", "expected seconds, such as 10 or 0.5"),
            ("idle = 1e9999", "idle", "expected seconds, such as 10 or 0.5"),
            ("idle-action = freeze", "idle-action", "expected stop or pause"),
        ];
        for (line, key, message) in cases {
            // idle-action is checked with an idle line, so only its own problem shows.
            let text = if *key == "idle-action" {
                format!("[emperor]\n{line}\nidle = 1\n")
            } else {
                one(line)
            };
            let e = err(&text);
            assert_eq!(problems(&e), vec![(Some(2), Some(*key), *message)], "{line}");
        }
        let e = err("[emperor]\nsocket = /run/a.sock\nidle-action = pause\n");
        assert_eq!(
            problems(&e),
            vec![(
                Some(3),
                Some("idle-action"),
                "needs idle: the action is taken after \"idle = <seconds>\" without a connection"
            )]
        );
        // An invalid idle has its own problem; idle-action adds none.
        let e = err("[emperor]\nidle = never\nidle-action = stop\n");
        assert_eq!(
            problems(&e),
            vec![(Some(2), Some("idle"), "expected seconds, such as 10 or 0.5")]
        );
    }

    #[test]
    fn logto_and_log_maxsize() {
        let c = ok("[emperor]\nexec = app\n");
        assert_eq!((c.logto, c.log_maxsize), (None, None));
        let c = ok("[emperor]\nlog-maxsize = 512k\nlogto = logs/app.log\n");
        assert_eq!(c.logto, Some(PathBuf::from("/srv/vassals.d/logs/app.log")));
        assert_eq!(c.log_maxsize, Some(512 * 1024));
        let c = ok("[emperor]\nlogto = /var/log/app.log\nlog-maxsize = 100\n");
        assert_eq!(c.logto, Some(PathBuf::from("/var/log/app.log")));
        assert_eq!(c.log_maxsize, Some(100));
        let c = ok(&with_image("logto = ./a.log\nlog-maxsize = 1G"));
        assert_eq!(c.logto, Some(PathBuf::from("/srv/vassals.d/a.log")));
        assert_eq!(c.log_maxsize, Some(1 << 30));
    }

    #[test]
    fn logto_and_log_maxsize_invalid() {
        let e = err("[emperor]\nlogto = a.log\nlog-maxsize = 0\n");
        assert_eq!(
            problems(&e),
            vec![(Some(3), Some("log-maxsize"), "must be more than 0 bytes")]
        );
        let e = err("[emperor]\nlogto = a.log\nlog-maxsize = 10x\n");
        assert_eq!(problems(&e).len(), 1);
        assert!(problems(&e)[0].2.starts_with("\"10x\" is not a number of bytes"), "{e}");
        let e = err("[emperor]\nexec = app\nlog-maxsize = 1m\n");
        assert_eq!(
            problems(&e),
            vec![(
                Some(3),
                Some("log-maxsize"),
                "needs logto: only a vassal's own log file is rotated (Docker's copy is bounded already)"
            )]
        );
        let e = err("[emperor]\nlogto = a\u{1}b.log\n");
        assert_eq!(problems(&e).len(), 1, "{e}");
        assert_eq!(problems(&e)[0].1, Some("logto"));
    }

    #[test]
    fn routes_from_domains_and_domain() {
        let c = ok("[emperor]\n\
            socket = /run/a.sock\n\
            socket = name=admin,127.0.0.1:9001\n\
            domains = Shop.Example  www.shop.example\tapi.shop.example.\n\
            domain = *.Apps.Example\n\
            domain = admin.shop.example socket=admin\n\
            domains = .static.example _acme.x-1.example localhost\n");
        assert_eq!(
            c.routes,
            vec![
                route("shop.example", None),
                route("www.shop.example", None),
                route("api.shop.example", None),
                route("*.apps.example", None),
                route("admin.shop.example", Some("admin")),
                route(".static.example", None),
                route("_acme.x-1.example", None),
                route("localhost", None),
            ]
        );
        // A named socket may also be the first one.
        let c = ok("[emperor]\nsocket = name=web,/run/w.sock\ndomain = a.example socket=web\ndomain = b.example\n");
        assert_eq!(
            c.routes,
            vec![route("a.example", Some("web")), route("b.example", None)]
        );
    }

    #[test]
    fn routes_invalid() {
        let base = "[emperor]\nsocket = /run/a.sock\nsocket = name=admin,/run/admin.sock\nsocket = name=abs,@abs\n";
        let cases: &[(&str, &str, &str)] = &[
            (
                "domains = a.example:8080",
                "domains",
                "\"a.example:8080\" has a port or is an ipv6 address: a route matches nginx's $host, which is \
                 the name alone (no port); write the name",
            ),
            (
                "domain = [::1]",
                "domain",
                "\"[::1]\" has a port or is an ipv6 address: a route matches nginx's $host, which is the name \
                 alone (no port); write the name",
            ),
            (
                "domain = http://a.example/",
                "domain",
                "\"http://a.example/\" has a port or is an ipv6 address: a route matches nginx's $host, which \
                 is the name alone (no port); write the name",
            ),
            (
                "domain = a.example/x",
                "domain",
                "\"a.example/x\" is a url or path; write the host name alone",
            ),
            (
                "domain = www.*.example",
                "domain",
                "\"www.*.example\": a wildcard is only allowed as a leading \"*.\" (as in *.example.com)",
            ),
            (
                "domain = example.*",
                "domain",
                "\"example.*\": a wildcard is only allowed as a leading \"*.\" (as in *.example.com)",
            ),
            ("domain = *.", "domain", "\"*.\" has no name after \"*.\""),
            ("domain = .", "domain", "\".\" has no name after \".\""),
            (
                "domain = a..example",
                "domain",
                "\"a..example\" is not a host name: \"\" is not a dns label (1 to 63 of a-z 0-9 - _, not \
                 starting or ending with -)",
            ),
            (
                "domain = -a.example",
                "domain",
                "\"-a.example\" is not a host name: \"-a\" is not a dns label (1 to 63 of a-z 0-9 - _, not \
                 starting or ending with -)",
            ),
            (
                "domain = a.example b.example",
                "domain",
                "\"b.example\": one host per domain line (use domains = for several); expected \"<host>\" or \
                 \"<host> socket=<name>\"",
            ),
            (
                "domain = a.example weight=2",
                "domain",
                "unknown option \"weight\"; expected \"<host>\" or \"<host> socket=<name>\"",
            ),
            (
                "domain = a.example socket=admin socket=admin",
                "domain",
                "socket= given twice; expected \"<host>\" or \"<host> socket=<name>\"",
            ),
            ("domain = a.example socket=", "domain", "socket name is empty"),
            (
                "domain = a.example socket=nope",
                "domain",
                "the vassal has no socket named \"nope\"; its named sockets: admin, abs",
            ),
            (
                "domain = a.example socket=abs",
                "domain",
                "routes to the abstract socket @abs, which nginx cannot connect to; route to a socket with a \
                 path or host:port (domain = <host> socket=<name>)",
            ),
        ];
        for (line, key, message) in cases {
            let e = err(&format!("{base}{line}\n"));
            assert_eq!(problems(&e), vec![(Some(5), Some(*key), *message)], "{line}");
        }
        let long = format!("{}.example", "a".repeat(64));
        let e = err(&format!("{base}domain = {long}\n"));
        assert!(e.problems[0].message.contains("is not a dns label"), "{e}");
        let huge = vec!["a".repeat(60); 5].join(".");
        let e = err(&format!("{base}domain = {huge}\n"));
        assert_eq!(
            e.problems[0].message,
            format!("\"{huge}\" is {} bytes; a dns name has at most 253", huge.len())
        );
    }

    #[test]
    fn routes_same_host_twice_in_one_vassal() {
        let e = err("[emperor]\nsocket = /run/a.sock\ndomains = a.example B.example\n\
                     domain = b.example\ndomains = c.example A.EXAMPLE.\n");
        assert_eq!(
            problems(&e),
            vec![
                (Some(4), Some("domain"), "host b.example is already routed on line 3"),
                (Some(5), Some("domains"), "host a.example is already routed on line 3"),
            ]
        );
        // Overlaps nginx would refuse in one map: .x claims x and *.x.
        let e = err("[emperor]\nsocket = /run/a.sock\ndomains = .x.example\ndomains = x.example *.x.example\n");
        assert_eq!(
            problems(&e),
            vec![
                (
                    Some(4),
                    Some("domains"),
                    "host x.example overlaps .x.example (nginx matches x.example through both) on line 3"
                ),
                (
                    Some(4),
                    Some("domains"),
                    "host *.x.example overlaps .x.example (nginx matches *.x.example through both) on line 3"
                ),
            ]
        );
        // A wildcard and the exact name do not overlap.
        let c = ok("[emperor]\nsocket = /run/a.sock\ndomains = x.example *.x.example\n");
        assert_eq!(c.routes.len(), 2);
    }

    #[test]
    fn routes_need_a_socket() {
        let e = err("[emperor]\ndomains = a.example b.example\ndomain = c.example\n");
        let needs = "needs a socket: requests for the host go to the vassal's first socket (or the one named \
                     with socket=), and it has none";
        assert_eq!(
            problems(&e),
            vec![(Some(2), Some("domains"), needs), (Some(3), Some("domain"), needs)]
        );
        // The socket may come after the route, and docker-socket counts.
        let c = ok("[emperor]\ndomain = a.example socket=web\nsocket = name=web,/run/w.sock\n");
        assert_eq!(c.routes, vec![route("a.example", Some("web"))]);
        let c = ok(&with_image(
            "domain = a.example socket=d\ndocker-socket = name=d,/run/d.sock",
        ));
        assert_eq!(c.routes, vec![route("a.example", Some("d"))]);
        // A first socket that is abstract cannot be the default target.
        let e = err("[emperor]\nsocket = @abs\nsocket = name=p,/run/p.sock\ndomain = a.example\n");
        assert_eq!(e.problems.len(), 1, "{e}");
        assert!(
            e.problems[0].message.starts_with("routes to the abstract socket @abs"),
            "{e}"
        );
        assert!(
            ok("[emperor]\nsocket = @abs\nsocket = name=p,/run/p.sock\ndomain = a.example socket=p\n")
                .routes
                .len()
                == 1
        );
        // An invalid socket line is reported alone: it may be the one the route meant.
        let e = err("[emperor]\nsocket = name=web,garbage\ndomain = a.example socket=web\n");
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(e.problems[0].key.as_deref(), Some("socket"));
    }

    #[test]
    fn readme_routing_example_parses() {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n## Routing by Host with nginx\n")
            .nth(1)
            .unwrap_or_else(|| panic!("README section"));
        let text = section
            .split("```ini\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .unwrap_or_else(|| panic!("ini block"));
        let c = ok(text);
        assert_eq!(
            c.routes,
            vec![
                route("shop.example", None),
                route("www.shop.example", None),
                route("admin.shop.example", Some("admin")),
                route("*.shops.example", None),
            ]
        );
    }

    #[test]
    fn route_overlaps() {
        let cases = [
            ("a.b", "a.b", true),
            ("a.b", "*.a.b", false),
            ("a.b", ".a.b", true),
            ("*.a.b", ".a.b", true),
            ("*.a.b", "*.a.b", true),
            ("x.a.b", "*.a.b", false),
            ("a.b", "b", false),
        ];
        for (a, b, expected) in cases {
            assert_eq!(route(a, None).overlaps(&route(b, None)), expected, "{a} {b}");
            assert_eq!(route(b, None).overlaps(&route(a, None)), expected, "{b} {a}");
        }
    }

    #[test]
    fn emperor_only_keys_do_not_change_the_emperor_hash() {
        let base = "[emperor]\nsocket = /run/a.sock\n";
        let hashes: Vec<u64> = [
            "",
            "domains = a.example\n",
            "domains = b.example\n",
            "domain = a.example\n",
            "on-demand = true\n",
            "idle = 5\n",
            "idle = 5\nidle-action = pause\n",
            "logto = a.log\n",
            "logto = /var/log/b.log\nlog-maxsize = 10m\n",
        ]
        .iter()
        .map(|extra| ok(&format!("{base}{extra}")).emperor_hash)
        .collect();
        assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
        assert_ne!(hashes[0], ok("[emperor]\nsocket = /run/b.sock\n").emperor_hash);
    }
}
