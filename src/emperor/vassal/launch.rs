//! Starting one instance of a vassal: the seam between the actor and the operating system.
//!
//! The actor decides *when* an instance starts and stops; a [`Launcher`] decides *how*: fork+exec of
//! the vassal's command, or of a bridge that runs it in a container. Everything the actor later does
//! with an instance (wait for it, signal it, talk on its control channel) goes through [`Proc`], so
//! the actor's timing logic can be driven in tests by a fake launcher whose "processes" exit when the
//! test says, with paused time and no fork at all.

use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;

use log::info;
use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::unistd::Pid;
use tokio::net::UnixStream;

use super::error::VassalError;
use crate::cli::EmperorOptions;
use crate::config::VassalConfig;
use crate::emperor::output;
use crate::emperor::sockets::BoundSocket;
use crate::emperor::spawn::{self, Child, Exit, SpawnRequest};

/// A running instance as the actor sees it: a process it can wait for and signal.
pub trait Instance: std::fmt::Debug {
    fn pid(&self) -> Pid;
    /// Completes when the instance has exited. Cancel-safe: the actor polls it in a `select!`.
    fn wait(&mut self) -> Pin<Box<dyn Future<Output = std::io::Result<Exit>> + '_>>;
    fn signal(&self, sig: Signal);
    /// `sig` to the instance's whole process group (SIGSTOP/SIGCONT to pause a process vassal).
    fn signal_group(&self, sig: Signal);
    /// SIGKILL to the instance and whatever it left in its process group.
    fn kill_group(&self);
}

impl Instance for Child {
    fn pid(&self) -> Pid {
        Child::pid(self)
    }
    fn wait(&mut self) -> Pin<Box<dyn Future<Output = std::io::Result<Exit>> + '_>> {
        Box::pin(Child::wait(self))
    }
    fn signal(&self, sig: Signal) {
        Child::signal(self, sig)
    }
    fn signal_group(&self, sig: Signal) {
        let _ = nix::sys::signal::killpg(Child::pid(self), sig);
    }
    fn kill_group(&self) {
        Child::kill_group(self)
    }
}

/// A live instance and the emperor's ends of its channels.
#[derive(Debug)]
pub struct Proc {
    pub child: Box<dyn Instance>,
    /// `None` once the vassal closed its end (it may still be alive).
    pub control: Option<UnixStream>,
    /// The config channel of a Docker `[uwsgi]` vassal.
    pub config: Option<UnixStream>,
    /// A bridge's lifeline: the bridge sees EOF on the other end when the emperor is gone.
    pub _lifeline: Option<OwnedFd>,
    /// A Docker vassal, run by a bridge.
    pub bridged: bool,
    /// It runs uWSGI or has sent a byte: it is stopped with byte 2 rather than a signal.
    pub speaks: bool,
}

/// What a launch needs to know.
pub struct Launch<'a> {
    pub name: &'a str,
    pub cfg: &'a VassalConfig,
    pub opts: &'a EmperorOptions,
    /// The vassal's bound sockets, in declaration order.
    pub sockets: &'a [BoundSocket],
    /// An older container still holds the vassal's name (an overlapping reload of a Docker vassal).
    pub overlap: bool,
    /// Where the instance's output goes.
    pub log: &'a output::Log,
    /// Replica `K` (from 1) of a vassal with `replicas`; `None` for the first (the state machine's).
    pub replica: Option<u32>,
}

