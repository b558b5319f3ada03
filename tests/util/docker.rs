//! Docker helpers for the tests, through the `docker` CLI (std::process::Command with timeouts): simple, and
//! independent of the emperor's own Docker code under test.
//!
//! Rules they serve (DESIGN.md, "Where things run in tests"):
//! - A test that needs Docker calls [`docker_available_or_panic`] (or creates a [`DockerSweep`], which does) and
//!   fails loudly when there is no daemon or no test image: it never passes by skipping.
//! - Every container a test makes carries this run's label ([`run_label`], given to the emperor by
//!   [`test_label_arg`]) and is removed even when the test fails ([`DockerSweep`]).
//! - Containers use network none or host; nothing talks to a container's bridge address.
//!
//! Test runs share one daemon (and other sessions may use it too), and container names are daemon-wide: name
//! Docker vassals with [`unique_name`].
//!
//! A typical Docker test:
//! ```ignore
//! let sweep = DockerSweep::new(); // checks the daemon and the images
//! let name = unique_name("hello");
//! h.write_vassal(&format!("{name}.ini"), "[emperor]\ndocker-image = emperor-test/testapp\n...");
//! let args = sweep.emperor_args(); // --docker-label for the run and for this test
//! h.start(&args.iter().map(String::as_str).collect::<Vec<_>>());
//! ...
//! // on drop (also on panic): `docker rm -f` of this test's containers
//! ```

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Image with the static `testapp` at /testapp (ENTRYPOINT, CMD `--name docker`), built by scripts/build-images.
pub const TESTAPP_IMAGE: &str = "emperor-test/testapp:latest";
/// Image with busybox-static at /bin/busybox and applet links (sh, ls, cat, sleep, ...), built likewise.
pub const BUSYBOX_IMAGE: &str = "emperor-test/busybox:latest";

/// Label key of the run label; its value is `<pid>-<process start time in clock ticks>`.
pub const RUN_LABEL_KEY: &str = "emperor.test";
/// Label key of a [`DockerSweep`]'s own label (one value per sweep, so one per test).
pub const CASE_LABEL_KEY: &str = "emperor.test.case";

/// Timeout of one `docker` CLI call unless told otherwise.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(30);

const SETUP_HINT: &str = "run `scripts/setup` as root: it installs docker.io, starts dockerd \
     (--bridge=none --iptables=false) and builds the test images with scripts/build-images";

/// The result of a `docker` call that ran to its end.
#[derive(Debug)]
pub struct DockerOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for DockerOutput {
    fn from(o: Output) -> Self {
        DockerOutput {
            success: o.status.success(),
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `docker <args>`, killing it after `timeout`. Err only when it could not run or timed out.
pub fn docker_timeout(args: &[&str], timeout: Duration) -> Result<DockerOutput, String> {
    let what = format!("`docker {}`", args.join(" "));
    super::run_timeout(Command::new("docker").args(args), &what, b"", timeout).map(DockerOutput::from)
}

/// Runs `docker <args>` with [`DOCKER_TIMEOUT`].
pub fn docker(args: &[&str]) -> Result<DockerOutput, String> {
    docker_timeout(args, DOCKER_TIMEOUT)
}

/// Runs `docker <args>` and returns its trimmed stdout; panics with its stderr when it fails.
#[track_caller]
pub fn docker_ok(args: &[&str]) -> String {
    match docker(args) {
        Ok(o) if o.success => o.stdout.trim().to_string(),
        Ok(o) => panic!("`docker {}` failed ({:?}): {}", args.join(" "), o.code, o.stderr.trim()),
        Err(e) => panic!("{e}"),
    }
}

/// Panics, telling to run scripts/setup, unless a Docker daemon answers `docker version` within 10 s and both
/// test images exist. Checked once per test process; every later call repeats the first answer.
#[track_caller]
pub fn docker_available_or_panic() {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let r = CHECK.get_or_init(|| {
        let v = docker_timeout(&["version", "--format", "{{.Server.Version}}"], Duration::from_secs(10))
            .map_err(|e| format!("no Docker daemon answers: {e}"))?;
        if !v.success {
            return Err(format!(
                "no Docker daemon answers (DOCKER_HOST={}): `docker version` said: {}",
                std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unset".into()),
                v.stderr.trim()
            ));
        }
        for image in [TESTAPP_IMAGE, BUSYBOX_IMAGE] {
            let o = docker(&["image", "inspect", "--format", "{{.Id}}", image])?;
            if !o.success {
                return Err(format!(
                    "the test image {image} is missing (scripts/build-images builds it)"
                ));
            }
        }
        reap_dead_runs();
        Ok(())
    });
    if let Err(e) = r {
        panic!("this test needs Docker, and {e}.\nTo fix: {SETUP_HINT}.");
    }
}

/// `/proc/<pid>/stat` field 22 (start time in clock ticks since boot), which tells a live process from a later
/// one that reuses its pid.
fn start_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    // After ")": field 3 (state) is index 0, so field 22 is index 19.
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn run_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let pid = std::process::id();
        format!("{pid}-{}", start_ticks(pid).unwrap_or(0))
    })
}

