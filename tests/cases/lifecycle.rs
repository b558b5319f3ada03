//! Vassal files come and go: start, touch (reload), delete, rename, ignored names.

use crate::util::*;
use std::fs;
use std::thread;
use std::time::Duration;

/// An overlapping reload of an app that does not speak the protocol: the old instance serves while the
/// new one loads, and goes once the kernel shows the new one waiting for connections, well before the
/// 10 s that are the latest a silent instance waits.
#[test]
fn overlap_retires_the_old_instance_once_the_new_one_waits_for_connections() {
    let mut h = Harness::new("overlap_listening");
    h.write_vassal("slow.ini", &h.app_ini("slow", "--accept-delay 1500"));
    h.start(&[]);
    let old = h.wait_starts("slow", 1, LONG)[0].pid();
    let serving = |pid: i32| h.records("slow").iter().any(|r| r.kind == "serving" && r.pid() == pid);
    h.wait_for(|| serving(old), LONG, "the first instance serving");
    h.touch_vassal("slow.ini");
    let new = h.wait_starts("slow", 2, LONG)[1].pid();
    // Proves a negative for a bounded time: the new one is still loading, the old one must serve.
    thread::sleep(Duration::from_millis(800));
    h.check(
        !serving(new) && alive(old),
        "the old instance serves while the new one loads",
    );
    let r = h.wait_http_unix(h.sock("slow.sock"), LONG);
    h.check(
        r.contains(&format!("pid={old}")),
        format!("answered by the old instance: {r:?}"),
    );
    // Seen waiting about 1.5 s after its start; the fallback would take 10 s.
    h.wait_dead(
        old,
        Duration::from_secs(7),
        "the old instance, once the new one waits for connections",
    );
    h.check(
        serving(new),
        "the old instance went only after the new one began serving",
    );
    let r = h.wait_http_unix(h.sock("slow.sock"), LONG);
    h.check(
        r.contains(&format!("pid={new}")),
        format!("answered by the new instance: {r:?}"),
    );

    // An explicit ready-delay is the user's word: nothing is looked for, the old instance stays for it.
    h.write_vassal(
        "slow.ini",
        &h.app_ini("slow", "")
            .replace("[emperor]\n", "[emperor]\nready-delay = 3\n"),
    );
    let newer = h.wait_starts("slow", 3, LONG)[2].pid();
    let _ = h.wait_http_unix(h.sock("slow.sock"), LONG);
    thread::sleep(Duration::from_millis(1500));
    h.check(
        alive(new),
        format!("ready-delay = 3 keeps the old instance {new} beside {newer} for 3 s"),
    );
    h.wait_dead(new, LONG, "the old instance after ready-delay");
}

#[test]
fn touch_restarts_silent_vassal() {
    let mut h = Harness::new("touch_restarts_silent_vassal");
    h.write_vassal("app.ini", &h.app_ini("app.ini", ""));
    // Rescan only every hour: the touch must be seen through inotify.
    h.start(&["--emperor-freq", "3600"]);
    let old = h.wait_starts("app.ini", 1, LONG)[0].pid();
    h.touch_vassal("app.ini");
    let starts = h.wait_starts("app.ini", 2, LONG);
    let new = starts[1].pid();
    h.check(
        new != old,
        format!("touch must restart a silent vassal with a new pid: {starts:?}"),
    );
    h.wait_dead(old, LONG, "old instance");
    let r = h.wait_http_unix(h.sock("app.ini.sock"), LONG);
    h.check(
        r.contains(&format!("pid={new}")),
        format!("new instance should answer: {r:?}"),
    );
}

