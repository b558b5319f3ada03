use super::*;
use crate::config::{SocketAddrSpec, SocketSpec};
use crate::emperor::fsm::{AfterStop, Instance, State};
use crate::emperor::stats::{SocketStat, Track};

/// A sample as Prometheus reads it: name, labels (unescaped), value.
type Sample = (String, Vec<(String, String)>, f64);

/// Reads the text format strictly (what this program writes, as the format's grammar has it): every
/// line is a comment `# HELP|TYPE name ...` or `name[{k="v",...}] value`; an error names the line.
fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(c) = line.strip_prefix("# ") {
            let ok = c.starts_with("HELP ") || c.starts_with("TYPE ");
            if !ok {
                return Err(format!("a comment that is neither HELP nor TYPE: {line:?}"));
            }
            continue;
        }
        let name_end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .ok_or(format!("no value: {line:?}"))?;
        let (name, mut rest) = line.split_at(name_end);
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let eq = rest.find("=\"").ok_or(format!("a label without =\": {line:?}"))?;
                let key = rest[..eq].trim_start_matches(',').to_string();
                let mut value = String::new();
                let mut chars = rest[eq + 2..].char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            other => return Err(format!("a bad escape {other:?}: {line:?}")),
                        },
                        Some((i, '"')) => break i,
                        Some((_, '\n')) | None => return Err(format!("an unterminated label value: {line:?}")),
                        Some((_, c)) => value.push(c),
                    }
                };
                rest = &rest[eq + 2 + end + 1..];
                labels.push((key, value));
            }
        }
        let value = rest
            .strip_prefix(' ')
            .ok_or(format!("no space before the value: {line:?}"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|e| format!("a bad value ({e}): {line:?}"))?,
        };
        out.push((name.to_string(), labels, value));
    }
    Ok(out)
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v)))
        .collect()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    match find(samples, name, labels).as_slice() {
        [one] => one.2,
        other => panic!("{name} {labels:?}: {} samples: {other:?}", other.len()),
    }
}

fn stats(id: &str, state: &'static str) -> VassalStats {
    VassalStats {
        id: id.into(),
        pid: -1,
        loyal: false,
        ready: false,
        accepting: false,
        last_heartbeat: 0,
        last_mod: 0,
        on_demand: String::new(),
        respawns: 0,
        state,
        kind: "process",
        container: None,
        sockets: vec![],
        bridge_info: None,
        attempts: 0,
        throttle: None,
        error: None,
        track: Track::default(),
        replicas: None,
    }
}

fn instance(pid: i32) -> Instance {
    Instance {
        pid,
        started: std::time::Instant::now(),
        speaks: true,
        loyal: false,
        ready: false,
        accepting: false,
        last_heartbeat: None,
        prewarm: false,
    }
}

#[test]
fn every_state_is_listed() {
    let now = std::time::Instant::now();
    let all = [
        State::Waiting,
        State::Starting(instance(1)),
        State::Running(instance(1)),
        State::Reloading {
            inst: instance(1),
            deadline: now,
        },
        State::Stopping {
            inst: instance(1),
            deadline: None,
            then: AfterStop::Finish,
        },
        State::Throttled { until: now },
        State::Paused(instance(1)),
        State::Held,
        State::Invalid { error: String::new() },
        State::Done,
    ];
    for s in &all {
        // A new state does not compile here until it is added above (and then to STATES).
        match s {
            State::Waiting
            | State::Starting(_)
            | State::Running(_)
            | State::Reloading { .. }
            | State::Stopping { .. }
            | State::Throttled { .. }
            | State::Paused(_)
            | State::Held
            | State::Invalid { .. }
            | State::Done => assert!(INSTANCE_STATES.contains(&s.name()), "{}", s.name()),
        }
    }
    assert_eq!(INSTANCE_STATES.len(), all.len());
    assert_eq!(STATES.last(), Some(&"unresponsive"));
    for replica_state in ["starting", "running", "stopping", "waiting", "throttled"] {
        assert!(INSTANCE_STATES.contains(&replica_state), "{replica_state}");
    }
}

