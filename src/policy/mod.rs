//! The policy a vassal file is checked against before anything is created for it (`--emperor-policy
//! FILE`, the built-in strict one in tyrant mode, and `emperor check`), and what it forces on the
//! vassal. README "Policy" lists every rule; this says how the code is shaped.
//!
//! Pure logic with one exception: paths are resolved on the real filesystem (`canonicalize`), because
//! a mount source or a program is what it *resolves to*, not what it is spelled as. [`Policy::check`]
//! takes a valid [`VassalConfig`] and the file's [`Owner`] and returns either a [`Decision`] (plain
//! data: what the emperor must force on the container or process: user, ceilings, capabilities, the
//! resolved paths to use) or every [`Refusal`], each naming the vassal's file, line and key and the
//! policy's file, line and rule. It never stops at the first refusal, as config parsing never stops at
//! the first problem.
//!
//! Invariants:
//! - a rule the policy file gives replaces the built-in rule of that name entirely; a rule it does
//!   not give keeps the built-in value, and a refusal under it cites "the built-in policy";
//! - every host path checked (mount sources, the `docker-proxy` directory, a process's program) is
//!   checked resolved, and the resolved path is what the [`Decision`] hands back, so that the emperor
//!   uses what was checked and not a name a tenant can re-point afterwards;
//! - some refusals no policy can lift: `/`, `/proc`, `/sys`, `/dev` and the Docker socket (or a
//!   directory holding it) are never mounted, and a container runs as its file's owner.

mod glob;
mod parse;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use bollard::models::{ContainerCreateBody, HostConfig};

use crate::config::{DockerConfig, KeyLine, SocketAddrSpec, VassalConfig, printable};
pub use parse::{BUILT_IN, DOCKER_DEFAULT_CAPS, NEVER_MOUNTED, load};
#[allow(
    unused_imports,
    reason = "the emperor's API (issue 12): parse a policy read elsewhere, name its error"
)]
pub use parse::{PolicyError, PolicyProblem, RULES, parse};

/// Docker sockets that are never mounted, whatever the mount roots say (the daemon's configured
/// socket is added with [`Policy::with_docker_socket`]). containerd's socket gives the same power.
const DOCKER_SOCKETS: &[&str] = &[
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
];

/// Where a rule comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in strict policy ([`BUILT_IN`]).
    BuiltIn,
    /// A policy file, as its path was given.
    File(PathBuf),
}

/// One rule of the policy, with the lines it came from: what a refusal under it cites.
#[derive(Debug, Clone)]
struct Rule<T> {
    name: &'static str,
    source: Source,
    /// `(line, value as written)` for every line of the rule; empty when no line gives it (the
    /// built-in policy has no `mount-root`, say).
    lines: Vec<(Option<usize>, String)>,
    value: T,
}

impl<T> Rule<T> {
    fn bare(name: &'static str, value: T) -> Rule<T> {
        Rule {
            name,
            source: Source::BuiltIn,
            lines: Vec::new(),
            value,
        }
    }

    fn cite(&self) -> RuleRef {
        RuleRef::Rule {
            source: self.source.clone(),
            rule: self.name,
            lines: self.lines.clone(),
        }
    }

    /// The first line's value as written (`1g`), or `none` for a rule no line gives.
    fn shown_value(&self) -> String {
        self.lines.first().map_or_else(|| "none".to_owned(), |(_, v)| v.clone())
    }

    /// `1g, from the built-in policy` / `1g, policy.ini:4`: for messages about two rules.
    fn cited_value(&self) -> String {
        match (&self.source, self.lines.first()) {
            (Source::BuiltIn, _) => format!("{}, from the built-in policy", self.shown_value()),
            (Source::File(p), Some((Some(n), v))) => format!("{v}, {}:{n}", p.display()),
            (Source::File(p), _) => format!("{}, {}", self.shown_value(), p.display()),
        }
    }
}

/// A glob (`*` any run of characters, `?` one) with placeholders (`%U` owner name, `%u` uid, `%g`
/// gid), as written in the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern(String);

/// Inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PortRange(u16, u16);

impl PortRange {
    fn contains(&self, port: u16) -> bool {
        (self.0..=self.1).contains(&port)
    }
}

