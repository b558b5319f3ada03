//! The Redis side of `emperor front`: where to connect, reading every route key, and keyspace
//! notifications.
//!
//! - **No name look-ups.** The binary is statically linked with glibc, whose NSS (`getaddrinfo` on a
//!   name) cannot work in it, so a `redis://` URL must name its server by IP address (or be a
//!   `unix://` socket path). The `redis` crate parses an IP literal without resolving anything.
//! - **Reading** is `SCAN MATCH <prefix>*` until the cursor comes back to 0, then `MGET` in batches: a
//!   key that expired or changed type in between reads as nil and is left out, as it would be a moment
//!   later anyway. Redis's SCAN may return a key twice; keys are deduplicated.
//! - **Notifications** are off in a stock Redis (`notify-keyspace-events ""`). The front needs `K`
//!   (keyspace channel) with `$` (SET, SETEX), `g` (DEL, EXPIRE, RENAME) and `x` (a TTL lapsed), and
//!   adds what lacks to the server's setting, keeping what others asked for. A server that refuses
//!   `CONFIG` (managed Redis) is followed by periodic re-reads only; `x` also arrives late by design
//!   (a key expires when accessed or found by the background sweep), so the front re-reads anyway.
//!
//! A glob's special characters in the prefix are escaped, so `SCAN` and `PSUBSCRIBE` match the prefix
//! literally. The escaping and the command connection are the publisher's (`fleet/publish.rs`); the SCAN
//! is not, because the front reads keys as bytes: a key that is not UTF-8, which some other writer may
//! put under the prefix, is then one skipped key instead of a read that fails every time.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use redis::aio::{MultiplexedConnection, PubSub};
use redis::{Client, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError};

use super::publish::{self, glob_escape};

/// How long connecting the subscription may take before the attempt counts as failed (the command
/// connection has the publisher's timeouts).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Keys asked for per SCAN step, and per MGET.
const BATCH: usize = 500;

/// What the front needs in `notify-keyspace-events`: the keyspace channel, string commands, generic
/// commands (DEL, EXPIRE, ...) and expirations.
const NEEDED_EVENTS: &str = "K$gx";

/// The event classes that Redis's `A` stands for.
const ALIAS_A: &str = "g$lshzxetd";

/// A Redis server to read from.
pub struct Target {
    client: Client,
    /// For logs and the file's header: the address and database, never the password.
    pub shown: String,
    /// The database number, for the keyspace channel's name.
    pub db: i64,
}

impl Target {
    /// Checks a `redis://` or `unix://` URL; the message says what is wrong (without the URL, which
    /// may hold a password).
    pub fn parse(url: &str) -> Result<Target, String> {
        let info = url
            .into_connection_info()
            .map_err(|e| format!("not a Redis URL ({e}); expected redis://<ip>[:port][/db] or unix://<path>"))?;
        let db = info.redis_settings().db();
        let shown = match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let ip: IpAddr = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse()
                    .map_err(|_| {
                        format!(
                            "the server is named {host:?}: give its IP address (this static binary does no name \
                         look-ups)"
                        )
                    })?;
                format!("redis://{}/{db}", SocketAddr::new(ip, *port))
            }
            ConnectionAddr::Unix(path) => format!("unix://{}?db={db}", path.display()),
            _ => return Err("TLS (rediss://) is not supported: this binary is built without it".to_owned()),
        };
        let client = Client::open(info).map_err(|e| format!("cannot use it: {e}"))?;
        Ok(Target { client, shown, db })
    }

    /// Two connections: one for commands, one subscribed to notifications (RESP2 needs its own).
    pub async fn connect(&self) -> Result<(MultiplexedConnection, PubSub), RedisError> {
        let commands = publish::connect(&self.client).await?;
        let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| timed_out("connecting"))??;
        Ok((commands, pubsub))
    }

    /// The keyspace channels of every key under `prefix`, for PSUBSCRIBE.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn keyspace_pattern(&self, prefix: &str) -> String {
        format!("__keyspace@{}__:{}*", self.db, glob_escape(prefix))
    }
}

fn timed_out(what: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} took more than {CONNECT_TIMEOUT:?}"),
    ))
}

