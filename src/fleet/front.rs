//! `emperor front`: one nginx in front of a fleet of emperors (one per host), following the routes
//! every host publishes to Redis.
//!
//! Each host's emperor publishes its vassals' routes in beachhead's layout (`fleet/beachhead.rs`); the
//! front reads them all and keeps the nginx include file equal to what they say
//! (`fleet/front_map.rs`), written and reloaded the way the emperor's `--nginx-map` is
//! (`emperor::routes::IncludeFile`: only a change of content writes the file, atomically, and runs
//! `--nginx-reload`).
//!
//! # Following the routes
//!
//! A read is every key under the prefix (`fleet/store.rs`). One runs at connection, on every keyspace
//! notification for a key under the prefix, and every `--reread` seconds: Redis notifies an expiration
//! only when it notices it (on access, or by its background sweep), and a server that refuses `CONFIG`
//! may never notify at all. Notifications come in bursts (a host refreshes all its keys at once), so
//! reads are coalesced: at most one is in flight, and notifications that arrive meanwhile make one more
//! once it is done. A change is in the file within a read's time of the command that made it.
//!
//! # When Redis goes away
//!
//! The file is left as it is: the hosts still serve, and emptying the map would turn the whole fleet
//! into 404s for as long as Redis is down. One warning says Redis went away, one line says it is back
//! and after how long; in between the front reconnects with a backoff from 100 ms doubling to 5 s, and
//! re-reads everything once connected. A Redis that comes back empty (restarted without persistence) would
//! still turn the fleet into 404s until every host has published again, which takes up to their own
//! reconnection backoff (5 s): so for [`GRACE`] after an outage, routes the front had before it that are not
//! back yet are kept in the file. A front started while Redis is unreachable leaves an existing
//! file alone, and writes a map with no routes only where there is none, so that nginx's `include`
//! finds a file.
//!
//! SIGTERM and SIGINT end the front with status 0, leaving the file as it is (after waiting, bounded,
//! for a reload in flight): the hosts are still serving.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use log::{debug, error, info, warn};
use redis::RedisError;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::{Instant, MissedTickBehavior};

use crate::cli::{FrontArgs, FrontOptions};
use crate::emperor::routes::IncludeFile;
use crate::fleet::front_map::{self, Logged};
use crate::fleet::store::{self, Target};

/// The first pause before reconnecting; doubled at each failure up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// After an outage, how long routes from before it are kept while the hosts publish again: twice the hosts'
/// longest reconnection backoff.
const GRACE: Duration = Duration::from_secs(10);

/// Every route under the prefix, as read: (key, value).
type Values = Vec<(String, Vec<u8>)>;

/// The read in flight.
type Reading = Pin<Box<dyn Future<Output = Result<Values, RedisError>>>>;

