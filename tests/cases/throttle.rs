//! Throttling of vassals that die before they are loyal, SIGURG, and the heartbeat check.

use crate::util::*;
use std::thread;
use std::time::Duration;

fn gaps_ms(starts: &[Record]) -> Vec<i128> {
    starts
        .windows(2)
        .map(|w| (w[1].t_ns() - w[0].t_ns()) / 1_000_000)
        .collect()
}

#[test]
fn throttle_grows() {
    let mut h = Harness::new("throttle_grows");
    h.write_vassal("c.ini", &h.app_ini("c.ini", "--crash"));
    h.start(&["--emperor-throttle", "200", "--emperor-max-throttle", "100000"]);
    let starts = h.wait_starts("c.ini", 5, Duration::from_secs(20));
    let g = gaps_ms(&starts[..5]);
    h.check(
        g[0] >= 150,
        format!("first restart must be throttled by ~200 ms: gaps {g:?} ms"),
    );
    for k in 1..g.len() {
        h.check(g[k] > g[k - 1], format!("gaps must grow: {g:?} ms"));
    }
    h.check(g[2] >= 500, format!("3rd gap must be >= 500 ms: {g:?} ms"));
    h.wait_vlog("c.ini", "throttled", LONG);
}

#[test]
fn throttle_is_capped() {
    let mut h = Harness::new("throttle_is_capped");
    h.write_vassal("c.ini", &h.app_ini("c.ini", "--crash"));
    h.start(&["--emperor-throttle", "200", "--emperor-max-throttle", "400"]);
    let starts = h.wait_starts("c.ini", 6, Duration::from_secs(20));
    let g = gaps_ms(&starts[..6]);
    // Gaps 3..5 would be 600, 800, 1000 ms without the cap.
    for &x in &g[2..] {
        h.check(
            (300..=750).contains(&x),
            format!("gaps must be capped at ~400 ms: {g:?} ms"),
        );
    }
}

#[test]
fn sigurg_clears_throttle() {
    let mut h = Harness::new("sigurg_clears_throttle");
    h.write_vassal("c.ini", &h.app_ini("c.ini", "--crash"));
    h.start(&["--emperor-throttle", "2000", "--emperor-max-throttle", "600000"]);
    let starts = h.wait_starts("c.ini", 3, Duration::from_secs(25));
    let pid3 = starts[2].pid();
    // Wait until the emperor has reaped the 3rd instance and throttled it, so SIGURG cannot race the exit.
    h.wait_for(
        || {
            let Some(i) = h.stderr().find(&format!("spawned pid {pid3}")) else {
                return false;
            };
            h.vlog_after(i, "c.ini", "throttled") && std::fs::metadata(format!("/proc/{pid3}")).is_err()
        },
        LONG,
        "3rd instance reaped and throttled",
    );
    let before = h.starts("c.ini").len();
    h.check(
        before == 3,
        format!(
            "no 4th start expected yet (next one is >= 4 s away): {:?}",
            h.starts("c.ini")
        ),
    );
    let t_sig = now_ns();
    h.signal(libc::SIGURG);
    let starts = h.wait_starts("c.ini", 4, Duration::from_secs(10));
    let dt_ms = (starts[3].t_ns() - t_sig) / 1_000_000;
    h.check(
        dt_ms < 2000,
        format!("after SIGURG the throttled vassal must start at once, took {dt_ms} ms"),
    );
}

#[test]
fn heartbeat_required() {
    let mut h = Harness::new("heartbeat_required");
    h.write_vassal("beat.ini", &h.app_ini("beat.ini", "--speak --heartbeat 1"));
    h.write_vassal("once.ini", &h.app_ini("once.ini", "--speak --heartbeat-once"));
    h.start(&["--emperor-required-heartbeat", "2", "--emperor-throttle", "100"]);
    let beat = h.wait_starts("beat.ini", 1, LONG)[0].pid();
    let once = h.wait_starts("once.ini", 1, LONG)[0].pid();
    let starts = h.wait_starts("once.ini", 2, LONG);
    h.check(
        starts[1].pid() != once,
        format!("silent-after-one-heartbeat vassal must be restarted: {starts:?}"),
    );
    h.wait_dead(once, LONG, "vassal that stopped heartbeating");
    // Proving a negative: the vassal that keeps beating survives 3 s (> 2 s required heartbeat).
    thread::sleep(Duration::from_secs(3));
    h.check(
        alive(beat) && h.starts("beat.ini").len() == 1,
        "a heartbeating vassal must not be killed",
    );
}

#[test]
fn loyal_by_time_is_not_throttled() {
    let mut h = Harness::new("loyal_by_time");
    h.write_vassal("l.ini", &h.app_ini("l.ini", "--exit-after 1500"));
    // It lives 1.5 s > loyalty time 1 s, so each exit is restarted at once, not after 5 s of throttle.
    h.start(&["--emperor-throttle", "5000", "--emperor-loyalty-time", "1"]);
    let starts = h.wait_starts("l.ini", 3, Duration::from_secs(12));
    let g = gaps_ms(&starts[..3]);
    for &x in &g {
        h.check(
            (1400..3000).contains(&x),
            format!("a loyal vassal must be restarted without throttle: gaps {g:?} ms"),
        );
    }
}

#[test]
fn loyal_by_request_is_not_throttled() {
    let mut h = Harness::new("loyal_by_request");
    h.write_vassal("l.ini", &h.app_ini("l.ini", "--speak --exit-after 700"));
    h.start(&["--emperor-throttle", "5000"]);
    let first = h.wait_starts("l.ini", 1, LONG)[0].pid();
    // One request makes it loyal (byte 17); its exit 700 ms after start is then not throttled.
    h.wait_http_unix(h.sock("l.ini.sock"), LONG);
    h.wait_vlog("l.ini", "loyal", LONG);
    let starts = h.wait_starts("l.ini", 2, Duration::from_secs(4));
    let g = gaps_ms(&starts[..2]);
    h.check(
        starts[1].pid() != first && g[0] < 2500,
        format!("a loyal vassal must be restarted without throttle: gap {g:?} ms"),
    );
}
