//! A fleet on one machine: three emperors as three hosts (127.0.0.2, .3 and .4, each its own run directory and
//! its own query `WHERE host = 'h<n>' OR prev_host = 'h<n>'`), one PostgreSQL holding the vassals
//! (contrib/pg/vassals.sql), one Redis the hosts publish their routes to, and `emperor front` rendering a real
//! nginx on 127.0.0.1 from it. Vassals serve HTTP on a TCP socket on their host's address, and say which host
//! they run on (`--name <app>-h<n>`), so a request through the front shows where it went.
//!
//! `--emperor-freq 60` on every host: a change the test waits for can only come through LISTEN/NOTIFY within the
//! test's deadlines, never through the safety-net poll.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::nginx::{self, Nginx};
use crate::util::pg::Postgres;
use crate::util::redis::Redis;
use crate::util::{self, Harness, LONG};

/// Deadline for a change in the table to show on a host or through the front. The issue asks for 1 s; measured
/// figures are in bench/fleet.py. A test deadline this close to the goal would fail on a loaded 2-core machine
/// for reasons that are not ours, so it is generous, yet far below the 60 s poll a lost notification would wait.
const SOON: Duration = Duration::from_secs(5);

struct Fleet {
    pg: Postgres,
    redis: Redis,
    front: Harness,
    nginx: Nginx,
    port: u16,
    /// Host `n` (2, 3, 4) is `hosts[n - 2]`.
    hosts: Vec<Harness>,
    /// Each app's TCP port.
    ports: std::collections::BTreeMap<String, u16>,
}

fn query(host: u8) -> String {
    format!(
        "SELECT name, config, EXTRACT(epoch FROM ts), uid, gid, host IS DISTINCT FROM 'h{host}' FROM vassals \
         WHERE host = 'h{host}' OR prev_host = 'h{host}'"
    )
}

impl Fleet {
    /// Everything up: the store, the front (map rendered, nginx answering) and the emperors of `hosts`.
    fn start(name: &str, hosts: &[u8], ttl: u32, extra: &[&str]) -> Fleet {
        let pg = Postgres::with_schema();
        let redis = Redis::start();
        let mut front = Harness::new(&format!("{name}-front"));
        let map = front.root.join("front-routes.conf");
        let port = util::free_port();
        let mut nginx = Nginx::configure(&front.root.join("nginx"), port, &map);
        let reload = nginx.reload_command();
        let url = redis.url();
        front.start_role(&[
            "front",
            "--redis",
            &url,
            "--nginx-map",
            &map.to_string_lossy(),
            "--nginx-reload",
            &reload,
            "--reread",
            "1",
        ]);
        front.wait_for(|| map.exists(), LONG, "the front writes its map");
        nginx.start();
        nginx::wait_answer(&front, &nginx, port, "nobody.test", 404, "no app for this host");
        let mut fleet = Fleet {
            pg,
            redis,
            front,
            nginx,
            port,
            hosts: Vec::new(),
            ports: Default::default(),
        };
        for &h in hosts {
            let e = fleet.emperor(name, h, ttl, extra);
            fleet.hosts.push(e);
        }
        fleet
    }

    fn emperor(&self, name: &str, h: u8, ttl: u32, extra: &[&str]) -> Harness {
        let mut e = Harness::new(&format!("{name}-h{h}"));
        let run = e.root.join("emperor-run");
        let (address, ttl, url) = (format!("127.0.0.{h}"), ttl.to_string(), self.redis.url());
        let source = format!("pg://{};{}", self.pg.conninfo(), query(h));
        let prefix = format!("h{h}-");
        let mut args = vec![
            "--emperor-freq",
            "60",
            "--emperor-run-dir",
            run.to_str().unwrap(),
            "--docker-name-prefix",
            &prefix,
            "--routes-redis",
            &url,
            "--routes-address",
            &address,
            "--routes-ttl",
            &ttl,
            "--routes-drain",
            "2",
        ];
        args.extend_from_slice(extra);
        args.push(&source);
        e.start_role(&args);
        e.wait_log("vassals from postgresql://", LONG);
        e
    }