/// Runs `emperor front` until SIGTERM or SIGINT.
pub fn main(args: FrontArgs) -> ExitCode {
    let opts = match args.into_options() {
        Ok(opts) => opts,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    let target = match Target::parse(&opts.redis) {
        Ok(t) => t,
        Err(e) => {
            error!("--redis: {e}");
            return ExitCode::from(2);
        }
    };
    let path = match std::path::absolute(&opts.nginx_map) {
        Ok(p) => p,
        Err(e) => {
            error!("--nginx-map {}: {e}", opts.nginx_map.display());
            return ExitCode::from(2);
        }
    };
    // The reload command must not inherit what this process was started with.
    crate::sys::fd::mark_inherited_fds_cloexec();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!("front: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(opts, target, path))
}

async fn run(opts: FrontOptions, target: Target, path: PathBuf) -> ExitCode {
    let mut stop = match Stop::new() {
        Ok(s) => s,
        Err(e) => {
            error!("front: cannot listen for SIGTERM and SIGINT: {e}");
            return ExitCode::FAILURE;
        }
    };
    info!(
        "front: following the routes under {} in {} into {} (re-read every {:?})",
        opts.prefix,
        target.shown,
        path.display(),
        opts.reread
    );
    let mut front = Front {
        file: IncludeFile::new(path, opts.nginx_reload),
        target,
        prefix: opts.prefix,
        reread: opts.reread,
        logged: Logged::default(),
        refusal_logged: false,
        outage: None,
        ever_read: false,
        last: Vec::new(),
        grace_until: None,
    };
    let mut backoff = BACKOFF_MIN;
    let signal = loop {
        let failure = tokio::select! {
            name = stop.recv() => break name,
            failure = front.session(&mut backoff) => failure,
        };
        front.went_away(&failure);
        tokio::select! {
            name = stop.recv() => break name,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    };
    info!(
        "front: {signal}: exiting; {} stays as it is",
        front.file.path().display()
    );
    front.file.settle().await;
    ExitCode::SUCCESS
}

/// SIGTERM and SIGINT.
struct Stop {
    term: Signal,
    int: Signal,
}

impl Stop {
    fn new() -> std::io::Result<Stop> {
        Ok(Stop {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The name of the next one that arrives.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

struct Front {
    file: IncludeFile,
    target: Target,
    prefix: String,
    reread: Duration,
    logged: Logged,
    /// That the server refuses notifications has been said (once per process).
    refusal_logged: bool,
    /// Since when Redis has been unreachable; `None` while reads succeed.
    outage: Option<Instant>,
    /// A read has succeeded since start.
    ever_read: bool,
    /// What the file was last rendered from.
    last: Values,
    /// Until when routes from before an outage are kept ([`GRACE`]).
    grace_until: Option<Instant>,
}

impl Front {
    /// One connection's life: connect, ask for notifications, then read whenever something may have
    /// changed, until the connection fails; returns why.
    async fn session(&mut self, backoff: &mut Duration) -> String {
        let (mut conn, mut pubsub) = match self.target.connect().await {
            Ok(c) => c,
            Err(e) => return format!("cannot connect: {e}"),
        };
        match store::enable_notifications(&mut conn).await {
            Ok(Some(events)) => info!(
                "front: switched on keyspace notifications on {} (notify-keyspace-events {events:?})",
                self.target.shown
            ),
            Ok(None) => debug!("front: keyspace notifications are on"),
            Err(e) if store::is_refusal(&e) => self.notifications_refused("CONFIG", &e),
            Err(e) => return format!("asking for keyspace notifications: {e}"),
        }
        let pattern = self.target.keyspace_pattern(&self.prefix);
        match pubsub.psubscribe(&pattern).await {
            Ok(()) => debug!("front: subscribed to {pattern}"),
            Err(e) if store::is_refusal(&e) => self.notifications_refused("PSUBSCRIBE", &e),
            Err(e) => return format!("subscribing to {pattern}: {e}"),
        }
        // The stream alone keeps the subscribed connection; it ends when that connection does.
        let mut notifications = pubsub.into_on_message();
        let mut tick = tokio::time::interval_at(Instant::now() + self.reread, self.reread);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut dirty = true;
        let mut reading: Option<Reading> = None;
        loop {
            if reading.is_none() && dirty {
                dirty = false;
                reading = Some(Box::pin(store::read_routes(conn.clone(), self.prefix.clone())));
            }
            tokio::select! {
                done = in_flight(&mut reading) => {
                    reading = None;
                    match done {
                        Ok(values) => {
                            self.apply(&values);
                            *backoff = BACKOFF_MIN;
                        }
                        Err(e) => return format!("reading the routes: {e}"),
                    }
                }
                message = notifications.next() => match message {
                    Some(_) => dirty = true,
                    None => return "the connection for notifications closed".to_owned(),
                },
                _ = tick.tick() => dirty = true,
            }
        }
    }

    /// A read succeeded: the file follows it.
    fn apply(&mut self, values: &[(String, Vec<u8>)]) {
        let now = Instant::now();
        if let Some(since) = self.outage.take() {
            info!(
                "front: Redis at {} is back after {:.1} s; following the routes again (routes not published again \
                 yet are kept for {} s)",
                self.target.shown,
                since.elapsed().as_secs_f64(),
                GRACE.as_secs()
            );
            self.grace_until = Some(now + GRACE);
        }
        let mut values = values.to_vec();
        match self.grace_until {
            Some(until) if now < until => {
                let known: std::collections::HashSet<&String> = values.iter().map(|(k, _)| k).collect();
                let kept: Values = self.last.iter().filter(|(k, _)| !known.contains(k)).cloned().collect();
                values.extend(kept);
                values.sort();
            }
            _ => self.grace_until = None,
        }
        self.ever_read = true;
        let plan = front_map::plan(&values);
        self.last = values;
        self.logged.log(&plan);
        let text = front_map::render(&plan, self.file.path(), &self.target.shown, &self.prefix);
        self.file.write(text, &plan.summary());
    }

    /// A connection failed or could not be made: said once per outage; the file stays as it is, or is
    /// made empty if there is none and nothing was ever read.
    fn went_away(&mut self, why: &str) {
        let create = !self.ever_read && !self.file.path().exists();
        if self.outage.is_none() {
            self.outage = Some(Instant::now());
            warn!(
                "front: Redis at {} is unreachable ({why}); {} {}; reconnecting",
                self.target.shown,
                self.file.path().display(),
                if create {
                    "does not exist: writing it with no routes"
                } else {
                    "stays as it is"
                }
            );
        }
        if create {
            let text = front_map::render(
                &front_map::plan(&[]),
                self.file.path(),
                &self.target.shown,
                &self.prefix,
            );
            self.file.write(text, "no routes: Redis cannot be reached yet");
        }
    }

    fn notifications_refused(&mut self, command: &str, e: &RedisError) {
        if !self.refusal_logged {
            self.refusal_logged = true;
            warn!(
                "front: {} refuses {command} ({e}): without keyspace notifications, changes are seen by the \
                 re-read every {:?} only",
                self.target.shown, self.reread
            );
        }
    }
}

/// The read in flight's result; never ready while there is none.
async fn in_flight(reading: &mut Option<Reading>) -> Result<Values, RedisError> {
    match reading {
        Some(read) => read.await,
        None => std::future::pending().await,
    }
}
