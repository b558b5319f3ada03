//! `replicas = N | MIN..MAX`: several instances of one vassal on its sockets, spread by the kernel, replaced one
//! by one on a reload, and scaled on the accept queue; for process vassals and Docker vassals.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::docker::{DockerSweep, testapp_vassal, unique_name};
use crate::util::{EMPEROR, Harness, LONG, alive, http_get_unix};

/// What one request of a [`Load`] got: when it ended, and the answering pid or the error.
type Answer = (Instant, Result<i32, String>);

/// `clients` threads each sending one request after another on a unix socket until stopped, at most
/// `limit` long (a load test stops by itself).
struct Load {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    threads: Vec<thread::JoinHandle<()>>,
    started: Instant,
}

impl Load {
    fn start(sock: &Path, clients: usize, limit: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, answers, sock) = (stop.clone(), answers.clone(), sock.to_path_buf());
                thread::spawn(move || {
                    let t0 = Instant::now();
                    while !stop.load(Ordering::SeqCst) && t0.elapsed() < limit {
                        let got = http_get_unix(&sock, Duration::from_secs(30))
                            .map_err(|e| e.to_string())
                            .and_then(|body| pid_of(&body).ok_or(format!("no pid in {body:?}")));
                        answers.lock().unwrap().push((Instant::now(), got));
                    }
                })
            })
            .collect();
        Load {
            stop,
            answers,
            threads,
            started: Instant::now(),
        }
    }

    fn served(&self) -> usize {
        self.answers.lock().unwrap().iter().filter(|(_, r)| r.is_ok()).count()
    }

    /// Distinct pids that answered since `since`.
    fn pids_since(&self, since: Instant) -> HashSet<i32> {
        let a = self.answers.lock().unwrap();
        a.iter()
            .filter(|(t, _)| *t >= since)
            .filter_map(|(_, r)| r.as_ref().ok().copied())
            .collect()
    }

    /// Stops the clients and returns every answer, once the harness checked that none failed.
    fn finish_without_failures(self, h: &Harness) -> Vec<Answer> {
        let answers = self.finish();
        let failed: Vec<&String> = answers.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
        h.check(
            failed.is_empty(),
            format!(
                "{} of {} requests failed: {:?}",
                failed.len(),
                answers.len(),
                failed.first()
            ),
        );
        answers
    }

    /// Stops the clients and returns every answer.
    fn finish(mut self) -> Vec<Answer> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        std::mem::take(&mut *self.answers.lock().unwrap())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn pids_of(records: &[crate::util::Record]) -> HashSet<i32> {
    records.iter().map(|r| r.pid()).collect()
}

fn pids_i64(pids: &HashSet<i32>) -> HashSet<i64> {
    pids.iter().map(|p| i64::from(*p)).collect()
}

fn pid_of(body: &str) -> Option<i32> {
    body.split("pid=").nth(1)?.split_whitespace().next()?.parse().ok()
}

/// A testapp process vassal `<name>.ini` taking `work_ms` over each answer, one connection at a time, with
/// `extra` `[emperor]` lines.
fn slow_app(h: &Harness, name: &str, work_ms: u64, extra: &str) -> PathBuf {
    h.write_vassal(
        &format!("{name}.ini"),
        &h.app_ini(name, &format!("--work {work_ms}"))
            .replace("[emperor]\n", &format!("[emperor]\n{extra}")),
    );
    h.sock(&format!("{name}.sock"))
}

