//! `emperor shell <vassal> [cmd...]`: runs a shell (or a command) inside a Docker vassal's container
//! through the Engine API's exec, like `docker exec -it`.
//!
//! - The container is found by the vassal's name (`app.ini`; `app` is accepted too) and must carry the
//!   label `emperor.vassal`, so a foreign container that happens to have the name is never entered.
//! - When stdin is a terminal the exec gets a tty of the terminal's size from its first byte (see
//!   [The tty's size](#the-ttys-size)), follows every SIGWINCH, and the local terminal is put in raw mode
//!   while attached; the [`RawMode`] guard restores it on every way out (also on SIGTERM/SIGHUP/SIGINT,
//!   which end the session).
//! - Without a terminal the streams are copied as they are: stdout to stdout, stderr to stderr, and EOF
//!   on stdin closes the command's stdin.
//! - The exit status is the command's (`inspect_exec`'s `ExitCode`). A command the image does not have
//!   (`/bin/sh` in a `FROM scratch` image) is reported in words with what to type instead, exit 127
//!   (see [A command that cannot run](#a-command-that-cannot-run)).
//!
//! A process vassal has no container: there is nothing to enter, and the command says so (exit 2).
//!
//! # The tty's size
//! A shell reads its tty's size when it starts (`stty size` as the command reads it at once), so the size
//! must be there before the command runs. Docker lets a client give it at exec create (`ConsoleSize`)
//! only from API 1.42 (Docker 23); before that the daemon ignores the field, starts the command on a
//! 0x0 tty and applies the exec's resize only once the command has started, a race the command wins
//! (measured on 20.10: `emperor shell app stty size` failed 10 times out of 10). So:
//! - API >= 1.42: `ConsoleSize` at create;
//! - older daemons, when the container has the emperor's binary (the shim's read-only mount at
//!   [`SHIM_PATH`]): the exec runs `/.emperor/emperor shell <vassal> -- <cmd>` with [`ENV_TTY_SIZE`]
//!   set; that mode ([`inside`]) sets the size on its own tty unless a resize got there first, writes
//!   the [`READY`] marker and execs the command, which keeps the exec's pid, tty and exit status. The
//!   client strips the marker and only then forwards stdin. An emperor binary in the container that
//!   predates this mode (a container created before an upgrade) does not write the marker; the client
//!   then drops that exec and runs the command directly;
//! - otherwise (`docker-shim = false`, or the marker never came): the command runs directly and the
//!   resize follows right after the start, a moment late.
//!
//! Every case also resizes right after the start, so a window changed meanwhile is followed.
//!
//! # A command that cannot run
//! Docker reports an exec whose command is missing only on the attached stream (`OCI runtime exec
//! failed: ... exec: "/bin/sh": stat /bin/sh: no such file or directory`), as exit code 126 or 127,
//! and with the exec's pid left 0 (nothing ran); the in-container mode reports it with the [`FAILED`]
//! marker. Output that begins like the report this exec can give is held back until the stream goes on
//! (then it is the command's, and written out) or the exec ends; if it ended that way (exit code
//! 126/127, and pid 0 for Docker's), the report is replaced by one line saying what to do: which image
//! lacks which command, and how to pass one. Anything else is written out as it was.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{ResizeExecOptions, StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::query_parameters::InspectContainerOptions;
use futures_util::{Stream, StreamExt};
use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::cli::ShellArgs;
use crate::docker::{LABEL_VASSAL, SHIM_PATH, daemon};

/// No such vassal, or one that has no container to enter.
const NO_VASSAL: u8 = 2;
/// The Docker daemon could not run the exec (as `docker exec`'s 125).
const DOCKER_FAILED: u8 = 125;
/// The command exists but cannot be run (shell convention).
const CANNOT_RUN: u8 = 126;
/// The command does not exist in the container (shell convention).
const NOT_FOUND: u8 = 127;

