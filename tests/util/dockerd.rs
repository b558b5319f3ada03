//! A throw-away Docker daemon for the fault tests (tests/cases/faults.rs), never the machine's main one: those
//! tests stop, restart and kill the daemon under a running emperor.
//!
//! Each [`Dockerd`] has its own short root `/tmp/efd-<pid>-<n>/` holding its socket (`d.sock`), `--data-root`
//! (`data/`), `--exec-root` (`x/`, where its containerd keeps its socket: short, for the 108-byte limit of unix
//! socket paths), `--pidfile`, an empty `--config-file` (so a host `/etc/docker/daemon.json` cannot interfere) and
//! its log (`dockerd.log`, whose tail is printed when a test fails). It runs `--bridge=none --iptables=false
//! --ip6tables=false`, with or without `--live-restore`, and is given the test images at start
//! (`docker save` from the main daemon into a tar cached per test process, then `docker load`: about 0.3 s here,
//! against ~1.3 s for `docker build` alone in `scripts/build-images`, which is the fallback).
//!
//! Everything is `&self`, so one daemon can be shared between tests ([`shared`]: tests that never restart it) while
//! a test that restarts one has its own ([`Dockerd::start`]). Drop (also when a test panics): every container
//! removed, SIGTERM, then SIGKILL of whatever is left of dockerd, its containerd, the shims and the container
//! processes under them, every mount under the root detached, the root removed. Roots left by a test process that
//! was killed are cleaned up the same way by the next run (`owner` holds the run label's value).
//!
//! Containers on it carry the run label like every other test container ([`CaseSweep::emperor_args`]) and are
//! swept per test by [`CaseSweep`].

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread;
use std::time::{Duration, Instant};

use super::docker::{
    BUSYBOX_IMAGE, CASE_LABEL_KEY, ContainerRow, DOCKER_TIMEOUT, DockerOutput, TESTAPP_IMAGE, docker_timeout, parse_ps,
    run_label, run_label_value_is_dead,
};
use super::{alive, all_pids, descendants, kill};

/// The images loaded into every throw-away daemon.
const IMAGES: [&str; 3] = [TESTAPP_IMAGE, "emperor-test/testapp:v2", BUSYBOX_IMAGE];

/// How long dockerd gets to answer after it was started.
const ANSWER_DEADLINE: Duration = Duration::from_secs(60);

static ROOTS: AtomicUsize = AtomicUsize::new(0);

/// Options of a daemon's (re)start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Opts {
    pub live_restore: bool,
}

struct State {
    child: Option<Child>,
    opts: Opts,
}

pub struct Dockerd {
    pub root: PathBuf,
    pub sock: PathBuf,
    log: PathBuf,
    state: Mutex<State>,
}

/// Path of dockerd; panics (telling what to do) when it is not installed.
fn dockerd_path() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join("dockerd"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the fault tests start their own Docker daemon, and dockerd is not installed.\n\
                 To fix: run `scripts/setup` as root (it installs Debian's docker.io)."
            )
        })
}

fn run_value() -> &'static str {
    run_label().split_once('=').map(|(_, v)| v).unwrap_or("")
}

