//! `--emperor-metrics`: the real emperor, scraped over HTTP and parsed by Prometheus's own Python client
//! (Debian's `python3-prometheus-client`, its `text_string_to_metric_families`), with process, replicated and
//! Docker vassals whose figures the assertions follow through a crash, a hold and queued clients.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::docker::{DockerSweep, testapp_vassal, unique_name};
use crate::util::*;

/// Debian's python3, which has Debian's prometheus_client (a python3 earlier on the PATH may not).
const PYTHON: &str = "/usr/bin/python3";

/// Scrapes `tcp:HOST:PORT` or `unix:PATH` with http.client and parses the body with prometheus_client's
/// parser; prints the status, the content type and every family with its samples as JSON (values as
/// Python's repr, which Rust parses, `inf` included).
const SCRAPER: &str = r#"
import http.client, json, socket, sys
from prometheus_client.parser import text_string_to_metric_families

class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=15)
        self.unix_path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(15)
        self.sock.connect(self.unix_path)

target = sys.argv[1]
if target.startswith("unix:"):
    conn = UnixConnection(target[5:])
else:
    host, port = target[4:].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
conn.request("GET", "/metrics", headers={"Accept": "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"})
resp = conn.getresponse()
body = resp.read().decode("utf-8")
families = []
if resp.status == 200:
    for f in text_string_to_metric_families(body):
        families.append({"name": f.name, "type": f.type, "help": f.documentation,
                         "samples": [[s.name, s.labels, repr(s.value)] for s in f.samples]})
print(json.dumps({"status": resp.status, "content_type": resp.getheader("Content-Type"),
                  "length": int(resp.getheader("Content-Length")), "body_length": len(body.encode()),
                  "families": families}))
"#;

/// One scrape as prometheus_client read it.
struct Scrape {
    doc: Value,
}

impl Scrape {
    /// Scrapes `target`; a failure to run, to connect or to parse fails the test with the output.
    fn of(h: &Harness, target: &str) -> Scrape {
        let out = run_timeout(
            Command::new(PYTHON).args(["-c", SCRAPER, target]),
            "the prometheus_client scraper",
            b"",
            LONG,
        )
        .unwrap_or_else(|e| panic!("{e}{}", h.tail()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        h.check(
            out.status.success(),
            format!("the scraper failed ({:?}): {stdout}\n{stderr}", out.status),
        );
        let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("scraper output ({e}): {stdout}"));
        h.check(doc["status"] == 200, format!("scrape status: {doc}"));
        Scrape { doc }
    }

    fn families(&self) -> &Vec<Value> {
        self.doc["families"].as_array().expect("families")
    }

    /// The family's type as the parser read it (it names counters without `_total`).
    fn kind(&self, family: &str) -> Option<&str> {
        self.families().iter().find(|f| f["name"] == family)?["type"].as_str()
    }

    /// Every sample named `name` whose labels include `labels`, as (labels, value).
    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(Value, f64)> {
        self.families()
            .iter()
            .flat_map(|f| f["samples"].as_array().unwrap().iter())
            .filter(|s| s[0] == name && labels.iter().all(|(k, v)| s[1][*k] == *v))
            .map(|s| {
                let v = s[2].as_str().unwrap();
                (s[1].clone(), v.parse().unwrap_or_else(|_| panic!("value {v:?}")))
            })
            .collect()
    }

    /// The one sample named `name` with `labels`, if there is exactly one.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.samples(name, labels).as_slice() {
            [(_, v)] => Some(*v),
            _ => None,
        }
    }
}

