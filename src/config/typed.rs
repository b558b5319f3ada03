//! The typed layer: every raw `[emperor]` entry checked and converted into a [`VassalConfig`].
//!
//! Problems are collected, never returned early: a broken file gets one message listing everything
//! wrong with it, so fixing it takes one round. Checks that relate two keys (`idle-action` needs
//! `idle`, `prewarm` needs `on-demand` and `idle-action = pause`, a route needs a socket, `docker-swap`
//! against `docker-memory`) run once every line is read, so the order of lines in the file is free.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::accept::AcceptKeys;
use super::docker::DockerKeys;
use super::keys::{
    parse_backlog, parse_bool, parse_chdir, parse_env, parse_exec, parse_host_path, parse_idle_action,
    parse_log_maxsize, parse_mode, parse_owner, parse_seconds, parse_signal, parse_timeout,
};
use super::raw::{RawEntry, RawVassal};
use super::replicas::ReplicaKeys;
use super::routes::RouteKeys;
use super::socket::{SocketSpec, parse_socket};
use super::{IdleAction, KeyLine, Problem, Replicas, SocketAddrSpec, VassalConfig};

/// The `[emperor]` keys accepted today. Adding one means: add it here, parse it in
/// `Builder::apply` (or `DockerKeys::add`), add a field to [`VassalConfig`], and test it.
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
    "socket-nonblocking",
    // A program per connection (config/accept.rs).
    "accept",
    "max-connections",
    "docker-image",
    "docker-build",
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
    "prewarm",
    "replicas",
    "replicas-up",
    "replicas-down",
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

/// Keys that change only what the emperor does around the vassal (when to start it, when it is idle,
/// which hosts route to it, where its output goes), not the process or container itself: changing
/// them must not restart it, so they are left out of [`VassalConfig::emperor_hash`]. Their new
/// values apply at once.
const EMPEROR_ONLY_KEYS: &[&str] = &[
    "on-demand",
    "docker-precreate",
    "idle",
    "idle-action",
    "prewarm",
    "replicas",
    "replicas-up",
    "replicas-down",
    "domains",
    "domain",
    "reload-overlap",
    "ready-delay",
    "logto",
    "log-maxsize",
];

/// Below this Jaro-Winkler similarity an unknown key gets no "did you mean".
const SUGGESTION_THRESHOLD: f64 = 0.8;

/// Checks and converts every entry of `raw`, appending to `problems`. The returned config is
/// meaningful only if no problem was added.
pub(super) fn build(
    name: &str,
    path: &Path,
    text: &str,
    vassals_dir: &Path,
    raw: &RawVassal,
    problems: &mut Vec<Problem>,
) -> VassalConfig {
    let mut builder = Builder::new(name, path, text, vassals_dir, raw);
    for entry in &raw.entries {
        builder.add(entry);
    }
    let (config, found) = builder.finish();
    problems.extend(found);
    config
}

/// What has been read so far, with what the checks across lines need to remember.
struct Builder<'a> {
    name: &'a str,
    vassals_dir: &'a Path,
    config: VassalConfig,
    /// The first `docker-image` (or `docker-build`) line makes this a Docker vassal, even if its value is invalid: the
    /// other keys are then checked as Docker keys, which gives the most useful messages.
    image_entry: Option<&'a RawEntry>,
    docker: DockerKeys<'a>,
    routes: RouteKeys<'a>,
    accept: AcceptKeys<'a>,
    replicas: ReplicaKeys<'a>,
    /// The line of each key that may be given once, for "given twice (first on line N)".
    first_seen: HashMap<&'a str, Option<usize>>,
    socket_lines: HashMap<SocketAddrSpec, Option<usize>>,
    /// Keys with a line whose value was refused: a check across keys says nothing more about them (an
    /// invalid socket line may be the one a route names; an invalid `on-demand` line is not "missing").
    failed: HashSet<&'a str>,
    idle_action_entry: Option<&'a RawEntry>,
    prewarm_entry: Option<&'a RawEntry>,
    log_maxsize_entry: Option<&'a RawEntry>,
    problems: Vec<Problem>,
}