impl Dockerd {
    /// Starts a daemon of its own; returns once it answers and holds the test images.
    #[track_caller]
    pub fn start(opts: Opts) -> Arc<Dockerd> {
        dockerd_path();
        reap_dead_roots();
        let root = PathBuf::from(format!(
            "/tmp/efd-{}-{}",
            std::process::id(),
            ROOTS.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&root);
        for d in ["data", "x"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("owner"), run_value()).unwrap();
        fs::write(root.join("daemon.json"), "{}\n").unwrap();
        let d = Arc::new(Dockerd {
            sock: root.join("d.sock"),
            log: root.join("dockerd.log"),
            root,
            state: Mutex::new(State { child: None, opts }),
        });
        d.spawn(opts);
        d.load_images();
        d
    }

    fn spawn(&self, opts: Opts) -> Instant {
        let mut st = self.state.lock().unwrap();
        assert!(st.child.is_none(), "dockerd {} already running", self.sock.display());
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(dockerd_path());
        cmd.args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .arg("-H")
            .arg(self.host())
            .arg("--data-root")
            .arg(self.root.join("data"))
            .arg("--exec-root")
            .arg(self.root.join("x"))
            .arg("--pidfile")
            .arg(self.root.join("d.pid"))
            .arg("--config-file")
            .arg(self.root.join("daemon.json"));
        if opts.live_restore {
            cmd.arg("--live-restore");
        }
        // dockerd finds containerd, its shim and runc on PATH.
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.env("PATH", path)
            .env_remove("DOCKER_HOST")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group: a Ctrl-C meant for the tests is not a daemon stop in the middle of one.
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning dockerd for {}: {e}", self.root.display()));
        st.child = Some(child);
        st.opts = opts;
        drop(st);
        self.wait_answers()
    }

    /// `unix://<socket>`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    /// dockerd's pid, while it runs.
    pub fn pid(&self) -> Option<i32> {
        let mut st = self.state.lock().unwrap();
        let child = st.child.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id() as i32),
            _ => None,
        }
    }

    /// Does the daemon answer `GET /_ping` within 2 s?
    pub fn answers(&self) -> bool {
        let Ok(mut s) = UnixStream::connect(&self.sock) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n").is_err() {
            return false;
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out.starts_with(b"HTTP/1.0 200") || out.starts_with(b"HTTP/1.1 200")
    }

    /// Waits until it answers; returns the instant it first did. Panics with the log's tail if dockerd exits
    /// first or takes longer than a minute.
    #[track_caller]
    fn wait_answers(&self) -> Instant {
        let start = Instant::now();
        loop {
            if self.answers() {
                return Instant::now();
            }
            if self.pid().is_none() {
                panic!(
                    "dockerd exited before answering on {}{}",
                    self.sock.display(),
                    self.tail()
                );
            }
            if start.elapsed() > ANSWER_DEADLINE {
                panic!(
                    "dockerd did not answer on {} within {ANSWER_DEADLINE:?}{}",
                    self.sock.display(),
                    self.tail()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last 40 lines of dockerd's log, for failure messages.
    pub fn tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "\n--- dockerd log {} (tail):\n{}",
            self.log.display(),
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }

    /// SIGTERM to dockerd; waits (up to 60 s) until it and its containerd have exited. Returns how long that took.
    /// With `--live-restore` the containers keep running; without, dockerd stops them first.
    #[track_caller]
    pub fn stop(&self) -> Duration {
        let t = Instant::now();
        let pid = self.pid().expect("dockerd is not running");
        kill(pid, libc::SIGTERM);
        self.wait_exit(Duration::from_secs(60));
        t.elapsed()
    }

    /// SIGKILL to dockerd (its containerd and the shims stay); waits until it has exited.
    pub fn kill(&self) {
        if let Some(pid) = self.pid() {
            kill(pid, libc::SIGKILL);
            self.wait_exit(Duration::from_secs(10));
        }
    }

    #[track_caller]
    fn wait_exit(&self, deadline: Duration) {
        let start = Instant::now();
        loop {
            {
                let mut st = self.state.lock().unwrap();
                match st.child.as_mut().map(Child::try_wait) {
                    Some(Ok(None)) => {}
                    _ => {
                        st.child = None;
                        break;
                    }
                }
            }
            if start.elapsed() > deadline {
                panic!("dockerd did not exit within {deadline:?}{}", self.tail());
            }
            thread::sleep(Duration::from_millis(10));
        }
        // Its containerd goes with it (unless dockerd was killed); a restart must not meet the old one.
        let containerd = || self.processes().into_iter().any(|(_, comm)| comm == "containerd");
        while containerd() && start.elapsed() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts dockerd again on the same directories (after [`Dockerd::stop`] or [`Dockerd::kill`]); returns the
    /// instant it answered.
    #[track_caller]
    pub fn restart(&self, opts: Opts) -> Instant {
        self.spawn(opts)
    }

    /// `--docker-daemon-socket <socket>`, for the emperor.
    pub fn emperor_args(&self) -> Vec<String> {
        vec!["--docker-daemon-socket".into(), self.sock.display().to_string()]
    }

    /// Runs `docker -H <this daemon> <args>` with a timeout.
    pub fn docker_timeout(&self, args: &[&str], timeout: Duration) -> Result<DockerOutput, String> {
        let host = self.host();
        let mut all = vec!["-H", host.as_str()];
        all.extend_from_slice(args);
        docker_timeout(&all, timeout)
    }

    pub fn docker(&self, args: &[&str]) -> Result<DockerOutput, String> {
        self.docker_timeout(args, DOCKER_TIMEOUT)
    }

    /// Runs a docker command on this daemon; its trimmed stdout, or a panic with its stderr.
    #[track_caller]
    pub fn docker_ok(&self, args: &[&str]) -> String {
        match self.docker(args) {
            Ok(o) if o.success => o.stdout.trim().to_string(),
            Ok(o) => panic!(
                "`docker -H {} {}` failed ({:?}): {}",
                self.host(),
                args.join(" "),
                o.code,
                o.stderr.trim()
            ),
            Err(e) => panic!("{e}"),
        }
    }

    /// `docker container inspect --format <format> <name>`, trimmed; None when there is no such container.
    pub fn inspect(&self, name: &str, format: &str) -> Option<String> {
        match self.docker(&["container", "inspect", "--format", format, name]) {
            Ok(o) if o.success => Some(o.stdout.trim().to_string()),
            _ => None,
        }
    }

    /// Every container (any state) carrying `label`, as (id, name, state).
    #[track_caller]
    pub fn containers_with_label(&self, label: &str) -> Vec<ContainerRow> {
        let filter = format!("label={label}");
        parse_ps(&self.docker_ok(&[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &filter,
            "--format",
            "{{.ID}}\t{{.Names}}\t{{.State}}",
        ]))
    }

    /// Force-removes every container carrying all of `labels` (every container with none); returns how many.
    pub fn remove_with_labels(&self, labels: &[&str]) -> usize {
        let mut args = vec!["ps", "-a", "-q", "--no-trunc"];
        let filters: Vec<String> = labels.iter().map(|l| format!("label={l}")).collect();
        for f in &filters {
            args.extend(["--filter", f.as_str()]);
        }
        let ids: Vec<String> = match self.docker(&args) {
            Ok(o) if o.success => o.stdout.split_whitespace().map(str::to_string).collect(),
            _ => return 0,
        };
        if !ids.is_empty() {
            let mut rm = vec!["rm", "-f", "-v"];
            rm.extend(ids.iter().map(String::as_str));
            if let Ok(o) = self.docker(&rm)
                && !o.success
            {
                eprintln!("dockerd {}: rm -f {ids:?}: {}", self.root.display(), o.stderr.trim());
            }
        }
        ids.len()
    }

    /// A per-test label on this daemon, swept when the returned guard drops.
    pub fn case(self: &Arc<Self>) -> CaseSweep {
        static CASES: AtomicUsize = AtomicUsize::new(0);
        CaseSweep {
            dockerd: Arc::clone(self),
            label: format!(
                "{CASE_LABEL_KEY}={}-f{}",
                run_value(),
                CASES.fetch_add(1, Ordering::SeqCst)
            ),
        }
    }

    /// Loads the test images: `docker load` of a tar the main daemon saved once per test process, or, when that
    /// fails, `scripts/build-images` into this daemon.
    fn load_images(&self) {
        static TAR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        let tar = TAR.get_or_init(|| {
            let tar = PathBuf::from(format!("/tmp/efd-images-{}.tar", run_value()));
            let t = tar.display().to_string();
            let mut args = vec!["save", "-o", t.as_str()];
            args.extend(IMAGES);
            match docker_timeout(&args, Duration::from_secs(120)) {
                Ok(o) if o.success => Ok(tar),
                Ok(o) => Err(o.stderr.trim().to_string()),
                Err(e) => Err(e),
            }
        });
        let loaded = match tar {
            Ok(tar) => {
                let t = tar.display().to_string();
                match self.docker_timeout(&["load", "-q", "-i", &t], Duration::from_secs(120)) {
                    Ok(o) if o.success => Ok(()),
                    Ok(o) => Err(o.stderr.trim().to_string()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e.clone()),
        };
        if let Err(why) = loaded {
            eprintln!(
                "dockerd {}: cannot copy the images from the main daemon ({why}); building them",
                self.root.display()
            );
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-images");
            let out = Command::new(&script)
                .args(["testapp", "busybox"])
                .env("DOCKER_HOST", self.host())
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
            assert!(
                out.status.success(),
                "{} into the throw-away daemon failed:\n{}{}",
                script.display(),
                String::from_utf8_lossy(&out.stderr),
                self.tail()
            );
        }
    }

    /// (pid, comm) of the dockerd, containerd and shim processes of this daemon.
    fn processes(&self) -> Vec<(i32, String)> {
        processes_of(&self.root)
    }
}

/// (pid, comm) of dockerd, containerd and containerd-shim processes whose command line names `root`.
fn processes_of(root: &Path) -> Vec<(i32, String)> {
    let needle = root.as_os_str().as_bytes();
    all_pids()
        .into_iter()
        .filter_map(|p| {
            let comm = fs::read_to_string(format!("/proc/{p}/comm")).ok()?;
            let comm = comm.trim().to_string();
            if !(comm.starts_with("dockerd") || comm.starts_with("containerd")) {
                return None;
            }
            let cmd = fs::read(format!("/proc/{p}/cmdline")).ok()?;
            let hit = cmd
                .split(|&b| b == 0)
                .any(|a| a.windows(needle.len()).any(|w| w == needle) && follows_root(a, needle));
            (hit && alive(p)).then_some((p, comm))
        })
        .collect()
}

/// Does `arg` contain `root` followed by `/`, `.`, nothing, or a non-digit (so `/tmp/efd-1-1` does not match
/// `/tmp/efd-1-12`)?
fn follows_root(arg: &[u8], root: &[u8]) -> bool {
    arg.windows(root.len())
        .enumerate()
        .filter(|(_, w)| *w == root)
        .any(|(i, _)| arg.get(i + root.len()).is_none_or(|b| !b.is_ascii_digit()))
}

/// Kills whatever runs of the daemon under `root` (the container processes first, then the shims, containerd and
/// dockerd), detaches every mount under it and removes it.
fn destroy_root(root: &Path) {
    for _ in 0..50 {
        let procs = processes_of(root);
        if procs.is_empty() {
            break;
        }
        let mut victims = vec![];
        for (p, comm) in &procs {
            if comm.starts_with("containerd-shim") {
                victims.extend(descendants(*p));
            }
        }
        victims.extend(procs.iter().map(|(p, _)| *p));
        for p in victims {
            kill(p, libc::SIGKILL);
        }
        thread::sleep(Duration::from_millis(20));
    }
    unmount_under(root);
    if let Err(e) = fs::remove_dir_all(root) {
        unmount_under(root);
        if let Err(e2) = fs::remove_dir_all(root) {
            eprintln!("dockerd: cannot remove {}: {e}; then {e2}", root.display());
        }
    }
}

/// Every mount point under `dir` (and `dir` itself), deepest first, from /proc/self/mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    out.dedup();
    out
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detaches (`umount2(MNT_DETACH)`) every mount under `dir`, repeatedly while any is left (stacked mounts).
pub fn unmount_under(dir: &Path) {
    for _ in 0..5 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for m in mounts {
            umount_detach(&m);
        }
    }
}

fn umount_detach(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

/// Removes the roots (and image tars) that test processes which are gone left in /tmp (killed by a timeout, say).
fn reap_dead_roots() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let Ok(rd) = fs::read_dir("/tmp") else { return };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix("efd-images-")
                && let Some(value) = rest.strip_suffix(".tar")
                && run_label_value_is_dead(value)
            {
                let _ = fs::remove_file(e.path());
            } else if name.starts_with("efd-")
                && let Ok(owner) = fs::read_to_string(e.path().join("owner"))
                && run_label_value_is_dead(owner.trim())
            {
                eprintln!("dockerd: removing {} left by a dead test run", e.path().display());
                destroy_root(&e.path());
            }
        }
    });
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.tail());
        }
        if self.answers() {
            // Every container first, so that none survives a live-restore stop.
            self.remove_with_labels(&[]);
        }
        if let Some(pid) = self.pid() {
            kill(pid, libc::SIGTERM);
            let start = Instant::now();
            while self.pid().is_some() && start.elapsed() < Duration::from_secs(20) {
                thread::sleep(Duration::from_millis(20));
            }
            if let Some(pid) = self.pid() {
                kill(pid, libc::SIGKILL);
            }
        }
        if let Some(mut c) = self.state.lock().unwrap_or_else(|e| e.into_inner()).child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        destroy_root(&self.root);
    }
}

