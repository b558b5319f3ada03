//! `emperor front` end to end: a real redis-server (`util/redis.rs`) holds routes in beachhead's layout
//! for two "hosts", 127.0.0.2 and 127.0.0.3 (each a small HTTP server run by the test that answers with
//! its own address); the front renders them into the include file, and a real nginx (Debian's) running
//! the README's `server` block routes each Host to its host.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::util::nginx::{Nginx, get, wait_answer, wait_answer_within};
use crate::util::redis::Redis;
use crate::util::{Harness, LONG, free_port};

/// How soon a change must be in the map (and reach nginx) when notifications are on.
const SOON: Duration = Duration::from_secs(1);

/// Publishes `vassal` on host `backend` with these domains, as a host's emperor would.
fn publish(redis: &Redis, vassal: &str, backend: SocketAddr, ttl: u32, domains: &[&str]) {
    let id = format!("{vassal}@{}", backend.ip());
    let routes: Vec<String> = domains
        .iter()
        .map(|d| {
            format!(
                r#"{{"id":"{id}","domain":"{d}","http":{{"host":"{}","port":{}}}}}"#,
                backend.ip(),
                backend.port()
            )
        })
        .collect();
    let value = format!("[{}]", routes.join(","));
    redis.cli(&["SETEX", &format!("/beachhead/{id}"), &ttl.to_string(), &value]);
}