/// Scrapes until `ok` holds for a scrape, at most `LONG`; the last scrape fails the test with `what`.
fn wait_scrape(h: &Harness, target: &str, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let start = Instant::now();
    loop {
        let s = Scrape::of(h, target);
        if ok(&s) {
            return s;
        }
        if start.elapsed() > LONG {
            h.check(
                false,
                format!("the metrics never showed {what}: {:#}", s.doc["families"]),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn python_or_panic() {
    let ok = Command::new(PYTHON)
        .args(["-c", "import prometheus_client.parser"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{PYTHON} cannot import prometheus_client: run scripts/setup (installs python3-prometheus-client)"
    );
}

fn ctl(control: &Path, args: &[&str]) {
    let out = Command::new(EMPEROR)
        .args(args)
        .arg("--control")
        .arg(control)
        .output()
        .unwrap();
    assert!(out.status.success(), "emperor {args:?}: {out:?}");
}

/// Sends one request on a connection that waits in a queue, without reading the answer yet.
fn queued_request(sock: &Path) -> UnixStream {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    s
}

#[test]
fn prometheus_reads_every_kind_of_vassal_through_a_crash_a_hold_and_a_queue() {
    python_or_panic();
    let sweep = DockerSweep::new();
    let mut h = Harness::new("metrics");
    let port = free_port();
    let target = format!("tcp:127.0.0.1:{port}");
    let control = h.root.join("control.sock");
    // a: speaks the uWSGI protocol (ready, accepting); c: dies at once (throttled); q: held, then queued;
    // r: two replicas; d: a Docker vassal; and a name with a quote, a backslash and a brace.
    h.write_vassal("a.ini", &h.app_ini("a", "--speak"));
    h.write_vassal("c.ini", &h.app_ini("c", "--crash"));
    h.write_vassal("q.ini", &h.app_ini("q", ""));
    h.write_vassal(
        "r.ini",
        &h.app_ini("r", "").replace("[emperor]\n", "[emperor]\nreplicas = 2\n"),
    );
    let tricky = "t\\n\"q}.ini";
    h.write_vassal(tricky, &h.app_ini("tricky", ""));
    let docker = format!("{}.ini", unique_name("metrics"));
    let docker_name = docker.trim_end_matches(".ini").to_string();
    h.write_vassal(&docker, &testapp_vassal(&h, &docker_name, ""));
    let mut args = sweep.emperor_args();
    args.extend(
        [
            "--emperor-metrics",
            &format!("127.0.0.1:{port}"),
            "--emperor-control",
            control.to_str().unwrap(),
            "--emperor-throttle",
            "300",
        ]
        .map(String::from),
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    h.start(&refs);
    let a_pid = h.wait_starts("a", 1, LONG)[0].pid();

    let state = |s: &Scrape, v: &str, st: &str| s.value("emperor_vassal_state", &[("vassal", v), ("state", st)]);
    let s = wait_scrape(&h, &target, "every vassal started", |s| {
        ["a.ini", "q.ini", "r.ini", tricky, docker.as_str()]
            .iter()
            .all(|v| state(s, v, "running") == Some(1.0))
            && state(s, "c.ini", "throttled") == Some(1.0)
            && s.value(
                "emperor_vassal_start_seconds_count",
                &[("vassal", "a.ini"), ("until", "accepting")],
            ) == Some(1.0)
            && s.value(
                "emperor_vassal_start_seconds_count",
                &[("vassal", &docker), ("until", "handover")],
            ) == Some(1.0)
            && s.value(
                "emperor_vassal_replica_state",
                &[("vassal", "r.ini"), ("replica", "1"), ("state", "running")],
            ) == Some(1.0)
            && s.value("emperor_vassal_memory_bytes", &[("vassal", &docker)]).is_some()
    });

    // The format as the parser read it: types, and one-hot states (every state, one of them 1).
    h.check(
        s.doc["content_type"] == "text/plain; version=0.0.4; charset=utf-8",
        format!("content type {}", s.doc["content_type"]),
    );
    h.check(s.doc["length"] == s.doc["body_length"], "Content-Length is the body's");
    for (family, kind) in [
        ("emperor_vassal_state", "gauge"),
        ("emperor_vassal_restarts", "counter"),
        ("emperor_vassal_start_seconds", "histogram"),
        ("process_cpu_seconds", "counter"),
        ("emperor_vassal_socket_accept_queue", "gauge"),
    ] {
        h.check(
            s.kind(family) == Some(kind),
            format!("{family} is a {kind}: {:?}", s.kind(family)),
        );
    }
    for v in ["a.ini", "c.ini", tricky] {
        let states = s.samples("emperor_vassal_state", &[("vassal", v)]);
        h.check(
            states.len() == 11 && states.iter().map(|(_, x)| x).sum::<f64>() == 1.0,
            format!("{v}: one state of 11 is 1: {states:?}"),
        );
    }
    h.check(
        s.value(
            "emperor_vassal_info",
            &[("vassal", tricky), ("kind", "process"), ("container", "")],
        ) == Some(1.0),
        format!(
            "the tricky name reads back whole: {:?}",
            s.samples("emperor_vassal_info", &[])
        ),
    );
    h.check(
        s.value(
            "emperor_vassal_info",
            &[("vassal", &docker), ("kind", "docker"), ("container", &docker)],
        ) == Some(1.0),
        "the Docker vassal's info",
    );
    h.check(
        s.value("emperor_vassal_cpu_seconds_total", &[("vassal", &docker)])
            .is_some(),
        "the container's CPU time",
    );

    // Throttle: attempts, the delay and the next start of the crashing vassal.
    let c = [("vassal", "c.ini")];
    h.check(
        s.value("emperor_vassal_throttle_attempts", &c)
            .is_some_and(|n| n >= 1.0)
            && s.value("emperor_vassal_throttle_delay_seconds", &c)
                .is_some_and(|d| d >= 0.3)
            && s.value("emperor_vassal_next_start_time_seconds", &c)
                .is_some_and(|t| t > 1.6e9),
        format!(
            "c.ini throttled: {:?} {:?}",
            s.samples("emperor_vassal_throttle_attempts", &c),
            s.samples("emperor_vassal_next_start_time_seconds", &c)
        ),
    );
    h.check(
        s.value("emperor_vassal_throttle_delay_seconds", &[("vassal", "a.ini")]) == Some(0.0)
            && s.value("emperor_vassal_next_start_time_seconds", &[("vassal", "a.ini")])
                .is_none(),
        "a.ini is not throttled",
    );

    // The start histogram: cumulative buckets ending in +Inf = count.
    let acc = [("vassal", "a.ini"), ("until", "accepting")];
    let buckets = s.samples("emperor_vassal_start_seconds_bucket", &acc);
    let counts: Vec<f64> = buckets.iter().map(|(_, v)| *v).collect();
    h.check(
        buckets.len() == 14
            && buckets.last().is_some_and(|(l, v)| l["le"] == "+Inf" && *v == 1.0)
            && counts.windows(2).all(|w| w[0] <= w[1]),
        format!("a.ini's buckets: {buckets:?}"),
    );
    h.check(
        s.value("emperor_vassal_start_seconds_sum", &acc)
            .is_some_and(|t| t > 0.0 && t < 15.0),
        "a.ini's start time",
    );
    h.check(
        s.value(
            "emperor_vassal_start_seconds_count",
            &[("vassal", "a.ini"), ("until", "ready")],
        ) == Some(1.0),
        "ready counted once",
    );
    h.check(
        s.samples("emperor_vassal_start_seconds_count", &[("vassal", "q.ini")])
            .is_empty(),
        "a silent process vassal has no start series",
    );

    // Replicas: the range, the count, and each instance's memory.
    let r = [("vassal", "r.ini")];
    h.check(
        [
            s.value("emperor_vassal_replicas", &r),
            s.value("emperor_vassal_replicas_min", &r),
            s.value("emperor_vassal_replicas_max", &r),
        ] == [Some(2.0); 3],
        "r.ini's replicas",
    );
    for replica in ["0", "1"] {
        h.check(
            s.value("emperor_vassal_replica_memory_bytes", &[r[0], ("replica", replica)])
                .is_some_and(|b| b > 0.0),
            format!("replica {replica}'s memory"),
        );
    }

    // The emperor's own figures.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    h.check(
        s.value("process_start_time_seconds", &[])
            .is_some_and(|t| t <= now + 1.0 && t > now - 120.0),
        format!("start time {:?}", s.value("process_start_time_seconds", &[])),
    );
    h.check(
        s.value("process_open_fds", &[]).is_some_and(|n| n > 5.0)
            && s.value("process_max_fds", &[]).is_some()
            && s.value("process_resident_memory_bytes", &[]).is_some_and(|b| b > 1e6)
            && s.value("process_cpu_seconds_total", &[]).is_some(),
        "the emperor's process figures",
    );
    h.check(
        s.value("emperor_vassals", &[("state", "running")]) == Some(5.0)
            && s.value("emperor_vassals", &[("state", "throttled")]) == Some(1.0)
            && s.value("emperor_build_info", &[("version", env!("CARGO_PKG_VERSION"))]) == Some(1.0),
        format!("vassals by state: {:?}", s.samples("emperor_vassals", &[])),
    );

    // A crash: the restart is counted, and the new start too.
    kill(a_pid, libc::SIGKILL);
    wait_scrape(&h, &target, "a.ini restarted after a crash", |s| {
        s.value("emperor_vassal_restarts_total", &[("vassal", "a.ini")]) == Some(1.0)
            && s.value("emperor_vassal_start_seconds_count", &acc) == Some(2.0)
            && state(s, "a.ini", "running") == Some(1.0)
    });

    // A held vassal: clients wait in its accept queue, and are served once it is started again.
    ctl(&control, &["stop", "q.ini"]);
    wait_scrape(&h, &target, "q.ini held", |s| state(s, "q.ini", "held") == Some(1.0));
    let q_sock = h.sock("q.sock");
    let waiting: Vec<UnixStream> = (0..3).map(|_| queued_request(&q_sock)).collect();
    let ql = [("vassal", "q.ini"), ("socket", q_sock.to_str().unwrap())];
    let s = wait_scrape(&h, &target, "three clients queued on q.ini", |s| {
        s.value("emperor_vassal_socket_accept_queue", &ql) == Some(3.0)
    });
    h.check(
        s.value("emperor_vassal_socket_connections", &ql) == Some(3.0)
            && s.value("emperor_vassal_socket_backlog", &ql).is_some_and(|b| b >= 3.0),
        format!(
            "q.ini's socket: {:?}",
            s.samples("emperor_vassal_socket_connections", &[("vassal", "q.ini")])
        ),
    );
    ctl(&control, &["start", "q.ini"]);
    for mut c in waiting {
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        h.check(
            answer.contains("hello from q"),
            format!("a queued client's answer: {answer:?}"),
        );
    }
    wait_scrape(&h, &target, "q.ini's queue drained", |s| {
        s.value("emperor_vassal_socket_accept_queue", &ql) == Some(0.0) && state(s, "q.ini", "running") == Some(1.0)
    });
}

/// Sends `request` raw and returns the whole answer (the server closes the connection).
fn raw(path: &Path, request: &[u8]) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn http_on_a_unix_socket_is_minimal_but_correct_and_bounded() {
    python_or_panic();
    let mut h = Harness::new("metrics_http");
    let sock = h.root.join("metrics.sock");
    h.write_vassal("a.ini", &h.app_ini("a", ""));
    h.start(&["--emperor-metrics", sock.to_str().unwrap(), "--chmod-socket", "660"]);
    h.wait_starts("a", 1, LONG);
    h.wait_for(|| sock.exists(), LONG, "the metrics socket");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    h.check(mode == 0o660, format!("--chmod-socket applies: {mode:o}"));
    let target = format!("unix:{}", sock.display());
    wait_scrape(&h, &target, "a.ini running", |s| {
        s.value("emperor_vassal_state", &[("vassal", "a.ini"), ("state", "running")]) == Some(1.0)
    });

    let get = raw(&sock, b"GET /metrics HTTP/1.0\r\n\r\n");
    let (head, body) = get.split_once("\r\n\r\n").unwrap();
    h.check(head.starts_with("HTTP/1.1 200 OK\r\n"), format!("GET: {head}"));
    h.check(
        head.contains(&format!("\r\nContent-Length: {}", body.len()))
            && body.contains("# TYPE emperor_vassal_state gauge\n"),
        format!("GET: {head}"),
    );
    let head_only = raw(&sock, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    h.check(
        head_only.starts_with("HTTP/1.1 200 OK\r\n")
            && head_only.ends_with("\r\n\r\n")
            && head_only.contains("Content-Length: "),
        format!("HEAD: {head_only:?}"),
    );
    for (request, status) in [
        (&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], "404 Not Found"),
        (
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
            "405 Method Not Allowed",
        ),
        (b"GET /metrics HTTP/1.1\r\n\r\n", "400 Bad Request"),
        (b"hello\r\n\r\n", "400 Bad Request"),
    ] {
        let answer = raw(&sock, request);
        h.check(
            answer.starts_with(&format!("HTTP/1.1 {status}\r\n")) && answer.contains("Connection: close\r\n"),
            format!("{:?}: {answer:?}", String::from_utf8_lossy(request)),
        );
    }
    let mut big = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: ".to_vec();
    big.extend(std::iter::repeat_n(b'x', 17 * 1024));
    big.extend(b"\r\n\r\n");
    let answer = raw(&sock, &big);
    h.check(
        answer.starts_with("HTTP/1.1 431 "),
        format!("a 17 KiB head: {answer:?}"),
    );

    // Eight clients that send nothing take every slot: a ninth waits in the backlog until one goes.
    let idle: Vec<UnixStream> = (0..8).map(|_| UnixStream::connect(&sock).unwrap()).collect();
    let mut ninth = UnixStream::connect(&sock).unwrap();
    ninth.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    ninth.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    let mut first = [0u8; 16];
    let early = ninth.read(&mut first);
    h.check(
        early
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        format!("the ninth client is not served while eight hold the slots: {early:?}"),
    );
    drop(idle);
    ninth.set_read_timeout(Some(LONG)).unwrap();
    let mut answer = String::new();
    ninth.read_to_string(&mut answer).unwrap();
    h.check(
        answer.starts_with("HTTP/1.1 200 OK\r\n"),
        format!("the ninth client's answer: {answer:.200}"),
    );
}