/// The daemon shared by the tests that never stop or restart it: started by the first test that asks, torn down
/// when the last test holding it is done (and started again should a later test ask).
pub fn shared() -> Arc<Dockerd> {
    static SHARED: Mutex<Weak<Dockerd>> = Mutex::new(Weak::new());
    let mut g = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = g.upgrade() {
        return d;
    }
    let d = Dockerd::start(Opts::default());
    *g = Arc::downgrade(&d);
    d
}

/// One test's label on a throw-away daemon; on drop (also when the test panics) every container carrying it is
/// removed. Declare it before the test's `Harness`, so that the emperor is gone first.
pub struct CaseSweep {
    pub dockerd: Arc<Dockerd>,
    label: String,
}

impl CaseSweep {
    pub fn label(&self) -> &str {
        &self.label
    }

    /// `--docker-daemon-socket <socket> --docker-label <run label> --docker-label <case label>`.
    pub fn emperor_args(&self) -> Vec<String> {
        let mut v = self.dockerd.emperor_args();
        v.extend([
            "--docker-label".into(),
            run_label().into(),
            "--docker-label".into(),
            self.label.clone(),
        ]);
        v
    }

    /// This test's containers, as (id, name, state).
    #[track_caller]
    pub fn containers(&self) -> Vec<ContainerRow> {
        self.dockerd.containers_with_label(&self.label)
    }
}

