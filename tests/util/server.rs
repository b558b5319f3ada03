//! What the tests' throw-away servers have in common (PostgreSQL in [`super::pg`], Redis in [`super::redis`]): a
//! test starts its own, never the machine's service, with a private directory and a loopback port, and it is stopped
//! even when the test fails.
//!
//! - **Root:** `/tmp/emperor-<kind>-<pid>-<n>/` ([`make_root`]) holds the server's data, its log and `owner`, the
//!   test run's id (the value of [`run_label`]). Fixed under /tmp, not `$TMPDIR`: the PostgreSQL server runs as the
//!   `postgres` user, which must reach it, and leftovers must be found by the next run.
//! - **Process:** [`Server::spawn`] puts the server in a process group of its own (a Ctrl-C meant for the tests is
//!   not a shutdown in the middle of one, and the whole group can be killed) and sets `PR_SET_PDEATHSIG`, so that
//!   nothing outlives a test process killed by SIGKILL. The death signal follows the *thread* that spawned the
//!   server: a server belongs to the test that started it; don't start one in a helper thread that ends before the
//!   test does, nor keep one in a static shared between tests.
//! - **Leftovers:** the first start of each kind in a test process kills the processes running in a dead run's
//!   root (or in a root that was removed) and removes those roots ([`reap_leftovers`]).

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::docker::{run_label, run_label_value_is_dead};
use super::{all_pids, kill, proc_state};

static ROOTS: AtomicUsize = AtomicUsize::new(0);

/// How old a root without an `owner` file must be before it counts as abandoned (it may be one being made).
const UNOWNED_GRACE: Duration = Duration::from_secs(60);

fn run_value() -> &'static str {
    run_label().split_once('=').map(|(_, v)| v).unwrap_or("")
}

/// Makes a fresh root `/tmp/emperor-<kind>-<pid>-<n>/` (mode 0755: a server running as another user must reach
/// it) with its `owner` file, after reaping the leftovers of dead runs of this kind.
pub fn make_root(kind: &str) -> PathBuf {
    reap_leftovers(kind);
    let root = PathBuf::from(format!(
        "/tmp/emperor-{kind}-{}-{}",
        std::process::id(),
        ROOTS.fetch_add(1, Ordering::SeqCst)
    ));
    // Only a dead process with this pid can have left one, and reap_leftovers removed it; to be sure.
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).unwrap_or_else(|e| panic!("creating {}: {e}", root.display()));
    fs::write(root.join("owner"), run_value()).unwrap_or_else(|e| panic!("writing {}/owner: {e}", root.display()));
    root
}

/// Removes a root, logging (not panicking: this runs in Drop) when it cannot.
pub fn remove_root(root: &Path) {
    if let Err(e) = fs::remove_dir_all(root)
        && e.kind() != io::ErrorKind::NotFound
    {
        eprintln!("cannot remove {}: {e}", root.display());
    }
}

/// The root a path lies in, if it is one of `kind`'s: `/tmp/emperor-<kind>-<digits>-<digits>[/...]`.
fn root_of(path: &str, kind: &str) -> Option<PathBuf> {
    let rest = path.strip_prefix("/tmp/")?;
    let name = rest.split('/').next()?;
    let (pid, n) = name.strip_prefix(&format!("emperor-{kind}-"))?.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(n)).then(|| Path::new("/tmp").join(name))
}

/// Is this root left by a test run that is over (or gone altogether)?
fn abandoned(root: &Path) -> bool {
    match fs::read_to_string(root.join("owner")) {
        Ok(owner) => run_label_value_is_dead(owner.trim()),
        Err(_) => match fs::metadata(root).and_then(|m| m.modified()) {
            Ok(t) => t.elapsed().unwrap_or_default() > UNOWNED_GRACE,
            Err(_) => true,
        },
    }
}

/// Once per kind and test process: SIGKILLs every process whose working directory is in an abandoned root of this
/// kind or in a removed one (PostgreSQL and Redis both change into their data directory; Redis rewrites its command
/// line, so that is no clue), then removes the abandoned roots.
pub fn reap_leftovers(kind: &str) {
    static DONE: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if done.iter().any(|k| k == kind) {
        return;
    }
    done.push(kind.to_string());

    let mut killed = vec![];
    for pid in all_pids() {
        let Ok(cwd) = fs::read_link(format!("/proc/{pid}/cwd")) else {
            continue;
        };
        let cwd = cwd.to_string_lossy();
        let (path, deleted) = match cwd.strip_suffix(" (deleted)") {
            Some(p) => (p, true),
            None => (&*cwd, false),
        };
        if let Some(root) = root_of(path, kind)
            && (deleted || abandoned(&root))
        {
            eprintln!("{kind}: killing pid {pid}, left running in {cwd} by a dead test run");
            kill(pid, libc::SIGKILL);
            killed.push(pid);
        }
    }
    let start = Instant::now();
    while killed.iter().any(|&p| super::alive(p)) && start.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(20));
    }
    let Ok(entries) = fs::read_dir("/tmp") else { return };
    for e in entries.flatten() {
        if let Some(root) = root_of(&e.path().to_string_lossy(), kind)
            && abandoned(&root)
        {
            eprintln!("{kind}: removing {} left by a dead test run", root.display());
            remove_root(&root);
        }
    }
}

