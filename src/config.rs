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
//! All in `[emperor]`, case-sensitive, values trimmed, an empty value is an error. `socket` and
//! `env` repeat; every other key may be given once. See [`KNOWN_KEYS`] and the fields of
//! [`VassalConfig`]. A file with no `[emperor]` section is a classic uWSGI vassal and is valid.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ini::{Ini, ParseOption};
use nix::sys::signal::Signal;
use nix::unistd::{Group, User};

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
];

/// Keys that may be given more than once; each line adds one value, in order.
const REPEATABLE_KEYS: &[&str] = &["socket", "env"];

/// `sizeof(sockaddr_un.sun_path)` on Linux; a path needs its NUL terminator inside it.
const SUN_PATH_LEN: usize = 108;

/// Socket names travel in `LISTEN_FDNAMES`, which systemd limits to 255 bytes per name.
const MAX_SOCKET_NAME_LEN: usize = 255;

/// Below this Jaro-Winkler similarity an unknown key gets no "did you mean".
const SUGGESTION_THRESHOLD: f64 = 0.8;

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

impl fmt::Display for ConfigError {
    /// One problem per line: `<path>:<line>: [emperor] <key> = "<value>": <message>`, leaving out
    /// what is unknown (`<path>: cannot read: ...`, `<path>:3:7: syntax error: ...`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.problems.is_empty() {
            return write!(f, "{}: invalid vassal file", self.path.display());
        }
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.path.display())?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
                if let Some(column) = p.column {
                    write!(f, ":{column}")?;
                }
            }
            write!(f, ": ")?;
            if let Some(key) = &p.key {
                write!(f, "[{SECTION}] {key}")?;
                if let Some(value) = &p.value {
                    write!(f, " = \"{value}\"")?;
                }
                write!(f, ": ")?;
            }
            write!(f, "{}", p.message)?;
        }
        Ok(())
    }
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
        fail(format!(
            "not valid utf-8 (bad byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    parse(&name, path, &text, vassals_dir)
}

/// Parses vassal file content. `name` is the vassal name (`app.ini`), `path` is used in errors,
/// `vassals_dir` anchors relative paths.
pub fn parse(name: &str, path: &Path, text: &str, vassals_dir: &Path) -> Result<VassalConfig, ConfigError> {
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
                in_ours =
                    trimmed.ends_with(']') && trimmed.len() >= 2 && trimmed[1..trimmed.len() - 1].trim() == SECTION;
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
    config.emperor_hash = emperor_hash(&raw.entries);
    let mut first_seen: HashMap<&str, Option<usize>> = HashMap::new();
    let mut socket_lines: HashMap<SocketAddrSpec, Option<usize>> = HashMap::new();

    for entry in &raw.entries {
        let key = entry.key.as_str();
        if !KNOWN_KEYS.contains(&key) {
            let message = match suggest(key) {
                Some(known) => format!("unknown key; did you mean \"{known}\"?"),
                None => "unknown key".to_owned(),
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
        let value = entry.value.as_str();
        if value.is_empty() {
            problems.push(Problem::for_entry(entry, "empty value"));
            continue;
        }
        let result: Result<(), String> = match key {
            "socket" => parse_socket(value, Some(vassals_dir)).and_then(|spec| {
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
            "chdir" => parse_chdir(value, vassals_dir).map(|dir| config.chdir = Some(dir)),
            "stop-signal" => parse_signal(value).map(|sig| config.stop_signal = Some(sig)),
            "stop-timeout" => parse_timeout(value).map(|t| config.stop_timeout = Some(t)),
            "chmod-socket" => parse_mode(value).map(|m| config.chmod_socket = Some(m)),
            "chown-socket" => parse_owner(value).map(|o| config.chown_socket = Some(o)),
            "listen" => parse_backlog(value).map(|n| config.listen = Some(n)),
            // KNOWN_KEYS lists a key that has no parser: a bug here, reported rather than ignored.
            _ => Err("known key without a parser (emperor bug)".to_owned()),
        };
        if let Err(message) = result {
            problems.push(Problem::for_entry(entry, message));
        }
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
/// unlike `DefaultHasher`, so it can outlive the process (container labels).
fn emperor_hash(entries: &[RawEntry]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    for entry in entries {
        feed(entry.key.as_bytes());
        feed(entry.value.as_bytes());
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
    let digits = value.bytes().filter(u8::is_ascii_digit).count();
    let dots = value.bytes().filter(|b| *b == b'.').count();
    if digits == 0 || dots > 1 || digits + dots != value.len() {
        return Err("expected seconds, such as 10 or 0.5".to_owned());
    }
    let secs: f64 = value
        .parse()
        .map_err(|_| "expected seconds, such as 10 or 0.5".to_owned())?;
    let timeout = Duration::try_from_secs_f64(secs).map_err(|_| "timeout is too large".to_owned())?;
    if timeout.is_zero() {
        return Err("timeout must be greater than 0".to_owned());
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

/// `user`, `user:group` or `:group`; numeric ids are taken as they are, names must exist.
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
    match User::from_name(name) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        Ok(None) => Err(format!("unknown user \"{name}\"")),
        Err(e) => Err(format!("cannot look up user \"{name}\": {e}")),
    }
}

fn lookup_group(name: &str) -> Result<u32, String> {
    if let Some(id) = numeric_id(name, "group") {
        return id;
    }
    match Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!("unknown group \"{name}\"")),
        Err(e) => Err(format!("cannot look up group \"{name}\": {e}")),
    }
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
        assert_eq!(ok("").emperor_hash, c.emperor_hash);
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
                other => panic!("add a value for {other}"),
            };
            let e = err(&format!("[emperor]\n{key} = {value}\n\n{key} = {value}\n"));
            assert_eq!(e.problems.len(), 1, "{key}: {e}");
            assert_eq!(e.problems[0].message, "given twice (first on line 2)");
            assert_eq!(e.problems[0].line, Some(4));
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
        assert_ne!(emperor_hash(&[entry("ab", "c")]), emperor_hash(&[entry("a", "bc")]));
        // Pinned: the hash is stored in container labels, so it must not change between builds.
        assert_eq!(emperor_hash(&[]), 0xcbf2_9ce4_8422_2325);
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
        assert_eq!(e.problems[0].line, None);
        assert_eq!(
            e.to_string(),
            format!("{}: not valid utf-8 (bad byte at offset 17)", bad.display())
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
}