/// A small HTTP server on `<ip>:<some port>` that answers every request with `host <ip>:<port>`;
/// stopped (its port closed) on drop.
struct Backend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    fn start(ip: &str) -> Backend {
        let listener = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => answer(stream, addr),
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Backend {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

/// Reads one request head, answers it and closes the connection (so nginx keeps none idle).
fn answer(mut stream: TcpStream, addr: SocketAddr) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = format!("host {addr}\n");
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `emperor front` on `redis` into `map`, with `extra` options.
fn start_front(h: &mut Harness, redis: &Redis, map: &Path, extra: &[&str]) {
    let url = redis.url();
    let map = map.to_string_lossy().into_owned();
    let mut args = vec!["front", "--redis", &url, "--nginx-map", &map];
    args.extend_from_slice(extra);
    h.start_role(&args);
}

/// The map's text, or "" while there is none.
fn read(map: &Path) -> String {
    fs::read_to_string(map).unwrap_or_default()
}

/// An nginx around the README block on a free port, started on `map` once the front has written it.
fn nginx_on(h: &Harness, map: &Path) -> (Nginx, u16) {
    let port = free_port();
    let nginx = Nginx::configure(&h.root.join("nginx"), port, map);
    (nginx, port)
}

fn start_nginx(h: &Harness, nginx: &mut Nginx, map: &Path) {
    h.wait_for(|| map.exists(), LONG, "the map file");
    nginx
        .test_config()
        .unwrap_or_else(|e| panic!("nginx -t refused the map: {e}\n{}{}", read(map), h.tail()));
    nginx.start();
}

#[test]
fn front_routes_each_host_to_its_server_and_follows_changes_within_a_second() {
    let mut h = Harness::new("front_routes");
    let redis = Redis::start_with(&[]);
    let (one, two) = (Backend::start("127.0.0.2"), Backend::start("127.0.0.3"));
    let map = h.root.join("nginx").join("fleet.conf");
    let (mut nginx, port) = nginx_on(&h, &map);
    let reload = nginx.reload_command();
    start_front(&mut h, &redis, &map, &["--nginx-reload", &reload]);
    // Written at once, with no routes yet: nginx's include finds a file.
    start_nginx(&h, &mut nginx, &map);
    wait_answer(&h, &nginx, port, "a.test", 404, "no app for this host");
    // (The front's first reload ran before nginx did, and failed.)
    let from = h.stderr().len();

    // Two hosts publish: each Host reaches its own, within a second.
    let t0 = Instant::now();
    publish(&redis, "a.ini", one.addr, 60, &["a.test", "*.wild.test", "default"]);
    publish(&redis, "b.ini", two.addr, 60, &[".b.test"]);
    let (a, b) = (format!("host {}", one.addr), format!("host {}", two.addr));
    wait_answer_within(&h, &nginx, port, "a.test", 200, &a, SOON);
    wait_answer_within(&h, &nginx, port, "b.test", 200, &b, SOON.saturating_sub(t0.elapsed()));
    h.check(t0.elapsed() <= SOON, format!("routed after {:?}", t0.elapsed()));
    for (host, want) in [("x.wild.test", &a), ("default", &a), ("x.y.b.test", &b)] {
        wait_answer_within(&h, &nginx, port, host, 200, want, SOON);
    }
    wait_answer(&h, &nginx, port, "wild.test", 404, "no app for this host");

    // A key deleted: its hosts are gone within a second; the other host's stay.
    let t1 = Instant::now();
    redis.cli(&["DEL", &format!("/beachhead/b.ini@{}", two.addr.ip())]);
    // The file first: right after a reload, one of nginx's old workers (whose map predates b.test) may still
    // answer a 404 for it, which would prove nothing.
    h.wait_for(|| !read(&map).contains("b.test"), SOON, "b.test gone from the map");
    wait_answer_within(&h, &nginx, port, "b.test", 404, "no app for this host", SOON);
    h.check(t1.elapsed() <= SOON, format!("unrouted after {:?}", t1.elapsed()));
    wait_answer(&h, &nginx, port, "a.test", 200, &a);
    h.check(
        !h.stderr()[from..].contains("failed"),
        "every reload of nginx succeeded",
    );
}

#[test]
fn front_drops_an_expired_key_within_the_reread_period_without_notifications() {
    let mut h = Harness::new("front_expire");
    // As a managed Redis: CONFIG refused, so no keyspace notifications; the periodic re-read alone.
    let redis = Redis::start_with(&["--rename-command", "CONFIG", ""]);
    let one = Backend::start("127.0.0.2");
    let map = h.root.join("fleet.conf");
    start_front(&mut h, &redis, &map, &["--reread", "1"]);
    h.wait_log("refuses CONFIG", LONG);

    let t0 = Instant::now();
    publish(&redis, "x.ini", one.addr, 1, &["x.test"]);
    h.wait_for(
        || read(&map).contains("x.test"),
        Duration::from_millis(1500),
        "x.test in the map within the re-read period",
    );
    // TTL 1 s, then at most one re-read period (1 s), plus a read's time.
    let deadline = Duration::from_millis(2500).saturating_sub(t0.elapsed());
    h.wait_for(
        || !read(&map).contains("x.test") && read(&map).contains("map $host"),
        deadline,
        "x.test gone from the map after its TTL",
    );
    h.check(
        h.stderr().matches("refuses CONFIG").count() == 1,
        "the refusal is said once",
    );
}

#[test]
fn front_balances_one_domain_across_two_hosts() {
    let mut h = Harness::new("front_balance");
    let redis = Redis::start_with(&[]);
    let one = Backend::start("127.0.0.2");
    let two = Backend::start("127.0.0.3");
    let two_addr = two.addr;
    let map = h.root.join("nginx").join("fleet.conf");
    let (mut nginx, port) = nginx_on(&h, &map);
    let reload = nginx.reload_command();
    // A vassal moving between hosts: both publish it while it moves.
    publish(&redis, "shop.ini", one.addr, 60, &["shop.test"]);
    publish(&redis, "shop.ini", two_addr, 60, &["shop.test"]);
    start_front(&mut h, &redis, &map, &["--nginx-reload", &reload, "--reread", "1"]);
    h.wait_for(
        || read(&map).contains("shop.test emperor_"),
        LONG,
        "shop.test in the map",
    );
    let text = read(&map);
    let upstream = format!(
        "upstream emperor_shop_test {{\n    server {};\n    server {two_addr};\n    keepalive 16;\n}}\n",
        one.addr
    );
    h.check(
        text.contains(&upstream) && text.matches("\nupstream ").count() == 1,
        format!("one upstream with both servers:\n{text}"),
    );
    start_nginx(&h, &mut nginx, &map);

    // nginx balances between them...
    let mut seen = std::collections::BTreeSet::new();
    let start = Instant::now();
    while seen.len() < 2 && start.elapsed() < LONG {
        if let Ok((200, body)) = get(port, "shop.test") {
            seen.insert(body);
        }
    }
    h.check(seen.len() == 2, format!("answers from both hosts: {seen:?}"));
    // ... and goes to the other when one is gone (connection refused).
    drop(two);
    for _ in 0..6 {
        let answer = get(port, "shop.test");
        h.check(
            answer == Ok((200, format!("host {}\n", one.addr))),
            format!("the remaining host answers: {answer:?}"),
        );
    }

    // Another vassal on the same name: both kept, one warning naming both ids, not repeated at each
    // refresh or re-read.
    publish(&redis, "other.ini", two_addr, 60, &["shop.test"]);
    h.wait_log("front: host shop.test is published by different vassals", LONG);
    let warning = "published by different vassals: other.ini@127.0.0.3, shop.ini@127.0.0.2, shop.ini@127.0.0.3";
    h.check(h.stderr().contains(warning), "the warning names every id");
    publish(&redis, "other.ini", two_addr, 60, &["shop.test"]);
    let reads = h.stderr().len();
    thread::sleep(Duration::from_millis(1500)); // past a re-read: nothing new is to be said.
    h.check(
        h.stderr().matches("published by different vassals").count() == 1,
        format!("one warning, not one per read:{}", &h.stderr()[reads..]),
    );
    h.check(
        read(&map).contains("    # contested: shop.test by other.ini@127.0.0.3, shop.ini@127.0.0.2"),
        "the file notes the contest",
    );
}

#[test]
fn front_keeps_the_map_while_redis_is_down_and_follows_it_back() {
    let mut h = Harness::new("front_outage");
    let mut redis = Redis::start_with(&[]);
    let one = Backend::start("127.0.0.2");
    let map = h.root.join("nginx").join("fleet.conf");
    let (mut nginx, port) = nginx_on(&h, &map);
    let reload = nginx.reload_command();
    publish(&redis, "a.ini", one.addr, 60, &["a.test"]);
    start_front(&mut h, &redis, &map, &["--nginx-reload", &reload]);
    h.wait_for(|| read(&map).contains("a.test"), LONG, "a.test in the map");
    start_nginx(&h, &mut nginx, &map);
    let a = format!("host {}", one.addr);
    wait_answer(&h, &nginx, port, "a.test", 200, &a);

    // Redis goes away: one warning; the file and nginx's routes stay while the front retries.
    let before = read(&map);
    redis.stop();
    h.wait_log("is unreachable", LONG);
    thread::sleep(Duration::from_millis(800)); // several reconnection attempts (100, 200, 400 ms)
    h.check(read(&map) == before, "the map is untouched while Redis is down");
    wait_answer(&h, &nginx, port, "a.test", 200, &a);
    h.check(
        h.stderr().matches("is unreachable").count() == 1,
        "Redis going away is said once",
    );

    // Back on the same port, empty (as a Redis without persistence restarts), with another route: the front
    // follows it again, and keeps a.test, which its host has not published again, for the 10 s grace the hosts
    // get to notice and republish; then a.test goes.
    redis.start_again();
    let t0 = Instant::now();
    publish(&redis, "b.ini", one.addr, 60, &["b.test"]);
    wait_answer(&h, &nginx, port, "b.test", 200, &a);
    h.check(
        t0.elapsed() < Duration::from_secs(6),
        format!("followed again after {:?} (backoff at most 5 s)", t0.elapsed()),
    );
    h.wait_log("is back after", LONG);
    let back = Instant::now();
    wait_answer(&h, &nginx, port, "a.test", 200, &a);
    wait_answer(&h, &nginx, port, "a.test", 404, "no app for this host");
    h.check(
        back.elapsed() >= Duration::from_secs(8),
        format!("a.test was kept through the grace, gone after {:?}", back.elapsed()),
    );
    h.check(
        h.stderr().matches("is back after").count() == 1 && h.stderr().matches("is unreachable").count() == 1,
        "one line when it went, one when it came back",
    );
    // Notifications were switched on again on the new server.
    h.check(
        h.stderr().matches("switched on keyspace notifications").count() == 2,
        "notifications asked for on each server",
    );
}

#[test]
fn front_rewrites_and_reloads_only_when_the_routes_change_and_leaves_the_map_on_sigterm() {
    let mut h = Harness::new("front_quiet");
    let redis = Redis::start_with(&[]);
    let one = Backend::start("127.0.0.2");
    let map = h.root.join("fleet.conf");
    let reloads = h.root.join("reloads");
    let reload = format!("sh -c 'echo reload >> {}'", reloads.display());
    let count = || read(&reloads).lines().count();
    start_front(&mut h, &redis, &map, &["--nginx-reload", &reload, "--reread", "1"]);
    h.wait_for(|| count() == 1, LONG, "the reload after the first write");

    publish(&redis, "a.ini", one.addr, 60, &["a.test"]);
    h.wait_for(|| count() == 2, LONG, "the reload after a.test");
    let text = read(&map);
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    let written = inode(&map);

    // The host refreshes its key (same value), and re-reads come and go: nothing to write or reload.
    for _ in 0..3 {
        publish(&redis, "a.ini", one.addr, 60, &["a.test"]);
        thread::sleep(Duration::from_millis(400));
    }
    thread::sleep(Duration::from_millis(800));
    h.check(count() == 2, format!("{} reloads", count()));
    h.check(
        inode(&map) == written && read(&map) == text,
        "the file was not rewritten",
    );
    h.check(
        h.stderr().matches("nginx map: wrote").count() == 2,
        "two writes: at start, and for a.test",
    );

    // SIGTERM: exit 0, and the map stays (the hosts are still serving).
    h.signal(libc::SIGTERM);
    let status = h.wait_exit(LONG);
    h.check(status.success(), format!("exit status {status}"));
    h.check(read(&map) == text, "the map is left as it was");
}
