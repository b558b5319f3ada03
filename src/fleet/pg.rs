//! Vassals from PostgreSQL: uWSGI's `pg://` imperial monitor, woken by `LISTEN` instead of polling.
//!
//! `emperor "pg://<conninfo>;<query>"` takes uWSGI's contract: each row of the query is a vassal, its columns
//! `name, config, ts[, uid, gid]` (the name with its extension, the whole INI text, a UNIX time whose change
//! reloads; the owner in tyrant mode). A sixth column of ours, `handoff`, is true on a host the vassal is moving
//! away from (see `contrib/pg/vassals.sql` and README "A fleet of emperors").
//!
//! uWSGI opens a new connection and runs the query every 3 s. Here one connection `LISTEN`s on
//! `emperor_vassals` (the shipped trigger `NOTIFY`s at every commit that touches the table), and every
//! notification triggers one full read: a notification is a wake-up, never a diff to apply, since
//! notifications are not replayed after a lost connection. `--emperor-freq` polling stays as the safety net
//! for tables changed without the trigger.
//!
//! The store going away is nobody's fault: the follower keeps the last rows it read (the main loop keeps
//! running what it runs), logs once when the store goes and once when it is back with how long, and
//! reconnects with a backoff (100 ms doubling to 5 s); the first read after that reconciles.
//!
//! The query is read with the simple-query protocol, so every value arrives as text whatever its SQL type
//! (`EXTRACT` returns `numeric` since PostgreSQL 14, a uid may be `int` or `text`): the user's query need
//! not cast anything.
//!
//! The binary is statically linked, so no name is ever resolved: a `host=` must be an IP address, `localhost`
//! or a unix socket directory (`hostaddr=` may carry the address of a named host).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use futures_util::StreamExt;
use log::{info, warn};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, SimpleQueryMessage};

/// uWSGI's default query.
pub const DEFAULT_QUERY: &str = "SELECT name,config,EXTRACT(epoch FROM ts) FROM vassals";

/// The channel the shipped trigger notifies.
pub const CHANNEL: &str = "emperor_vassals";

/// How long a connection attempt or one read may take before the store counts as gone.
const TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// `pg://<conninfo>[;<query>]`, validated.
#[derive(Clone)]
pub struct PgSource {
    config: tokio_postgres::Config,
    pub query: String,
    /// What logs call the store: `postgresql://<user>@<host>:<port>/<dbname>`, never the password.
    pub shown: String,
    /// The source as given, minus any password: what the instance id is derived from.
    pub identity: String,
}

impl std::fmt::Debug for PgSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSource")
            .field("shown", &self.shown)
            .field("query", &self.query)
            .finish()
    }
}

impl PgSource {
    /// Parses what follows `pg://`. `user` is the name libpq would use when the conninfo names none (the
    /// emperor's own user, read from /etc/passwd: the client library would ask NSS, which a static binary
    /// must not).
    pub fn parse(spec: &str, user: &str) -> Result<PgSource, String> {
        let (conninfo, query) = match spec.split_once(';') {
            Some((c, q)) if !q.trim().is_empty() => (c.trim(), q.trim()),
            Some((c, _)) => (c.trim(), DEFAULT_QUERY),
            None => (spec.trim(), DEFAULT_QUERY),
        };
        let mut config = tokio_postgres::Config::from_str(conninfo).map_err(|e| format!("its conninfo: {e}"))?;
        if config.get_user().is_none() {
            config.user(user);
        }
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            // libpq's default: the local server's socket directory (Debian's).
            config.host_path("/var/run/postgresql");
        }
        let named: Vec<String> = config
            .get_hosts()
            .iter()
            .filter_map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) if name.parse::<std::net::IpAddr>().is_err() => {
                    Some(name.clone())
                }
                _ => None,
            })
            .collect();
        if !named.is_empty() && config.get_hostaddrs().is_empty() {
            if named.iter().all(|n| n == "localhost") {
                for _ in &named {
                    config.hostaddr(std::net::IpAddr::from([127, 0, 0, 1]));
                }
            } else {
                return Err(format!(
                    "host={}: the emperor never resolves names; give an IP address, a unix socket directory, or \
                     hostaddr= with the address",
                    named.join(",")
                ));
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(TIMEOUT);
        }
        // A server that vanishes without closing the connection (a host gone, a cable pulled) is noticed
        // within about 20 s rather than the kernel's two hours; a stopped server closes it at once.
        config.keepalives_idle(Duration::from_secs(10));
        let host = match (config.get_hostaddrs().first(), config.get_hosts().first()) {
            (Some(ip), _) => ip.to_string(),
            (None, Some(tokio_postgres::config::Host::Tcp(h))) => h.clone(),
            (None, Some(tokio_postgres::config::Host::Unix(p))) => p.display().to_string(),
            (None, None) => "?".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let shown = format!(
            "postgresql://{}@{host}:{port}/{}",
            config.get_user().unwrap_or(user),
            config.get_dbname().unwrap_or(config.get_user().unwrap_or(user))
        );
        let identity = format!("{shown};{query}");
        Ok(PgSource {
            config,
            query: query.to_owned(),
            shown,
            identity,
        })
    }
}

