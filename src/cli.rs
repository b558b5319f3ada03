//! Command line of the one `emperor` binary.
//!
//! Option names are uWSGI's wherever uWSGI has one (`--emperor-throttle`, `--reload-mercy`, ...), so that an
//! operator moving from a uWSGI emperor keeps their muscle memory. Values are validated here, once, into
//! [`EmperorOptions`]; nothing below `main` sees raw strings.

mod ini;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// `-h`'s one line.
const ABOUT: &str = "Runs one app per .ini file in a directory, as a host process or in a Docker container";

/// The `--help` text's head. clap prints it as written (no `wrap_help`), so it is wrapped here.
const LONG_ABOUT: &str = "\
Runs one app (a vassal) per .ini file in a directory: as a process on the host, or in a Docker
container when its file sets docker-image. The emperor binds each vassal's listening sockets itself
and hands them over, so a socket stays put across crashes, reloads and image swaps. A vassal can
start on its first connection (on-demand) and stop or pause when idle.

Create, touch or delete a file to start, reload or stop its vassal; or keep the vassals in
PostgreSQL (pg://, uWSGI's pg monitor) and publish their routes to Redis (--routes-redis). The
commands below act on a running emperor (status: its --emperor-stats socket; restart, stop, start: its --emperor-control
socket) or on a Docker vassal's container (shell). check validates vassal files offline, against a
policy too (--policy, --tyrant), as a deploy pipeline would before copying them in. front runs on
the nginx machine of a fleet (one emperor per host): it keeps one nginx include file in step with
every host's routes in Redis.";

/// The `--help` text's tail.
const AFTER_HELP: &str = "\
Signals: SIGTERM, SIGINT, SIGQUIT stop every vassal and exit; SIGHUP reloads every vassal.
A uWSGI emperor file runs as it is: --ini FILE (its keys: README, Running from a uWSGI emperor file).
Vassal file keys, logs, stats and systemd: README.md (scripts/install puts it in
<prefix>/share/doc/emperor/).";

/// The usage line of `--help` and of every error message. clap's own would list only what the error
/// is about (`emperor <VASSALS_DIR>` when the directory is missing) and not the subcommands' forms.
const USAGE: &str = "\
emperor [OPTIONS] <VASSALS_DIR>          (or --emperor <DIR>, or \"pg://<conninfo>[;<query>]\")
       emperor --ini <FILE[:SECTION]> [OPTIONS] [<VASSALS_DIR>]
       emperor status [--stats <ADDR>] [--json]
       emperor restart|stop|start <VASSAL> [--control <PATH>]
       emperor shell [--docker-daemon-socket <PATH>] <VASSAL> [COMMAND [ARG]...]
       emperor check [--policy <FILE>] [--tyrant] [--tyrant-nofollow] <FILE>...
       emperor front --redis <URL> --nginx-map <PATH> [--nginx-reload <COMMAND>]
                     [--routes-prefix <PREFIX>] [--reread <S>]
       emperor pack --tag <NAME[:TAG]> [--add <PATH>]... [--mkdir <DIR>]... <BINARY> [ARGS]...";

/// The command line: the emperor's options, or one of the other roles of the binary.
#[derive(Debug, Parser)]
#[command(name = "emperor", version, about = ABOUT, long_about = LONG_ABOUT)]
#[command(after_help = AFTER_HELP, override_usage = USAGE)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
// An option given twice takes the last value, as in uWSGI: that is also how the command line overrides an
// --ini file, whose options go first (`parse`).
#[command(args_override_self = true)]
pub struct Cli {
    /// A role other than the emperor: `status` is for operators; the hidden ones only the emperor starts.
    /// A vassals directory literally named like a subcommand is given as `./status` or `--emperor status`.
    #[command(subcommand)]
    pub role: Option<Role>,

    #[command(flatten)]
    pub emperor: EmperorArgs,
}

/// The other roles of the one binary.
#[derive(Debug, Subcommand)]
pub enum Role {
    /// Print the state of a running emperor's vassals, read from its --emperor-stats socket.
    Status(StatusArgs),
    /// Restart a vassal now, bypassing its throttle (through the emperor's --emperor-control socket).
    Restart(ControlArgs),
    /// Stop a vassal and keep it stopped (sockets stay bound, clients queue) until `start` or its file changes.
    Stop(ControlArgs),
    /// Start a vassal stopped with `emperor stop`.
    Start(ControlArgs),
    /// Run a shell (or a command) inside a Docker vassal's container, with a tty when stdin is one.
    Shell(ShellArgs),
    /// Check vassal files offline (and against a policy with --policy or --tyrant); exit 1 on any problem.
    Check(CheckArgs),
    /// Keep an nginx include file in step with every host's routes in Redis: one nginx in front of a
    /// fleet of emperors. Runs until SIGTERM or SIGINT, and leaves the file as it is then.
    Front(FrontArgs),
    /// Make a FROM scratch image of one program, the libraries its loader maps, and the files named
    /// (each at its host path), through the Docker daemon, offline.
    Pack(crate::pack::PackArgs),
    /// PID 1 inside a Docker vassal's container: receives the sockets over the proxy socket, then runs
    /// the vassal's command.
    #[command(hide = true)]
    Shim(ShimArgs),
    /// One per Docker vassal: creates the container and hands the vassal's fds into it.
    #[command(hide = true)]
    Bridge(BridgeArgs),
    /// A vassal with `accept = true`: accepts on its LISTEN_FDS sockets and runs the command once per
    /// connection, with the connection as stdin and stdout (inetd, systemd's Accept=yes).
    #[command(hide = true)]
    Accept(AcceptArgs),
}

/// `emperor accept --max-connections <N> -- <command>...`; the sockets come as `LISTEN_FDS`.
#[derive(Debug, Args)]
pub struct AcceptArgs {
    /// At most this many connections are served at once; more wait in the sockets' backlog.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// The program run for each connection, and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

/// Environment the emperor gives a bridge besides the systemd-style sockets: the vassal file's text as
/// the emperor read it (the file may change on disk meanwhile)...
pub const ENV_VASSAL_TEXT: &str = "EMPEROR_VASSAL_TEXT";
/// ... and the fd of the lifeline pipe, whose EOF tells the bridge that the emperor is gone.
pub const ENV_LIFELINE_FD: &str = "EMPEROR_LIFELINE_FD";

/// What the emperor tells a bridge on its command line (the vassal file's text and the fds come
/// through the environment: [`ENV_VASSAL_TEXT`], [`ENV_LIFELINE_FD`], see `bridge/mod.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct BridgeArgs {
    /// The vassal's name (`app.ini`).
    #[arg(long)]
    pub name: String,
    /// The vassal file.
    #[arg(long)]
    pub file: PathBuf,
    /// The vassals directory, for relative paths in the file.
    #[arg(long)]
    pub vassals_dir: PathBuf,
    /// The emperor's instance id (label `emperor.instance`).
    #[arg(long)]
    pub instance: String,
    /// Where private proxy-socket directories are made.
    #[arg(long)]
    pub run_dir: PathBuf,
    /// Extra `KEY=VALUE` labels for the container.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Log every Docker request body.
    #[arg(long)]
    pub docker_debug: bool,
    /// Program for `[uwsgi]` vassals inside the container.
    #[arg(long)]
    pub wrapper: String,
    /// Seconds the container gets to connect to its proxy socket.
    #[arg(long, default_value_t = 30)]
    pub handshake_timeout: u64,
    /// Seconds `docker stop` waits before Docker kills the container.
    #[arg(long)]
    pub stop_timeout: u64,
    /// An overlapping reload: the old container still holds the vassal's name, so this one starts as
    /// `<name>.next` and takes the name on SIGUSR1 (sent once the old one is gone).
    #[arg(long)]
    pub overlap: bool,
    /// `--docker-name-prefix` of the emperor.
    #[arg(long, default_value = "", value_parser = parse_name_prefix)]
    pub name_prefix: String,
    /// Carry on with this running container of a bridge that died, instead of starting one: the
    /// container already holds the vassal's sockets and channels.
    #[arg(long, value_name = "ID")]
    pub adopt: Option<String>,
    /// Tyrant mode: the container's user, the vassal file's owner.
    #[arg(long, value_name = "UID:GID")]
    pub run_as: Option<crate::config::RunAs>,
    /// The vassal's owner when it has no file (a `pg://` row's uid and gid): whom the policy is checked for.
    #[arg(long, value_name = "UID:GID")]
    pub owner: Option<crate::config::RunAs>,
    /// The policy the emperor checked the vassal against: an absolute path, or `builtin`; the bridge
    /// applies what it forces on the container ([`crate::policy::admit`]).
    #[arg(long, value_name = "PATH|builtin")]
    pub policy: Option<String>,
    /// Replica `K` (from 1) of a vassal with `replicas`: its container is `<name>.r<K>`, beside the first's `<name>`.
    #[arg(long, value_name = "K")]
    pub replica: Option<u32>,
    /// `docker-build`: the image the emperor built from the vassal's context (`emperor/<repository>:<hash>`).
    #[arg(long, value_name = "TAG")]
    pub image: Option<String>,
}

impl BridgeArgs {
    /// The bridge's command line after the program name, starting with the `bridge` subcommand: what the
    /// emperor runs (as `/proc/self/exe`, with its own path as `argv[0]`) to start a Docker vassal. A
    /// flag that is off and a list that is empty are left out; paths are passed as text (lossily, as
    /// every other path the emperor logs).
    pub fn to_argv(&self) -> Vec<String> {
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let mut argv = vec![
            "bridge".to_string(),
            "--name".into(),
            self.name.clone(),
            "--file".into(),
            path(&self.file),
            "--vassals-dir".into(),
            path(&self.vassals_dir),
            "--instance".into(),
            self.instance.clone(),
            "--run-dir".into(),
            path(&self.run_dir),
            "--wrapper".into(),
            self.wrapper.clone(),
            "--stop-timeout".into(),
            self.stop_timeout.to_string(),
            "--handshake-timeout".into(),
            self.handshake_timeout.to_string(),
        ];
        if self.overlap {
            argv.push("--overlap".into());
        }
        if !self.name_prefix.is_empty() {
            argv.push("--name-prefix".into());
            argv.push(self.name_prefix.clone());
        }
        if let Some(id) = &self.adopt {
            argv.push("--adopt".into());
            argv.push(id.clone());
        }
        if let Some(r) = &self.run_as {
            argv.push("--run-as".into());
            argv.push(r.to_string());
        }
        if let Some(o) = &self.owner {
            argv.push("--owner".into());
            argv.push(o.to_string());
        }
        if let Some(p) = &self.policy {
            argv.push("--policy".into());
            argv.push(p.clone());
        }
        if let Some(k) = self.replica {
            argv.push("--replica".into());
            argv.push(k.to_string());
        }
        if let Some(image) = &self.image {
            argv.push("--image".into());
            argv.push(image.clone());
        }
        if self.docker_debug {
            argv.push("--docker-debug".into());
        }
        for (k, v) in &self.labels {
            argv.push("--label".into());
            argv.push(format!("{k}={v}"));
        }
        argv
    }
}

/// A container-name prefix: empty, or what Docker accepts at the start of a name
/// (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), so that the prefix and any valid vassal name make a valid name.
fn parse_name_prefix(s: &str) -> Result<String, String> {
    let mut bytes = s.bytes();
    let valid = bytes.next().is_none_or(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !valid || s.len() > 64 {
        return Err(format!(
            "{s:?} cannot start a container name: use at most 64 of A-Z a-z 0-9 _ . -, starting with a letter or digit"
        ));
    }
    Ok(s.to_string())
}

pub(crate) fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// `emperor status [--stats ADDR] [--json]`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The emperor's --emperor-stats address: a unix socket path, @abstract, or IP:port.
    #[arg(
        long,
        value_name = "ADDR",
        env = "EMPEROR_STATS",
        default_value = "/run/emperor/stats.sock"
    )]
    pub stats: String,
    /// Print the raw JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `emperor shell [--docker-daemon-socket PATH] <vassal> [command...]`.
