//! `--ini FILE[:SECTION]`: the emperor's own options from a uWSGI emperor file, so that the file a uWSGI user
//! starts `uwsgi --ini` with (uwsgi-docker's README: `plugin`, `emperor`, `emperor-docker-required`,
//! `emperor-wrapper`) starts this emperor as it is.
//!
//! Why the file becomes command-line arguments: uWSGI's rule is that every command-line option is a config
//! key and the other way round, and the emperor's options are clap's. So a key is looked up among the
//! emperor's long options (and uWSGI's other spellings of them), its value is checked by that option's own
//! parser (so a bad one is an error naming the file, line and key, not a clap message about a flag nobody
//! typed), and the file's options go in front of the command line's: clap's last-wins then lets the command
//! line override the file, and `--help` documents both.
//!
//! Why a reader of its own and not rust-ini or `config/raw.rs`: this is uWSGI's grammar (`core/ini.c`): `=`
//! only, a key without one is a flag set to true, no escapes, quotes or continuation lines; and values go
//! through uWSGI's expansions in its order: magic variables (`%d`, `%n`, ...) when the file is read, then
//! `$(ENV)`, then `%(placeholder)`. Emperor files use them: uwsgi-docker's own test file says
//! `emperor = dir:///%d/Emperor`.
//!
//! What uWSGI would get silently wrong is an error here: an unknown key (uWSGI takes it for a placeholder,
//! so `emperor-throtle` changes nothing), an unknown magic variable or placeholder (uWSGI substitutes
//! nothing or leaves it), and an option this emperor cannot honour (`uid`, `logto`, `vassals-inherit`:
//! ignoring those would run vassals as another user or lose their logs). Options that only uWSGI's master
//! process or its plugins read (`plugin`, `master`, `processes`) change nothing here, and one info line
//! lists them.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use clap::{ArgAction, Command, CommandFactory};

use crate::config::printable;

/// The section read unless `--ini FILE:SECTION` names another (uWSGI's default).
const DEFAULT_SECTION: &str = "uwsgi";

/// uWSGI's other spellings of the emperor's options: key → our long option.
const UWSGI_SPELLINGS: &[(&str, &str)] = &[
    ("docker-emperor", "emperor-docker"),
    ("docker-emperor-required", "emperor-docker-required"),
    // uWSGI: seconds a vassal asked to stop gets before SIGKILL; ours is --reload-mercy.
    ("emperor-curse-tolerance", "reload-mercy"),
    ("chmod", "chmod-socket"),
];

/// Keys that change nothing here, grouped by why, for the one info line.
const IGNORED: &[(&str, &[&str])] = &[
    (
        "only uWSGI's master process or its plugins read them",
        &[
            "plugin",
            "plugins",
            "plugin-dir",
            "plugins-dir",
            "need-plugin",
            "need-plugins",
            "autoload",
            "master",
            "processes",
            "workers",
            "threads",
            "enable-threads",
            "single-interpreter",
            "vacuum",
            "die-on-term",
            "thunder-lock",
            "memory-report",
            "no-orphans",
            "auto-procname",
            "procname",
            "procname-prefix",
            "procname-prefix-spaced",
            "procname-append",
            "procname-master",
            "emperor-procname",
            "socket-timeout",
            "show-config",
        ],
    ),
    (
        "this emperor does that anyway",
        &[
            // Vassals are always stopped gracefully (byte 2, then SIGKILL after the mercy).
            "emperor-graceful-shutdown",
            // The emperor binds every socket itself; uwsgi-docker needed a directory for the fallback.
            "docker-socket-dir",
            // Unknown keys are errors here, placeholders need set-placeholder or a %(reference).
            "strict",
        ],
    ),
];