/// True if the server answered with a refusal (unknown command, no permission, ...) rather than the
/// connection failing.
pub fn is_refusal(e: &RedisError) -> bool {
    matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
}

/// The `notify-keyspace-events` value to set so that `current` also gives what the front needs, or
/// `None` if it already does.
pub fn events_to_set(current: &str) -> Option<String> {
    let has = |c: char| current.contains(c) || (current.contains('A') && ALIAS_A.contains(c));
    let missing: String = NEEDED_EVENTS.chars().filter(|&c| !has(c)).collect();
    (!missing.is_empty()).then(|| format!("{current}{missing}"))
}

/// Makes sure keyspace notifications cover what the front needs: `Ok(Some(value))` when they were
/// switched on (to `value`), `Ok(None)` when they already were.
pub async fn enable_notifications(conn: &mut MultiplexedConnection) -> Result<Option<String>, RedisError> {
    let current: HashMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(conn)
        .await?;
    let current = current.get("notify-keyspace-events").map_or("", String::as_str);
    let Some(wanted) = events_to_set(current) else {
        return Ok(None);
    };
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg(&wanted)
        .query_async::<()>(conn)
        .await?;
    Ok(Some(wanted))
}

/// Every key matching the glob `pattern`, as bytes (a key need not be UTF-8), sorted, without duplicates (SCAN
/// may return a key twice; it never blocks the server the way KEYS does).
pub async fn scan(conn: &mut MultiplexedConnection, pattern: &str) -> Result<Vec<Vec<u8>>, RedisError> {
    let mut keys: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(BATCH)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys.into_iter().collect());
        }
        cursor = next;
    }
}

/// Every key under `prefix` with its value (keys shown lossily as text, values as bytes), in key order.
pub async fn read_routes(
    mut conn: MultiplexedConnection,
    prefix: String,
) -> Result<Vec<(String, Vec<u8>)>, RedisError> {
    let keys = scan(&mut conn, &format!("{}*", glob_escape(&prefix))).await?;
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(BATCH) {
        let mut mget = redis::cmd("MGET");
        for key in chunk {
            mget.arg(key);
        }
        let values: Vec<Option<Vec<u8>>> = mget.query_async(&mut conn).await?;
        for (key, value) in chunk.iter().zip(values) {
            if let Some(value) = value {
                out.push((String::from_utf8_lossy(key).into_owned(), value));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_server_by_address() {
        let t = Target::parse("redis://127.0.0.1:6390/3").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.shown.as_str(), t.db), ("redis://127.0.0.1:6390/3", 3));
        let t = Target::parse("redis://:secret@[::1]/0").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.shown, "redis://[::1]:6379/0");
        let t = Target::parse("unix:///run/redis.sock").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.shown, "unix:///run/redis.sock?db=0");
        let e = Target::parse("redis://redis.internal:6379/0").err().unwrap_or_default();
        assert!(e.contains("\"redis.internal\"") && e.contains("IP address"), "{e}");
        assert!(Target::parse("http://127.0.0.1/").is_err());
        assert!(Target::parse("rediss://127.0.0.1/").is_err());
        // The password never shows.
        let e = Target::parse("redis://:secret@db.example/0").err().unwrap_or_default();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn patterns_match_the_prefix_literally() {
        let t = Target::parse("redis://127.0.0.1/2").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.keyspace_pattern("/beachhead/"), "__keyspace@2__:/beachhead/*");
        assert_eq!(t.keyspace_pattern("/a*[b]/"), "__keyspace@2__:/a\\*\\[b\\]/*");
    }

    #[test]
    fn notifications_add_what_lacks_and_keep_the_rest() {
        assert_eq!(events_to_set("").as_deref(), Some("K$gx"));
        assert_eq!(events_to_set("Ex").as_deref(), Some("ExK$g"));
        assert_eq!(events_to_set("KEA"), None);
        assert_eq!(events_to_set("K$gx"), None);
        assert_eq!(events_to_set("gxK$"), None);
        assert_eq!(events_to_set("El").as_deref(), Some("ElK$gx"));
    }
}
