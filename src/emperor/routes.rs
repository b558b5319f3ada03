//! Host routing for nginx: the vassals' `domains`/`domain` lines → one nginx include file.
//!
//! With `--nginx-map <PATH>` the emperor keeps `<PATH>` equal to [`render`] of the routes of every
//! vassal's latest valid config: one `upstream` per (vassal, target socket) and one
//! `map $host $emperor_upstream` that nginx's `proxy_pass http://$emperor_upstream` uses. A host
//! no vassal claims maps to `""`, which the documented `server` block turns into a 404 (not a 502).
//!
//! # When the file is written
//!
//! [`NginxMap::sync`] runs after every scan of the vassals directory (inotify, the safety-net
//! rescan, SIGHUP) and once at start-up, so nginx's `include` never points at a missing file. It
//! renders the table and compares it with what is on disk; only a difference writes the file,
//! atomically (a dotfile in the same directory, then `rename`), and then runs `--nginx-reload`
//! (shlex-split, no shell, e.g. `nginx -s reload`). Comparing with the disk rather than with the
//! last write means a file deleted or edited by hand is restored at the next scan.
//!
//! The table is built from the main loop's *last good* config of each vassal: a vassal whose file
//! became invalid keeps its routes, as its running instance keeps its config; a deleted file's
//! routes go at once (nginx answers 404 while the vassal stops, instead of queueing requests on a
//! socket about to close).
//!
//! **Shutdown** writes the file with no routes (and reloads nginx) before the vassals stop, so a
//! stopped emperor leaves nginx answering 404 "no app for this host" instead of 502s on vanished
//! sockets. An emperor killed with SIGKILL cannot do this: the file keeps its routes, and nginx
//! answers 502 until the next emperor rewrites it.
//!
//! # Conflicts
//!
//! Each vassal's own hosts are checked in `config/routes.rs` (no two overlap). Across vassals, the
//! vassal first in name order keeps a contested name and the other loses just that name: in nginx
//! terms a host claims an exact name (`a.b`), the names below it (`*.a.b`), or both (`.a.b`), and
//! only the contested claim is dropped (`.a.b` against another vassal's `a.b` becomes `*.a.b`).
//! This keeps the map one that nginx accepts (it refuses a duplicate with "conflicting
//! parameter"). Each conflict is logged as an error naming both vassals and the host, once per
//! change, and noted as a comment in the file.
//!
//! # Shared with `emperor front`
//!
//! `fleet/front.rs` renders the same file from every host's routes in Redis, so that the same
//! documented `server` block works in front of a fleet: it uses the file's layout ([`Include`]),
//! its escaping and naming helpers, and [`IncludeFile`], which is this module's write-if-changed
//! and reload, with the emperor's conflict rules left here in [`NginxMap`].
//!
//! nginx cannot connect to abstract unix sockets (1.22 takes `unix:@name` for a file name), so
//! `config/routes.rs` refuses routes to them; should one get here anyway it is left out with a comment.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use log::{error, info, warn};
use tokio::sync::watch;

use crate::config::{Route, SocketAddrSpec, VassalConfig};

/// The routes of every vassal, by vassal name, each with the socket it resolves to.
pub type RouteTable = BTreeMap<String, Vec<(Route, SocketAddrSpec)>>;

/// nginx `map` parameters: a source value spelled like one is escaped with `\` in the map.
const MAP_KEYWORDS: &[&str] = &["default", "hostnames", "include", "volatile"];

/// The variable the map sets; part of the documented `server` block.
pub const VARIABLE: &str = "$emperor_upstream";

/// Idle keepalive connections each nginx worker keeps per upstream.
const KEEPALIVE: u32 = 16;

/// How long the reload command may run before it is killed.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of a failed reload command's stderr is logged.
const STDERR_LIMIT: u64 = 4096;

/// How long a stopping emperor waits for its last reload command.
const SHUTDOWN_RELOAD_WAIT: Duration = Duration::from_secs(5);

/// The routes of `configs`, each resolved to its socket (the named one, or the first).
pub fn table<'a>(configs: impl IntoIterator<Item = (&'a String, &'a Arc<VassalConfig>)>) -> RouteTable {
    let mut table = RouteTable::new();
    for (name, config) in configs {
        let routes: Vec<(Route, SocketAddrSpec)> = config
            .routes
            .iter()
            .filter_map(|route| {
                let target = match &route.socket {
                    None => config.sockets.first(),
                    Some(want) => config.sockets.iter().find(|s| s.name.as_ref() == Some(want)),
                }?;
                Some((route.clone(), target.addr.clone()))
            })
            .collect();
        if !routes.is_empty() {
            table.insert(name.clone(), routes);
        }
    }
    table
}