#[test]
fn fixed_replicas_share_one_socket_and_a_touch_replaces_them_one_by_one() {
    let mut h = Harness::new("replicas_fixed");
    let sock = slow_app(&h, "rep", 50, "replicas = 3\n");
    h.write_vassal(
        "talk.ini",
        &format!(
            "[emperor]\nreplicas = 2\nsocket = {}\nexec = /bin/sh -c 'echo started; exec sleep 600'\n",
            h.sock("talk.sock").display()
        ),
    );
    let stats = h.root.join("stats.sock");
    h.start(&["--emperor-stats", stats.to_str().unwrap()]);
    let first = h.wait_starts("rep", 3, LONG);
    let pids: HashSet<i32> = first.iter().map(|r| r.pid()).collect();
    h.check(pids.len() == 3, format!("three processes: {pids:?}"));
    h.wait_http_unix(&sock, LONG);

    // One listening queue, three processes in accept: 12 concurrent clients are answered by more than one.
    let load = Load::start(&sock, 12, Duration::from_secs(60));
    h.wait_for(
        || load.pids_since(load.started).len() == 3,
        LONG,
        "answers from all three replicas",
    );
    // The stats document and `emperor status` show each replica.
    let status = |json: bool| {
        let mut cmd = std::process::Command::new(EMPEROR);
        cmd.args(["status", "--stats", stats.to_str().unwrap()]);
        if json {
            cmd.arg("--json");
        }
        String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
    };
    h.wait_for(
        || {
            let doc: serde_json::Value = serde_json::from_str(&status(true)).unwrap_or_default();
            let v = doc["vassals"]
                .as_array()
                .and_then(|l| l.iter().find(|v| v["id"] == "rep.ini"))
                .cloned();
            v.is_some_and(|v| {
                let r = &v["replicas"];
                let pids: HashSet<i64> = r["instances"]
                    .as_array()
                    .map(|l| l.iter().filter_map(|i| i["pid"].as_i64()).collect())
                    .unwrap_or_default();
                r["count"] == 3 && r["min"] == 3 && pids == pids_i64(&pids_of(&first))
            })
        },
        LONG,
        "the stats document's replicas: count 3 and the three pids",
    );
    let table = status(false);
    for k in 0..3 {
        h.check(
            table.contains(&format!("  #{k}")),
            format!("status row for #{k}:\n{table}"),
        );
    }
    // Each replica's output is tagged with its number.
    for k in 0..2 {
        h.wait_for(
            || h.stdout().contains(&format!("[talk.ini#{k}] started\n")),
            LONG,
            &format!("replica {k}'s output tagged #{k}"),
        );
    }
    h.wait_vlog("rep.ini#2", "spawned pid", LONG);

    // A touch under load: three new processes, the old ones gone, nothing failed.
    let before = load.served();
    h.touch_vassal("rep.ini");
    let all = h.wait_starts("rep", 6, Duration::from_secs(30));
    let new: HashSet<i32> = all[3..].iter().map(|r| r.pid()).collect();
    for pid in &pids {
        h.wait_dead(*pid, LONG, "an old replica after the touch");
    }
    let after_reload = Instant::now();
    h.wait_for(
        || load.pids_since(after_reload) == new,
        LONG,
        "answers from each new replica, and only from them",
    );
    let answers = load.finish_without_failures(&h);
    h.check(answers.len() > before, "requests were served during the reload");
    // The log names the one-by-one replacement.
    h.check(
        h.stderr().contains("replacing it with the new config"),
        "the replicas are replaced one by one",
    );

    // Only the count changes: the highest replica stops, nothing else restarts.
    let text = std::fs::read_to_string(h.vassal("rep.ini")).unwrap();
    h.write_vassal("rep.ini", &text.replace("replicas = 3\n", "replicas = 2\n"));
    h.wait_vlog("rep.ini", "only replicas changed", LONG);
    h.wait_for(
        || new.iter().filter(|p| alive(**p)).count() == 2,
        LONG,
        "one replica stopped after replicas = 2",
    );
    h.check(h.starts("rep").len() == 6, "no new process for a new count");

    // The file goes: every replica goes, and the socket.
    h.remove_vassal("rep.ini");
    for pid in &new {
        h.wait_dead(*pid, LONG, "a replica after its file went");
    }
    h.wait_for(|| !sock.exists(), LONG, "the socket unlinked");
}