    fn host(&self, h: u8) -> &Harness {
        &self.hosts[usize::from(h - 2)]
    }

    /// A process vassal for `app` on host `h`: the test app serving HTTP on 127.0.0.<h>:<app's port>.
    fn process_config(&mut self, app: &str, h: u8) -> String {
        let port = *self.ports.entry(app.to_owned()).or_insert_with(util::free_port);
        format!(
            "[emperor]\nsocket = 127.0.0.{h}:{port}\ndomains = {app}.test\nexec = {} --name {app}-h{h}\n",
            util::testapp().display()
        )
    }

    fn insert(&self, app: &str, h: u8, config: &str) {
        self.pg.sql(&format!(
            "INSERT INTO vassals (name, config, host) VALUES ('{app}.ini', $cfg${config}$cfg$, 'h{h}')"
        ));
    }

    /// Waits until the front answers `Host: <app>.test` with 200 from `<app>-h<h>`.
    fn wait_served(&self, app: &str, h: u8, within: Duration) {
        nginx::wait_answer_within(
            self.host(h),
            &self.nginx,
            self.port,
            &format!("{app}.test"),
            200,
            &format!("hello from {app}-h{h} "),
            within,
        );
    }

    /// As [`Fleet::wait_served`], then 30 answers in a row from there: right after a reload, nginx's old workers
    /// may still take a connection for a moment, with the map they started with.
    fn wait_settled(&self, app: &str, h: u8) {
        let host = format!("{app}.test");
        let want = format!("hello from {app}-h{h} ");
        self.wait_served(app, h, SOON);
        let mut in_a_row = 0;
        self.host(h).wait_for(
            || {
                let ok = nginx::get(self.port, &host).is_ok_and(|(c, b)| c == 200 && b.contains(&want));
                in_a_row = if ok { in_a_row + 1 } else { 0 };
                in_a_row >= 30
            },
            LONG,
            "the front answers from one place",
        );
    }

    fn wait_not_routed(&self, app: &str, within: Duration) {
        nginx::wait_answer_within(
            &self.front,
            &self.nginx,
            self.port,
            &format!("{app}.test"),
            404,
            "no app for this host",
            within,
        );
    }

    /// The Redis keys of the published routes.
    fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .redis
            .cli(&["--scan", "--pattern", "/beachhead/*"])
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect();
        keys.sort();
        keys
    }
}

