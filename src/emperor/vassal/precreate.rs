//! Containers created ahead of time: while an on-demand Docker vassal waits, its container is created
//! (not started), so the first connection waits for `docker start` only (`prepare.rs` does the Docker
//! part; this file keeps the actor's side of it).
//!
//! The bookkeeping is a generation counter: the file changing or a bridge starting bumps it, and a
//! creation that finishes for an older generation is not kept (its container may be the bridge's own,
//! or made for a file that no longer exists). A creation runs at most once per stay in `waiting`, and a
//! connection that comes while one runs waits for it (`activation_pending`) rather than racing it.

use std::future::Future;

use tokio::task::JoinHandle;

/// What a creation gives: the container's id, `None` when there was nothing to create.
pub type Outcome = Result<Option<String>, String>;

/// The actor's side of creating containers ahead of time.
#[derive(Debug, Default)]
pub struct Precreate {
    /// Bumped when the file changes or a bridge starts.
    generation: u64,
    /// A creation in progress, with the generation it began in.
    task: Option<(u64, JoinHandle<Outcome>)>,
    /// The container created ahead of time and not yet handed to a bridge.
    ready: Option<String>,
    /// A creation ran since the vassal entered `waiting` (it is not retried before the next time).
    tried: bool,
    /// A connection arrived while the container was being created: start once it is.
    pub activation_pending: bool,
}

impl Precreate {
    /// Whether a creation should begin now: `wanted` (waiting, on demand, Docker, `docker-precreate`) and
    /// none ran in this stay. Leaving `waiting` (not wanted) allows the next stay's creation.
    pub fn should_start(&mut self, wanted: bool) -> bool {
        if !wanted {
            self.tried = false;
            return false;
        }
        !(self.task.is_some() || self.ready.is_some() || self.tried)
    }

    /// Begins a creation (spawned on the actor's thread).
    pub fn start(&mut self, creation: impl Future<Output = Outcome> + 'static) {
        self.tried = true;
        self.task = Some((self.generation, tokio::task::spawn_local(creation)));
    }

    /// A creation is running.
    pub fn running(&self) -> bool {
        self.task.is_some()
    }

    /// The file changed: a running creation is for the old file (its result is dropped) and the next stay
    /// in `waiting` creates again. The container made for the old file is forgotten: the next creation or
    /// bridge finds it by name and starts it if it still fits or replaces it (removing it here could race a
    /// bridge spawned for this very change). Only if `drop_ready` (the vassal is no Docker vassal any more,
    /// so nothing else will) is it returned for removal.
    pub fn file_changed(&mut self, drop_ready: bool) -> Option<String> {
        self.generation += 1;
        self.tried = false;
        let ready = self.ready.take();
        if drop_ready { ready } else { None }
    }

    /// A bridge starts: it starts the container created ahead of time or replaces it, and a creation still
    /// running is stopped and its result dropped, so it cannot take the bridge's container for a stale one.
    pub fn bridge_starts(&mut self) {
        self.ready = None;
        self.generation += 1;
        if let Some((_, task)) = self.task.take() {
            task.abort();
        }
    }

    /// A creation has finished in `generation`: whether a connection waited for it, and the outcome worth
    /// logging (a kept container's id, or the error).
    pub fn finished(&mut self, generation: u64, outcome: Outcome) -> (bool, Option<Result<String, String>>) {
        self.task = None;
        let kept = match outcome {
            // Begun for an older file, or a bridge has started since: not ours to keep.
            Ok(Some(_)) if generation != self.generation => {
                self.tried = false;
                None
            }
            Ok(Some(id)) => {
                self.ready = Some(id.clone());
                Some(Ok(id))
            }
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        };
        (std::mem::take(&mut self.activation_pending), kept)
    }

    /// The outcome of the running creation; never, without one.
    pub async fn outcome(&mut self) -> (u64, Outcome) {
        match &mut self.task {
            Some((generation, t)) => (*generation, t.await.unwrap_or_else(|e| Err(e.to_string()))),
            None => std::future::pending().await,
        }
    }

    /// At the end of the actor, with every instance gone: whatever a creation made (or found) is no
    /// bridge's any more and is returned for removal.
    pub async fn leftover(&mut self) -> Option<String> {
        if let Some((_, task)) = self.task.take()
            && let Ok(Ok(Some(id))) = task.await
        {
            self.ready = Some(id);
        }
        self.ready.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local<F: Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f)
    }

    #[test]
    fn one_creation_per_stay_and_its_container_is_kept() {
        local(async {
            let mut p = Precreate::default();
            assert!(!p.should_start(false));
            assert!(p.should_start(true));
            p.start(async { Ok(Some("c1".into())) });
            assert!(!p.should_start(true), "not while one runs");
            let (generation, outcome) = p.outcome().await;
            assert_eq!(p.finished(generation, outcome), (false, Some(Ok("c1".into()))));
            assert!(!p.should_start(true), "not twice in one stay");
            assert_eq!(p.leftover().await.as_deref(), Some("c1"));
        });
    }

    #[test]
    fn a_creation_for_an_older_file_is_dropped_and_may_run_again() {
        local(async {
            let mut p = Precreate::default();
            assert!(p.should_start(true));
            p.start(async { Ok(Some("old".into())) });
            assert_eq!(p.file_changed(false), None);
            let (generation, outcome) = p.outcome().await;
            p.activation_pending = true;
            assert_eq!(
                p.finished(generation, outcome),
                (true, None),
                "dropped, and the waiting connection goes on"
            );
            assert!(p.should_start(true), "the new file gets its own creation");
            assert_eq!(p.leftover().await, None);
        });
    }

    #[test]
    fn a_bridge_start_aborts_the_creation_and_forgets_the_container() {
        local(async {
            let mut p = Precreate::default();
            p.should_start(true);
            p.start(async {
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                Ok(Some("late".into()))
            });
            p.bridge_starts();
            assert!(!p.running());
            assert_eq!(p.leftover().await, None);
            // A file that turns the vassal into a process vassal hands the ready container back for removal.
            p.should_start(false);
            p.should_start(true);
            p.start(async { Ok(Some("c2".into())) });
            let (g, o) = p.outcome().await;
            p.finished(g, o);
            assert_eq!(p.file_changed(true).as_deref(), Some("c2"));
        });
    }
}