/// Set in the exec's environment (`<rows>x<cols>`) when the command runs through the container's copy
/// of this binary; removed before the command runs.
const ENV_TTY_SIZE: &str = "EMPEROR_SHELL_TTY_SIZE";
/// Written by [`inside`] on the tty once the size is set, right before it execs the command: an APC
/// string, which terminals ignore should one ever get through.
const READY: &[u8] = b"\x1b_emperor-shell:ready\x1b\\";
/// Written by [`inside`] when the exec of the command failed, followed by `notfound` or the errno and
/// `ESC \`.
const FAILED: &[u8] = b"\x1b_emperor-shell:failed:";
/// How Docker's report of an exec it could not start begins (written on the attached stream).
const DOCKER_EXEC_FAILED: &[u8] = b"OCI runtime exec failed";
/// The longest output held back as a possible failure report before it is taken for the command's own.
const HOLD_MAX: usize = 4096;
/// How long the client waits for [`READY`]; it comes within milliseconds when it comes at all.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

type Output = Pin<Box<dyn Stream<Item = Result<LogOutput, DockerError>> + Send>>;
type Input = Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

pub fn main(args: ShellArgs) -> ExitCode {
    if let Some(size) = inside_request() {
        return inside(&args, &size);
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("emperor shell: cannot start its runtime: {e}");
            return ExitCode::from(DOCKER_FAILED);
        }
    };
    let code = rt.block_on(run(args));
    // The stdin reader thread may still be blocked in read(2); leaving main ends it.
    ExitCode::from(code)
}

/// The in-container mode's size, when this process is the container's emperor binary run by an
/// `emperor shell` client (both: the variable alone never turns a host's `emperor shell` into a
/// local command runner).
fn inside_request() -> Option<String> {
    let size = std::env::var(ENV_TTY_SIZE).ok()?;
    let exe = std::env::current_exe().ok()?;
    // A bind mount whose source was replaced on the host reads back as "<path> (deleted)".
    (exe.to_string_lossy().trim_end_matches(" (deleted)") == SHIM_PATH).then_some(size)
}

/// Inside the container, on the exec's tty: sets the tty's size unless a resize got there first,
/// says [`READY`], and execs the command (keeping this pid, so the exec's exit status is the command's).
fn inside(args: &ShellArgs, size: &str) -> ExitCode {
    let parsed = size
        .split_once('x')
        .and_then(|(r, c)| Some((r.parse::<u16>().ok()?, c.parse::<u16>().ok()?)));
    if let Some((rows, cols)) = parsed
        && tty_size(libc::STDIN_FILENO).is_some_and(|s| s == (0, 0))
    {
        set_tty_size(libc::STDIN_FILENO, rows, cols);
    }
    let mut out = std::io::stdout();
    let _ = out.write_all(READY).and_then(|()| out.flush());
    let Some((program, rest)) = args.command.split_first() else {
        let _ = out.write_all(&[FAILED, b"notfound\x1b\\"].concat());
        let _ = out.flush();
        return ExitCode::from(NOT_FOUND);
    };
    let err = std::process::Command::new(program)
        .args(rest)
        .env_remove(ENV_TTY_SIZE)
        .exec();
    let (kind, code) = if missing_in_container(program) {
        ("notfound".to_string(), NOT_FOUND)
    } else {
        (err.raw_os_error().unwrap_or(0).to_string(), CANNOT_RUN)
    };
    let _ = out.write_all(&[FAILED, kind.as_bytes(), b"\x1b\\"].concat());
    let _ = out.flush();
    ExitCode::from(code)
}

/// Is `program` missing (a path that does not exist, or a name in no `PATH` directory)? An exec that
/// failed with ENOENT for a program that does exist lacks its ELF interpreter, which is another story.
fn missing_in_container(program: &str) -> bool {
    if program.contains('/') {
        return std::fs::symlink_metadata(program).is_err();
    }
    let path = std::env::var("PATH").unwrap_or_default();
    !path
        .split(':')
        .filter(|d| !d.is_empty())
        .any(|d| std::path::Path::new(d).join(program).exists())
}

/// The container names to try for `arg`: the vassal name itself, and `<arg>.ini` first when `.ini` is
/// left out; each after the emperor's `--docker-name-prefix`.
fn candidates(prefix: &str, arg: &str) -> Vec<String> {
    if arg.ends_with(".ini") {
        vec![format!("{prefix}{arg}")]
    } else {
        vec![format!("{prefix}{arg}.ini"), format!("{prefix}{arg}")]
    }
}

