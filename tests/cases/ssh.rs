//! SSH tenants on demand: Debian's OpenSSH `sshd -i` in a `FROM scratch` container with network none
//! (emperor-test/sshd, scripts/build-images), run once per connection by the shim's accept role, behind a TCP port
//! the emperor binds on 127.0.0.1; a real `ssh` client logs in with a key made for the test. The vassal file is the
//! README's example ("SSH tenants on demand"), with the test's port, home directory and host name.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::util::docker::{DockerSweep, docker, inspect, unique_name, wait_no_container};
use crate::util::{Harness, LONG, free_port, run_timeout};

const SSHD_IMAGE: &str = "emperor-test/sshd:latest";

/// A login waits for a container to start on a loaded machine; bounded all the same.
const LOGIN: Duration = Duration::from_secs(60);

/// The README's SSH vassal file, with the test's port, tenant home and host name.
fn readme_vassal(port: u16, home: &Path, hostname: &str) -> String {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README.md");
    let block = readme
        .split("\n### SSH tenants on demand\n")
        .nth(1)
        .and_then(|s| s.split("```ini\n").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("README: an ini block under \"SSH tenants on demand\"");
    for needle in ["127.0.0.1:2201", "/srv/tenants/a/home", "tenant-a"] {
        assert!(block.contains(needle), "the README's SSH example has {needle:?}");
    }
    block
        .replace("127.0.0.1:2201", &format!("127.0.0.1:{port}"))
        .replace("/srv/tenants/a/home", &home.display().to_string())
        .replace("tenant-a", hostname)
}

/// Two tenants' files, a key that both accept, and the emperor running them.
struct Tenants {
    h: Harness,
    _sweep: DockerSweep,
    key: PathBuf,
    /// (vassal file, port, host name) of each tenant.
    tenants: Vec<(String, u16, String)>,
}

impl Tenants {
    fn start(test: &str, names: &[&str]) -> Tenants {
        let sweep = DockerSweep::new();
        let image = docker(&["image", "inspect", "--format", "{{.Id}}", SSHD_IMAGE]);
        assert!(
            image.is_ok_and(|o| o.success),
            "the test image {SSHD_IMAGE} is missing: run scripts/build-images sshd (scripts/setup runs it)"
        );
        let mut h = Harness::new(test);
        let key = h.root.join("id_ed25519");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "emperor-test", "-f"])
            .arg(&key)
            .stdin(Stdio::null())
            .output()
            .expect("ssh-keygen (openssh-client; scripts/setup installs it)");
        assert!(
            out.status.success(),
            "ssh-keygen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let public = fs::read_to_string(key.with_extension("pub")).unwrap();
        let mut tenants = Vec::new();
        for name in names {
            // The tenant's home, mounted read-only: root-owned and not group- or world-writable, as sshd's
            // StrictModes wants it.
            let home = h.root.join(name).join("home");
            fs::create_dir_all(home.join(".ssh")).unwrap();
            fs::write(home.join(".ssh/authorized_keys"), &public).unwrap();
            for (p, mode) in [
                (h.root.join(name), 0o755),
                (home.clone(), 0o755),
                (home.join(".ssh"), 0o755),
            ] {
                fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
            }
            let file = format!("{}.ini", unique_name(name));
            let port = free_port();
            h.write_vassal(&file, &readme_vassal(port, &home, name));
            tenants.push((file, port, name.to_string()));
        }
        let args = sweep.emperor_args();
        h.start(&args.iter().map(String::as_str).collect::<Vec<_>>());
        for (file, _, _) in &tenants {
            h.wait_vlog(file, "waiting for a connection", LONG);
        }
        Tenants {
            h,
            _sweep: sweep,
            key,
            tenants,
        }
    }

    fn ssh(&self, port: u16, remote: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F")
            .arg("/dev/null")
            .arg("-i")
            .arg(&self.key)
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
            ])
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
            .args([
                "-o",
                "ConnectTimeout=60",
                "-p",
                &port.to_string(),
                "tenant@127.0.0.1",
                remote,
            ]);
        cmd
    }

    /// Logs in, runs `remote`, returns its stdout; fails the test with ssh's stderr otherwise.
    fn login(&self, port: u16, remote: &str) -> String {
        let out = run_timeout(&mut self.ssh(port, remote), "ssh", b"", LOGIN);
        match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            Ok(o) => {
                self.h.check(
                    false,
                    format!(
                        "ssh to port {port} failed ({}): {}",
                        o.status,
                        String::from_utf8_lossy(&o.stderr)
                    ),
                );
                unreachable!()
            }
            Err(e) => {
                self.h.check(false, e);
                unreachable!()
            }
        }
    }

    /// The container's state, `created` for one made ahead of time that never ran.
    fn state(&self, file: &str) -> String {
        inspect(file, "{{.State.Status}}").unwrap_or_else(|| "(none)".into())
    }
}