/// uWSGI options this emperor cannot honour, with what to do instead.
const REFUSED: &[(&[&str], &str)] = &[
    (
        &["uid", "gid"],
        "the emperor does not change its user: run it as that user (systemd's User=), or set emperor-tyrant \
         to run each vassal as its file's owner",
    ),
    (&["chroot"], "the emperor does not chroot"),
    (
        &["daemonize", "daemonize2"],
        "the emperor stays in the foreground: run it under systemd (contrib/emperor.service) or a supervisor",
    ),
    (
        &["logto", "logto2", "logger"],
        "the emperor logs to stderr and vassal output to stdout: redirect them (systemd: \
         StandardOutput=append:FILE)",
    ),
    (
        &["pidfile", "pidfile2", "emperor-pidfile"],
        "the emperor writes no pid file (systemd tracks it: Type=notify)",
    ),
    (
        &["ini", "include", "inherit", "xml", "yaml", "yml", "json", "config"],
        "the emperor reads one file: copy the options into it",
    ),
    (
        &[
            "vassals-inherit",
            "vassals-include",
            "vassals-inherit-before",
            "vassals-include-before",
            "vassal-set",
            "vassals-set",
        ],
        "options for every vassal are not supported: put them in the vassal files",
    ),
    (
        &[
            "emperor-on-demand-directory",
            "emperor-on-demand-dir",
            "emperor-on-demand-extension",
            "emperor-on-demand-ext",
            "emperor-on-demand-exec",
        ],
        "on-demand is set per vassal here: on-demand = true in the vassal's [emperor] section",
    ),
    (
        &["emperor-nofollow"],
        "vassal files are followed through symlinks here; a symlink's own mtime is not watched",
    ),
    (
        &[
            "emperor-broodlord",
            "emperor-use-clone",
            "emperor-use-fork-server",
            "emperor-fork-server-attr",
            "emperor-extra-extension",
            "emperor-wrapper-override",
            "emperor-wrapper-fallback",
            "emperor-wrapper-attr",
            "emperor-chdir-attr",
            "emperor-collect-attr",
            "emperor-command-socket",
            "emperor-wait-for-command",
            "emperor-wait-for-command-ignore",
            "emperor-no-blacklist",
            "emperor-magic-exec",
            "emperor-cap",
            "emperor-tyrant-initgroups",
            "vassals-start-hook",
            "vassals-stop-hook",
        ],
        "not supported by this emperor",
    ),
];

/// Keys that define a placeholder (`set-placeholder = name=value`) instead of an option.
const PLACEHOLDER_KEYS: &[&str] = &["set-placeholder", "set-ph"];

/// What the file contributes to the command line.
#[derive(Debug, Default, PartialEq)]
pub(super) struct FromFile {
    /// Long options for clap (`--emperor-throttle=500`, `--emperor-tyrant`), to go before the command line's.
    pub(super) args: Vec<OsString>,
    /// The `emperor` key as a vassals directory or `pg://...`.
    pub(super) source: Option<PathBuf>,
    /// The info line naming the keys that change nothing here.
    pub(super) note: Option<String>,
}

/// Reads `--ini`'s `FILE[:SECTION]`.
pub(super) fn load(spec: &str) -> Result<FromFile, String> {
    let (path, section) = split_spec(spec);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("--ini {}: cannot read: {e}", path.display()))?;
    let cwd = std::env::current_dir().map_err(|e| format!("cannot read the working directory: {e}"))?;
    let magic = Magic::of(&path, &cwd);
    read(&path.display().to_string(), &text, &section, &magic, &|name| {
        std::env::var(name).ok()
    })
}

/// `FILE:SECTION` → (FILE, SECTION), split at the last `:` as uWSGI does, unless `spec` names a file as it
/// is or the part after the colon holds a `/` (then the colon belongs to a directory's name).
fn split_spec(spec: &str) -> (PathBuf, String) {
    if !Path::new(spec).is_file()
        && let Some((file, section)) = spec.rsplit_once(':')
        && !section.contains('/')
    {
        let section = if section.is_empty() { DEFAULT_SECTION } else { section };
        return (PathBuf::from(file), section.to_owned());
    }
    (PathBuf::from(spec), DEFAULT_SECTION.to_owned())
}

/// One `key = value` line of the section, its value expanded.
#[derive(Debug, Clone)]
struct Entry {
    line: usize,
    key: String,
    value: String,
}