/// A parsed policy: the built-in one, or a file laid over it ([`parse`], [`load`]).
#[derive(Debug, Clone)]
pub struct Policy {
    image: Rule<Vec<Pattern>>,
    mount_root: Rule<Vec<Pattern>>,
    /// Directories `docker-build` contexts may lie under; none: no building.
    build_root: Rule<Vec<Pattern>>,
    network: Rule<Vec<Pattern>>,
    publish: Rule<Vec<PortRange>>,
    socket_port: Rule<Vec<PortRange>>,
    /// Bytes; `None` is unlimited (also for the other limits).
    memory_max: Rule<Option<u64>>,
    memory_default: Rule<Option<u64>>,
    /// Swap beyond memory (Docker's MemorySwap minus Memory).
    swap_max: Rule<Option<u64>>,
    pids_max: Rule<Option<u64>>,
    pids_default: Rule<Option<u64>>,
    /// Billionths of a CPU (Docker's NanoCpus).
    cpus_max: Rule<Option<u64>>,
    cap_add: Rule<Vec<String>>,
    no_new_privileges: Rule<bool>,
    program: Rule<Vec<Pattern>>,
    /// Empty: any uid.
    uid_range: Rule<Vec<(u32, u32)>>,
    /// Never mounted, nor any directory above them.
    docker_sockets: Vec<PathBuf>,
}

impl Policy {
    /// Every rule at its empty meaning: no image, mount root, network, port, capability or program
    /// allowed, no limit forced. Only the base [`BUILT_IN`] is laid over.
    fn bare() -> Policy {
        Policy {
            image: Rule::bare("image", Vec::new()),
            mount_root: Rule::bare("mount-root", Vec::new()),
            build_root: Rule::bare("build-root", Vec::new()),
            network: Rule::bare("network", Vec::new()),
            publish: Rule::bare("publish", Vec::new()),
            socket_port: Rule::bare("socket-port", Vec::new()),
            memory_max: Rule::bare("memory-max", None),
            memory_default: Rule::bare("memory-default", None),
            swap_max: Rule::bare("swap-max", None),
            pids_max: Rule::bare("pids-max", None),
            pids_default: Rule::bare("pids-default", None),
            cpus_max: Rule::bare("cpus-max", None),
            cap_add: Rule::bare("cap-add", Vec::new()),
            no_new_privileges: Rule::bare("no-new-privileges", true),
            program: Rule::bare("program", Vec::new()),
            uid_range: Rule::bare("uid-range", Vec::new()),
            docker_sockets: DOCKER_SOCKETS.iter().map(PathBuf::from).collect(),
        }
    }

    /// The built-in strict policy ([`BUILT_IN`]).
    pub fn built_in() -> Policy {
        // BUILT_IN is a constant that a test parses; `bare` (which refuses every image) is only the
        // answer to a broken build.
        parse::parse_over(Policy::bare(), Source::BuiltIn, BUILT_IN).unwrap_or_else(|_| Policy::bare())
    }

    /// Also never mount this socket (the emperor's `--docker-daemon-socket`, or `DOCKER_HOST`'s path).
    pub fn with_docker_socket(mut self, path: &Path) -> Policy {
        self.docker_sockets.push(path.to_path_buf());
        self
    }

    /// Checks a valid vassal that runs as `owner`. `Ok` holds what must be forced on it; `Err` every
    /// reason it may not run, in file order (refusals about the file as a whole first).
    pub fn check(&self, cfg: &VassalConfig, owner: &Owner) -> Result<Decision, Vec<Refusal>> {
        let mut c = Checker {
            cfg,
            owner,
            refusals: Vec::new(),
        };
        self.check_owner(&mut c);
        self.check_sockets(&mut c);
        let decision = match &cfg.docker {
            Some(d) => Decision::Container(Box::new(self.check_container(&mut c, d))),
            None => Decision::Process(self.check_process(&mut c)),
        };
        if c.refusals.is_empty() {
            Ok(decision)
        } else {
            c.refusals.sort_by_key(|r| r.line.unwrap_or(0));
            Err(c.refusals)
        }
    }

