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
    // A value that could not be expanded has had its say: no second problem about the same line.
    entries.retain(|e| !problems.iter().any(|p| p.line == e.line));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The magic variables of `/srv/emperor/uwsgi.ini` read from `/root` (no such file: nothing resolves).
    fn magic() -> Magic {
        Magic::of(Path::new("/srv/emperor/uwsgi.ini"), Path::new("/root"))
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "VASSALS" => Some("/srv/vassals".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn from(text: &str) -> Result<FromFile, String> {
        read("e.ini", text, "uwsgi", &magic(), &env)
    }

    fn args(text: &str) -> Vec<String> {
        from(text)
            .unwrap_or_else(|e| panic!("{text:?}: {e}"))
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn source(text: &str) -> Result<PathBuf, String> {
        from(text).map(|f| f.source.unwrap_or_else(|| panic!("no source in {text:?}")))
    }

    /// uwsgi-docker's README, "And now we can finally run the Emperor" (unbit/uwsgi-docker README.md).
    const README_EMPEROR: &str = "[uwsgi]\nplugin = path_to/docker_plugin.so\nemperor = dir:///etc/uwsgi\n; once the \
        plugin is loaded, docker support is optional\n; this option disallow running vassals without docker\n\
        emperor-docker-required = true\n; use /usr/bin/uwsgi as the container entry point (the path coudl be \
        different from the Emperor one, so we force it)\nemperor-wrapper = /usr/bin/uwsgi\n\n";

    #[test]
    fn uwsgi_docker_readme_emperor_file() {
        let f = from(README_EMPEROR).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.source, Some(PathBuf::from("/etc/uwsgi")));
        assert_eq!(
            f.args,
            ["--emperor-docker-required", "--emperor-wrapper=/usr/bin/uwsgi"]
        );
        assert_eq!(
            f.note.as_deref(),
            Some(
                "e.ini: ignored plugin (line 2): only uWSGI's master process or its plugins read them (Docker support \
                 is built in)"
            )
        );
    }

    #[test]
    fn uwsgi_docker_test_emperor_file_with_its_magic_variable() {
        // unbit/uwsgi-docker t/emperor.ini, as published.
        let text = "[uwsgi]\nplugin = ./docker_plugin.so\nemperor = dir:///%d/Emperor\n; Just loading the plugin does \
                    not force Docker support.\n; This option disallows running vassals without Docker.\n\
                    emperor-docker-required = true\n; Use /usr/bin/uwsgi as the container entry point (the path could \
                    be different from the Emperor one, so we force it)\nemperor-wrapper = /usr/bin/uwsgi\n";
        let magic = Magic::of(Path::new("t/emperor.ini"), Path::new("/src/uwsgi-docker"));
        let f = read("t/emperor.ini", text, "uwsgi", &magic, &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.source, Some(PathBuf::from("/src/uwsgi-docker/t/Emperor")));
        assert_eq!(
            f.args,
            ["--emperor-docker-required", "--emperor-wrapper=/usr/bin/uwsgi"]
        );
    }

    #[test]
    fn every_option_maps_to_the_emperors_flag() {
        let cases: &[(&str, &[&str])] = &[
            (
                "emperor-wrapper = /usr/bin/uwsgi",
                &["--emperor-wrapper=/usr/bin/uwsgi"],
            ),
            ("emperor-throttle = 500", &["--emperor-throttle=500"]),
            ("emperor-max-throttle = 60000", &["--emperor-max-throttle=60000"]),
            ("emperor-required-heartbeat = 40", &["--emperor-required-heartbeat=40"]),
            ("reload-mercy = 8", &["--reload-mercy=8"]),
            ("emperor-curse-tolerance = 9", &["--reload-mercy=9"]),
            ("emperor-freq = 3", &["--emperor-freq=3"]),
            ("emperor-loyalty-time = 20", &["--emperor-loyalty-time=20"]),
            ("chmod-socket = 660", &["--chmod-socket=660"]),
            ("chmod-socket", &["--chmod-socket=666"]),
            ("chmod-socket = 1", &["--chmod-socket=666"]),
            ("chmod = 640", &["--chmod-socket=640"]),
            (
                "chown-socket = www-data:www-data",
                &["--chown-socket=www-data:www-data"],
            ),
            ("emperor-docker = true", &["--emperor-docker"]),
            ("docker-emperor", &["--emperor-docker"]),
            ("emperor-docker-required = 1", &["--emperor-docker-required"]),
            ("docker-emperor-required = yes", &["--emperor-docker-required"]),
            (
                "docker-daemon-socket = /run/d.sock",
                &["--docker-daemon-socket=/run/d.sock"],
            ),
            ("docker-debug = on", &["--docker-debug"]),
            (
                "docker-label = team=web\ndocker-label = env=prod",
                &["--docker-label=team=web", "--docker-label=env=prod"],
            ),
            ("docker-connect-timeout = 5", &["--docker-connect-timeout=5"]),
            ("docker-name-prefix = t1-", &["--docker-name-prefix=t1-"]),
            ("emperor-run-dir = /run/e", &["--emperor-run-dir=/run/e"]),
            ("nginx-map = /etc/nginx/m.conf", &["--nginx-map=/etc/nginx/m.conf"]),
            ("nginx-reload = nginx -s reload", &["--nginx-reload=nginx -s reload"]),
            ("emperor-stats = 127.0.0.1:9191", &["--emperor-stats=127.0.0.1:9191"]),
            ("emperor-stats-server = /run/s.sock", &["--emperor-stats=/run/s.sock"]),
            (
                "emperor-metrics = 127.0.0.1:9100",
                &["--emperor-metrics=127.0.0.1:9100"],
            ),
            ("emperor-control = /run/c.sock", &["--emperor-control=/run/c.sock"]),
            ("mail-auth = 127.0.0.1:9000", &["--mail-auth=127.0.0.1:9000"]),
            (
                "emperor-policy = /etc/emperor/policy.ini",
                &["--emperor-policy=/etc/emperor/policy.ini"],
            ),
            ("emperor-tyrant = true", &["--emperor-tyrant"]),
            ("emperor-tyrant-nofollow", &["--emperor-tyrant-nofollow"]),
            (
                "routes-redis = redis://127.0.0.1/0",
                &["--routes-redis=redis://127.0.0.1/0"],
            ),
            ("routes-address = 127.0.0.1", &["--routes-address=127.0.0.1"]),
            ("routes-prefix = /r/", &["--routes-prefix=/r/"]),
            ("routes-ttl = 30", &["--routes-ttl=30"]),
            ("routes-drain = 2", &["--routes-drain=2"]),
            ("routes-handoff-timeout = 9", &["--routes-handoff-timeout=9"]),
        ];
        for (lines, want) in cases {
            assert_eq!(args(&format!("[uwsgi]\n{lines}\n")), *want, "{lines}");
        }
        // Every long option of the emperor is a key (uWSGI: every option is a config key), and the table
        // above covers them all.
        let cmd = crate::cli::Cli::command();
        for arg in settable(&cmd) {
            let long = arg
                .get_long()
                .unwrap_or_else(|| panic!("{:?} has no long name", arg.get_id()));
            assert!(
                matches!(kind(&cmd, long, &[]), Kind::Option(l, _) if l == long),
                "{long}"
            );
            assert!(
                cases
                    .iter()
                    .any(|(_, want)| want.iter().any(|w| w.starts_with(&format!("--{long}")))),
                "--{long} is not tested above"
            );
        }
    }

    #[test]
    fn booleans_and_repeated_keys_follow_uwsgi() {
        for off in ["false", "FALSE", "off", "No", "0"] {
            assert!(args(&format!("[uwsgi]\nemperor-tyrant = {off}\n")).is_empty(), "{off}");
        }
        for on in ["true", "1", "yes", "", "anything"] {
            assert_eq!(
                args(&format!("[uwsgi]\nemperor-tyrant = {on}\n")),
                ["--emperor-tyrant"],
                "{on}"
            );
        }
        // The last line wins for an option with one value; a repeatable one keeps every line.
        assert_eq!(
            args("[uwsgi]\nemperor-throttle = 1\nemperor-throttle = 2\n"),
            ["--emperor-throttle=2"]
        );
        assert!(args("[uwsgi]\nemperor-docker = true\nemperor-docker = false\n").is_empty());
        assert_eq!(
            args("[uwsgi]\nemperor-tyrant = 0\nemperor-throttle = 5\nemperor-tyrant = on\n"),
            ["--emperor-tyrant", "--emperor-throttle=5"]
        );
    }

    #[test]
    fn the_grammar_is_uwsgis() {
        let text = "\u{feff}; comment\n# comment\n[other]\nemperor-throttle = 1\n[uwsgi]\r\n  emperor-freq=4  \r\n\
                    \tmaster\n[other]\nemperor-throttle = 2\n[uwsgi]\nemperor-throttle = a=b\n";
        let entries = section_lines(text, "uwsgi").unwrap_or_else(|(l, m)| panic!("{l}: {m}"));
        let got: Vec<_> = entries
            .iter()
            .map(|e| (e.line, e.key.as_str(), e.value.as_str()))
            .collect();
        // Two [uwsgi] sections read as one; a key without `=` is a flag; the value runs to the end of the
        // line (only the first `=` splits); no inline comments, quotes or escapes.
        assert_eq!(
            got,
            [
                (6, "emperor-freq", "4"),
                (7, "master", ""),
                (11, "emperor-throttle", "a=b")
            ]
        );
        let got = section_lines("[uwsgi]\nx = \"a\" ; b \\\n", "uwsgi").unwrap_or_else(|(l, m)| panic!("{l}: {m}"));
        assert_eq!(got[0].value, "\"a\" ; b \\");
        // Another section with --ini FILE:SECTION.
        let got = section_lines(text, "other").unwrap_or_else(|(l, m)| panic!("{l}: {m}"));
        assert_eq!(got.len(), 2);
        assert_eq!(
            section_lines("[uwsgi] ; the emperor\nemperor = /v\n", "uwsgi").err(),
            Some((
                1,
                "[uwsgi] ; the emperor: a section header ends the line with ]".to_owned()
            ))
        );
        assert_eq!(
            from("[emperor]\nsocket = /x\n").err().as_deref(),
            Some(
                "e.ini: no [uwsgi] section with options (a uWSGI emperor file has `emperor = <dir>` under [uwsgi]; \
                 another section is read with --ini FILE:SECTION)"
            )
        );
    }

    #[test]
    fn the_emperor_key_takes_uwsgis_monitors() {
        let dir = |v: &str| source(&format!("[uwsgi]\nemperor = {v}\n"));
        for (value, want) in [
            ("/etc/uwsgi/vassals", "/etc/uwsgi/vassals"),
            ("/etc/uwsgi/vassals/", "/etc/uwsgi/vassals"),
            ("dir:///etc/uwsgi", "/etc/uwsgi"),
            ("dir:////srv//t//Emperor", "/srv/t/Emperor"),
            ("/etc/uwsgi/vassals/*.ini", "/etc/uwsgi/vassals"),
            ("glob:///etc/uwsgi/vassals/*.ini", "/etc/uwsgi/vassals"),
            ("/etc/uwsgi/vassals/*", "/etc/uwsgi/vassals"),
            ("vassals/*.ini", "vassals"),
            ("*.ini", "."),
            ("/*.ini", "/"),
            ("vassals", "vassals"),
            ("./vassals", "./vassals"),
            (
                "pg://dbname=e;SELECT name,config,ts FROM v",
                "pg://dbname=e;SELECT name,config,ts FROM v",
            ),
        ] {
            assert_eq!(dir(value), Ok(PathBuf::from(want)), "{value}");
        }
        assert_eq!(
            source("[uwsgi]\nemperor = $(VASSALS)\n"),
            Ok(PathBuf::from("/srv/vassals"))
        );
        for (value, why) in [
            ("/srv/*/vassals/*.ini", "only a glob of one directory's *.ini files"),
            ("/srv/vassals/app-*.ini", "only a glob of one directory's *.ini files"),
            ("/srv/vassals/*.xml", "only a glob of one directory's *.ini files"),
            ("zmq://tcp://127.0.0.1:5252", "the zmq:// monitor is not supported"),
            ("mongodb://127.0.0.1/e", "the mongodb:// monitor is not supported"),
            ("dir://", "dir:// needs a directory"),
            ("", "needs the vassals directory"),
        ] {
            let e = dir(value).unwrap_err();
            assert!(e.contains(why), "{value}: {e}");
        }
        // One source: uWSGI ran a monitor per line, this emperor watches one directory.
        let e = from("[uwsgi]\nemperor = /a\nemperor = /b\n").unwrap_err();
        assert_eq!(
            e,
            "e.ini:3: [uwsgi] emperor = \"/b\": a second vassals directory (the first: /a): this emperor watches one"
        );
        assert_eq!(
            source("[uwsgi]\nemperor = /a\nemperor = dir:///a/\n"),
            Ok(PathBuf::from("/a"))
        );
    }

    #[test]
    fn magic_variables() {
        let m = magic();
        let ex = |v: &str| expand_magic(v, &m);
        assert_eq!(ex("%d").as_deref(), Ok("/srv/emperor/"));
        assert_eq!(ex("%dvassals").as_deref(), Ok("/srv/emperor/vassals"));
        assert_eq!(
            ex("%p %s %n %e %c %o").as_deref(),
            Ok("/srv/emperor/uwsgi.ini uwsgi.ini uwsgi ini emperor /srv/emperor/uwsgi.ini")
        );
        assert_eq!(ex("%D%N %0/%1/%2.").as_deref(), Ok("/srv/emperor/uwsgi srv/emperor/."));
        assert_eq!(ex("%v").as_deref(), Ok("/root"));
        assert_eq!(ex("100%% %(x) 5%").as_deref(), Ok("100% %(x) 5%"));
        assert_eq!(
            ex("%u:%g").unwrap(),
            format!("{}:{}", nix::unistd::geteuid(), nix::unistd::getegid())
        );
        assert!(ex("%t").unwrap().parse::<u64>().is_ok_and(|t| t > 1_600_000_000));
        assert!(ex("%z").unwrap_err().starts_with("unknown magic variable %z"));
        // A relative path is taken from the working directory; a name without a dot has an empty %n (uWSGI).
        let m = Magic::of(Path::new("conf/emperor"), Path::new("/etc"));
        assert_eq!(
            expand_magic("%p|%d|%n|%e|%c", &m).as_deref(),
            Ok("/etc/conf/emperor|/etc/conf/|||conf")
        );
        // In a file: the error names the line and key.
        assert_eq!(
            from("[uwsgi]\nemperor = %dvassals\nemperor-stats = %q.sock\n").unwrap_err(),
            "e.ini:3: [uwsgi] emperor-stats = \"%q.sock\": unknown magic variable %q (known: %d %p %s %n %e %c %o \
             %v %h %t %T %k %u %g %0-%9, upper-case twins, %%)"
        );
        assert_eq!(
            source("[uwsgi]\nemperor = %dvassals\n"),
            Ok(PathBuf::from("/srv/emperor/vassals"))
        );
    }

    #[test]
    fn environment_variables() {
        let ex = |v: &str| expand_env(v, &env);
        assert_eq!(ex("$(VASSALS)/a").as_deref(), Ok("/srv/vassals/a"));
        assert_eq!(
            ex("$(UNSET:-/d) $(EMPTY:-e) $(EMPTY-f) $(UNSET-g)").as_deref(),
            Ok("/d e  g")
        );
        assert_eq!(ex("$ $( x").as_deref(), Ok("$ $( x"));
        assert_eq!(
            ex("$(UNSET)").unwrap_err(),
            "the environment variable UNSET is not set (a default: $(UNSET:-DEFAULT))"
        );
        assert!(ex("@(/etc/hostname)").unwrap_err().contains("@(FILE) is not supported"));
    }

    #[test]
    fn placeholders() {
        // A key used as %(key) is a placeholder, defined before or after its use; the first value counts.
        let text = "[uwsgi]\nemperor = %(base)/vassals\nbase = /srv/%(site)\nsite = one\nsite = two\n\
                    set-ph = stats=%(base)/stats.sock\nemperor-stats = %(stats)\nemperor-throttle = %(emperor-freq)0\n\
                    emperor-freq = 5\n";
        let f = from(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.source, Some(PathBuf::from("/srv/one/vassals")));
        assert_eq!(
            f.args,
            [
                "--emperor-stats=/srv/one/stats.sock",
                "--emperor-throttle=50",
                "--emperor-freq=5"
            ]
        );
        assert_eq!(
            args("[uwsgi]\nset-placeholder = d=/x\nemperor-run-dir = %(d)\n"),
            ["--emperor-run-dir=/x"]
        );
        for (text, why) in [
            ("[uwsgi]\nemperor = %(nope)\n", "unknown placeholder %(nope)"),
            (
                "[uwsgi]\na = %(b)\nb = %(a)\nemperor = %(a)\n",
                "placeholders refer to each other in a cycle",
            ),
            (
                "[uwsgi]\nn = 1\nemperor-freq = %(n + 1)\n",
                "placeholder arithmetic is not supported",
            ),
            ("[uwsgi]\nset-ph = nonsense\n", "expected NAME=VALUE"),
        ] {
            let e = from(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        // One problem per line: the option's own parser does not see the unexpanded value.
        assert_eq!(
            from("[uwsgi]\nemperor-freq = %(freq)\n").unwrap_err(),
            "e.ini:2: [uwsgi] emperor-freq = \"%(freq)\": unknown placeholder %(freq): define it with `freq = ...` or \
             `set-placeholder = freq=...`"
        );
    }

    #[test]
    fn errors_name_file_line_and_key_and_suggest() {
        let text = "[uwsgi]\nemperor = /v\nemperor-throtle = 500\nemperor-freq = soon\nuid = www-data\n\
                    logto = /var/log/e.log\nvassals-inherit = base.ini\nzzz = 1\nemperor-stats\n";
        assert_eq!(
            from(text).unwrap_err(),
            "e.ini:3: [uwsgi] emperor-throtle = \"500\": unknown key; did you mean \"emperor-throttle\"?\n\
             e.ini:4: [uwsgi] emperor-freq = \"soon\": invalid value (<S>): invalid digit found in string\n\
             e.ini:5: [uwsgi] uid = \"www-data\": not supported: the emperor does not change its user: run it as \
             that user (systemd's User=), or set emperor-tyrant to run each vassal as its file's owner\n\
             e.ini:6: [uwsgi] logto = \"/var/log/e.log\": not supported: the emperor logs to stderr and vassal output \
             to stdout: redirect them (systemd: StandardOutput=append:FILE)\n\
             e.ini:7: [uwsgi] vassals-inherit = \"base.ini\": not supported: options for every vassal are not \
             supported: put them in the vassal files\n\
             e.ini:8: [uwsgi] zzz = \"1\": unknown key (README \"Running from a uWSGI emperor file\" lists the keys)\n\
             e.ini:9: [uwsgi] emperor-stats = \"\": needs a value"
        );
        for (line, want) in [
            ("procesess = 4", "did you mean \"processes\"?"),
            (
                "emperor-docker-requried = true",
                "did you mean \"emperor-docker-required\"?",
            ),
            ("emperor_throttle = 5", "did you mean \"emperor-throttle\"?"),
            ("chmod-socket = 888", "\"888\" is not an octal file mode such as 660"),
            ("docker-name-prefix = -x", "cannot start a container name"),
            ("routes-address = localhost", "invalid value (<IP>)"),
            (
                "emperor-on-demand-directory = /run/od",
                "on-demand is set per vassal here",
            ),
        ] {
            let e = from(&format!("[uwsgi]\nemperor = /v\n{line}\n")).unwrap_err();
            assert!(e.starts_with("e.ini:3: [uwsgi] ") && e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn the_info_line_lists_what_changes_nothing() {
        let f =
            from("[uwsgi]\nemperor = /v\nmaster = true\nprocesses = 4\nemperor-graceful-shutdown\nplugins = python3\n")
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            f.note.as_deref(),
            Some(
                "e.ini: ignored master (line 3), processes (line 4), plugins (line 6): only uWSGI's master process or \
                 its plugins read them; emperor-graceful-shutdown (line 5): this emperor does that anyway"
            )
        );
        assert_eq!(from("[uwsgi]\nemperor = /v\n").map(|f| f.note), Ok(None));
    }

    #[test]
    fn file_and_section() {
        assert_eq!(split_spec("e.ini"), (PathBuf::from("e.ini"), "uwsgi".to_owned()));
        assert_eq!(split_spec("e.ini:prod"), (PathBuf::from("e.ini"), "prod".to_owned()));
        assert_eq!(split_spec("e.ini:"), (PathBuf::from("e.ini"), "uwsgi".to_owned()));
        assert_eq!(
            split_spec("/srv/a:b/e.ini"),
            (PathBuf::from("/srv/a:b/e.ini"), "uwsgi".to_owned())
        );
        assert_eq!(
            read(
                "e.ini",
                "[uwsgi]\nemperor = /a\n[prod]\nemperor = /b\n",
                "prod",
                &magic(),
                &env
            )
            .map(|f| f.source),
            Ok(Some(PathBuf::from("/b")))
        );
    }
}