/// One thing wrong with the file; printed as `<file>:<line>: [<section>] <key> = "<value>": <message>`.
struct Problem {
    line: usize,
    key: String,
    value: String,
    message: String,
}

/// The file's text → what it contributes, or every problem found, one per line.
fn read(
    name: &str,
    text: &str,
    section: &str,
    magic: &Magic,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<FromFile, String> {
    let at = |line: usize, message: String| format!("{}:{line}: {}", printable(name), printable(&message));
    let mut entries = section_lines(text, section).map_err(|(line, m)| at(line, m))?;
    if entries.is_empty() {
        return Err(format!(
            "{}: no [{section}] section with options (a uWSGI emperor file has `emperor = <dir>` under [{DEFAULT_SECTION}]; \
             another section is read with --ini FILE:SECTION)",
            printable(name)
        ));
    }
    let mut problems = Vec::new();
    // uWSGI's order: magic variables when the file is read, then $(ENV), then placeholders.
    for e in &mut entries {
        let raw = e.value.clone();
        match expand_magic(&raw, magic).and_then(|v| expand_env(&v, env)) {
            Ok(v) => e.value = v,
            Err(message) => problems.push(Problem {
                line: e.line,
                key: e.key.clone(),
                value: raw,
                message,
            }),
        }
    }
    let definitions = placeholder_definitions(&entries, &mut problems);
    let referenced = referenced_placeholders(&entries);
    for e in &mut entries {
        match expand_placeholders(&e.value, &definitions, 0) {
            Ok(v) => e.value = v,
            Err(message) => problems.push(Problem {
                line: e.line,
                key: e.key.clone(),
                value: e.value.clone(),
                message,
            }),
        }
    }
    let (mut from_file, ignored) = map(&entries, &referenced, &mut problems);
    if problems.is_empty() {
        let docker_plugin = entries.iter().any(|e| {
            ["plugin", "plugins", "need-plugin", "need-plugins"].contains(&e.key.as_str()) && e.value.contains("docker")
        });
        from_file.note = note(name, &ignored, docker_plugin);
        return Ok(from_file);
    }
    problems.sort_by_key(|p| p.line);
    Err(problems
        .iter()
        .map(|p| {
            at(
                p.line,
                format!("[{section}] {} = \"{}\": {}", p.key, p.value, p.message),
            )
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The `key = value` lines of every `[section]` of the file, in order, with uWSGI's rules: lines are
/// trimmed, `;` and `#` start a comment line, a line starting with `[` is a section header, the key ends at
/// the first `=` and a line without one is a key with an empty value. Err: (line, message) for a header
/// that does not end with `]` (uWSGI would take `[uwsgi] ; note` for a section named `uwsgi] ; not`).
fn section_lines(text: &str, section: &str) -> Result<Vec<Entry>, (usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut entries = Vec::new();
    let mut inside = false;
    for (index, line) in text.split('\n').enumerate() {
        let line = line.trim_matches([' ', '\t', '\r']);
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let Some(header) = header.strip_suffix(']') else {
                return Err((index + 1, format!("{line}: a section header ends the line with ]")));
            };
            inside = header.trim() == section;
            continue;
        }
        if inside {
            let (key, value) = line.split_once('=').unwrap_or((line, ""));
            entries.push(Entry {
                line: index + 1,
                key: key.trim_matches([' ', '\t', '\r']).to_owned(),
                value: value.trim_matches([' ', '\t', '\r']).to_owned(),
            });
        }
    }
    Ok(entries)
}

/// uWSGI's magic variables of one config file (Configuration.rst, `config_magic_table_fill`): `%d` is the
/// file's directory with a trailing `/`, `%n` its name without the extension, and so on. An upper-case
/// twin (`%D`) refers to the first non-template file in uWSGI; with no includes here it is the same file.
pub(super) struct Magic {
    vars: Vec<(char, String)>,
}

impl Magic {
    /// The variables of the file at `path` (as given on the command line), read from `cwd`.
    pub(super) fn of(path: &Path, cwd: &Path) -> Magic {
        // %p: the absolute path, symlinks resolved unless the file itself is one (then only made absolute).
        let is_link = path.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink());
        let absolute = if is_link {
            cwd.join(path)
        } else {
            std::fs::canonicalize(path).unwrap_or_else(|_| cwd.join(path))
        };
        let p = absolute.to_string_lossy().into_owned();
        let (dir, s) = p.rsplit_once('/').map_or(("", p.as_str()), |(d, s)| (d, s));
        let d = format!("{dir}/");
        let c = dir.rsplit('/').next().unwrap_or("").to_owned();
        // uWSGI leaves %e and %n empty for a name without a dot.
        let (n, e) = s
            .rsplit_once('.')
            .map_or((String::new(), String::new()), |(n, e)| (n.to_owned(), e.to_owned()));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let mut vars = vec![
            ('o', path.to_string_lossy().into_owned()),
            ('p', p.clone()),
            ('s', s.to_owned()),
            ('d', d),
            ('c', c),
            ('e', e),
            ('n', n),
            ('v', cwd.to_string_lossy().into_owned()),
            ('h', hostname.trim().to_owned()),
            ('t', now.as_secs().to_string()),
            ('T', now.as_micros().to_string()),
            (
                'k',
                std::thread::available_parallelism().map_or(1, |n| n.get()).to_string(),
            ),
            ('u', nix::unistd::geteuid().to_string()),
            ('g', nix::unistd::getegid().to_string()),
            ('%', "%".to_owned()),
        ];
        for twin in ['o', 'p', 's', 'd', 'c', 'e', 'n'] {
            let value = vars
                .iter()
                .find(|(k, _)| *k == twin)
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            vars.push((twin.to_ascii_uppercase(), value));
        }
        // %0..%9: the directory's components.
        for (i, part) in dir.split('/').filter(|s| !s.is_empty()).take(10).enumerate() {
            vars.push((char::from(b'0' + i as u8), part.to_owned()));
        }
        Magic { vars }
    }

    fn get(&self, c: char) -> Option<&str> {
        self.vars.iter().find(|(k, _)| *k == c).map(|(_, v)| v.as_str())
    }
}

/// `%x` → its magic variable; `%(` is left for the placeholders and a `%` ending the value stays.
fn expand_magic(value: &str, magic: &Magic) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            None => out.push('%'),
            Some('(') => out.push_str("%("),
            Some(v) => match magic.get(v) {
                Some(text) => out.push_str(text),
                // %0..%9 beyond the directory's depth are empty in uWSGI too.
                None if v.is_ascii_digit() => {}
                None => {
                    return Err(format!(
                        "unknown magic variable %{v} (known: %d %p %s %n %e %c %o %v %h %t %T %k %u %g %0-%9, \
                         upper-case twins, %%)"
                    ));
                }
            },
        }
    }
    Ok(out)
}

