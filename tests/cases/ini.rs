//! `--ini`: the real emperor started from uWSGI emperor files.
//!
//! The two uwsgi-docker files run as published: the README's ("And now we can finally run the Emperor"), whose
//! only change is its vassals directory (`/etc/uwsgi` becomes the test's), and the plugin's own test file
//! `t/emperor.ini`, byte for byte, started as its t/README says (`uwsgi t/emperor.ini` from the plugin's
//! directory: a bare `.ini` argument), its `%d` finding the vassals in `t/Emperor/`. Their vassal is a `[uwsgi]`
//! Docker vassal (Debian's uWSGI in emperor-test/uwsgi, network none, a socket passed in) as in
//! `uwsgi_docker.rs`, and `emperor-wrapper = /usr/bin/uwsgi` reaches the container only through the file.
//! Then uWSGI's habits with process vassals (placeholders, magic variables, a `*.ini` glob, master-only keys),
//! the command line overriding the file, and a bad file refused as a whole with one line per problem.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::cases::uwsgi_docker::{sweep, wait_answer};
use crate::util::docker::{DockerSweep, inspect, unique_name};
use crate::util::{Harness, LONG, write_atomic};

/// uwsgi-docker's README.md, the emperor file under "And now we can finally run the Emperor", verbatim.
const README_EMPEROR_INI: &str = "\
[uwsgi]
plugin = path_to/docker_plugin.so
emperor = dir:///etc/uwsgi
; once the plugin is loaded, docker support is optional
; this option disallow running vassals without docker
emperor-docker-required = true
; use /usr/bin/uwsgi as the container entry point (the path coudl be different from the Emperor one, so we force it)
emperor-wrapper = /usr/bin/uwsgi

";

/// uwsgi-docker's t/emperor.ini, verbatim.
const TEST_EMPEROR_INI: &str = "\
[uwsgi]
plugin = ./docker_plugin.so
emperor = dir:///%d/Emperor
; Just loading the plugin does not force Docker support.
; This option disallows running vassals without Docker.
emperor-docker-required = true
; Use /usr/bin/uwsgi as the container entry point (the path could be different from the Emperor one, so we force it)
emperor-wrapper = /usr/bin/uwsgi
";

/// A cold start of uWSGI in a container (create, start, hand-over, Python).
const START: Duration = Duration::from_secs(20);

/// uwsgi-docker's `docker-socket` vassal with the image's python app instead of psgi001, network none.
fn docker_vassal(sock: &Path) -> String {
    format!(
        "[emperor]\ndocker-image = emperor-test/uwsgi\ndocker-network-mode = none\ndocker-socket = {}\n\n\
         [uwsgi]\nplugins = python3\nwsgi-file = /app/app.py\nprotocol = http\nprocesses = 1\ncfgver = ini\n",
        sock.display()
    )
}

/// Starts the emperor with `args` and the sweep's labels (the only options not from the file).
fn start(h: &mut Harness, sweep: &DockerSweep, args: &[&str]) {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(sweep.emperor_args());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    h.start_role(&refs);
}

/// The uWSGI Docker vassal `file` answers on `sock`, and its container runs the file's emperor-wrapper.
fn check_docker_vassal(h: &Harness, file: &str, sock: &Path) {
    let r = wait_answer(h, sock, "cfg=ini", START);
    h.check(r.contains("hello from uwsgi-in-docker"), format!("answer: {r:?}"));
    let cmd = inspect(file, "{{json .Config.Cmd}}").unwrap_or_default();
    h.check(
        cmd == format!("[\"/usr/bin/uwsgi\",\"--ini\",\"emperor://{file}\"]"),
        format!("the file's emperor-wrapper is the container's command: {cmd}"),
    );
}

#[test]
fn the_uwsgi_docker_readme_emperor_file_runs_a_docker_vassal() {
    let sweep = sweep();
    let mut h = Harness::new("ini_readme");
    let name = unique_name("readme");
    let file = format!("{name}.ini");
    let sock = h.sock("example.com.socket");
    h.write_vassal(&file, &docker_vassal(&sock));
    // A process vassal: emperor-docker-required refuses it.
    h.write_vassal("plain.ini", &h.app_ini("plain", ""));
    let ini = h.root.join("emperor.ini");
    let vassals = h.vassals();
    let text = README_EMPEROR_INI.replace("dir:///etc/uwsgi", &format!("dir://{}", vassals.display()));
    h.check(text != README_EMPEROR_INI, "the vassals directory is substituted");
    fs::write(&ini, text).unwrap();
    start(&mut h, &sweep, &["--ini", ini.to_str().unwrap()]);

    check_docker_vassal(&h, &file, &sock);
    h.wait_vlog("plain.ini", "--emperor-docker-required", LONG);
    h.check(h.starts("plain").is_empty(), "the process vassal is not started");
    // One info line, about the plugin.
    let ignored = h.log_lines("ignored");
    h.check(
        ignored.len() == 1
            && ignored[0].contains(" INFO ")
            && ignored[0].contains("emperor.ini: ignored plugin (line 2)")
            && ignored[0].contains("Docker support is built in"),
        format!("one info line naming the plugin: {ignored:?}"),
    );
}

