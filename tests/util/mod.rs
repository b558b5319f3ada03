//! Test harness: a temp dir per test, the real `emperor` binary, captured output, bounded waits, and a Drop guard
//! that leaves no process behind even when a test fails.

#![allow(dead_code)]

pub mod docker;
pub mod dockerd;
pub mod nginx;
pub mod pg;
pub mod redis;
pub mod server;
pub mod smtp;

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const EMPEROR: &str = env!("CARGO_BIN_EXE_emperor");

/// Generous deadline for things that must happen.
pub const LONG: Duration = Duration::from_secs(15);

/// Path of the `testapp` example, built once per test run (`cargo test --test tests` does not build examples).
pub fn testapp() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let manifest = env!("CARGO_MANIFEST_DIR");
        // The test binary lives in target/<triple>/<profile>/deps/; build the example for the same profile.
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target profile dir")
            .to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let out = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--example", "testapp", "--manifest-path"])
            .arg(Path::new(manifest).join("Cargo.toml"))
            .args(release.then_some("--release"))
            .stdin(Stdio::null())
            .output()
            .expect("running cargo build --example testapp");
        assert!(
            out.status.success(),
            "cargo build --example testapp failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let p = profile_dir.join("examples").join("testapp");
        assert!(p.exists(), "testapp not found at {}", p.display());
        p
    })
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i128
}

/// One line of a testapp record file: `kind key=value ...`.
#[derive(Debug, Clone)]
pub struct Record {
    pub kind: String,
    pub fields: HashMap<String, String>,
}

impl Record {
    pub fn get(&self, k: &str) -> &str {
        self.fields
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("record {self:?} has no field {k}"))
    }
    pub fn pid(&self) -> i32 {
        self.get("pid").parse().unwrap()
    }
    pub fn t_ns(&self) -> i128 {
        self.get("t_ns").parse().unwrap()
    }
}

pub fn parse_records(text: &str) -> Vec<Record> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut it = l.split(' ');
            let kind = it.next().unwrap_or_default().to_string();
            let fields = it
                .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                .collect();
            Record { kind, fields }
        })
        .collect()
}

/// Is the process running (exists and is not a zombie)?
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // state is the first field after the ")" that closes comm.
            let state = s
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// Process state letter (R, S, T, Z...) or None if gone.
pub fn proc_state(pid: i32) -> Option<char> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
}

/// (ppid, pgid) of a process.
pub fn ppid_pgid(pid: i32) -> Option<(i32, i32)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(1)?.parse().ok()?, f.get(2)?.parse().ok()?))
}