/// One row of the query.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The INI text.
    pub config: String,
    /// The `ts` column as the server printed it: any change reloads (uWSGI reloads on a newer one; an older one
    /// here means someone rewound it on purpose).
    pub ts: String,
    /// The 4th and 5th columns, if the query has them and they are not NULL.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The 6th column: this host hands the vassal over to another one.
    pub handoff: bool,
    /// Why this row cannot be a vassal (its name, a NULL config, a uid that is not a number).
    pub problem: Option<String>,
}

impl Row {
    /// The same vassal apart from the handoff flag.
    pub fn same_vassal(&self, other: &Row) -> bool {
        Row {
            handoff: other.handoff,
            ..self.clone()
        } == *other
    }
}

/// Every row, by vassal name (made printable when it holds control characters: such a row is in error).
pub type Rows = BTreeMap<String, Row>;

/// Turns the query's rows (as text) into [`Rows`]. `Err` when the query's shape is wrong for every row.
pub fn rows_of(raw: &[Vec<Option<String>>]) -> Result<Rows, String> {
    let mut rows = Rows::new();
    for cols in raw {
        if cols.len() < 3 {
            return Err(format!(
                "the query returns {} columns; it needs name, config, ts[, uid, gid[, handoff]]",
                cols.len()
            ));
        }
        let Some(raw_name) = cols[0].as_deref() else {
            continue;
        };
        let (name, mut problem) = check_name(raw_name);
        let config = cols[1].clone().unwrap_or_default();
        if cols[1].is_none() {
            problem.get_or_insert_with(|| "its config is NULL".into());
        }
        let id = |i: usize, what: &str, problem: &mut Option<String>| match cols.get(i).and_then(|c| c.as_deref()) {
            None => None,
            Some(v) => match v.trim().parse::<u32>() {
                Ok(n) => Some(n),
                Err(_) => {
                    problem.get_or_insert_with(|| format!("its {what} column {v:?} is not a number"));
                    None
                }
            },
        };
        let uid = id(3, "uid", &mut problem);
        let gid = id(4, "gid", &mut problem);
        let handoff = matches!(
            cols.get(5).and_then(|c| c.as_deref()).map(str::trim),
            Some("t" | "true" | "1" | "on" | "yes")
        );
        let row = Row {
            config,
            ts: cols[2].clone().unwrap_or_default(),
            uid,
            gid,
            handoff,
            problem,
        };
        if let Some(prev) = rows.get_mut(&name) {
            prev.problem
                .get_or_insert_with(|| "the query returns this name more than once".into());
            continue;
        }
        rows.insert(name, row);
    }
    Ok(rows)
}

/// A row's name as the vassal's name, and why it cannot be one. The name becomes a path component (run
/// directory, container name, logs), so it gets the vassals directory's rules plus no `/`.
fn check_name(raw: &str) -> (String, Option<String>) {
    let shown = crate::config::printable(raw).into_owned();
    let why = if raw.chars().any(char::is_control) {
        Some("its name holds control characters")
    } else if raw.contains('/') {
        Some("its name holds a '/'; a vassal's name is a file name")
    } else if raw.len() >= 255 {
        Some("its name is 255 bytes or longer")
    } else if !crate::emperor::is_vassal_name(std::ffi::OsStr::new(raw)) {
        Some("its name must end with .ini and not start with '.'")
    } else {
        None
    };
    (shown, why.map(|w| format!("{w}; not a vassal")))
}

/// Starts following the source: each full read of the query is sent as [`Rows`]. The task runs until the
/// receiver is dropped.
pub fn follow(source: PgSource, freq: Duration) -> mpsc::UnboundedReceiver<Rows> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::task::spawn_local(run(source, freq, tx));
    rx
}

