//! The Debian package, built by `scripts/build-deb` from the tested binary and installed into a clean Debian: the
//! `emperor-test/bookworm` image (debootstrap's minbase, `docker import`ed by scripts/build-images), in a container
//! with network none. There `dpkg -i` installs it; the installed unit's ExecStart runs as systemd would run it
//! (RuntimeDirectory= made, NOTIFY_SOCKET set, the command line taken from the unit file) with a vassal dropped into
//! the installed vassals directory, which serves through a socket in a bind-mounted host directory; ExecReload
//! reloads it and KillSignal stops it cleanly; `dpkg -r` keeps the conffile and `dpkg --purge` leaves the root as it
//! found it. The maintainer scripts call systemctl only where systemd runs: a stub records the calls, with and
//! without /run/systemd/system.
//!
//! Also here: `--help` and README's "Command line" name the same options, and the packaged man pages (rendered from
//! the same clap definition as `--help`) name them too and render without a warning. One test builds the package
//! (compressing a 12 MB binary is not worth doing twice), the other needs none.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::install::{manifest_dir, one};
use crate::util::docker::{DockerOutput, DockerSweep, docker, docker_timeout, unique_name};
use crate::util::{EMPEROR, Harness, LONG, http_get_unix, run_timeout, testapp};

/// The clean Debian the package is installed into (scripts/build-images bookworm).
const IMAGE: &str = "emperor-test/bookworm:latest";

