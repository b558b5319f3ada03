//! Bad vassal files: one clear error per change, never affecting other vassals.

use crate::util::*;
use std::thread;
use std::time::Duration;

fn error_lines(h: &Harness, needle: &str) -> Vec<String> {
    h.log_lines(needle)
}

#[test]
fn bad_file_reported_once_and_fixed() {
    let mut h = Harness::new("bad_file_reported_once");
    h.write_vassal("good.ini", &h.app_ini("good.ini", ""));
    let bad_path = h.vassal("bad.ini");
    // Line 3 holds the misspelt key.
    let bad = format!(
        "[emperor]\n{}sockte = {}\n",
        h.exec_line("bad.ini", ""),
        h.sock("bad.sock").display()
    );
    h.write_vassal("bad.ini", &bad);
    h.start(&["--emperor-freq", "1"]);
    let good = h.wait_starts("good.ini", 1, LONG)[0].pid();

    let tag = format!("{}:3:", bad_path.display());
    h.wait_log(&tag, LONG);
    let lines = error_lines(&h, &tag);
    h.check(
        lines.len() == 1,
        format!("expected exactly one error line for {tag}: {lines:?}"),
    );
    let l = &lines[0];
    h.check(l.contains("ERROR"), format!("error must be logged at ERROR level: {l}"));
    h.check(
        l.contains("[emperor] sockte"),
        format!("error must name the section and key: {l}"),
    );
    h.check(
        l.contains("did you mean \"socket\""),
        format!("error must suggest \"socket\": {l}"),
    );

    // Proving a negative: after 2.5 s (at least two rescans with --emperor-freq 1) the error is still reported once.
    thread::sleep(Duration::from_millis(2500));
    let lines = error_lines(&h, &tag);
    h.check(
        lines.len() == 1,
        format!("error must not be repeated by rescans: {lines:?}"),
    );
    h.check(h.starts("bad.ini").is_empty(), "the bad vassal must not start");
    h.check(
        alive(good) && h.starts("good.ini").len() == 1,
        "the good vassal keeps running, same pid",
    );

    // Fixing the file starts it.
    h.write_vassal("bad.ini", &bad.replace("sockte", "socket"));
    let s = &h.wait_starts("bad.ini", 1, LONG)[0];
    h.check(s.get("listen_fds") == "1", format!("{s:?}"));
    h.wait_http_unix(h.sock("bad.sock"), LONG);
    h.check(
        alive(good) && h.starts("good.ini").len() == 1,
        "the good vassal is still untouched",
    );
}

#[test]
fn running_vassal_survives_invalid_edit() {
    let mut h = Harness::new("running_vassal_survives_invalid_edit");
    let content = h.app_ini("r.ini", "");
    h.write_vassal("r.ini", &content);
    h.start(&["--emperor-freq", "1"]);
    let pid = h.wait_starts("r.ini", 1, LONG)[0].pid();

    // Line 2 becomes an invalid socket spec... use an unknown key, which every implementation must reject.
    h.write_vassal(
        "r.ini",
        &format!(
            "[emperor]\nnot-a-key = 1\n{}",
            content.trim_start_matches("[emperor]\n")
        ),
    );
    let tag = format!("{}:2:", h.vassal("r.ini").display());
    h.wait_log(&tag, LONG);
    // Proving a negative: the old instance keeps running on its last good config for 1.5 s (includes a rescan).
    thread::sleep(Duration::from_millis(1500));
    h.check(
        alive(pid),
        format!("running vassal {pid} must keep running after its file became invalid"),
    );
    h.check(h.starts("r.ini").len() == 1, "no restart on an invalid file");
    h.check(error_lines(&h, &tag).len() == 1, "invalid file reported once");
    h.wait_http_unix(h.sock("r.ini.sock"), LONG);

    // Fixing it reloads it (a silent vassal: new pid).
    h.write_vassal("r.ini", &content);
    let starts = h.wait_starts("r.ini", 2, LONG);
    h.check(
        starts[1].pid() != pid,
        format!("fixing the file must reload the vassal: {starts:?}"),
    );
    h.wait_dead(pid, LONG, "old instance after the fix");
}

#[test]
fn bad_socket_value_names_line_and_key() {
    let mut h = Harness::new("bad_socket_value");
    let bad = format!("[emperor]\n\n{}socket = 127.0.0.1:notaport\n", h.exec_line("v.ini", ""));
    h.write_vassal("v.ini", &bad);
    h.start(&[]);
    let tag = format!("{}:4:", h.vassal("v.ini").display());
    h.wait_log(&tag, LONG);
    let lines = error_lines(&h, &tag);
    h.check(
        lines.len() == 1 && lines[0].contains("ERROR") && lines[0].contains("socket") && lines[0].contains("notaport"),
        format!("one ERROR line naming key and value expected: {lines:?}"),
    );
    h.check(h.starts("v.ini").is_empty(), "must not start");
}

