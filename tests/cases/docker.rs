//! Docker vassals against a real Docker daemon: the bridge, the proxy socket and the shim together.
//!
//! Every test holds a `DockerSweep`, whose drop removes every container with the test's label even
//! when the test fails, and passes that label to the emperor (`--docker-label`). Vassal names are
//! unique per run, because container names are daemon-wide.

use std::fs;
use std::time::Duration;

use crate::util::docker::{DockerSweep, container_exists, inspect, unique_name, wait_no_container};
use crate::util::{Harness, LONG};

use crate::util::docker::testapp_vassal as vassal;

const IMAGE: &str = "emperor-test/testapp";

fn start(h: &mut Harness, sweep: &DockerSweep, extra: &[&str]) {
    let mut args: Vec<String> = sweep.emperor_args();
    args.extend(["--reload-mercy", "5"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    h.start(&refs);
}

#[test]
fn docker_vassal_serves_through_the_passed_socket_with_network_none() {
    let sweep = DockerSweep::new();
    let mut h = Harness::new("docker_serves");
    let name = unique_name("serve");
    let file = format!("{name}.ini");
    h.write_vassal(&file, &vassal(&h, &name, ""));
    start(&mut h, &sweep, &[]);
    let s = &h.wait_starts(&name, 1, LONG)[0];
    h.check(
        s.get("listen_fds") == "1" && s.get("listen_pid_ok") == "1",
        format!("LISTEN_FDS in the container: {s:?}"),
    );
    h.check(
        s.get("emperor_fd") != "-",
        format!("UWSGI_EMPEROR_FD in the container: {s:?}"),
    );
    let r = h.wait_http_unix(h.sock(&format!("{name}.sock")), LONG);
    h.check(
        r.contains(&format!("hello from {name}")),
        format!("answer through the socket: {r:?}"),
    );

    // The container carries the labels, runs with network none, and is the vassal's name.
    let labels = inspect(&file, "{{json .Config.Labels}}").unwrap_or_default();
    for want in [
        "emperor.vassal",
        "emperor.instance",
        "emperor.config-hash",
        sweep.case_label(),
    ] {
        let key = want.split('=').next().unwrap();
        h.check(labels.contains(key), format!("label {key} on the container: {labels}"));
    }
    let net = inspect(&file, "{{.HostConfig.NetworkMode}}").unwrap_or_default();
    h.check(net.trim() == "none", format!("network mode: {net}"));
    // The app's output reaches the emperor's stdout with the vassal's prefix (the test app prints nothing
    // by default, so check the bridge's own log line instead).
    h.wait_vlog(&file, "started", LONG);
}

#[test]
fn touch_replaces_the_container_and_the_socket_stays() {
    let sweep = DockerSweep::new();
    let mut h = Harness::new("docker_touch");
    let name = unique_name("touch");
    let file = format!("{name}.ini");
    h.write_vassal(&file, &vassal(&h, &name, ""));
    start(&mut h, &sweep, &[]);
    h.wait_starts(&name, 1, LONG);
    let sock = h.sock(&format!("{name}.sock"));
    h.wait_http_unix(&sock, LONG);
    let first_id = inspect(&file, "{{.Id}}").unwrap_or_default();
    let ino = fs::metadata(&sock)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();

    h.touch_vassal(&file);
    h.wait_starts(&name, 2, LONG);
    let r = h.wait_http_unix(&sock, LONG);
    h.check(r.contains("hello from"), format!("answer after the reload: {r:?}"));
    // The new container starts beside the old one as `<name>.next` and takes the name once the old one
    // is gone (an overlapping reload).
    // Sooner than the 10 s a silent instance waits at the latest: the emperor sees the new container's
    // app waiting for connections (through the container's process tree) and retires the old one.
    h.wait_for(
        || inspect(&file, "{{.Id}}").is_some_and(|id| !id.trim().is_empty() && id != first_id),
        Duration::from_secs(7),
        "a new container under the vassal's name",
    );
    let ino2 = fs::metadata(&sock)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    h.check(ino == ino2, "the socket file is the same one across the reload");
}

#[test]
fn delete_removes_the_container_and_sigterm_removes_all() {
    let sweep = DockerSweep::new();
    let mut h = Harness::new("docker_delete");
    let a = unique_name("dela");
    let b = unique_name("delb");
    h.write_vassal(&format!("{a}.ini"), &vassal(&h, &a, ""));
    h.write_vassal(&format!("{b}.ini"), &vassal(&h, &b, ""));
    start(&mut h, &sweep, &[]);
    h.wait_starts(&a, 1, LONG);
    h.wait_starts(&b, 1, LONG);
    h.remove_vassal(&format!("{a}.ini"));
    h.check(
        wait_no_container(&format!("{a}.ini"), LONG),
        "the deleted vassal's container is removed",
    );
    h.check(
        !h.sock(&format!("{a}.sock")).exists(),
        "the deleted vassal's socket is unlinked",
    );
    h.check(
        container_exists(&format!("{b}.ini")),
        "the other vassal's container is untouched",
    );

    h.signal(libc::SIGTERM);
    let status = h.wait_exit(Duration::from_secs(30));
    h.check(status.code() == Some(0), format!("emperor exit status {status:?}"));
    h.check(
        sweep.containers().is_empty(),
        format!("no container left: {:?}", sweep.containers()),
    );
}

#[test]
fn kill_9_of_the_emperor_leaves_no_container_and_a_restart_converges() {
    let sweep = DockerSweep::new();
    let mut h = Harness::new("docker_kill9");
    let name = unique_name("k9");
    let file = format!("{name}.ini");
    h.write_vassal(&file, &vassal(&h, &name, ""));
    start(&mut h, &sweep, &[]);
    h.wait_starts(&name, 1, LONG);
    h.signal(libc::SIGKILL);
    h.wait_exit(LONG);
    h.check(
        wait_no_container(&file, Duration::from_secs(20)),
        "the bridge removes the container after kill -9",
    );

    drop(h);

    // A new emperor with the same vassal runs exactly one container for it.
    let mut h2 = Harness::new("docker_kill9_again");
    h2.write_vassal(&file, &vassal(&h2, &name, ""));
    start(&mut h2, &sweep, &[]);
    h2.wait_starts(&name, 1, LONG);
    let rows = sweep.containers();
    h2.check(rows.len() == 1, format!("exactly one container: {rows:?}"));
}

#[test]
fn missing_image_and_bad_values_leave_the_others_running() {
    let sweep = DockerSweep::new();
    let mut h = Harness::new("docker_bad");
    let good = unique_name("good");
    let missing = unique_name("missing");
    let bad = unique_name("badmem");
    h.write_vassal(&format!("{good}.ini"), &vassal(&h, &good, ""));
    h.write_vassal(
        &format!("{missing}.ini"),
        &vassal(&h, &missing, "").replace(IMAGE, "emperor-test/does-not-exist"),
    );
    h.write_vassal(&format!("{bad}.ini"), &vassal(&h, &bad, "docker-memory = lots\n"));
    h.write_vassal(&format!("@{bad}.ini"), &vassal(&h, &format!("at{bad}"), ""));
    start(&mut h, &sweep, &["--emperor-throttle", "500"]);
    h.wait_vlog(&format!("@{bad}.ini"), "is not a valid container name", LONG);
    let first = h.wait_starts(&good, 1, LONG)[0].pid();
    h.wait_vlog(&format!("{missing}.ini"), "not found", LONG);
    h.wait_vlog(&format!("{bad}.ini"), "docker-memory", LONG);
    // The missing image is retried (throttled), not given up; the reason, with the command that builds the
    // image, is logged once however many retries fail the same way.
    let tag = format!("[{missing}.ini] ");
    let file = format!("{missing}.ini");
    h.wait_for(
        || attempts(&h, &file) >= 3,
        LONG,
        "three attempts of the vassal with the missing image",
    );
    let lines: Vec<String> = h
        .stderr()
        .lines()
        .filter(|l| l.contains(&tag) && !l.contains("spawned bridge"))
        .map(String::from)
        .collect();
    h.check(
        lines.len() == 1
            && lines[0].contains("ERROR")
            && lines[0].contains("not found")
            && lines[0].contains("`scripts/build-images does-not-exist`"),
        format!(
            "one line saying what to do for {} attempts: {lines:?}",
            attempts(&h, &file)
        ),
    );
    h.check(
        h.starts(&good).len() == 1 && h.starts(&good)[0].pid() == first,
        "the good vassal kept running",
    );
    h.check(!h.stderr().contains("panicked"), "no panic");
}

#[test]
fn docker_required_refuses_process_vassals_and_a_non_root_user_is_served() {
    let sweep = DockerSweep::new();
    let mut h = Harness::new("docker_required");
    let name = unique_name("nobody");
    h.write_vassal(
        &format!("{name}.ini"),
        &vassal(&h, &name, "docker-user = 65534:65534\n"),
    );
    // The record dir must be writable by the container's user.
    fs::set_permissions(h.root.join("rec"), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    h.write_vassal("plain.ini", &h.app_ini("plain", ""));
    start(&mut h, &sweep, &["--emperor-docker-required"]);
    h.wait_starts(&name, 1, LONG);
    let r = h.wait_http_unix(h.sock(&format!("{name}.sock")), LONG);
    h.check(
        r.contains("hello from"),
        format!("a non-root container user is served: {r:?}"),
    );
    h.wait_vlog("plain.ini", "--emperor-docker-required", LONG);
    h.check(
        h.starts("plain").is_empty(),
        "a vassal without docker-image is not started",
    );
}

/// How many bridges the emperor spawned for the vassal `file`.
fn attempts(h: &Harness, file: &str) -> usize {
    lines_with(h, file, "spawned bridge")
}

/// How many of the emperor's log lines about the vassal `file` contain `needle`.
fn lines_with(h: &Harness, file: &str, needle: &str) -> usize {
    let tag = format!("[{file}] ");
    h.stderr()
        .lines()
        .filter(|l| l.contains(&tag) && l.contains(needle))
        .count()
}

#[test]
fn unreachable_daemon_and_silent_container_are_retried_with_clear_messages() {
    let sweep = DockerSweep::new();
    let mut h = Harness::new("docker_unreach");
    let silent = unique_name("silent");
    // docker-shim = false with an image that never speaks the proxy protocol: it never connects.
    h.write_vassal(&format!("{silent}.ini"), &vassal(&h, &silent, "docker-shim = false\n"));
    start(
        &mut h,
        &sweep,
        &["--docker-connect-timeout", "2", "--emperor-throttle", "500"],
    );
    h.wait_vlog(
        &format!("{silent}.ini"),
        "did not connect to its proxy socket within 2 s",
        LONG,
    );
    let file = format!("{silent}.ini");
    // Retried (throttled), and the reason, the same each time but for the container id, said once.
    h.wait_for(
        || attempts(&h, &file) >= 2,
        LONG,
        "a second attempt of the silent vassal",
    );
    let said = lines_with(&h, &file, "did not connect to its proxy socket");
    h.check(
        said == 1,
        format!("the reason is logged once, not per attempt ({said} lines)"),
    );
    h.check(
        wait_no_container(&file, LONG),
        "the container that never connected is removed",
    );

    let mut h2 = Harness::new("docker_unreach2");
    let name = unique_name("nodaemon");
    h2.write_vassal(&format!("{name}.ini"), &vassal(&h2, &name, ""));
    h2.write_vassal("plain.ini", &h2.app_ini("plain", ""));
    start(
        &mut h2,
        &sweep,
        &[
            "--docker-daemon-socket",
            "/nonexistent/docker.sock",
            "--emperor-throttle",
            "500",
        ],
    );
    // A daemon that does not answer is nobody's fault: the bridge waits for it rather than failing (and
    // being throttled) over and over, and the emperor says so once, not once per vassal or attempt.
    h2.wait_log(
        "the Docker daemon at unix:///nonexistent/docker.sock does not answer",
        LONG,
    );
    let file = format!("{name}.ini");
    h2.wait_starts("plain", 1, LONG);
    // Long enough for several throttled attempts had the bridge given up (throttle 500 ms).
    std::thread::sleep(Duration::from_secs(2));
    h2.check(attempts(&h2, &file) == 1, "one bridge, waiting for the daemon");
    let said = h2.stderr().matches("does not answer").count();
    h2.check(said == 1, format!("the daemon's absence is logged once ({said} lines)"));
    h2.wait_starts("plain", 1, LONG);
    h2.check(!h2.stderr().contains("panicked"), "no panic");
}

#[test]
fn a_restarted_emperor_reaps_the_container_of_a_vassal_deleted_while_it_was_down() {
    let sweep = DockerSweep::new();
    let mut h = Harness::new("docker_reap");
    let name = unique_name("orphan");
    let file = format!("{name}.ini");
    h.write_vassal(&file, &vassal(&h, &name, ""));
    let run_dir = h.root.join("run");
    let run_arg = run_dir.to_str().unwrap().to_string();
    start(&mut h, &sweep, &["--emperor-run-dir", &run_arg]);
    h.wait_starts(&name, 1, LONG);
    // Kill the bridge, then the emperor, so that nobody cleans up: the container stays behind. The emperor
    // is frozen first: awake, it would start a bridge that carries on with the container.
    let bridge = h.bridge_pid();
    h.signal(libc::SIGSTOP);
    crate::util::kill(bridge, libc::SIGKILL);
    h.wait_dead(bridge, LONG, "the killed bridge");
    h.signal(libc::SIGKILL);
    h.wait_exit(LONG);
    h.check(container_exists(&file), "the container outlived its bridge and emperor");
    // What the killed bridge left in the instance's run directory: its proxy directory and its record.
    let leftovers = || -> Vec<String> {
        fs::read_dir(&run_dir)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|inst| fs::read_dir(inst.path()).into_iter().flatten().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let before = leftovers();
    h.check(
        before.contains(&file) && before.contains(&format!("bridge-{bridge}.json")),
        format!("the killed bridge's leftovers: {before:?}"),
    );
    h.remove_vassal(&file);
    h.clear_exited();
    start(&mut h, &sweep, &["--emperor-docker", "--emperor-run-dir", &run_arg]);
    h.check(
        wait_no_container(&file, LONG),
        "the restarted emperor removed the orphaned container",
    );
    // Only the running emperor's own lock (docker/owner.rs) is left.
    let left: Vec<String> = leftovers().into_iter().filter(|f| f != "emperor.lock").collect();
    h.check(
        left.is_empty(),
        format!("the restarted emperor cleared the run directory: {left:?}"),
    );
}

/// `docker-cidfile` holds the running container's id and goes with the container.
#[test]
fn the_cidfile_names_the_container_and_goes_with_it() {
    let sweep = DockerSweep::new();
    let mut h = Harness::new("docker_cidfile");
    let name = unique_name("cid");
    let cid = h.root.join("app.cid");
    h.write_vassal(
        &format!("{name}.ini"),
        &vassal(&h, &name, &format!("docker-cidfile = {}\n", cid.display())),
    );
    start(&mut h, &sweep, &[]);
    h.wait_starts(&name, 1, LONG);
    let file = format!("{name}.ini");
    let id = inspect(&file, "{{.Id}}").unwrap_or_default();
    h.wait_for(
        || fs::read_to_string(&cid).is_ok_and(|t| t.trim() == id && !id.is_empty()),
        LONG,
        "the cidfile with the container's id",
    );
    h.remove_vassal(&file);
    h.check(
        wait_no_container(&file, LONG),
        "the container is removed with its vassal",
    );
    h.wait_for(|| !cid.exists(), LONG, "the cidfile removed with its container");
}

/// Two emperors on one daemon with a same-named vassal: the second never replaces the first's container
/// while the first runs (it says whose it is, once), and takes the name once the first has stopped.
#[test]
fn a_running_emperors_container_is_never_taken_by_another_emperor() {
    let sweep = DockerSweep::new();
    let name = unique_name("shared");
    let file = format!("{name}.ini");
    let mut first = Harness::new("docker_owner_a");
    first.write_vassal(&file, &vassal(&first, &name, ""));
    start(&mut first, &sweep, &[]);
    first.wait_starts(&name, 1, LONG);
    let id = inspect(&file, "{{.Id}}").unwrap_or_default();

    let mut second = Harness::new("docker_owner_b");
    second.write_vassal(&file, &vassal(&second, &name, ""));
    start(&mut second, &sweep, &["--emperor-throttle", "300"]);
    second.wait_for(
        || attempts(&second, &file) >= 3,
        LONG,
        "three attempts of the second emperor",
    );
    let said = lines_with(&second, &file, "belongs to another emperor that is running");
    second.check(
        said == 1,
        format!("the refusal is logged once ({said} lines):\n{}", second.stderr()),
    );
    second.check(
        second.stderr().contains(&first.vassals().display().to_string()),
        "the refusal names the other emperor's vassals directory",
    );
    first.check(
        inspect(&file, "{{.Id}}").as_deref() == Some(id.as_str()),
        "the first emperor's container is untouched",
    );
    first.check(first.starts(&name).len() == 1, "and its app was never restarted");

    first.signal(libc::SIGTERM);
    first.wait_exit(LONG);
    second.wait_starts(&name, 1, LONG);
    second.check(
        container_exists(&file),
        "the second emperor runs the vassal once the first is gone",
    );
}
