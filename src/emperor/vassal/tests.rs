//! The actor driven through its seam: a fake launcher whose instances exit when the test says (or on
//! SIGTERM, like a well-behaved app), on paused time, so throttling, idle stops and overlapping
//! reloads are checked to the millisecond without processes or waiting.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use clap::Parser;
use nix::unistd::Pid;
use tokio::sync::mpsc;

use super::launch::{Instance, Launch, Launcher, Proc};
use super::*;

/// One instance the fake launched.
#[derive(Debug)]
struct Launched {
    at: Instant,
    /// `Launch::replica`: `None` for the state machine's instance.
    replica: Option<u32>,
    signals: Rc<RefCell<Vec<(Instant, Signal)>>>,
    exit: mpsc::UnboundedSender<Exit>,
}

#[derive(Debug, Clone, Default)]
struct Fake(Rc<RefCell<Vec<Launched>>>);

#[derive(Debug)]
struct FakeInstance {
    pid: i32,
    exit: mpsc::UnboundedSender<Exit>,
    exited: mpsc::UnboundedReceiver<Exit>,
    signals: Rc<RefCell<Vec<(Instant, Signal)>>>,
}

impl Launcher for Fake {
    fn adopt(
        &mut self,
        _: Launch<'_>,
        _: &str,
    ) -> Result<(Box<dyn Instance>, std::os::fd::OwnedFd), super::error::VassalError> {
        Err(super::error::VassalError::Spawn(std::io::Error::other(
            "the fake launcher runs no bridges",
        )))
    }

    fn launch(&mut self, l: Launch<'_>) -> Result<Proc, super::error::VassalError> {
        let (exit, exited) = mpsc::unbounded_channel();
        let signals = Rc::new(RefCell::new(Vec::new()));
        let mut launched = self.0.borrow_mut();
        // Far above any real pid: nothing here may ever signal a real process.
        let pid = 4_000_000 + launched.len() as i32;
        launched.push(Launched {
            at: now(),
            replica: l.replica,
            signals: signals.clone(),
            exit: exit.clone(),
        });
        Ok(Proc {
            child: Box::new(FakeInstance {
                pid,
                exit,
                exited,
                signals,
            }),
            control: None,
            config: None,
            _lifeline: None,
            bridged: false,
            speaks: false,
        })
    }
}

impl Instance for FakeInstance {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.pid)
    }
    fn wait(&mut self) -> Pin<Box<dyn Future<Output = std::io::Result<Exit>> + '_>> {
        Box::pin(async {
            match self.exited.recv().await {
                Some(e) => Ok(e),
                None => std::future::pending().await,
            }
        })
    }
    fn signal(&self, sig: Signal) {
        self.signals.borrow_mut().push((now(), sig));
        if sig == Signal::SIGTERM {
            let _ = self.exit.send(Exit::Code(0));
        }
    }
    fn signal_group(&self, sig: Signal) {
        self.signals.borrow_mut().push((now(), sig));
    }
    fn kill_group(&self) {
        self.signal(Signal::SIGKILL);
        let _ = self.exit.send(Exit::Signal(Signal::SIGKILL));
    }
}

struct Setup {
    dir: std::path::PathBuf,
    opts: Arc<EmperorOptions>,
}

impl Setup {
    fn new(args: &[&str]) -> Setup {
        let dir = std::env::temp_dir().join(format!(
            "emperor-actor-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut argv = vec!["emperor"];
        argv.extend_from_slice(args);
        let dir_s = dir.to_str().unwrap().to_owned();
        argv.push(&dir_s);
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        let opts = Arc::new(cli.emperor.into_options().unwrap());
        Setup { dir, opts }
    }

    fn config(&self, text: &str) -> Arc<VassalConfig> {
        let path = self.dir.join("v.ini");
        Arc::new(crate::config::parse("v.ini", &path, text, &self.dir).unwrap())
    }

    fn start(&self, fake: &Fake, set: &mut JoinSet<String>) -> VassalHandle {
        let (reports, _) = mpsc::unbounded_channel();
        start_with(
            "v.ini".into(),
            self.opts.clone(),
            set,
            reports,
            None,
            Box::new(fake.clone()),
        )
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs `f` on a current-thread runtime with paused time, inside a LocalSet (actors are local tasks).
fn paused(f: impl AsyncFnOnce()) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f());
}

/// Lets the actor run until nothing is left to do now (time does not move while others are ready).
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// One actor on the fake launcher, started with a vassal file.
struct Driven {
    s: Setup,
    fake: Fake,
    set: JoinSet<String>,
    h: VassalHandle,
}

impl Driven {
    /// Starts the actor with `args` and gives it `text` as its file, `{sock}` standing for [`Driven::sock`].
    async fn start(args: &[&str], text: &str) -> Driven {
        let s = Setup::new(args);
        let fake = Fake::default();
        let mut set = JoinSet::new();
        let h = s.start(&fake, &mut set);
        let d = Driven { s, fake, set, h };
        d.update(text);
        settle().await;
        d
    }

    /// A new version of the file.
    fn update(&self, text: &str) {
        let text = text.replace("{sock}", &self.sock().display().to_string());
        self.h.tx.send(Command::Update(Ok(self.s.config(&text)))).unwrap();
    }

    fn sock(&self) -> std::path::PathBuf {
        self.s.dir.join("v.sock")
    }

    /// How many instances were launched.
    fn launched(&self) -> usize {
        self.fake.0.borrow().len()
    }

    /// When the `i`-th instance was launched.
    fn at(&self, i: usize) -> Instant {
        self.fake.0.borrow()[i].at
    }

    /// The signals the `i`-th instance got, with when.
    fn signals(&self, i: usize) -> Vec<(Instant, Signal)> {
        self.fake.0.borrow()[i].signals.borrow().clone()
    }

    /// Shuts the actor down; the name it returns once it has released everything.
    async fn shutdown(mut self) -> String {
        self.h.tx.send(Command::Shutdown).unwrap();
        self.set.join_next().await.unwrap().unwrap()
    }
}

/// Waits (real time through the reactor, as readiness needs) until `cond`.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(ms(5)).await;
    }
    panic!("never: {what}");
}