/// Starts timed as the actor times them: one spawn says ready then accepting, another only accepting,
/// a Docker one is handed its sockets.
fn timed_track() -> Track {
    let mut fsm_like = Track::default();
    let mut inst = instance(10);
    fsm_like.spawned(10, std::time::Instant::now() - Duration::from_millis(30));
    inst.ready = true;
    fsm_like.time_start(Some(&inst));
    inst.accepting = true;
    fsm_like.time_start(Some(&inst));
    fsm_like.time_start(Some(&inst));
    let mut second = instance(11);
    fsm_like.spawned(11, std::time::Instant::now() - Duration::from_millis(2_000));
    second.accepting = true;
    fsm_like.time_start(Some(&second));
    fsm_like
}

#[test]
fn a_start_is_counted_once_per_milestone() {
    let t = timed_track();
    assert_eq!(t.starts.ready.count(), 1);
    assert_eq!(t.starts.accepting.count(), 2);
    assert_eq!(t.last_start(None).map(|(_, u)| u), Some("accepting"));
    let mut t = t;
    let spawned = t.spawned_ms().unwrap();
    t.handed_over(spawned - 1);
    assert_eq!(
        t.starts.handover.count(),
        0,
        "a record from before the spawn is an earlier bridge's"
    );
    t.handed_over(spawned + 400);
    t.handed_over(spawned + 400);
    assert_eq!(t.starts.handover.count(), 1);
}