/// Starts instances. `Err` is the reason for the log ("cannot execute ..."); the vassal is then throttled.
pub trait Launcher: std::fmt::Debug {
    fn launch(&mut self, l: Launch<'_>) -> Result<Proc, VassalError>;

    /// A bridge that carries on with the running container `container` of a bridge that died (DESIGN.md:
    /// "a bridge that dies is the emperor's business"). It gets the vassal's text and a lifeline only: the
    /// container holds the vassal's sockets and channels, whose emperor ends stay in the instance's
    /// [`Proc`]. Returns the new bridge and the lifeline's write end.
    fn adopt(&mut self, l: Launch<'_>, container: &str) -> Result<(Box<dyn Instance>, OwnedFd), VassalError>;
}

/// A process vassal's command line, and whether it speaks the uWSGI protocol: its `exec` (under this binary's
/// accept role with `accept = true`, which runs the command once per connection), else the wrapper with `--ini`.
fn process_command(cfg: &VassalConfig, opts: &EmperorOptions) -> (Vec<String>, bool) {
    match &cfg.exec {
        Some(a) => match cfg.accept {
            Some(max) => (crate::accept::command(&own_exe(), max, a), false),
            None => (a.clone(), false),
        },
        None => (
            vec![
                opts.wrapper.to_string_lossy().into_owned(),
                "--ini".into(),
                cfg.name.clone(),
            ],
            true,
        ),
    }
}

/// The real thing: fork+exec of the vassal's command, or of a bridge for a Docker vassal.
#[derive(Debug, Default)]
pub struct System;

impl Launcher for System {
    fn launch(&mut self, l: Launch<'_>) -> Result<Proc, VassalError> {
        let (ours, theirs) = channel().map_err(|e| VassalError::create("control channel")(e.into()))?;
        let control = control_stream(ours).map_err(VassalError::set_up("control channel"))?;
        let (out_rx, out_w) = output::pipe().map_err(VassalError::create("output pipe"))?;
        let default_name = fd_name(l.name);
        let names = |socks: &[BoundSocket]| -> Vec<String> {
            socks
                .iter()
                .map(|s| s.spec.name.clone().unwrap_or_else(|| default_name.clone()))
                .collect()
        };
        let cfg = l.cfg;
        let bridged = cfg.docker.is_some();
        // Tyrant mode: a process vassal becomes its file's owner before exec (a bridge stays root: it talks to
        // the daemon; the container gets the owner as its user).
        let (creds, tyrant_env) = match cfg.run_as.filter(|_| !bridged) {
            Some(r) => {
                let (c, e) = creds_of(r);
                (Some(c), e)
            }
            None => (None, Vec::new()),
        };
        let speaks;
        let argv;
        let env;
        let mut extra_fds = vec![(theirs.as_fd(), "UWSGI_EMPEROR_FD")];
        let mut config_chan = None;
        let mut lifeline = None;
        let lifeline_r;
        let config_theirs;
        let (stdin, listen): (Option<_>, &[BoundSocket]) = if bridged {
            // The bridge gets every socket as LISTEN_FDS; the shim places them inside the container.
            speaks = crate::docker::is_uwsgi(cfg);
            argv = bridge_argv(cfg, l.opts, l.overlap, None, l.replica);
            env = bridge_env(cfg, l.opts);
            if speaks {
                let (ours, t) = channel().map_err(|e| VassalError::create("config channel")(e.into()))?;
                config_chan = Some(control_stream(ours).map_err(VassalError::set_up("config channel"))?);
                config_theirs = Some(t);
            } else {
                config_theirs = None;
            }
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| VassalError::create("bridge's lifeline")(e.into()))?;
            lifeline = Some(w);
            lifeline_r = Some(r);
            (None, l.sockets)
        } else {
            config_theirs = None;
            lifeline_r = None;
            (argv, speaks) = process_command(cfg, l.opts);
            env = tyrant_env.iter().cloned().chain(cfg.env.iter().cloned()).collect();
            // A uWSGI vassal (run through the wrapper) gets its first socket as fd 0, uWSGI's own
            // convention for emperor-owned sockets and the only place a socket survives its reload.
            match l.sockets.split_first() {
                Some((first, rest)) if cfg.exec.is_none() => (Some(first.fd()), rest),
                _ => (None, l.sockets),
            }
        };
        if let Some(fd) = &config_theirs {
            extra_fds.push((fd.as_fd(), "UWSGI_EMPEROR_FD_CONFIG"));
        }
        if let Some(fd) = &lifeline_r {
            extra_fds.push((fd.as_fd(), crate::cli::ENV_LIFELINE_FD));
        }
        let cwd = cfg.chdir.clone().unwrap_or_else(|| l.opts.vassals_dir.clone());
        crate::emperor::sockets::set_nonblocking(l.sockets, cfg.socket_nonblocking).map_err(VassalError::Socket)?;
        let stderr = std::io::stderr();
        let req = SpawnRequest {
            argv: &argv,
            // A bridge (and the accept role) is this very binary, also after it was replaced on disk.
            program: (bridged || cfg.accept.is_some()).then_some(std::path::Path::new("/proc/self/exe")),
            env,
            cwd: &cwd,
            sockets: listen.iter().map(|s| s.fd()).zip(names(listen)).collect(),
            extra_fds,
            stdin,
            output: out_w.as_fd(),
            stderr: bridged.then(|| stderr.as_fd()),
            pdeathsig: if bridged { Signal::SIGTERM } else { Signal::SIGKILL },
            creds: creds.as_ref(),
        };
        let child = spawn::spawn(req).map_err(VassalError::Spawn)?;
        drop((out_w, theirs, config_theirs, lifeline_r));
        l.log.reopen();
        tokio::task::spawn_local(output::forward(l.log.clone(), out_rx));
        let pid = child.pid().as_raw();
        let tag = l.replica.map(|k| format!("#{k}")).unwrap_or_default();
        if bridged {
            info!(
                "[{}{tag}] spawned bridge pid {pid} for image {}",
                l.name,
                cfg.docker.as_ref().map_or("", |d| &d.image)
            );
        } else {
            info!("[{}{tag}] spawned pid {pid}: {}", l.name, argv.join(" "));
        }
        Ok(Proc {
            child: Box::new(child),
            control: Some(control),
            config: config_chan,
            _lifeline: lifeline,
            bridged,
            speaks,
        })
    }
    fn adopt(&mut self, l: Launch<'_>, container: &str) -> Result<(Box<dyn Instance>, OwnedFd), VassalError> {
        let (out_rx, out_w) = output::pipe().map_err(VassalError::create("output pipe"))?;
        let (lifeline_r, lifeline) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| VassalError::create("bridge's lifeline")(e.into()))?;
        let argv = bridge_argv(l.cfg, l.opts, false, Some(container), l.replica);
        let stderr = std::io::stderr();
        let req = SpawnRequest {
            argv: &argv,
            program: Some(std::path::Path::new("/proc/self/exe")),
            env: bridge_env(l.cfg, l.opts),
            cwd: l.cfg.chdir.as_deref().unwrap_or(l.opts.vassals_dir.as_path()),
            sockets: Vec::new(),
            extra_fds: vec![(lifeline_r.as_fd(), crate::cli::ENV_LIFELINE_FD)],
            stdin: None,
            output: out_w.as_fd(),
            stderr: Some(stderr.as_fd()),
            pdeathsig: Signal::SIGTERM,
            creds: None,
        };
        let child = spawn::spawn(req).map_err(VassalError::Spawn)?;
        drop((out_w, lifeline_r));
        l.log.reopen();
        tokio::task::spawn_local(output::forward(l.log.clone(), out_rx));
        info!(
            "[{}] spawned bridge pid {} to carry on with container {}",
            l.name,
            child.pid(),
            crate::docker::short(container)
        );
        Ok((Box::new(child), lifeline))
    }
}

