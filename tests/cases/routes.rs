//! Host routing (`--nginx-map`): a real nginx (Debian's) on 127.0.0.1 includes the file the emperor
//! keeps and runs the README's `server` block verbatim; each Host reaches its own vassal, unknown
//! Hosts get nginx's 404, and adding or deleting a vassal file rewrites the map and reloads nginx.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{Harness, LONG, descendants, free_port, kill};

const NGINX: &str = "/usr/sbin/nginx";

/// The README's block, as documented (include path and listen line are replaced by the test's).
fn readme_server_block() -> String {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README.md");
    let section = readme
        .split("\n## Routing by Host with nginx\n")
        .nth(1)
        .expect("README has a \"Routing by Host with nginx\" section");
    let block = section
        .split("```nginx\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("an nginx code block in that section");
    block.to_owned()
}

/// A private nginx with its own prefix, config, pid file and logs; SIGTERMed (and waited for) on drop.
struct Nginx {
    child: Option<Child>,
    dir: PathBuf,
}

impl Nginx {
    /// Writes `nginx.conf` around the README block, with `map` included and listening on 127.0.0.1:`port`.
    fn configure(dir: &Path, port: u16, map: &Path) -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: run scripts/setup (installs nginx-light)"
        );
        fs::create_dir_all(dir.join("logs")).unwrap();
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
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\npid {d}/nginx.pid;\n\
             error_log {d}/logs/error.log warn;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             {ours}\n}}\n",
            d = dir.display(),
        );
        fs::write(dir.join("nginx.conf"), conf).unwrap();
        Nginx {
            child: None,
            dir: dir.to_path_buf(),
        }
    }

    fn base_args(&self) -> Vec<String> {
        vec![
            "-p".into(),
            self.dir.to_string_lossy().into_owned(),
            "-c".into(),
            self.dir.join("nginx.conf").to_string_lossy().into_owned(),
        ]
    }

    /// What the emperor runs after each change of the map.
    fn reload_command(&self) -> String {
        let mut argv = vec![NGINX.to_owned()];
        argv.extend(self.base_args());
        argv.extend(["-s".into(), "reload".into()]);
        shlex::try_join(argv.iter().map(String::as_str)).unwrap()
    }

    /// `nginx -t` on the config: Ok or nginx's message.
    fn test_config(&self) -> Result<(), String> {
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

    fn start(&mut self) {
        let child = Command::new(NGINX)
            .args(self.base_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        self.child = Some(child);
    }

    fn error_log(&self) -> String {
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
fn get(port: u16, host: &str) -> Result<(u16, String), String> {
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
fn wait_answer(h: &Harness, nginx: &Nginx, port: u16, host: &str, code: u16, body: &str) {
    let start = Instant::now();
    let mut last = Err(String::from("no request yet"));
    while start.elapsed() < LONG {
        last = get(port, host);
        if let Ok((c, b)) = &last
            && *c == code
            && b.contains(body)
        {
            return;
        }
        thread::sleep(Duration::from_millis(30));
    }
    panic!(
        "Host {host}: expected {code} with {body:?}, last answer {last:?}\n--- nginx error log:\n{}{}",
        nginx.error_log(),
        h.tail()
    );
}

/// A testapp vassal with one unix socket and the given routing lines.
fn routed_ini(h: &Harness, name: &str, routes: &str) -> String {
    format!("{}{routes}\n", h.app_ini(name, ""))
}

#[test]
fn nginx_routes_each_host_to_its_vassal_and_follows_changes() {
    let mut h = Harness::new("routes_nginx");
    let map = h.root.join("nginx").join("routes.conf");
    let port = free_port();
    let mut nginx = Nginx::configure(&h.root.join("nginx"), port, &map);
    h.write_vassal("a.ini", &routed_ini(&h, "a.ini", "domains = a.test"));
    h.write_vassal("b.ini", &routed_ini(&h, "b.ini", "domains = b.test"));
    let reload = nginx.reload_command();
    let map_arg = map.to_string_lossy().into_owned();
    h.start(&["--nginx-map", &map_arg, "--nginx-reload", &reload]);

    // Written at start-up; nginx is not running yet, so that first reload fails, is logged and is not fatal.
    h.wait_for(
        || fs::read_to_string(&map).is_ok_and(|t| t.contains("a.test") && t.contains("b.test")),
        LONG,
        "the map with a.test and b.test",
    );
    h.wait_log("nginx map: the reload command", LONG);
    nginx
        .test_config()
        .unwrap_or_else(|e| panic!("nginx -t refused the generated map: {e}{}", h.tail()));
    nginx.start();

    wait_answer(&h, &nginx, port, "a.test", 200, "hello from a.ini");
    wait_answer(&h, &nginx, port, "b.test", 200, "hello from b.ini");
    wait_answer(&h, &nginx, port, "c.test", 404, "no app for this host");
    // Any case, and a port in the Host header: nginx's $host is the lowercase name alone.
    wait_answer(&h, &nginx, port, "A.Test:8080", 200, "hello from a.ini");

    // A third vassal: the map is rewritten, nginx reloaded, c.test reaches it.
    let written = h.stderr().matches("nginx map: wrote").count();
    h.write_vassal("c.ini", &routed_ini(&h, "c.ini", "domain = c.test"));
    wait_answer(&h, &nginx, port, "c.test", 200, "hello from c.ini");
    h.wait_log("nginx map: ran `", LONG);
    h.check(
        h.stderr().matches("nginx map: wrote").count() == written + 1,
        "one write for one added vassal",
    );

    // A broken edit keeps the vassal's routes (its instance keeps running on the last good config).
    h.write_vassal(
        "a.ini",
        &format!("{}sockte = x\n", routed_ini(&h, "a.ini", "domains = a.test")),
    );
    h.wait_log("sockte", LONG);
    wait_answer(&h, &nginx, port, "a.test", 200, "hello from a.ini");
    h.check(
        fs::read_to_string(&map).unwrap().contains("a.test"),
        "a.test stays in the map",
    );

    // Deleting b: its host goes from the map, nginx answers 404 for it; the others are untouched.
    h.remove_vassal("b.ini");
    wait_answer(&h, &nginx, port, "b.test", 404, "no app for this host");
    wait_answer(&h, &nginx, port, "a.test", 200, "hello from a.ini");
    wait_answer(&h, &nginx, port, "c.test", 200, "hello from c.ini");

    // Stopping the emperor empties the map and reloads nginx: every host is unknown, so 404, not 502.
    h.signal(libc::SIGTERM);
    let status = h.wait_exit(Duration::from_secs(30));
    h.check(status.success(), format!("emperor exit status {status}"));
    let text = fs::read_to_string(&map).unwrap();
    h.check(
        !text.contains("a.test") && text.contains("map $host $emperor_upstream"),
        format!("the map is empty after shutdown:\n{text}"),
    );
    wait_answer(&h, &nginx, port, "a.test", 404, "no app for this host");
}

#[test]
fn generated_map_with_every_kind_of_route_passes_nginx() {
    let mut h = Harness::new("routes_kinds");
    let map = h.root.join("nginx").join("routes.conf");
    let port = free_port();
    let app_port = free_port();
    let mut nginx = Nginx::configure(&h.root.join("nginx"), port, &map);
    // Named sockets (unix and TCP on all addresses), a wildcard, the suffix form, a map keyword as a host.
    h.write_vassal(
        "multi.ini",
        &format!(
            "[emperor]\nsocket = {}\nsocket = name=web,:{app_port}\n{}\
             domains = multi.test .suffix.test default\ndomain = *.wild.test socket=web\n",
            h.sock("multi.sock").display(),
            h.exec_line("multi.ini", "")
        ),
    );
    // Two vassals claim shared.test: other.ini loses it to multi.ini (name order), keeps the rest.
    h.write_vassal(
        "other.ini",
        &routed_ini(&h, "other.ini", "domains = shared.test other.test"),
    );
    h.write_vassal("multi2.ini", &routed_ini(&h, "multi2.ini", "domains = shared.test"));
    let map_arg = map.to_string_lossy().into_owned();
    h.start(&["--nginx-map", &map_arg]);
    h.wait_for(
        || fs::read_to_string(&map).is_ok_and(|t| t.contains("other.test")),
        LONG,
        "the map",
    );
    h.wait_log(
        "[other.ini] host shared.test (shared.test) is also claimed by multi2.ini",
        LONG,
    );
    nginx.test_config().unwrap_or_else(|e| {
        panic!(
            "nginx -t refused the generated map: {e}\n{}{}",
            fs::read_to_string(&map).unwrap_or_default(),
            h.tail()
        )
    });
    nginx.start();
    wait_answer(&h, &nginx, port, "multi.test", 200, "hello from multi.ini");
    wait_answer(&h, &nginx, port, "suffix.test", 200, "hello from multi.ini");
    wait_answer(&h, &nginx, port, "x.y.suffix.test", 200, "hello from multi.ini");
    wait_answer(&h, &nginx, port, "default", 200, "hello from multi.ini");
    wait_answer(&h, &nginx, port, "a.wild.test", 200, "hello from multi.ini");
    wait_answer(&h, &nginx, port, "wild.test", 404, "no app for this host");
    wait_answer(&h, &nginx, port, "shared.test", 200, "hello from multi2.ini");
    wait_answer(&h, &nginx, port, "other.test", 200, "hello from other.ini");
    // The conflict is logged once, not at every rescan.
    h.check(
        h.stderr().matches("is also claimed by").count() == 1,
        "one conflict line",
    );
}