impl<'a> Builder<'a> {
    fn new(name: &'a str, path: &Path, text: &str, vassals_dir: &'a Path, raw: &'a RawVassal) -> Builder<'a> {
        let image_entry = raw
            .entries
            .iter()
            .find(|e| e.key == "docker-image" || e.key == "docker-build");
        let mut config = empty_config(name, path, text);
        config.uwsgi_section = raw.uwsgi_section;
        config.lines = raw
            .entries
            .iter()
            .map(|e| KeyLine {
                key: e.key.clone(),
                value: e.value.clone(),
                line: e.line,
            })
            .collect();
        config.emperor_hash = emperor_hash(&raw.entries, image_entry.is_some() && raw.uwsgi_section);
        Builder {
            name,
            vassals_dir,
            config,
            image_entry,
            docker: DockerKeys::new(name),
            routes: RouteKeys::default(),
            accept: AcceptKeys::default(),
            replicas: ReplicaKeys::default(),
            first_seen: HashMap::new(),
            socket_lines: HashMap::new(),
            failed: HashSet::new(),
            idle_action_entry: None,
            prewarm_entry: None,
            log_maxsize_entry: None,
            problems: Vec::new(),
        }
    }

    fn add(&mut self, entry: &'a RawEntry) {
        if let Some(message) = self.refuse(entry) {
            self.problems.push(Problem::for_entry(entry, message));
            return;
        }
        if let Err(message) = self.apply(entry) {
            self.failed.insert(entry.key.as_str());
            self.problems.push(Problem::for_entry(entry, message));
        }
    }

    /// Why the entry's value is not even looked at: an unknown key, a key given twice, a Docker key in
    /// a file without `docker-image`, an empty value.
    fn refuse(&mut self, entry: &'a RawEntry) -> Option<String> {
        let key = entry.key.as_str();
        if !KNOWN_KEYS.contains(&key) {
            return Some(match (RETIRED_KEYS.iter().find(|(k, _)| *k == key), suggest(key)) {
                (Some((_, hint)), _) => (*hint).to_owned(),
                (None, Some(known)) => format!("unknown key; did you mean \"{known}\"?"),
                (None, None) => "unknown key".to_owned(),
            });
        }
        if !REPEATABLE_KEYS.contains(&key) {
            if let Some(first) = self.first_seen.get(key) {
                return Some(match first {
                    Some(line) => format!("given twice (first on line {line})"),
                    None => "given twice".to_owned(),
                });
            }
            self.first_seen.insert(key, entry.line);
        }
        if self.image_entry.is_none() && key.starts_with("docker-") {
            return Some("needs docker-image or docker-build".to_owned());
        }
        if entry.value.is_empty() {
            return Some("empty value".to_owned());
        }
        None
    }

    /// Parses one known key's value into the config.
    fn apply(&mut self, entry: &'a RawEntry) -> Result<(), String> {
        let (value, dir) = (entry.value.as_str(), self.vassals_dir);
        let c = &mut self.config;
        match entry.key.as_str() {
            "socket" | "docker-socket" => parse_socket(value, Some(dir)).and_then(|spec| self.add_socket(spec, entry)),
            "exec" => parse_exec(value).map(|argv| c.exec = Some(argv)),
            "env" => parse_env(value).map(|kv| c.env.push(kv)),
            "chdir" if self.image_entry.is_some() => {
                Err("use docker-workdir for a container's working directory".to_owned())
            }
            "chdir" => parse_chdir(value, dir).map(|d| c.chdir = Some(d)),
            "stop-signal" => parse_signal(value).map(|sig| c.stop_signal = Some(sig)),
            "stop-timeout" => parse_timeout(value).map(|t| c.stop_timeout = Some(t)),
            "chmod-socket" => parse_mode(value).map(|m| c.chmod_socket = Some(m)),
            "chown-socket" => parse_owner(value).map(|o| c.chown_socket = Some(o)),
            "listen" => parse_backlog(value).map(|n| c.listen = Some(n)),
            "socket-nonblocking" => parse_bool(value).map(|b| c.socket_nonblocking = b),
            "accept" | "max-connections" => self.accept.add(entry),
            "replicas" | "replicas-up" | "replicas-down" => self.replicas.add(entry),
            "on-demand" => parse_bool(value).map(|b| c.on_demand = b),
            "docker-precreate" => parse_bool(value).map(|b| c.precreate = b),
            "reload-overlap" => parse_bool(value).map(|b| c.reload_overlap = b),
            "ready-delay" => parse_seconds(value, "ready-delay").map(|t| c.ready_delay = Some(t)),
            "idle" => parse_seconds(value, "idle").map(|t| c.idle = Some(t)),
            "logto" => parse_host_path(value, dir).map(|p| c.logto = Some(p)),
            "log-maxsize" => parse_log_maxsize(value).map(|n| {
                c.log_maxsize = Some(n);
                self.log_maxsize_entry = Some(entry);
            }),
            "idle-action" => parse_idle_action(value).map(|a| {
                c.idle_action = a;
                self.idle_action_entry = Some(entry);
            }),
            "prewarm" => parse_bool(value).map(|b| {
                c.prewarm = b;
                self.prewarm_entry = Some(entry);
            }),
            "domains" => {
                // Its problems (one per bad host) are pushed as they are found.
                self.routes.add_hosts(entry, &mut self.problems);
                Ok(())
            }
            "domain" => self.routes.add_domain(entry),
            key if key.starts_with("docker-") => self.docker.add(entry, dir),
            // KNOWN_KEYS lists a key that has no parser: a bug here, reported rather than ignored.
            _ => Err("known key without a parser (emperor bug)".to_owned()),
        }
    }

    /// `socket` and `docker-socket` share one list, in file order, and one address may be bound once.
    fn add_socket(&mut self, spec: SocketSpec, entry: &RawEntry) -> Result<(), String> {
        if let Some(first) = self.socket_lines.get(&spec.addr) {
            return Err(match first {
                Some(line) => format!("address {} already used by the socket on line {line}", spec.addr),
                None => format!("address {} already used by another socket", spec.addr),
            });
        }
        self.socket_lines.insert(spec.addr.clone(), entry.line);
        self.config.sockets.push(spec);
        Ok(())
    }

    /// `prewarm = true` starts an on-demand vassal early and pauses it until its first connection: without
    /// `on-demand` it would start anyway, and without `idle-action = pause` it could not wait paused.
    fn check_prewarm(&mut self, entry: &RawEntry) {
        let missing: Vec<&str> = [
            (!self.config.on_demand && !self.failed.contains("on-demand")).then_some("on-demand = true"),
            (self.config.idle_action != IdleAction::Pause && !self.failed.contains("idle-action"))
                .then_some("idle-action = pause"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !missing.is_empty() {
            self.problems.push(Problem::for_entry(
                entry,
                format!(
                    "needs {}: a prewarmed vassal is started before its first connection and waits for it paused",
                    missing.join(" and ")
                ),
            ));
        }
    }

    /// The checks across keys, once every line is known, and the finished config.
    fn finish(mut self) -> (VassalConfig, Vec<Problem>) {
        if let Some(entry) = self.idle_action_entry
            && self.config.idle.is_none()
            && !self.first_seen.contains_key("idle")
        {
            self.problems.push(Problem::for_entry(
                entry,
                "needs idle: the action is taken after \"idle = <seconds>\" without a connection",
            ));
        }
        if let Some(entry) = self.prewarm_entry.filter(|_| self.config.prewarm) {
            self.check_prewarm(entry);
        }
        if let Some(entry) = self.log_maxsize_entry
            && !self.first_seen.contains_key("logto")
        {
            self.problems.push(Problem::for_entry(
                entry,
                "needs logto: only a vassal's own log file is rotated (Docker's copy is bounded already)",
            ));
        }
        if !self.failed.contains("socket") && !self.failed.contains("docker-socket") {
            self.routes.check_targets(&self.config.sockets, &mut self.problems);
        }
        self.config.routes = self.routes.into_routes();
        if let Some(image_entry) = self.image_entry {
            let memory_given = self.first_seen.contains_key("docker-memory");
            let docker = self
                .docker
                .finish(self.name, image_entry, memory_given, &mut self.problems);
            self.config.docker = Some(docker);
        }
        let socket_invalid = self.failed.contains("socket") || self.failed.contains("docker-socket");
        self.accept.finish(&mut self.config, socket_invalid, &mut self.problems);
        self.replicas.finish(&mut self.config, &mut self.problems);
        (self.config, self.problems)
    }
}

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
        socket_nonblocking: false,
        accept: None,
        emperor_hash: 0,
        text: text.to_owned(),
        docker: None,
        uwsgi_section: false,
        on_demand: false,
        precreate: true,
        idle: None,
        idle_action: IdleAction::Stop,
        prewarm: false,
        replicas: Replicas::default(),
        routes: Vec::new(),
        reload_overlap: true,
        ready_delay: None,
        logto: None,
        log_maxsize: None,
        run_as: None,
        owner: None,
        container_policy: None,
        lines: Vec::new(),
    }
}

/// The closest known key, if it is close enough to be a plausible typo.
fn suggest(key: &str) -> Option<&'static str> {
    closest_key(key, KNOWN_KEYS)
}