#[test]
fn auto_scaling_follows_the_accept_queue_up_to_max_and_back_to_min() {
    let mut h = Harness::new("replicas_auto");
    // A single-threaded app taking 100 ms per request: one replica serves 10 requests a second at most.
    let sock = slow_app(&h, "auto", 100, "replicas = 1..4\nreplicas-up = 1\nreplicas-down = 2\n");
    h.start(&[]);
    h.wait_starts("auto", 1, LONG);
    h.wait_http_unix(&sock, LONG);
    h.check(h.starts("auto").len() == 1, "MIN = 1: one process without load");

    // 20 clients: connections wait in the queue, so replicas are added one by one up to 4.
    let load = Load::start(&sock, 20, Duration::from_secs(90));
    h.wait_log("scaling up to 4 replicas", Duration::from_secs(60));
    let at_four = Instant::now();
    h.wait_for(
        || load.pids_since(at_four).len() == 4,
        LONG,
        "answers from four replicas",
    );
    // Throughput at 4 against at 1: the answers per second before a second pid answered, and over a window
    // once four answer. Compared with each other in one run, not against a clock.
    let window_start = Instant::now();
    thread::sleep(Duration::from_secs(3));
    let touched_at = h.stderr().len();
    // A touch at full scale: the four are replaced one by one under the load.
    h.touch_vassal("auto.ini");
    h.wait_starts("auto", 8, Duration::from_secs(40));
    h.wait_vlog_after(touched_at, "auto.ini#3", "spawned pid", LONG);
    let answers = load.finish_without_failures(&h);
    let first_pid = answers.iter().find_map(|(_, r)| r.as_ref().ok().copied()).unwrap();
    let (t0, mut t_second) = (answers[0].0, None);
    let mut at_one = 0usize;
    for (t, r) in &answers {
        match r {
            Ok(p) if *p == first_pid && t_second.is_none() => at_one += 1,
            Ok(_) if t_second.is_none() => t_second = Some(*t),
            _ => {}
        }
    }
    let one_secs = t_second.unwrap().duration_since(t0).as_secs_f64().max(0.5);
    let window_end = window_start + Duration::from_secs(3);
    let at_four_n = answers
        .iter()
        .filter(|(t, r)| r.is_ok() && *t >= window_start && *t < window_end)
        .count();
    let (rate_one, rate_four) = (at_one as f64 / one_secs, at_four_n as f64 / 3.0);
    eprintln!("replicas: {rate_one:.1} answers/s with 1 replica, {rate_four:.1} with 4");
    h.check(
        rate_four > 2.5 * rate_one,
        format!("4 replicas serve well over twice what 1 does: {rate_four:.1}/s vs {rate_one:.1}/s"),
    );

    // The load is gone: back to one, one step per 2 s without waiting connections.
    h.wait_log("scaling down to 1 replica", Duration::from_secs(40));
    let live: Vec<i32> = h.starts("auto").iter().map(|r| r.pid()).filter(|p| alive(*p)).collect();
    h.wait_for(
        || h.starts("auto").iter().filter(|r| alive(r.pid())).count() == 1,
        LONG,
        &format!("one live process after scaling down (were {live:?})"),
    );
    let survivor = h.starts("auto").into_iter().find(|r| alive(r.pid())).unwrap().pid();
    let r = http_get_unix(&sock, LONG);
    h.check(
        r.as_ref().is_ok_and(|b| pid_of(b) == Some(survivor)),
        format!("the last replica serves: {r:?}"),
    );
}

#[test]
fn docker_replicas_are_containers_named_after_the_first() {
    let sweep = DockerSweep::new();
    let mut h = Harness::new("replicas_docker");
    let name = unique_name("rep");
    let file = format!("{name}.ini");
    let sock = h.sock(&format!("{name}.sock"));
    h.write_vassal(&file, &testapp_vassal(&h, &name, "replicas = 2\n"));
    let args = sweep.emperor_args();
    h.start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    h.wait_starts(&name, 2, Duration::from_secs(40));
    let names = || {
        let mut n: Vec<String> = sweep
            .containers()
            .into_iter()
            .filter(|(_, _, state)| state == "running")
            .map(|(_, n, _)| n)
            .collect();
        n.sort();
        n
    };
    let want = vec![file.clone(), format!("{file}.r1")];
    h.wait_for(|| names() == want, LONG, &format!("containers {want:?}"));
    let ids_before: HashSet<String> = sweep.containers().into_iter().map(|(id, _, _)| id).collect();
    h.wait_http_unix(&sock, LONG);

    // A touch under load replaces both containers, one after the other, with nothing failed.
    let load = Load::start(&sock, 4, Duration::from_secs(90));
    h.wait_for(|| load.served() > 20, LONG, "requests before the touch");
    h.touch_vassal(&file);
    h.wait_starts(&name, 4, Duration::from_secs(60));
    h.wait_for(
        || {
            let now: Vec<_> = sweep.containers();
            now.len() == 2 && now.iter().all(|(id, _, s)| s == "running" && !ids_before.contains(id))
        },
        Duration::from_secs(60),
        "two new containers and the old ones removed",
    );
    let at = load.served();
    h.wait_for(|| load.served() > at + 20, LONG, "requests after the touch");
    load.finish_without_failures(&h);
    h.check(
        names() == want,
        format!("the same names after the touch: {:?}", names()),
    );

    h.remove_vassal(&file);
    h.wait_for(
        || sweep.containers().is_empty(),
        Duration::from_secs(60),
        "both containers removed",
    );
}
