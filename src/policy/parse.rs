//! The policy file: `[policy]` lines → [`Policy`], every rule with the lines it came from.
//!
//! The grammar is the vassal file's, kept small: `[section]` headers, `;` and `#` comments, `rule = value`
//! lines with the value trimmed and taken literally (no quotes, no escapes). A policy file must be
//! unambiguous, so what a vassal file tolerates is refused here: any section other than `[policy]`, a
//! rule before the header, an unknown rule (with the closest known one suggested, as the vassal file's
//! keys are), a single-valued rule given twice, and values that would make a rule mean nothing (a
//! `mount-root` of `/` or under `/proc`, `/sys`, `/dev`; a default above its ceiling). Every problem is
//! collected, as for vassal files.
//!
//! A file starts from the built-in policy: each rule it gives replaces that rule as a whole (all the
//! lines of a repeatable rule together replace its built-in list), and every rule it does not give
//! keeps the built-in value, still cited as the built-in policy's.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use super::{Pattern, Policy, PortRange, Rule, Source};
use crate::config::{closest_key, parse_size, printable};

/// The built-in strict policy, written as a policy file (a test parses it like any other). Rules it
/// leaves out have their empty meaning: no `mount-root` (nothing may be mounted), no `build-root` (nothing
/// may be built: `docker-build` is refused), no `cap-add`, no
/// `uid-range` (any owner; tyrant mode refuses uid 0 and gid 0 on its own).
pub const BUILT_IN: &str = "\
[policy]
image = *
network = none
publish = false
socket-port = 1024-65535
memory-max = 1g
memory-default = 256m
swap-max = 0
pids-max = 1024
pids-default = 256
cpus-max = 1
no-new-privileges = true
program = *
";

/// Every rule a policy file may give.
pub const RULES: &[&str] = &[
    "image",
    "mount-root",
    "build-root",
    "network",
    "publish",
    "socket-port",
    "memory-max",
    "memory-default",
    "swap-max",
    "pids-max",
    "pids-default",
    "cpus-max",
    "cap-add",
    "no-new-privileges",
    "program",
    "uid-range",
];

/// Rules that may be given on several lines; each line adds one item.
const REPEATABLE: &[&str] = &[
    "image",
    "mount-root",
    "build-root",
    "network",
    "publish",
    "socket-port",
    "cap-add",
    "program",
    "uid-range",
];

/// The section a policy file is made of.
pub const SECTION: &str = "policy";

/// Docker's smallest memory limit (`linuxMinMemory`): a default below it would fail every create.
const DOCKER_MIN_MEMORY: u64 = 6 * 1024 * 1024;

/// Docker's default capability set (moby `oci/caps/defaults.go`): what a container has unless told
/// otherwise. The built-in policy drops `NET_RAW` from it; `cap-add` of one of these keeps it.
pub const DOCKER_DEFAULT_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Every Linux capability (`capability.h`, 6.x), without the `CAP_` prefix.
const ALL_CAPS: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

/// Host paths no `mount-root` may be or lie under: the kernel's and the devices' views of the host.
pub const NEVER_MOUNTED: &[&str] = &["/proc", "/sys", "/dev"];

/// Everything wrong with a policy file, collected in one pass.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyError {
    pub path: PathBuf,
    pub problems: Vec<PolicyProblem>,
}

/// One thing wrong with a policy file.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyProblem {
    pub line: Option<usize>,
    /// The rule and its value as written, when the problem is about one line.
    pub rule: Option<(String, String)>,
    /// Lowercase, no trailing period.
    pub message: String,
}

impl fmt::Display for PolicyError {
    /// One problem per line, as a vassal file's: `policy.ini:4: [policy] mount-rot = "/srv": unknown
    /// rule; did you mean "mount-root"?`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let mut line = self.path.display().to_string();
            if let Some(n) = p.line {
                line.push_str(&format!(":{n}"));
            }
            line.push_str(": ");
            if let Some((rule, value)) = &p.rule {
                line.push_str(&format!("[{SECTION}] {rule} = \"{value}\": "));
            }
            line.push_str(&p.message);
            f.write_str(&printable(&line))?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}

/// One `rule = value` line of `[policy]`.
#[derive(Debug, Clone)]
struct Entry {
    rule: String,
    value: String,
    line: usize,
}

impl Entry {
    fn problem(&self, message: impl Into<String>) -> PolicyProblem {
        PolicyProblem {
            line: Some(self.line),
            rule: Some((self.rule.clone(), self.value.clone())),
            message: message.into(),
        }
    }
}

/// Reads a policy file.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let fail = |message: String| PolicyError {
        path: path.to_path_buf(),
        problems: vec![PolicyProblem {
            line: None,
            rule: None,
            message,
        }],
    };
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|_| fail("not valid UTF-8; a policy file is text".into()))?;
    parse(path, &text)
}