/// `$(NAME)` → the environment variable; `$(NAME:-DEFAULT)` when it is unset or empty, `$(NAME-DEFAULT)`
/// when it is unset (uWSGI's ParsingOrder.rst). `@(FILE)` (a file's content) is refused.
fn expand_env(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if value.contains("@(") {
        return Err("@(FILE) is not supported: write the value here".to_owned());
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("$(") {
        let Some(len) = rest[start + 2..].find(')') else { break };
        out.push_str(&rest[..start]);
        let inner = &rest[start + 2..start + 2 + len];
        let found = if let Some((name, default)) = inner.split_once(":-") {
            Some(
                env(name)
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| default.to_owned()),
            )
        } else if let Some((name, default)) = inner.split_once('-') {
            Some(env(name).unwrap_or_else(|| default.to_owned()))
        } else {
            env(inner)
        };
        match found {
            Some(v) => out.push_str(&v),
            None => {
                return Err(format!(
                    "the environment variable {inner} is not set (a default: $({inner}:-DEFAULT))"
                ));
            }
        }
        rest = &rest[start + 3 + len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Every `(name, value)` a `%(name)` can refer to, in file order: each key with its value (uWSGI: any
/// option), and `set-placeholder = name=value` lines.
fn placeholder_definitions(entries: &[Entry], problems: &mut Vec<Problem>) -> Vec<(String, String)> {
    let mut definitions = Vec::new();
    for e in entries {
        if !PLACEHOLDER_KEYS.contains(&e.key.as_str()) {
            definitions.push((e.key.clone(), e.value.clone()));
            continue;
        }
        match e.value.split_once('=') {
            Some((name, value)) if !name.trim().is_empty() => {
                definitions.push((name.trim().to_owned(), value.trim().to_owned()));
            }
            _ => problems.push(Problem {
                line: e.line,
                key: e.key.clone(),
                value: e.value.clone(),
                message: "expected NAME=VALUE".to_owned(),
            }),
        }
    }
    definitions
}

/// The names that some `%(name)` in the section refers to: a key of that name is a placeholder, not a typo.
fn referenced_placeholders(entries: &[Entry]) -> Vec<String> {
    let mut names = Vec::new();
    for e in entries {
        let mut rest = e.value.as_str();
        while let Some(start) = rest.find("%(") {
            let Some(len) = rest[start + 2..].find(')') else { break };
            names.push(rest[start + 2..start + 2 + len].to_owned());
            rest = &rest[start + 3 + len..];
        }
    }
    names
}

/// Deeper than this, placeholders refer to each other in a cycle.
const PLACEHOLDER_DEPTH: usize = 16;

/// `%(name)` → the first value defined for `name` (uWSGI's `uwsgi_get_exported_opt`), itself expanded.
fn expand_placeholders(value: &str, definitions: &[(String, String)], depth: usize) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("%(") {
        let Some(len) = rest[start + 2..].find(')') else { break };
        out.push_str(&rest[..start]);
        let name = &rest[start + 2..start + 2 + len];
        if name.contains(' ') {
            return Err(format!("%({name}): placeholder arithmetic is not supported"));
        }
        let Some((_, found)) = definitions.iter().find(|(k, _)| k == name) else {
            return Err(format!(
                "unknown placeholder %({name}): define it with `{name} = ...` or `set-placeholder = {name}=...`"
            ));
        };
        if depth >= PLACEHOLDER_DEPTH {
            return Err(format!("%({name}): placeholders refer to each other in a cycle"));
        }
        out.push_str(&expand_placeholders(found, definitions, depth + 1)?);
        rest = &rest[start + 3 + len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// What a key of the section is.
enum Kind<'c> {
    /// `emperor`: the vassals.
    Source,
    /// One of the emperor's options: its long name and clap's definition of it.
    Option(&'c str, &'c clap::Arg),
    /// Changes nothing here: the reason, for the info line.
    Ignored(&'static str),
    /// Cannot be honoured: what to do instead.
    Refused(&'static str),
    /// `set-placeholder`, or a key some `%(key)` refers to.
    Placeholder,
    Unknown,
}

/// The emperor's long options that a file may set: all but the positional directory, `--ini` itself,
/// `--emperor` (the `emperor` key, read apart) and clap's own.
fn settable(cmd: &Command) -> impl Iterator<Item = &clap::Arg> {
    cmd.get_arguments()
        .filter(|a| !a.is_positional() && !["help", "version", "ini", "emperor"].contains(&a.get_id().as_str()))
}

fn kind<'c>(cmd: &'c Command, key: &str, referenced: &[String]) -> Kind<'c> {
    if key == "emperor" {
        return Kind::Source;
    }
    let wanted = UWSGI_SPELLINGS
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(key, |(_, long)| long);
    for arg in settable(cmd) {
        let mut names = arg
            .get_long()
            .into_iter()
            .chain(arg.get_all_aliases().unwrap_or_default());
        if let (Some(long), true) = (arg.get_long(), names.any(|n| n == wanted)) {
            return Kind::Option(long, arg);
        }
    }
    if let Some((why, _)) = IGNORED.iter().find(|(_, keys)| keys.contains(&key)) {
        return Kind::Ignored(why);
    }
    if let Some((_, why)) = REFUSED.iter().find(|(keys, _)| keys.contains(&key)) {
        return Kind::Refused(why);
    }
    if PLACEHOLDER_KEYS.contains(&key) || referenced.iter().any(|r| r == key) {
        return Kind::Placeholder;
    }
    Kind::Unknown
}

/// Every key this file may hold, for "did you mean".
fn known_keys(cmd: &Command) -> Vec<&str> {
    let mut known: Vec<&str> = vec!["emperor"];
    for arg in settable(cmd) {
        known.extend(arg.get_long());
        known.extend(arg.get_all_aliases().unwrap_or_default());
    }
    known.extend(UWSGI_SPELLINGS.iter().map(|(k, _)| *k));
    known.extend(IGNORED.iter().flat_map(|(_, keys)| keys.iter().copied()));
    known.extend(REFUSED.iter().flat_map(|(keys, _)| keys.iter().copied()));
    known.extend(PLACEHOLDER_KEYS);
    known
}

/// An option's value as the file sets it.
#[derive(Debug, Clone, PartialEq)]
enum Setting {
    Flag(bool),
    Value(String),
}

/// uWSGI's truth (`uwsgi_opt_true`): `false`, `off`, `no` (any case) and `0` are false; anything else,
/// an empty value included (`master` alone), is true.
fn truthy(value: &str) -> bool {
    !(["false", "off", "no"].iter().any(|f| value.eq_ignore_ascii_case(f)) || value == "0")
}

/// The setting of option `--long` for the file's `value`, checked by the option's own parser.
fn setting(long: &str, arg: &clap::Arg, value: &str) -> Result<Setting, String> {
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return Ok(Setting::Flag(truthy(value)));
    }
    // uWSGI: chmod-socket with no value (or 1) is 666.
    let value = if long == "chmod-socket" && (value.is_empty() || value == "1") {
        "666"
    } else {
        value
    };
    if value.is_empty() {
        return Err("needs a value".to_owned());
    }
    let given = format!("--{long}={value}");
    match crate::cli::Cli::command().try_get_matches_from(["emperor", "--ini", "-", given.as_str()]) {
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation | clap::error::ErrorKind::InvalidValue
            ) =>
        {
            let why = std::error::Error::source(&e).map_or_else(
                || {
                    e.to_string()
                        .lines()
                        .next()
                        .unwrap_or("")
                        .trim_start_matches("error: ")
                        .to_owned()
                },
                ToString::to_string,
            );
            let expected = arg
                .get_value_names()
                .and_then(|n| n.first())
                .map(|n| format!(" (<{n}>)"));
            Err(format!("invalid value{}: {why}", expected.unwrap_or_default()))
        }
        // Anything else is about other options (--nginx-reload without --nginx-map): clap checks those on
        // the whole command line.
        _ => Ok(Setting::Value(value.to_owned())),
    }
}

/// The `emperor` key → the vassals directory (or `pg://...`), uWSGI's monitors mapped onto ours: a path,
/// `dir://PATH`, a glob of one directory's `*.ini` files (`PATH/*.ini`, `glob://PATH/*.ini`: the same
/// files; `*` too, since only `*.ini` files are vassals here), and `pg://`.
fn vassal_source(value: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err("needs the vassals directory".to_owned());
    }
    if value.starts_with("pg://") {
        return Ok(PathBuf::from(value));
    }
    if let Some(dir) = value.strip_prefix("dir://") {
        return if dir.is_empty() {
            Err("dir:// needs a directory".to_owned())
        } else {
            Ok(normal(dir))
        };
    }
    if let Some(pattern) = value.strip_prefix("glob://") {
        return glob_dir(pattern);
    }
    if let Some((scheme, _)) = value.split_once("://")
        && !scheme.is_empty()
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(format!(
            "the {scheme}:// monitor is not supported (a directory, dir://, a glob of *.ini files, or pg://)"
        ));
    }
    if value.contains(['*', '?', '[']) {
        return glob_dir(value);
    }
    Ok(normal(value))
}

/// `DIR/*.ini` (or `DIR/*`) → DIR; any other glob is refused.
fn glob_dir(pattern: &str) -> Result<PathBuf, String> {
    let (dir, files) = pattern.rsplit_once('/').unwrap_or((".", pattern));
    let dir = if dir.is_empty() { "/" } else { dir };
    if dir.contains(['*', '?', '[']) || !matches!(files, "*.ini" | "*") {
        return Err(format!(
            "only a glob of one directory's *.ini files is supported (DIR/*.ini): this emperor runs the *.ini \
             files of one directory, not {pattern:?}"
        ));
    }
    Ok(normal(dir))
}

/// `p` with repeated and trailing slashes dropped (`dir:///%d/Emperor` is `dir:////srv/t//Emperor`).
fn normal(p: &str) -> PathBuf {
    let path: PathBuf = Path::new(p).components().collect();
    if path.as_os_str().is_empty() && Path::new(p).components().next() == Some(Component::CurDir) {
        return PathBuf::from(".");
    }
    path
}

/// The entries → what the file contributes (without the note), the ignored keys (why, key, line) and the
/// problems.
fn map(
    entries: &[Entry],
    referenced: &[String],
    problems: &mut Vec<Problem>,
) -> (FromFile, Vec<(&'static str, String, usize)>) {
    let cmd = crate::cli::Cli::command();
    let mut from_file = FromFile::default();
    let mut ignored = Vec::new();
    // Per option in the order first set: single-valued ones keep their last setting (uWSGI: the last line
    // wins), repeatable ones every value.
    let mut settings: Vec<(&str, Setting)> = Vec::new();
    for e in entries {
        let problem = |message: String| Problem {
            line: e.line,
            key: e.key.clone(),
            value: e.value.clone(),
            message,
        };
        match kind(&cmd, &e.key, referenced) {
            Kind::Source => match vassal_source(&e.value) {
                Ok(dir) => match &from_file.source {
                    Some(first) if *first != dir => problems.push(problem(format!(
                        "a second vassals directory (the first: {}): this emperor watches one",
                        first.display()
                    ))),
                    _ => from_file.source = Some(dir),
                },
                Err(m) => problems.push(problem(m)),
            },
            Kind::Option(long, arg) => match setting(long, arg, &e.value) {
                Ok(s) => match settings.iter_mut().find(|(l, _)| *l == long) {
                    Some(slot) if !matches!(arg.get_action(), ArgAction::Append) => slot.1 = s,
                    _ => settings.push((long, s)),
                },
                Err(m) => problems.push(problem(m)),
            },
            Kind::Ignored(why) => ignored.push((why, e.key.clone(), e.line)),
            Kind::Refused(why) => problems.push(problem(format!("not supported: {why}"))),
            Kind::Placeholder => {}
            Kind::Unknown => {
                let message = match crate::config::closest_key(&e.key, &known_keys(&cmd)) {
                    Some(near) => format!("unknown key; did you mean \"{near}\"?"),
                    None => "unknown key (README \"Running from a uWSGI emperor file\" lists the keys)".to_owned(),
                };
                problems.push(problem(message));
            }
        }
    }
    for (long, s) in settings {
        match s {
            Setting::Flag(true) => from_file.args.push(format!("--{long}").into()),
            Setting::Flag(false) => {}
            Setting::Value(v) => from_file.args.push(format!("--{long}={v}").into()),
        }
    }
    (from_file, ignored)
}

/// The one info line: `<file>: ignored: plugin (line 2), master (line 5): only uWSGI's master ...`.
fn note(name: &str, ignored: &[(&'static str, String, usize)], docker_plugin: bool) -> Option<String> {
    if ignored.is_empty() {
        return None;
    }
    let mut groups: Vec<String> = Vec::new();
    for (why, _) in IGNORED {
        let keys: Vec<String> = ignored
            .iter()
            .filter(|(w, _, _)| w == why)
            .map(|(_, k, line)| format!("{k} (line {line})"))
            .collect();
        if !keys.is_empty() {
            groups.push(format!("{}: {why}", keys.join(", ")));
        }
    }
    let docker = if docker_plugin {
        " (Docker support is built in)"
    } else {
        ""
    };
    Some(format!("{}: ignored {}{docker}", printable(name), groups.join("; ")))
}