#[test]
fn replicas_start_with_the_vassal_restart_alone_and_follow_a_new_count_without_a_reload() {
    paused(async || {
        let text = "[emperor]\nexec = /app\nsocket = {sock}\nreplicas = 3\n";
        let d = Driven::start(&["--emperor-throttle", "1000"], text).await;
        let replicas = |d: &Driven| d.fake.0.borrow().iter().map(|l| l.replica).collect::<Vec<_>>();
        assert_eq!(replicas(&d), [None, Some(1), Some(2)]);
        // Replica 1 dies before it is loyal: it alone is throttled, then restarted in its place.
        let t0 = now();
        d.fake.0.borrow()[1].exit.send(Exit::Code(1)).unwrap();
        tokio::time::sleep(ms(900)).await;
        assert_eq!(d.launched(), 3, "still throttled 0.9 s later");
        tokio::time::sleep(ms(200)).await;
        settle().await;
        assert_eq!(replicas(&d), [None, Some(1), Some(2), Some(1)]);
        assert_eq!(d.at(3) - t0, ms(1000));
        assert!(
            d.signals(0).is_empty() && d.signals(2).is_empty(),
            "the others untouched"
        );
        // Only the count changes: the two replicas stop, nothing reloads or starts.
        d.update(&text.replace("replicas = 3", "replicas = 1"));
        until("both replicas asked to stop", || {
            d.signals(2).iter().any(|s| s.1 == Signal::SIGTERM) && d.signals(3).iter().any(|s| s.1 == Signal::SIGTERM)
        })
        .await;
        settle().await;
        assert_eq!(d.launched(), 4, "nothing started");
        assert!(d.signals(0).is_empty(), "replica 0 kept running");
        // Back to 2: replica 1 starts again, in its place.
        d.update(&text.replace("replicas = 3", "replicas = 2"));
        settle().await;
        assert_eq!(replicas(&d)[4], Some(1));
        let fake = d.fake.clone();
        assert_eq!(d.shutdown().await, "v.ini");
        let stopped = |i: usize| {
            fake.0.borrow()[i]
                .signals
                .borrow()
                .iter()
                .any(|s| s.1 == Signal::SIGTERM)
        };
        assert!(stopped(0) && stopped(4), "the vassal's end stops every replica");
    });
}

#[test]
fn a_crash_before_loyalty_is_throttled_then_restarted() {
    paused(async || {
        let d = Driven::start(&["--emperor-throttle", "1000"], "[emperor]\nexec = /app\n").await;
        assert_eq!(d.launched(), 1);
        let t0 = d.at(0);
        d.fake.0.borrow()[0].exit.send(Exit::Code(1)).unwrap();
        tokio::time::sleep(ms(900)).await;
        assert_eq!(d.launched(), 1, "still throttled 0.9 s later");
        tokio::time::sleep(ms(200)).await;
        settle().await;
        assert_eq!(d.launched(), 2, "restarted once the throttle ran out");
        assert_eq!(d.at(1) - t0, ms(1000));
        let fake = d.fake.clone();
        assert_eq!(d.shutdown().await, "v.ini");
        assert_eq!(
            fake.0.borrow()[1].signals.borrow().last().map(|s| s.1),
            Some(Signal::SIGTERM)
        );
    });
}