    fn check_owner(&self, c: &mut Checker<'_>) {
        let ranges = &self.uid_range.value;
        if !ranges.is_empty() && !ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c.owner.uid)) {
            c.refuse_file(format!("owned by {}", c.owner), self.uid_range.cite(), None);
        }
    }

    /// TCP sockets are bound by the root emperor, so a port the owner could not bind is not bound for it.
    fn check_sockets(&self, c: &mut Checker<'_>) {
        let lines: Vec<&KeyLine> = c.lines(&["socket", "docker-socket"]).collect();
        for (spec, line) in c.cfg.sockets.iter().zip(lines) {
            if let SocketAddrSpec::Tcp(addr) = &spec.addr
                && !self.socket_port.value.iter().any(|r| r.contains(addr.port()))
            {
                c.refuse(line, self.socket_port.cite(), None);
            }
        }
    }

    fn check_container(&self, c: &mut Checker<'_>, d: &DockerConfig) -> ContainerDecision {
        let owner = c.owner;
        if let Some(line) = c.line("docker-image")
            && !self.image.value.iter().any(|p| p.matches(&d.image, owner))
        {
            c.refuse(line, self.image.cite(), None);
        }

        // A build reads the context as root for the owner: only under a build root, checked resolved.
        let mut build_context = None;
        if let (Some(dir), Some(line)) = (&d.build, c.line("docker-build")) {
            match self.check_host_path(&self.build_root, dir, owner) {
                Ok(resolved) => build_context = Some((dir.clone(), resolved)),
                Err((rule, detail)) => c.refuse(line, rule, detail),
            }
        }

        let mut mount_sources = Vec::new();
        let mount_lines: Vec<&KeyLine> = c.lines(&["docker-mount"]).collect();
        for (mount, line) in d.mounts.iter().zip(mount_lines) {
            match self.check_host_path(&self.mount_root, &mount.host, owner) {
                Ok(resolved) => mount_sources.push((mount.host.clone(), resolved)),
                Err((rule, detail)) => c.refuse(line, rule, detail),
            }
        }
        let mut proxy_dir = None;
        if let (Some(proxy), Some(line)) = (&d.proxy, c.line("docker-proxy")) {
            // The socket's directory is what gets bind-mounted.
            let dir = proxy.host.parent().unwrap_or(Path::new("/")).to_path_buf();
            match self.check_host_path(&self.mount_root, &dir, owner) {
                Ok(resolved) => proxy_dir = Some((dir, resolved)),
                Err((rule, detail)) => c.refuse(
                    line,
                    rule,
                    detail.or_else(|| Some(format!("its directory {} is mounted", dir.display()))),
                ),
            }
        }

        let allowed = |mode: &str| self.network.value.iter().any(|p| p.matches(mode, owner));
        let network_mode = match (&d.network_mode, c.line("docker-network-mode")) {
            (Some(mode), Some(line)) => {
                if !allowed(mode) {
                    c.refuse(line, self.network.cite(), None);
                }
                None
            }
            _ if allowed("none") => Some("none".to_owned()),
            _ if allowed("bridge") => None,
            _ => {
                c.refuse_file(
                    "no docker-network-mode (Docker's default is bridge)".to_owned(),
                    self.network.cite(),
                    None,
                );
                None
            }
        };

        let port_lines: Vec<&KeyLine> = c.lines(&["docker-port"]).collect();
        for (port, line) in d.ports.iter().zip(port_lines) {
            if !self.publish.value.iter().any(|r| r.contains(port.host_port)) {
                c.refuse(line, self.publish.cite(), None);
            }
        }

        let user = format!("{}:{}", owner.uid, owner.gid);
        if let (Some(asked), Some(line)) = (&d.user, c.line("docker-user"))
            && *asked != user
            && *asked != owner.uid.to_string()
        {
            let rule = RuleRef::Fixed(format!("a container runs as its file's owner, {user}"));
            c.refuse(line, rule, None);
        }

        let memory = match (d.memory, c.line("docker-memory")) {
            (Some(asked), Some(line)) => {
                if self.memory_max.value.is_some_and(|max| asked as u64 > max) {
                    c.refuse(line, self.memory_max.cite(), None);
                }
                Some(asked)
            }
            _ => self.memory_default.value.map(|m| m as i64),
        };
        let memory_swap = self.memory_swap(c, d, memory);

        let cap_drop = if self.cap_add.value.iter().any(|cap| cap == "NET_RAW") {
            Vec::new()
        } else {
            vec!["NET_RAW".to_owned()]
        };
        let cap_add = self
            .cap_add
            .value
            .iter()
            .filter(|cap| !DOCKER_DEFAULT_CAPS.contains(&cap.as_str()))
            .cloned()
            .collect();
        ContainerDecision {
            user,
            memory,
            memory_swap,
            pids_limit: self.pids_default.value.map(|n| n as i64),
            nano_cpus: self.cpus_max.value.map(|n| n as i64),
            cap_add,
            cap_drop,
            no_new_privileges: self.no_new_privileges.value,
            network_mode,
            mount_sources,
            proxy_dir,
            build_context,
        }
    }

    /// Docker's MemorySwap (memory plus swap) for a container with `memory`: the vassal's `docker-swap`
    /// if the swap beyond memory fits under `swap-max`; unset, Docker's own default (as much swap as
    /// memory) capped by `swap-max`.
    fn memory_swap(&self, c: &mut Checker<'_>, d: &DockerConfig, memory: Option<i64>) -> Option<i64> {
        let max = self.swap_max.value;
        match (d.swap, c.line("docker-swap")) {
            (Some(asked), Some(line)) => {
                let extra = (asked >= 0).then(|| asked.saturating_sub(memory.unwrap_or(0)).max(0) as u64);
                let over = match (extra, max) {
                    (_, None) => false,
                    (None, Some(_)) => true,
                    (Some(e), Some(m)) => e > m,
                };
                if over {
                    c.refuse(line, self.swap_max.cite(), None);
                }
                Some(asked)
            }
            _ => memory.map(|m| m.saturating_add(max.map_or(m, |x| (x as i64).min(m)))),
        }
    }

    fn check_process(&self, c: &mut Checker<'_>) -> ProcessDecision {
        let owner = c.owner;
        let mut program = None;
        let allowed = &self.program.value;
        match (&c.cfg.exec, c.line("exec")) {
            (Some(argv), Some(line)) => match resolve_program(c.cfg, &argv[0]) {
                _ if allowed.is_empty() => c.refuse(line, self.program.cite(), None),
                Ok(path) => {
                    let text = path.to_string_lossy();
                    if allowed.iter().any(|p| p.matches(&text, owner)) {
                        program = Some(path);
                    } else {
                        let detail = (path.as_os_str() != argv[0].as_str())
                            .then(|| format!("{} is {}", argv[0], path.display()));
                        c.refuse(line, self.program.cite(), detail);
                    }
                }
                Err(why) => c.refuse(line, self.program.cite(), Some(why)),
            },
            // The wrapper (uWSGI) is the operator's choice, not the tenant's: only `program = none` refuses it.
            _ if allowed.is_empty() => c.refuse_file(
                "a process vassal (no docker-image)".to_owned(),
                self.program.cite(),
                None,
            ),
            _ => {}
        }
        ProcessDecision {
            uid: owner.uid,
            gid: owner.gid,
            program,
        }
    }

    /// A host path that gets bind-mounted (or read as a build context), resolved: under a root of `rule`
    /// (resolved too) and none of what is never mounted. The error is the rule to cite and, when it helps,
    /// what the path resolved to.
    fn check_host_path(
        &self,
        rule: &Rule<Vec<Pattern>>,
        written: &Path,
        owner: &Owner,
    ) -> Result<PathBuf, (RuleRef, Option<String>)> {
        if rule.value.is_empty() {
            return Err((rule.cite(), None));
        }
        let resolved = match written.canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err((rule.cite(), Some(format!("{} does not exist", written.display()))));
            }
            Err(e) => return Err((rule.cite(), Some(format!("cannot resolve {}: {e}", written.display())))),
        };
        let roots: Vec<PathBuf> = rule
            .value
            .iter()
            .filter_map(|p| p.expand(owner))
            .filter_map(|root| Path::new(&root).canonicalize().ok())
            .collect();
        let moved = (resolved != written).then(|| format!("{} resolves to {}", written.display(), resolved.display()));
        if !roots.iter().any(|root| resolved.starts_with(root)) {
            return Err((rule.cite(), moved));
        }
        if resolved.parent().is_none() || NEVER_MOUNTED.iter().any(|n| resolved.starts_with(n)) {
            return Err((RuleRef::Fixed("never /, /proc, /sys or /dev".to_owned()), moved));
        }
        let holds_socket = self.docker_sockets.iter().any(|sock| {
            let sock = sock.canonicalize().unwrap_or_else(|_| sock.clone());
            sock.starts_with(&resolved)
        });
        if holds_socket {
            return Err((RuleRef::Fixed("never the Docker socket".to_owned()), moved));
        }
        Ok(resolved)
    }
}