/// Runs `scripts/build-deb --binary <the tested emperor> --out <dir>`; returns the .deb it printed.
fn build_deb(dir: &Path) -> PathBuf {
    // The same cargo as the test run's, for the man page generator (examples/manpage.rs).
    let cargo_dir = Path::new(env!("CARGO")).parent().unwrap();
    let path = format!("{}:{}", cargo_dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = run_timeout(
        Command::new(manifest_dir().join("scripts/build-deb"))
            .args(["--binary", EMPEROR, "--out"])
            .arg(dir)
            .env("PATH", path),
        "scripts/build-deb",
        b"",
        Duration::from_secs(900),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "scripts/build-deb failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(
        deb.is_file() && deb.parent() == Some(dir),
        "scripts/build-deb's last line names the .deb in {}: {stdout:?}",
        dir.display()
    );
    deb
}

/// A container of the clean Debian, with the .deb's directory at /deb (read-only), the testapp at /opt/testapp and
/// a host directory at /out (sockets, records, the systemctl stub's log). Removed by the sweep, also on failure.
struct Root {
    name: String,
    out: PathBuf,
    _sweep: DockerSweep,
}

impl Root {
    fn start(h: &Harness, deb_dir: &Path) -> Root {
        let sweep = DockerSweep::new();
        let have = docker(&["image", "inspect", "--format", "{{.Id}}", IMAGE]).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            have.success,
            "the image {IMAGE} is missing: run scripts/setup as root (scripts/build-images bookworm makes it with \
             debootstrap from Debian's mirror, once): {}",
            have.stderr.trim()
        );
        let out = h.root.join("out");
        fs::create_dir_all(&out).unwrap();
        let name = unique_name("deb-root");
        let mounts = [
            format!("{}:/deb:ro", deb_dir.display()),
            format!("{}:/opt/testapp:ro", testapp().display()),
            format!("{}:/out", out.display()),
        ];
        let mut args = vec!["run", "-d", "--name", &name, "--network", "none"];
        let labels = sweep.run_args();
        args.extend(labels.iter().map(String::as_str));
        for m in &mounts {
            args.extend(["-v", m.as_str()]);
        }
        args.extend([IMAGE, "sleep", "infinity"]);
        let o = docker_timeout(&args, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
        assert!(o.success, "docker run {IMAGE}: {}", o.stderr.trim());
        Root {
            name,
            out,
            _sweep: sweep,
        }
    }

    /// `sh -c script` inside, as root.
    fn sh(&self, script: &str) -> DockerOutput {
        docker_timeout(&["exec", &self.name, "sh", "-c", script], Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `sh -c script` inside, which must succeed; returns its stdout.
    #[track_caller]
    fn ok(&self, script: &str) -> String {
        let o = self.sh(script);
        assert!(
            o.success,
            "in the container, `{script}` failed ({:?}):\n{}{}",
            o.code, o.stdout, o.stderr
        );
        o.stdout
    }

    /// Every path of the root file system (the container's own, not the mounts) with its type, mode and owner.
    fn snapshot(&self) -> BTreeSet<String> {
        self.ok("find / -xdev -printf '%y %m %u:%g %p\\n'")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// What systemctl was called with since the last call (the stub's log, emptied).
    fn systemctl_calls(&self) -> String {
        let log = self.out.join("systemctl.log");
        let calls = fs::read_to_string(&log).unwrap_or_default();
        let _ = fs::remove_file(&log);
        calls
    }
}

/// Panics with both sides' extra entries unless the root file system is as `before`.
#[track_caller]
fn assert_same_tree(before: &BTreeSet<String>, after: &BTreeSet<String>, when: &str) {
    let gone: Vec<&String> = before.difference(after).collect();
    let left: Vec<&String> = after.difference(before).collect();
    assert!(
        gone.is_empty() && left.is_empty(),
        "{when}, the root is not as before the install.\nleft behind: {left:#?}\nmissing: {gone:#?}"
    );
}

/// A unit's command line split as systemd does for what this unit uses (quotes, `$$` for a literal `$`); `env` are
/// the variables systemd expands (`$MAINPID` for ExecReload=). Anything else (`%` specifiers, other variables) is
/// refused, so that this emulation never runs a different command than systemd would.
fn unit_command(line: &str, env: &[(&str, &str)]) -> Vec<String> {
    let words = shlex::split(line).unwrap_or_else(|| panic!("cannot split {line:?}"));
    words
        .into_iter()
        .map(|w| {
            assert!(!w.contains('%'), "{line:?}: % specifiers are not emulated here");
            let mut s = w.replace("$$", "\u{0}");
            for (k, v) in env {
                s = s.replace(&format!("${{{k}}}"), v).replace(&format!("${k}"), v);
            }
            assert!(
                !s.contains('$'),
                "{line:?}: a variable systemd would expand that is not emulated here"
            );
            s.replace('\u{0}', "$")
        })
        .collect()
}

/// The installed unit's ExecStart=, run inside the container as systemd would start it; killed on drop.
struct Service {
    child: Child,
    pid: String,
    stderr: PathBuf,
}

impl Service {
    fn start(h: &Harness, root: &Root, argv: &[String]) -> Service {
        let stderr = h.root.join("emperor.stderr");
        let mut cmd = Command::new("docker");
        cmd.args(["exec", "-e", "NOTIFY_SOCKET=/out/notify.sock", &root.name])
            .args(["/bin/sh", "-c", "echo $$ >/out/emperor.pid && exec \"$@\"", "sh"])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(fs::File::create(h.root.join("emperor.stdout")).unwrap())
            .stderr(fs::File::create(&stderr).unwrap());
        let child = cmd.spawn().expect("docker exec of ExecStart");
        let pid_file = root.out.join("emperor.pid");
        let start = Instant::now();
        let pid = loop {
            if let Ok(p) = fs::read_to_string(&pid_file)
                && p.ends_with('\n')
            {
                break p.trim().to_owned();
            }
            assert!(start.elapsed() < LONG, "ExecStart did not start within {LONG:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        Service { child, pid, stderr }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `READY=1` on the notify socket, as systemd does for Type=notify.
fn wait_ready(sock: &UnixDatagram, svc: &Service) {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = LONG
            .checked_sub(start.elapsed())
            .unwrap_or_else(|| panic!("no READY=1 within {LONG:?}; emperor stderr:\n{}", svc.stderr()));
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        if let Ok(n) = sock.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1")
        {
            return;
        }
    }
}

#[track_caller]
fn wait_until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < deadline, "{what}: not within {deadline:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What `dpkg -i` put where: the files, the conffile, the enablement, the unit's paths.
fn check_installed(root: &Root, unit: &str) {
    let listed = root.ok("dpkg -L emperor");
    for path in [
        "/usr/bin/emperor",
        "/usr/lib/systemd/system/emperor.service",
        "/usr/share/man/man1/emperor.1.gz",
        "/usr/share/man/man1/emperor-status.1.gz",
        "/usr/share/doc/emperor/README.md",
        "/etc/emperor/vassals/README",
    ] {
        assert!(
            listed.lines().any(|l| l == path),
            "dpkg -L emperor lists {path}:\n{listed}"
        );
    }
    assert_eq!(
        root.ok("dpkg-query -W -f '${Conffiles}' emperor")
            .split_whitespace()
            .next(),
        Some("/etc/emperor/vassals/README")
    );
    assert_eq!(
        root.ok("dpkg --verify emperor && echo verified").trim(),
        "verified",
        "md5sums match"
    );
    let installed = root.ok("cat /usr/bin/emperor | md5sum");
    let tested = run_timeout(Command::new("md5sum").arg(EMPEROR), "md5sum", b"", LONG).unwrap();
    assert_eq!(
        installed.split(' ').next(),
        String::from_utf8_lossy(&tested.stdout).split(' ').next(),
        "the tested binary"
    );
    // deb-systemd-helper's enablement, made without a running systemd.
    let wants = root.ok("readlink /etc/systemd/system/multi-user.target.wants/emperor.service");
    assert!(
        wants.trim().ends_with("/systemd/system/emperor.service"),
        "enabled for multi-user.target: {wants}"
    );
    assert_eq!(one(unit, "Type"), "notify");
    assert_eq!(one(unit, "Documentation"), "file:///usr/share/doc/emperor/README.md");
    assert!(one(unit, "ExecStart").starts_with("/usr/bin/emperor "), "{unit}");
}

#[test]
fn deb_builds_installs_serves_a_vassal_and_purges_clean() {
    let h = Harness::new("deb_install");
    let deb_dir = h.root.join("deb");
    fs::create_dir_all(&deb_dir).unwrap();
    let deb = build_deb(&deb_dir);
    check_man_pages(&h, &deb);
    let root = Root::start(&h, &deb_dir);
    let deb_in = format!("/deb/{}", deb.file_name().unwrap().to_string_lossy());
    // A systemctl that only records its arguments (part of the clean root: in place before the snapshot).
    root.ok("printf '%s\\n' '#!/bin/sh' 'echo \"$*\" >>/out/systemctl.log' \
         'case \" $* \" in *\" is-enabled \"*) echo enabled ;; *\" is-active \"*) exit 3 ;; esac' \
         >/usr/local/bin/systemctl && chmod 755 /usr/local/bin/systemctl");
    let clean = root.snapshot();

    root.ok(&format!("dpkg -i {deb_in}"));
    assert_eq!(
        root.systemctl_calls(),
        "",
        "no systemctl call where systemd does not run"
    );
    let unit = root.ok("cat /usr/lib/systemd/system/emperor.service");
    check_installed(&root, &unit);
    run_the_unit(&h, &root, &unit);

    // dpkg -r: the program goes, the conffile and the admin's vassal file stay (as dpkg -r keeps configuration).
    root.ok("dpkg -r emperor");
    assert_eq!(
        root.sh("test -e /usr/bin/emperor || test -e /usr/lib/systemd/system/emperor.service")
            .code,
        Some(1)
    );
    assert_eq!(root.ok("dpkg-query -W -f '${db:Status-Abbrev}' emperor").trim(), "rc");
    root.ok("test -f /etc/emperor/vassals/README && test -f /etc/emperor/vassals/hello.ini");
    // The admin deletes their vassal; purge removes the rest.
    root.ok("rm /etc/emperor/vassals/hello.ini && dpkg --purge emperor");
    assert_same_tree(
        &clean,
        &root.snapshot(),
        "after dpkg -r, rm of the vassal and dpkg --purge",
    );
    assert_eq!(root.systemctl_calls(), "");

    // Where systemd runs: daemon-reload and start on the first install, nothing on an upgrade, stop on removal.
    root.ok("mkdir -p /run/systemd/system");
    root.ok(&format!("dpkg -i {deb_in}"));
    let calls = root.systemctl_calls();
    assert!(
        calls.lines().any(|l| l.ends_with("daemon-reload")),
        "daemon-reload on install:\n{calls}"
    );
    assert!(
        calls.lines().any(|l| l.ends_with("start emperor.service")),
        "started on install:\n{calls}"
    );
    root.ok(&format!("dpkg -i {deb_in}"));
    let calls = root.systemctl_calls();
    assert!(
        !calls.contains("start") && !calls.contains("stop"),
        "an upgrade neither restarts nor stops the emperor (every vassal would restart):\n{calls}"
    );
    root.ok("dpkg --purge emperor");
    let calls = root.systemctl_calls();
    assert!(
        calls.lines().any(|l| l.ends_with("stop emperor.service")),
        "stopped on removal:\n{calls}"
    );
    root.ok("rmdir /run/systemd/system /run/systemd");
    assert_same_tree(
        &clean,
        &root.snapshot(),
        "after the install, upgrade and purge under systemd",
    );
}

/// Runs the installed unit's ExecStart= with a vassal in its vassals directory, as systemd would: serve, reload with
/// ExecReload=, stop with KillSignal=.
fn run_the_unit(h: &Harness, root: &Root, unit: &str) {
    let argv = unit_command(one(unit, "ExecStart"), &[]);
    let vassals = argv.last().unwrap();
    assert_eq!(format!("/etc/{}", one(unit, "ConfigurationDirectory")), *vassals);
    // What systemd does before ExecStart: RuntimeDirectory= and ConfigurationDirectory= (which dpkg made already).
    let run_dir = format!("/run/{}", one(unit, "RuntimeDirectory"));
    root.ok(&format!("mkdir -m 0755 {run_dir} && test -d {vassals}"));
    // The admin drops a vassal in (the testapp, speaking the emperor protocol, on a socket in the host's out/).
    fs::write(
        root.out.join("hello.ini"),
        "[emperor]\nsocket = /out/hello.sock\nexec = /opt/testapp --name deb --speak --record /out/hello.rec\n",
    )
    .unwrap();
    root.ok(&format!(
        "cp /out/hello.ini {vassals}/.hello.ini && mv {vassals}/.hello.ini {vassals}/hello.ini"
    ));

    let notify_path = root.out.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let mut svc = Service::start(h, root, &argv);
    wait_ready(&notify, &svc);
    let sock = root.out.join("hello.sock");
    let mut answer = String::new();
    wait_until("the vassal answers through its socket", LONG, || {
        answer = http_get_unix(&sock, LONG).unwrap_or_default();
        answer.contains("from deb")
    });
    // `emperor status` finds the stats socket where the unit put it; the conffile README is no vassal.
    let status = root.ok("emperor status");
    assert!(status.contains("hello.ini") && status.contains("running"), "{status}");
    assert!(
        !status.contains("README") && !svc.stderr().contains("README"),
        "{status}\n{}",
        svc.stderr()
    );

    // ExecReload=, with MAINPID as systemd sets it: the vassal gets the emperor protocol's reload.
    let reload = unit_command(one(unit, "ExecReload"), &[("MAINPID", &svc.pid)]);
    let mut args = vec!["exec", "-e"];
    let mainpid = format!("MAINPID={}", svc.pid);
    args.extend([mainpid.as_str(), root.name.as_str()]);
    args.extend(reload.iter().map(String::as_str));
    let o = docker(&args).unwrap();
    assert!(
        o.success,
        "ExecReload {reload:?} failed ({:?}): {}{}",
        o.code, o.stdout, o.stderr
    );
    let rec = root.out.join("hello.rec");
    wait_until("the vassal reloads on ExecReload", LONG, || {
        fs::read_to_string(&rec)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("reload "))
    });
    assert!(http_get_unix(&sock, LONG).unwrap().contains("from deb"));

    // KillSignal=: a clean exit, the sockets gone, the runtime directory left empty.
    let signal = one(unit, "KillSignal");
    root.ok(&format!("kill -s {} {}", signal.trim_start_matches("SIG"), svc.pid));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = svc.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the emperor did not exit on {signal}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "exit status {status} on {signal}; stderr:\n{}",
        svc.stderr()
    );
    assert!(!sock.exists(), "the vassal's socket is removed at exit");
    assert_eq!(root.ok(&format!("ls -A {run_dir}")), "", "nothing left in {run_dir}");
    // RuntimeDirectoryPreserve=yes keeps it until a reboot, which this is.
    root.ok(&format!("rmdir {run_dir}"));
}

/// The long options of one `--help` (`emperor --help` or `emperor <command> --help`), without --help and --version.
fn help_flags(args: &[&str]) -> BTreeSet<String> {
    let out = Command::new(EMPEROR).args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "emperor {args:?} --help");
    let help = String::from_utf8_lossy(&out.stdout);
    help.lines()
        // Option lines are indented at most 6 (`  -h, --help`, `      --ini <FILE>`); wrapped descriptions more.
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with('-') && l.len() - t.len() <= 6
        })
        .flat_map(|l| long_flags(l.trim_start().split("  ").next().unwrap()))
        .filter(|f| f != "--help" && f != "--version")
        .collect()
}

/// Every `--name` in `text`.
fn long_flags(text: &str) -> Vec<String> {
    let mut flags = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("--") {
        let name: String = rest[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        if !name.is_empty() {
            flags.push(format!("--{name}"));
        }
        rest = &rest[i + 2 + name.len()..];
    }
    flags
}

/// The visible subcommands, from `emperor --help`'s Commands: list.
fn help_commands() -> Vec<String> {
    let out = Command::new(EMPEROR).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

/// README's "Command line" block: for each command ("" for the emperor itself), the options its lines name. A line
/// `emperor <command>|<command> ...` starts a command; its own options and those of the indented lines below it
/// (the part before the description column) count.
fn readme_flags() -> BTreeMap<String, BTreeSet<String>> {
    let readme = fs::read_to_string(manifest_dir().join("README.md")).unwrap();
    let section = readme
        .split("\n## Command line\n")
        .nth(1)
        .expect("README has a Command line section");
    let block = section
        .split("```")
        .nth(1)
        .expect("a code block in README's Command line section");
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Vec<String> = Vec::new();
    for line in block.lines() {
        if let Some(rest) = line.strip_prefix("emperor ") {
            let first = rest.split_whitespace().next().unwrap_or_default();
            current = if first.starts_with(['-', '[', '<']) {
                vec![String::new()]
            } else {
                first.split('|').map(str::to_owned).collect()
            };
            // The usage line's own options, `(or --emperor <DIR>)` included.
            for c in &current {
                map.entry(c.clone()).or_default().extend(long_flags(rest));
            }
        } else if line.starts_with("  -") {
            let opts = line.trim_start().split("  ").next().unwrap();
            for c in &current {
                map.entry(c.clone()).or_default().extend(long_flags(opts));
            }
        }
    }
    map
}

#[test]
fn help_and_readme_command_line_name_the_same_options() {
    let readme = readme_flags();
    let mut help: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    help.insert(String::new(), help_flags(&[]));
    for c in help_commands() {
        let flags = help_flags(&[&c]);
        help.insert(c, flags);
    }
    assert_eq!(
        readme.keys().collect::<Vec<_>>(),
        help.keys().collect::<Vec<_>>(),
        "README's Command line block has one `emperor <command>` line per command of `emperor --help`"
    );
    let mut problems = Vec::new();
    for (cmd, flags) in &help {
        let documented = &readme[cmd];
        let name = if cmd.is_empty() {
            "emperor".to_owned()
        } else {
            format!("emperor {cmd}")
        };
        for f in flags.difference(documented) {
            problems.push(format!("`{name} --help` has {f}, README's Command line does not"));
        }
        for f in documented.difference(flags) {
            problems.push(format!(
                "README's Command line has {f} for `{name}`, its --help does not"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "--help and README disagree:\n{}",
        problems.join("\n")
    );
}

/// The man pages in the package: each visible command has one, it renders without a warning and names every option
/// of that command's `--help`.
fn check_man_pages(h: &Harness, deb: &Path) {
    let tree = h.root.join("tree");
    let o = Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tree).output().unwrap();
    assert!(
        o.status.success(),
        "dpkg-deb -x: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let man1 = tree.join("usr/share/man/man1");
    let mut commands = vec![String::new()];
    commands.extend(help_commands());
    for cmd in commands {
        let page = if cmd.is_empty() {
            man1.join("emperor.1.gz")
        } else {
            man1.join(format!("emperor-{cmd}.1.gz"))
        };
        assert!(page.is_file(), "{} is packaged", page.display());
        // --warnings: groff's warnings (an unknown macro, a bad escape) go to stderr.
        let out = Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l"])
            .arg(&page)
            .env("MANWIDTH", "100")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run man ({e}): Debian's man-db, which scripts/setup installs"));
        // groff may render a hyphen as U+2010 or a minus sign.
        let text = String::from_utf8_lossy(&out.stdout).replace(['\u{2010}', '\u{2212}'], "-");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "man -l {}: {err}",
            page.display()
        );
        let args: Vec<&str> = if cmd.is_empty() { vec![] } else { vec![cmd.as_str()] };
        for f in help_flags(&args) {
            assert!(text.contains(&f), "{} does not mention {f}:\n{text}", page.display());
        }
    }
}