#[test]
fn rows_start_reload_and_stop_on_their_host_and_the_front_follows() {
    let sweep = crate::util::docker::DockerSweep::new();
    let labels = sweep.emperor_args();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    let mut f = Fleet::start("fleetrows", &[2, 3, 4], 60, &labels);
    // A process vassal on .2 and one on .3; a Docker vassal (network none, its TCP socket bound by the emperor
    // on the host's address and handed in) on .4.
    let a = f.process_config("a", 2);
    let b = f.process_config("b", 3);
    f.insert("a", 2, &a);
    f.insert("b", 3, &b);
    let port_c = util::free_port();
    let c = format!(
        "[emperor]\ndocker-image = emperor-test/testapp\ndocker-network-mode = none\nsocket = 127.0.0.4:{port_c}\n\
         domains = c.test\nexec = /testapp --name c-h4\n"
    );
    f.insert("c", 4, &c);
    f.wait_served("a", 2, SOON);
    f.wait_served("b", 3, SOON);
    f.wait_served("c", 4, LONG);
    // Each vassal runs on its own host only.
    for (h, mine) in [(2, "a.ini"), (3, "b.ini"), (4, "c.ini")] {
        let log = f.host(h).stderr();
        for app in ["a.ini", "b.ini", "c.ini"] {
            f.host(h).check(
                log.contains(&format!("[{app}] ")) == (app == mine),
                format!("h{h} runs only {mine}"),
            );
        }
    }
    assert_eq!(
        f.keys(),
        [
            "/beachhead/a.ini@127.0.0.2",
            "/beachhead/b.ini@127.0.0.3",
            "/beachhead/c.ini@127.0.0.4"
        ]
    );
    let value = f.redis.cli(&["GET", "/beachhead/a.ini@127.0.0.2"]);
    let port_a = f.ports["a"];
    assert_eq!(
        value.trim(),
        format!(r#"[{{"domain":"a.test","http":{{"host":"127.0.0.2","port":{port_a}}},"id":"a.ini@127.0.0.2"}}]"#)
    );

    // An UPDATE of the config reloads the vassal on its host (the trigger bumps ts).
    let spawned = f.host(3).spawned().len();
    let b2 = b.replace("--name b-h3", "--name b-h3 --show-env EMPEROR_TEST_B");
    f.pg.sql(&format!(
        "UPDATE vassals SET config = $cfg${b2}$cfg$ WHERE name = 'b.ini'"
    ));
    f.host(3)
        .wait_for(|| f.host(3).spawned().len() > spawned, SOON, "b.ini reloads on h3");

    // A row whose config is broken is one error naming the row and the line; the others keep running.
    f.pg.sql("INSERT INTO vassals (name, config, host) VALUES ('bad.ini', E'[emperor]\\nexec = /bin/true\\nidle = soon\\n', 'h2')");
    f.host(2).wait_log("pg:bad.ini:3", SOON);
    f.wait_served("a", 2, SOON);

    // A DELETE stops it and takes its route away.
    f.pg.sql("DELETE FROM vassals WHERE name = 'a.ini'");
    f.host(2).wait_log("[a.ini] removed (its row is gone", SOON);
    f.wait_not_routed("a", SOON);
    f.host(2).wait_for(
        || !f.keys().iter().any(|k| k.contains("a.ini")),
        SOON,
        "a.ini's key is deleted",
    );
    f.wait_served("b", 3, SOON);
    f.wait_served("c", 4, SOON);
    drop(f);
    drop(sweep);
}

#[test]
fn postgresql_away_for_ten_seconds_stops_nothing_and_later_changes_are_picked_up() {
    let mut f = Fleet::start("fleetpgdown", &[2], 60, &[]);
    let a = f.process_config("a", 2);
    f.insert("a", 2, &a);
    f.wait_served("a", 2, SOON);
    let pids = f.host(2).spawned();
    f.pg.stop();
    f.host(2).wait_log("PostgreSQL at postgresql://", SOON);
    // The outage lasts 10 s (the issue's figure); the vassal serves throughout.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        f.wait_served("a", 2, SOON);
        thread::sleep(Duration::from_millis(500));
    }
    f.pg.start_again();
    f.host(2).wait_log("answers again", LONG);
    let log = f.host(2).stderr();
    assert_eq!(
        log.matches("does not answer").count(),
        1,
        "one line when it goes:\n{log}"
    );
    assert_eq!(f.host(2).spawned(), pids, "nothing restarted");
    let b = f.process_config("b", 2);
    f.insert("b", 2, &b);
    f.wait_served("b", 2, SOON);
    f.wait_served("a", 2, SOON);
}