/// A name two vassals claim; the first in name order keeps it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    /// The contested name as nginx matches it: `a.b` (exact) or `*.a.b` (the names below).
    pub name: String,
    /// The vassal that keeps it, and its host line (`a.b`, `.a.b` or `*.a.b`).
    pub winner: String,
    pub winner_host: String,
    /// The vassal that loses it, and its host line.
    pub loser: String,
    pub loser_host: String,
}

/// One `upstream` block.
struct Upstream {
    name: String,
    vassal: String,
    target: SocketAddrSpec,
}

/// One line of the map.
struct Entry {
    vassal: String,
    /// As nginx reads it: `a.b`, `*.a.b` or `.a.b`.
    key: String,
    upstream: String,
}

/// What the file says, before formatting.
struct Plan {
    upstreams: Vec<Upstream>,
    entries: Vec<Entry>,
    conflicts: Vec<Conflict>,
    /// (vassal, host, why) of routes left out for another reason than a conflict.
    skipped: Vec<(String, String, String)>,
}

impl Plan {
    /// Vassals with at least one host in the map.
    fn vassal_count(&self) -> usize {
        self.entries.iter().map(|e| &e.vassal).collect::<BTreeSet<_>>().len()
    }
}

/// Resolves conflicts and names the upstreams. Vassals in name order, routes in file order.
fn plan(routes: &RouteTable) -> Plan {
    let mut plan = Plan {
        upstreams: Vec::new(),
        entries: Vec::new(),
        conflicts: Vec::new(),
        skipped: Vec::new(),
    };
    // Who holds each claim: base name → (vassal, host line).
    let mut exact: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    let mut wild: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    // Upstream names in use, lowercase: nginx compares upstream names without case.
    let mut used_names: HashSet<String> = HashSet::new();
    for (vassal, vassal_routes) in routes {
        // This vassal's upstreams, by target: the name of a named target socket comes from the
        // route that names it.
        let mut by_target: Vec<(&SocketAddrSpec, String)> = Vec::new();
        let mut labels: HashMap<&SocketAddrSpec, &str> = HashMap::new();
        for (route, target) in vassal_routes {
            if let Some(name) = &route.socket {
                labels.entry(target).or_insert(name);
            }
        }
        for (route, target) in vassal_routes {
            if let SocketAddrSpec::Abstract(_) = target {
                plan.skipped.push((
                    vassal.clone(),
                    route.host.clone(),
                    format!("nginx cannot connect to the abstract socket {target}"),
                ));
                continue;
            }
            let (want_exact, want_wild) = route.claims();
            let mut keep_exact = false;
            let mut keep_wild = false;
            for (want, held, keep, shown) in [
                (want_exact, &mut exact, &mut keep_exact, want_exact.map(str::to_owned)),
                (
                    want_wild,
                    &mut wild,
                    &mut keep_wild,
                    want_wild.map(|w| format!("*.{w}")),
                ),
            ] {
                let (Some(base), Some(shown)) = (want, shown) else {
                    continue;
                };
                match held.get(base) {
                    Some((winner, winner_host)) => plan.conflicts.push(Conflict {
                        name: shown,
                        winner: (*winner).to_owned(),
                        winner_host: (*winner_host).to_owned(),
                        loser: vassal.clone(),
                        loser_host: route.host.clone(),
                    }),
                    None => {
                        held.insert(base, (vassal, &route.host));
                        *keep = true;
                    }
                }
            }
            let base = want_exact.or(want_wild).unwrap_or_default();
            let key = match (keep_exact, keep_wild) {
                (true, true) => format!(".{base}"),
                (true, false) => base.to_owned(),
                (false, true) => format!("*.{base}"),
                (false, false) => continue,
            };
            let upstream = match by_target.iter().find(|(t, _)| *t == target) {
                Some((_, name)) => name.clone(),
                None => {
                    let label = labels.get(target).copied().unwrap_or("default");
                    let name = unique_name(&upstream_name(vassal, label), &mut used_names);
                    by_target.push((target, name.clone()));
                    plan.upstreams.push(Upstream {
                        name: name.clone(),
                        vassal: vassal.clone(),
                        target: target.clone(),
                    });
                    name
                }
            };
            plan.entries.push(Entry {
                vassal: vassal.clone(),
                key,
                upstream,
            });
        }
    }
    plan
}

/// `emperor_<vassal without .ini>_<label>`, lowercase, everything but `a-z 0-9 _` as `_`.
fn upstream_name(vassal: &str, label: &str) -> String {
    let stem = vassal.strip_suffix(".ini").unwrap_or(vassal);
    upstream_name_of(&[stem, label])
}

/// `emperor_<part>_<part>...`, each part lowercase with everything but `a-z 0-9 _` as `_`: a name
/// nginx takes for an upstream whatever the parts hold.
pub(crate) fn upstream_name_of(parts: &[&str]) -> String {
    let mut name = String::from("emperor");
    for part in parts {
        name.push('_');
        name.extend(part.chars().map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        }));
    }
    name
}