async fn run(source: PgSource, freq: Duration, tx: mpsc::UnboundedSender<Rows>) {
    let mut gone: Option<(Instant, String)> = None;
    let mut backoff = BACKOFF_FIRST;
    let mut query_error: Option<String> = None;
    loop {
        let why = match session(&source, freq, &tx, &mut gone, &mut query_error).await {
            Ok(()) => return,
            Err(e) => e,
        };
        if tx.is_closed() {
            return;
        }
        match &gone {
            None => {
                warn!(
                    "PostgreSQL at {} does not answer ({why}); vassals keep running on their last config; retrying",
                    source.shown
                );
                gone = Some((Instant::now(), why));
                backoff = BACKOFF_FIRST;
            }
            Some(_) => backoff = (backoff * 2).min(BACKOFF_MAX),
        }
        tokio::time::sleep(backoff).await;
    }
}

/// One connection: LISTEN, then a full read now, after each burst of notifications and every `freq`.
/// `Ok` when the main loop is gone; `Err` with why the connection ended.
async fn session(
    source: &PgSource,
    freq: Duration,
    tx: &mpsc::UnboundedSender<Rows>,
    gone: &mut Option<(Instant, String)>,
    query_error: &mut Option<String>,
) -> Result<(), String> {
    let (client, mut connection) = source
        .config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| explain(&e))?;
    let (notes_tx, mut notes) = mpsc::unbounded_channel::<()>();
    let mut driver = tokio::task::spawn_local(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(AsyncMessage::Notification(_)) => {
                    if notes_tx.send(()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => return explain(&e),
            }
        }
        "the server closed the connection".to_string()
    });
    // Dropped with the session: the connection goes with it.
    let _abort = AbortOnDrop(driver.abort_handle());
    let listen = format!("LISTEN {CHANNEL}");
    tokio::time::timeout(TIMEOUT, client.batch_execute(&listen))
        .await
        .map_err(|_| format!("{listen} took longer than {} s", TIMEOUT.as_secs()))?
        .map_err(|e| explain(&e))?;
    if let Some((since, _)) = gone.take() {
        info!(
            "PostgreSQL at {} answers again, after {:.1} s; reading the vassals",
            source.shown,
            since.elapsed().as_secs_f64()
        );
    }
    loop {
        match tokio::time::timeout(TIMEOUT, client.simple_query(&source.query)).await {
            Err(_) => return Err(format!("the vassals query took longer than {} s", TIMEOUT.as_secs())),
            Ok(Err(e)) if e.is_closed() || e.as_db_error().is_none() => return Err(explain(&e)),
            Ok(Err(e)) => {
                // The server answers but refuses the query (a typo, a missing table): said once per distinct
                // error, tried again at every wake-up, the vassals left as they are.
                let msg = e
                    .as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_owned());
                if query_error.as_deref() != Some(&msg) {
                    warn!(
                        "PostgreSQL at {}: the vassals query fails: {msg}; vassals keep running as they are",
                        source.shown
                    );
                    *query_error = Some(msg);
                }
            }
            Ok(Ok(messages)) => {
                let raw: Vec<Vec<Option<String>>> = messages
                    .iter()
                    .filter_map(|m| match m {
                        SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect()),
                        _ => None,
                    })
                    .collect();
                match rows_of(&raw) {
                    Ok(rows) => {
                        if query_error.take().is_some() {
                            info!("PostgreSQL at {}: the vassals query works again", source.shown);
                        }
                        if tx.send(rows).is_err() {
                            return Ok(());
                        }
                    }
                    Err(msg) => {
                        if query_error.as_deref() != Some(&msg) {
                            warn!(
                                "PostgreSQL at {}: {msg}; vassals keep running as they are",
                                source.shown
                            );
                            *query_error = Some(msg);
                        }
                    }
                }
            }
        }
        // Wait for a wake-up, then take every notification already queued: one read covers them all.
        tokio::select! {
            n = notes.recv() => if n.is_none() {
                return Err((&mut driver).await.unwrap_or_else(|e| e.to_string()));
            },
            _ = tokio::time::sleep(freq) => {}
            _ = tx.closed() => return Ok(()),
        }
        while notes.try_recv().is_ok() {}
    }
}