#[test]
fn an_idle_vassal_is_stopped_once_nothing_happened_for_idle() {
    paused(async || {
        let d = Driven::start(&[], "[emperor]\nexec = /app\nsocket = {sock}\nidle = 2\n").await;
        let t0 = d.at(0);
        // Counted busy until the first look (a quarter of idle), idle 2 s after it: stopped at 2.5 s.
        tokio::time::sleep(ms(2400)).await;
        assert!(d.signals(0).is_empty(), "not stopped before idle");
        tokio::time::sleep(ms(200)).await;
        settle().await;
        let signals = d.signals(0);
        assert_eq!(signals.len(), 1, "{signals:?}");
        assert_eq!((signals[0].0 - t0, signals[0].1), (ms(2500), Signal::SIGTERM));
        // Not on demand: it waits for its file (or SIGHUP) and is not started again by itself.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(d.launched(), 1);
        d.h.tx.send(Command::Reload).unwrap();
        settle().await;
        assert_eq!(d.launched(), 2, "SIGHUP starts it again");
        d.shutdown().await;
    });
}

#[test]
fn an_on_demand_vassal_starts_on_the_first_connection() {
    paused(async || {
        let d = Driven::start(&[], "[emperor]\nexec = /app\nsocket = {sock}\non-demand = true\n").await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(d.launched(), 0, "nothing runs before a connection");
        let _client = std::os::unix::net::UnixStream::connect(d.sock()).unwrap();
        until("the connection starts it", || d.launched() == 1).await;
        d.shutdown().await;
    });
}

#[test]
fn an_overlapping_reload_retires_the_old_instance_after_ready_delay() {
    paused(async || {
        let d = Driven::start(&[], "[emperor]\nexec = /app\nready-delay = 1\n").await;
        // A new [emperor] section: a new instance beside the old one.
        d.update("[emperor]\nexec = /app --v2\nready-delay = 1\n");
        settle().await;
        assert_eq!(d.launched(), 2, "the new instance runs beside the old one");
        assert!(d.signals(0).is_empty(), "the old one still serves");
        let t1 = d.at(1);
        tokio::time::sleep(ms(1100)).await;
        settle().await;
        let old = d.signals(0);
        assert_eq!(old.len(), 1, "{old:?}");
        assert_eq!(
            (old[0].0 - t1, old[0].1),
            (ms(1000), Signal::SIGTERM),
            "retired after ready-delay"
        );
        assert!(d.signals(1).is_empty(), "the new one is untouched");
        d.shutdown().await;
    });
}

/// A prewarm vassal whose instance counts as ready 0.5 s after its start (`ready-delay`: the fake does not
/// wait for connections anywhere /proc could show).
const PREWARM: &str = "[emperor]\nexec = /app\nsocket = {sock}\non-demand = true\nidle = 2\nidle-action = pause\n\
                       prewarm = true\nready-delay = 0.5\n";

#[test]
fn a_prewarmed_vassal_starts_at_once_and_is_paused_once_ready() {
    paused(async || {
        let d = Driven::start(&[], PREWARM).await;
        assert_eq!(d.launched(), 1, "started without a connection");
        let t0 = d.at(0);
        tokio::time::sleep(ms(450)).await;
        assert!(d.signals(0).is_empty(), "not paused before it is ready");
        tokio::time::sleep(ms(100)).await;
        settle().await;
        assert_eq!(d.signals(0), vec![(t0 + ms(500), Signal::SIGSTOP)], "paused once ready");
        // Paused until the first connection, however long that takes; it thaws the same instance.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(d.signals(0).len(), 1);
        let _client = std::os::unix::net::UnixStream::connect(d.sock()).unwrap();
        until("the connection thaws it", || d.signals(0).len() == 2).await;
        assert_eq!(d.signals(0)[1].1, Signal::SIGCONT);
        assert_eq!(d.launched(), 1, "no second start");
        d.shutdown().await;
    });
}

#[test]
fn a_connection_while_a_prewarmed_vassal_starts_keeps_it_running() {
    paused(async || {
        let d = Driven::start(&[], PREWARM).await;
        tokio::time::sleep(ms(100)).await;
        // Queued in the backlog before the instance is ready (the fake never accepts it).
        let _client = std::os::unix::net::UnixStream::connect(d.sock()).unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        settle().await;
        assert!(
            d.signals(0).is_empty(),
            "never paused while a connection waits: {:?}",
            d.signals(0)
        );
        assert_eq!(d.launched(), 1);
        d.shutdown().await;
    });
}

#[test]
fn a_prewarmed_vassal_slower_to_start_than_idle_is_paused_once_ready_not_by_idle() {
    paused(async || {
        let slow = PREWARM
            .replace("idle = 2\n", "idle = 1\n")
            .replace("ready-delay = 0.5", "ready-delay = 4");
        let d = Driven::start(&[], &slow).await;
        let t0 = d.at(0);
        tokio::time::sleep(ms(3900)).await;
        assert!(
            d.signals(0).is_empty(),
            "not paused while it starts: {:?}",
            d.signals(0)
        );
        tokio::time::sleep(ms(200)).await;
        settle().await;
        assert_eq!(
            d.signals(0),
            vec![(t0 + ms(4000), Signal::SIGSTOP)],
            "paused once ready"
        );
        d.shutdown().await;
    });
}