async fn connect(args: &ShellArgs) -> Result<(Docker, String), String> {
    let socket = args.docker_daemon_socket.as_deref();
    let docker = daemon::connect(socket, daemon::SHELL_TIMEOUT)
        .await
        .map_err(|e| format!("{e} (use --docker-daemon-socket or DOCKER_HOST)"))?;
    Ok((docker, daemon::address(socket)))
}

/// The vassal's running container and what the messages and the choice of exec need from it.
struct Target {
    name: String,
    image: String,
    /// The vassal's own command (the shim's entrypoint left out), for the no-such-command hint.
    command: Vec<String>,
    /// `PATH` in the container's environment.
    path: Option<String>,
    /// The emperor's binary is mounted at [`SHIM_PATH`].
    shim: bool,
}

/// Finds the vassal's running container, or Err((exit code, message)).
async fn find_container(docker: &Docker, args: &ShellArgs, where_: &str) -> Result<Target, (u8, String)> {
    let vassal = args.vassal.as_str();
    let names = candidates(&args.docker_name_prefix, vassal);
    for name in &names {
        match docker.inspect_container(name, None::<InspectContainerOptions>).await {
            Ok(c) => {
                let config = c.config.unwrap_or_default();
                if !config.labels.as_ref().is_some_and(|l| l.contains_key(LABEL_VASSAL)) {
                    return Err((
                        NO_VASSAL,
                        format!(
                            "container {name:?} was not created by an emperor (no label emperor.vassal); not entering it"
                        ),
                    ));
                }
                let running = c.state.and_then(|s| s.running).unwrap_or(false);
                if !running {
                    return Err((
                        DOCKER_FAILED,
                        format!(
                            "vassal {name:?}'s container is not running (it is starting, stopping or throttled); try again"
                        ),
                    ));
                }
                let mut command = config.entrypoint.unwrap_or_default();
                if command.first().map(String::as_str) == Some(SHIM_PATH) {
                    command.clear();
                }
                command.extend(config.cmd.unwrap_or_default());
                let shim = c
                    .mounts
                    .unwrap_or_default()
                    .iter()
                    .any(|m| m.destination.as_deref() == Some(SHIM_PATH));
                return Ok(Target {
                    name: name.clone(),
                    image: config.image.unwrap_or_default(),
                    command,
                    path: config
                        .env
                        .unwrap_or_default()
                        .iter()
                        .find_map(|e| e.strip_prefix("PATH=").map(str::to_owned)),
                    shim,
                });
            }
            Err(e) if daemon::is_not_found(&e) => continue,
            Err(e) => return Err((DOCKER_FAILED, format!("cannot inspect container {name:?}: {e}"))),
        }
    }
    Err((
        NO_VASSAL,
        format!(
            "no vassal {vassal:?}: no container named {} on {where_}. Either there is no such vassal, or it is a \
             process vassal, which has no container to enter (emperor shell only works on Docker vassals)",
            names.join(" or ")
        ),
    ))
}

/// Creates and starts an exec of `cmd` and attaches to it: (exec id, output, input).
async fn start_exec(
    docker: &Docker,
    container: &str,
    cmd: Vec<String>,
    tty: bool,
    size: Option<(u16, u16)>,
    wrapped: bool,
) -> Result<(String, Output, Input), String> {
    let mut env = Vec::new();
    if tty {
        env.push(format!(
            "TERM={}",
            std::env::var("TERM").unwrap_or_else(|_| "xterm".into())
        ));
    }
    let cmd = match size {
        Some((rows, cols)) if wrapped => {
            env.push(format!("{ENV_TTY_SIZE}={rows}x{cols}"));
            let own = [SHIM_PATH, "shell", container, "--"].map(str::to_owned);
            own.into_iter().chain(cmd).collect()
        }
        _ => cmd,
    };
    let config = ExecConfig {
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(tty),
        console_size: size.map(|(rows, cols)| vec![usize::from(rows), usize::from(cols)]),
        env: (!env.is_empty()).then_some(env),
        cmd: Some(cmd),
        ..Default::default()
    };
    let exec = docker
        .create_exec(container, config)
        .await
        .map_err(|e| format!("cannot create the exec in {container:?}: {e}"))?
        .id;
    let start = StartExecOptions {
        detach: false,
        tty,
        output_capacity: None,
    };
    match docker.start_exec(&exec, Some(start)).await {
        Ok(StartExecResults::Attached { output, input }) => Ok((exec, output, input)),
        Ok(StartExecResults::Detached) => Err(format!("the exec in {container:?} started detached")),
        Err(e) => Err(format!("cannot start the exec in {container:?}: {e}")),
    }
}

