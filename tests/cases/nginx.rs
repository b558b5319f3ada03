//! The product's main use, end to end: a real nginx (Debian's) on 127.0.0.1 proxies to the unix socket
//! of a Docker vassal that runs with network `none`, and a restart of the vassal under load loses no
//! request.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::docker::{DockerSweep, unique_name};
use crate::util::nginx::Nginx;
use crate::util::{Harness, LONG, free_port};

/// A private nginx (its own prefix, config, pid file and logs under `dir`) proxying 127.0.0.1:`port` to
/// the unix socket `upstream_sock`, started; stopped on drop.
fn start_nginx(dir: &Path, port: u16, upstream_sock: &Path) -> Nginx {
    let mut nginx = Nginx::http(
        dir,
        &format!(
            "upstream app {{ server unix:{sock}; }}\n\
             server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; }} }}\n",
            sock = upstream_sock.display(),
        ),
    );
    nginx.start();
    nginx
}

/// One HTTP/1.0 GET to nginx; Ok(status line) or the error.
fn get(port: u16) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| format!("read: {e}"))?;
    let status = buf.lines().next().unwrap_or("").to_string();
    if status.contains(" 200 ") && buf.contains("hello from") {
        Ok(status)
    } else {
        Err(format!(
            "bad answer: {}",
            buf.lines().take(3).collect::<Vec<_>>().join(" | ")
        ))
    }
}

#[test]
fn nginx_to_a_docker_vassal_loses_no_request_across_a_restart_and_an_image_swap() {
    let sweep = DockerSweep::new();
    let mut h = Harness::new("nginx_docker");
    let name = unique_name("web");
    let file = format!("{name}.ini");
    let sock = h.sock(&format!("{name}.sock"));
    h.write_vassal(&file, &crate::util::docker::testapp_vassal(&h, &name, ""));
    let mut args = sweep.emperor_args();
    args.extend(["--reload-mercy", "10"].map(String::from));
    h.start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    h.wait_starts(&name, 1, LONG);
    h.wait_http_unix(&sock, LONG);

    let port = free_port();
    let _nginx = start_nginx(&h.root.join("nginx"), port, &sock);
    let start = Instant::now();
    while get(port).is_err() {
        assert!(
            start.elapsed() < LONG,
            "nginx never answered 200 on 127.0.0.1:{port}{}",
            h.tail()
        );
        thread::sleep(Duration::from_millis(50));
    }

    // A bounded load: 4 clients, until the restart is done and a little beyond, at most 60 s.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            thread::spawn(move || {
                let t0 = Instant::now();
                while !stop.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(60) {
                    match get(port) {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            })
        })
        .collect();

    h.wait_for(
        || ok.load(Ordering::SeqCst) > 50,
        LONG,
        "some requests under load before the restart",
    );
    let old_pid = h.starts(&name)[0].pid();
    h.touch_vassal(&file);
    h.wait_starts(&name, 2, Duration::from_secs(30));
    let at_restart = ok.load(Ordering::SeqCst);
    h.wait_for(
        || ok.load(Ordering::SeqCst) > at_restart + 50,
        LONG,
        "requests served by the new container",
    );

    // Swap to a new image under the same load: the new container starts beside the old one, which
    // is stopped only once the new one is ready (an overlapping reload).
    let text = fs::read_to_string(h.vassal(&file)).unwrap();
    h.write_vassal(
        &file,
        &text.replace(
            "docker-image = emperor-test/testapp\n",
            "docker-image = emperor-test/testapp:v2\n",
        ),
    );
    h.wait_starts(&name, 3, Duration::from_secs(30));
    h.wait_for(
        || {
            crate::util::docker::inspect(&file, "{{.Config.Image}}")
                .is_some_and(|i| i.trim() == "emperor-test/testapp:v2")
        },
        Duration::from_secs(30),
        "the vassal's container to run the new image",
    );
    h.wait_for(
        || sweep.containers().len() == 1,
        Duration::from_secs(30),
        "the old containers to be stopped and removed under load",
    );
    let at_swap = ok.load(Ordering::SeqCst);
    h.wait_for(
        || ok.load(Ordering::SeqCst) > at_swap + 50,
        LONG,
        "requests served after the image swap",
    );
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    h.check(
        failures.is_empty(),
        format!(
            "{} failed requests of {} (old pid {old_pid}): {:?}",
            failures.len(),
            ok.load(Ordering::SeqCst),
            &failures[..failures.len().min(5)]
        ),
    );
}