#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The Docker daemon's socket (default: `DOCKER_HOST`, else /var/run/docker.sock).
    #[arg(long, value_name = "PATH")]
    pub docker_daemon_socket: Option<PathBuf>,
    /// The emperor's `--docker-name-prefix`, if it has one.
    #[arg(long, value_name = "PREFIX", value_parser = parse_name_prefix, default_value = "")]
    pub docker_name_prefix: String,
    /// The vassal: its file name (`app.ini`), or that name without `.ini`.
    pub vassal: String,
    /// The command and its arguments (default: /bin/sh).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `emperor check [--policy FILE] [--tyrant] [--tyrant-nofollow] FILE...`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Check each file against this policy file (the emperor's --emperor-policy), after checking the
    /// policy file itself.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Check as --emperor-tyrant would: a file owned by uid 0 or gid 0 is refused, and without --policy
    /// the built-in policy applies.
    #[arg(long)]
    pub tyrant: bool,
    /// As --tyrant, with a symlink's own owner (--emperor-tyrant-nofollow).
    #[arg(long)]
    pub tyrant_nofollow: bool,
    /// The vassal files. Relative paths in a file are taken from the file's directory, as the emperor
    /// takes them from the vassals directory.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
}

/// `emperor front --redis URL --nginx-map PATH [--nginx-reload COMMAND] [--routes-prefix PREFIX] [--reread S]`.
#[derive(Debug, Args)]
pub struct FrontArgs {
    /// Where the hosts publish their routes: redis://[:PASSWORD@]IP[:PORT][/DB] or unix://PATH[?db=DB].
    /// The server by IP address: this static binary does no name look-ups.
    #[arg(long, value_name = "URL", env = "EMPEROR_REDIS", hide_env_values = true)]
    pub redis: String,
    /// The include file to keep (upstreams + `map $host $emperor_upstream`, as the emperor's --nginx-map).
    #[arg(long, value_name = "PATH")]
    pub nginx_map: PathBuf,
    /// Command run (split like a shell would, run without one) after the file changed, e.g.
    /// "nginx -s reload". Its failure is logged, never fatal.
    #[arg(long, value_name = "COMMAND")]
    pub nginx_reload: Option<String>,
    /// The route keys' prefix (beachhead's --key-prefix): keys are <PREFIX><vassal>@<address>.
    #[arg(long, value_name = "PREFIX", default_value = "/beachhead/")]
    pub routes_prefix: String,
    /// Seconds between two reads of every route besides those that keyspace notifications trigger
    /// (expirations are notified late, and some servers refuse to notify at all).
    #[arg(long, value_name = "S", default_value_t = 5)]
    pub reread: u64,
}