#[test]
fn a_vassal_moves_between_hosts_under_load_without_a_failed_request() {
    let mut f = Fleet::start("fleetmove", &[2, 3], 60, &[]);
    let a = f.process_config("a", 2);
    f.insert("a", 2, &a);
    f.wait_settled("a", 2);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
    let from_h3 = Arc::new(AtomicUsize::new(0));
    let port = f.port;
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, ok, failed, from_h3) = (stop.clone(), ok.clone(), failed.clone(), from_h3.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match nginx::get(port, "a.test") {
                        Ok((200, body)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if body.contains("hello from a-h3 ") {
                                from_h3.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        other => failed
                            .lock()
                            .unwrap()
                            .push(format!("{} {other:?}", util::now_ns() / 1_000_000)),
                    }
                }
            })
        })
        .collect();
    f.host(2)
        .wait_for(|| ok.load(Ordering::Relaxed) > 50, LONG, "requests flow");
    // On one machine each host binds its own loopback address, so the move rewrites it too; on real hosts the
    // config would bind every address and only `host` would change.
    let a3 = a.replace("127.0.0.2:", "127.0.0.3:").replace("a-h2", "a-h3");
    f.pg.sql(&format!(
        "UPDATE vassals SET host = 'h3', config = $cfg${a3}$cfg$ WHERE name = 'a.ini'"
    ));
    f.host(2)
        .wait_log("[a.ini] handed over to another host: stopping it", LONG);
    f.host(2).wait_log("[a.ini] removed", LONG);
    let after = ok.load(Ordering::Relaxed);
    f.host(3).wait_for(
        || ok.load(Ordering::Relaxed) > after + 50,
        LONG,
        "requests flow after h2 stopped",
    );
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failed = failed.lock().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the move (unix ms, answer), first: {:?}, last: {:?}\n{}{}{}",
        failed.len(),
        ok.load(Ordering::Relaxed) + failed.len(),
        failed.first(),
        failed.last(),
        f.host(2).tail(),
        f.host(3).tail(),
        f.front.tail(),
    );
    assert!(from_h3.load(Ordering::Relaxed) > 50, "h3 served after the move");
    f.host(2).check(
        f.host(2).stderr().contains("the new host publishes it"),
        "h2 waited for h3's route",
    );
    assert_eq!(f.keys(), ["/beachhead/a.ini@127.0.0.3"]);
}

#[test]
fn a_host_killed_with_sigkill_drops_out_of_the_front_within_the_ttl() {
    let mut f = Fleet::start("fleetkill", &[2, 3], 3, &[]);
    let a = f.process_config("a", 2);
    let b = f.process_config("b", 3);
    f.insert("a", 2, &a);
    f.insert("b", 3, &b);
    f.wait_served("a", 2, SOON);
    f.wait_settled("b", 3);
    let killed = Instant::now();
    util::kill(f.host(3).emperor_pid, libc::SIGKILL);
    // TTL 3 s, then the front's next read (every second at the latest).
    f.wait_not_routed("b", Duration::from_secs(3 + 1) + SOON);
    let took = killed.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "b's route went before its TTL could lapse ({took:?})"
    );
    assert_eq!(f.keys(), ["/beachhead/a.ini@127.0.0.2"]);
    f.wait_served("a", 2, SOON);
    f.host(2)
        .check(!f.host(2).stderr().contains("stopping"), "h2 is untouched");
}

use std::sync::Mutex;

#[test]
fn redis_restarted_empty_stops_nothing_and_every_route_is_published_again() {
    let mut f = Fleet::start("fleetredis", &[2], 60, &[]);
    let a = f.process_config("a", 2);
    f.insert("a", 2, &a);
    f.wait_settled("a", 2);
    let pids = f.host(2).spawned();
    f.redis.stop();
    f.host(2).wait_log("Redis at redis://", SOON);
    f.front.wait_log("is unreachable", SOON);
    f.wait_served("a", 2, SOON);
    // Back empty, as a Redis without persistence restarts: the host publishes again at once (it checks its
    // connection every second), well within the front's grace, so the front never stops routing.
    f.redis.start_again();
    let back = Instant::now();
    f.host(2).wait_for(
        || f.keys() == ["/beachhead/a.ini@127.0.0.2"],
        SOON,
        "a.ini is published again",
    );
    let took = back.elapsed();
    f.host(2).wait_log("answers again", SOON);
    // Past the front's 10 s grace: every answer comes from the vassal.
    while back.elapsed() < Duration::from_secs(12) {
        let r = nginx::get(f.port, "a.test");
        assert!(
            matches!(&r, Ok((200, b)) if b.contains("hello from a-h2 ")),
            "{r:?}\n{}",
            f.front.tail()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(took < Duration::from_secs(5), "published again after {took:?}");
    assert_eq!(f.host(2).spawned(), pids, "nothing restarted");
}