#[test]
fn touch_reloads_speaking_vassal_in_place() {
    let mut h = Harness::new("touch_reloads_speaking_vassal");
    let content = h.app_ini("s.ini", "--speak");
    h.write_vassal("s.ini", &content);
    h.start(&["--emperor-freq", "3600"]);
    let pid = h.wait_starts("s.ini", 1, LONG)[0].pid();
    // The emperor must have heard the vassal speak before the touch, or it would rightly treat it as silent.
    h.wait_vlog("s.ini", "accepting", LONG);
    h.touch_vassal("s.ini");
    h.wait_for(
        || h.records("s.ini").iter().any(|r| r.kind == "reload" && r.pid() == pid),
        LONG,
        "reload record (byte 1) from the same pid",
    );
    h.wait_vlog("s.ini", "reloading", LONG);
    h.check(
        alive(pid),
        format!("pid {pid} must keep running after an in-place reload"),
    );
    h.check(
        h.starts("s.ini").len() == 1,
        "an in-place reload must not start a new process",
    );

    // Changing the [emperor] section restarts it.
    h.write_vassal("s.ini", &content.replace("[emperor]\n", "[emperor]\nenv = CHANGED=1\n"));
    let starts = h.wait_starts("s.ini", 2, LONG);
    h.check(
        starts[1].pid() != pid,
        format!("a changed [emperor] section must restart with a new pid: {starts:?}"),
    );
    h.wait_dead(pid, LONG, "old instance after [emperor] change");
}

#[test]
fn delete_during_an_overlapping_reload_stops_both_instances() {
    let mut h = Harness::new("delete_overlap");
    // ready-delay keeps the new instance "not ready yet" for 30 s: the delete lands in the overlap for sure.
    let ini = |h: &Harness, extra: &str| {
        h.app_ini("ov", extra)
            .replace("[emperor]\n", "[emperor]\nready-delay = 30\n")
    };
    h.write_vassal("ov.ini", &ini(&h, ""));
    h.start(&[]);
    let old = h.wait_starts("ov", 1, LONG)[0].pid();
    h.write_vassal("ov.ini", &ini(&h, "--show-env X"));
    let new = h.wait_starts("ov", 2, LONG)[1].pid();
    h.check(alive(old), "both run during the overlap");
    h.remove_vassal("ov.ini");
    h.wait_dead(new, LONG, "the new instance");
    h.wait_dead(old, LONG, "the old instance of the reload");
    h.wait_vlog("ov.ini", "removed", LONG);
    // Put back, it binds its socket again (the old instance used to keep it: EADDRINUSE, throttled).
    h.write_vassal("ov.ini", &ini(&h, ""));
    let again = h.wait_starts("ov", 3, LONG)[2].pid();
    let r = h.wait_http_unix(h.sock("ov.sock"), LONG);
    h.check(
        r.contains(&format!("pid={again}")),
        format!("served by the new vassal: {r:?}"),
    );
}

#[test]
fn delete_stops_vassal_and_unlinks_socket() {
    let mut h = Harness::new("delete_stops_vassal");
    h.write_vassal("d.ini", &h.app_ini("d.ini", ""));
    h.write_vassal("other.ini", &h.app_ini("other.ini", ""));
    h.start(&["--emperor-freq", "1"]);
    let pid = h.wait_starts("d.ini", 1, LONG)[0].pid();
    let other = h.wait_starts("other.ini", 1, LONG)[0].pid();
    let sock = h.sock("d.ini.sock");
    h.wait_for(|| sock.exists(), LONG, "socket file");
    h.remove_vassal("d.ini");
    h.wait_dead(pid, LONG, "deleted vassal");
    h.wait_for(
        || !sock.exists(),
        LONG,
        "socket file of the deleted vassal to be unlinked",
    );
    h.wait_vlog("d.ini", "removed", LONG);
    // Proving a negative: nothing restarts it during 1.5 s, which includes at least one rescan (--emperor-freq 1).
    thread::sleep(Duration::from_millis(1500));
    h.check(h.starts("d.ini").len() == 1, "a deleted vassal must not be restarted");
    h.check(alive(other), "the other vassal must be untouched");
    h.check(
        h.starts("other.ini").len() == 1,
        "the other vassal must not be restarted",
    );
}