/// The user a tyrant-mode vassal becomes: its file's uid and gid, plus the supplementary groups of the user
/// with that uid if there is one (as `login` would give them), and `USER`, `LOGNAME` and `HOME` for it.
fn creds_of(r: crate::config::RunAs) -> (crate::sys::fork::Creds, Vec<(String, String)>) {
    let tenant = crate::sys::tenant::Tenant::of(r.uid, r.gid);
    let mut env = Vec::new();
    if let Some(u) = crate::sys::users::by_uid(r.uid) {
        env.push(("USER".into(), u.name.clone()));
        env.push(("LOGNAME".into(), u.name));
        env.push(("HOME".into(), u.home.to_string_lossy().into_owned()));
    }
    let creds = crate::sys::fork::Creds {
        uid: r.uid,
        gid: r.gid,
        groups: tenant.groups,
    };
    (creds, env)
}

/// The environment of every bridge: the vassal file's text (the file may change on disk meanwhile) and the
/// daemon to use.
fn bridge_env(cfg: &VassalConfig, opts: &EmperorOptions) -> Vec<(String, String)> {
    let mut env = vec![(crate::cli::ENV_VASSAL_TEXT.to_string(), cfg.text.clone())];
    if let Some(sock) = &opts.docker_daemon_socket {
        env.push(("DOCKER_HOST".into(), format!("unix://{}", sock.display())));
    }
    env
}