#[test]
fn a_document_parses_and_escapes_tenant_names() {
    let dir = std::env::temp_dir().join(format!("emperor-metrics-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("q\"\\.sock");
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    // Two clients wait in the accept queue.
    let _waiting = [
        std::os::unix::net::UnixStream::connect(&path).unwrap(),
        std::os::unix::net::UnixStream::connect(&path).unwrap(),
    ];
    let spec = SocketSpec {
        name: None,
        addr: SocketAddrSpec::Unix(path.clone()),
    };
    use std::os::fd::AsFd;
    let tricky = "we\"ird\\name\nwith lines}.ini";
    let mut a = stats(tricky, "running");
    a.sockets = vec![SocketStat::of(&spec, listener.as_fd())];
    a.respawns = 3;
    a.track = timed_track();
    a.error = Some("bad key".into());
    let mut b = stats("b.ini", "throttled");
    b.attempts = 2;
    b.throttle = Some((Duration::from_millis(1500), 1_700_000_123));
    let mut r = stats("r.ini", "running");
    r.pid = nix::unistd::getpgrp().as_raw();
    r.replicas = Some(ReplicaSet {
        min: 2,
        max: 2,
        count: 2,
        others: vec![(
            crate::emperor::vassal::ReplicaStat {
                index: 1,
                pid: -1,
                state: "throttled",
                outdated: false,
            },
            None,
        )],
    });
    let text = document(&dir, &[Ok(a), Ok(b), Ok(r), Err("gone.ini".into())]);
    let _ = std::fs::remove_file(&path);
    let s = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

    // Every family once, HELP then TYPE, in order; every sample belongs to the family above it.
    let mut family = "";
    let mut seen = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            family = rest.split(' ').next().unwrap();
            assert!(!seen.contains(&family), "{family} twice");
            seen.push(family);
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).filter(|b| *b == family))
                .unwrap_or(name);
            assert_eq!(base, family, "{line}");
        }
    }
    assert_eq!(seen, ALL.iter().map(|d| d.name).collect::<Vec<_>>());

    // The tenant's name comes back whole through the escaping.
    let v = [("vassal", tricky)];
    assert_eq!(value(&s, "emperor_vassal_state", &[v[0], ("state", "running")]), 1.0);
    assert_eq!(find(&s, "emperor_vassal_state", &v).len(), STATES.len());
    assert_eq!(
        find(&s, "emperor_vassal_state", &v).iter().map(|x| x.2).sum::<f64>(),
        1.0
    );
    assert_eq!(value(&s, "emperor_vassal_restarts_total", &v), 3.0);
    assert_eq!(value(&s, "emperor_vassal_config_error", &v), 1.0);
    assert_eq!(value(&s, "emperor_vassal_throttle_delay_seconds", &v), 0.0);
    assert!(find(&s, "emperor_vassal_next_start_time_seconds", &v).is_empty());
    let sock = path.to_str().unwrap();
    let sl = [v[0], ("socket", sock)];
    assert_eq!(value(&s, "emperor_vassal_socket_accept_queue", &sl), 2.0);
    assert!(value(&s, "emperor_vassal_socket_backlog", &sl) >= 2.0);
    assert_eq!(value(&s, "emperor_vassal_socket_connections", &sl), 2.0);
    // The starts: buckets cumulative up to +Inf = count.
    let acc = [v[0], ("until", "accepting")];
    assert_eq!(value(&s, "emperor_vassal_start_seconds_count", &acc), 2.0);
    assert_eq!(
        value(
            &s,
            "emperor_vassal_start_seconds_bucket",
            &[acc[0], acc[1], ("le", "+Inf")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &s,
            "emperor_vassal_start_seconds_bucket",
            &[acc[0], acc[1], ("le", "0.025")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &s,
            "emperor_vassal_start_seconds_bucket",
            &[acc[0], acc[1], ("le", "0.05")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "emperor_vassal_start_seconds_bucket",
            &[acc[0], acc[1], ("le", "2.5")]
        ),
        2.0
    );
    assert!(value(&s, "emperor_vassal_start_seconds_sum", &acc) >= 2.03);
    assert_eq!(
        value(&s, "emperor_vassal_start_seconds_count", &[v[0], ("until", "ready")]),
        1.0
    );
    assert!(find(&s, "emperor_vassal_start_seconds_count", &[v[0], ("until", "handover")]).is_empty());
    let buckets: Vec<f64> = find(&s, "emperor_vassal_start_seconds_bucket", &acc)
        .iter()
        .map(|x| x.2)
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");

    // Throttled: attempts, delay and the next start.
    let b = [("vassal", "b.ini")];
    assert_eq!(value(&s, "emperor_vassal_state", &[b[0], ("state", "throttled")]), 1.0);
    assert_eq!(value(&s, "emperor_vassal_throttle_attempts", &b), 2.0);
    assert_eq!(value(&s, "emperor_vassal_throttle_delay_seconds", &b), 1.5);
    assert_eq!(value(&s, "emperor_vassal_next_start_time_seconds", &b), 1_700_000_123.0);

    // Replicas: instance 0 is the vassal itself (measured: our own process group), 1 is throttled.
    let r = [("vassal", "r.ini")];
    assert_eq!(value(&s, "emperor_vassal_replicas", &r), 2.0);
    assert_eq!(value(&s, "emperor_vassal_replicas_min", &r), 2.0);
    assert_eq!(value(&s, "emperor_vassal_replicas_max", &r), 2.0);
    let state = |replica, st| {
        value(
            &s,
            "emperor_vassal_replica_state",
            &[r[0], ("replica", replica), ("state", st)],
        )
    };
    assert_eq!(
        (state("0", "running"), state("1", "throttled"), state("1", "running")),
        (1.0, 1.0, 0.0)
    );
    assert_eq!(
        find(&s, "emperor_vassal_replica_state", &[r[0], ("replica", "1")]).len(),
        INSTANCE_STATES.len()
    );
    assert!(value(&s, "emperor_vassal_replica_memory_bytes", &[r[0], ("replica", "0")]) > 1e6);
    assert!(find(&s, "emperor_vassal_replica_memory_bytes", &[r[0], ("replica", "1")]).is_empty());
    assert_eq!(
        value(&s, "emperor_vassal_memory_bytes", &r),
        value(&s, "emperor_vassal_replica_memory_bytes", &[r[0], ("replica", "0")])
    );

    // An actor that did not answer: its state only.
    assert_eq!(
        value(
            &s,
            "emperor_vassal_state",
            &[("vassal", "gone.ini"), ("state", "unresponsive")]
        ),
        1.0
    );
    assert!(find(&s, "emperor_vassal_info", &[("vassal", "gone.ini")]).is_empty());

    // The emperor's own.
    let count = |st| value(&s, "emperor_vassals", &[("state", st)]);
    assert_eq!(
        (
            count("running"),
            count("throttled"),
            count("unresponsive"),
            count("held")
        ),
        (2.0, 1.0, 1.0, 0.0)
    );
    assert_eq!(
        value(&s, "emperor_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );
    assert!(value(&s, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(value(&s, "process_open_fds", &[]) >= 3.0);
    assert!(value(&s, "process_start_time_seconds", &[]) > 1.6e9);
    let _ = std::fs::remove_dir(&dir);
}

#[test]
fn requests() {
    let get = |head: &str| respond(head.as_bytes());
    let ok = Reply::Metrics { head: false };
    assert_eq!(get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), ok);
    assert_eq!(get("GET /metrics HTTP/1.0\r\n\r\n"), ok);
    assert_eq!(get("GET /metrics?name[]=up HTTP/1.0\n\n"), ok);
    assert_eq!(get("GET http://127.0.0.1:9100/metrics HTTP/1.1\r\nHost: y\r\n\r\n"), ok);
    assert_eq!(
        get("HEAD /metrics HTTP/1.1\r\nhost: x\r\n\r\n"),
        Reply::Metrics { head: true }
    );
    let status = |head: &str| match get(head) {
        Reply::Status(code, _) => code,
        r => panic!("{head:?}: {r:?}"),
    };
    assert_eq!(status("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 404);
    assert_eq!(status("GET /metrics/ HTTP/1.0\r\n\r\n"), 404);
    assert_eq!(status("GET http://x HTTP/1.0\r\n\r\n"), 404);
    assert_eq!(status("POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), 405);
    assert_eq!(status("get /metrics HTTP/1.0\r\n\r\n"), 405);
    assert_eq!(status("GET /metrics HTTP/1.1\r\n\r\n"), 400, "HTTP/1.1 needs a Host");
    assert_eq!(status("GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
    assert_eq!(status("GET * HTTP/1.0\r\n\r\n"), 400);
    assert_eq!(status("GET /metrics HTTP/2.0\r\n\r\n"), 400);
    assert_eq!(status("GET /metrics HTTP/1.0\r\n"), 400, "no blank line");
    assert_eq!(status("GET /metrics HTTP/1.0\r\nbad header\r\n\r\n"), 400);
    assert_eq!(status("\r\n"), 400);
    let many = format!(
        "GET /metrics HTTP/1.0\r\n{}\r\n",
        "A: b\r\n".repeat(http::MAX_HEADERS + 1)
    );
    assert_eq!(status(&many), 431);
    let long = format!("GET /metrics HTTP/1.0\r\nA: {}\r\n\r\n", "x".repeat(http::MAX_HEAD));
    assert_eq!(status(&long), 431);
}

#[test]
fn answers() {
    let doc = "# HELP x y\n# TYPE x gauge\nx 1\n";
    let get = String::from_utf8(Reply::Metrics { head: false }.render(doc)).unwrap();
    assert_eq!(
        get,
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
             Connection: close\r\n\r\n{doc}",
            doc.len()
        )
    );
    let head = String::from_utf8(Reply::Metrics { head: true }.render(doc)).unwrap();
    assert_eq!(head, get.strip_suffix(doc).unwrap(), "HEAD: the same head, no body");
    let not_allowed = String::from_utf8(Reply::Status(405, "Method Not Allowed").render(doc)).unwrap();
    assert!(not_allowed.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
    assert!(not_allowed.contains("\r\nAllow: GET, HEAD\r\n"));
    let (head, body) = not_allowed.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
}

#[test]
fn the_readme_lists_every_metric() {
    let readme = include_str!("../../../../README.md");
    let section = readme
        .split("\n### Metrics")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a Metrics section");
    for def in ALL {
        assert!(
            section.contains(&format!("| `{}`", def.name)),
            "README's table lacks {}",
            def.name
        );
    }
}