/// This test process's label, `emperor.test=<pid>-<start ticks>`: the same for the whole run, different for any
/// other run (also a later one that gets the same pid). Use it as `--label`, or as `--filter label=...`.
pub fn run_label() -> &'static str {
    static L: OnceLock<String> = OnceLock::new();
    L.get_or_init(|| format!("{RUN_LABEL_KEY}={}", run_id()))
}

/// `["--docker-label", run_label()]`: emperor arguments that put the run label on every container it creates.
/// Prefer [`DockerSweep::emperor_args`], which adds the test's own label, so its sweep finds them at once.
pub fn test_label_arg() -> [String; 2] {
    ["--docker-label".to_string(), run_label().to_string()]
}

static NAMES: AtomicUsize = AtomicUsize::new(0);

/// A Docker-valid name unique to this run and call, `<prefix>-<pid>-<n>`: container names are daemon-wide.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NAMES.fetch_add(1, Ordering::SeqCst)
    )
}

/// One line of `docker ps` output as (id, name, state).
pub type ContainerRow = (String, String, String);

const PS_FORMAT: &str = "{{.ID}}\t{{.Names}}\t{{.State}}";

/// Parses `docker ps --format '{{.ID}}\t{{.Names}}\t{{.State}}'` output; skips blank and malformed lines.
pub fn parse_ps(text: &str) -> Vec<ContainerRow> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim_end_matches('\r').split('\t');
            let (id, name, state) = (f.next()?.trim(), f.next()?.trim(), f.next()?.trim());
            if id.is_empty() || name.is_empty() || f.next().is_some() {
                return None;
            }
            Some((id.to_string(), name.to_string(), state.to_string()))
        })
        .collect()
}

/// Every container (any state) carrying `label` (`key` or `key=value`), as (id, name, state).
#[track_caller]
pub fn containers_with_label(label: &str) -> Vec<ContainerRow> {
    let filter = format!("label={label}");
    parse_ps(&docker_ok(&[
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &filter,
        "--format",
        PS_FORMAT,
    ]))
}

/// Removes (force) every container carrying all of `labels`; returns how many it removed.
pub fn remove_with_labels(labels: &[&str]) -> usize {
    let mut args = vec!["ps", "-a", "-q", "--no-trunc"];
    let filters: Vec<String> = labels.iter().map(|l| format!("label={l}")).collect();
    for f in &filters {
        args.extend(["--filter", f.as_str()]);
    }
    let ids: Vec<String> = match docker(&args) {
        Ok(o) if o.success => o.stdout.split_whitespace().map(str::to_string).collect(),
        Ok(o) => {
            eprintln!("docker sweep: listing {labels:?} failed: {}", o.stderr.trim());
            return 0;
        }
        Err(e) => {
            eprintln!("docker sweep: {e}");
            return 0;
        }
    };
    if ids.is_empty() {
        return 0;
    }
    let mut rm = vec!["rm", "-f", "-v"];
    rm.extend(ids.iter().map(String::as_str));
    match docker(&rm) {
        Ok(o) if o.success => {}
        Ok(o) => eprintln!("docker sweep: rm -f {ids:?}: {}", o.stderr.trim()),
        Err(e) => eprintln!("docker sweep: {e}"),
    }
    ids.len()
}

