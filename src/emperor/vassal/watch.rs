//! Learning that connections come: to start an on-demand vassal, to thaw a paused one, and to tell a
//! running vassal with `idle` busy from idle.
//!
//! Two mechanisms, because neither does both jobs. Readiness (epoll on duplicates of the listening
//! sockets) says "a connection is waiting", which is what wakes a vassal that is not running; but a
//! running app takes connections before the emperor looks, so for idleness the emperor also uses
//! arrival signals (`arrivals.rs`), which report every arrival, and counts open connections in the
//! kernel at each look (`conns.rs`). The look's decision is a pure function ([`decide`]) so that the
//! countdown rules are tested without sockets or clocks.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use log::{debug, warn};
use tokio::io::unix::AsyncFd;

use crate::emperor::arrivals::{self, Arrivals};
use crate::emperor::sockets::BoundSocket;
use crate::emperor::spawn;

/// When the vassal was last seen busy, and when to look again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleCheck {
    pub last_busy: Instant,
    pub next: Instant,
    /// The last look saw connections open (or the vassal was just started by one): when the next
    /// look sees none, they closed in between, so the idle countdown starts then, never earlier.
    pub was_open: bool,
}

impl IdleCheck {
    /// The first look of a vassal that just started: counted busy until then.
    pub fn start(now: Instant, idle: Duration) -> IdleCheck {
        IdleCheck {
            last_busy: now,
            next: now + idle_step(idle),
            was_open: true,
        }
    }
}

/// What one look at a running vassal decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// No connection open and none new for `idle`.
    Idle,
    /// Look again as the check says.
    Again(IdleCheck),
}

/// One look: `open` connections are open now. A connection seen open, or one that closed since the
/// last look, counts the vassal busy up to now; the next look comes at the end of the countdown or
/// after a step, whichever is first.
pub fn decide(check: IdleCheck, idle: Duration, open: usize, now: Instant) -> Look {
    let last_busy = if open > 0 || check.was_open {
        now
    } else {
        check.last_busy
    };
    if now.duration_since(last_busy) >= idle {
        return Look::Idle;
    }
    Look::Again(IdleCheck {
        last_busy,
        next: (last_busy + idle).min(now + idle_step(idle)),
        was_open: open > 0,
    })
}

/// How often an idle check looks again while the vassal is busy: a quarter of `idle`, 0.25–5 s.
pub fn idle_step(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(5))
}

/// The watches of one vassal's sockets.
#[derive(Debug)]
pub struct Watch {
    name: String,
    /// Duplicates of the listening sockets registered for readiness.
    readable: Vec<AsyncFd<OwnedFd>>,
    /// The emperor's reader of arrival signals; `None` if it could not start.
    arrivals: Option<Arrivals>,
    /// Arrival signals of a running vassal's listeners, between two idle checks.
    arrival: Option<arrivals::Watch>,
    /// Idle detection of a running vassal with `idle` set.
    pub check: Option<IdleCheck>,
}

impl Watch {
    pub fn new(name: &str, arrivals: Option<Arrivals>) -> Watch {
        Watch {
            name: name.to_owned(),
            readable: Vec::new(),
            arrivals,
            arrival: None,
            check: None,
        }
    }

    /// Arrival signals can be turned on for new sockets (see `arrivals::prepare`).
    pub fn has_arrivals(&self) -> bool {
        self.arrivals.is_some()
    }

    /// Keeps the watches in line with the vassal: watch for a connection (`activation`: waiting on demand
    /// or paused), and check idleness (`idle`: running with `idle` set); nothing otherwise.
    pub fn sync(&mut self, activation: bool, idle: Option<Duration>, sockets: &[BoundSocket]) {
        match idle {
            Some(idle) => {
                if self.check.is_none() {
                    self.check = Some(IdleCheck::start(super::now(), idle));
                    self.arm_idle(sockets);
                }
            }
            None => {
                self.check = None;
                self.arrival = None;
            }
        }
        if activation {
            if self.readable.is_empty() {
                self.arm_readable(sockets);
            }
        } else if idle.is_none() {
            self.readable.clear();
        }
    }

    /// An instance is about to start with `idle` set: its idle check begins and its sockets are watched from
    /// now on rather than from the next sync. For a prewarmed one (`queued`) readiness is watched as well, so
    /// that a connection already waiting in the backlog counts as one that came (arrival signals report
    /// only new ones).
    pub fn starting(&mut self, idle: Duration, sockets: &[BoundSocket], queued: bool) {
        self.check.get_or_insert_with(|| IdleCheck::start(super::now(), idle));
        self.arm_idle(sockets);
        if queued && self.arrival.is_some() {
            self.arm_readable(sockets);
        }
    }

    /// Stops watching (a connection was seen, or the vassal went idle); the next sync or look re-arms.
    pub fn disarm(&mut self) {
        self.readable.clear();
        self.arrival = None;
    }

    /// The socket set changed: the watches hold duplicates of the old set (which would keep a released
    /// listener open and miss the new one's arrivals), so start over on the current set.
    pub fn sockets_changed(&mut self, sockets: &[BoundSocket]) {
        self.disarm();
        if self.check.is_some() {
            self.arm_idle(sockets);
        }
    }