#[test]
fn the_uwsgi_docker_test_emperor_file_runs_byte_for_byte() {
    let sweep = sweep();
    let mut h = Harness::new("ini_t");
    let name = unique_name("tfile");
    let file = format!("{name}.ini");
    let sock = h.sock("t.sock");
    let emperor_dir = h.root.join("t").join("Emperor");
    fs::create_dir_all(&emperor_dir).unwrap();
    write_atomic(&emperor_dir.join(&file), &docker_vassal(&sock));
    fs::write(h.root.join("t").join("emperor.ini"), TEST_EMPEROR_INI).unwrap();
    // As its t/README runs it, from the plugin's directory (the harness's working directory is h.root).
    start(&mut h, &sweep, &["t/emperor.ini"]);

    check_docker_vassal(&h, &file, &sock);
    h.wait_log(&format!("watching {}", emperor_dir.display()), LONG);
}

#[test]
fn uwsgi_habits_in_an_emperor_file_run_process_vassals() {
    let mut h = Harness::new("ini_habits");
    h.write_vassal("app.ini", &h.app_ini("app", ""));
    // Not a vassal: only *.ini files match the glob.
    h.write_vassal("notes.txt", "[emperor]\nexec = /bin/false\n");
    let ini = h.root.join("conf").join("emperor.ini");
    fs::create_dir_all(ini.parent().unwrap()).unwrap();
    fs::write(
        &ini,
        "[uwsgi]\n\
         ; the file's directory is %d; the vassals are beside it\n\
         base = %d..\n\
         emperor = %(base)/vassals/*.ini\n\
         master = true\n\
         processes = 4\n\
         chmod-socket = 640\n\
         set-placeholder = run = %(base)/run\n\
         emperor-stats = %(run)/%n-stats.sock\n\
         emperor-throttle = 250\n",
    )
    .unwrap();
    h.start_role(&["--ini", ini.to_str().unwrap()]);

    h.wait_starts("app", 1, LONG);
    let sock = h.sock("app.sock");
    let r = h.wait_http_unix(&sock, LONG);
    h.check(r.contains("hello from"), format!("answer: {r:?}"));
    let mode = fs::metadata(&sock).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    h.check(mode == 0o640, format!("socket mode {mode:o}, want 640 (chmod-socket)"));
    // emperor-stats from two placeholders and %n.
    let stats = h.root.join("run").join("emperor-stats.sock");
    h.wait_for(|| stats.exists(), LONG, "the stats socket named by the file");
    let out = std::process::Command::new(crate::util::EMPEROR)
        .args(["status", "--json", "--stats", stats.to_str().unwrap()])
        .output()
        .unwrap();
    let doc = String::from_utf8_lossy(&out.stdout);
    h.check(
        out.status.success() && doc.contains("\"app.ini\""),
        format!("emperor status reads the file's stats socket: {doc}"),
    );
    let ignored = h.log_lines("ignored");
    h.check(
        ignored.len() == 1 && ignored[0].contains("master (line 5), processes (line 6)"),
        format!("one info line naming master and processes: {ignored:?}"),
    );
    h.check(h.starts("app").len() == 1, "one start");
}

#[test]
fn the_command_line_overrides_the_file() {
    let mut h = Harness::new("ini_override");
    h.write_vassal("app.ini", &h.app_ini("app", ""));
    let ini = h.root.join("emperor.ini");
    // The file's directory does not exist and its mode is not the one wanted: the command line's win.
    fs::write(&ini, "[uwsgi]\nemperor = /nonexistent/vassals\nchmod-socket = 640\n").unwrap();
    h.start(&["--ini", ini.to_str().unwrap(), "--chmod-socket", "600"]);
    h.wait_starts("app", 1, LONG);
    let sock = h.sock("app.sock");
    h.wait_http_unix(&sock, LONG);
    let mode = fs::metadata(&sock).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    h.check(
        mode == 0o600,
        format!("socket mode {mode:o}, want 600 (--chmod-socket)"),
    );
    h.check(
        h.log_lines("ignored").is_empty(),
        "no info line: every key is the emperor's",
    );
}

#[test]
fn a_bad_emperor_file_is_refused_with_every_problem() {
    let mut h = Harness::new("ini_bad");
    h.write_vassal("app.ini", &h.app_ini("app", ""));
    let ini = h.root.join("emperor.ini");
    fs::write(
        &ini,
        format!(
            "[uwsgi]\nemperor = {}\nemperor-throtle = 500\nuid = www-data\nemperor-freq = %(freq)\n",
            h.vassals().display()
        ),
    )
    .unwrap();
    h.start_role(&["--ini", ini.to_str().unwrap()]);
    let st = h.wait_exit(LONG);
    h.check(st.code() == Some(2), format!("exit status {st:?}"));
    let path = ini.display().to_string();
    for want in [
        format!("{path}:3: [uwsgi] emperor-throtle = \"500\": unknown key; did you mean \"emperor-throttle\"?"),
        format!("{path}:4: [uwsgi] uid = \"www-data\": not supported: the emperor does not change its user"),
        format!("{path}:5: [uwsgi] emperor-freq = \"%(freq)\": unknown placeholder %(freq)"),
    ] {
        h.check(
            h.stderr().contains(&want),
            format!("the error names file, line and key: {want}"),
        );
    }
    let problems = h.log_lines(&format!("{path}:"));
    h.check(problems.len() == 3, format!("one line per problem: {problems:?}"));
    h.check(h.starts("app").is_empty(), "nothing was started");
}