/// The error with its causes: tokio-postgres says only "db error" or "error connecting to server" itself.
fn explain(e: &tokio_postgres::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(v: &[Option<&str>]) -> Vec<Option<String>> {
        v.iter().map(|c| c.map(str::to_owned)).collect()
    }

    #[test]
    fn source_syntax_is_uwsgis() {
        let s = PgSource::parse("host=127.0.0.1 port=5433 user=u dbname=d password=secret", "root").unwrap();
        assert_eq!(s.query, DEFAULT_QUERY);
        assert_eq!(s.shown, "postgresql://u@127.0.0.1:5433/d");
        assert!(!s.identity.contains("secret"));
        let s = PgSource::parse("host=127.0.0.1 dbname=d; SELECT a,b,c FROM t WHERE host='h2' ", "root").unwrap();
        assert_eq!(s.query, "SELECT a,b,c FROM t WHERE host='h2'");
        assert_eq!(s.shown, "postgresql://root@127.0.0.1:5432/d");
        let s = PgSource::parse("host=localhost dbname=d", "root").unwrap();
        assert_eq!(s.config.get_hostaddrs(), &[std::net::IpAddr::from([127, 0, 0, 1])]);
        let s = PgSource::parse("dbname=d", "postgres").unwrap();
        assert_eq!(s.shown, "postgresql://postgres@/var/run/postgresql:5432/d");
        let e = PgSource::parse("host=db.example dbname=d", "root").unwrap_err();
        assert!(e.contains("never resolves names"), "{e}");
        assert!(PgSource::parse("host=db.example hostaddr=127.0.0.1 dbname=d", "root").is_ok());
        assert!(
            PgSource::parse("nonsense", "root")
                .unwrap_err()
                .starts_with("its conninfo")
        );
    }

    #[test]
    fn rows_follow_uwsgis_columns_and_ours() {
        let rows = rows_of(&[
            cols(&[Some("a.ini"), Some("[uwsgi]\n"), Some("1700000000.5")]),
            cols(&[
                Some("b.ini"),
                Some("x"),
                Some("1"),
                Some("1001"),
                Some("1002"),
                Some("t"),
            ]),
            cols(&[Some("c.ini"), None, None, None, None, Some("f")]),
            cols(&[None, Some("skipped"), Some("1")]),
        ])
        .unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows["a.ini"].ts, "1700000000.5");
        assert_eq!((rows["a.ini"].uid, rows["a.ini"].handoff), (None, false));
        assert_eq!(
            (rows["b.ini"].uid, rows["b.ini"].gid, rows["b.ini"].handoff),
            (Some(1001), Some(1002), true)
        );
        assert_eq!(rows["c.ini"].problem.as_deref(), Some("its config is NULL"));
        assert!(
            rows_of(&[cols(&[Some("a.ini"), Some("x")])])
                .unwrap_err()
                .contains("2 columns")
        );
        assert!(rows_of(&[]).unwrap().is_empty());
    }

    #[test]
    fn a_rows_name_must_be_a_safe_file_name() {
        let bad = ["../x.ini", "a/b.ini", ".h.ini", "x.txt", "bell\x07.ini", ""];
        for name in bad {
            let rows = rows_of(&[cols(&[Some(name), Some("x"), Some("1")])]).unwrap();
            let (shown, row) = rows.iter().next().unwrap();
            assert!(row.problem.is_some(), "{name:?}");
            assert!(!shown.contains('\x07'));
        }
        let long = format!("{}.ini", "a".repeat(251));
        assert!(
            rows_of(&[cols(&[Some(&long), Some("x"), Some("1")])]).unwrap()[&long]
                .problem
                .is_some()
        );
        let twice = rows_of(&[
            cols(&[Some("a.ini"), Some("x"), Some("1")]),
            cols(&[Some("a.ini"), Some("y"), Some("1")]),
        ])
        .unwrap();
        assert!(twice["a.ini"].problem.as_deref().unwrap().contains("more than once"));
        let (ok, bad_uid) = (
            rows_of(&[cols(&[Some("a.ini"), Some("x"), Some("1"), Some("12")])]).unwrap(),
            rows_of(&[cols(&[Some("a.ini"), Some("x"), Some("1"), Some("root")])]).unwrap(),
        );
        assert!(ok["a.ini"].problem.is_none());
        assert!(bad_uid["a.ini"].problem.as_deref().unwrap().contains("not a number"));
    }

    #[test]
    fn handoff_alone_is_not_a_change_of_the_vassal() {
        let rows = rows_of(&[cols(&[Some("a.ini"), Some("x"), Some("1"), None, None, Some("f")])]).unwrap();
        let mut moved = rows["a.ini"].clone();
        moved.handoff = true;
        assert!(rows["a.ini"].same_vassal(&moved));
        moved.ts = "2".into();
        assert!(!rows["a.ini"].same_vassal(&moved));
    }
}