/// The last `n` lines of a file (empty when it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Sends `sig` to the process group `pgid` (never to "every process": pgid > 1 only).
fn kill_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: plain kill(2) of a process group.
        unsafe { libc::kill(-pgid, sig) };
    }
}

/// Why a server did not come up.
pub enum NotReady {
    /// It exited; its status and what it logged in this start.
    Exited(ExitStatus, String),
    /// It still runs but did not answer within the deadline.
    Timeout,
}

impl NotReady {
    /// Did it exit because its port was taken (by something that grabbed the free port first)?
    pub fn port_taken(&self) -> bool {
        matches!(self, NotReady::Exited(_, log) if log.contains("Address already in use"))
    }
}

/// One run of a server process: its own process group, the death signal set, stdout and stderr appended to a log.
pub struct Server {
    child: Child,
    log: PathBuf,
    /// Where this run's lines start in the log, which every run of the server appends to.
    log_from: u64,
}

impl Server {
    /// Spawns `cmd` (its program, arguments, user and environment set) with stdin from /dev/null, stdout and stderr
    /// appended to `log`, in a process group of its own, receiving `death_signal` when the spawning thread ends.
    pub fn spawn(cmd: &mut Command, log: &Path, death_signal: i32) -> Server {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
        let log_from = file.metadata().map(|m| m.len()).unwrap_or(0);
        let parent = std::process::id() as libc::pid_t;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0);
        // SAFETY: the closure runs in the child between fork and exec, after std changed the user, and calls only
        // prctl(2) and getppid(2), which are async-signal-safe; it does not allocate (io::Error from an errno does
        // not). The getppid check closes the race of a parent dying before the prctl.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            })
        };
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {:?}: {e}", cmd.get_program()));
        Server {
            child,
            log: log.to_path_buf(),
            log_from,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What this run logged so far.
    pub fn logged(&self) -> String {
        let mut text = Vec::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.seek(SeekFrom::Start(self.log_from));
            let _ = f.read_to_end(&mut text);
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    /// Polls `ready` every 20 ms until it holds, the process exits, or `deadline` passes.
    pub fn wait_ready(&mut self, deadline: Duration, mut ready: impl FnMut() -> bool) -> Result<(), NotReady> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(NotReady::Exited(status, self.logged()));
            }
            if ready() {
                return Ok(());
            }
            if start.elapsed() > deadline {
                return Err(NotReady::Timeout);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` and waits until the process has exited; after `grace`, SIGKILLs its whole group. Whatever is left
    /// of the group is SIGKILLed before the process is reaped (while its pid, and so the group id, cannot be reused).
    /// Returns its exit status and whether it had to be killed.
    pub fn stop(mut self, sig: i32, grace: Duration) -> (ExitStatus, bool) {
        let pid = self.pid();
        let mut forced = false;
        if let Ok(None) = self.child.try_wait() {
            kill(pid, sig);
            let start = Instant::now();
            while !matches!(proc_state(pid), Some('Z') | None) {
                if !forced && start.elapsed() > grace {
                    kill_group(pid, libc::SIGKILL);
                    forced = true;
                }
                thread::sleep(Duration::from_millis(10));
            }
            kill_group(pid, libc::SIGKILL);
        }
        let status = self.child.wait().expect("waiting for a server process");
        (status, forced)
    }
}

impl Drop for Server {
    /// A backstop for the owners' own stops: SIGKILL of the group if the process still runs.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            kill_group(self.pid(), libc::SIGKILL);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn roots_are_recognised_exactly() {
    assert_eq!(
        root_of("/tmp/emperor-pg-12-0", "pg"),
        Some(PathBuf::from("/tmp/emperor-pg-12-0"))
    );
    assert_eq!(
        root_of("/tmp/emperor-pg-12-3/data", "pg"),
        Some(PathBuf::from("/tmp/emperor-pg-12-3"))
    );
    assert_eq!(root_of("/tmp/emperor-pg-12-3/data", "redis"), None);
    assert_eq!(root_of("/tmp/emperor-pg-freshroot", "pg"), None);
    assert_eq!(root_of("/tmp/emperor-pg-12-", "pg"), None);
    assert_eq!(root_of("/var/tmp/emperor-pg-12-0", "pg"), None);
}
