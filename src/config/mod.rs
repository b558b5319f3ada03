//! Vassal files: `<vassals.d>/<name>.ini` → [`VassalConfig`]. The keys and what they mean are the
//! README's ("A vassal file", "Docker keys", "Routing by Host with nginx"); this says why the code is
//! shaped as it is.
//!
//! A vassal file has two readers. `[emperor]` is ours; every other section belongs to the vassal and is
//! passed on untouched as [`VassalConfig::text`] (uWSGI gets it over its config pipe), so nothing outside
//! `[emperor]` may ever cause an error or be changed by our reading. Parsing therefore runs in two layers,
//! as ripgrep's `LowArgs` → `HiArgs` does: `raw` cuts the text into sections with uWSGI's rules and gives
//! only `[emperor]` to rust-ini, whose grammar is not uWSGI's (see `raw.rs` for how they disagree), with
//! the line of every key; `typed` checks and converts each key (`keys`, `socket`, `docker`, `routes`).
//! No escapes and no quote stripping: uWSGI has neither, and a value such as `C:\foo` or `"x"` must mean
//! to us what it means to uWSGI in the same file.
//!
//! Both layers *collect* [`Problem`]s instead of stopping at the first, each with file, line, key and
//! value: a broken vassal gets one message that lists everything wrong with it, is not started, and
//! never disturbs another vassal. Nothing here panics or unwraps on input.

mod accept;
mod docker;
mod keys;
mod raw;
mod replicas;
mod routes;
mod socket;
#[cfg(test)]
mod tests;
mod typed;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

pub use docker::DockerConfig;
pub(crate) use keys::parse_size;
pub use keys::{Owner, parse_owner};
pub use replicas::Replicas;
pub use routes::{Route, claims, parse_host};
pub use socket::{SocketAddrSpec, SocketSpec};
pub(crate) use typed::closest_key;

use raw::{RawEntry, RawVassal};

/// The section of a vassal file that the emperor reads; all others belong to the vassal.
pub const SECTION: &str = "emperor";

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
    /// `socket-nonblocking = true|false` (default false, systemd's `NonBlocking=`): the vassal's sockets are
    /// handed over with `O_NONBLOCK` set. nginx needs it: it never sets the flag on a socket it inherits, and a
    /// worker that loses a connection to another then blocks in `accept`, its other clients stalled until the
    /// next connection comes.
    pub socket_nonblocking: bool,
    /// `accept = true`: the vassal's process is the emperor's accept role, which runs the command once
    /// per connection (`crate::accept`); the value is `max-connections`, the most served at once.
    pub accept: Option<u32>,
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
    /// `prewarm = true|false|...` (default false; needs `on-demand = true` and `idle-action = pause`):
    /// start the vassal without waiting for a connection and freeze it as soon as it waits for
    /// connections, so that even the first request is a wake from pause, not a cold start.
    pub prewarm: bool,
    /// `replicas = N | MIN..MAX` with `replicas-up` / `replicas-down` (default 1): how many instances share
    /// the vassal's sockets ([`replicas`]).
    pub replicas: Replicas,
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
    /// Tyrant mode (`--emperor-tyrant`): the file's owner, whom the vassal runs as. Never from the file's
    /// text: the emperor sets it from the file's metadata ([`VassalConfig::running_as`]).
    pub run_as: Option<RunAs>,
    /// Whose vassal this is when no file tells (a `pg://` row's uid and gid, root when they are NULL): the
    /// owner a policy is checked for. `None` for a vassal file, whose owner is read from the file.
    pub owner: Option<RunAs>,
    /// What the policy forces on the vassal's container (user, ceilings, capabilities, resolved mount
    /// sources); set by whoever checked the vassal against the policy, never from the file's text.
    pub container_policy: Option<Box<crate::policy::ContainerDecision>>,
    /// Every `[emperor]` line as written, in file order, with its line: what a policy refusal
    /// (`policy/`) names (`shop.ini:5: [emperor] docker-mount = "/:/host": refused by ...`). Not
    /// part of any hash or comparison that decides a reload.
    pub lines: Vec<KeyLine>,
}

/// A vassal file's owner, whom the vassal runs as in tyrant mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl std::fmt::Display for RunAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

impl std::str::FromStr for RunAs {
    type Err = String;
    fn from_str(s: &str) -> Result<RunAs, String> {
        let (u, g) = s.split_once(':').ok_or_else(|| format!("{s:?} is not UID:GID"))?;
        match (u.parse(), g.parse()) {
            (Ok(uid), Ok(gid)) => Ok(RunAs { uid, gid }),
            _ => Err(format!("{s:?} is not UID:GID")),
        }
    }
}

/// One `key = value` line of the `[emperor]` section (trimmed, as the typed fields were read from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLine {
    pub key: String,
    pub value: String,
    /// 1-based; `None` only if the raw layer could not place the key (it always can today).
    pub line: Option<usize>,
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

impl VassalConfig {
    /// True if the file has a `[uwsgi]` section; see [`VassalConfig::uwsgi_section`].
    #[allow(dead_code, reason = "API for the emperor and bridge, which read the field today")]
    pub fn has_uwsgi_section(&self) -> bool {
        self.uwsgi_section
    }

    /// The same vassal, run as `run_as` (tyrant mode).
    pub fn running_as(mut self, run_as: Option<RunAs>) -> VassalConfig {
        self.run_as = run_as;
        self
    }

    /// The same vassal with its container named `<prefix><name>` (the emperor's `--docker-name-prefix`;
    /// the prefix is checked to keep the name valid for Docker).
    pub fn with_name_prefix(mut self, prefix: &str) -> VassalConfig {
        if let Some(d) = self.docker.as_mut().filter(|_| !prefix.is_empty()) {
            d.container_name = format!("{prefix}{}", d.container_name);
        }
        self
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
    from_bytes(&name, path, bytes, vassals_dir)
}

/// Parses a vassal file's bytes as [`load`] read them: UTF-8 first, then [`parse`]. Apart from the file
/// so that the fuzz target (`fuzz/`) starts where an attacker who can write a vassal file does.
pub fn from_bytes(name: &str, path: &Path, bytes: Vec<u8>, vassals_dir: &Path) -> Result<VassalConfig, ConfigError> {
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
    parse(name, path, &text, vassals_dir)
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
    let config = typed::build(name, path, text, vassals_dir, &raw, &mut problems);
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