/// Removes every container of this run now (all tests of this process, also those still running).
pub fn sweep_run_now() -> usize {
    remove_with_labels(&[run_label()])
}

/// Removes containers left by earlier test runs that died without sweeping (killed by a timeout, say): those
/// whose `emperor.test=<pid>-<ticks>` names a process that is gone. Runs once, from the first availability check.
fn reap_dead_runs() {
    let fmt = format!("{{{{.ID}}}}\t{{{{.Label \"{RUN_LABEL_KEY}\"}}}}");
    let Ok(o) = docker(&[
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &format!("label={RUN_LABEL_KEY}"),
        "--format",
        &fmt,
    ]) else {
        return;
    };
    let dead: Vec<&str> = o
        .stdout
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, v)| run_is_dead(v))
        .map(|(id, _)| id)
        .collect();
    if !dead.is_empty() {
        eprintln!("docker sweep: removing {} container(s) of dead test runs", dead.len());
        let mut rm = vec!["rm", "-f", "-v"];
        rm.extend(dead);
        let _ = docker(&rm);
    }
}

/// Is the run named by a label value `<pid>-<ticks>` over? Unparsable values are not ours to judge.
fn run_is_dead(value: &str) -> bool {
    let Some((pid, ticks)) = value.split_once('-') else {
        return false;
    };
    let (Ok(pid), Ok(ticks)) = (pid.parse::<u32>(), ticks.parse::<u64>()) else {
        return false;
    };
    start_ticks(pid) != Some(ticks)
}

/// Does a container with exactly this name exist (any state)?
pub fn container_exists(name: &str) -> bool {
    inspect(name, "{{.Name}}").is_some_and(|n| n.trim_start_matches('/') == name)
}

/// `docker container inspect --format <format> <name>`, trimmed; None when there is no such container.
pub fn inspect(name: &str, format: &str) -> Option<String> {
    match docker(&["container", "inspect", "--format", format, name]) {
        Ok(o) if o.success => Some(o.stdout.trim().to_string()),
        _ => None,
    }
}

/// Polls every 50 ms until no container has this name; false if one still does after `deadline`.
pub fn wait_no_container(name: &str, deadline: Duration) -> bool {
    wait_until(deadline, || !container_exists(name))
}

/// Polls every 50 ms until the container's `.State.Status` is `status` (created, running, exited...).
pub fn wait_container_status(name: &str, status: &str, deadline: Duration) -> bool {
    wait_until(deadline, || {
        inspect(name, "{{.State.Status}}").as_deref() == Some(status)
    })
}

fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

static LIVE_SWEEPS: Mutex<usize> = Mutex::new(0);
static SWEEP_IDS: AtomicUsize = AtomicUsize::new(0);

/// Guard for one Docker test. `new()` checks that Docker is there (panics otherwise). On drop (also when the test
/// panics) it force-removes every container carrying its own label, `emperor.test.case=<run id>-<n>`; and when it
/// is the last live sweep of the process, every container carrying the run label too. (Tests run in parallel
/// threads of one process, so one test's drop must not remove another's containers.) Give the emperor both labels
/// with [`DockerSweep::emperor_args`], and `docker run` both with [`DockerSweep::run_args`].
pub struct DockerSweep {
    case_label: String,
}

impl DockerSweep {
    #[track_caller]
    pub fn new() -> DockerSweep {
        docker_available_or_panic();
        *LIVE_SWEEPS.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        DockerSweep {
            case_label: format!(
                "{CASE_LABEL_KEY}={}-{}",
                run_id(),
                SWEEP_IDS.fetch_add(1, Ordering::SeqCst)
            ),
        }
    }

    /// This test's own label, `emperor.test.case=<run id>-<n>`.
    pub fn case_label(&self) -> &str {
        &self.case_label
    }

    /// `--docker-label <run label> --docker-label <case label>`, for the emperor.
    pub fn emperor_args(&self) -> Vec<String> {
        let [a, b] = test_label_arg();
        vec![a, b, "--docker-label".to_string(), self.case_label.clone()]
    }

    /// `--label <run label> --label <case label>`, for `docker run` / `docker create`.
    pub fn run_args(&self) -> Vec<String> {
        vec![
            "--label".into(),
            run_label().into(),
            "--label".into(),
            self.case_label.clone(),
        ]
    }

