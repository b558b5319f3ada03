//! `emperor shell <vassal> [cmd...]`: runs a shell (or a command) inside a Docker vassal's container
//! through the Engine API's exec, like `docker exec -it`.
//!
//! - The container is found by the vassal's name (`app.ini`; `app` is accepted too) and must carry the
//!   label `emperor.vassal`, so a foreign container that happens to have the name is never entered.
//! - When stdin is a terminal the exec gets a tty of the terminal's size (`ConsoleSize`, then a resize
//!   once it runs and on every SIGWINCH), and the local terminal is put in raw mode while attached; the
//!   [`RawMode`] guard restores it on every way out (also on SIGTERM/SIGHUP/SIGINT, which end the session).
//! - Without a terminal the streams are copied as they are: stdout to stdout, stderr to stderr, and EOF
//!   on stdin closes the command's stdin.
//! - The exit status is the command's (`inspect_exec`'s `ExitCode`).
//!
//! A process vassal has no container: there is nothing to enter, and the command says so (exit 2).

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{ResizeExecOptions, StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::query_parameters::InspectContainerOptions;
use futures_util::StreamExt;
use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::ShellArgs;

/// No such vassal, or one that has no container to enter.
const NO_VASSAL: u8 = 2;
/// The Docker daemon could not run the exec (as `docker exec`'s 125).
const DOCKER_FAILED: u8 = 125;

pub fn main(args: ShellArgs) -> ExitCode {
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

/// The container names to try for `arg`: the vassal name itself, and `<arg>.ini` first when `.ini` is
/// left out.
fn candidates(arg: &str) -> Vec<String> {
    if arg.ends_with(".ini") {
        vec![arg.to_owned()]
    } else {
        vec![format!("{arg}.ini"), arg.to_owned()]
    }
}

async fn connect(args: &ShellArgs) -> Result<(Docker, String), String> {
    let (docker, where_) = match &args.docker_daemon_socket {
        Some(p) => {
            let path = p.to_string_lossy();
            (
                Docker::connect_with_unix(&path, 120, bollard::API_DEFAULT_VERSION),
                format!("unix://{path}"),
            )
        }
        None => (
            Docker::connect_with_local_defaults(),
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into()),
        ),
    };
    let unreachable = |e: &dyn std::fmt::Display| {
        format!("cannot reach the Docker daemon at {where_}: {e} (use --docker-daemon-socket or DOCKER_HOST)")
    };
    let docker = docker.map_err(|e| unreachable(&e))?;
    let docker = docker.negotiate_version().await.map_err(|e| unreachable(&e))?;
    Ok((docker, where_))
}

/// Finds the vassal's container: Ok((name, running)), or Err((exit code, message)).
async fn find_container(docker: &Docker, vassal: &str, where_: &str) -> Result<String, (u8, String)> {
    let names = candidates(vassal);
    for name in &names {
        match docker.inspect_container(name, None::<InspectContainerOptions>).await {
            Ok(c) => {
                let labels = c.config.and_then(|c| c.labels).unwrap_or_default();
                if !labels.contains_key("emperor.vassal") {
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
                return Ok(name.clone());
            }
            Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => continue,
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

async fn run(args: ShellArgs) -> u8 {
    let (docker, where_) = match connect(&args).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("emperor shell: {e}");
            return DOCKER_FAILED;
        }
    };
    let container = match find_container(&docker, &args.vassal, &where_).await {
        Ok(c) => c,
        Err((code, msg)) => {
            eprintln!("emperor shell: {msg}");
            return code;
        }
    };
    let tty = std::io::stdin().is_terminal();
    let size = if tty { window_size() } else { None };
    let cmd = if args.command.is_empty() {
        vec!["/bin/sh".to_owned()]
    } else {
        args.command.clone()
    };
    let config = ExecConfig {
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(tty),
        console_size: size.map(|(rows, cols)| vec![usize::from(rows), usize::from(cols)]),
        env: tty.then(|| {
            vec![format!(
                "TERM={}",
                std::env::var("TERM").unwrap_or_else(|_| "xterm".into())
            )]
        }),
        cmd: Some(cmd),
        ..Default::default()
    };
    let exec = match docker.create_exec(&container, config).await {
        Ok(e) => e.id,
        Err(e) => {
            eprintln!("emperor shell: cannot create the exec in {container:?}: {e}");
            return DOCKER_FAILED;
        }
    };
    let start = StartExecOptions {
        detach: false,
        tty,
        output_capacity: None,
    };
    let (mut output, input) = match docker.start_exec(&exec, Some(start)).await {
        Ok(StartExecResults::Attached { output, input }) => (output, input),
        Ok(StartExecResults::Detached) => {
            eprintln!("emperor shell: the exec in {container:?} started detached");
            return DOCKER_FAILED;
        }
        Err(e) => {
            eprintln!("emperor shell: cannot start the exec in {container:?}: {e}");
            return DOCKER_FAILED;
        }
    };

    // From here until the guard drops the terminal is raw; every return below restores it.
    let raw = if tty { RawMode::enter() } else { None };
    if let Some((rows, cols)) = size {
        resize(&docker, &exec, rows, cols).await;
    }
    let stdin_task = tokio::spawn(copy_stdin(input));

    let (mut winch, mut term, mut hup, mut int) = match (
        signal(SignalKind::window_change()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
        _ => {
            drop(raw);
            eprintln!("emperor shell: cannot install signal handlers");
            return DOCKER_FAILED;
        }
    };
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let interrupted = loop {
        tokio::select! {
            item = output.next() => match item {
                Some(Ok(LogOutput::StdErr { message })) => {
                    let _ = stderr.write_all(&message);
                    let _ = stderr.flush();
                }
                Some(Ok(other)) => {
                    let _ = stdout.write_all(&other.into_bytes());
                    let _ = stdout.flush();
                }
                Some(Err(e)) => break Some(Err(e)),
                None => break None,
            },
            _ = winch.recv(), if tty => {
                if let Some((rows, cols)) = window_size() {
                    resize(&docker, &exec, rows, cols).await;
                }
            }
            _ = term.recv() => break Some(Ok(libc::SIGTERM)),
            _ = hup.recv() => break Some(Ok(libc::SIGHUP)),
            _ = int.recv() => break Some(Ok(libc::SIGINT)),
        }
    };
    stdin_task.abort();
    drop(raw);
    match interrupted {
        None => exit_code(&docker, &exec).await,
        // The command keeps running in the container, as after `docker exec` is killed.
        Some(Ok(sig)) => 128 + sig as u8,
        Some(Err(e)) => {
            eprintln!("emperor shell: the exec's stream broke: {e}");
            DOCKER_FAILED
        }
    }
}

/// The command's exit code; the exec may still show as running for a moment after its stream ended.
async fn exit_code(docker: &Docker, exec: &str) -> u8 {
    for _ in 0..100 {
        match docker.inspect_exec(exec).await {
            Ok(r) if r.running != Some(true) => {
                return match r.exit_code {
                    Some(c) => u8::try_from(c.rem_euclid(256)).unwrap_or(DOCKER_FAILED),
                    None => DOCKER_FAILED,
                };
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => {
                eprintln!("emperor shell: cannot read the command's exit code: {e}");
                return DOCKER_FAILED;
            }
        }
    }
    eprintln!("emperor shell: the exec's output ended but it still runs");
    DOCKER_FAILED
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
async fn copy_stdin(mut input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>) {
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

/// The terminal's size as (rows, columns), from stdout or else stdin.
fn window_size() -> Option<(u16, u16)> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ only writes a `struct winsize` through the pointer, which points to a live,
        // properly aligned local of exactly that type; an fd that is not a terminal makes it fail with ENOTTY.
        let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws as *mut libc::winsize) };
        if r == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
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
        assert_eq!(candidates("app.ini"), ["app.ini"]);
        assert_eq!(candidates("app"), ["app.ini", "app"]);
    }
}