/// Validated `emperor front` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontOptions {
    /// `--redis`, checked by `fleet/store.rs` (it may hold a password: never logged).
    pub redis: String,
    pub nginx_map: PathBuf,
    /// `--nginx-reload`, split.
    pub nginx_reload: Option<Vec<String>>,
    pub prefix: String,
    pub reread: Duration,
}

impl FrontArgs {
    /// Turns raw arguments into options, or a message for the user.
    pub fn into_options(self) -> Result<FrontOptions, String> {
        if self.routes_prefix.is_empty() {
            return Err("--routes-prefix is empty: the front would read every key of the database".to_owned());
        }
        if self.reread == 0 {
            return Err("--reread 0: give at least 1 second".to_owned());
        }
        let nginx_reload = match &self.nginx_reload {
            Some(s) => Some(split_command(s).map_err(|e| format!("--nginx-reload {s:?}: {e}"))?),
            None => None,
        };
        Ok(FrontOptions {
            redis: self.redis,
            nginx_map: self.nginx_map,
            nginx_reload,
            prefix: self.routes_prefix,
            reread: Duration::from_secs(self.reread),
        })
    }
}

/// `emperor restart|stop|start <vassal> [--control PATH]`.
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The vassal's file name (`app.ini`; `app` works too).
    pub vassal: String,
    /// The emperor's --emperor-control socket.
    #[arg(
        long,
        value_name = "PATH",
        env = "EMPEROR_CONTROL",
        default_value = "/run/emperor/control.sock"
    )]
    pub control: PathBuf,
}

/// `emperor shim [--] <command>...`; everything else comes from the container's environment.
#[derive(Debug, Args)]
pub struct ShimArgs {
    /// The vassal's command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

/// The emperor's own options.
#[derive(Debug, Args)]
pub struct EmperorArgs {
    /// Directory holding the vassal files (`<name>.ini`), or `pg://<conninfo>[;<query>]`: vassals are the
    /// rows of a PostgreSQL query (uWSGI's pg imperial monitor; README "A fleet of emperors").
    #[arg(value_name = "VASSALS_DIR", required_unless_present_any = ["emperor", "ini"])]
    pub vassals_dir: Option<PathBuf>,

    /// Read these options from the [uwsgi] section (or SECTION) of a uWSGI emperor file, with uWSGI's
    /// names (`emperor = DIR`, `emperor-wrapper`, `emperor-docker-required`, ...; README "Running from a
    /// uWSGI emperor file"). Options on the command line override the file's.
    #[arg(long, value_name = "FILE[:SECTION]")]
    pub ini: Option<String>,

