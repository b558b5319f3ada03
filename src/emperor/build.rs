//! The vassal actor's builds (`docker-build`): a new config for a vassal with a build context becomes the
//! vassal's config only once its image exists.
//!
//! Why here, in the emperor, and not in the bridge: the build comes *before* anything about the instances
//! changes. The new config (with the image tag as its `docker-image`) then goes through the actor as any
//! file change does, so a reload overlaps or not as the file says, every replica starts from the same
//! image (one build per change, however many bridges start), a container created ahead of time is made
//! from it, and a failed build is handled as a broken file: one error, the running instance keeps serving
//! on its last good config, and the next change of the file tries again. The build itself never runs on
//! the emperor's thread: the context is read and hashed on a blocking thread, the archive is written by
//! a thread of its own, and the daemon builds; the actor's task only relays output lines.
//!
//! After a new tag is applied and the vassal serves from it (its previous instance retired), the older
//! tags are pruned ([`crate::build::prune`]); a tag some container still uses (a replica not replaced yet)
//! is tried again with a growing delay. Removing the vassal's file prunes all of its tags.

use std::sync::Arc;
use std::time::Duration;

use log::{debug, warn};
use tokio::task::JoinHandle;

use super::output::Log;
use crate::build::{self, Owner};
use crate::cli::EmperorOptions;
use crate::config::{ConfigError, Problem, VassalConfig};

/// How long one build may take.
const BUILD_TIMEOUT: u64 = 3600;
/// First wait before a prune is tried again; it doubles up to [`PRUNE_MAX_WAIT`].
const PRUNE_WAIT: Duration = Duration::from_secs(2);
const PRUNE_MAX_WAIT: Duration = Duration::from_secs(60);

/// A build's answer: the config with its image tag, or the file's error.
pub type Outcome = Result<Arc<VassalConfig>, Arc<ConfigError>>;

/// What woke the actor about builds.
pub enum Woke {
    Built(Outcome),
    /// Time to prune.
    PruneDue,
    /// A prune ended: whether every older tag is gone.
    Pruned(bool),
}

/// The tag whose older siblings are to go, and whose they are.
#[derive(Debug, Clone)]
struct Prune {
    repository: String,
    keep: String,
    owner: Owner,
    socket: Option<std::path::PathBuf>,
    wait: Duration,
}

/// The actor's build in flight and pruning to do.
#[derive(Debug, Default)]
pub struct Builds {
    task: Option<JoinHandle<Outcome>>,
    /// The vassal file of the build in flight, for the error of a build task that panicked.
    file: std::path::PathBuf,
    prune: Option<Prune>,
    pruning: Option<JoinHandle<bool>>,
    /// When the next prune is due; `None` until the vassal serves from the new tag.
    due: Option<tokio::time::Instant>,
}

impl Drop for Builds {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Whether a config needs a build before it can run.
pub fn wanted(cfg: &VassalConfig) -> bool {
    cfg.docker.as_ref().is_some_and(|d| d.build.is_some())
}

impl Builds {
    /// Builds (or finds) the image of `cfg`, replacing any build in flight; its output goes to `log`.
    pub fn start(&mut self, name: &str, cfg: Arc<VassalConfig>, opts: &Arc<EmperorOptions>, log: Log) {
        self.cancel();
        let (name, opts) = (name.to_owned(), opts.clone());
        self.file = cfg.path.clone();
        self.task = Some(tokio::task::spawn_local(
            async move { run(&name, cfg, &opts, &log).await },
        ));
    }

    /// Drops the build in flight (a newer change of the file, or the vassal going) and any prune.
    pub fn cancel(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some(t) = self.pruning.take() {
            t.abort();
        }
    }

    /// A built config is now the vassal's: its older tags go once it serves from this one.
    pub fn applied(&mut self, cfg: &VassalConfig, opts: &EmperorOptions) {
        self.prune = cfg.docker.as_ref().filter(|d| d.build.is_some()).map(|d| Prune {
            repository: build::repository(&d.container_name),
            keep: d.image.clone(),
            owner: owner(cfg, opts),
            socket: opts.docker_daemon_socket.clone(),
            wait: PRUNE_WAIT,
        });
        self.due = None;
    }