/// The program a process vassal's `exec` runs, as the emperor's spawn finds it: a path with a `/`
/// relative to the working directory (`chdir`, else the vassals directory), a bare name in `PATH`
/// (the vassal's `env = PATH=...` if it sets one, else the emperor's); then resolved.
fn resolve_program(cfg: &VassalConfig, program: &str) -> Result<PathBuf, String> {
    let found = if program.contains('/') {
        let base = cfg
            .chdir
            .clone()
            .or_else(|| cfg.path.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        base.join(program)
    } else {
        let path = cfg
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone().into())
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|p| is_executable(p))
            .ok_or_else(|| format!("{program} is not found in PATH"))?
    };
    found
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", found.display()))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Who a vassal runs as: its file's owner (tyrant mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    /// The user's name from /etc/passwd, for `%U`; `None` for a uid with no user (a `%U` rule then
    /// matches nothing).
    pub name: Option<String>,
}

impl Owner {
    /// The owner of `path`: of the file a symlink points to (`follow`), or of the symlink itself
    /// (uWSGI's `emperor-tyrant-nofollow`). The name is looked up in /etc/passwd.
    pub fn of_file(path: &Path, follow: bool) -> std::io::Result<Owner> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = if follow {
            std::fs::metadata(path)?
        } else {
            std::fs::symlink_metadata(path)?
        };
        Ok(Owner::of_ids(meta.uid(), meta.gid()))
    }

    /// `uid`/`gid` with the user's name from /etc/passwd, if it has one.
    pub fn of_ids(uid: u32, gid: u32) -> Owner {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        Owner {
            uid,
            gid,
            name: user_name(&passwd, uid),
        }
    }
}