/// `name`, or `name_2`, `name_3`, ... if taken (`a-b.ini` and `a_b.ini` sanitize alike).
pub(crate) fn unique_name(name: &str, used: &mut HashSet<String>) -> String {
    let mut candidate = name.to_owned();
    let mut n = 2;
    while !used.insert(candidate.clone()) {
        candidate = format!("{name}_{n}");
        n += 1;
    }
    candidate
}

/// The `server` parameter nginx connects to for a target: a wildcard listen address is reached
/// on loopback.
fn server_address(target: &SocketAddrSpec) -> String {
    match target {
        SocketAddrSpec::Unix(path) => format!("unix:{}", path.display()),
        SocketAddrSpec::Abstract(name) => format!("unix:@{name}"),
        SocketAddrSpec::Tcp(addr) => reachable(*addr).to_string(),
    }
}

/// Where a local client reaches a TCP socket: one bound to every address (`:8000`, `[::]:8000`) on
/// loopback, any other at its own address.
pub(crate) fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// An nginx token: as is when it is plain, else double-quoted with `\` and `"` escaped.
fn token(s: &str) -> String {
    let plain = !s.is_empty()
        && !s.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, ';' | '{' | '}' | '"' | '\'' | '\\' | '#' | '$')
        });
    if plain {
        return s.to_owned();
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Text for a `#` comment: one line.
fn comment(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The include file for `routes`. Pure and deterministic: the same table gives the same bytes.
/// `vassals_dir` and `path` (where the file goes) appear in the header.
pub fn render(vassals_dir: &Path, path: &Path, routes: &RouteTable) -> String {
    render_plan(vassals_dir, path, &plan(routes))
}

fn render_plan(vassals_dir: &Path, path: &Path, plan: &Plan) -> String {
    let include = Include {
        about: vec![
            format!("Generated by emperor for the vassals in {}.", vassals_dir.display()),
            "Do not edit: it is rewritten (atomically) whenever a vassal's domains change, and emptied".into(),
            "when the emperor stops. Unknown hosts map to \"\".".into(),
        ],
        summary: format!("{} host(s) of {} vassal(s).", plan.entries.len(), plan.vassal_count()),
        upstreams: plan
            .upstreams
            .iter()
            .map(|u| UpstreamBlock {
                note: u.vassal.clone(),
                name: u.name.clone(),
                servers: vec![server_address(&u.target)],
            })
            .collect(),
        lines: plan
            .entries
            .iter()
            .map(|e| MapLine {
                group: e.vassal.clone(),
                key: e.key.clone(),
                upstream: e.upstream.clone(),
            })
            .collect(),
        notes: plan
            .conflicts
            .iter()
            .map(|c| {
                format!(
                    "conflict: {} of {} ({}) goes to {} ({}), first in name order",
                    c.name, c.loser, c.loser_host, c.winner, c.winner_host
                )
            })
            .chain(
                plan.skipped
                    .iter()
                    .map(|(vassal, host, why)| format!("skipped: {host} of {vassal}: {why}")),
            )
            .collect(),
    };
    include.render(path)
}

/// One `upstream` block of an include file.
pub(crate) struct UpstreamBlock {
    /// The comment above the block (what it is for).
    pub note: String,
    pub name: String,
    /// nginx `server` addresses (`unix:/path`, `ip:port`), one `server` line each; escaped when written.
    pub servers: Vec<String>,
}

/// One line of the map.
pub(crate) struct MapLine {
    /// A comment written above the line when it differs from the line before's.
    pub group: String,
    /// As nginx reads it: `a.b`, `*.a.b` or `.a.b`, a checked host name (see `config/routes.rs`).
    pub key: String,
    pub upstream: String,
}

/// What an include file says, in the layout that every writer of one shares (the emperor's
/// `--nginx-map` and `emperor front`), so that one documented `server` block serves both: a header
/// (the writer's own lines, that `server` block, a summary), the `upstream` blocks (each with
/// `keepalive`), then `map $host $emperor_upstream` with `hostnames`, a `""` default and notes at
/// its end.
pub(crate) struct Include {
    /// The header's first lines (without `# `).
    pub about: Vec<String>,
    /// The header's last line.
    pub summary: String,
    pub upstreams: Vec<UpstreamBlock>,
    pub lines: Vec<MapLine>,
    /// Comments at the end of the map (conflicts, what was left out).
    pub notes: Vec<String>,
}

impl Include {
    /// The file's text; `path` is where it goes (shown in the header's `include` line). Every value
    /// is escaped here: comments kept to one line, addresses quoted when nginx needs it.
    pub(crate) fn render(&self, path: &Path) -> String {
        let mut out = String::new();
        for line in &self.about {
            let _ = writeln!(out, "# {}", comment(line));
        }
        let _ = write!(
            out,
            "#\n\
             # Use it in nginx's http {{}} context:\n\
             #\n\
             #     include {path_shown};\n\
             #     server {{\n\
             #         listen 80 default_server;\n\
             #         location / {{\n\
             #             if ({VARIABLE} = \"\") {{ return 404 \"no app for this host\\n\"; }}\n\
             #             proxy_pass http://{VARIABLE};\n\
             #             proxy_http_version 1.1;\n\
             #             proxy_set_header Connection \"\";\n\
             #             proxy_set_header Host $host;\n\
             #         }}\n\
             #     }}\n\
             #\n\
             # {summary}\n",
            path_shown = comment(&path.display().to_string()),
            summary = comment(&self.summary),
        );
        for u in &self.upstreams {
            let _ = write!(out, "\n# {}\nupstream {} {{\n", comment(&u.note), u.name);
            for server in &u.servers {
                let _ = writeln!(out, "    server {};", token(server));
            }
            let _ = write!(out, "    keepalive {KEEPALIVE};\n}}\n");
        }
        let _ = write!(out, "\nmap $host {VARIABLE} {{\n    hostnames;\n    default \"\";\n");
        let mut current: Option<&str> = None;
        for line in &self.lines {
            if current != Some(line.group.as_str()) {
                let _ = writeln!(out, "    # {}", comment(&line.group));
                current = Some(&line.group);
            }
            // Hosts are checked DNS names, so only the keyword escape is ever needed.
            let escape = if MAP_KEYWORDS.contains(&line.key.as_str()) {
                "\\"
            } else {
                ""
            };
            let _ = writeln!(out, "    {escape}{} {};", token(&line.key), line.upstream);
        }
        for note in &self.notes {
            let _ = writeln!(out, "    # {}", comment(note));
        }
        out.push_str("}\n");
        out
    }
}

/// The names two vassals claim (the first in name order keeps each). The emperor logs them from
/// the same plan as it renders; this is the view for tests.
#[cfg(test)]
pub fn conflicts(routes: &RouteTable) -> Vec<Conflict> {
    plan(routes).conflicts
}

/// The part of an include file after its header; for the tests of every writer of one.
#[cfg(test)]
pub fn body(text: &str) -> String {
    text.lines()
        .skip_while(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// [`body`] of an include file with no routes.
#[cfg(test)]
pub const EMPTY_BODY: &str = "\nmap $host $emperor_upstream {\n    hostnames;\n    default \"\";\n}";

/// Keeps the include file and nginx in step with the vassals' routes; owned by the main loop.
pub struct NginxMap {
    file: IncludeFile,
    vassals_dir: PathBuf,
    /// Conflicts and routes left out: each is logged once, until it goes away.
    problems: ProblemLog,
}

impl NginxMap {
    /// Must be called inside the emperor's `LocalSet` when `reload` is given (starts the reloader).
    pub fn new(path: PathBuf, vassals_dir: PathBuf, reload: Option<Vec<String>>) -> NginxMap {
        NginxMap {
            file: IncludeFile::new(path, reload),
            vassals_dir,
            problems: ProblemLog::default(),
        }
    }

    /// Brings the file in line with `configs` (each vassal's latest valid config); see the module
    /// doc. Never fails: problems are logged.
    pub fn sync<'a>(&mut self, configs: impl IntoIterator<Item = (&'a String, &'a Arc<VassalConfig>)>) {
        let resolved = Resolved::of(configs);
        let plan = &resolved.0;
        let text = render_plan(&self.vassals_dir, self.file.path(), plan);
        let what = format!("{} host(s) of {} vassal(s)", plan.entries.len(), plan.vassal_count());
        self.problems.log(&resolved);
        self.file.write(text, &what);
    }

    /// Writes the file with no routes (the emperor is stopping) and reloads nginx.
    pub fn clear(&mut self) {
        let text = render(&self.vassals_dir, self.file.path(), &RouteTable::new());
        self.file.write(text, "no hosts: the emperor is stopping");
    }

    /// Waits (bounded) until the last requested reload has run; for a stopping emperor.
    pub async fn settle(&mut self) {
        self.file.settle().await;
    }
}

/// The vassals' routes once the names two vassals claim are settled (the first in name order keeps
/// each): what the nginx map holds, and what `--mail-auth` answers from (`mail_auth/tenants.rs`), so
/// that a login's domain goes to the vassal its Host goes to.
pub(crate) struct Resolved(Plan);

/// One name a vassal keeps, as nginx matches it (`a.b`, `*.a.b` or `.a.b`), and the socket its
/// route goes to.
pub(crate) struct Kept<'a> {
    pub vassal: &'a str,
    pub key: &'a str,
    pub target: &'a SocketAddrSpec,
}

impl Resolved {
    pub(crate) fn of<'a>(configs: impl IntoIterator<Item = (&'a String, &'a Arc<VassalConfig>)>) -> Resolved {
        Resolved(plan(&table(configs)))
    }

    /// Every name kept, vassals in name order and each one's routes in file order.
    pub(crate) fn kept(&self) -> impl Iterator<Item = Kept<'_>> {
        self.0.entries.iter().filter_map(|e| {
            let upstream = self.0.upstreams.iter().find(|u| u.name == e.upstream)?;
            Some(Kept {
                vassal: &e.vassal,
                key: &e.key,
                target: &upstream.target,
            })
        })
    }
}

