//! Vassal output: `logto` files, their rotation at `log-maxsize`, and the emperor's memory while a
//! vassal floods its output.

use crate::util::*;
use std::fs;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

fn read(path: &std::path::Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn logto_receives_the_lines_instead_of_stdout() {
    let mut h = Harness::new("logto_receives_the_lines");
    h.write_vassal(
        "a.ini",
        "[emperor]\nlogto = a.log\nexec = sh -c 'echo first-a; echo second-a; exec sleep 1000'\n",
    );
    h.write_vassal("b.ini", "[emperor]\nexec = sh -c 'echo line-b; exec sleep 1000'\n");
    h.write_vassal(
        "c.ini",
        "[emperor]\nlogto = /nonexistent-dir/c.log\nexec = sh -c 'echo first-c; echo second-c; exec sleep 1000'\n",
    );
    h.start(&[]);
    let log = h.vassal("a.log");
    h.wait_for(
        || read(&log) == "first-a\nsecond-a\n",
        LONG,
        "a.log with a's two lines, unprefixed",
    );
    // The other vassals prove stdout is being forwarded: b has no logto, c's cannot be opened.
    h.wait_for(|| h.stdout().contains("[b.ini] line-b\n"), LONG, "b's line on stdout");
    // In order, though another vassal's line may come between them.
    h.wait_for(
        || {
            let out = h.stdout();
            let (first, second) = (out.find("[c.ini] first-c\n"), out.find("[c.ini] second-c\n"));
            first.zip(second).is_some_and(|(f, s)| f < s)
        },
        LONG,
        "c's lines on stdout",
    );
    h.check(
        !h.stdout().contains("first-a"),
        "a's lines must not reach the emperor's stdout",
    );
    // stderr is read by its own thread, which may lag behind stdout's on a loaded machine: wait for the line.
    h.wait_log("cannot open logto /nonexistent-dir/c.log", LONG);
    let errors = h.stderr().matches("cannot open logto /nonexistent-dir/c.log").count();
    h.check(errors == 1, format!("the open error must be logged once, got {errors}"));
}

#[test]
fn logto_rotates_at_log_maxsize() {
    let mut h = Harness::new("logto_rotates_at_log_maxsize");
    // 2000 lines of 40 bytes: 80 kB through an 8 KiB file.
    h.write_vassal(
        "r.ini",
        "[emperor]\nlogto = r.log\nlog-maxsize = 8k\n\
         exec = sh -c 'i=1000; while [ $i -lt 3000 ]; do echo \"line $i padding padding padding pad\"; \
         i=$((i+1)); done; echo END; exec sleep 1000'\n",
    );
    h.start(&[]);
    let (cur, old) = (h.vassal("r.log"), h.vassal("r.log.1"));
    h.wait_for(|| read(&cur).ends_with("END\n"), LONG, "END in r.log");
    let (c, o) = (read(&cur), read(&old));
    let width = c.lines().next().unwrap_or("").len();
    h.check(c.len() <= 8192, format!("r.log is {} bytes, over log-maxsize", c.len()));
    h.check(
        o.len() <= 8192 && o.len() > 8192 - 2 * width,
        format!("r.log.1 is {} bytes; expected it filled up to log-maxsize", o.len()),
    );
    // No line lost or cut at the seam: r.log.1's last line is the one before r.log's first.
    let last_old: u32 = o.lines().last().unwrap()[5..9].parse().unwrap();
    let first_cur: u32 = c.lines().next().unwrap()[5..9].parse().unwrap();
    h.check(
        first_cur == last_old + 1,
        format!("seam: r.log.1 ends with {last_old}, r.log starts with {first_cur}"),
    );
    h.check(
        o.lines().chain(c.lines()).all(|l| l == "END" || l.len() == width),
        "every line is whole",
    );
    h.check(!h.stdout().contains("padding"), "no line on stdout");
}

#[test]
fn changing_logto_applies_without_a_restart() {
    let mut h = Harness::new("changing_logto_applies");
    // A speaking vassal: a change to its own sections only is an in-place reload (byte 1).
    let app = h.app_ini("s.ini", "--speak");
    h.write_vassal("s.ini", &app.replace("[emperor]\n", "[emperor]\nlogto = one.log\n"));
    h.start(&[]);
    let (one, two) = (h.vassal("one.log"), h.vassal("two.log"));
    let pid = h.wait_starts("s.ini", 1, LONG)[0].pid();
    h.wait_for(
        || read(&one).contains(&format!("pid={pid} started")),
        LONG,
        "start line in one.log",
    );
    h.write_vassal(
        "s.ini",
        &app.replace("[emperor]\n", "[emperor]\nlogto = two.log\nlog-maxsize = 1m\n"),
    );
    h.wait_for(
        || read(&two).contains("asked to reload"),
        LONG,
        "the reload's line in two.log",
    );
    h.check(
        h.starts("s.ini").len() == 1 && alive(pid),
        "logto changes must not restart the vassal",
    );
    h.check(!read(&one).contains("asked to reload"), "one.log is no longer written");
    // Back to stdout.
    h.write_vassal("s.ini", &app);
    h.wait_for(
        || h.stdout().contains("[s.ini] testapp: emperor asked to reload"),
        LONG,
        "stdout again",
    );
    h.check(
        h.starts("s.ini").len() == 1,
        "removing logto must not restart the vassal",
    );
}

/// A `Vm...` figure of `pid` from /proc/<pid>/status, in KiB (0 when unknown).
fn status_kib(pid: i32, key: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: i32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// The emperor with its stdout on /dev/null (the harness would keep every flooded byte in memory);
/// killed with its vassals' process groups on drop.
struct Quiet(Child);

impl Drop for Quiet {
    fn drop(&mut self) {
        let pid = self.0.id() as i32;
        for p in descendants(pid) {
            kill(-p, libc::SIGKILL);
            kill(p, libc::SIGKILL);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn flooding_vassals_do_not_grow_the_emperors_memory() {
    const LIMIT_KIB: u64 = 30 * 1024;
    let h = Harness::new("flooding_vassals");
    let (done_a, done_b) = (h.root.join("a.done"), h.root.join("b.done"));
    // 200 MB without a newline to stdout, and 200 MB of two-byte lines to a rotated logto.
    h.write_vassal(
        "a.ini",
        &format!(
            "[emperor]\nexec = sh -c 'head -c 200000000 /dev/zero; touch {}; exec sleep 1000'\n",
            done_a.display()
        ),
    );
    h.write_vassal(
        "b.ini",
        &format!(
            "[emperor]\nlogto = b.log\nlog-maxsize = 1m\n\
             exec = sh -c 'yes | head -c 200000000; touch {}; exec sleep 1000'\n",
            done_b.display()
        ),
    );
    let _ = testapp();
    let emperor = Command::new(EMPEROR)
        .arg(h.vassals())
        .env("EMPEROR_LOG", "info")
        .current_dir(&h.root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = emperor.id() as i32;
    let _guard = Quiet(emperor);
    let start = Instant::now();
    let mut peak = 0;
    let mut samples = 0;
    while !(done_a.exists() && done_b.exists()) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "floods did not finish in 120 s"
        );
        peak = peak.max(rss_kib(pid));
        samples += 1;
        thread::sleep(Duration::from_millis(10));
    }
    // And after: nothing kept.
    thread::sleep(Duration::from_millis(300));
    let after = rss_kib(pid);
    assert!(samples > 5, "too few samples ({samples}) to measure the flood");
    assert!(peak > 0 && after > 0, "no VmRSS for the emperor");
    assert!(peak < LIMIT_KIB, "emperor's VmRSS peaked at {peak} KiB while flooded");
    assert!(after < LIMIT_KIB, "emperor's VmRSS is {after} KiB after the flood");
    let (cur, old) = (h.vassal("b.log"), h.vassal("b.log.1"));
    let len = |p: &std::path::Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    assert!(len(&cur) <= 1 << 20 && len(&old) <= 1 << 20 && len(&old) > 0);
    eprintln!("flood: emperor VmRSS peak {peak} KiB, after {after} KiB, {samples} samples");
}

/// VmHWM (peak resident memory) of `pid` in KiB.
fn peak_kib(pid: i32) -> u64 {
    status_kib(pid, "VmHWM")
}

/// A container's output is a raw tty stream (every container has a tty), whatever bytes it holds: binary
/// output that happens to start like a multiplexed frame header (a stream byte 0-2, then a length of
/// 2 GiB) is forwarded as is, and 20 MB after it, without a newline, do not grow the bridge's memory.
/// (bollard's attach decoder would wait for the 2 GiB "frame", holding everything.)
#[test]
fn binary_container_output_is_forwarded_raw_and_does_not_grow_its_bridge() {
    use crate::util::docker::{DockerSweep, unique_name};
    const LIMIT_KIB: u64 = 30 * 1024;
    let sweep = DockerSweep::new();
    let mut h = Harness::new("bridge_flood");
    let name = unique_name("flood");
    let file = format!("{name}.ini");
    let rec = h.root.join("rec");
    fs::create_dir_all(&rec).unwrap();
    h.write_vassal(
        &file,
        &format!(
            "[emperor]\ndocker-image = emperor-test/busybox\ndocker-network-mode = none\n\
             docker-mount = {}:/rec\nlogto = flood.log\nlog-maxsize = 1m\n\
             exec = /bin/sh -c 'printf \"\\001\\000\\000\\000\\177\\377\\377\\377\"; \
             yes x | tr -d \"\\n\" | head -c 20000000; touch /rec/done; exec sleep 3600'\n",
            rec.display()
        ),
    );
    let args = sweep.emperor_args();
    h.start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    h.wait_for(
        || rec.join("done").exists(),
        Duration::from_secs(120),
        "the container's 20 MB",
    );
    let bridge = h.bridge_pid();
    // What the container printed has gone through the bridge once the rotated log holds its tail.
    let len = |p: &std::path::Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    h.wait_for(
        || len(&h.vassal("flood.log.1")) > 0 && len(&h.vassal("flood.log")) > 0,
        LONG,
        "the output in the rotated logto",
    );
    let tail = fs::read(h.vassal("flood.log")).unwrap_or_default();
    h.check(
        tail.ends_with(b"xxxx\n"),
        format!(
            "the output reached logto: {:?}",
            String::from_utf8_lossy(&tail[tail.len().saturating_sub(40)..])
        ),
    );
    let peak = peak_kib(bridge);
    h.check(peak > 0, format!("no VmHWM for bridge {bridge}"));
    h.check(
        peak < LIMIT_KIB,
        format!("the bridge's peak memory was {peak} KiB for 20 MB of output"),
    );
    eprintln!("bridge flood: VmHWM {peak} KiB");
}