/// Reads the wrapped exec's output up to [`READY`]: Some(what followed it), or None when the output
/// is something else (the container's binary predates the in-container mode), ends, or takes too long.
async fn await_ready(output: &mut Output) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let read = async {
        while seen.len() < READY.len() {
            match output.next().await {
                Some(Ok(item)) => seen.extend_from_slice(&item.into_bytes()),
                _ => return false,
            }
            let n = seen.len().min(READY.len());
            if seen[..n] != READY[..n] {
                return false;
            }
        }
        true
    };
    match tokio::time::timeout(READY_TIMEOUT, read).await {
        Ok(true) => Some(seen.split_off(READY.len())),
        Ok(false) => {
            log::debug!("no ready marker from {SHIM_PATH} in the container: {seen:?}");
            None
        }
        Err(_) => None,
    }
}

async fn run(args: ShellArgs) -> u8 {
    let outcome = match Session::open(&args).await {
        Ok(session) => session.run().await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(code) => code,
        Err((code, msg)) => {
            eprintln!("emperor shell: {msg}");
            code
        }
    }
}

/// An exec started and attached to: (exec id, output, input).
type Exec = (String, Output, Input);

/// A session's outcome: Ok(the exit code), or Err((exit code, the message to print once the terminal
/// is restored)).
type Outcome = Result<u8, (u8, String)>;

/// One `emperor shell` run, once its container is found.
struct Session {
    docker: Docker,
    target: Target,
    /// What runs: the command given, or `/bin/sh`.
    cmd: Vec<String>,
    /// No command was given (`cmd` is the default shell).
    default_shell: bool,
    /// stdin is a terminal: the exec gets a tty.
    tty: bool,
}

/// How the exec's stream stopped being read.
enum Ended {
    /// The stream ended: the command exited.
    Exited,
    /// A signal ended the session.
    Signal(i32),
    /// The stream broke.
    Broken(DockerError),
}

/// The signals a session follows: window changes, and the ones that end it.
struct Signals {
    winch: Signal,
    term: Signal,
    hup: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> Option<Signals> {
        Some(Signals {
            winch: signal(SignalKind::window_change()).ok()?,
            term: signal(SignalKind::terminate()).ok()?,
            hup: signal(SignalKind::hangup()).ok()?,
            int: signal(SignalKind::interrupt()).ok()?,
        })
    }
}

impl Session {
    async fn open(args: &ShellArgs) -> Result<Session, (u8, String)> {
        let (docker, where_) = connect(args).await.map_err(|e| (DOCKER_FAILED, e))?;
        let target = find_container(&docker, args, &where_).await?;
        let cmd = if args.command.is_empty() {
            vec!["/bin/sh".to_owned()]
        } else {
            args.command.clone()
        };
        Ok(Session {
            docker,
            target,
            cmd,
            default_shell: args.command.is_empty(),
            tty: std::io::stdin().is_terminal(),
        })
    }

    /// Starts the exec and attaches to it until it ends.
    async fn run(&self) -> Outcome {
        let size = if self.tty { window_size() } else { None };
        // See the module doc, "The tty's size".
        let v = self.docker.client_version();
        let console_size = (v.major_version, v.minor_version) >= (1, 42);
        let wrapped = size.is_some() && !console_size && self.target.shim;
        let exec = self.start(size, wrapped).await?;
        // From here until the guard drops the terminal is raw; the message of every way out is printed
        // after it is restored.
        let raw = if self.tty { RawMode::enter() } else { None };
        let outcome = self.attached(exec, size, wrapped).await;
        drop(raw);
        outcome
    }