    /// The vassal no longer builds (its file went from `docker-build` to `docker-image`, say): once it serves
    /// from its new image, every tag built for `old` goes.
    pub fn unbuilt(&mut self, old: &VassalConfig, opts: &EmperorOptions) {
        if !wanted(old) {
            return;
        }
        self.applied(old, opts);
        if let Some(p) = self.prune.as_mut() {
            p.keep.clear();
        }
    }

    /// After every wake-up: a prune wanted becomes due once the vassal serves (from the new tag only).
    pub fn sync(&mut self, serving: bool) {
        if serving && self.prune.is_some() && self.due.is_none() && self.pruning.is_none() {
            self.due = Some(tokio::time::Instant::now());
        }
    }

    /// Resolves when a build or a prune ended, or a prune is due; never while there is nothing to do.
    pub async fn woke(&mut self) -> Woke {
        let due = self.due.filter(|_| self.task.is_none() && self.pruning.is_none());
        let Builds { task, pruning, .. } = self;
        enum Ended {
            Build(Result<Outcome, tokio::task::JoinError>),
            Prune(Result<bool, tokio::task::JoinError>),
            Due,
        }
        let ended = tokio::select! {
            res = super::wait::or_never(task.as_mut()) => Ended::Build(res),
            res = super::wait::or_never(pruning.as_mut()) => Ended::Prune(res),
            _ = super::wait::sleep_until(due) => Ended::Due,
        };
        match ended {
            Ended::Build(res) => {
                self.task = None;
                let file = &self.file;
                Woke::Built(
                    res.unwrap_or_else(|e| Err(Arc::new(ConfigError::file(file, format!("the build failed: {e}"))))),
                )
            }
            Ended::Prune(res) => {
                self.pruning = None;
                Woke::Pruned(res.unwrap_or(false))
            }
            Ended::Due => Woke::PruneDue,
        }
    }

    /// Acts on a wake-up; returns a build's outcome for the actor to apply.
    pub fn on(&mut self, name: &str, woke: Woke) -> Option<Outcome> {
        match woke {
            Woke::Built(outcome) => return Some(outcome),
            Woke::PruneDue => {
                self.due = None;
                if let Some(p) = self.prune.clone() {
                    let name = name.to_owned();
                    self.pruning = Some(tokio::task::spawn_local(async move { prune(&name, &p).await }));
                }
            }
            Woke::Pruned(true) => self.prune = None,
            Woke::Pruned(false) => {
                if let Some(p) = self.prune.as_mut() {
                    self.due = Some(tokio::time::Instant::now() + p.wait);
                    p.wait = (p.wait * 2).min(PRUNE_MAX_WAIT);
                }
            }
        }
        None
    }

    /// The vassal is gone: every tag built for it goes (those no container uses), within a few seconds.
    pub async fn removed(&mut self, name: &str, cfg: &VassalConfig, opts: &EmperorOptions) {
        self.cancel();
        let Some(d) = cfg.docker.as_ref().filter(|d| d.build.is_some()) else {
            return;
        };
        let p = Prune {
            repository: build::repository(&d.container_name),
            keep: String::new(),
            owner: owner(cfg, opts),
            socket: opts.docker_daemon_socket.clone(),
            wait: PRUNE_WAIT,
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), prune(name, &p)).await;
    }
}

fn owner(cfg: &VassalConfig, opts: &EmperorOptions) -> Owner {
    Owner {
        vassal: cfg
            .docker
            .as_ref()
            .map(|d| d.container_name.clone())
            .unwrap_or_default(),
        instance: opts.instance.clone(),
        extra_labels: opts.docker_labels.clone(),
    }
}