#[test]
fn ignored_file_names() {
    let mut h = Harness::new("ignored_file_names");
    let ignored = [".x.ini", "x.ini~", "x.ini.swp", ".x.ini.swp", "x.txt", "x.ini.bak"];
    for f in ignored {
        h.write_vassal(f, &h.app_ini(f, ""));
    }
    fs::create_dir(h.vassal("d.ini")).unwrap();
    // A symlink-free, non-regular entry named like a vassal: a directory. Plus a positive control.
    h.start(&["--emperor-freq", "1"]);
    h.write_vassal("ok.ini", &h.app_ini("ok.ini", ""));
    h.wait_starts("ok.ini", 1, LONG);
    // Proving a negative: in 1.5 s (more than one rescan) none of the ignored names starts.
    thread::sleep(Duration::from_millis(1500));
    for f in ignored {
        h.check(h.starts(f).is_empty(), format!("{f} must be ignored"));
    }
    let spawned = h.spawned();
    h.check(
        spawned.len() == 1 && spawned[0].contains("[ok.ini]"),
        format!("only ok.ini may be spawned: {spawned:?}"),
    );
}

/// The vassals directory deleted and created again (or swapped in by a rename) is watched again at
/// once: with an hourly rescan, only the watch on its parent can notice the new directory.
#[test]
fn a_recreated_vassals_directory_is_watched_again() {
    let mut h = Harness::new("recreated_dir");
    h.write_vassal("a.ini", &h.app_ini("a.ini", ""));
    h.start(&["--emperor-freq", "3600"]);
    let a = h.wait_starts("a.ini", 1, LONG)[0].pid();
    fs::remove_dir_all(h.vassals()).unwrap();
    h.wait_log("cannot scan", LONG);
    h.check(alive(a), "vassals keep running while the directory is gone");
    fs::create_dir(h.vassals()).unwrap();
    h.write_vassal("b.ini", &h.app_ini("b.ini", ""));
    h.wait_starts("b.ini", 1, LONG);
    h.wait_dead(a, LONG, "a.ini, which the new directory does not hold");
    h.write_vassal("c.ini", &h.app_ini("c.ini", ""));
    h.wait_starts("c.ini", 1, LONG);
}

#[test]
fn rename_in_and_out() {
    let mut h = Harness::new("rename_in_and_out");
    let outside = h.root.join("elsewhere").join("a.ini");
    fs::write(&outside, h.app_ini("a.ini", "")).unwrap();
    // Rescan only every hour: renames must be seen through inotify.
    h.start(&["--emperor-freq", "3600"]);
    // The emperor is up once it has logged something; a fixed control vassal proves the watch is in place.
    h.write_vassal("ctl.ini", &h.app_ini("ctl.ini", ""));
    h.wait_starts("ctl.ini", 1, LONG);

    fs::rename(&outside, h.vassal("a.ini")).unwrap();
    let p1 = h.wait_starts("a.ini", 1, LONG)[0].pid();

    // Rename inside the directory: a.ini stops, b.ini starts (same content, same record file).
    fs::rename(h.vassal("a.ini"), h.vassal("b.ini")).unwrap();
    let starts = h.wait_starts("a.ini", 2, LONG);
    let p2 = starts[1].pid();
    h.wait_dead(p1, LONG, "a.ini after rename to b.ini");
    h.wait_log("spawned pid", LONG);
    h.wait_for(
        || h.stderr().contains(&format!("[b.ini] spawned pid {p2}")),
        LONG,
        "b.ini to be the one spawned after the rename",
    );

    fs::rename(h.vassal("b.ini"), &outside).unwrap();
    h.wait_dead(p2, LONG, "b.ini after rename out of the directory");
    // Proving a negative: no restart in the next 500 ms.
    thread::sleep(Duration::from_millis(500));
    h.check(h.starts("a.ini").len() == 2, "no start after the rename out");
    h.check(h.starts("ctl.ini").len() == 1, "control vassal untouched");
}
