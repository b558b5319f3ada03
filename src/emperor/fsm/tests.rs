//! The transitions of [`super::Fsm`], fed by hand: no process, no clock.

use super::*;

fn params() -> Params {
    Params {
        throttle: Duration::from_millis(1000),
        max_throttle: Duration::from_millis(3500),
        heartbeat: Duration::from_secs(30),
        loyalty_time: Duration::from_secs(10),
        stop_timeout: Duration::from_secs(5),
        stop_signal: Signal::SIGTERM,
        on_demand: false,
        bridged: false,
        idle_pause: false,
        overlap: false,
        ready_delay: Duration::from_secs(1),
        prewarm: false,
    }
}

/// An on-demand vassal that pauses when idle and is prewarmed.
fn prewarm_params() -> Params {
    Params {
        on_demand: true,
        idle_pause: true,
        prewarm: true,
        ..params()
    }
}

/// A prewarm vassal whose first instance (pid 1, speaking the protocol or not) was just spawned at `t0`.
fn prewarming(speaks: bool) -> (Fsm, Instant) {
    let t0 = Instant::now();
    let mut f = Fsm::new(prewarm_params());
    assert_eq!(f.on_event(Event::Start, t0), vec![Action::Spawn], "started at once");
    f.on_event(Event::Spawned { pid: 1, speaks }, t0);
    (f, t0)
}

fn has_check(acts: &[Action]) -> bool {
    acts.contains(&Action::CheckQuiet)
}

