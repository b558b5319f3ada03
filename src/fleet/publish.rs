//! Publishing this host's routes to Redis, so that a front on another host can route to them.
//!
//! The main loop says what should be published (a key per vassal, `beachhead.rs`); a task keeps Redis equal
//! to it: `SETEX` with the TTL for what is new or changed, `DEL` for what is gone, and every key set again at
//! 45 % of the TTL (beachhead's refresh), so that a host that dies or is cut off stops being routed to once
//! its keys lapse, while one that lives never lets them.
//!
//! Redis going away never touches a vassal. The task logs once when it goes and once when it is back, with
//! how long, reconnects with a backoff (100 ms doubling to 5 s), and then sets everything again. On each
//! connection it also deletes this host's keys that nothing wants any more (`<prefix>*@<address>`): those of
//! vassals that stopped while Redis was away, or of a previous run killed with SIGKILL.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use log::{info, warn};
use redis::AsyncCommands;
use tokio::sync::watch;
use tokio::time::Instant;

use super::beachhead;

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long connecting or one command may take before Redis counts as gone.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle connection is checked: a Redis restarted without persistence comes back empty, and this
/// host's keys must be set again well within the front's grace after an outage (10 s), not at the next refresh.
const PING_EVERY: Duration = Duration::from_secs(1);
/// How often a host handing a vassal over looks for its successor's route.
const HANDOFF_POLL: Duration = Duration::from_millis(100);

/// `--routes-*`: where and how this host publishes.
#[derive(Debug, Clone)]
pub struct RoutesOptions {
    /// `--routes-redis`, e.g. `redis://127.0.0.1:6379/0`.
    pub redis: String,
    /// `--routes-address`: this host's address as the front reaches it.
    pub address: IpAddr,
    /// `--routes-prefix`, default `/beachhead/`.
    pub prefix: String,
    /// `--routes-ttl`, default 60 s.
    pub ttl: Duration,
    /// `--routes-drain`: how long a host handing a vassal over keeps serving after withdrawing its route.
    pub drain: Duration,
    /// `--routes-handoff-timeout`: how long it waits for the new host's route before stopping anyway.
    pub handoff_timeout: Duration,
}

/// The keys (with the prefix) this host wants published, and their values.
pub type Wanted = BTreeMap<String, String>;

/// The handle the main loop holds; the task ends when it is dropped, deleting what it published.
pub struct Publisher {
    opts: RoutesOptions,
    client: redis::Client,
    want: watch::Sender<(u64, Wanted)>,
    /// The generation of `want` last written to Redis.
    synced: watch::Receiver<u64>,
}

impl Publisher {
    /// Checks the URL and starts the task; Redis need not answer yet.
    pub fn start(opts: RoutesOptions) -> Result<Publisher, String> {
        let target = super::store::Target::parse(&opts.redis)?;
        let client = target.client().clone();
        let opts = RoutesOptions {
            redis: target.shown.clone(),
            ..opts
        };
        let (want, want_rx) = watch::channel((0, Wanted::new()));
        let (synced_tx, synced) = watch::channel(0);
        tokio::task::spawn_local(run(opts.clone(), client.clone(), want_rx, synced_tx));
        Ok(Publisher {
            opts,
            client,
            want,
            synced,
        })
    }

    pub fn options(&self) -> &RoutesOptions {
        &self.opts
    }

    /// What should be published from now on; nothing is sent if it did not change.
    pub fn set(&self, wanted: Wanted) {
        self.want.send_if_modified(|(gen_, cur)| {
            if *cur == wanted {
                return false;
            }
            *cur = wanted;
            *gen_ += 1;
            true
        });
    }

    /// Waits (at most `within`) until Redis holds what was last [`set`](Self::set): a stopping emperor
    /// withdraws its routes before its vassals go.
    pub async fn settle(&self, within: Duration) -> bool {
        let target = self.want.borrow().0;
        let mut synced = self.synced.clone();
        tokio::time::timeout(within, synced.wait_for(|g| *g >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until another host publishes a route for one of `domains`, polling Redis, at most `within`.
    /// `false` when none appeared (or Redis did not answer) in time.
    pub fn wait_for_successor(&self, domains: Vec<String>, within: Duration) -> impl Future<Output = bool> + 'static {
        let (client, prefix, own) = (
            self.client.clone(),
            self.opts.prefix.clone(),
            self.opts.address.to_string(),
        );
        async move {
            let deadline = Instant::now() + within;
            // One connection for every poll (a multiplexed one is cheap to clone), made again after an error.
            let mut con = None;
            loop {
                let polled = tokio::time::timeout(TIMEOUT, async {
                    let c = match &con {
                        Some(c) => c,
                        None => con.insert(connect(&client).await?),
                    };
                    successor(c.clone(), &prefix, &own, &domains).await
                })
                .await;
                match polled {
                    Ok(Ok(true)) => return true,
                    Ok(Ok(false)) => {}
                    _ => con = None,
                }
                if Instant::now() + HANDOFF_POLL > deadline {
                    return false;
                }
                tokio::time::sleep(HANDOFF_POLL).await;
            }
        }
    }
}

/// Connects with [`TIMEOUT`] on connecting and on every command.
pub async fn connect(client: &redis::Client) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT));
    client.get_multiplexed_async_connection_with_config(&config).await
}

