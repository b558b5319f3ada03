//! A throw-away PostgreSQL server for a test (the pg:// vassal source), from Debian's `postgresql` package
//! (scripts/setup installs it; no cluster of the package's own is created or used).
//!
//! [`Postgres::start`] runs `initdb` into `/tmp/emperor-pg-<pid>-<n>/data` (trust authentication, bootstrap
//! superuser `emperor`, no fsync), then `postgres` itself as a child process, not daemonized: as the `postgres`
//! OS user (PostgreSQL refuses to run as root), on a free loopback port (`listen_addresses=127.0.0.1`), its unix
//! socket in the data directory, durability off (`fsync`, `synchronous_commit`, `full_page_writes`), stdout and
//! stderr appended to `postgres.log` next to the data directory. It returns once the server accepts connections
//! and the database `emperor` exists: clients connect with [`Postgres::conninfo`],
//! `host=127.0.0.1 port=<port> user=emperor dbname=emperor`.
//!
//! [`Postgres::stop`] and [`Postgres::start_again`] make an outage on the same port with the same data. Drop (also
//! when the test panics, printing the server's log then): fast shutdown (SIGINT), SIGKILL of what is left after
//! 10 s, the directory removed. What a killed test process leaves is handled as [`super::server`] says.
//!
//! [`Postgres::listen`] gives a connection LISTENing on a channel (tokio-postgres), for checking notifications.
//!
//! ```ignore
//! let pg = Postgres::start();
//! pg.sql(&std::fs::read_to_string("contrib/pg/vassals.sql").unwrap());
//! pg.sql("INSERT INTO vassals (name, config) VALUES ('a.ini', E'[emperor]\\nexec = ...')");
//! let source = format!("pg://{};SELECT name, config, EXTRACT(epoch FROM ts) FROM vassals", pg.conninfo());
//! ```

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::server::{NotReady, Server, make_root, remove_root, tail};
use super::{free_port, run_timeout};

/// How long a starting server gets to accept connections.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a fast shutdown may take before the server is SIGKILLed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Timeout of one initdb or psql run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

const SETUP_HINT: &str = "run `scripts/setup` as root: it installs Debian's postgresql";

pub struct Postgres {
    /// `/tmp/emperor-pg-<pid>-<n>`: `data/` (owned by postgres), `postgres.log`, `owner`.
    root: PathBuf,
    /// `/usr/lib/postgresql/<version>/bin`, where initdb, postgres, psql and pg_isready are.
    bin: PathBuf,
    /// The `postgres` OS user's uid and gid, which initdb and the server run as.
    uid: u32,
    gid: u32,
    port: u16,
    /// The running server; None while stopped.
    server: Option<Server>,
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has a `postgres`; panics with what to do when none has.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!("no PostgreSQL server in /usr/lib/postgresql/<version>/bin: {SETUP_HINT}"),
    }
}

/// The `postgres` OS user's (uid, gid).
fn postgres_user() -> (u32, u32) {
    match nix::unistd::User::from_name("postgres") {
        Ok(Some(u)) => (u.uid.as_raw(), u.gid.as_raw()),
        _ => panic!("there is no `postgres` OS user (Debian's postgresql-common creates it): {SETUP_HINT}"),
    }
}

/// contrib/pg/vassals.sql, the schema users load.
pub fn schema() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/pg/vassals.sql");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

impl Postgres {
    /// [`Postgres::start`] with [`schema`] loaded.
    #[track_caller]
    pub fn with_schema() -> Postgres {
        let pg = Postgres::start();
        pg.sql(&schema());
        pg
    }