/// Parses policy text; `path` is named in errors and in every refusal that cites one of its rules.
pub fn parse(path: &Path, text: &str) -> Result<Policy, PolicyError> {
    parse_over(Policy::built_in(), Source::File(path.to_path_buf()), text).map_err(|problems| PolicyError {
        path: path.to_path_buf(),
        problems,
    })
}

/// `text`'s rules laid over `base`: each rule `text` gives replaces `base`'s.
pub(super) fn parse_over(mut policy: Policy, source: Source, text: &str) -> Result<Policy, Vec<PolicyProblem>> {
    let (entries, mut problems) = lex(text);
    let mut seen: Vec<&str> = Vec::new();
    let mut valid: Vec<&Entry> = Vec::new();
    for entry in &entries {
        let rule = entry.rule.as_str();
        let Some(known) = RULES.iter().find(|r| **r == rule) else {
            problems.push(entry.problem(match closest_key(rule, RULES) {
                Some(near) => format!("unknown rule; did you mean \"{near}\"?"),
                None => format!("unknown rule (the rules: {})", RULES.join(", ")),
            }));
            continue;
        };
        if !REPEATABLE.contains(known) && seen.contains(known) {
            let first = entries.iter().find(|e| e.rule == rule).map_or(0, |e| e.line);
            problems.push(entry.problem(format!("given twice (first on line {first})")));
            continue;
        }
        seen.push(known);
        if entry.value.is_empty() {
            problems.push(entry.problem("empty value"));
            continue;
        }
        valid.push(entry);
    }

    for rule in RULES {
        let lines: Vec<&Entry> = valid.iter().copied().filter(|e| e.rule == *rule).collect();
        if lines.is_empty() {
            continue;
        }
        let before = problems.len();
        let cite: Vec<(Option<usize>, String)> = lines.iter().map(|e| (Some(e.line), e.value.clone())).collect();
        let src = source.clone();
        macro_rules! set {
            ($field:ident, $value:expr) => {
                if problems.len() == before {
                    policy.$field = Rule {
                        name: *rule,
                        source: src,
                        lines: cite,
                        value: $value,
                    };
                }
            };
        }
        match *rule {
            "image" => set!(image, list(&lines, &mut problems, true, parse_name_pattern)),
            "network" => set!(network, list(&lines, &mut problems, false, parse_name_pattern)),
            "mount-root" => set!(mount_root, list(&lines, &mut problems, true, parse_mount_root)),
            "build-root" => set!(build_root, list(&lines, &mut problems, true, parse_build_root)),
            "program" => set!(program, list(&lines, &mut problems, true, parse_program)),
            "publish" => set!(publish, publish(&lines, &mut problems)),
            "socket-port" => set!(socket_port, list(&lines, &mut problems, true, parse_port_range)),
            "cap-add" => set!(cap_add, list(&lines, &mut problems, true, parse_cap)),
            "uid-range" => set!(uid_range, list(&lines, &mut problems, false, parse_uid_range)),
            "memory-max" => set!(
                memory_max,
                one(lines[0], &mut problems, |v| parse_limit(v, DOCKER_MIN_MEMORY))
            ),
            "memory-default" => set!(
                memory_default,
                one(lines[0], &mut problems, |v| parse_limit(v, DOCKER_MIN_MEMORY))
            ),
            "swap-max" => set!(swap_max, one(lines[0], &mut problems, |v| parse_limit(v, 0))),
            "pids-max" => set!(pids_max, one(lines[0], &mut problems, parse_pids)),
            "pids-default" => set!(pids_default, one(lines[0], &mut problems, parse_pids)),
            "cpus-max" => set!(cpus_max, one(lines[0], &mut problems, parse_cpus)),
            "no-new-privileges" => set!(no_new_privileges, one(lines[0], &mut problems, parse_bool)),
            _ => problems.push(lines[0].problem("known rule without a parser (emperor bug)")),
        }
    }

    if problems.is_empty() {
        check_defaults(&policy, &mut problems);
    }
    if problems.is_empty() {
        Ok(policy)
    } else {
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Err(problems)
    }
}

/// A default must fit under its ceiling, whichever file (or the built-in policy) each came from.
fn check_defaults(p: &Policy, problems: &mut Vec<PolicyProblem>) {
    let pairs = [(&p.memory_default, &p.memory_max), (&p.pids_default, &p.pids_max)];
    for (default, max) in pairs {
        let above = match (default.value, max.value) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(d), Some(m)) => d > m,
        };
        if above {
            problems.push(PolicyProblem {
                line: default.lines.first().and_then(|(l, _)| *l),
                rule: Some((default.name.to_owned(), default.shown_value())),
                message: format!(
                    "above {} ({}); a default must fit under its ceiling",
                    max.name,
                    max.cited_value()
                ),
            });
        }
    }
}