    /// Same as VASSALS_DIR (uWSGI's spelling).
    #[arg(long = "emperor", value_name = "DIR", conflicts_with = "vassals_dir")]
    pub emperor: Option<PathBuf>,

    /// Program run for vassals that have no `exec`, as `<PATH> --ini <file>`.
    #[arg(long, value_name = "PATH", default_value = "uwsgi")]
    pub emperor_wrapper: PathBuf,

    /// Base delay in milliseconds before restarting a vassal that died before it was loyal; grows by this
    /// much with every further such death.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub emperor_throttle: u64,

    /// Upper bound of the throttle delay, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 180_000)]
    pub emperor_max_throttle: u64,

    /// A vassal that sent one heartbeat and then none for this many seconds is killed and restarted.
    #[arg(long, value_name = "S", default_value_t = 30)]
    pub emperor_required_heartbeat: u64,

    /// Seconds a stopping vassal gets before it is killed (its own `stop-timeout` wins).
    #[arg(long, value_name = "S", default_value_t = 30)]
    pub reload_mercy: u64,

    /// Seconds between safety-net rescans of the vassals directory (inotify does the real work).
    #[arg(long, value_name = "S", default_value_t = 10)]
    pub emperor_freq: u64,

    /// A vassal that stays up this many seconds counts as loyal even if it never says so (byte 17), so
    /// that its next death is not throttled.
    #[arg(long, value_name = "S", default_value_t = 10)]
    pub emperor_loyalty_time: u64,

    /// Mode for unix sockets the emperor binds (octal, e.g. 660), unless the vassal sets `chmod-socket`.
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub chmod_socket: Option<u32>,

    /// Owner for unix sockets the emperor binds, unless the vassal sets `chown-socket`.
    #[arg(long, value_name = "USER[:GROUP]")]
    pub chown_socket: Option<String>,

    /// Enable Docker vassals and reap this emperor's orphaned containers at start-up even before any
    /// vassal uses Docker (Docker is enabled anyway as soon as one vassal has `docker-image`).
    #[arg(long)]
    pub emperor_docker: bool,

    /// Refuse vassals without `docker-image` (or `docker-build`).
    #[arg(long)]
    pub emperor_docker_required: bool,

    /// The Docker daemon's socket (default: `DOCKER_HOST`, else /var/run/docker.sock).
    #[arg(long, value_name = "PATH")]
    pub docker_daemon_socket: Option<PathBuf>,

    /// Log the Docker requests the bridges make.
    #[arg(long)]
    pub docker_debug: bool,

    /// Extra `KEY=VALUE` label on every container (repeatable).
    #[arg(long = "docker-label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub docker_labels: Vec<(String, String)>,

    /// Seconds a container gets to connect to its proxy socket before its start counts as failed.
    #[arg(long, value_name = "S", default_value_t = 30)]
    pub docker_connect_timeout: u64,

    /// Put this before every container name (`<prefix><vassal name>`), so that several emperors can
    /// share one Docker daemon with vassals of the same name.
    #[arg(long, value_name = "PREFIX", value_parser = parse_name_prefix, default_value = "")]
    pub docker_name_prefix: String,

    /// Directory for the bridges' private proxy-socket directories.
    #[arg(long, value_name = "DIR", default_value = "/run/emperor")]
    pub emperor_run_dir: PathBuf,

    /// Keep this nginx include file (upstreams + `map $host $emperor_upstream`) in step with the
    /// vassals' `domains`/`domain` lines.
    #[arg(long, value_name = "PATH")]
    pub nginx_map: Option<PathBuf>,

    /// Serve the stats document (JSON) on this unix socket path, @abstract name or IP:port: every client
    /// that connects receives it and the connection is closed (uWSGI's stats server). `emperor status`
    /// reads it.
    #[arg(long, alias = "emperor-stats-server", value_name = "ADDR")]
    pub emperor_stats: Option<String>,

    /// Serve Prometheus metrics over HTTP (`GET /metrics`) on this unix socket path, @abstract name or
    /// IP:port: the stats document's figures, a cold-start histogram per vassal, and the emperor's own.
    #[arg(long, value_name = "ADDR")]
    pub emperor_metrics: Option<String>,

    /// Serve `emperor restart|stop|start` on this unix socket (mode 0600; only root and the emperor's
    /// own uid are served, checked with SO_PEERCRED). Off unless given.
    #[arg(long, value_name = "PATH")]
    pub emperor_control: Option<PathBuf>,

    /// Answer nginx's mail proxy (`auth_http`) on this IP:port or unix socket path: a login
    /// `user@domain` goes to the vassal whose `domains` has that domain (README "Mail tenants").
    #[arg(long, value_name = "ADDR")]
    pub mail_auth: Option<String>,

    /// Command run (split like a shell would, run without one) after the include file changed, e.g.
    /// "nginx -s reload". Its failure is logged, never fatal.
    #[arg(long, value_name = "COMMAND", requires = "nginx_map")]
    pub nginx_reload: Option<String>,

    /// Check every vassal against this policy file before anything is created for it (README "Policy").
    #[arg(long, value_name = "FILE")]
    pub emperor_policy: Option<PathBuf>,

    /// Run each vassal as its file's owner (uWSGI's tyrant mode); files owned by uid 0 or gid 0 are
    /// refused, and without --emperor-policy the built-in policy applies.
    #[arg(long)]
    pub emperor_tyrant: bool,

    /// As --emperor-tyrant, but a symlinked vassal file runs as the symlink's own owner.
    #[arg(long)]
    pub emperor_tyrant_nofollow: bool,

    /// Publish the routes of vassals with domains and a TCP socket to this Redis (`redis://IP:PORT/DB`), in
    /// beachhead's layout, for a front on another host (`emperor front`).
    #[arg(long, value_name = "URL", requires = "routes_address")]
    pub routes_redis: Option<String>,