#[test]
fn each_tenant_logs_into_its_own_container_started_by_the_connection() {
    let t = Tenants::start("ssh_tenants", &["tenant-a", "tenant-b"]);
    for (file, _, _) in &t.tenants {
        t.h.wait_for(
            || t.state(file) == "created",
            LONG,
            "each tenant's container created ahead of time, not started",
        );
        t.h.check(
            !t.h.vlog_after(0, file, "spawned bridge"),
            "no tenant runs before a connection",
        );
    }
    let (a, b) = (&t.tenants[0], &t.tenants[1]);
    let got = t.login(a.1, "echo hello-$(hostname) $(id -un)");
    t.h.check(
        got.trim() == "hello-tenant-a tenant",
        format!("tenant A's container answers on A's port: {got:?}"),
    );
    t.h.check(t.state(&a.0) == "running", "A's container runs now");
    t.h.check(t.state(&b.0) == "created", "B's still waits for its first connection");
    let got = t.login(b.1, "echo hello-$(hostname) $(id -un)");
    t.h.check(
        got.trim() == "hello-tenant-b tenant",
        format!("tenant B's container answers on B's port: {got:?}"),
    );
    t.h.check(
        inspect(&a.0, "{{.HostConfig.NetworkMode}}").as_deref() == Some("none"),
        "the containers have no network",
    );
    // sshd's own log line (-e: stderr, the vassal's log), with the client's address.
    t.h.wait_for(
        || {
            t.h.stdout().lines().any(|l| {
                l.starts_with(&format!("[{}]", a.0)) && l.contains("Accepted publickey for tenant from 127.0.0.1")
            })
        },
        LONG,
        "sshd's log in tenant A's vassal log",
    );
}

#[test]
fn concurrent_logins_are_separate_sshd_instances_in_one_container() {
    let t = Tenants::start("ssh_concurrent", &["tenant-c"]);
    let (file, port, _) = t.tenants[0].clone();
    // The first session stays open until its stdin closes.
    let mut first: Child = t
        .ssh(port, "echo ppid=$PPID; read x")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh");
    let (tx, rx) = mpsc::channel();
    let stdout = first.stdout.take().unwrap();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let first_line = rx.recv_timeout(LOGIN);
    let Ok(first_line) = first_line else {
        let _ = first.kill();
        let _ = first.wait();
        t.h.check(false, "the first session's line within 60 s");
        unreachable!()
    };
    let second = t.login(port, "echo ppid=$PPID");
    let (one, two) = (first_line.trim().to_string(), second.trim().to_string());
    t.h.check(
        one.starts_with("ppid=") && two.starts_with("ppid="),
        format!("{one:?} {two:?}"),
    );
    t.h.check(one != two, format!("two sessions, two sshd processes: {one} and {two}"));
    // The accept role started both while the first was open, in the one container the connection started.
    t.h.check(
        t.h.stdout()
            .lines()
            .any(|l| l.starts_with(&format!("[{file}] accept: pid")) && l.contains("(2/32)")),
        "the second sshd started while the first ran (2 of 32)",
    );
    t.h.check(
        t.h.stderr().matches("spawned bridge").count() == 1,
        "one container for both sessions",
    );
    // Deleting the file stops the vassal with the session still open: SIGTERM goes shim → accept role → sshd,
    // which ends the session at once (the stop timeout, --reload-mercy's 30 s, would be a SIGKILL).
    let t0 = std::time::Instant::now();
    t.h.remove_vassal(&file);
    let ended = loop {
        match first.try_wait() {
            Ok(Some(st)) => break Some(st),
            _ if t0.elapsed() > LONG => break None,
            _ => thread::sleep(Duration::from_millis(20)),
        }
    };
    if ended.is_none() {
        let _ = first.kill();
        let _ = first.wait();
    }
    t.h.check(ended.is_some(), "the open session ends when its vassal stops");
    t.h.check(
        wait_no_container(&file, LONG),
        "the container is removed with the vassal",
    );
    t.h.check(
        t.h.stdout().contains(&format!(
            "[{file}] accept: SIGTERM: no more connections are accepted; SIGTERM sent to the 1 still open"
        )),
        "the accept role sent SIGTERM to the open session's sshd",
    );
}