pub fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|rd| rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Live (non-zombie) processes whose process group is `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| ppid_pgid(p).map(|(_, g)| g) == Some(pgid) && alive(p))
        .collect()
}

/// All live descendants of `root`.
pub fn descendants(root: i32) -> Vec<i32> {
    let table: Vec<(i32, i32)> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, ppid_pgid(p)?.0)))
        .collect();
    let mut out = vec![];
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(c, pp) in &table {
            if pp == p && !out.contains(&c) {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

pub fn kill(pid: i32, sig: i32) {
    if pid > 1 {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid, sig) };
    }
}

fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Runs `cmd` to its end with `input` on its stdin (closed after it), killing it after `timeout`; `what` names it in
/// errors (e.g. "`docker ps`"). Err only when it could not run or timed out: a failure is in the Output's status.
pub fn run_timeout(cmd: &mut Command, what: &str, input: &[u8], timeout: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Written from a thread: a large input must not block against an output pipe nobody reads yet.
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} timed out after {timeout:?}"));
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
    };
    let _ = writer.join();
    Ok(Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

fn exchange<S: Read + Write>(mut s: S) -> std::io::Result<String> {
    s.write_all(REQUEST)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    if out.is_empty() {
        return Err(std::io::Error::other("empty response"));
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// HTTP GET over a unix socket path (or `@abstract`), with a timeout on reads and writes.
pub fn http_get_unix(path: impl AsRef<Path>, timeout: Duration) -> std::io::Result<String> {
    let path = path.as_ref();
    let s = match path.as_os_str().as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            UnixStream::connect_addr(&SocketAddr::from_abstract_name(name)?)?
        }
        None => UnixStream::connect(path)?,
    };
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    exchange(s)
}

/// HTTP GET over TCP to 127.0.0.1:port.
pub fn http_get_tcp(port: u16, timeout: Duration) -> std::io::Result<String> {
    let s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    exchange(s)
}

/// Set a file's mtime (and atime) to now, like `touch`. If the clock tick did not move the mtime, push it 10 ms on.
pub fn touch(path: impl AsRef<Path>) {
    let path = path.as_ref();
    let before = fs::metadata(path).and_then(|m| m.modified()).ok();
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let now = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_NOW,
    };
    // SAFETY: valid path and two timespecs.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [now, now].as_ptr(), 0) };
    assert_eq!(r, 0, "touch {}: {}", path.display(), std::io::Error::last_os_error());
    let after = fs::metadata(path).and_then(|m| m.modified()).ok();
    if before.is_some() && before == after {
        let t = after.unwrap().duration_since(UNIX_EPOCH).unwrap() + Duration::from_millis(10);
        let ts = libc::timespec {
            tv_sec: t.as_secs() as _,
            tv_nsec: t.subsec_nanos() as _,
        };
        // SAFETY: as above.
        let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [ts, ts].as_ptr(), 0) };
        assert_eq!(r, 0, "touch {}: {}", path.display(), std::io::Error::last_os_error());
    }
}

type Buf = Arc<Mutex<String>>;

fn capture(stream: impl Read + Send + 'static, buf: Buf, echo: bool) {
    thread::spawn(move || {
        let mut r = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let s = String::from_utf8_lossy(&line);
                    if echo {
                        eprint!("{s}");
                    }
                    buf.lock().unwrap().push_str(&s);
                }
            }
        }
    });
}

/// One test's world: a temp dir with `vassals/`, `run/`, `rec/` and `elsewhere/`, and at most one running emperor.
pub struct Harness {
    pub root: PathBuf,
    pub name: String,
    child: Option<Child>,
    pub emperor_pid: i32,
    stdout: Buf,
    stderr: Buf,
    exit: Option<ExitStatus>,
    /// Extra pids to kill on drop (e.g. found through logs).
    pub extra_pids: Mutex<Vec<i32>>,
}

impl Harness {
    pub fn new(name: &str) -> Harness {
        let short: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect();
        let root = std::env::temp_dir().join(format!(
            "emp-{short}-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            now_ns() % 1_000_000
        ));
        for d in ["vassals", "run", "rec", "elsewhere"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        Harness {
            root,
            name: name.to_string(),
            child: None,
            emperor_pid: 0,
            stdout: Arc::default(),
            stderr: Arc::default(),
            exit: None,
            extra_pids: Mutex::default(),
        }
    }

    pub fn vassals(&self) -> PathBuf {
        self.root.join("vassals")
    }
    pub fn vassal(&self, file: &str) -> PathBuf {
        self.vassals().join(file)
    }
    /// A path in `run/` for a unix socket.
    pub fn sock(&self, name: &str) -> PathBuf {
        self.root.join("run").join(name)
    }
    pub fn rec_path(&self, name: &str) -> PathBuf {
        self.root.join("rec").join(format!("{name}.rec"))
    }

    /// `exec = <testapp> --record <rec/NAME.rec> --name NAME <extra>`; the record is named after `name`.
    pub fn exec_line(&self, name: &str, extra: &str) -> String {
        format!(
            "exec = {} --record {} --name {name} {extra}\n",
            testapp().display(),
            self.rec_path(name).display()
        )
    }

    /// A typical testapp vassal file with one unix socket `run/<name>.sock`.
    pub fn app_ini(&self, name: &str, extra_args: &str) -> String {
        format!(
            "[emperor]\nsocket = {}\n{}",
            self.sock(&format!("{name}.sock")).display(),
            self.exec_line(name, extra_args)
        )
    }

    /// Write a vassal file atomically (temp dotfile, then rename).
    pub fn write_vassal(&self, file: &str, content: &str) {
        write_atomic(&self.vassal(file), content);
    }
    pub fn touch_vassal(&self, file: &str) {
        touch(self.vassal(file));
    }
    pub fn remove_vassal(&self, file: &str) {
        fs::remove_file(self.vassal(file)).unwrap();
    }

    /// Start the emperor on `vassals/` with extra options.
    pub fn start(&mut self, args: &[&str]) {
        let _ = testapp();
        let vassals = self.vassals();
        self.spawn(args.iter().map(OsStr::new).chain([vassals.as_os_str()]));
    }

    /// Start the binary in another role (`front ...`), with `args` as given: output, waits and the
    /// clean-up on drop as for the emperor.
    pub fn start_role(&mut self, args: &[&str]) {
        self.spawn(args.iter().map(OsStr::new));
    }

    fn spawn<'a>(&mut self, args: impl IntoIterator<Item = &'a OsStr>) {
        assert!(self.child.is_none(), "emperor already started");
        let level = std::env::var("EMPEROR_TEST_LOG").unwrap_or_else(|_| "info".to_string());
        let echo = std::env::var_os("EMPEROR_TEST_ECHO").is_some();
        let mut cmd = Command::new(EMPEROR);
        cmd.args(args)
            .env("EMPEROR_LOG", level)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("UWSGI_EMPEROR_FD")
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {EMPEROR}: {e}"));
        capture(child.stdout.take().unwrap(), Arc::clone(&self.stdout), echo);
        capture(child.stderr.take().unwrap(), Arc::clone(&self.stderr), echo);
        self.emperor_pid = child.id() as i32;
        self.child = Some(child);
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The emperor's log lines (stderr) that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.stderr()
            .lines()
            .filter(|l| l.contains(needle))
            .map(String::from)
            .collect()
    }

    /// The emperor's `spawned pid` log lines: one per process vassal it started.
    pub fn spawned(&self) -> Vec<String> {
        self.stderr()
            .lines()
            .filter(|l| l.contains("spawned pid"))
            .map(String::from)
            .collect()
    }
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// The vassal `file`'s output lines (the emperor's stdout with the `[file] ` prefix), prefix and a tty's `\r`
    /// removed.
    pub fn vassal_output(&self, file: &str) -> Vec<String> {
        let tag = format!("[{file}] ");
        self.stdout()
            .lines()
            .filter_map(|l| l.strip_prefix(&tag).map(|s| s.trim_end_matches('\r').to_string()))
            .collect()
    }

    /// Last lines of the emperor's output, for failure messages.
    pub fn tail(&self) -> String {
        fn last(s: &str, n: usize) -> String {
            let v: Vec<&str> = s.lines().collect();
            v[v.len().saturating_sub(n)..].join("\n")
        }
        let mut recs = String::new();
        if let Ok(rd) = fs::read_dir(self.root.join("rec")) {
            for e in rd.flatten() {
                recs.push_str(&format!(
                    "--- {}:\n{}",
                    e.file_name().to_string_lossy(),
                    fs::read_to_string(e.path()).unwrap_or_default()
                ));
            }
        }
        format!(
            "\n===== test {} (dir {}) emperor: {EMPEROR} =====\n--- emperor stderr (tail):\n{}\n--- emperor stdout (tail):\n{}\n--- records:\n{}=====",
            self.name,
            self.root.display(),
            last(&self.stderr(), 60),
            last(&self.stdout(), 30),
            recs
        )
    }

    /// Poll `cond` every 15 ms until it holds; panic with the output tail after `deadline`.
    pub fn wait_for(&self, mut cond: impl FnMut() -> bool, deadline: Duration, what: &str) {
        let start = Instant::now();
        loop {
            if cond() {
                return;
            }
            if start.elapsed() > deadline {
                panic!("timed out after {deadline:?} waiting for {what}{}", self.tail());
            }
            thread::sleep(Duration::from_millis(15));
        }
    }

    /// Assert with the output tail in the message.
    #[track_caller]
    pub fn check(&self, cond: bool, what: impl std::fmt::Display) {
        if !cond {
            panic!("check failed: {what}{}", self.tail());
        }
    }

    pub fn records(&self, name: &str) -> Vec<Record> {
        fs::read_to_string(self.rec_path(name))
            .map(|t| parse_records(&t))
            .unwrap_or_default()
    }
    pub fn starts(&self, name: &str) -> Vec<Record> {
        self.records(name).into_iter().filter(|r| r.kind == "start").collect()
    }

    /// Wait until `name` has at least `n` start records; return them.
    pub fn wait_starts(&self, name: &str, n: usize, deadline: Duration) -> Vec<Record> {
        self.wait_for(
            || self.starts(name).len() >= n,
            deadline,
            &format!("{n} start(s) of {name}"),
        );
        self.starts(name)
    }

    /// The pid of the first bridge the emperor logged spawning.
    pub fn bridge_pid(&self) -> i32 {
        self.stderr()
            .lines()
            .find_map(|l| {
                l.split("spawned bridge pid ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .expect("the bridge's pid in the log")
    }

    pub fn wait_dead(&self, pid: i32, deadline: Duration, what: &str) {
        self.wait_for(|| !alive(pid), deadline, &format!("pid {pid} ({what}) to be gone"));
    }

    /// Wait for the emperor's stderr to contain `needle`.
    pub fn wait_log(&self, needle: &str, deadline: Duration) {
        self.wait_for(
            || self.stderr().contains(needle),
            deadline,
            &format!("log containing {needle:?}"),
        );
    }

    /// Does a log line (stderr, from byte offset `from`) mention vassal `[name]` and contain `word`?
    /// Loose on purpose: the log wording around the key words may change.
    pub fn vlog_after(&self, from: usize, name: &str, word: &str) -> bool {
        let tag = format!("[{name}]");
        self.stderr()
            .get(from..)
            .unwrap_or("")
            .lines()
            .any(|l| l.contains(&tag) && l.contains(word))
    }

    /// Wait for a log line mentioning `[name]` and `word`.
    pub fn wait_vlog(&self, name: &str, word: &str, deadline: Duration) {
        self.wait_vlog_after(0, name, word, deadline)
    }

    /// Wait for a log line after byte offset `from` mentioning `[name]` and `word`.
    pub fn wait_vlog_after(&self, from: usize, name: &str, word: &str, deadline: Duration) {
        self.wait_for(
            || self.vlog_after(from, name, word),
            deadline,
            &format!("a log line with [{name}] and {word:?}"),
        );
    }

    /// GET over a unix socket, retried until it answers or the deadline passes.
    pub fn wait_http_unix(&self, path: impl AsRef<Path>, deadline: Duration) -> String {
        let path = path.as_ref();
        let start = Instant::now();
        loop {
            match http_get_unix(path, Duration::from_secs(5)) {
                Ok(r) => return r,
                Err(e) if start.elapsed() > deadline => {
                    panic!(
                        "timed out after {deadline:?} waiting for an HTTP answer on {}: {e}{}",
                        path.display(),
                        self.tail()
                    )
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    pub fn signal(&self, sig: i32) {
        assert!(self.emperor_pid > 0);
        kill(self.emperor_pid, sig);
    }

    /// Wait for the emperor to exit; panic with the tail after `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            let child = self.child.as_mut().expect("emperor not started");
            if let Some(st) = child.try_wait().unwrap() {
                self.exit = Some(st);
                // Give the capture threads a moment to drain the pipes (bounded).
                let t = Instant::now();
                while t.elapsed() < Duration::from_millis(300) && Arc::strong_count(&self.stderr) > 1 {
                    thread::sleep(Duration::from_millis(10));
                }
                return st;
            }
            if start.elapsed() > deadline {
                panic!("emperor did not exit within {deadline:?}{}", self.tail());
            }
            thread::sleep(Duration::from_millis(15));
        }
    }

    /// After the emperor exited, allow `start` again on the same directory (a restarted emperor).
    pub fn clear_exited(&mut self) {
        if let Some(c) = &mut self.child
            && matches!(c.try_wait(), Ok(Some(_)))
        {
            self.child = None;
        }
    }

    /// Every pid a testapp recorded (start and child lines).
    pub fn recorded_pids(&self) -> Vec<i32> {
        let mut pids = vec![];
        if let Ok(rd) = fs::read_dir(self.root.join("rec")) {
            for e in rd.flatten() {
                for r in parse_records(&fs::read_to_string(e.path()).unwrap_or_default()) {
                    if let Some(p) = r.fields.get("pid").and_then(|p| p.parse().ok()) {
                        pids.push(p);
                    }
                }
            }
        }
        pids
    }
}