fn running(speaks: bool) -> (Fsm, Instant) {
    let t0 = Instant::now();
    let mut f = Fsm::new(params());
    assert_eq!(f.on_event(Event::Start, t0), vec![Action::Spawn]);
    f.on_event(Event::Spawned { pid: 42, speaks }, t0);
    (f, t0)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// An overlapping reload just begun: instance 1 (speaking or not) runs, its replacement is about to spawn.
fn overlapping(speaks: bool) -> (Fsm, Instant) {
    let t0 = Instant::now();
    let mut f = Fsm::new(Params {
        overlap: true,
        ..params()
    });
    f.on_event(Event::Start, t0);
    f.on_event(Event::Spawned { pid: 1, speaks }, t0);
    f.on_event(Event::Reload { restart: true }, t0);
    (f, t0)
}

#[test]
fn silent_vassal_runs_at_once_uwsgi_waits_for_ready() {
    let (f, _) = running(false);
    assert_eq!(f.state.name(), "running");
    let (mut f, t0) = running(true);
    assert_eq!(f.state.name(), "starting");
    f.on_event(Event::Msg(VassalMsg::Ready), t0);
    assert_eq!(f.state.name(), "running");
}

#[test]
fn unloyal_deaths_throttle_linearly_up_to_max() {
    let (mut f, t0) = running(false);
    let mut now = t0;
    let mut delays = vec![];
    for _ in 0..5 {
        f.on_event(Event::Exited(Exit::Code(1)), now);
        let State::Throttled { until } = f.state else {
            panic!("{:?}", f.state)
        };
        delays.push(until - now);
        now = until;
        assert_eq!(f.on_event(Event::Timer, now), vec![Action::Spawn]);
        f.on_event(Event::Spawned { pid: 43, speaks: false }, now);
    }
    assert_eq!(
        delays,
        vec![
            secs(1),
            secs(2),
            secs(3),
            Duration::from_millis(3500),
            Duration::from_millis(3500)
        ]
    );
    assert_eq!(f.restarts, 5);
}

#[test]
fn loyal_death_restarts_at_once_and_resets_throttle() {
    let (mut f, t0) = running(true);
    f.attempts = 3;
    f.on_event(Event::Msg(VassalMsg::Loyal), t0);
    assert_eq!(f.attempts, 0);
    let acts = f.on_event(Event::Exited(Exit::Signal(Signal::SIGSEGV)), t0 + secs(1));
    assert!(acts.contains(&Action::Spawn));
}

#[test]
fn staying_up_makes_a_silent_vassal_loyal() {
    let (mut f, t0) = running(false);
    assert_eq!(f.deadline(), Some(t0 + secs(10)));
    f.on_event(Event::Timer, t0 + secs(10));
    assert!(f.state.instance().unwrap().loyal);
    assert_eq!(f.deadline(), None, "an idle loyal vassal needs no wake-up");
    let acts = f.on_event(Event::Exited(Exit::Code(0)), t0 + secs(20));
    assert!(acts.contains(&Action::Spawn));
}

#[test]
fn reload_in_place_for_speakers_restart_for_silent() {
    let (mut f, t0) = running(true);
    f.on_event(Event::Msg(VassalMsg::Accepting), t0);
    let acts = f.on_event(Event::Reload { restart: false }, t0);
    assert!(acts.contains(&Action::Send(EmperorMsg::Reload)));
    assert_eq!(f.state.name(), "reloading");
    f.on_event(Event::Msg(VassalMsg::Accepting), t0);
    assert_eq!(f.state.name(), "running");

    let acts = f.on_event(Event::Reload { restart: true }, t0);
    assert!(acts.contains(&Action::Send(EmperorMsg::GracefulStop)));
    assert!(matches!(
        f.state,
        State::Stopping {
            then: AfterStop::Restart,
            ..
        }
    ));
    assert!(f.on_event(Event::Exited(Exit::Code(0)), t0).contains(&Action::Spawn));

    let (mut f, t0) = running(false);
    let acts = f.on_event(Event::Reload { restart: false }, t0);
    assert!(acts.contains(&Action::Signal(Signal::SIGTERM)));
}

#[test]
fn stop_escalates_to_kill_after_timeout() {
    let (mut f, t0) = running(false);
    f.on_event(Event::Remove, t0);
    assert_eq!(f.deadline(), Some(t0 + secs(5)));
    let acts = f.on_event(Event::Timer, t0 + secs(5));
    assert!(acts.contains(&Action::KillGroup));
    assert_eq!(f.deadline(), None);
    let acts = f.on_event(Event::Exited(Exit::Signal(Signal::SIGKILL)), t0 + secs(5));
    assert!(acts.contains(&Action::Finish));
    assert_eq!(f.state, State::Done);
}

#[test]
fn file_back_while_stopping_restarts() {
    let (mut f, t0) = running(false);
    f.on_event(Event::Remove, t0);
    f.on_event(Event::Reload { restart: true }, t0);
    assert!(f.on_event(Event::Exited(Exit::Code(0)), t0).contains(&Action::Spawn));
}

#[test]
fn heartbeat_is_armed_by_the_first_one() {
    let (mut f, t0) = running(true);
    f.on_event(Event::Msg(VassalMsg::Loyal), t0);
    assert_eq!(f.deadline(), None);
    f.on_event(Event::Msg(VassalMsg::Heartbeat), t0 + secs(1));
    assert_eq!(f.deadline(), Some(t0 + secs(31)));
    let acts = f.on_event(Event::Timer, t0 + secs(31));
    assert!(acts.contains(&Action::KillGroup));
}

#[test]
fn voluntary_shutdown_stops_and_waits() {
    let (mut f, t0) = running(true);
    let acts = f.on_event(Event::Msg(VassalMsg::VoluntaryShutdown), t0);
    assert!(acts.contains(&Action::Send(EmperorMsg::GracefulStop)));
    f.on_event(Event::Exited(Exit::Code(0)), t0);
    assert_eq!(f.state, State::Waiting);
}

#[test]
fn clear_throttle_starts_now_and_config_request_pushes() {
    let (mut f, t0) = running(false);
    f.on_event(Event::Exited(Exit::Code(1)), t0);
    assert_eq!(f.on_event(Event::ClearThrottle, t0), vec![Action::Spawn]);
    assert_eq!(f.attempts, 0);
    let (mut f, t0) = running(true);
    assert_eq!(
        f.on_event(Event::Msg(VassalMsg::ConfigRequest), t0),
        vec![Action::PushConfig]
    );
}

#[test]
fn on_demand_waits_for_a_connection_and_goes_back_to_waiting_when_idle() {
    let t0 = Instant::now();
    let mut f = Fsm::new(Params {
        on_demand: true,
        ..params()
    });
    assert_eq!(f.on_event(Event::Start, t0), vec![]);
    assert_eq!(f.state, State::Waiting);
    assert!(f.on_event(Event::Activated, t0).contains(&Action::Spawn));
    f.on_event(Event::Spawned { pid: 9, speaks: false }, t0);
    let acts = f.on_event(Event::Idle, t0 + secs(30));
    assert!(acts.contains(&Action::Signal(Signal::SIGTERM)));
    f.on_event(Event::Exited(Exit::Code(0)), t0 + secs(30));
    assert_eq!(f.state, State::Waiting);
    assert!(f.on_event(Event::Activated, t0 + secs(40)).contains(&Action::Spawn));
}

#[test]
fn on_demand_start_failure_drains_the_queue_and_waits_after_the_throttle() {
    let t0 = Instant::now();
    let mut f = Fsm::new(Params {
        on_demand: true,
        ..params()
    });
    f.on_event(Event::Activated, t0);
    let acts = f.on_event(Event::SpawnFailed, t0);
    assert!(acts.contains(&Action::DrainQueue));
    assert_eq!(f.on_event(Event::Timer, t0 + secs(1)), vec![]);
    assert_eq!(f.state, State::Waiting);
}

#[test]
fn idle_pause_freezes_and_a_connection_thaws() {
    let t0 = Instant::now();
    let mut f = Fsm::new(Params {
        idle_pause: true,
        ..params()
    });
    f.on_event(Event::Start, t0);
    f.on_event(Event::Spawned { pid: 9, speaks: false }, t0);
    assert!(f.on_event(Event::Idle, t0).contains(&Action::Pause));
    assert_eq!(f.state.name(), "paused");
    assert_eq!(f.deadline(), None);
    assert!(f.on_event(Event::Activated, t0).contains(&Action::Resume));
    assert_eq!(f.state.name(), "running");
    f.on_event(Event::Idle, t0);
    let acts = f.on_event(Event::Remove, t0);
    assert_eq!(acts[0], Action::Resume);
    assert!(acts.contains(&Action::Signal(Signal::SIGTERM)));
}

#[test]
fn overlapping_reload_retires_the_old_instance_once_the_new_one_is_ready() {
    let t0 = Instant::now();
    let mut f = Fsm::new(Params {
        overlap: true,
        ..params()
    });
    f.on_event(Event::Start, t0);
    f.on_event(Event::Spawned { pid: 1, speaks: false }, t0);
    let acts = f.on_event(Event::Reload { restart: true }, t0 + secs(20));
    assert!(acts.contains(&Action::Overlap), "{acts:?}");
    assert!(
        !acts.iter().any(|a| matches!(a, Action::Signal(_))),
        "the old one is not stopped yet"
    );
    f.on_event(Event::Spawned { pid: 2, speaks: false }, t0 + secs(20));
    assert_eq!(f.deadline(), Some(t0 + secs(21)), "ready after ready-delay");
    assert!(
        f.on_event(Event::Timer, t0 + secs(21))
            .contains(&Action::RetirePrevious)
    );
    assert_eq!(f.previous, None);
    assert_eq!(f.state.instance().unwrap().pid, 2);
    // Seen waiting for connections before ready-delay: retired at once; nothing without an overlap.
    f.on_event(Event::Reload { restart: true }, t0 + secs(30));
    f.on_event(Event::Spawned { pid: 3, speaks: false }, t0 + secs(30));
    assert!(
        f.on_event(Event::Listening, t0 + secs(30))
            .contains(&Action::RetirePrevious)
    );
    assert_eq!(f.state.instance().unwrap().pid, 3);
    assert!(f.on_event(Event::Listening, t0 + secs(30)).is_empty());
}

#[test]
fn removed_or_shut_down_during_an_overlap_stops_both_instances() {
    for ev in [Event::Remove, Event::Shutdown] {
        let (mut f, t0) = overlapping(false);
        f.on_event(Event::Spawned { pid: 2, speaks: false }, t0);
        let acts = f.on_event(ev.clone(), t0);
        assert!(acts.contains(&Action::RetirePrevious), "{ev:?}: {acts:?}");
        assert!(
            acts.iter().any(|a| matches!(a, Action::Signal(_) | Action::Send(_))),
            "{ev:?}: the new one stops too: {acts:?}"
        );
        assert_eq!(f.previous, None);
    }
}

#[test]
fn overlapping_reload_keeps_the_old_instance_when_the_new_one_dies() {
    let (mut f, t0) = overlapping(true);
    f.on_event(Event::Spawned { pid: 2, speaks: true }, t0);
    let acts = f.on_event(Event::Exited(Exit::Code(1)), t0);
    assert!(acts.contains(&Action::RestorePrevious));
    assert_eq!(f.state.instance().unwrap().pid, 1);
    // A uWSGI replacement is ready when it says so.
    f.on_event(Event::Reload { restart: true }, t0);
    f.on_event(Event::Spawned { pid: 3, speaks: true }, t0);
    assert!(
        f.on_event(Event::Msg(VassalMsg::Accepting), t0)
            .contains(&Action::RetirePrevious)
    );
}

#[test]
fn a_rejected_replacement_restores_the_old_instance() {
    let (mut f, t0) = overlapping(false);
    f.on_event(Event::Spawned { pid: 2, speaks: false }, t0);
    let acts = f.on_event(Event::Rejected, t0);
    assert!(acts.contains(&Action::RestorePrevious), "{acts:?}");
    assert_eq!(f.state, State::Running(f.state.instance().unwrap().clone()));
    assert_eq!(f.state.instance().unwrap().pid, 1);
    assert_eq!(f.previous, None);
    // Without an overlap a rejection still makes the vassal invalid.
    let (mut f, t0) = running(false);
    f.on_event(Event::Rejected, t0);
    assert_eq!(f.state.name(), "invalid");
}

#[test]
fn an_old_instance_that_exited_during_the_overlap_is_not_restored() {
    let (mut f, t0) = overlapping(true);
    f.on_event(Event::Spawned { pid: 2, speaks: true }, t0);
    f.on_event(Event::PreviousExited, t0);
    assert_eq!(f.previous, None);
    // The new one dies before it is ready: a death like any other, not a return to the dead pid 1.
    let acts = f.on_event(Event::Exited(Exit::Code(1)), t0);
    assert!(!acts.contains(&Action::RestorePrevious), "{acts:?}");
    assert!(f.state.instance().is_none_or(|i| i.pid != 1), "{:?}", f.state);
}

#[test]
fn rejected_by_docker_waits_for_the_file() {
    let (mut f, t0) = running(false);
    f.on_event(Event::Rejected, t0);
    assert!(matches!(f.state, State::Invalid { .. }));
    assert_eq!(f.deadline(), None);
    assert_eq!(f.on_event(Event::Reload { restart: true }, t0), vec![Action::Spawn]);
}

#[test]
fn spawn_failure_throttles_and_shutdown_finishes() {
    let t0 = Instant::now();
    let mut f = Fsm::new(params());
    f.on_event(Event::Start, t0);
    f.on_event(Event::SpawnFailed, t0);
    assert_eq!(f.state, State::Throttled { until: t0 + secs(1) });
    assert_eq!(f.on_event(Event::Shutdown, t0), vec![Action::Finish]);
}

#[test]
fn hold_stops_keeps_stopped_and_release_starts() {
    let (mut f, t0) = running(false);
    let acts = f.on_event(Event::Hold, t0);
    assert!(acts.contains(&Action::Signal(Signal::SIGTERM)), "{acts:?}");
    assert!(!f.on_event(Event::Exited(Exit::Code(0)), t0).contains(&Action::Spawn));
    assert_eq!(f.state, State::Held);
    assert_eq!(f.deadline(), None);
    // Nothing starts it: not a connection, a timer, a cleared throttle.
    for ev in [Event::Activated, Event::Timer, Event::ClearThrottle, Event::Idle] {
        assert!(!f.on_event(ev, t0).contains(&Action::Spawn));
        assert_eq!(f.state, State::Held);
    }
    assert!(f.on_event(Event::Release, t0).contains(&Action::Spawn));
    assert_eq!(f.state, State::Waiting);
    // A file change releases it too.
    f.on_event(Event::Spawned { pid: 43, speaks: false }, t0);
    f.on_event(Event::Hold, t0);
    f.on_event(Event::Exited(Exit::Code(0)), t0);
    assert!(f.on_event(Event::Reload { restart: true }, t0).contains(&Action::Spawn));
}

#[test]
fn hold_without_a_process_and_while_stopping() {
    let (mut f, t0) = running(false);
    f.on_event(Event::Exited(Exit::Code(1)), t0);
    assert_eq!(f.state.name(), "throttled");
    assert_eq!(
        f.on_event(Event::Hold, t0)
            .iter()
            .filter(|a| **a == Action::Spawn)
            .count(),
        0
    );
    assert_eq!(f.state.name(), "held");
    assert_eq!(f.on_event(Event::Shutdown, t0), vec![Action::Finish]);

    // Stop during a restart: held once it exits; start during the stop: restarted.
    let (mut f, t0) = running(false);
    f.on_event(Event::Reload { restart: true }, t0);
    f.on_event(Event::Hold, t0);
    assert!(matches!(
        f.state,
        State::Stopping {
            then: AfterStop::Hold,
            ..
        }
    ));
    f.on_event(Event::Release, t0);
    assert!(f.on_event(Event::Exited(Exit::Code(0)), t0).contains(&Action::Spawn));

    // A paused vassal is thawed first.
    let mut f = Fsm::new(Params {
        idle_pause: true,
        ..params()
    });
    f.on_event(Event::Start, t0);
    f.on_event(Event::Spawned { pid: 9, speaks: true }, t0);
    f.on_event(Event::Idle, t0);
    let acts = f.on_event(Event::Hold, t0);
    assert_eq!(acts[0], Action::Resume);
    assert!(acts.contains(&Action::Send(EmperorMsg::GracefulStop)));
}

#[test]
fn held_on_demand_vassal_ignores_connections() {
    let t0 = Instant::now();
    let mut f = Fsm::new(Params {
        on_demand: true,
        ..params()
    });
    f.on_event(Event::Start, t0);
    f.on_event(Event::Hold, t0);
    assert_eq!(f.on_event(Event::Activated, t0), vec![]);
    assert_eq!(f.state, State::Held);
    // Released, it waits for a connection again.
    assert_eq!(
        f.on_event(Event::Release, t0)
            .iter()
            .filter(|a| **a == Action::Spawn)
            .count(),
        0
    );
    assert_eq!(f.state, State::Waiting);
}

#[test]
fn restart_bypasses_the_throttle_and_replaces_a_running_one() {
    let t0 = Instant::now();
    let mut f = Fsm::new(Params {
        throttle: secs(60),
        max_throttle: secs(600),
        ..params()
    });
    f.on_event(Event::Start, t0);
    f.on_event(Event::Spawned { pid: 1, speaks: false }, t0);
    f.on_event(Event::Exited(Exit::Code(1)), t0);
    f.attempts = 5;
    assert!(f.on_event(Event::Restart, t0).contains(&Action::Spawn));
    assert_eq!(f.attempts, 0);
    f.on_event(Event::Spawned { pid: 2, speaks: false }, t0);
    let acts = f.on_event(Event::Restart, t0);
    assert!(acts.contains(&Action::Signal(Signal::SIGTERM)));
    assert!(matches!(
        f.state,
        State::Stopping {
            then: AfterStop::Restart,
            ..
        }
    ));
    assert!(f.on_event(Event::Exited(Exit::Code(0)), t0).contains(&Action::Spawn));
    // Held, or waiting on demand: started now.
    f.on_event(Event::Spawned { pid: 3, speaks: false }, t0);
    f.on_event(Event::Hold, t0);
    f.on_event(Event::Exited(Exit::Code(0)), t0);
    assert!(f.on_event(Event::Restart, t0).contains(&Action::Spawn));
    let mut f = Fsm::new(Params {
        on_demand: true,
        ..params()
    });
    f.on_event(Event::Start, t0);
    assert!(f.on_event(Event::Restart, t0).contains(&Action::Spawn));
}

#[test]
fn a_reload_not_confirmed_in_time_counts_as_running() {
    let (mut f, t0) = running(true);
    f.on_event(Event::Msg(VassalMsg::Ready), t0);
    f.on_event(Event::Reload { restart: false }, t0);
    assert_eq!(f.deadline(), Some(t0 + secs(5)));
    let acts = f.on_event(Event::Timer, t0 + secs(5));
    assert!(matches!(acts[..], [Action::Log(log::Level::Warn, _)]), "{acts:?}");
    assert_eq!(f.state.name(), "running");
}

#[test]
fn a_rejection_while_stopping_ends_the_stop_like_an_exit() {
    let (mut f, t0) = running(false);
    f.on_event(Event::Reload { restart: true }, t0);
    assert!(f.on_event(Event::Rejected, t0).contains(&Action::Spawn));
    assert_eq!(f.state, State::Waiting);
    let (mut f, t0) = running(false);
    f.on_event(Event::Remove, t0);
    assert!(f.on_event(Event::Rejected, t0).contains(&Action::Finish));
    assert_eq!(f.state, State::Done);
}

#[test]
fn a_paused_vassal_dies_or_reloads_like_a_running_one() {
    let t0 = Instant::now();
    let mut f = Fsm::new(Params {
        idle_pause: true,
        ..params()
    });
    f.on_event(Event::Start, t0);
    f.on_event(Event::Spawned { pid: 9, speaks: false }, t0);
    f.on_event(Event::Idle, t0);
    f.on_event(Event::Exited(Exit::Code(1)), t0 + secs(1));
    assert_eq!(f.state, State::Throttled { until: t0 + secs(2) });
    assert_eq!(f.attempts, 1);

    f.on_event(Event::Timer, t0 + secs(2));
    f.on_event(Event::Spawned { pid: 10, speaks: false }, t0 + secs(2));
    f.on_event(Event::Idle, t0 + secs(3));
    let acts = f.on_event(Event::Reload { restart: false }, t0 + secs(3));
    assert_eq!(acts[0], Action::Resume);
    assert!(
        acts.contains(&Action::Signal(Signal::SIGTERM)),
        "a silent one is restarted"
    );
    assert!(matches!(
        f.state,
        State::Stopping {
            then: AfterStop::Restart,
            ..
        }
    ));
}

#[test]
fn start_or_reload_while_throttled_starts_now_a_timer_keeps_the_count() {
    let (mut f, t0) = running(false);
    f.on_event(Event::Exited(Exit::Code(1)), t0);
    assert_eq!(f.on_event(Event::Timer, t0 + secs(1)), vec![Action::Spawn]);
    assert_eq!(f.attempts, 1);
    f.on_event(Event::Spawned { pid: 43, speaks: false }, t0 + secs(1));
    f.on_event(Event::Exited(Exit::Code(1)), t0 + secs(1));
    assert_eq!(f.attempts, 2);
    assert_eq!(f.on_event(Event::Start, t0 + secs(1)), vec![Action::Spawn]);
    assert_eq!(f.attempts, 0);
    f.on_event(Event::Spawned { pid: 44, speaks: false }, t0 + secs(1));
    f.on_event(Event::Exited(Exit::Code(1)), t0 + secs(1));
    assert_eq!(
        f.on_event(Event::Reload { restart: false }, t0 + secs(1)),
        vec![Action::Spawn]
    );
    assert_eq!(f.attempts, 0);
}

#[test]
fn requests_while_stopping_change_what_follows() {
    // Start during a voluntary shutdown: restarted once it exits.
    let (mut f, t0) = running(true);
    f.on_event(Event::Msg(VassalMsg::VoluntaryShutdown), t0);
    assert_eq!(f.on_event(Event::Start, t0), vec![]);
    assert!(f.on_event(Event::Exited(Exit::Code(0)), t0).contains(&Action::Spawn));
    // Restart during an idle stop: restarted, the throttle count reset.
    let (mut f, t0) = running(false);
    f.on_event(Event::Idle, t0);
    f.attempts = 2;
    assert_eq!(f.on_event(Event::Restart, t0), vec![]);
    assert_eq!(f.attempts, 0);
    assert!(f.on_event(Event::Exited(Exit::Code(0)), t0).contains(&Action::Spawn));
    // Removed during a restart: it finishes, and a later stop request does not hold it.
    let (mut f, t0) = running(false);
    f.on_event(Event::Reload { restart: true }, t0);
    f.on_event(Event::Remove, t0);
    f.on_event(Event::Hold, t0);
    assert!(matches!(
        f.state,
        State::Stopping {
            then: AfterStop::Finish,
            ..
        }
    ));
    assert_eq!(
        f.on_event(Event::Exited(Exit::Code(0)), t0).last(),
        Some(&Action::Finish)
    );
    assert_eq!(f.state, State::Done);
}

#[test]
fn a_reload_during_an_overlap_retires_the_older_instance() {
    let (mut f, t0) = overlapping(false);
    f.on_event(Event::Spawned { pid: 2, speaks: false }, t0);
    let acts = f.on_event(Event::Reload { restart: true }, t0);
    let retire = acts.iter().position(|a| *a == Action::RetirePrevious);
    let overlap = acts.iter().position(|a| *a == Action::Overlap);
    assert!(retire.is_some() && retire < overlap, "{acts:?}");
    assert_eq!(f.previous.as_ref().map(|i| i.pid), Some(2));
    assert_eq!(f.state, State::Waiting);
}

#[test]
fn an_overlap_whose_new_instance_cannot_start_keeps_the_old_one_until_a_later_start_is_ready() {
    let (mut f, t0) = overlapping(false);
    let acts = f.on_event(Event::SpawnFailed, t0);
    assert!(!acts.contains(&Action::RestorePrevious), "{acts:?}");
    assert_eq!(f.state, State::Throttled { until: t0 + secs(1) });
    assert_eq!(f.previous.as_ref().map(|i| i.pid), Some(1));
    assert_eq!(f.on_event(Event::Timer, t0 + secs(1)), vec![Action::Spawn]);
    f.on_event(Event::Spawned { pid: 2, speaks: false }, t0 + secs(1));
    assert_eq!(f.deadline(), Some(t0 + secs(2)));
    assert!(f.on_event(Event::Timer, t0 + secs(2)).contains(&Action::RetirePrevious));
    assert_eq!(f.previous, None);
}

#[test]
fn a_lost_container_restarts_at_once_and_a_new_bridge_keeps_the_instance() {
    let bridged = || Params {
        bridged: true,
        ..params()
    };
    // Unloyal deaths throttle; a container the daemon lost does not, and clears the count.
    let t0 = Instant::now();
    let mut f = Fsm::new(bridged());
    f.on_event(Event::Start, t0);
    f.on_event(Event::Spawned { pid: 7, speaks: false }, t0);
    f.on_event(Event::Exited(Exit::Code(1)), t0);
    assert_eq!(f.state.name(), "throttled");
    assert_eq!(f.attempts(), 1);
    f.on_event(Event::Timer, t0 + secs(2));
    f.on_event(Event::Spawned { pid: 8, speaks: false }, t0 + secs(2));
    let lost = Exit::Code(i32::from(crate::exit::CONTAINER_LOST));
    let acts = f.on_event(Event::Exited(lost), t0 + secs(3));
    assert!(acts.contains(&Action::Spawn), "{acts:?}");
    assert_eq!(f.attempts(), 0);
    // A process vassal's exit code 255 is its own: throttled as any other.
    let (mut p, t) = running(false);
    p.on_event(Event::Exited(lost), t);
    assert_eq!(p.state.name(), "throttled");

    // A new bridge for a running instance: same instance, new pid; nothing for a stale pid or a stopping one.
    f.on_event(Event::Spawned { pid: 9, speaks: false }, t0 + secs(3));
    assert!(!f.rebridged(8, 10));
    assert!(f.rebridged(9, 10));
    assert_eq!(f.state.instance().map(|i| i.pid), Some(10));
    assert_eq!(f.state.name(), "running");
    f.on_event(Event::Remove, t0 + secs(4));
    assert!(
        !f.rebridged(10, 11),
        "a stopping instance's container is removed, not carried on"
    );
}

#[test]
fn prewarm_starts_at_once_and_pauses_once_ready_and_quiet() {
    let (mut f, t0) = prewarming(false);
    assert_eq!(f.state.name(), "running");
    assert!(f.state.instance().unwrap().prewarm);
    assert_eq!(f.deadline(), Some(t0 + secs(1)), "ready-delay at the latest");
    // Seen waiting for connections: the actor is asked to look; quiet, it is frozen.
    let acts = f.on_event(Event::Listening, t0 + Duration::from_millis(30));
    assert_eq!(acts, vec![Action::CheckQuiet]);
    assert!(!f.state.instance().unwrap().prewarm, "asked once");
    let acts = f.on_event(Event::Quiet, t0 + Duration::from_millis(30));
    assert!(acts.contains(&Action::Pause), "{acts:?}");
    assert_eq!(f.state.name(), "paused");
    assert_eq!(f.deadline(), None);
    // The first connection thaws the same instance; idle again, it pauses again, as today.
    assert!(f.on_event(Event::Activated, t0 + secs(5)).contains(&Action::Resume));
    assert_eq!(f.state.instance().map(|i| (i.pid, i.prewarm)), Some((1, false)));
    assert!(f.on_event(Event::Idle, t0 + secs(10)).contains(&Action::Pause));
    assert!(f.on_event(Event::Activated, t0 + secs(11)).contains(&Action::Resume));
    assert_eq!(f.restarts(), 0);

    // Not seen (an app that waits otherwise): ready after ready-delay.
    let (mut f, t0) = prewarming(false);
    assert!(has_check(&f.on_event(Event::Timer, t0 + secs(1))));
    assert!(f.on_event(Event::Quiet, t0 + secs(1)).contains(&Action::Pause));
}

#[test]
fn a_connection_before_a_prewarmed_instance_is_ready_keeps_it_running() {
    let (mut f, t0) = prewarming(false);
    let acts = f.on_event(Event::Activated, t0);
    assert!(matches!(acts[..], [Action::Log(log::Level::Info, _)]), "{acts:?}");
    assert_eq!(f.state.name(), "running");
    assert!(!f.state.instance().unwrap().prewarm);
    // Ready later: not frozen, whichever way it is seen; idle rules apply.
    assert!(!has_check(&f.on_event(Event::Listening, t0)));
    assert!(!has_check(&f.on_event(Event::Timer, t0 + secs(1))));
    assert_eq!(f.state.name(), "running");
    assert!(f.on_event(Event::Idle, t0 + secs(10)).contains(&Action::Pause));
    // Ready while a connection is open (the actor finds one and answers nothing): it keeps running.
    let (mut f, t0) = prewarming(false);
    assert!(has_check(&f.on_event(Event::Listening, t0)));
    assert_eq!(f.state.name(), "running");
    assert!(!has_check(&f.on_event(Event::Timer, t0 + secs(1))), "looked once only");
}

#[test]
fn a_prewarmed_uwsgi_vassal_is_ready_when_it_says_so() {
    let (mut f, t0) = prewarming(true);
    assert_eq!(f.state.name(), "starting");
    assert!(!has_check(&f.on_event(Event::Msg(VassalMsg::Heartbeat), t0)));
    assert!(has_check(&f.on_event(Event::Msg(VassalMsg::Accepting), t0)));
    f.on_event(Event::Quiet, t0);
    assert_eq!(f.state.name(), "paused");
    // Silent about it: taken as ready after the stop timeout (as an overlap's new instance is).
    let (mut f, t0) = prewarming(true);
    assert_eq!(f.deadline(), Some(t0 + secs(5)));
    assert!(has_check(&f.on_event(Event::Timer, t0 + secs(5))));
    // An in-place reload (byte 1) of the paused instance: thawed, reloaded, frozen again once it accepts.
    f.on_event(Event::Quiet, t0 + secs(5));
    let acts = f.on_event(Event::Reload { restart: false }, t0 + secs(6));
    assert_eq!(acts[0], Action::Resume);
    assert!(acts.contains(&Action::Send(EmperorMsg::Reload)));
    assert!(has_check(&f.on_event(Event::Msg(VassalMsg::Accepting), t0 + secs(7))));
    f.on_event(Event::Quiet, t0 + secs(7));
    assert_eq!(f.state.instance().map(|i| i.pid), Some(1));
    assert_eq!(f.state.name(), "paused");
}

#[test]
fn a_prewarmed_vassal_is_prewarmed_again_after_a_crash_a_reload_and_a_release() {
    let pause = |f: &mut Fsm, t: Instant| {
        assert!(has_check(&f.on_event(Event::Listening, t)), "{:?}", f.state);
        f.on_event(Event::Quiet, t);
        assert_eq!(f.state.name(), "paused");
    };
    let (mut f, t0) = prewarming(false);
    pause(&mut f, t0);
    // Killed while frozen, before it was loyal: throttled, then started and prewarmed again by itself.
    assert!(
        f.on_event(Event::Exited(Exit::Signal(Signal::SIGKILL)), t0 + secs(2))
            .contains(&Action::DrainQueue)
    );
    assert_eq!(f.state.name(), "throttled");
    assert_eq!(f.on_event(Event::Timer, t0 + secs(3)), vec![Action::Spawn]);
    f.on_event(Event::Spawned { pid: 2, speaks: false }, t0 + secs(3));
    pause(&mut f, t0 + secs(3));
    // A loyal one that dies is replaced at once, prewarmed.
    f.on_event(Event::Activated, t0 + secs(20));
    f.on_event(Event::Timer, t0 + secs(20));
    assert!(f.state.instance().unwrap().loyal);
    assert!(
        f.on_event(Event::Exited(Exit::Code(1)), t0 + secs(21))
            .contains(&Action::Spawn)
    );
    f.on_event(Event::Spawned { pid: 3, speaks: false }, t0 + secs(21));
    pause(&mut f, t0 + secs(21));
    // A touch: thawed, a new instance beside it, which is frozen once ready (after the old one retires).
    let f = &mut Fsm::new(Params {
        overlap: true,
        ..prewarm_params()
    });
    f.on_event(Event::Start, t0);
    f.on_event(Event::Spawned { pid: 4, speaks: false }, t0);
    pause(f, t0);
    let acts = f.on_event(Event::Reload { restart: true }, t0 + secs(1));
    assert_eq!(acts[0], Action::Resume);
    assert!(acts.contains(&Action::Overlap), "{acts:?}");
    f.on_event(Event::Spawned { pid: 5, speaks: false }, t0 + secs(1));
    let acts = f.on_event(Event::Listening, t0 + secs(1));
    let retire = acts.iter().position(|a| *a == Action::RetirePrevious);
    let check = acts.iter().position(|a| *a == Action::CheckQuiet);
    assert!(retire.is_some() && retire < check, "{acts:?}");
    f.on_event(Event::Quiet, t0 + secs(1));
    assert_eq!(f.state.instance().map(|i| i.pid), Some(5));
    assert_eq!(f.state.name(), "paused");
    // `emperor stop`, then `emperor start`: started at once, prewarmed.
    f.on_event(Event::Hold, t0 + secs(2));
    f.on_event(Event::Exited(Exit::Code(0)), t0 + secs(2));
    assert_eq!(f.state, State::Held);
    assert!(f.on_event(Event::Release, t0 + secs(3)).contains(&Action::Spawn));
    f.on_event(Event::Spawned { pid: 6, speaks: false }, t0 + secs(3));
    pause(f, t0 + secs(3));
}

#[test]
fn a_prewarm_vassal_that_shuts_down_by_itself_waits_and_a_connection_start_is_not_prewarmed() {
    let (mut f, t0) = prewarming(true);
    f.on_event(Event::Msg(VassalMsg::VoluntaryShutdown), t0);
    f.on_event(Event::Exited(Exit::Code(0)), t0);
    assert_eq!(f.state, State::Waiting, "it asked to stop: it waits for a connection");
    assert!(f.on_event(Event::Activated, t0).contains(&Action::Spawn));
    f.on_event(Event::Spawned { pid: 2, speaks: false }, t0);
    assert!(!f.state.instance().unwrap().prewarm, "a connection waits for this one");
    assert!(!has_check(&f.on_event(Event::Listening, t0)));
    // Without prewarm nothing changes: an on-demand vassal waits.
    let mut f = Fsm::new(Params {
        prewarm: false,
        ..prewarm_params()
    });
    assert_eq!(f.on_event(Event::Start, t0), vec![]);
    assert_eq!(f.state, State::Waiting);
}
