//! What an actor tells the outside about itself: its stats snapshot, its SIGUSR1 status line, and its answers
//! to `emperor restart|stop|start`. Kept apart from the driver (`mod.rs`) because none of it changes the
//! vassal except through the events the control answers return.

use log::info;

use super::{Actor, now};
use crate::emperor::control::Op;
use crate::emperor::fsm::{AfterStop, Event, State};
use crate::emperor::stats::{self, VassalStats};

impl Actor {
    /// `emperor restart|stop|start`: the reply, and the event that carries it out.
    pub(super) fn control(&mut self, op: Op) -> (Result<String, String>, Vec<Event>) {
        let name = &self.name;
        let state = self.fsm.state().name();
        match op {
            _ if self.config.is_none() => (Err(format!("{name} has no valid config ({state})")), vec![]),
            Op::Restart => {
                info!("[{name}] restart requested on the control socket");
                (Ok(format!("restarting {name}")), vec![Event::Restart])
            }
            Op::Stop if *self.fsm.state() == State::Held => (Ok(format!("{name} is already stopped")), vec![]),
            Op::Stop => {
                info!("[{name}] stop requested on the control socket");
                (
                    Ok(format!(
                        "stopping {name}; it stays stopped until `emperor start` or its file changes"
                    )),
                    vec![Event::Hold],
                )
            }
            Op::Start if *self.fsm.state() == State::Held => {
                info!("[{name}] start requested on the control socket");
                (Ok(format!("starting {name}")), vec![Event::Release])
            }
            Op::Start
                if matches!(
                    self.fsm.state(),
                    State::Stopping {
                        then: AfterStop::Hold,
                        ..
                    }
                ) =>
            {
                info!("[{name}] start requested on the control socket");
                (Ok(format!("starting {name} once it has stopped")), vec![Event::Release])
            }
            Op::Start => (Ok(format!("{name} is not stopped ({state})")), vec![]),
        }
    }

    /// A Docker vassal's start is timed until its container received its sockets, which only the bridge's
    /// record tells: read here, before each snapshot, until this spawn's hand-over is counted.
    pub(super) fn look_for_handover(&mut self) {
        let bridged = self.config.as_deref().is_some_and(|c| c.docker.is_some());
        let Some(inst) = self
            .fsm
            .state()
            .instance()
            .filter(|_| bridged && self.track.awaits_handover())
        else {
            return;
        };
        let record = crate::docker::record::path(&self.opts.run_dir, &self.opts.instance, inst.pid);
        if let Some(ms) = crate::docker::record::Info::read(&record).and_then(|i| i.handover_ms) {
            self.track.handed_over(ms);
        }
    }

    pub(super) fn snapshot(&self) -> VassalStats {
        let inst = self.fsm.state().instance();
        let cfg = self.config.as_deref();
        let last_mod = cfg
            .and_then(|c| std::fs::metadata(&c.path).ok())
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let on_demand = match cfg {
            Some(c) if c.on_demand => c.sockets.first().map(|s| s.addr.to_string()).unwrap_or_default(),
            _ => String::new(),
        };
        VassalStats {
            id: self.name.clone(),
            pid: inst.map_or(-1, |i| i.pid),
            loyal: inst.is_some_and(|i| i.loyal),
            ready: inst.is_some_and(|i| i.ready),
            accepting: inst.is_some_and(|i| i.accepting),
            last_heartbeat: inst.and_then(|i| i.last_heartbeat).map_or(0, stats::instant_to_unix),
            last_mod,
            on_demand,
            respawns: self.fsm.restarts(),
            state: self.fsm.state().name(),
            kind: if cfg.is_some_and(|c| c.docker.is_some()) {
                "docker"
            } else {
                "process"
            },
            container: cfg.and_then(|c| c.docker.as_ref()).map(|d| d.container_name.clone()),
            sockets: self
                .sockets
                .iter()
                .map(|s| stats::SocketStat::of(&s.spec, s.fd()))
                .collect(),
            bridge_info: inst
                .filter(|_| cfg.is_some_and(|c| c.docker.is_some()))
                .map(|i| crate::docker::record::path(&self.opts.run_dir, &self.opts.instance, i.pid)),
            attempts: self.fsm.attempts(),
            throttle: stats::throttle_of(&self.fsm),
            error: match self.fsm.state() {
                State::Invalid { error } => Some(error.clone()),
                _ => self.track.config_error.clone(),
            },
            track: self.track.clone(),
            replicas: cfg.filter(|c| c.replicas.max > 1).map(|c| {
                let bridged = c.docker.is_some();
                stats::ReplicaSet {
                    min: c.replicas.min,
                    max: c.replicas.max,
                    count: self.replicas.count(),
                    others: self
                        .replicas
                        .stats(now())
                        .into_iter()
                        .map(|o| {
                            let record = (bridged && o.pid > 0)
                                .then(|| crate::docker::record::path(&self.opts.run_dir, &self.opts.instance, o.pid));
                            (o, record)
                        })
                        .collect(),
                }
            }),
        }
    }

    pub(super) fn log_status(&self) {
        let inst = self.fsm.state().instance();
        let pid = inst.map_or("-".to_string(), |i| i.pid.to_string());
        let next = match self.fsm.state() {
            State::Throttled { until } => {
                format!(
                    " next_start_in={:.1}s",
                    until.saturating_duration_since(now()).as_secs_f64()
                )
            }
            State::Invalid { error } => format!(" error={:?}", error.lines().next().unwrap_or("")),
            _ => String::new(),
        };
        let replicas: String = self
            .replicas
            .stats(now())
            .iter()
            .map(|r| format!(" #{}={}:{}", r.index, r.state, r.pid))
            .collect();
        info!(
            "[{}] status: state={} pid={pid} loyal={} restarts={} throttle_attempts={}{next}{replicas}",
            self.name,
            self.fsm.state().name(),
            u8::from(inst.is_some_and(|i| i.loyal)),
            self.fsm.restarts(),
            self.fsm.attempts(),
        );
    }
}