impl fmt::Display for Owner {
    /// `uid 1000 (alice)`, or `uid 1000` with no user name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {}", self.uid)?;
        if let Some(name) = &self.name {
            write!(f, " ({name})")?;
        }
        Ok(())
    }
}

/// The name of `uid` in passwd-format text (the first entry with it, as getpwuid).
fn user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id = fields.nth(1)?;
        (id.parse() == Ok(uid) && !name.is_empty()).then(|| name.to_owned())
    })
}

/// Tyrant mode's own refusal, before any policy: a file owned by uid 0 or gid 0 would run with root's
/// uid or group (uWSGI's tyrant mode refuses it too). `None` for any other owner.
pub fn refuse_root_owner(file: &Path, owner: &Owner) -> Option<Refusal> {
    (owner.uid == 0 || owner.gid == 0).then(|| Refusal {
        file: file.to_path_buf(),
        line: None,
        entry: None,
        subject: Some(format!("owned by {owner}, gid {}", owner.gid)),
        rule: RuleRef::Tyrant("a file owned by uid 0 or gid 0 never runs; chown it to the user it should run as"),
        detail: None,
    })
}

/// What the policy allows a vassal to run with, for the emperor to force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Boxed: it is the large one, and a decision is made once per (re)start.
    Container(Box<ContainerDecision>),
    Process(ProcessDecision),
}