/// Logs the names two vassals claim and the routes left out, each once, until it goes away (the
/// scan that finds nothing new says nothing).
#[derive(Default)]
pub(crate) struct ProblemLog {
    /// Conflicts already logged.
    logged: BTreeSet<Conflict>,
    /// Routes left out (abstract targets), already logged.
    logged_skipped: BTreeSet<(String, String, String)>,
}

impl ProblemLog {
    pub(crate) fn log(&mut self, resolved: &Resolved) {
        let plan = &resolved.0;
        let now: BTreeSet<Conflict> = plan.conflicts.iter().cloned().collect();
        for c in now.difference(&self.logged) {
            error!(
                "[{}] host {} ({}) is also claimed by {} ({}): {} keeps it (first in name order), {} gets no \
                 requests for it",
                c.loser, c.name, c.loser_host, c.winner, c.winner_host, c.winner, c.loser
            );
        }
        for c in self.logged.difference(&now) {
            info!("[{}] host {}: no longer contested with {}", c.loser, c.name, c.winner);
        }
        self.logged = now;
        let skipped: BTreeSet<_> = plan.skipped.iter().cloned().collect();
        for (vassal, host, why) in skipped.difference(&self.logged_skipped) {
            error!("[{vassal}] host {host} left out of the nginx map: {why}");
        }
        self.logged_skipped = skipped;
    }
}