/// One prune; true when nothing older is left.
async fn prune(name: &str, p: &Prune) -> bool {
    let docker = match crate::docker::daemon::connect(p.socket.as_deref(), crate::docker::daemon::EMPEROR_TIMEOUT).await
    {
        Ok(d) => d,
        Err(e) => {
            debug!("[{name}] build: cannot prune older images yet: {e}");
            return false;
        }
    };
    let keep = (!p.keep.is_empty()).then_some(p.keep.as_str());
    match build::prune(&docker, &p.repository, &p.owner, keep).await {
        Ok(done) => {
            for tag in &done.removed {
                log::info!("[{name}] build: removed the older image {tag}");
            }
            for tag in &done.in_use {
                debug!("[{name}] build: {tag} is still used by a container; removed later");
            }
            done.in_use.is_empty()
        }
        Err(e) => {
            warn!("[{name}] build: cannot prune older images: {e}");
            false
        }
    }
}

/// The error of the vassal's `docker-build` line.
fn failure(cfg: &VassalConfig, message: String) -> Arc<ConfigError> {
    let line = cfg.lines.iter().find(|l| l.key == "docker-build");
    Arc::new(ConfigError {
        path: cfg.path.clone(),
        problems: vec![Problem {
            line: line.and_then(|l| l.line),
            column: None,
            key: line.map(|l| l.key.clone()),
            value: line.map(|l| l.value.clone()),
            message,
        }],
    })
}

/// The build: read and hash the context, find or build its image, and hand back the config naming it.
async fn run(name: &str, cfg: Arc<VassalConfig>, opts: &EmperorOptions, log: &Log) -> Outcome {
    let Some(d) = cfg.docker.as_ref() else { return Ok(cfg) };
    let Some(dir) = d.build.clone() else { return Ok(cfg) };
    let tenant = cfg.run_as.map(|r| crate::sys::tenant::Tenant::of(r.uid, r.gid));
    let read_dir = dir.clone();
    let started = std::time::Instant::now();
    let ctx = tokio::task::spawn_blocking(move || build::context::read(&read_dir, tenant))
        .await
        .map_err(|e| failure(&cfg, format!("reading the build context failed: {e}")))?
        .map_err(|e| failure(&cfg, format!("cannot read the build context: {e}")))?;
    let hashed_ms = started.elapsed().as_millis();
    if !ctx.skipped.is_empty() {
        log.emit(&format!(
            "build: left out of the context (not a file, directory or symlink): {}",
            ctx.skipped.join(", ")
        ));
    }
    let tag = build::tag(&build::repository(&d.container_name), &ctx.hash);
    let docker = connect(name, opts).await;
    let found = build::existing(&docker, &tag, &ctx.hash)
        .await
        .map_err(|e| failure(&cfg, format!("cannot inspect {tag}: {}", crate::docker::message(&e))))?;
    let summary = format!(
        "{} entries, {} bytes, hashed in {hashed_ms} ms",
        ctx.entries.len(),
        ctx.bytes
    );
    match found {
        Some(id) => log.emit(&format!(
            "build: context {} unchanged ({summary}); image {tag} exists ({}): no build",
            dir.display(),
            crate::docker::short(id.trim_start_matches("sha256:"))
        )),
        None => {
            log.emit(&format!("build: building {tag} from {} ({summary})", dir.display()));
            let owner = owner(&cfg, opts);
            match build::build(&docker, ctx, &tag, &owner, |line| log.emit(line)).await {
                Ok(built) => log.emit(&format!(
                    "build: built {tag} (image {}) in {:.1} s",
                    crate::docker::short(built.id.trim_start_matches("sha256:")),
                    built.secs
                )),
                Err(failed) => {
                    log.emit(&format!("build: failed: {failed}"));
                    let file = dir.join("Dockerfile");
                    return Err(failure(&cfg, format!("build failed: {} {failed}", file.display())));
                }
            }
        }
    }
    let mut cfg = (*cfg).clone();
    if let Some(d) = cfg.docker.as_mut() {
        d.image = tag;
    }
    Ok(Arc::new(cfg))
}

/// The daemon, with a build's patience per request; one that does not answer is waited for (one line in
/// the log), as bridges wait for it.
async fn connect(name: &str, opts: &EmperorOptions) -> bollard::Docker {
    let mut said = false;
    loop {
        match crate::docker::daemon::connect(opts.docker_daemon_socket.as_deref(), BUILD_TIMEOUT).await {
            Ok(d) => return d,
            Err(e) if !said => {
                warn!("[{name}] build: {e}; waiting for it");
                said = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