    /// Starts a fresh server on a free port; returns once it accepts connections and has the database `emperor`.
    #[track_caller]
    pub fn start() -> Postgres {
        assert!(
            nix::unistd::geteuid().is_root(),
            "Postgres::start runs initdb and postgres as the postgres OS user, which takes root"
        );
        let bin = bin_dir();
        let (uid, gid) = postgres_user();
        // Built first, so that Drop cleans up after a failure in any later step.
        let mut pg = Postgres {
            root: make_root("pg"),
            bin,
            uid,
            gid,
            port: 0,
            server: None,
        };
        pg.initdb();
        for attempt in 1.. {
            pg.port = free_port();
            match pg.launch() {
                Ok(()) => break,
                // Something took the free port before the server bound it: another one.
                Err(e) if e.port_taken() && attempt < 5 => continue,
                Err(e) => pg.not_ready(e),
            }
        }
        if let Err(e) = pg.psql("postgres", "CREATE DATABASE emperor") {
            panic!("creating the database emperor on 127.0.0.1:{}: {e}", pg.port);
        }
        pg
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// A command running `program` from the server's bin directory as the `postgres` OS user.
    fn as_postgres(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.uid(self.uid).gid(self.gid).current_dir("/");
        cmd
    }

    fn initdb(&self) {
        let data = self.data();
        fs::create_dir(&data).unwrap();
        std::os::unix::fs::chown(&data, Some(self.uid), Some(self.gid)).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).unwrap();
        let mut cmd = self.as_postgres("initdb");
        cmd.arg("-D").arg(&data).args([
            "--auth=trust",
            "--username=emperor",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ]);
        match run_timeout(&mut cmd, "initdb", b"", CLIENT_TIMEOUT) {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "initdb into {} failed ({}):\n{}{}",
                data.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => panic!("initdb into {}: {e}", data.display()),
        }
    }

    /// Spawns the server on `self.port` and waits until it accepts connections.
    fn launch(&mut self) -> Result<(), NotReady> {
        let data = self.data();
        let mut cmd = self.as_postgres("postgres");
        cmd.arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]);
        // SIGQUIT is PostgreSQL's immediate shutdown: it takes its backends down with it.
        let mut server = Server::spawn(&mut cmd, &self.log_path(), libc::SIGQUIT);
        let ready = server.wait_ready(READY_DEADLINE, || self.accepts());
        match ready {
            Ok(()) => {
                self.server = Some(server);
                Ok(())
            }
            Err(e) => {
                // Reaps one that exited; stops one that did not answer in time.
                server.stop(libc::SIGQUIT, STOP_DEADLINE);
                Err(e)
            }
        }
    }

    /// A command running the client `program` from the server's bin directory, with no PG* variable of the
    /// caller's environment (PGOPTIONS, PGSERVICE, ...): those must not change what runs where.
    fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        cmd
    }

    /// Does the server accept connections (pg_isready exits 0)?
    fn accepts(&self) -> bool {
        let mut cmd = self.client("pg_isready");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "emperor",
            "-d",
            "postgres",
            "-t",
            "2",
        ]);
        run_timeout(&mut cmd, "pg_isready", b"", Duration::from_secs(5)).is_ok_and(|o| o.status.success())
    }

    #[track_caller]
    fn not_ready(&self, e: NotReady) -> ! {
        match e {
            NotReady::Exited(status, logged) => panic!(
                "postgres on 127.0.0.1:{} ({}) exited ({status}) before accepting connections:\n{logged}",
                self.port,
                self.data().display()
            ),
            NotReady::Timeout => panic!(
                "postgres on 127.0.0.1:{} ({}) did not accept connections within {READY_DEADLINE:?}; its log:\n{}",
                self.port,
                self.data().display(),
                tail(&self.log_path(), 30)
            ),
        }
    }

    /// `host=127.0.0.1 port=<port> user=emperor dbname=emperor`: libpq's key=value form, which tokio-postgres
    /// and psql take too.
    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=emperor dbname=emperor", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The last lines of the server's log (every run of it), for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path(), 40)
    }

    /// Runs `sql` (any number of statements, each on its own as in a script: `psql -f -`) in the database
    /// `emperor` and returns psql's output: unaligned, tuples only (`-A -t`), one row a line, columns separated by
    /// `|`. Panics with psql's stderr when a statement fails (`ON_ERROR_STOP`) or the server cannot be reached.
    #[track_caller]
    pub fn sql(&self, sql: &str) -> String {
        self.psql("emperor", sql)
            .unwrap_or_else(|e| panic!("psql on 127.0.0.1:{} failed: {e}\n--- the SQL:\n{sql}", self.port))
    }

    /// [`Postgres::sql`] for SQL that may fail: Err holds psql's stderr (`psql:<stdin>:<line>: ERROR: ...`).
    /// Still panics when psql cannot run or times out.
    #[track_caller]
    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        self.psql("emperor", sql)
    }

    /// Runs `sql` through psql in `dbname`: Ok(stdout), or Err(stderr) when psql failed.
    #[track_caller]
    fn psql(&self, dbname: &str, sql: &str) -> Result<String, String> {
        let mut cmd = self.client("psql");
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-", "-d"])
            .arg(format!(
                "host=127.0.0.1 port={} user=emperor dbname={dbname} connect_timeout=10",
                self.port
            ));
        match run_timeout(&mut cmd, "psql", sql.as_bytes(), CLIENT_TIMEOUT) {
            Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
            Ok(out) => Err(format!(
                "({}) {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end()
            )),
            Err(e) => panic!("psql on 127.0.0.1:{}: {e}\n--- the SQL:\n{sql}", self.port),
        }
    }

    /// Stops the server (fast shutdown: open sessions are ended, committed data kept) and waits until the process
    /// is gone; SIGKILLs it after 10 s. Panics when it is not running.
    #[track_caller]
    pub fn stop(&mut self) {
        let server = self.server.take().expect("Postgres::stop: the server is not running");
        let (_, forced) = server.stop(libc::SIGINT, STOP_DEADLINE);
        if forced {
            eprintln!(
                "postgres on port {} ignored a fast shutdown for {STOP_DEADLINE:?} and was killed",
                self.port
            );
        }
    }

    /// Starts the stopped server again on the same port with the same data; returns once it accepts connections.
    /// Panics when it is running, or when the port was taken meanwhile.
    #[track_caller]
    pub fn start_again(&mut self) {
        assert!(self.server.is_none(), "Postgres::start_again: the server is running");
        if let Err(e) = self.launch() {
            self.not_ready(e);
        }
    }

    /// LISTENs on `channel` over a connection of its own; returns once the LISTEN is in effect, so that every
    /// notification committed afterwards is received.
    #[track_caller]
    pub fn listen(&self, channel: &str) -> Listener {
        Listener::start(&self.conninfo(), channel)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- postgres on port {} ({}), last lines of its log:\n{}",
                self.port,
                self.root.display(),
                self.log_tail()
            );
        }
        if let Some(server) = self.server.take() {
            server.stop(libc::SIGINT, STOP_DEADLINE);
        }
        remove_root(&self.root);
    }
}