/// The entry of `known` closest to `key` (Jaro-Winkler), if it is close enough to be a plausible typo.
/// Shared with the policy file's rules (`policy/parse.rs`) and the emperor's `--ini` file (`cli/ini.rs`), so
/// all suggest alike.
pub(crate) fn closest_key<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
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
fn emperor_hash(entries: &[RawEntry], uwsgi_section: bool) -> u64 {
    let mut hash = crate::sys::hash::Fnv1a::new();
    let mut feed = |bytes: &[u8]| {
        hash.write(&(bytes.len() as u64).to_le_bytes());
        hash.write(bytes);
    };
    for entry in entries.iter().filter(|e| !EMPEROR_ONLY_KEYS.contains(&e.key.as_str())) {
        feed(entry.key.as_bytes());
        feed(entry.value.as_bytes());
    }
    if uwsgi_section {
        feed(b"[uwsgi]");
        feed(b"");
    }
    hash.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{err, ok, one, with_image};

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
                "socket-nonblocking" => "true",
                "accept" => "false",
                "max-connections" => "8",
                "docker-image" => "img",
                "docker-build" => "app",
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
                "prewarm" => "yes",
                "replicas" => "1",
                "replicas-up" => "1",
                "replicas-down" => "1",
                "reload-overlap" => "false",
                "docker-precreate" => "no",
                "ready-delay" => "0.5",
                "logto" => "app.log",
                "log-maxsize" => "1m",
                other => panic!("add a value for {other}"),
            };
            // Other docker-* keys need a docker-image line first, idle-action needs idle.
            let (prefix, first) = if key.starts_with("docker-") && !["docker-image", "docker-build"].contains(key) {
                ("docker-image = img\n", 3)
            } else if *key == "idle-action" {
                ("idle = 1\n", 3)
            } else if *key == "prewarm" {
                ("on-demand = true\nidle = 1\nidle-action = pause\n", 5)
            } else if *key == "log-maxsize" {
                ("logto = a.log\n", 3)
            } else if *key == "max-connections" {
                ("accept = false\n", 3)
            } else if key.starts_with("replicas-") {
                ("socket = /run/a.sock\nreplicas = 1..2\n", 4)
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
            "on-demand = true\nidle = 5\nidle-action = pause\nprewarm = true\n",
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