/// An include file kept equal to the text it is given: written (atomically) only when that text
/// differs from what is on disk, and then `--nginx-reload` is run. Comparing with the disk rather
/// than with the last write restores a file deleted or edited by hand at the next write. Shared by
/// the emperor's [`NginxMap`] and `emperor front` (`fleet/front.rs`).
pub(crate) struct IncludeFile {
    path: PathBuf,
    /// The last failure to write (text, error), so a failing write is logged once per change.
    failed: Option<(String, String)>,
    /// Reload generations: requested here, done by the reloader task.
    reload_req: Option<watch::Sender<u64>>,
    reload_done: Option<watch::Receiver<u64>>,
}

impl IncludeFile {
    /// Must be called inside a `LocalSet` when `reload` is given (starts the reloader).
    pub(crate) fn new(path: PathBuf, reload: Option<Vec<String>>) -> IncludeFile {
        let (reload_req, reload_done) = match reload {
            Some(argv) => {
                let (req_tx, req_rx) = watch::channel(0u64);
                let (done_tx, done_rx) = watch::channel(0u64);
                tokio::task::spawn_local(reloader(argv, req_rx, done_tx));
                (Some(req_tx), Some(done_rx))
            }
            None => (None, None),
        };
        IncludeFile {
            path,
            failed: None,
            reload_req,
            reload_done,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Waits (bounded) until the last requested reload has run; for a stopping process.
    pub(crate) async fn settle(&mut self) {
        let (Some(req), Some(done)) = (&self.reload_req, &mut self.reload_done) else {
            return;
        };
        let target = *req.borrow();
        let wait = done.wait_for(|d| *d >= target);
        if tokio::time::timeout(SHUTDOWN_RELOAD_WAIT, wait).await.is_err() {
            // Killed when its task is dropped with the process's task set.
            warn!("nginx map: the reload command did not finish within {SHUTDOWN_RELOAD_WAIT:?}; killing it");
        }
    }

    /// Writes `text` if the file differs, then asks for a reload. `what` describes the content, for
    /// the log.
    pub(crate) fn write(&mut self, text: String, what: &str) {
        let mut current = String::new();
        let same = std::fs::File::open(&self.path)
            .and_then(|mut f| f.read_to_string(&mut current))
            .is_ok()
            && current == text;
        if same {
            if self.failed.take().is_some() {
                info!("nginx map: {} is up to date again", self.path.display());
            }
            return;
        }
        match write_atomic(&self.path, &text) {
            Ok(()) => {
                self.failed = None;
                info!("nginx map: wrote {} ({what})", self.path.display());
                if let Some(req) = &self.reload_req {
                    req.send_modify(|generation| *generation += 1);
                }
            }
            Err(e) => {
                let failure = (text, e);
                if self.failed.as_ref() != Some(&failure) {
                    error!(
                        "nginx map: cannot write {}: {}; nginx keeps the routes it has (retried at every scan)",
                        self.path.display(),
                        failure.1
                    );
                }
                self.failed = Some(failure);
            }
        }
    }
}

/// A dotfile next to `path`, written, synced and renamed over it: nginx never reads half a file.
fn write_atomic(path: &Path, text: &str) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| "the path has no file name".to_owned())?
        .to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.emperor-{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.to_string()
    })
}