    /// This test's containers, as (id, name, state).
    pub fn containers(&self) -> Vec<ContainerRow> {
        containers_with_label(&self.case_label)
    }

    /// Removes this test's containers now (those with its case label); returns how many.
    pub fn sweep_now(&self) -> usize {
        remove_with_labels(&[run_label(), &self.case_label])
    }
}

impl Default for DockerSweep {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for DockerSweep {
    fn drop(&mut self) {
        let n = self.sweep_now();
        if n > 0 && thread::panicking() {
            eprintln!(
                "docker sweep: removed {n} container(s) of a failed test ({})",
                self.case_label
            );
        }
        let mut live = LIVE_SWEEPS.lock().unwrap_or_else(|e| e.into_inner());
        *live -= 1;
        if *live == 0 {
            // Nothing else of this run is in flight: also remove what carries only the run label.
            sweep_run_now();
        }
    }
}

#[test]
fn parse_ps_rows() {
    let text = "abc123\tweb-1\trunning\n\nbad line\ndef456\tdb\texited\r\n\t\t\n";
    assert_eq!(
        parse_ps(text),
        vec![
            ("abc123".into(), "web-1".into(), "running".into()),
            ("def456".into(), "db".into(), "exited".into()),
        ]
    );
    assert!(parse_ps("").is_empty());
}

#[test]
fn labels_are_stable_and_well_formed() {
    assert_eq!(run_label(), run_label());
    let (k, v) = run_label().split_once('=').unwrap();
    assert_eq!(k, RUN_LABEL_KEY);
    assert!(!run_is_dead(v), "our own run must count as live: {v}");
    assert!(
        run_is_dead(&format!("{}-1", std::process::id())),
        "same pid, other start time"
    );
    assert!(!run_is_dead("not-ours"));
    assert_eq!(
        test_label_arg(),
        ["--docker-label".to_string(), run_label().to_string()]
    );
    let (a, b) = (unique_name("x"), unique_name("x"));
    assert_ne!(a, b);
    assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)));
}

#[test]
fn docker_harness_smoke() {
    let sweep = DockerSweep::new();
    let name = unique_name("emperor-smoke");
    let mut args = vec!["run", "-d", "--network", "none", "--name", name.as_str()];
    let labels = sweep.run_args();
    args.extend(labels.iter().map(String::as_str));
    args.extend([BUSYBOX_IMAGE, "sleep", "30"]);
    let id = docker_ok(&args);

    let mine = containers_with_label(run_label());
    assert!(
        mine.iter().any(|(i, n, s)| *i == id && *n == name && s == "running"),
        "container {name} ({id}) not listed running under {}: {mine:?}",
        run_label()
    );
    assert!(container_exists(&name));
    assert!(!container_exists(&unique_name("emperor-smoke-absent")));
    assert_eq!(inspect(&name, "{{.HostConfig.NetworkMode}}").as_deref(), Some("none"));
    assert_eq!(sweep.containers().len(), 1);

    drop(sweep);
    assert!(
        wait_no_container(&name, Duration::from_secs(10)),
        "the sweep left {name} behind"
    );
    assert!(!containers_with_label(run_label()).iter().any(|(i, _, _)| *i == id));
}

/// A Docker vassal file running the test app (`emperor-test/testapp`) with network none, serving
/// `<name>.sock` in the harness's directory and recording to its `rec/`, plus `extra` lines.
pub fn testapp_vassal(h: &super::Harness, name: &str, extra: &str) -> String {
    format!(
        "[emperor]\ndocker-image = emperor-test/testapp\ndocker-network-mode = none\nsocket = {sock}\n\
         docker-mount = {rec}:/rec\nexec = /testapp --name {name} --record /rec/{name}.rec\n{extra}",
        sock = h.sock(&format!("{name}.sock")).display(),
        rec = h.root.join("rec").display(),
    )
}

/// Is the test run named by a run label's value (`<pid>-<start ticks>`) over? For the throw-away daemons'
/// leftovers (tests/util/dockerd.rs).
pub fn run_label_value_is_dead(value: &str) -> bool {
    run_is_dead(value)
}
