//! Signals to the emperor: SIGTERM (graceful stop, exit 0), SIGKILL (vassals die too), SIGHUP, SIGUSR1.

use crate::util::*;
use std::time::Duration;

#[test]
fn sigterm_stops_everything() {
    let mut h = Harness::new("sigterm_stops_everything");
    h.write_vassal("a.ini", &h.app_ini("a.ini", "--spawn-child"));
    h.write_vassal("b.ini", &h.app_ini("b.ini", "--ignore-term"));
    h.write_vassal("s.ini", &h.app_ini("s.ini", "--speak"));
    h.start(&["--reload-mercy", "1"]);
    let a = h.wait_starts("a.ini", 1, LONG)[0].pid();
    let b = h.wait_starts("b.ini", 1, LONG)[0].pid();
    let s = h.wait_starts("s.ini", 1, LONG)[0].pid();
    h.wait_for(
        || h.records("a.ini").iter().any(|r| r.kind == "child"),
        LONG,
        "grandchild record",
    );
    let child = h.records("a.ini").iter().find(|r| r.kind == "child").unwrap().pid();
    let socks = ["a.ini.sock", "b.ini.sock", "s.ini.sock"].map(|n| h.sock(n));
    for p in &socks {
        h.wait_for(|| p.exists(), LONG, "socket files");
    }
    h.wait_vlog("s.ini", "accepting", LONG);

    h.signal(libc::SIGTERM);
    let st = h.wait_exit(Duration::from_secs(15));
    h.check(
        st.code() == Some(0),
        format!("emperor must exit 0 on SIGTERM, got {st:?}"),
    );
    for (pid, what) in [
        (a, "a.ini"),
        (b, "b.ini (ignores SIGTERM)"),
        (s, "s.ini"),
        (child, "a.ini's grandchild"),
    ] {
        h.wait_dead(pid, Duration::from_secs(3), what);
    }
    for p in &socks {
        h.check(!p.exists(), format!("{} must be unlinked on shutdown", p.display()));
    }
}

#[test]
fn sigint_and_sigquit_exit_zero() {
    for sig in [libc::SIGINT, libc::SIGQUIT] {
        let mut h = Harness::new("sigint_and_sigquit");
        h.write_vassal("a.ini", &h.app_ini("a.ini", ""));
        h.start(&[]);
        let a = h.wait_starts("a.ini", 1, LONG)[0].pid();
        h.signal(sig);
        let st = h.wait_exit(Duration::from_secs(15));
        h.check(
            st.code() == Some(0),
            format!("emperor must exit 0 on signal {sig}, got {st:?}"),
        );
        h.wait_dead(a, Duration::from_secs(3), "vassal");
    }
}

#[test]
fn sigkill_of_emperor_kills_vassals() {
    let mut h = Harness::new("sigkill_of_emperor");
    h.write_vassal("a.ini", &h.app_ini("a.ini", ""));
    h.write_vassal("b.ini", &h.app_ini("b.ini", "--ignore-term --speak"));
    h.start(&[]);
    let a = h.wait_starts("a.ini", 1, LONG)[0].pid();
    let b = h.wait_starts("b.ini", 1, LONG)[0].pid();
    h.signal(libc::SIGKILL);
    h.wait_exit(LONG);
    h.wait_dead(a, LONG, "vassal a after SIGKILL of the emperor (PDEATHSIG)");
    h.wait_dead(b, LONG, "vassal b after SIGKILL of the emperor (PDEATHSIG)");
}

#[test]
fn sighup_reloads_all() {
    let mut h = Harness::new("sighup_reloads_all");
    h.write_vassal("a.ini", &h.app_ini("a.ini", ""));
    h.write_vassal("b.ini", &h.app_ini("b.ini", "--speak"));
    h.start(&[]);
    let a = h.wait_starts("a.ini", 1, LONG)[0].pid();
    let b = h.wait_starts("b.ini", 1, LONG)[0].pid();
    h.wait_vlog("b.ini", "accepting", LONG);
    h.signal(libc::SIGHUP);
    // Silent vassal: restarted. Speaking vassal: reloaded in place with byte 1.
    let starts = h.wait_starts("a.ini", 2, LONG);
    h.check(starts[1].pid() != a, format!("{starts:?}"));
    h.wait_for(
        || h.records("b.ini").iter().any(|r| r.kind == "reload" && r.pid() == b),
        LONG,
        "speaking vassal to get a reload byte",
    );
    h.check(alive(b), "speaking vassal keeps its pid across SIGHUP");
}

#[test]
fn sigusr1_logs_one_line_per_vassal() {
    let mut h = Harness::new("sigusr1_status");
    h.write_vassal("a.ini", &h.app_ini("a.ini", ""));
    h.write_vassal("b.ini", &h.app_ini("b.ini", ""));
    h.start(&[]);
    let a = h.wait_starts("a.ini", 1, LONG)[0].pid();
    let b = h.wait_starts("b.ini", 1, LONG)[0].pid();
    // Both spawn lines logged before we mark the offset.
    h.wait_log(&format!("spawned pid {a}"), LONG);
    h.wait_log(&format!("spawned pid {b}"), LONG);
    let off = h.stderr().len();
    h.signal(libc::SIGUSR1);
    let mentions = |name: &str| {
        h.stderr()[off..]
            .lines()
            .filter(|l| l.contains(&format!("[{name}]")))
            .count()
    };
    h.wait_for(
        || mentions("a.ini") >= 1 && mentions("b.ini") >= 1,
        LONG,
        "status lines for a.ini and b.ini",
    );
    h.check(alive(a) && alive(b), "SIGUSR1 must not affect vassals");
    h.check(
        h.stderr()[off..]
            .lines()
            .any(|l| l.contains("[a.ini]") && l.contains(&a.to_string())),
        "status line of a.ini should show its pid",
    );
}