/// What a Docker vassal's container gets, whatever its file says (Docker's field names in comments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerDecision {
    /// `User`: `uid:gid` of the file's owner.
    pub user: String,
    /// `HostConfig.Memory`: the vassal's `docker-memory`, else `memory-default`; `None`: unlimited.
    pub memory: Option<i64>,
    /// `HostConfig.MemorySwap` (memory plus swap; -1 unlimited).
    pub memory_swap: Option<i64>,
    /// `HostConfig.PidsLimit`: `pids-default` (no vassal key sets it).
    pub pids_limit: Option<i64>,
    /// `HostConfig.NanoCpus`: `cpus-max`.
    pub nano_cpus: Option<i64>,
    /// `HostConfig.CapAdd`: `cap-add` capabilities outside Docker's default set.
    pub cap_add: Vec<String>,
    /// `HostConfig.CapDrop`: `NET_RAW` unless `cap-add` keeps it.
    pub cap_drop: Vec<String>,
    /// `HostConfig.SecurityOpt` gets `no-new-privileges`.
    pub no_new_privileges: bool,
    /// `HostConfig.NetworkMode`, when the vassal gave none and Docker's default (bridge) is not allowed:
    /// `none`.
    pub network_mode: Option<String>,
    /// Each `docker-mount` source as written (after the vassals dir) and resolved: bind the resolved one.
    pub mount_sources: Vec<(PathBuf, PathBuf)>,
    /// `docker-proxy`'s host directory as written and resolved.
    pub proxy_dir: Option<(PathBuf, PathBuf)>,
    /// `docker-build`'s context as written and resolved: the emperor reads the resolved one.
    pub build_context: Option<(PathBuf, PathBuf)>,
}

impl ContainerDecision {
    /// Forces the decision on a container definition (`docker/plan.rs` builds it; this goes before its
    /// fingerprint is sealed, so a container created under another policy is not reused).
    #[allow(
        dead_code,
        reason = "the emperor and bridge call it once tyrant mode is wired (docker/plan.rs)"
    )]
    pub fn apply(&self, body: &mut ContainerCreateBody) {
        body.user = Some(self.user.clone());
        let host = body.host_config.get_or_insert_with(HostConfig::default);
        if self.memory.is_some() {
            host.memory = self.memory;
        }
        if self.memory_swap.is_some() {
            host.memory_swap = self.memory_swap;
        }
        host.pids_limit = self.pids_limit;
        host.nano_cpus = self.nano_cpus;
        host.cap_add = (!self.cap_add.is_empty()).then(|| self.cap_add.clone());
        host.cap_drop = (!self.cap_drop.is_empty()).then(|| self.cap_drop.clone());
        if self.no_new_privileges {
            host.security_opt
                .get_or_insert_with(Vec::new)
                .push("no-new-privileges".to_owned());
        }
        if self.network_mode.is_some() {
            host.network_mode = self.network_mode.clone();
        }
        let swaps: Vec<&(PathBuf, PathBuf)> = self.mount_sources.iter().chain(&self.proxy_dir).collect();
        for mount in host.mounts.iter_mut().flatten() {
            if let Some((_, resolved)) = swaps
                .iter()
                .find(|(written, _)| mount.source.as_deref() == Some(&*written.to_string_lossy()))
            {
                mount.source = Some(resolved.to_string_lossy().into_owned());
            }
        }
    }
}

impl fmt::Display for ContainerDecision {
    /// `user 1000:1000, memory 256m, memory+swap 256m, pids 256, cpus 1, cap-drop NET_RAW, no-new-privileges`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let size = |b: Option<i64>| match b {
            None | Some(-1) => "unlimited".to_owned(),
            Some(b) if b % (1 << 30) == 0 => format!("{}g", b >> 30),
            Some(b) if b % (1 << 20) == 0 => format!("{}m", b >> 20),
            Some(b) => format!("{b}"),
        };
        write!(f, "user {}, memory {}", self.user, size(self.memory))?;
        if self.memory.is_some() || self.memory_swap.is_some() {
            write!(f, ", memory+swap {}", size(self.memory_swap))?;
        }
        match self.pids_limit {
            Some(n) => write!(f, ", pids {n}")?,
            None => write!(f, ", pids unlimited")?,
        }
        match self.nano_cpus {
            Some(n) => write!(f, ", cpus {}", n as f64 / 1e9)?,
            None => write!(f, ", cpus unlimited")?,
        }
        if let Some(mode) = &self.network_mode {
            write!(f, ", network {mode}")?;
        }
        if !self.cap_add.is_empty() {
            write!(f, ", cap-add {}", self.cap_add.join(" "))?;
        }
        if !self.cap_drop.is_empty() {
            write!(f, ", cap-drop {}", self.cap_drop.join(" "))?;
        }
        if self.no_new_privileges {
            write!(f, ", no-new-privileges")?;
        }
        if let Some((_, resolved)) = &self.build_context {
            write!(f, ", built from {}", resolved.display())?;
        }
        Ok(())
    }
}