/// Entries named like vassals that cannot be one: each gets one error line when it appears, a row in
/// `emperor status`, and none of them starts or disturbs the good vassal. Control characters are shown escaped.
#[test]
fn odd_entries_are_reported_once_and_shown_by_status() {
    use std::os::unix::fs::symlink;
    let mut h = Harness::new("odd_entries");
    h.write_vassal("good.ini", &h.app_ini("good.ini", ""));
    h.write_vassal("empty.ini", "");
    h.write_vassal("comments.ini", "; nothing but a comment\n\n");
    std::fs::create_dir(h.vassal("dir.ini")).unwrap();
    symlink("nowhere.conf", h.vassal("dangling.ini")).unwrap();
    symlink("loop.ini", h.vassal("loop.ini")).unwrap();
    nix::unistd::mkfifo(&h.vassal("fifo.ini"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    std::fs::write(h.vassal("nul.ini"), "[emperor]\nexec = /bin/true\0 --evil\n").unwrap();
    std::fs::write(h.vassal("latin.ini"), b"[emperor]\nexec = caf\xe9\n").unwrap();
    let stats = h.root.join("stats.sock");
    h.start(&["--emperor-freq", "1", "--emperor-stats", stats.to_str().unwrap()]);
    let good = h.wait_starts("good.ini", 1, LONG)[0].pid();

    let expect = [
        ("empty.ini", "empty file: nothing to run"),
        ("comments.ini", "empty file: nothing to run"),
        ("dir.ini", "a directory, not a vassal file"),
        ("dangling.ini", "a dangling symlink (-> nowhere.conf)"),
        ("loop.ini", "a symlink loop"),
        ("fifo.ini", "a FIFO, not a vassal file"),
        ("nul.ini", "nul.ini:2: a NUL byte"),
        ("latin.ini", "latin.ini:2: not valid UTF-8"),
    ];
    let lines_of = |h: &Harness, file: &str, what: &str| -> Vec<String> {
        error_lines(h, &format!("[{file}] "))
            .into_iter()
            .filter(|l| l.contains(what))
            .collect()
    };
    for (file, what) in expect {
        h.wait_for(
            || !lines_of(&h, file, what).is_empty(),
            LONG,
            &format!("the error for {file}"),
        );
    }
    // Proving a negative: 2.5 s (two rescans) later each is still reported once, and nothing started.
    thread::sleep(Duration::from_millis(2500));
    for (file, what) in expect {
        let lines = lines_of(&h, file, what);
        h.check(
            lines.len() == 1 && lines[0].contains("ERROR"),
            format!("{file}: one ERROR line with {what:?}: {lines:?}"),
        );
    }
    let spawned = h.spawned();
    h.check(
        spawned.len() == 1 && spawned[0].contains("[good.ini]"),
        format!("only the good vassal was spawned: {spawned:?}"),
    );
    h.check(
        alive(good) && h.starts("good.ini").len() == 1,
        "the good vassal is untouched",
    );
    let err = h.stderr();
    h.check(
        !err.chars().any(|c| c.is_control() && c != '\n'),
        "no raw control character in the log",
    );
    h.check(err.contains("/bin/true\\0 --evil"), "the NUL byte is shown escaped");

    let out = std::process::Command::new(EMPEROR)
        .args(["status", "--stats", stats.to_str().unwrap()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    for (file, what) in expect {
        h.check(
            table
                .lines()
                .any(|l| l.starts_with(&format!("{file}: ")) && l.contains(what)),
            format!("emperor status shows {file}'s error {what:?}:\n{table}"),
        );
    }
    h.check(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "no raw control character in status",
    );

    // The symlink's target appears: the vassal starts.
    std::fs::write(h.vassal("nowhere.conf"), h.app_ini("dangling.ini", "")).unwrap();
    h.touch_vassal("dir.ini"); // any event; the periodic rescan would do too
    h.wait_starts("dangling.ini", 1, LONG);

    // A fix that changes only the ctime (same size, same mtime, same inode: what a chmod of an unreadable file
    // looks like to a scan) is picked up, because the file was in error.
    let fixed = h.app_ini("latin.ini", "");
    std::fs::write(h.vassal("latin.ini"), fixed.replace("exec", "exxc")).unwrap();
    h.wait_for(
        || !lines_of(&h, "latin.ini", "exxc").is_empty(),
        LONG,
        "the misspelt key of latin.ini reported",
    );
    let mtime = std::fs::metadata(h.vassal("latin.ini")).unwrap().modified().unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(h.vassal("latin.ini"))
        .unwrap();
    std::io::Write::write_all(&mut f, fixed.as_bytes()).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    h.wait_starts("latin.ini", 1, LONG);
}
