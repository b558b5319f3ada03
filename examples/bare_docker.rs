//! `bare_docker`: the baseline for `bench/docker_spawn.py` — what starting a container costs with bollard alone,
//! no emperor, no bridge, no shim.
//!
//! It connects to Docker (`DOCKER_HOST`, else /var/run/docker.sock), creates a container of `--image` (default
//! `emperor-test/testapp`) with network `none` and the host directory `--dir` bind-mounted at `/s`, whose command
//! makes testapp bind and serve `/s/app.sock` itself (`--bind-unix`), starts it, polls `<dir>/app.sock` every
//! 0.5 ms until it answers an HTTP GET with 200, then removes the container (force) and prints one line:
//!
//! `bare connect_ms=<connect+negotiate> create_ms=<..> start_ms=<until start returned> answer_ms=<after start>
//!  total_ms=<create+start+first answer> remove_ms=<..>`
//!
//! Options: `--dir <path>` (required; created if missing), `--image <ref>`, `--name <container name>`,
//! `--label KEY=VALUE` (repeatable; lets a bench sweep its containers), `--like-bridge` (Tty on and attach to the
//! output before start, as the emperor's bridge does, to see what that costs), `--timeout <s>` (default 30).
//!
//!     cargo build --release --example bare_docker

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::exit;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{AttachContainerOptions, CreateContainerOptions, RemoveContainerOptions};
use futures_util::StreamExt;

struct Opts {
    dir: PathBuf,
    image: String,
    name: Option<String>,
    labels: HashMap<String, String>,
    like_bridge: bool,
    timeout: Duration,
}

fn usage(msg: &str) -> ! {
    eprintln!("bare_docker: {msg}");
    exit(2);
}

fn parse_args() -> Opts {
    let mut dir = None;
    let mut o = Opts {
        dir: PathBuf::new(),
        image: "emperor-test/testapp".into(),
        name: None,
        labels: HashMap::new(),
        like_bridge: false,
        timeout: Duration::from_secs(30),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |flag: &str| args.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match a.as_str() {
            "--dir" => dir = Some(PathBuf::from(val("--dir"))),
            "--image" => o.image = val("--image"),
            "--name" => o.name = Some(val("--name")),
            "--label" => {
                let kv = val("--label");
                let (k, v) = kv.split_once('=').unwrap_or((&kv, ""));
                o.labels.insert(k.to_string(), v.to_string());
            }
            "--like-bridge" => o.like_bridge = true,
            "--timeout" => {
                o.timeout = Duration::from_secs_f64(val("--timeout").parse().unwrap_or_else(|_| usage("bad --timeout")))
            }
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    o.dir = dir.unwrap_or_else(|| usage("--dir is required"));
    o
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One GET over the unix socket; true on a 200 answer.
fn answers(sock: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.1 200")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let o = parse_args();
    if let Err(e) = std::fs::create_dir_all(&o.dir) {
        usage(&format!("cannot create {}: {e}", o.dir.display()));
    }
    let sock = o.dir.join("app.sock");
    let _ = std::fs::remove_file(&sock);

    let t = Instant::now();
    let docker = match Docker::connect_with_local_defaults() {
        Ok(d) => d,
        Err(e) => usage(&format!("cannot reach Docker: {e}")),
    };
    let docker = match docker.negotiate_version().await {
        Ok(d) => d,
        Err(e) => usage(&format!("cannot reach Docker: {e}")),
    };
    let connect = t.elapsed();

    let body = ContainerCreateBody {
        image: Some(o.image.clone()),
        cmd: Some(vec!["--bind-unix".into(), "/s/app.sock".into()]),
        labels: Some(o.labels.clone()),
        tty: Some(o.like_bridge),
        attach_stdout: Some(o.like_bridge),
        attach_stderr: Some(o.like_bridge),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            mounts: Some(vec![Mount {
                target: Some("/s".into()),
                source: Some(o.dir.to_string_lossy().into_owned()),
                typ: Some(MountType::BIND),
                read_only: Some(false),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };

    let t0 = Instant::now();
    let created = match docker
        .create_container(
            Some(CreateContainerOptions {
                name: o.name.clone(),
                ..Default::default()
            }),
            body,
        )
        .await
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bare_docker: create: {e}");
            exit(1);
        }
    };
    let id = created.id;
    let create = t0.elapsed();

    let result = run(&docker, &id, &o, &sock, t0).await;

    let t3 = Instant::now();
    let rm = docker
        .remove_container(
            &id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await;
    let remove = t3.elapsed();
    let _ = std::fs::remove_file(&sock);
    if let Err(e) = rm {
        eprintln!("bare_docker: remove {id}: {e}");
    }
    match result {
        Ok((start, answer, total)) => println!(
            "bare connect_ms={:.2} create_ms={:.2} start_ms={:.2} answer_ms={:.2} total_ms={:.2} remove_ms={:.2}",
            ms(connect),
            ms(create),
            ms(start),
            ms(answer),
            ms(total),
            ms(remove)
        ),
        Err(e) => {
            eprintln!("bare_docker: {e}");
            exit(1);
        }
    }
}

/// Start (attaching first with `--like-bridge`), then poll until the first answer: (start, answer, total).
async fn run(
    docker: &Docker,
    id: &str,
    o: &Opts,
    sock: &Path,
    t0: Instant,
) -> Result<(Duration, Duration, Duration), String> {
    let t1 = Instant::now();
    if o.like_bridge {
        let attach = docker
            .attach_container(
                id,
                Some(AttachContainerOptions {
                    stream: true,
                    logs: true,
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| format!("attach: {e}"))?;
        tokio::spawn(attach.output.for_each(|_| async {}));
    }
    docker
        .start_container(id, None)
        .await
        .map_err(|e| format!("start: {e}"))?;
    let start = t1.elapsed();
    let t2 = Instant::now();
    while !answers(sock) {
        if t2.elapsed() > o.timeout {
            return Err(format!("no answer on {} within {:?}", sock.display(), o.timeout));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    Ok((start, t2.elapsed(), t0.elapsed()))
}