    /// A connection came while the vassal runs: unwatched until the next look, which counts it busy up to
    /// then (more connections may come and go meanwhile).
    pub fn busy_now(&mut self) {
        if let Some(c) = &mut self.check {
            c.last_busy = super::now();
            c.was_open = true;
        }
    }

    /// One idle look with `open` connections open now; true when the vassal is idle.
    pub fn look(&mut self, idle: Duration, open: usize, sockets: &[BoundSocket]) -> bool {
        let Some(check) = self.check else { return false };
        let now = super::now();
        match decide(check, idle, open, now) {
            Look::Idle => {
                debug!(
                    "[{}] idle for {:.1}s",
                    self.name,
                    now.duration_since(check.last_busy).as_secs_f64()
                );
                self.check = None;
                self.disarm();
                true
            }
            Look::Again(next) => {
                self.check = Some(next);
                let armed = self.arrival.as_ref().is_some_and(|w| w.still_armed()) || !self.readable.is_empty();
                if !armed {
                    self.arm_idle(sockets);
                }
                false
            }
        }
    }

    /// Completes when a connection arrives or waits on a watched socket; never, without a watch.
    pub async fn seen(&self) {
        tokio::select! {
            _ = any_readable(&self.readable) => {}
            _ = arrived(self.arrival.as_ref()) => {}
        }
    }

    /// Watches a running vassal's sockets for the next connection: by arrival signals where they work,
    /// else by readiness (which misses connections the app accepts before the emperor looks).
    fn arm_idle(&mut self, sockets: &[BoundSocket]) {
        self.disarm();
        if let Some(arrivals) = &self.arrivals {
            let fds: Vec<_> = sockets.iter().map(|s| s.fd()).collect();
            match arrivals.watch(&fds) {
                Ok(w) => {
                    self.arrival = Some(w);
                    return;
                }
                Err(e) => debug!("[{}] no arrival signals ({e}): watching readiness", self.name),
            }
        }
        self.arm_readable(sockets);
    }

    fn arm_readable(&mut self, sockets: &[BoundSocket]) {
        self.readable.clear();
        for s in sockets {
            match s.fd().try_clone_to_owned().and_then(spawn::watch_readable) {
                Ok(w) => self.readable.push(w),
                Err(e) => warn!("[{}] cannot watch {}: {e}", self.name, s.spec.addr),
            }
        }
    }
}

/// Completes when a watched listener reports an arrival; never, without a watch.
async fn arrived(watch: Option<&arrivals::Watch>) {
    crate::emperor::wait::or_never(watch.map(|w| w.arrived())).await
}

/// Completes when a connection waits on any watched socket; never, without one.
async fn any_readable(watch: &[AsyncFd<OwnedFd>]) {
    if watch.is_empty() {
        return std::future::pending().await;
    }
    let futs = watch.iter().map(|w| Box::pin(w.readable()));
    let _ = futures_util::future::select_all(futs).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(4);

    #[test]
    fn a_fresh_start_counts_busy_until_the_first_look() {
        let t0 = Instant::now();
        let c = IdleCheck::start(t0, IDLE);
        assert_eq!(c.next, t0 + Duration::from_secs(1));
        // Nothing open at the first look: the countdown starts at that look, not at the start.
        let t1 = t0 + Duration::from_secs(1);
        let Look::Again(c) = decide(c, IDLE, 0, t1) else {
            panic!("idle too early")
        };
        assert_eq!((c.last_busy, c.was_open), (t1, false));
        assert_eq!(c.next, t1 + Duration::from_secs(1));
    }

    #[test]
    fn idle_after_the_countdown_with_nothing_open() {
        let t0 = Instant::now();
        let mut c = IdleCheck {
            last_busy: t0,
            next: t0,
            was_open: false,
        };
        let mut t = t0;
        let mut looks = 0;
        loop {
            t = c.next.max(t + Duration::from_millis(1));
            looks += 1;
            match decide(c, IDLE, 0, t) {
                Look::Again(n) => c = n,
                Look::Idle => break,
            }
        }
        assert_eq!(t, t0 + IDLE, "idle exactly when the countdown ends");
        assert!(looks <= 5, "{looks} looks");
    }

    #[test]
    fn an_open_connection_or_one_closed_since_the_last_look_restarts_the_countdown() {
        let t0 = Instant::now();
        let quiet = IdleCheck {
            last_busy: t0,
            next: t0,
            was_open: false,
        };
        let t = t0 + IDLE * 2;
        assert_eq!(decide(quiet, IDLE, 0, t), Look::Idle);
        let Look::Again(c) = decide(quiet, IDLE, 2, t) else {
            panic!()
        };
        assert_eq!((c.last_busy, c.was_open), (t, true));
        // Closed between the looks: busy up to this look.
        let Look::Again(c) = decide(c, IDLE, 0, t + Duration::from_secs(1)) else {
            panic!()
        };
        assert_eq!((c.last_busy, c.was_open), (t + Duration::from_secs(1), false));
    }

    #[test]
    fn steps_are_a_quarter_of_idle_within_bounds() {
        assert_eq!(idle_step(Duration::from_millis(400)), Duration::from_millis(250));
        assert_eq!(idle_step(Duration::from_secs(8)), Duration::from_secs(2));
        assert_eq!(idle_step(Duration::from_secs(600)), Duration::from_secs(5));
    }
}