/// A connection LISTENing on one channel (tokio-postgres on a thread of its own with its own runtime), handing the
/// notifications' payloads to the test. Dropping it closes the connection.
pub struct Listener {
    channel: String,
    payloads: mpsc::Receiver<Result<String, String>>,
    /// Dropped to tell the thread to close the connection.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Listener {
    #[track_caller]
    fn start(conninfo: &str, channel: &str) -> Listener {
        let (tx, payloads) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let conninfo = format!("{conninfo} connect_timeout=10");
        let listen = format!("LISTEN \"{}\"", channel.replace('"', "\"\""));
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(listen_loop(conninfo, listen, tx, stopped));
        });
        let mut listener = Listener {
            channel: channel.to_string(),
            payloads,
            stop: Some(stop),
            thread: Some(thread),
        };
        // The thread's first message says whether the LISTEN is in effect.
        match listener.payloads.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(_)) => listener,
            Ok(Err(e)) => panic!("LISTEN {channel}: {e}"),
            Err(e) => {
                listener.stop.take();
                panic!("LISTEN {channel}: no answer within 30 s ({e})")
            }
        }
    }

    /// The next notification's payload, or None when none arrives within `timeout`. Panics when the connection
    /// failed.
    #[track_caller]
    pub fn recv(&self, timeout: Duration) -> Option<String> {
        match self.payloads.recv_timeout(timeout) {
            Ok(Ok(payload)) => Some(payload),
            Ok(Err(e)) => panic!("listening on {}: {e}", self.channel),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("listening on {}: the connection is gone", self.channel)
            }
        }
    }

    /// Every notification's payload that arrives within `within` (for checking that no more came).
    pub fn drain(&self, within: Duration) -> Vec<String> {
        let end = Instant::now() + within;
        let mut out = vec![];
        while let Some(p) = self.recv(end.saturating_duration_since(Instant::now())) {
            out.push(p);
        }
        out
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The listener thread: connects, LISTENs, says so (an empty Ok), then forwards every notification's payload until
/// told to stop or the connection ends (then an Err).
async fn listen_loop(
    conninfo: String,
    listen: String,
    tx: mpsc::Sender<Result<String, String>>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let (client, mut connection) = match tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(Err(format!("connecting to {conninfo}: {e}")));
            return;
        }
    };
    // The connection delivers notifications only while it is polled, and queries need it polled too.
    let forward = tx.clone();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    let _ = forward.send(Ok(n.payload().to_string()));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let _ = forward.send(Err(format!("connection: {e}")));
                    return;
                }
                None => return,
            }
        }
    });
    if let Err(e) = client.batch_execute(&listen).await {
        let _ = tx.send(Err(format!("{listen}: {e}")));
        return;
    }
    let _ = tx.send(Ok(String::new()));
    let _ = stopped.await;
    drop(client);
    let _ = driver.await;
}