/// What a process vassal runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessDecision {
    pub uid: u32,
    pub gid: u32,
    /// The resolved program `exec` names, the one that was checked: exec this path, not argv\[0\] (a
    /// tenant could re-point a symlink or PATH entry between check and exec). `None` without `exec`
    /// (the wrapper runs).
    pub program: Option<PathBuf>,
}

impl fmt::Display for ProcessDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {}, gid {}", self.uid, self.gid)?;
        if let Some(p) = &self.program {
            write!(f, ", program {}", p.display())?;
        }
        Ok(())
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Container(c) => write!(f, "container: {c}"),
            Decision::Process(p) => write!(f, "process: {p}"),
        }
    }
}

/// The rule a refusal is under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleRef {
    /// A rule of the policy, with every line that gives it (none: the policy has no such rule).
    Rule {
        source: Source,
        rule: &'static str,
        lines: Vec<(Option<usize>, String)>,
    },
    /// What no policy can lift (`never the Docker socket`).
    Fixed(String),
    /// Tyrant mode itself, with or without a policy.
    Tyrant(&'static str),
}

impl fmt::Display for RuleRef {
    /// `policy.ini:3 (mount-root = /srv/tenants/%U)`, several lines joined with `, `;
    /// `the built-in policy (network = none)`; `the built-in policy (no mount-root rule)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleRef::Fixed(text) => write!(f, "the built-in policy ({text})"),
            RuleRef::Tyrant(text) => write!(f, "tyrant mode ({text})"),
            RuleRef::Rule { source, rule, lines } => match (source, lines.is_empty()) {
                (Source::BuiltIn, true) => write!(f, "the built-in policy (no {rule} rule)"),
                (Source::File(p), true) => write!(f, "{} (no {rule} rule)", p.display()),
                (Source::BuiltIn, false) => {
                    let rules: Vec<String> = lines.iter().map(|(_, v)| format!("{rule} = {v}")).collect();
                    write!(f, "the built-in policy ({})", rules.join("; "))
                }
                (Source::File(p), false) => {
                    for (i, (line, value)) in lines.iter().enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        write!(f, "{}", p.display())?;
                        if let Some(n) = line {
                            write!(f, ":{n}")?;
                        }
                        write!(f, " ({rule} = {value})")?;
                    }
                    Ok(())
                }
            },
        }
    }
}

/// One reason a vassal may not run: its file, line and key (or what about the file is refused), the
/// rule, and what the path resolved to when that is the point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The vassal file, as its config names it.
    pub file: PathBuf,
    pub line: Option<usize>,
    /// `Some((key, value))` for a line of `[emperor]`.
    pub entry: Option<(String, String)>,
    /// What is refused when no line is (`owned by uid 70000 (bob)`).
    pub subject: Option<String>,
    pub rule: RuleRef,
    pub detail: Option<String>,
}

/// Checks `cfg` (owned by `owner`) against `policy` and returns it with what the policy forces on its
/// container: the one step the emperor (before anything is created) and the bridge (before it plans the
/// container) both take, so that both plan the same container.
pub fn admit(policy: &Policy, cfg: VassalConfig, owner: &Owner) -> Result<VassalConfig, Vec<Refusal>> {
    let decision = policy.check(&cfg, owner)?;
    let mut cfg = cfg;
    match decision {
        Decision::Container(d) => {
            // The context the policy checked, resolved: a symlink re-pointed afterwards changes nothing.
            if let (Some((_, resolved)), Some(docker)) = (&d.build_context, cfg.docker.as_mut()) {
                docker.build = Some(resolved.clone());
            }
            cfg.container_policy = Some(d);
        }
        // The program the policy allowed, resolved: a symlink or a PATH entry re-pointed after the check must
        // not change what runs.
        Decision::Process(p) => {
            if let (Some(program), Some(argv)) = (p.program, cfg.exec.as_mut())
                && let Some(first) = argv.first_mut()
            {
                *first = program.to_string_lossy().into_owned();
            }
        }
    }
    Ok(cfg)
}