/// The `[policy]` lines, and what is wrong with the file's shape.
fn lex(text: &str) -> (Vec<Entry>, Vec<PolicyProblem>) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    let at = |line: usize, message: String| PolicyProblem {
        line: Some(line),
        rule: None,
        message,
    };
    // Where the lines are: before any header, in [policy], or under another header (reported once).
    #[derive(PartialEq)]
    enum In {
        Nothing,
        Policy,
        Other,
    }
    let mut now = In::Nothing;
    let mut saw_policy = false;
    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        let trimmed = raw.strip_suffix('\r').unwrap_or(raw).trim();
        if trimmed.is_empty() || trimmed.starts_with(';') || trimmed.starts_with('#') {
            continue;
        }
        if let Some(inner) = trimmed.strip_prefix('[') {
            if inner.strip_suffix(']').map(str::trim) == Some(SECTION) {
                now = In::Policy;
                saw_policy = true;
            } else {
                now = In::Other;
                problems.push(at(
                    line,
                    format!("unknown section {trimmed}; a policy file has one [{SECTION}] section"),
                ));
            }
            continue;
        }
        let Some((rule, value)) = trimmed.split_once('=') else {
            problems.push(at(line, format!("expected \"rule = value\", found \"{trimmed}\"")));
            continue;
        };
        let entry = Entry {
            rule: rule.trim().to_owned(),
            value: value.trim().to_owned(),
            line,
        };
        match now {
            In::Policy => entries.push(entry),
            In::Nothing => problems.push(entry.problem(format!("outside a [{SECTION}] section"))),
            In::Other => {}
        }
    }
    if !saw_policy && problems.is_empty() {
        problems.push(PolicyProblem {
            line: None,
            rule: None,
            message: format!("no [{SECTION}] section"),
        });
    }
    (entries, problems)
}

/// A repeatable rule's items; `none` (alone, when `none_word`) means the empty list.
fn list<T>(
    lines: &[&Entry],
    problems: &mut Vec<PolicyProblem>,
    none_word: bool,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Vec<T> {
    if none_word && let Some(none) = lines.iter().find(|e| e.value == "none") {
        if lines.len() > 1 {
            problems.push(none.problem("\"none\" must be the rule's only line"));
        }
        return Vec::new();
    }
    let mut items = Vec::new();
    for entry in lines {
        match parse(&entry.value) {
            Ok(item) => items.push(item),
            Err(message) => problems.push(entry.problem(message)),
        }
    }
    items
}

fn one<T: Default>(entry: &Entry, problems: &mut Vec<PolicyProblem>, parse: impl Fn(&str) -> Result<T, String>) -> T {
    parse(&entry.value).unwrap_or_else(|message| {
        problems.push(entry.problem(message));
        T::default()
    })
}

/// `publish = false | true | <port> | <port>-<port>`: host ports `docker-port` may publish.
fn publish(lines: &[&Entry], problems: &mut Vec<PolicyProblem>) -> Vec<PortRange> {
    if let Some(word) = lines.iter().find(|e| matches!(e.value.as_str(), "false" | "true")) {
        if lines.len() > 1 {
            problems.push(word.problem(format!("\"{}\" must be the rule's only line", word.value)));
        }
        return if word.value == "true" {
            vec![PortRange(1, 65535)]
        } else {
            Vec::new()
        };
    }
    list(lines, problems, false, |v| {
        parse_port_range(v).map_err(|e| format!("{e}, or true, or false"))
    })
}

/// `%U` (the owner's name), `%u` (uid), `%g` (gid) and `%%`; anything else after `%` is refused now
/// rather than matching nothing later.
fn check_placeholders(value: &str) -> Result<(), String> {
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '%' && !matches!(chars.next(), Some('U' | 'u' | 'g' | '%')) {
            return Err("unknown placeholder: %U (owner name), %u (uid), %g (gid) and %% are known".to_owned());
        }
    }
    Ok(())
}

/// An image or network-mode glob (`*`, `?`).
fn parse_name_pattern(value: &str) -> Result<Pattern, String> {
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a pattern contains no whitespace".to_owned());
    }
    check_placeholders(value)?;
    Ok(Pattern(value.to_owned()))
}

/// An absolute directory, placeholders allowed, that is not `/` and not under what is never mounted.
fn parse_mount_root(value: &str) -> Result<Pattern, String> {
    parse_root(value, "mount-root", "mount", "mounted into a container")
}

/// The same for the directories `docker-build` contexts may lie under.
fn parse_build_root(value: &str) -> Result<Pattern, String> {
    parse_root(value, "build-root", "build from", "read as a build context")
}