    /// This host's IP address as the front reaches it: published for sockets bound to every address.
    #[arg(long, value_name = "IP", requires = "routes_redis")]
    pub routes_address: Option<std::net::IpAddr>,

    /// The prefix of the published keys (beachhead's default).
    #[arg(long, value_name = "PREFIX", default_value = "/beachhead/")]
    pub routes_prefix: String,

    /// Seconds a published route lives unless refreshed (it is refreshed at 45 % of this).
    #[arg(long, value_name = "S", default_value_t = 60)]
    pub routes_ttl: u64,

    /// Seconds a host handing a vassal over keeps serving it after withdrawing its route.
    #[arg(long, value_name = "S", default_value_t = 5)]
    pub routes_drain: u64,

    /// Seconds a host handing a vassal over waits for the new host's route before stopping it anyway.
    #[arg(long, value_name = "S", default_value_t = 30)]
    pub routes_handoff_timeout: u64,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode such as 660"))
}

/// Validated emperor settings, shared read-only by every vassal actor.
#[derive(Debug, Clone)]
pub struct EmperorOptions {
    pub vassals_dir: PathBuf,
    pub wrapper: PathBuf,
    pub throttle: Duration,
    pub max_throttle: Duration,
    pub heartbeat: Duration,
    pub reload_mercy: Duration,
    pub freq: Duration,
    pub loyalty_time: Duration,
    pub chmod_socket: Option<u32>,
    pub chown_socket: Option<crate::config::Owner>,
    /// Label value `emperor.instance`: derived from the vassals directory, so a restarted emperor
    /// recognises its containers and two emperors on different directories never reap each other's.
    pub instance: String,
    pub docker: bool,
    pub docker_required: bool,
    pub docker_daemon_socket: Option<PathBuf>,
    pub docker_debug: bool,
    pub docker_labels: Vec<(String, String)>,
    pub docker_connect_timeout: u64,
    /// `--docker-name-prefix`: already checked to make valid Docker names.
    pub docker_name_prefix: String,
    pub run_dir: PathBuf,
    /// `--nginx-map`: the include file `emperor/routes.rs` keeps; absolute once the emperor runs.
    pub nginx_map: Option<PathBuf>,
    /// `--nginx-reload`, split.
    pub nginx_reload: Option<Vec<String>>,
    /// `--emperor-stats`.
    pub stats: Option<String>,
    /// `--emperor-metrics`.
    pub metrics: Option<String>,
    /// `--emperor-control`.
    pub control: Option<PathBuf>,
    /// `--mail-auth`: the address nginx's `auth_http` points at.
    pub mail_auth: Option<String>,
    /// `--emperor-policy`: the policy file (`policy::load`); read again when it changes.
    #[allow(dead_code, reason = "read by the emperor once tyrant mode is wired (issue 12)")]
    pub policy: Option<PathBuf>,
    /// `--emperor-tyrant` or `--emperor-tyrant-nofollow`.
    pub tyrant: bool,
    /// `--emperor-tyrant-nofollow`: the owner of a symlinked vassal file is the symlink's.
    pub tyrant_nofollow: bool,
    /// `pg://...` instead of a directory; `vassals_dir` is then the emperor's working directory, which
    /// relative paths in the rows' configs are resolved against.
    pub pg: Option<crate::fleet::pg::PgSource>,
    /// `--routes-*`.
    pub routes: Option<crate::fleet::publish::RoutesOptions>,
}

impl EmperorArgs {
    /// Turns raw arguments into options, or a message for the user.
    pub fn into_options(self) -> Result<EmperorOptions, String> {
        let mut dir = self.vassals_dir.or(self.emperor).ok_or("no vassals directory given")?;
        let pg = match dir.to_str().and_then(|d| d.strip_prefix("pg://")) {
            Some(spec) => {
                // libpq's default user is the one running it, read from /etc/passwd (no NSS: static binary).
                let me = crate::sys::users::by_uid(nix::unistd::geteuid().as_raw()).map_or("root".into(), |u| u.name);
                let source = crate::fleet::pg::PgSource::parse(spec, &me).map_err(|e| format!("pg://: {e}"))?;
                dir = std::env::current_dir().map_err(|e| format!("cannot read the working directory: {e}"))?;
                Some(source)
            }
            None => None,
        };
        let routes = match (self.routes_redis, self.routes_address) {
            (Some(redis), Some(address)) => {
                if self.routes_prefix.is_empty() {
                    return Err("--routes-prefix: must not be empty".into());
                }
                if self.routes_ttl < 2 {
                    return Err("--routes-ttl: at least 2 seconds".into());
                }
                Some(crate::fleet::publish::RoutesOptions {
                    redis,
                    address,
                    prefix: self.routes_prefix,
                    ttl: Duration::from_secs(self.routes_ttl),
                    drain: Duration::from_secs(self.routes_drain),
                    handoff_timeout: Duration::from_secs(self.routes_handoff_timeout),
                })
            }
            _ => None,
        };
        let chown_socket = match &self.chown_socket {
            Some(s) => Some(crate::config::parse_owner(s).map_err(|e| format!("--chown-socket {s:?}: {e}"))?),
            None => None,
        };
        let nginx_reload = match &self.nginx_reload {
            Some(s) => Some(split_command(s).map_err(|e| format!("--nginx-reload {s:?}: {e}"))?),
            None => None,
        };
        Ok(EmperorOptions {
            vassals_dir: dir,
            wrapper: self.emperor_wrapper,
            throttle: Duration::from_millis(self.emperor_throttle.max(1)),
            max_throttle: Duration::from_millis(self.emperor_max_throttle.max(self.emperor_throttle)),
            heartbeat: Duration::from_secs(self.emperor_required_heartbeat.max(1)),
            reload_mercy: Duration::from_secs(self.reload_mercy),
            freq: Duration::from_secs(self.emperor_freq.max(1)),
            loyalty_time: Duration::from_secs(self.emperor_loyalty_time),
            chmod_socket: self.chmod_socket,
            chown_socket,
            instance: String::new(),
            docker: self.emperor_docker || self.emperor_docker_required,
            docker_required: self.emperor_docker_required,
            docker_daemon_socket: self.docker_daemon_socket,
            docker_debug: self.docker_debug,
            docker_labels: self.docker_labels,
            docker_connect_timeout: self.docker_connect_timeout.max(1),
            docker_name_prefix: self.docker_name_prefix,
            run_dir: self.emperor_run_dir,
            nginx_map: self.nginx_map,
            nginx_reload,
            stats: self.emperor_stats,
            metrics: self.emperor_metrics,
            control: self.emperor_control,
            mail_auth: self.mail_auth,
            policy: self.emperor_policy,
            tyrant: self.emperor_tyrant || self.emperor_tyrant_nofollow,
            tyrant_nofollow: self.emperor_tyrant_nofollow,
            pg,
            routes,
        })
    }
}

/// Why the command line could not be taken.
#[derive(Debug)]
pub enum Refusal {
    /// clap's own error (bad or missing flags, `--help`, `--version`): clap prints and exits.
    Usage(clap::Error),
    /// The `--ini` file: one problem per line, each naming the file, line and key.
    Ini(String),
}

/// The command line, with an `--ini` file's options in front of it (so the command line's win), and the
/// file's one info line about keys that change nothing here. A bare `<FILE>.ini` that is a regular file
/// stands for `--ini <FILE>.ini`, as in uWSGI (a vassals directory named `x.ini` stays a directory).
pub fn parse(argv: Vec<OsString>) -> Result<(Cli, Option<String>), Refusal> {
    // Found before the real parse, which needs the file's options: --nginx-reload on the command line is
    // valid when the file has nginx-map.
    let Some((spec, bare)) = ini_spec(&argv) else {
        return Ok((Cli::try_parse_from(argv).map_err(Refusal::Usage)?, None));
    };
    let file = ini::load(&spec).map_err(Refusal::Ini)?;
    let mut merged = argv;
    let rest = merged.split_off(1.min(merged.len()));
    merged.extend(file.args);
    merged.extend(rest);
    let mut cli = Cli::try_parse_from(merged).map_err(Refusal::Usage)?;
    if bare {
        cli.emperor.vassals_dir = None;
    }
    if cli.emperor.vassals_dir.is_none() && cli.emperor.emperor.is_none() {
        match file.source {
            Some(dir) => cli.emperor.emperor = Some(dir),
            None => {
                return Err(Refusal::Ini(format!(
                    "{spec}: no `emperor = <vassals directory>` in the file, and none on the command line"
                )));
            }
        }
    }
    Ok((cli, file.note))
}

/// The emperor's `--ini` value, or a bare `<FILE>.ini` (then `true`), from a lenient look at `argv`.
fn ini_spec(argv: &[OsString]) -> Option<(String, bool)> {
    use clap::CommandFactory;
    let matches = Cli::command().ignore_errors(true).try_get_matches_from(argv).ok()?;
    if matches.subcommand().is_some() {
        return None;
    }
    if let Ok(Some(spec)) = matches.try_get_one::<String>("ini") {
        return Some((spec.clone(), false));
    }
    let dir = matches.try_get_one::<PathBuf>("vassals_dir").ok()??;
    (dir.extension().is_some_and(|e| e == "ini") && dir.is_file()).then(|| (dir.to_string_lossy().into_owned(), true))
}

/// A command line split as `exec =` is: shell-like quoting, no shell.
fn split_command(s: &str) -> Result<Vec<String>, String> {
    if s.contains('\0') {
        return Err("contains a nul byte".to_owned());
    }
    match shlex::split(s) {
        None => Err("unbalanced quotes or trailing backslash".to_owned()),
        Some(argv) if argv.first().is_none_or(String::is_empty) => Err("empty command".to_owned()),
        Some(argv) => Ok(argv),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(args: &[&str]) -> Result<EmperorOptions, String> {
        let cli =
            Cli::try_parse_from(std::iter::once("emperor").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        cli.emperor.into_options()
    }

    #[test]
    fn nginx_options() {
        let o = options(&["d"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((o.nginx_map, o.nginx_reload), (None, None));
        let o = options(&[
            "--nginx-map",
            "/etc/nginx/r.conf",
            "--nginx-reload",
            "nginx -p '/a b' -s reload",
            "d",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.nginx_map, Some(PathBuf::from("/etc/nginx/r.conf")));
        assert_eq!(
            o.nginx_reload,
            Some(vec![
                "nginx".into(),
                "-p".into(),
                "/a b".into(),
                "-s".into(),
                "reload".into()
            ])
        );
        let e = options(&["--nginx-map", "r.conf", "--nginx-reload", "nginx 'x", "d"]).err();
        assert_eq!(
            e.as_deref(),
            Some("--nginx-reload \"nginx 'x\": unbalanced quotes or trailing backslash")
        );
        let e = options(&["--nginx-map", "r.conf", "--nginx-reload", "''", "d"]).err();
        assert_eq!(e.as_deref(), Some("--nginx-reload \"''\": empty command"));
        // A reload command without a map makes no sense.
        assert!(options(&["--nginx-reload", "nginx -s reload", "d"]).is_err());
    }

    fn bridge_args(argv: Vec<String>) -> BridgeArgs {
        match Cli::try_parse_from(std::iter::once("emperor".to_string()).chain(argv)) {
            Ok(Cli {
                role: Some(Role::Bridge(b)),
                ..
            }) => b,
            other => panic!("not a bridge command line: {other:?}"),
        }
    }

    #[test]
    fn the_bridge_command_line_round_trips() {
        let full = BridgeArgs {
            name: "app.ini".into(),
            file: PathBuf::from("/srv/vassals/app.ini"),
            vassals_dir: PathBuf::from("/srv/vassals"),
            instance: "0123abcd".into(),
            run_dir: PathBuf::from("/run/emperor"),
            labels: vec![("team".into(), "web".into()), ("note".into(), "a=b c".into())],
            docker_debug: true,
            wrapper: "/usr/bin/uwsgi".into(),
            handshake_timeout: 7,
            stop_timeout: 31,
            overlap: true,
            name_prefix: "t1-".into(),
            adopt: Some("0123abcd".into()),
            run_as: Some(crate::config::RunAs { uid: 1000, gid: 100 }),
            owner: Some(crate::config::RunAs { uid: 1001, gid: 101 }),
            policy: Some("builtin".into()),
            replica: Some(3),
            image: Some("emperor/app.ini:0123456789abcdef".into()),
        };
        assert_eq!(bridge_args(full.to_argv()), full);
        let bare = BridgeArgs {
            labels: Vec::new(),
            docker_debug: false,
            overlap: false,
            name_prefix: String::new(),
            adopt: None,
            run_as: None,
            owner: None,
            policy: None,
            replica: None,
            image: None,
            ..full.clone()
        };
        assert_eq!(bridge_args(bare.to_argv()), bare);
        // The exact order the emperor has always used (`emperor/vassal/launch.rs`), flags and labels last.
        assert_eq!(
            full.to_argv(),
            [
                "bridge",
                "--name",
                "app.ini",
                "--file",
                "/srv/vassals/app.ini",
                "--vassals-dir",
                "/srv/vassals",
                "--instance",
                "0123abcd",
                "--run-dir",
                "/run/emperor",
                "--wrapper",
                "/usr/bin/uwsgi",
                "--stop-timeout",
                "31",
                "--handshake-timeout",
                "7",
                "--overlap",
                "--name-prefix",
                "t1-",
                "--adopt",
                "0123abcd",
                "--run-as",
                "1000:100",
                "--owner",
                "1001:101",
                "--policy",
                "builtin",
                "--replica",
                "3",
                "--image",
                "emperor/app.ini:0123456789abcdef",
                "--docker-debug",
                "--label",
                "team=web",
                "--label",
                "note=a=b c",
            ]
        );
    }

    #[test]
    fn a_name_prefix_keeps_container_names_valid() {
        assert_eq!(
            options(&["/v", "--docker-name-prefix", "t1-"])
                .unwrap()
                .docker_name_prefix,
            "t1-"
        );
        assert_eq!(options(&["/v"]).unwrap().docker_name_prefix, "");
        for bad in ["-t1", "t/1", "t 1", ".x", &"x".repeat(65)] {
            let e = options(&["/v", &format!("--docker-name-prefix={bad}")]).unwrap_err();
            assert!(e.contains("cannot start a container name"), "{bad}: {e}");
        }
    }

    #[test]
    fn policy_and_tyrant_options() {
        let o = options(&["d"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((o.policy, o.tyrant, o.tyrant_nofollow), (None, false, false));
        let o = options(&["--emperor-policy", "/etc/emperor/policy.ini", "--emperor-tyrant", "d"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (o.policy, o.tyrant, o.tyrant_nofollow),
            (Some(PathBuf::from("/etc/emperor/policy.ini")), true, false)
        );
        // nofollow is tyrant mode too.
        let o = options(&["--emperor-tyrant-nofollow", "d"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((o.tyrant, o.tyrant_nofollow), (true, true));
    }

    #[test]
    fn check_subcommand() {
        let cli = Cli::try_parse_from(["emperor", "check", "--policy", "p.ini", "--tyrant", "a.ini", "b.ini"]).unwrap();
        match cli.role {
            Some(Role::Check(a)) => {
                assert_eq!(a.policy, Some(PathBuf::from("p.ini")));
                assert!(a.tyrant && !a.tyrant_nofollow);
                assert_eq!(a.files, [PathBuf::from("a.ini"), PathBuf::from("b.ini")]);
            }
            other => panic!("{other:?}"),
        }
        // At least one file.
        assert!(Cli::try_parse_from(["emperor", "check", "--tyrant"]).is_err());
        // A vassals directory named check is ./check.
        assert!(Cli::try_parse_from(["emperor", "./check"]).unwrap().role.is_none());
    }

    fn front(args: &[&str]) -> Result<FrontOptions, String> {
        let cli = Cli::try_parse_from(["emperor", "front"].iter().chain(args)).map_err(|e| e.to_string())?;
        match cli.role {
            Some(Role::Front(a)) => a.into_options(),
            other => panic!("not emperor front: {other:?}"),
        }
    }

    #[test]
    fn front_subcommand() {
        let o = front(&["--redis", "redis://127.0.0.1/0", "--nginx-map", "/etc/nginx/fleet.conf"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            o,
            FrontOptions {
                redis: "redis://127.0.0.1/0".into(),
                nginx_map: PathBuf::from("/etc/nginx/fleet.conf"),
                nginx_reload: None,
                prefix: "/beachhead/".into(),
                reread: Duration::from_secs(5),
            }
        );
        let o = front(&[
            "--redis=redis://127.0.0.1/0",
            "--nginx-map=m.conf",
            "--nginx-reload",
            "nginx -s reload",
            "--routes-prefix",
            "/routes/",
            "--reread",
            "2",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.nginx_reload, Some(vec!["nginx".into(), "-s".into(), "reload".into()]));
        assert_eq!((o.prefix.as_str(), o.reread), ("/routes/", Duration::from_secs(2)));
        let base = ["--redis", "redis://127.0.0.1/0", "--nginx-map", "m.conf"];
        let with = |extra: &[&str]| front(&[&base[..], extra].concat());
        assert!(with(&["--reread", "0"]).is_err_and(|e| e.contains("at least 1")));
        assert!(with(&["--routes-prefix", ""]).is_err_and(|e| e.contains("every key")));
        assert!(with(&["--nginx-reload", "''"]).is_err_and(|e| e.contains("empty command")));
        // Both the server and the file are needed (EMPEROR_REDIS can stand for --redis).
        if std::env::var_os("EMPEROR_REDIS").is_none() {
            assert!(front(&["--nginx-map", "m.conf"]).is_err());
        }
        assert!(front(&["--redis", "redis://127.0.0.1/0"]).is_err());
        // A vassals directory named front is ./front.
        assert!(Cli::try_parse_from(["emperor", "./front"]).unwrap().role.is_none());
    }

    /// A scratch directory for files the command line names.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("emperor-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("vassals")).unwrap();
        dir
    }

    fn parsed(args: &[&str]) -> Result<(Cli, Option<String>), String> {
        let argv = std::iter::once("emperor")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        parse(argv).map_err(|e| match e {
            Refusal::Usage(e) => e.to_string(),
            Refusal::Ini(e) => e,
        })
    }

    fn ini_options(args: &[&str]) -> Result<EmperorOptions, String> {
        parsed(args)?.0.emperor.into_options()
    }

    #[test]
    fn an_ini_file_sets_the_emperor_and_the_command_line_overrides_it() {
        let dir = scratch("ini");
        let file = dir.join("emperor.ini");
        let vassals = dir.join("vassals");
        std::fs::write(
            &file,
            "[uwsgi]\nplugin = docker\nemperor = %dvassals/*.ini\nemperor-docker-required = true\n\
             emperor-wrapper = /usr/bin/uwsgi\nchmod-socket = 660\nemperor-throttle = 500\ndocker-label = a=1\n\
             nginx-map = %dmap.conf\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let (cli, note) = parsed(&["--ini", f]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            note.as_deref(),
            Some(&*format!(
                "{f}: ignored plugin (line 2): only uWSGI's master process or its plugins read them (Docker support is built in)"
            ))
        );
        let o = cli.emperor.into_options().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.vassals_dir, vassals);
        assert!(o.docker && o.docker_required);
        assert_eq!(o.wrapper, PathBuf::from("/usr/bin/uwsgi"));
        assert_eq!(o.chmod_socket, Some(0o660));
        assert_eq!(o.throttle, Duration::from_millis(500));
        assert_eq!(o.docker_labels, [("a".to_owned(), "1".to_owned())]);
        assert_eq!(o.nginx_map, Some(dir.join("map.conf")));

        // The command line wins: a value, the directory (positional or --emperor); lists add up.
        let elsewhere = dir.join("elsewhere");
        let e = elsewhere.to_str().unwrap();
        let o = ini_options(&[
            "--ini",
            f,
            "--chmod-socket",
            "600",
            "--docker-label",
            "b=2",
            "--emperor-throttle=7",
            e,
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((o.chmod_socket, o.throttle), (Some(0o600), Duration::from_millis(7)));
        assert_eq!(o.vassals_dir, elsewhere);
        assert_eq!(o.docker_labels.len(), 2);
        assert_eq!(
            ini_options(&["--emperor", e, "--ini", f]).map(|o| o.vassals_dir),
            Ok(elsewhere.clone())
        );
        // --nginx-reload needs --nginx-map, which the file gives.
        let o = ini_options(&["--ini", f, "--nginx-reload", "nginx -s reload"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.nginx_reload.map(|c| c.len()), Some(3));
        // A bare FILE.ini is --ini FILE.ini, as in uWSGI; a directory named *.ini is still a directory.
        assert_eq!(ini_options(&[f]).map(|o| o.vassals_dir), Ok(vassals.clone()));
        std::fs::create_dir_all(dir.join("dir.ini")).unwrap();
        let d = dir.join("dir.ini");
        assert_eq!(
            ini_options(&[d.to_str().unwrap()]).map(|o| o.vassals_dir),
            Ok(d.clone())
        );
        // Another section.
        std::fs::write(&file, "[uwsgi]\nemperor = /a\n[prod]\nemperor = /b\n").unwrap();
        assert_eq!(
            ini_options(&["--ini", &format!("{f}:prod")]).map(|o| o.vassals_dir),
            Ok(PathBuf::from("/b"))
        );
        // Without a directory anywhere.
        std::fs::write(&file, "[uwsgi]\nemperor-throttle = 5\n").unwrap();
        assert_eq!(
            parsed(&["--ini", f]).err(),
            Some(format!(
                "{f}: no `emperor = <vassals directory>` in the file, and none on the command line"
            ))
        );
        assert!(
            parsed(&["--ini", &dir.join("missing.ini").display().to_string()])
                .is_err_and(|e| e.contains("cannot read"))
        );
        // Subcommands do not read it.
        assert!(parsed(&["status", "--json"]).is_ok_and(|(c, n)| c.role.is_some() && n.is_none()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn status_subcommand_and_a_dir_named_status() {
        let cli = Cli::try_parse_from(["emperor", "status", "--json", "--stats", "127.0.0.1:1"]).unwrap();
        assert!(matches!(cli.role, Some(Role::Status(StatusArgs { json: true, ref stats })) if stats == "127.0.0.1:1"));
        for args in [&["emperor", "./status"][..], &["emperor", "--emperor", "status"]] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert!(cli.role.is_none());
            assert!(cli.emperor.into_options().is_ok());
        }
        let o = options(&["--emperor-stats", "/run/s.sock", "d"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.stats.as_deref(), Some("/run/s.sock"));
    }
}