/// Runs the reload command once per requested generation (several requests while it runs make
/// one more run). Its failure is logged with its stderr, never fatal.
async fn reloader(argv: Vec<String>, mut req: watch::Receiver<u64>, done: watch::Sender<u64>) {
    let shown = shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_else(|_| argv.join(" "));
    while req.changed().await.is_ok() {
        let generation = *req.borrow_and_update();
        run_reload(&argv, &shown).await;
        done.send_replace(generation);
    }
}

/// The running reload command; killed (and reaped) if dropped before it exited, which happens
/// when the emperor exits while it hangs.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Spawns the command on the emperor's thread (where every fork happens) and polls it there until
/// it exits: a reload takes milliseconds, and polling keeps the wait status on this thread, so a
/// kill can never hit a reused pid. Its stderr goes to an unnamed temporary file, which cannot
/// fill up like a pipe nor stay open in a process the command left behind.
async fn run_reload(argv: &[String], shown: &str) {
    let stderr_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(std::env::temp_dir())
        .ok();
    let stderr = match stderr_file.as_ref().map(std::fs::File::try_clone) {
        Some(Ok(f)) => Stdio::from(f),
        _ => Stdio::null(),
    };
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn();
    let mut running = match child {
        Ok(c) => Running(c),
        Err(e) => {
            error!("nginx map: cannot run the reload command `{shown}`: {e}");
            return;
        }
    };
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(2);
    let status = loop {
        match running.0.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= RELOAD_TIMEOUT => {
                error!("nginx map: the reload command `{shown}` ran for {RELOAD_TIMEOUT:?}; killing it");
                return; // `running` is dropped: killed and reaped.
            }
            Ok(None) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => {
                error!("nginx map: waiting for the reload command `{shown}`: {e}");
                return;
            }
        }
    };
    if status.success() {
        info!("nginx map: ran `{shown}`");
        return;
    }
    let mut stderr = String::new();
    if let Some(mut f) = stderr_file {
        let mut bytes = Vec::new();
        if f.seek(SeekFrom::Start(0)).is_ok() {
            let _ = (&mut f).take(STDERR_LIMIT).read_to_end(&mut bytes);
        }
        stderr = String::from_utf8_lossy(&bytes).trim().replace('\n', " | ");
    }
    error!(
        "nginx map: the reload command `{shown}` failed ({status}){}{stderr}",
        if stderr.is_empty() { "" } else { ": " },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: &str, socket: Option<&str>) -> Route {
        Route {
            host: host.into(),
            socket: socket.map(Into::into),
        }
    }

    fn unix(path: &str) -> SocketAddrSpec {
        SocketAddrSpec::Unix(path.into())
    }

    fn tcp(addr: &str) -> SocketAddrSpec {
        SocketAddrSpec::Tcp(addr.parse().expect("test address"))
    }

    /// (host, socket=, target) of one route.
    type R<'a> = (&'a str, Option<&'a str>, SocketAddrSpec);

    fn table_of(entries: &[(&str, &[R<'_>])]) -> RouteTable {
        entries
            .iter()
            .map(|(vassal, routes)| {
                (
                    (*vassal).to_owned(),
                    routes
                        .iter()
                        .map(|(host, socket, target)| (route(host, *socket), target.clone()))
                        .collect(),
                )
            })
            .collect()
    }

    fn render_t(t: &RouteTable) -> String {
        render(
            Path::new("/srv/vassals.d"),
            Path::new("/etc/nginx/emperor-routes.conf"),
            t,
        )
    }

    #[test]
    fn empty_table() {
        let text = render_t(&RouteTable::new());
        assert!(
            text.starts_with("# Generated by emperor for the vassals in /srv/vassals.d.\n"),
            "{text}"
        );
        assert!(
            text.contains("#     include /etc/nginx/emperor-routes.conf;\n"),
            "{text}"
        );
        assert!(text.contains("# 0 host(s) of 0 vassal(s).\n"), "{text}");
        assert_eq!(body(&text), EMPTY_BODY);
    }

    #[test]
    fn two_vassals() {
        let t = table_of(&[
            ("b.ini", &[("b.test", None, unix("/run/b.sock"))]),
            (
                "a.ini",
                &[
                    ("a.test", None, unix("/run/a.sock")),
                    ("www.a.test", None, unix("/run/a.sock")),
                ],
            ),
        ]);
        let text = render_t(&t);
        assert!(text.contains("# 3 host(s) of 2 vassal(s).\n"), "{text}");
        assert_eq!(
            body(&text),
            "
# a.ini
upstream emperor_a_default {
    server unix:/run/a.sock;
    keepalive 16;
}

# b.ini
upstream emperor_b_default {
    server unix:/run/b.sock;
    keepalive 16;
}

map $host $emperor_upstream {
    hostnames;
    default \"\";
    # a.ini
    a.test emperor_a_default;
    www.a.test emperor_a_default;
    # b.ini
    b.test emperor_b_default;
}"
        );
        // Deterministic: the same table, built in another order, gives the same bytes.
        let mut again = RouteTable::new();
        for (k, v) in t.iter().rev() {
            again.insert(k.clone(), v.clone());
        }
        assert_eq!(render_t(&again), text);
        assert!(conflicts(&t).is_empty());
    }

    #[test]
    fn named_sockets_tcp_targets_and_wildcards() {
        let t = table_of(&[(
            "shop.ini",
            &[
                ("shop.test", None, tcp("0.0.0.0:8001")),
                ("*.shop.test", None, tcp("0.0.0.0:8001")),
                ("admin.shop.test", Some("admin"), tcp("127.0.0.2:9001")),
                (".static.test", Some("static"), tcp("[::]:9002")),
                ("v6.test", Some("v6"), tcp("[::1]:9003")),
                ("spaced.test", Some("sp"), unix("/run/my app;x.sock")),
            ],
        )]);
        assert_eq!(
            body(&render_t(&t)),
            "
# shop.ini
upstream emperor_shop_default {
    server 127.0.0.1:8001;
    keepalive 16;
}

# shop.ini
upstream emperor_shop_admin {
    server 127.0.0.2:9001;
    keepalive 16;
}

# shop.ini
upstream emperor_shop_static {
    server [::1]:9002;
    keepalive 16;
}

# shop.ini
upstream emperor_shop_v6 {
    server [::1]:9003;
    keepalive 16;
}

# shop.ini
upstream emperor_shop_sp {
    server \"unix:/run/my app;x.sock\";
    keepalive 16;
}

map $host $emperor_upstream {
    hostnames;
    default \"\";
    # shop.ini
    shop.test emperor_shop_default;
    *.shop.test emperor_shop_default;
    admin.shop.test emperor_shop_admin;
    .static.test emperor_shop_static;
    v6.test emperor_shop_v6;
    spaced.test emperor_shop_sp;
}"
        );
    }

    #[test]
    fn a_named_first_socket_is_one_upstream() {
        // `domain = a.test` (first socket) and `domain = b.test socket=web` where web is the first.
        let t = table_of(&[(
            "x.ini",
            &[
                ("a.test", None, unix("/run/w.sock")),
                ("b.test", Some("web"), unix("/run/w.sock")),
            ],
        )]);
        let text = render_t(&t);
        assert_eq!(text.matches("\nupstream ").count(), 1, "{text}");
        assert!(
            text.contains("    a.test emperor_x_web;\n    b.test emperor_x_web;\n"),
            "{text}"
        );
    }

    #[test]
    fn upstream_names_are_sanitized_and_unique() {
        let t = table_of(&[
            ("A-b.ini", &[("1.test", None, unix("/run/1.sock"))]),
            ("a_b.ini", &[("2.test", None, unix("/run/2.sock"))]),
            ("a.b.ini", &[("3.test", Some("x.y"), unix("/run/3.sock"))]),
        ]);
        let text = render_t(&t);
        for line in [
            "upstream emperor_a_b_default {",
            "upstream emperor_a_b_default_2 {",
            "upstream emperor_a_b_x_y {",
            "    1.test emperor_a_b_default;",
            "    2.test emperor_a_b_default_2;",
            "    3.test emperor_a_b_x_y;",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        // Vassals in byte order: "A-b.ini" < "a.b.ini" < "a_b.ini".
        assert!(text.find("1.test").unwrap_or(0) < text.find("3.test").unwrap_or(0));
    }

    #[test]
    fn conflicts_go_to_the_first_vassal_in_name_order() {
        let t = table_of(&[
            (
                "b.ini",
                &[
                    ("shared.test", None, unix("/run/b.sock")),
                    ("b.test", None, unix("/run/b.sock")),
                ],
            ),
            ("a.ini", &[("shared.test", None, unix("/run/a.sock"))]),
        ]);
        let text = render_t(&t);
        assert!(
            text.contains("    # a.ini\n    shared.test emperor_a_default;\n"),
            "{text}"
        );
        assert!(text.contains("    # b.ini\n    b.test emperor_b_default;\n"), "{text}");
        assert_eq!(text.matches("shared.test emperor").count(), 1, "{text}");
        assert!(
            text.contains(
                "    # conflict: shared.test of b.ini (shared.test) goes to a.ini (shared.test), first in name order\n"
            ),
            "{text}"
        );
        assert_eq!(
            conflicts(&t),
            vec![Conflict {
                name: "shared.test".into(),
                winner: "a.ini".into(),
                winner_host: "shared.test".into(),
                loser: "b.ini".into(),
                loser_host: "shared.test".into(),
            }]
        );
        // A vassal that loses every host still gets no upstream.
        let t = table_of(&[
            ("a.ini", &[("x.test", None, unix("/run/a.sock"))]),
            ("b.ini", &[("x.test", None, unix("/run/b.sock"))]),
        ]);
        let text = render_t(&t);
        assert!(!text.contains("emperor_b_default"), "{text}");
        assert!(text.contains("# 1 host(s) of 1 vassal(s)."), "{text}");
    }

    #[test]
    fn partial_conflicts_keep_what_is_free() {
        // a.ini has the exact name, b.ini the suffix form: b keeps the names below it.
        let t = table_of(&[
            (
                "a.ini",
                &[
                    ("x.test", None, unix("/run/a.sock")),
                    ("*.y.test", None, unix("/run/a.sock")),
                ],
            ),
            (
                "b.ini",
                &[
                    (".x.test", None, unix("/run/b.sock")),
                    (".y.test", None, unix("/run/b.sock")),
                ],
            ),
        ]);
        let text = render_t(&t);
        for line in [
            "    x.test emperor_a_default;",
            "    *.y.test emperor_a_default;",
            "    *.x.test emperor_b_default;",
            "    y.test emperor_b_default;",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        let got: Vec<(String, String)> = conflicts(&t).into_iter().map(|c| (c.name, c.loser_host)).collect();
        assert_eq!(
            got,
            vec![
                ("x.test".into(), ".x.test".into()),
                ("*.y.test".into(), ".y.test".into())
            ]
        );
    }

    #[test]
    fn map_keywords_are_escaped() {
        let t = table_of(&[(
            "k.ini",
            &[
                ("default", None, unix("/run/k.sock")),
                ("hostnames", None, unix("/run/k.sock")),
                ("include", None, unix("/run/k.sock")),
                ("volatile", None, unix("/run/k.sock")),
                ("default.test", None, unix("/run/k.sock")),
            ],
        )]);
        let text = render_t(&t);
        for line in [
            "    \\default emperor_k_default;",
            "    \\hostnames emperor_k_default;",
            "    \\include emperor_k_default;",
            "    \\volatile emperor_k_default;",
            "    default.test emperor_k_default;",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }

    #[test]
    fn abstract_targets_are_left_out() {
        let t = table_of(&[(
            "a.ini",
            &[
                ("a.test", None, SocketAddrSpec::Abstract("a".into())),
                ("b.test", None, unix("/run/a.sock")),
            ],
        )]);
        let text = render_t(&t);
        assert!(!text.contains("unix:@a"), "{text}");
        assert!(
            text.contains("    # skipped: a.test of a.ini: nginx cannot connect to the abstract socket @a\n"),
            "{text}"
        );
        assert!(text.contains("    b.test emperor_a_default;\n"), "{text}");
    }

    #[test]
    fn table_resolves_targets() {
        let dir = Path::new("/srv/vassals.d");
        let text = "[emperor]\nsocket = /run/a.sock\nsocket = name=adm,127.0.0.1:9001\n\
                    domains = a.test\ndomain = adm.test socket=adm\n";
        let a = crate::config::parse("a.ini", &dir.join("a.ini"), text, dir).unwrap_or_else(|e| panic!("{e}"));
        let none = crate::config::parse("n.ini", &dir.join("n.ini"), "[emperor]\nsocket = /run/n.sock\n", dir)
            .unwrap_or_else(|e| panic!("{e}"));
        let configs: BTreeMap<String, Arc<VassalConfig>> =
            [("a.ini".to_owned(), Arc::new(a)), ("n.ini".to_owned(), Arc::new(none))].into();
        let t = table(&configs);
        assert_eq!(
            t,
            table_of(&[(
                "a.ini",
                &[
                    ("a.test", None, unix("/run/a.sock")),
                    ("adm.test", Some("adm"), tcp("127.0.0.1:9001"))
                ]
            )])
        );
    }

    #[test]
    fn tokens() {
        assert_eq!(token("unix:/run/a.sock"), "unix:/run/a.sock");
        assert_eq!(token("unix:/run/a b"), "\"unix:/run/a b\"");
        assert_eq!(token("unix:/run/a\"b\\c"), "\"unix:/run/a\\\"b\\\\c\"");
        assert_eq!(token("unix:/run/$x"), "\"unix:/run/$x\"");
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let dir = std::env::temp_dir().join(format!("emperor-routes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("routes.conf");
        write_atomic(&path, "one\n").unwrap_or_else(|e| panic!("{e}"));
        write_atomic(&path, "two\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read_to_string(&path).ok().as_deref(), Some("two\n"));
        let names: Vec<_> = std::fs::read_dir(&dir)
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert_eq!(names, vec![std::ffi::OsString::from("routes.conf")]);
        assert!(write_atomic(&dir.join("missing/routes.conf"), "x").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