/// The bridge's command line: `argv[0]` is what `ps` shows; the program itself is /proc/self/exe (see
/// `launch`), which still works after the binary was replaced on disk (an upgrade in place, a rebuild).
fn bridge_argv(
    cfg: &VassalConfig,
    opts: &EmperorOptions,
    overlap: bool,
    adopt: Option<&str>,
    replica: Option<u32>,
) -> Vec<String> {
    let exe = own_exe();
    let args = crate::cli::BridgeArgs {
        name: cfg.name.clone(),
        file: cfg.path.clone(),
        vassals_dir: opts.vassals_dir.clone(),
        instance: opts.instance.clone(),
        run_dir: opts.run_dir.clone(),
        labels: opts
            .docker_labels
            .iter()
            .cloned()
            .chain(replica.map(|k| (crate::docker::LABEL_REPLICA.to_string(), k.to_string())))
            .collect(),
        docker_debug: opts.docker_debug,
        wrapper: opts.wrapper.to_string_lossy().into_owned(),
        handshake_timeout: opts.docker_connect_timeout,
        stop_timeout: docker_stop_secs(cfg, opts),
        overlap,
        name_prefix: opts.docker_name_prefix.clone(),
        adopt: adopt.map(String::from),
        run_as: cfg.run_as,
        owner: cfg.owner,
        policy: match &opts.policy {
            Some(p) => Some(p.to_string_lossy().into_owned()),
            None => opts.tyrant.then(|| "builtin".to_string()),
        },
        replica,
        image: cfg
            .docker
            .as_ref()
            .filter(|d| d.build.is_some())
            .map(|d| d.image.clone()),
    };
    std::iter::once(exe).chain(args.to_argv()).collect()
}

/// This binary's path, for the `argv[0]` of the roles it runs as (what `ps` shows).
fn own_exe() -> String {
    std::env::current_exe().map_or_else(|_| "emperor".into(), |p| p.to_string_lossy().into_owned())
}

/// Seconds `docker stop` gives a Docker vassal; the emperor itself waits 10 s longer for its bridge.
fn docker_stop_secs(cfg: &VassalConfig, opts: &EmperorOptions) -> u64 {
    cfg.stop_timeout.unwrap_or(opts.reload_mercy).as_secs_f64().ceil() as u64
}

/// The default LISTEN_FDNAMES entry: the vassal name without `.ini`, made safe for the ':'-separated list.
pub fn fd_name(vassal: &str) -> String {
    let stem = vassal.strip_suffix(".ini").unwrap_or(vassal);
    stem.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A `socketpair(AF_UNIX, SOCK_STREAM)`, both ends CLOEXEC; uWSGI's emperor uses the same kind.
pub fn channel() -> nix::Result<(OwnedFd, OwnedFd)> {
    socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
}

pub fn control_stream(fd: OwnedFd) -> std::io::Result<UnixStream> {
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    std_stream.set_nonblocking(true)?;
    UnixStream::from_std(std_stream)
}

/// Writes a small frame on a non-blocking stream that has room for it (a fresh socket buffer holds
/// far more than a vassal file). A plain write(2): tokio's `try_write` reports WouldBlock on a stream
/// it has not polled yet, which would lose the first push right after spawn.
pub fn write_all_now(chan: &UnixStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match nix::unistd::write(chan, buf) {
            Ok(n) => buf = &buf[n..],
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Waits for the instance to exit; never completes when there is none.
pub async fn wait_child(child: Option<&mut Box<dyn Instance>>) -> std::io::Result<Exit> {
    crate::emperor::wait::or_never(child.map(|c| c.wait())).await
}

/// Reads whatever bytes the vassal sent; empty means EOF; never completes without a channel.
/// Cancel-safe.
pub async fn read_control(control: Option<&mut UnixStream>) -> Vec<u8> {
    let Some(control) = control else {
        return std::future::pending().await;
    };
    let mut buf = [0u8; 64];
    loop {
        if control.readable().await.is_err() {
            return Vec::new();
        }
        match control.try_read(&mut buf) {
            Ok(n) => return buf[..n].to_vec(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_names_are_safe_for_the_colon_separated_list() {
        assert_eq!(fd_name("shop.ini"), "shop");
        assert_eq!(fd_name("a:b c.ini"), "a_b_c");
        assert_eq!(fd_name("x.y-z_1"), "x.y-z_1");
    }
}