    async fn start(&self, size: Option<(u16, u16)>, wrapped: bool) -> Result<Exec, (u8, String)> {
        start_exec(
            &self.docker,
            &self.target.name,
            self.cmd.clone(),
            self.tty,
            size,
            wrapped,
        )
        .await
        .map_err(|e| (DOCKER_FAILED, e))
    }

    /// The attached part: stdin copied to the exec, its output out, the window followed, until the
    /// exec ends or a signal ends the session.
    async fn attached(&self, exec: Exec, size: Option<(u16, u16)>, wrapped: bool) -> Outcome {
        let mut signals =
            Signals::install().ok_or_else(|| (DOCKER_FAILED, "cannot install signal handlers".to_owned()))?;
        // Installed before this resize, so a later change of the window is not missed.
        if self.tty {
            self.follow_window(&exec.0).await;
        }
        let ((exec, mut output, input), first, report) = self.ready(exec, size, wrapped).await?;
        let stdin_task = tokio::spawn(copy_stdin(input));
        let mut held = Held::new(report);
        if !first.is_empty() {
            held.push(LogOutput::Console { message: first.into() });
        }
        let ended = self.pump(&exec, &mut output, &mut held, &mut signals).await;
        stdin_task.abort();
        self.conclude(&exec, ended, held).await
    }

    /// A wrapped exec (see the module doc, "The tty's size") once its [`READY`] marker came, with the
    /// output that followed the marker; without the marker, the command started directly instead.
    /// Also returns what a report of a command that could not run looks like on the exec's stream.
    async fn ready(
        &self,
        exec: Exec,
        size: Option<(u16, u16)>,
        wrapped: bool,
    ) -> Result<(Exec, Vec<u8>, &'static [u8]), (u8, String)> {
        if !wrapped {
            return Ok((exec, Vec::new(), DOCKER_EXEC_FAILED));
        }
        let (id, mut output, input) = exec;
        if let Some(rest) = await_ready(&mut output).await {
            return Ok(((id, output, input), rest, FAILED));
        }
        let direct = self.start(size, false).await;
        // Dropping the stream closes that exec's stdin; it ends on its own.
        drop((output, input));
        let direct = direct?;
        self.follow_window(&direct.0).await;
        Ok((direct, Vec::new(), DOCKER_EXEC_FAILED))
    }

    /// Writes the exec's output out (through `held`) and follows the window until the stream stops.
    async fn pump(&self, exec: &str, output: &mut Output, held: &mut Held, signals: &mut Signals) -> Ended {
        loop {
            tokio::select! {
                item = output.next() => match item {
                    Some(Ok(item)) => held.push(item),
                    Some(Err(e)) => return Ended::Broken(e),
                    None => return Ended::Exited,
                },
                _ = signals.winch.recv(), if self.tty => self.follow_window(exec).await,
                _ = signals.term.recv() => return Ended::Signal(libc::SIGTERM),
                _ = signals.hup.recv() => return Ended::Signal(libc::SIGHUP),
                _ = signals.int.recv() => return Ended::Signal(libc::SIGINT),
            }
        }
    }

    /// The exit code, or what to say instead of a held-back report of a command that could not run.
    async fn conclude(&self, exec: &str, ended: Ended, mut held: Held) -> Outcome {
        let (code, started) = match ended {
            Ended::Exited => exit_code(&self.docker, exec).await,
            // The command keeps running in the container, as after `docker exec` is killed.
            Ended::Signal(sig) => (128 + sig as u8, true),
            Ended::Broken(e) => {
                held.flush();
                return Err((DOCKER_FAILED, format!("the exec's stream broke: {e}")));
            }
        };
        // Docker's report counts only if no process ever ran (a command may print the same words); the
        // marker comes from the container's emperor binary, which did run.
        let reported = code == CANNOT_RUN || code == NOT_FOUND;
        let failure = (reported && (held.prefix == FAILED || !started))
            .then(|| held.failure())
            .flatten();
        match failure {
            Some(f) => Err(f.explain(&self.target, &self.cmd, self.default_shell)),
            None => {
                held.flush();
                Ok(code)
            }
        }
    }