impl Refusal {
    /// The refusal as one problem of its vassal file, which displays as the refusal does.
    pub fn to_problem(&self) -> crate::config::Problem {
        let mut message = String::new();
        if let Some(subject) = &self.subject {
            message.push_str(subject);
            message.push_str(": ");
        }
        message.push_str(&format!("refused by {}", self.rule));
        if let Some(detail) = &self.detail {
            message.push_str(": ");
            message.push_str(detail);
        }
        crate::config::Problem {
            line: self.line,
            column: None,
            key: self.entry.as_ref().map(|(k, _)| k.clone()),
            value: self.entry.as_ref().map(|(_, v)| v.clone()),
            message,
        }
    }
}

impl fmt::Display for Refusal {
    /// `shop.ini:5: [emperor] docker-mount = "/:/host": refused by policy.ini:3 (mount-root =
    /// /srv/tenants/%U)`, then `: <detail>` if any; one printable line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.file.display().to_string();
        if let Some(n) = self.line {
            s.push_str(&format!(":{n}"));
        }
        s.push_str(": ");
        if let Some((key, value)) = &self.entry {
            s.push_str(&format!("[{}] {key} = \"{value}\": ", crate::config::SECTION));
        }
        if let Some(subject) = &self.subject {
            s.push_str(subject);
            s.push_str(": ");
        }
        s.push_str(&format!("refused by {}", self.rule));
        if let Some(detail) = &self.detail {
            s.push_str(": ");
            s.push_str(detail);
        }
        f.write_str(&printable(&s))
    }
}

/// One check's state: the vassal, its owner and the refusals so far.
struct Checker<'a> {
    cfg: &'a VassalConfig,
    owner: &'a Owner,
    refusals: Vec<Refusal>,
}

impl<'a> Checker<'a> {
    /// The lines of any of `keys`, in file order.
    fn lines(&self, keys: &'a [&'a str]) -> impl Iterator<Item = &'a KeyLine> + use<'a> {
        self.cfg.lines.iter().filter(move |l| keys.contains(&l.key.as_str()))
    }

    fn line(&self, key: &str) -> Option<&'a KeyLine> {
        self.cfg.lines.iter().find(|l| l.key == key)
    }

    fn refuse(&mut self, at: &KeyLine, rule: RuleRef, detail: Option<String>) {
        self.refusals.push(Refusal {
            file: self.cfg.path.clone(),
            line: at.line,
            entry: Some((at.key.clone(), at.value.clone())),
            subject: None,
            rule,
            detail,
        });
    }

    fn refuse_file(&mut self, subject: String, rule: RuleRef, detail: Option<String>) {
        self.refusals.push(Refusal {
            file: self.cfg.path.clone(),
            line: None,
            entry: None,
            subject: Some(subject),
            rule,
            detail,
        });
    }
}

impl Pattern {
    /// The pattern with the owner's placeholders filled in; `None` when `%U` is asked for and the owner
    /// has no usable name (none, or one that could leave its directory).
    fn expand(&self, owner: &Owner) -> Option<String> {
        let mut out = String::with_capacity(self.0.len() + 8);
        let mut chars = self.0.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('U') => {
                    let name = owner.name.as_deref()?;
                    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '*', '?']) {
                        return None;
                    }
                    out.push_str(name);
                }
                Some('u') => out.push_str(&owner.uid.to_string()),
                Some('g') => out.push_str(&owner.gid.to_string()),
                Some('%') => out.push('%'),
                // Refused when the policy is parsed.
                _ => return None,
            }
        }
        Some(out)
    }

    fn matches(&self, text: &str, owner: &Owner) -> bool {
        self.expand(owner).is_some_and(|p| glob::matches(&p, text))
    }
}
