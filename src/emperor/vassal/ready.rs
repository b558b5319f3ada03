//! Is the new instance of an overlapping reload, or a prewarmed instance, ready? For an app that does
//! not speak the emperor protocol, the emperor looks whether it waits for connections on the vassal's
//! sockets (`listening.rs`), and retires the old instance (or pauses the prewarmed one) once it does.
//!
//! The looks run on the blocking pool: reading another process's /proc can block (its memory may be
//! behind userfaultfd or FUSE), and the actor's thread runs every vassal. They come every 25 ms for
//! the first second, then every 100 ms, so a fast app is retired into at once and a slow one costs
//! little.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// How often a pending overlapping reload looks whether the new instance waits for connections.
const POLL: Duration = Duration::from_millis(25);
/// Looks at [`POLL`] before slowing down to four times that.
const FAST_LOOKS: u32 = 40;

/// The looks for one pending reload.
#[derive(Debug, Default)]
pub struct ReadyLook {
    /// When to look next; `None` while a look runs or nothing is pending.
    at: Option<Instant>,
    /// A look in progress.
    task: Option<JoinHandle<bool>>,
    /// Looks so far for the pending reload.
    polls: u32,
}

impl ReadyLook {
    /// Looks are wanted (`pending`) or not. A look still running when they stop being wanted finishes on
    /// its own; its answer is dropped with the handle.
    pub fn sync(&mut self, pending: bool, now: Instant) {
        if !pending {
            *self = ReadyLook::default();
        } else if self.at.is_none() && self.task.is_none() {
            self.at = Some(now + POLL);
        }
    }

    /// When the next look is due.
    pub fn due(&self) -> Option<Instant> {
        self.at
    }

    /// A look has begun.
    pub fn started(&mut self, task: JoinHandle<bool>) {
        self.at = None;
        self.task = Some(task);
    }

    /// The look has nothing to look at (no instance): wait for the next sync.
    pub fn skip(&mut self) {
        self.at = None;
    }

    /// A look's answer: true if the new instance waits for connections; otherwise the next look is
    /// scheduled.
    pub fn answered(&mut self, seen: bool, now: Instant) -> bool {
        self.task = None;
        if !seen {
            self.polls += 1;
            let pause = if self.polls < FAST_LOOKS { POLL } else { POLL * 4 };
            self.at = Some(now + pause);
        }
        seen
    }

    /// The answer of the look in progress; never, without one.
    pub async fn answer(&mut self) -> bool {
        match &mut self.task {
            Some(t) => t.await.unwrap_or(false),
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_come_fast_for_a_second_then_slower_and_stop_when_not_pending() {
        let t0 = Instant::now();
        let mut r = ReadyLook::default();
        r.sync(true, t0);
        assert_eq!(r.due(), Some(t0 + POLL));
        let mut t = t0;
        for i in 0..FAST_LOOKS + 2 {
            t = r.due().unwrap();
            assert!(!r.answered(false, t));
            let gap = r.due().unwrap() - t;
            assert_eq!(gap, if i + 1 < FAST_LOOKS { POLL } else { POLL * 4 }, "look {i}");
        }
        assert!(r.answered(true, t));
        r.sync(false, t);
        assert_eq!(r.due(), None);
        r.sync(true, t);
        assert_eq!(r.due(), Some(t + POLL), "a new pending reload starts fast again");
    }
}