    /// Gives the exec the terminal's current size.
    async fn follow_window(&self, exec: &str) {
        if let Some((rows, cols)) = window_size() {
            resize(&self.docker, exec, rows, cols).await;
        }
    }
}

/// Why the command did not run, as Docker or [`inside`] reported it.
#[derive(Debug, PartialEq)]
enum Failure {
    NotFound,
    Other(String),
}

impl Failure {
    /// Parses a whole held-back report (see [`Held`]) of the kind `prefix` begins.
    fn parse(prefix: &[u8], report: &[u8]) -> Option<Failure> {
        if prefix == FAILED {
            let rest = report.strip_prefix(FAILED)?;
            let kind = rest.strip_suffix(b"\x1b\\")?;
            return Some(match kind {
                b"notfound" => Failure::NotFound,
                errno => {
                    let n = std::str::from_utf8(errno).ok()?.parse().ok()?;
                    Failure::Other(std::io::Error::from_raw_os_error(n).to_string())
                }
            });
        }
        if !report.starts_with(DOCKER_EXEC_FAILED) {
            return None;
        }
        let text = String::from_utf8_lossy(report).trim().to_owned();
        // runc: `exec: "/bin/sh": stat /bin/sh: no such file or directory` for a path, `exec: "x":
        // executable file not found in $PATH` for a name. A bare `no such file or directory` from
        // execve itself means a missing ELF interpreter: the program is there.
        let not_found = text.contains("executable file not found")
            || (text.contains(": stat ") && text.contains("no such file or directory"));
        Some(if not_found {
            Failure::NotFound
        } else {
            Failure::Other(text)
        })
    }

    /// The exit code and the line for the user.
    fn explain(&self, t: &Target, cmd: &[String], default_shell: bool) -> (u8, String) {
        let program = cmd.first().map_or("", String::as_str);
        match self {
            Failure::NotFound => {
                let what = if program.contains('/') {
                    program.to_owned()
                } else {
                    format!("{program:?} in its PATH ({})", t.path.as_deref().unwrap_or("not set"))
                };
                let no_shell = if default_shell {
                    ", so there is no shell to run (a FROM scratch image?)"
                } else {
                    ""
                };
                let runs = if t.command.is_empty() {
                    String::new()
                } else {
                    format!(" (the vassal itself runs {})", t.command.join(" "))
                };
                (
                    NOT_FOUND,
                    format!(
                        "the image of {} ({}) has no {what}{no_shell}; pass a command that exists in the image: \
                         emperor shell {} -- COMMAND [ARG]...{runs}",
                        t.name, t.image, t.name
                    ),
                )
            }
            Failure::Other(why) => (CANNOT_RUN, format!("cannot run {program} in {}: {why}", t.name)),
        }
    }
}

/// The exec's output, written out as it comes, except at its start: output that begins like a
/// failure report (`prefix`: [`DOCKER_EXEC_FAILED`] on a direct exec; [`FAILED`] through [`inside`],
/// where Docker's report cannot come from the command) is held back until it goes on past [`HOLD_MAX`]
/// or past something that cannot be one (then it is written out), or the exec ends.
struct Held {
    prefix: &'static [u8],
    /// Where output goes once it is known not to be a report.
    write: fn(LogOutput),
    items: Vec<LogOutput>,
    bytes: Vec<u8>,
    passing: bool,
}

impl Held {
    fn new(prefix: &'static [u8]) -> Held {
        Held {
            prefix,
            write: write_out,
            items: Vec::new(),
            bytes: Vec::new(),
            passing: false,
        }
    }

    fn push(&mut self, item: LogOutput) {
        if self.passing {
            (self.write)(item);
            return;
        }
        self.bytes.extend_from_slice(item.as_ref());
        self.items.push(item);
        // Could the output so far be (the start of) a report? Only the exec's first output is looked at.
        let n = self.bytes.len().min(self.prefix.len());
        if self.bytes[..n] != self.prefix[..n] || self.bytes.len() > HOLD_MAX {
            self.flush();
        }
    }