#[test]
fn postgres_starts_answers_stops_and_starts_again() {
    let t = Instant::now();
    let mut pg = Postgres::start();
    eprintln!("Postgres::start took {:?}", t.elapsed());
    assert_eq!(pg.sql("SELECT current_user, current_database()"), "emperor|emperor\n");
    pg.sql("CREATE TABLE t (v text); INSERT INTO t VALUES ('kept');");
    let port = pg.port();
    let pid = pg.server.as_ref().unwrap().pid();

    let t = Instant::now();
    pg.stop();
    eprintln!("Postgres::stop took {:?}", t.elapsed());
    assert!(!super::alive(pid), "postgres (pid {pid}) still runs after stop()");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still answers"
    );

    let t = Instant::now();
    pg.start_again();
    eprintln!("Postgres::start_again took {:?}", t.elapsed());
    assert_eq!(pg.port(), port);
    assert_eq!(pg.sql("SELECT v FROM t"), "kept\n");

    let root = pg.root.clone();
    let pid = pg.server.as_ref().unwrap().pid();
    drop(pg);
    assert!(!super::alive(pid), "postgres (pid {pid}) still runs after drop");
    assert!(!root.exists(), "{} is left after drop", root.display());
}

#[test]
fn postgres_failing_sql_says_why() {
    let pg = Postgres::start();
    let err = pg
        .try_sql("SELECT 1; SELECT nonsense; SELECT 2;")
        .expect_err("a failing statement");
    assert!(
        err.contains("psql:<stdin>:1: ERROR:  column \"nonsense\" does not exist"),
        "{err}"
    );
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pg.sql("SELECT nonsense")))
        .expect_err("sql() must panic when a statement fails");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("column \"nonsense\" does not exist"), "{msg}");
}

#[test]
fn postgres_is_gone_after_a_panicking_test() {
    let (pid, root) = {
        let pg = Postgres::start();
        let pid = pg.server.as_ref().unwrap().pid();
        let root = pg.root.clone();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _pg = pg;
            panic!("a failing test");
        }));
        assert!(r.is_err());
        (pid, root)
    };
    assert!(!super::alive(pid), "postgres (pid {pid}) outlived the panic");
    assert!(!root.exists(), "{} outlived the panic", root.display());
}

#[test]
fn postgres_listener_receives_notifications() {
    let pg = Postgres::start();
    let l = pg.listen("ch");
    pg.sql("NOTIFY ch, 'one'; SELECT pg_notify('ch', 'two'); NOTIFY other, 'no';");
    assert_eq!(l.recv(Duration::from_secs(10)).as_deref(), Some("one"));
    assert_eq!(l.recv(Duration::from_secs(10)).as_deref(), Some("two"));
    assert_eq!(l.drain(Duration::from_millis(200)), Vec::<String>::new());
}
