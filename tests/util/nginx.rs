//! A private nginx (Debian's) for tests, configured around the README's documented `server` block
//! (or its `mail` block), and HTTP requests to it with a Host header.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{Harness, LONG, descendants, kill};

pub const NGINX: &str = "/usr/sbin/nginx";

/// The README's block, as documented (include path and listen line are replaced by the test's).
pub fn readme_server_block() -> String {
    readme_block("Routing by Host with nginx")
}

/// The first nginx code block of the README's section `heading`, as documented.
pub fn readme_block(heading: &str) -> String {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README.md");
    let section = readme
        .split(&format!("\n## {heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("README has a {heading:?} section"));
    let block = section
        .split("```nginx\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("an nginx code block in that section");
    block.to_owned()
}

/// A private nginx with its own prefix, config, pid file and logs; SIGTERMed (and waited for) on drop.
pub struct Nginx {
    child: Option<Child>,
    dir: PathBuf,
}

impl Nginx {
    /// Writes `nginx.conf` around the README block, with `map` included and listening on 127.0.0.1:`port`.
    pub fn configure(dir: &Path, port: u16, map: &Path) -> Nginx {
        let block = readme_server_block();
        let ours = block
            .replace(
                "include /etc/nginx/emperor-routes.conf;",
                &format!("include {};", map.display()),
            )
            .replace(
                "listen 80 default_server;",
                &format!("listen 127.0.0.1:{port} default_server;"),
            );
        assert!(
            ours.contains(&format!("include {};", map.display())) && ours.contains(&format!("127.0.0.1:{port}")),
            "the README block changed shape:\n{block}"
        );
        Nginx::http(dir, &ours)
    }

    /// Writes `nginx.conf` with an `http` block of `blocks` (no access log, temp paths in `dir`).
    pub fn http(dir: &Path, blocks: &str) -> Nginx {
        let http = format!(
            "http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             {blocks}\n}}\n",
            d = dir.display(),
        );
        Nginx::with_conf(dir, "warn", "", &http)
    }

    /// Writes `nginx.conf` in `dir`: one master, one worker, pid file and logs (from `level` up) in `dir`,
    /// `top` before the `events` block (`load_module`), then `body` (an `http` or `mail` block).
    pub fn with_conf(dir: &Path, level: &str, top: &str, body: &str) -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: run scripts/setup (installs nginx-light)"
        );
        fs::create_dir_all(dir.join("logs")).unwrap();
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\npid {d}/nginx.pid;\n\
             error_log {d}/logs/error.log {level};\n{top}events {{ worker_connections 1024; }}\n{body}",
            d = dir.display(),
        );
        fs::write(dir.join("nginx.conf"), conf).unwrap();
        Nginx {
            child: None,
            dir: dir.to_path_buf(),
        }
    }

    pub fn base_args(&self) -> Vec<String> {
        vec![
            "-p".into(),
            self.dir.to_string_lossy().into_owned(),
            "-c".into(),
            self.dir.join("nginx.conf").to_string_lossy().into_owned(),
        ]
    }

    /// What the emperor runs after each change of the map.
    pub fn reload_command(&self) -> String {
        let mut argv = vec![NGINX.to_owned()];
        argv.extend(self.base_args());
        argv.extend(["-s".into(), "reload".into()]);
        shlex::try_join(argv.iter().map(String::as_str)).unwrap()
    }

    /// `nginx -t` on the config: Ok or nginx's message.
    pub fn test_config(&self) -> Result<(), String> {
        let out = Command::new(NGINX)
            .args(self.base_args())
            .arg("-t")
            .stdin(Stdio::null())
            .output()
            .expect("nginx -t");
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn start(&mut self) {
        let child = Command::new(NGINX)
            .args(self.base_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        self.child = Some(child);
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("logs/error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    /// SIGTERM makes the master stop its workers; SIGKILL of the master alone would orphan them.
    fn drop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let master = child.id() as i32;
        let workers = descendants(master);
        kill(master, libc::SIGTERM);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        // Workers of the reloads too (children of the master, still listed until it exits).
        for w in workers.into_iter().chain(descendants(master)) {
            kill(w, libc::SIGKILL);
        }
    }
}

/// One HTTP/1.0 GET with a Host header: (status code, body) or the error.
pub fn get(port: u16, host: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| format!("read: {e}"))?;
    let code = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line: {buf:?}"))?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// Polls until `host` answers with `code` and a body containing `body`; bounded by `LONG`.
pub fn wait_answer(h: &Harness, nginx: &Nginx, port: u16, host: &str, code: u16, body: &str) {
    wait_answer_within(h, nginx, port, host, code, body, LONG);
}

/// Polls until `host` answers with `code` and a body containing `body`; panics after `deadline`
/// with the last answer, nginx's error log and the emperor's output.
pub fn wait_answer_within(
    h: &Harness,
    nginx: &Nginx,
    port: u16,
    host: &str,
    code: u16,
    body: &str,
    deadline: Duration,
) {
    let start = Instant::now();
    let mut last = Err(String::from("no request yet"));
    while start.elapsed() < deadline {
        last = get(port, host);
        if let Ok((c, b)) = &last
            && *c == code
            && b.contains(body)
        {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "Host {host}: expected {code} with {body:?} within {deadline:?}, last answer {last:?}\n--- nginx error log:\n{}{}",
        nginx.error_log(),
        h.tail()
    );
}