fn parse_root(value: &str, rule: &str, verb: &str, never_what: &str) -> Result<Pattern, String> {
    check_placeholders(value)?;
    if value.contains(['*', '?']) {
        return Err(format!(
            "a {rule} is a directory, not a pattern; use %U or %u for per-owner roots"
        ));
    }
    let path = Path::new(value);
    if !path.is_absolute() {
        return Err("must be an absolute path".to_owned());
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err("must not contain . or .. components".to_owned());
    }
    if path.components().count() == 1 {
        return Err(format!(
            "/ would allow every path on the host; list the directories tenants may {verb}"
        ));
    }
    if let Some(never) = NEVER_MOUNTED.iter().find(|n| path.starts_with(n)) {
        return Err(format!("{never} is never {never_what}"));
    }
    Ok(Pattern(value.to_owned()))
}

/// `*`, or an absolute path glob.
fn parse_program(value: &str) -> Result<Pattern, String> {
    check_placeholders(value)?;
    if value != "*" && !value.starts_with('/') {
        return Err("must be an absolute path (globs allowed: /usr/bin/*), * or none".to_owned());
    }
    Ok(Pattern(value.to_owned()))
}

fn parse_port(value: &str) -> Result<u16, String> {
    match value.parse::<u32>() {
        Ok(n @ 1..=65535) if value.bytes().all(|b| b.is_ascii_digit()) => Ok(n as u16),
        _ => Err(format!("\"{value}\" is not a port from 1 to 65535")),
    }
}

/// `<port>` or `<low>-<high>`.
pub(super) fn parse_port_range(value: &str) -> Result<PortRange, String> {
    let (low, high) = value.split_once('-').unwrap_or((value, value));
    let (low, high) = (parse_port(low.trim())?, parse_port(high.trim())?);
    if low > high {
        return Err(format!("{low} is above {high}"));
    }
    Ok(PortRange(low, high))
}

fn parse_id(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if value.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(format!("\"{value}\" is not a uid")),
    }
}

/// `<uid>` or `<low>-<high>`.
fn parse_uid_range(value: &str) -> Result<(u32, u32), String> {
    let (low, high) = value.split_once('-').unwrap_or((value, value));
    let (low, high) = (parse_id(low.trim())?, parse_id(high.trim())?);
    if low > high {
        return Err(format!("{low} is above {high}"));
    }
    Ok((low, high))
}

/// A capability name, with or without `CAP_`, any case; kept as Docker writes it (`NET_RAW`).
fn parse_cap(value: &str) -> Result<String, String> {
    let upper = value.to_ascii_uppercase();
    let name = upper.strip_prefix("CAP_").unwrap_or(&upper);
    match ALL_CAPS.iter().find(|c| **c == name) {
        Some(cap) => Ok((*cap).to_owned()),
        None => Err(match closest_key(name, ALL_CAPS) {
            Some(near) => format!("not a capability; did you mean \"{near}\"?"),
            None => "not a capability (names as in capabilities(7), with or without CAP_)".to_owned(),
        }),
    }
}

/// Bytes (`k`/`m`/`g`, binary, as `docker-memory`) of at least `min`, or `unlimited`.
fn parse_limit(value: &str, min: u64) -> Result<Option<u64>, String> {
    if value == "unlimited" {
        return Ok(None);
    }
    let bytes = parse_size(value).map_err(|e| format!("{e}, or unlimited"))? as u64;
    if bytes < min {
        return Err(format!("{bytes} bytes is below Docker's minimum memory limit of 6m"));
    }
    Ok(Some(bytes))
}

/// A number of processes (at least 1), or `unlimited`.
fn parse_pids(value: &str) -> Result<Option<u64>, String> {
    if value == "unlimited" {
        return Ok(None);
    }
    match value.parse::<u64>() {
        Ok(n) if n >= 1 && n <= i64::MAX as u64 && value.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(n)),
        _ => Err("expected a number of processes (at least 1) or unlimited".to_owned()),
    }
}

/// CPUs as a decimal (`0.5`, `2`), kept in billionths (Docker's NanoCpus), or `unlimited`.
fn parse_cpus(value: &str) -> Result<Option<u64>, String> {
    const SYNTAX: &str = "expected a number of CPUs above 0 (decimals allowed: 0.5) or unlimited";
    if value == "unlimited" {
        return Ok(None);
    }
    let (whole, frac) = value.split_once('.').unwrap_or((value, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || frac.len() > 9 || whole.len() > 6 {
        return Err(SYNTAX.to_owned());
    }
    let whole: u64 = whole.parse().map_err(|_| SYNTAX.to_owned())?;
    let frac: u64 = format!("{frac:0<9}").parse().map_err(|_| SYNTAX.to_owned())?;
    match whole * 1_000_000_000 + frac {
        0 => Err(SYNTAX.to_owned()),
        nanos => Ok(Some(nanos)),
    }
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}