/// `emperor <args> --control <control>` (restart, stop, start): its output.
pub fn ctl(control: &Path, args: &[&str]) -> Output {
    Command::new(EMPEROR)
        .args(args)
        .arg("--control")
        .arg(control)
        .env_remove("EMPEROR_CONTROL")
        .output()
        .unwrap()
}

/// [`ctl`], checked to succeed.
pub fn ctl_ok(h: &Harness, control: &Path, args: &[&str]) {
    let out = ctl(control, args);
    h.check(out.status.success(), format!("emperor {args:?}: {out:?}"));
}

pub fn write_atomic(path: &Path, content: &str) {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, path).unwrap();
}

impl Drop for Harness {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.tail());
        }
        let our_pgid = ppid_pgid(std::process::id() as i32).map(|(_, g)| g).unwrap_or(0);
        let mut victims = vec![];
        if let Some(child) = self.child.as_mut() {
            victims = descendants(self.emperor_pid);
            let _ = child.kill();
            let _ = child.wait();
        }
        for p in self.recorded_pids() {
            if alive(p) && cmdline(p).contains("testapp") {
                victims.push(p);
            }
        }
        victims.extend(self.extra_pids.lock().unwrap().iter().copied());
        for &p in &victims {
            if let Some((_, g)) = ppid_pgid(p)
                && g == p
                && g != our_pgid
            {
                kill(-g, libc::SIGKILL);
            }
            kill(p, libc::SIGKILL);
        }
        // What killed bridges left in the emperor's default run directory for this test's instance.
        if let Some(dir) = instance_run_dir(&self.vassals()) {
            let _ = fs::remove_dir_all(dir);
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// `/run/emperor/<instance>`: the emperor's instance id is 64-bit FNV-1a of the canonical vassals
/// directory, as 16 hex digits (src/emperor/mod.rs `instance_id`).
fn instance_run_dir(vassals: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let dir = fs::canonicalize(vassals).ok()?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Some(PathBuf::from(format!("/run/emperor/{h:016x}")))
}

/// A local user for tyrant-mode tests (`useradd --user-group`, no home, no login shell), created once if
/// missing; returns its uid and gid. Needs root, as the emperor in tyrant mode does.
pub fn ensure_user(name: &str) -> (u32, u32) {
    let lookup = || {
        let out = Command::new("id").args(["-u", name]).output().ok()?;
        let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
        let out = Command::new("id").args(["-g", name]).output().ok()?;
        let gid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
        Some((uid, gid))
    };
    // One useradd at a time: concurrent ones fight over /etc/passwd's lock and fail.
    static USERADD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = USERADD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(ids) = lookup() {
        return ids;
    }
    let status = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ])
        .status()
        .expect("useradd (from Debian's passwd package) must be installed");
    // Another test may have created it meanwhile (exit 9: already exists).
    assert!(status.success() || status.code() == Some(9), "useradd {name}: {status}");
    lookup().unwrap_or_else(|| panic!("user {name} does not exist after useradd"))
}

/// Writes a vassal file owned by `uid:gid` from the start (written and chowned beside the directory, then
/// renamed in), so the emperor never sees it with another owner.
pub fn write_owned(path: &Path, content: &str, uid: u32, gid: u32) {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    fs::write(&tmp, content).unwrap();
    std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).unwrap();
    fs::rename(&tmp, path).unwrap();
}