impl Drop for CaseSweep {
    fn drop(&mut self) {
        if self.dockerd.answers() {
            let n = self.dockerd.remove_with_labels(&[run_label(), &self.label]);
            if n > 0 && thread::panicking() {
                eprintln!(
                    "dockerd sweep: removed {n} container(s) of a failed test ({})",
                    self.label
                );
            }
        }
    }
}

/// A small tmpfs mounted on `dir` (created if missing) for the life of the guard: `size` like `1m`, `ro` for a
/// read-only one. Drop detaches it (and removes `dir` if the guard created it).
pub struct Tmpfs {
    pub dir: PathBuf,
    created: bool,
}

impl Tmpfs {
    #[track_caller]
    pub fn mount(dir: &Path, size: &str, read_only: bool) -> Tmpfs {
        let created = !dir.exists();
        fs::create_dir_all(dir).unwrap();
        let guard = Tmpfs {
            dir: dir.to_path_buf(),
            created,
        };
        let opts = format!("size={size},mode=0755");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        if read_only {
            guard.remount(true);
        }
        guard
    }

    /// `mount -o remount,ro|rw`.
    #[track_caller]
    pub fn remount(&self, read_only: bool) {
        let opts = if read_only { "remount,ro" } else { "remount,rw" };
        let out = Command::new("mount")
            .args(["-o", opts])
            .arg(&self.dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount -o {opts} {}: {}",
            self.dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        umount_detach(&self.dir);
        if self.created {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