/// `s` as a literal inside a `SCAN MATCH` glob.
pub fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Does a host other than `own` publish one of `domains`?
async fn successor(
    con: redis::aio::MultiplexedConnection,
    prefix: &str,
    own: &str,
    domains: &[String],
) -> redis::RedisResult<bool> {
    for (_, value) in super::store::read_routes(con, prefix.to_owned()).await? {
        let Some(routes) = std::str::from_utf8(&value).ok().and_then(|v| beachhead::decode(v).ok()) else {
            continue;
        };
        if routes
            .iter()
            .any(|r| r.id.rsplit_once('@').is_some_and(|(_, at)| at != own) && domains.contains(&r.domain))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn run(
    opts: RoutesOptions,
    client: redis::Client,
    mut want: watch::Receiver<(u64, Wanted)>,
    synced: watch::Sender<u64>,
) {
    let shown = opts.redis.clone();
    let mut gone: Option<Instant> = None;
    let mut backoff = BACKOFF_FIRST;
    loop {
        let why = match session(&opts, &client, &mut want, &synced, &mut gone).await {
            Ok(()) => return,
            Err(e) => e,
        };
        match gone {
            None => {
                warn!(
                    "Redis at {shown} does not answer ({why}); routes are not published until it does, vassals keep \
                     running"
                );
                gone = Some(Instant::now());
                backoff = BACKOFF_FIRST;
            }
            Some(_) => backoff = (backoff * 2).min(BACKOFF_MAX),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            // The emperor is gone: nothing to withdraw without a connection.
            r = want.changed() => if r.is_err() { return },
        }
    }
}

/// One connection. `Ok` once the main loop dropped its handle (after deleting what was published).
async fn session(
    opts: &RoutesOptions,
    client: &redis::Client,
    want: &mut watch::Receiver<(u64, Wanted)>,
    synced: &watch::Sender<u64>,
    gone: &mut Option<Instant>,
) -> Result<(), String> {
    let e = |e: redis::RedisError| e.to_string();
    let mut con = connect(client).await.map_err(e)?;
    let _: String = redis::cmd("PING").query_async(&mut con).await.map_err(e)?;
    if let Some(since) = gone.take() {
        info!(
            "Redis at {} answers again, after {:.1} s; publishing the routes",
            opts.redis,
            since.elapsed().as_secs_f64()
        );
    }
    let ttl = opts.ttl.as_secs().max(1);
    let refresh = opts.ttl.mul_f64(0.45).max(Duration::from_millis(100));
    // What Redis holds of ours, as far as this connection knows.
    let mut sent = Wanted::new();
    let ours = format!(
        "{}*@{}",
        glob_escape(&opts.prefix),
        glob_escape(&opts.address.to_string())
    );
    let mut stale: BTreeSet<Vec<u8>> = super::store::scan(&mut con, &ours)
        .await
        .map_err(e)?
        .into_iter()
        .collect();
    let mut next_refresh = Instant::now();
    loop {
        let (generation, wanted) = want.borrow_and_update().clone();
        let refresh_all = Instant::now() >= next_refresh;
        for (key, value) in &wanted {
            stale.remove(key.as_bytes());
            if refresh_all || sent.get(key) != Some(value) {
                let _: () = con.set_ex(key, value, ttl).await.map_err(e)?;
            }
        }
        let gone_keys: Vec<Vec<u8>> = sent
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .map(|k| k.as_bytes().to_vec())
            .chain(std::mem::take(&mut stale))
            .collect();
        if !gone_keys.is_empty() {
            let _: () = con.del(&gone_keys).await.map_err(e)?;
        }
        sent = wanted;
        if refresh_all {
            next_refresh = Instant::now() + refresh;
        }
        synced.send_replace(generation);
        tokio::select! {
            r = want.changed() => if r.is_err() {
                let keys: Vec<&String> = sent.keys().collect();
                if !keys.is_empty() {
                    let _: () = con.del(keys).await.map_err(e)?;
                }
                return Ok(());
            },
            _ = tokio::time::sleep_until(next_refresh) => {}
            _ = tokio::time::sleep(PING_EVERY) => {
                let _: String = redis::cmd("PING").query_async(&mut con).await.map_err(e)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_are_escaped() {
        assert_eq!(glob_escape("/beachhead/"), "/beachhead/");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