    /// The report held back, if the output so far is one.
    fn failure(&self) -> Option<Failure> {
        if self.passing {
            return None;
        }
        Failure::parse(self.prefix, &self.bytes)
    }

    fn flush(&mut self) {
        self.passing = true;
        self.bytes.clear();
        for item in self.items.drain(..) {
            (self.write)(item);
        }
    }
}

fn write_out(item: LogOutput) {
    match item {
        LogOutput::StdErr { message } => {
            let mut stderr = std::io::stderr();
            let _ = stderr.write_all(&message);
            let _ = stderr.flush();
        }
        other => {
            let mut stdout = std::io::stdout();
            let _ = stdout.write_all(&other.into_bytes());
            let _ = stdout.flush();
        }
    }
}

/// The command's exit code, and whether a process ever ran (Docker leaves the pid 0 when it could
/// not start the command); the exec may still show as running for a moment after its stream ended.
async fn exit_code(docker: &Docker, exec: &str) -> (u8, bool) {
    for _ in 0..100 {
        match docker.inspect_exec(exec).await {
            Ok(r) if r.running != Some(true) => {
                let started = r.pid.is_some_and(|p| p > 0);
                return match r.exit_code {
                    Some(c) => (u8::try_from(c.rem_euclid(256)).unwrap_or(DOCKER_FAILED), started),
                    None => (DOCKER_FAILED, started),
                };
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => {
                eprintln!("emperor shell: cannot read the command's exit code: {e}");
                return (DOCKER_FAILED, true);
            }
        }
    }
    eprintln!("emperor shell: the exec's output ended but it still runs");
    (DOCKER_FAILED, true)
}

async fn resize(docker: &Docker, exec: &str, rows: u16, cols: u16) {
    let opts = ResizeExecOptions {
        height: rows,
        width: cols,
    };
    if let Err(e) = docker.resize_exec(exec, opts).await {
        log::debug!("resize of exec {exec} to {rows}x{cols}: {e}");
    }
}

/// Copies our stdin into the exec; EOF on stdin closes the exec's stdin (half-close). The reads are
/// blocking, so they run on a plain thread that dies with the process.
async fn copy_stdin(mut input: Input) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let spawned = std::thread::Builder::new().name("stdin".into()).spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    });
    if spawned.is_err() {
        let _ = input.shutdown().await;
        return;
    }
    while let Some(data) = rx.recv().await {
        if input.write_all(&data).await.is_err() || input.flush().await.is_err() {
            return;
        }
    }
    let _ = input.shutdown().await;
}

/// The terminal's size as (rows, columns), from stdout or else stdin; None when neither is a terminal
/// or it reports no size.
fn window_size() -> Option<(u16, u16)> {
    [libc::STDOUT_FILENO, libc::STDIN_FILENO]
        .into_iter()
        .filter_map(tty_size)
        .find(|&(rows, cols)| rows > 0 && cols > 0)
}

/// The size of the terminal on `fd` as (rows, columns), 0x0 included.
fn tty_size(fd: libc::c_int) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ only writes a `struct winsize` through the pointer, which points to a live,
    // properly aligned local of exactly that type; an fd that is not a terminal makes it fail with ENOTTY.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws as *mut libc::winsize) };
    (r == 0).then_some((ws.ws_row, ws.ws_col))
}

/// Sets the size of the terminal on `fd` (the kernel sends SIGWINCH to its foreground group if it changed).
fn set_tty_size(fd: libc::c_int, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ only reads a `struct winsize` through the pointer, which points to a live local of
    // exactly that type; an fd that is not a terminal makes it fail with ENOTTY, which changes nothing.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws as *const libc::winsize) };
}

/// The local terminal in raw mode; dropping it restores the settings it found.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_tried() {
        assert_eq!(candidates("", "app.ini"), ["app.ini"]);
        assert_eq!(candidates("", "app"), ["app.ini", "app"]);
        assert_eq!(candidates("t1-", "app"), ["t1-app.ini", "t1-app"]);
    }

    #[test]
    fn reports_of_a_command_that_did_not_run() {
        let docker = |s: &str| Failure::parse(DOCKER_EXEC_FAILED, s.as_bytes());
        // Docker 20.10 (runc 1.1), then the older runc wording.
        assert_eq!(
            docker(
                "OCI runtime exec failed: exec failed: unable to start container process: exec: \"/bin/sh\": \
                 stat /bin/sh: no such file or directory: unknown\r\n"
            ),
            Some(Failure::NotFound)
        );
        assert_eq!(
            docker(
                "OCI runtime exec failed: exec failed: container_linux.go:380: starting container process caused: \
                 exec: \"x\": executable file not found in $PATH: unknown\r\n"
            ),
            Some(Failure::NotFound)
        );
        let denied = "OCI runtime exec failed: exec failed: unable to start container process: exec: \"/etc\": \
                      permission denied: unknown";
        assert_eq!(docker(denied), Some(Failure::Other(denied.into())));
        // A program that is there but whose ELF interpreter is not.
        assert!(matches!(
            docker("OCI runtime exec failed: exec failed: exec /app: no such file or directory: unknown"),
            Some(Failure::Other(_))
        ));
        assert_eq!(docker("hello"), None);

        let inside = |s: &[u8]| Failure::parse(FAILED, s);
        assert_eq!(
            inside(b"\x1b_emperor-shell:failed:notfound\x1b\\"),
            Some(Failure::NotFound)
        );
        assert!(
            matches!(inside(b"\x1b_emperor-shell:failed:13\x1b\\"), Some(Failure::Other(m)) if m.contains("ermission denied"))
        );
        assert_eq!(inside(b"\x1b_emperor-shell:failed:notfound\x1b\\more"), None);
        // Docker's wording from a command run through the container's binary is the command's output.
        assert_eq!(
            inside(b"OCI runtime exec failed: exec failed: executable file not found"),
            None
        );
    }

    #[test]
    fn output_is_held_only_while_it_may_be_a_report() {
        let console = |s: &str| LogOutput::Console {
            message: s.as_bytes().to_vec().into(),
        };
        let mut h = Held::new(FAILED);
        h.write = |_| {};
        h.push(console("\x1b_emperor-sh"));
        assert!(!h.passing, "a prefix of the marker is held");
        h.push(console("ell:failed:2\x1b\\"));
        assert_eq!(
            h.failure(),
            Some(Failure::Other(std::io::Error::from_raw_os_error(2).to_string()))
        );

        let mut h = Held::new(DOCKER_EXEC_FAILED);
        h.write = |_| {};
        h.push(console(""));
        assert!(!h.passing);
        h.push(console("\x1b_emperor-shell:failed:notfound\x1b\\"));
        assert!(h.passing, "the other kind of report is output");
        assert_eq!(h.failure(), None);
    }

    #[test]
    fn the_message_says_what_to_type() {
        let t = Target {
            name: "docker-hello.ini".into(),
            image: "emperor-test/testapp".into(),
            command: vec!["/testapp".into(), "--name".into(), "docker".into()],
            path: Some("/usr/bin:/bin".into()),
            shim: true,
        };
        let (code, msg) = Failure::NotFound.explain(&t, &["/bin/sh".into()], true);
        assert_eq!(code, NOT_FOUND);
        assert_eq!(
            msg,
            "the image of docker-hello.ini (emperor-test/testapp) has no /bin/sh, so there is no shell to run \
             (a FROM scratch image?); pass a command that exists in the image: emperor shell docker-hello.ini \
             -- COMMAND [ARG]... (the vassal itself runs /testapp --name docker)"
        );
        let (_, msg) = Failure::NotFound.explain(&t, &["ls".into(), "/".into()], false);
        assert!(msg.contains("has no \"ls\" in its PATH (/usr/bin:/bin); pass"), "{msg}");
        let (code, msg) = Failure::Other("Permission denied".into()).explain(&t, &["/etc".into()], false);
        assert_eq!(
            (code, msg.as_str()),
            (CANNOT_RUN, "cannot run /etc in docker-hello.ini: Permission denied")
        );
    }
}
