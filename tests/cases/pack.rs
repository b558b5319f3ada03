//! `emperor pack` against the real Docker daemon: the image holds the program, what the host's loader maps
//! for it (checked against `ldd`, path by path through the image's own symlinks), the files named and
//! nothing else, and it runs; Debian's nginx packed that way serves as an on-demand Docker vassal with
//! network none, on sockets it inherits through `NGINX=`, behind a real nginx and directly on 127.0.0.1.
//!
//! Every image is tagged `emperor-test/pack-<pid>-<n>` and labelled with the run label; it is removed when
//! its guard drops (also on a failed test), and images of dead runs are removed when the first guard is
//! made, as the container sweep does for containers.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;
use std::time::Duration;

use crate::util::docker::{
    DockerSweep, RUN_LABEL_KEY, docker, docker_ok, inspect, run_label, run_label_value_is_dead, unique_name,
};
use crate::util::nginx::{Nginx, get};
use crate::util::{EMPEROR, Harness, LONG, free_port, run_timeout};

/// An image made by `emperor pack` for one test; removed on drop.
struct Packed {
    tag: String,
}

impl Packed {
    fn new(what: &str) -> Packed {
        static REAP: Once = Once::new();
        REAP.call_once(reap_dead_runs_images);
        Packed {
            tag: format!("emperor-test/{}:latest", unique_name(&format!("pack-{what}"))),
        }
    }

    /// `emperor pack --tag <tag> --label <run label> <args>`: its output, and whether it succeeded.
    fn pack(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(EMPEROR);
        cmd.args(["pack", "--tag", &self.tag, "--label", run_label()])
            .args(args);
        run_timeout(&mut cmd, "emperor pack", b"", Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"))
    }

    #[track_caller]
    fn pack_ok(&self, args: &[&str]) -> String {
        let out = self.pack(args);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "emperor pack {args:?} failed ({}):\n{stderr}",
            out.status
        );
        assert!(stdout.contains(&format!("packed {}", self.tag)), "{stdout}\n{stderr}");
        stdout.into_owned()
    }

    /// The image's files, from `docker export` of a container created (never started) from it.
    fn files(&self, sweep: &DockerSweep) -> Listing {
        let mut create = vec!["create".to_string()];
        create.extend(sweep.run_args());
        create.push(self.tag.clone());
        let id = docker_ok(&create.iter().map(String::as_str).collect::<Vec<_>>());
        let out = run_timeout(
            Command::new("docker").args(["export", &id]),
            "docker export",
            b"",
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "docker export: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        docker_ok(&["rm", "-f", &id]);
        listing(&out.stdout)
    }
}

impl Drop for Packed {
    fn drop(&mut self) {
        match docker(&["image", "rm", "-f", &self.tag]) {
            Ok(o) if o.success || o.stderr.contains("No such image") => {}
            Ok(o) => eprintln!("cannot remove the test image {}: {}", self.tag, o.stderr.trim()),
            Err(e) => eprintln!("cannot remove the test image {}: {e}", self.tag),
        }
    }
}

/// Removes `emperor pack` images of test runs that died without their guards running.
fn reap_dead_runs_images() {
    let fmt = format!("{{{{.ID}}}}\t{{{{index .Config.Labels \"{RUN_LABEL_KEY}\"}}}}");
    let Ok(list) = docker(&[
        "image",
        "ls",
        "-q",
        "--filter",
        &format!("label={RUN_LABEL_KEY}"),
        "--filter",
        "label=emperor.pack.binary",
    ]) else {
        return;
    };
    for id in list.stdout.split_whitespace() {
        if let Ok(o) = docker(&["image", "inspect", "--format", &fmt, id])
            && let Some((_, run)) = o.stdout.trim().split_once('\t')
            && run_label_value_is_dead(run)
        {
            let _ = docker(&["image", "rm", "-f", id]);
        }
    }
}

/// One path of an image: a directory, a file (size, mode, content when small), or a symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir(u32),
    File { size: u64, mode: u32, text: String },
    Link(PathBuf),
}

/// An image's paths (absolute) as `docker export` has them, less what Docker adds to every container.
type Listing = BTreeMap<PathBuf, Node>;

fn listing(tar_bytes: &[u8]) -> Listing {
    let mut out = Listing::new();
    for e in tar::Archive::new(tar_bytes).entries().expect("a tar stream") {
        let mut e = e.expect("a tar entry");
        let path = Path::new("/").join(e.path().unwrap().components().collect::<PathBuf>());
        // Docker's own: the mount points of every container, and what it writes at create.
        let docker_made = [
            "/dev",
            "/proc",
            "/sys",
            "/.dockerenv",
            "/etc/hosts",
            "/etc/hostname",
            "/etc/resolv.conf",
            "/etc/mtab",
        ];
        if docker_made.iter().any(|m| path.starts_with(m)) || path == Path::new("/") {
            continue;
        }
        let mode = e.header().mode().unwrap() & 0o7777;
        let node = match e.header().entry_type() {
            tar::EntryType::Directory => Node::Dir(mode),
            tar::EntryType::Symlink => Node::Link(e.link_name().unwrap().unwrap().into_owned()),
            tar::EntryType::Regular => {
                let size = e.header().size().unwrap();
                let mut text = String::new();
                if size < 4096 {
                    e.read_to_string(&mut text).unwrap_or_default();
                }
                Node::File { size, mode, text }
            }
            other => panic!("{}: unexpected entry type {other:?}", path.display()),
        };
        out.insert(path, node);
    }
    out
}

/// Looks `path` up in the image as the kernel would in the container: through the image's symlinks.
/// Returns the node reached, and records every path met on the way in `met`.
fn lookup<'a>(image: &'a Listing, path: &Path, met: &mut BTreeSet<PathBuf>) -> Option<(PathBuf, &'a Node)> {
    let parts = |p: &Path| -> Vec<OsString> {
        p.components()
            .rev()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_owned()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect()
    };
    let (mut stack, mut at, mut hops) = (parts(path), PathBuf::from("/"), 0);
    let mut node = None;
    while let Some(part) = stack.pop() {
        if part == ".." {
            at.pop();
            continue;
        }
        let next = at.join(&part);
        met.insert(next.clone());
        match image.get(&next)? {
            Node::Link(target) => {
                hops += 1;
                assert!(hops < 40, "symlink loop at {}", next.display());
                if target.is_absolute() {
                    at = PathBuf::from("/");
                }
                stack.extend(parts(target));
            }
            n => {
                at = next;
                node = Some(n);
            }
        }
    }
    Some((at, node?))
}

/// The files `ldd` (Debian's script, not our code) lists for `binary`.
fn ldd(binary: &str) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("ldd");
    assert!(out.status.success(), "ldd {binary}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split_once(" => ").map_or(l, |(_, p)| p);
            path.starts_with('/')
                .then(|| PathBuf::from(path.split(" (0x").next().unwrap()))
        })
        .collect()
}

/// One HTTP/1.0 GET of `path` on 127.0.0.1:`port`: the whole answer.
fn get_path(port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(LONG)).map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: packed\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| format!("read: {e}"))?;
    Ok(answer)
}

/// `docker run --rm --network none` of the image with the run's labels: (exit code, stdout, stderr).
fn run_image(sweep: &DockerSweep, image: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let mut argv: Vec<String> = vec!["run".into(), "--rm".into(), "--network".into(), "none".into()];
    argv.extend(sweep.run_args());
    argv.push(image.into());
    argv.extend(args.iter().map(|a| a.to_string()));
    let o = docker(&argv.iter().map(String::as_str).collect::<Vec<_>>()).unwrap_or_else(|e| panic!("{e}"));
    (o.code, o.stdout, o.stderr)
}

#[test]
fn pack_a_dynamic_binary_its_libraries_and_added_files_and_run_it() {
    // Declared before the sweep, so dropped after it: an image still used by a container is only untagged.
    let image = Packed::new("id");
    let sweep = DockerSweep::new();
    let h = Harness::new("pack_id");
    // Files to --add: a directory with a subdirectory, a relative symlink out of it, a dangling one.
    let tree = h.root.join("tree");
    fs::create_dir_all(tree.join("conf/sub")).unwrap();
    fs::create_dir_all(tree.join("target")).unwrap();
    fs::write(tree.join("conf/app.conf"), "key = value\n").unwrap();
    fs::write(tree.join("conf/sub/more.conf"), "more\n").unwrap();
    fs::write(tree.join("target/linked"), "linked\n").unwrap();
    fs::write(tree.join("target/not-added"), "no\n").unwrap();
    std::os::unix::fs::symlink("../target/linked", tree.join("conf/link")).unwrap();
    std::os::unix::fs::symlink("nowhere", tree.join("conf/dangling")).unwrap();
    let empty = format!("/srv/{}", unique_name("empty"));

    let conf = tree.join("conf");
    let out = image.pack_ok(&[
        "--add",
        conf.to_str().unwrap(),
        "--mkdir",
        &empty,
        "/usr/bin/id",
        "nobody",
    ]);
    assert!(out.contains("loader /lib64/ld-linux-x86-64.so.2"), "{out}");
    let files = image.files(&sweep);

    // Every library ldd lists is in the image at the same path, as the same file.
    let mut met = BTreeSet::new();
    for lib in ldd("/usr/bin/id").iter().chain([&PathBuf::from("/usr/bin/id")]) {
        let found = lookup(&files, lib, &mut met);
        let host_size = fs::metadata(lib).unwrap().len();
        assert!(
            matches!(found, Some((_, Node::File { size, .. })) if *size == host_size),
            "{} is not in the image as the host's {host_size}-byte file: {found:?}\n{files:#?}",
            lib.display()
        );
    }
    assert!(
        files.keys().any(|p| p.to_string_lossy().contains("libselinux")),
        "transitive closure"
    );
    // /lib is the host's symlink, kept as one.
    assert_eq!(
        files.get(Path::new("/lib")),
        Some(&Node::Link(fs::read_link("/lib").unwrap()))
    );
    // The added tree, with its symlinks kept and their targets; nothing beside it.
    let node = |p: &Path| files.get(p).cloned();
    assert!(matches!(node(&conf.join("app.conf")), Some(Node::File { text, .. }) if text == "key = value\n"));
    assert!(matches!(node(&conf.join("sub/more.conf")), Some(Node::File { .. })));
    assert_eq!(node(&conf.join("link")), Some(Node::Link("../target/linked".into())));
    assert_eq!(node(&conf.join("dangling")), Some(Node::Link("nowhere".into())));
    assert!(matches!(node(&tree.join("target/linked")), Some(Node::File { .. })));
    assert_eq!(node(&tree.join("target/not-added")), None);
    assert_eq!(node(Path::new(&empty)), Some(Node::Dir(0o755)));
    assert_eq!(node(Path::new("/tmp")), Some(Node::Dir(0o1777)));
    let passwd = format!("{:?}", node(Path::new("/etc/passwd")));
    assert!(passwd.contains("nobody:x:65534:65534:"), "{passwd}");

    // Nothing else: every path is on the way to one of the above, or under the added directory.
    for p in [&conf.join("link"), &tree.join("target/linked"), &PathBuf::from(&empty)] {
        lookup(&files, p, &mut met);
    }
    let base = ["/tmp", "/etc/passwd", "/etc/group", "/etc/ld.so.cache"].map(PathBuf::from);
    let explained = |p: &PathBuf| {
        met.contains(p) || base.contains(p) || p.starts_with(&conf) || met.iter().chain(&base).any(|m| m.starts_with(p))
    };
    let extra: Vec<_> = files.keys().filter(|p| !explained(p)).collect();
    assert!(extra.is_empty(), "the image holds paths nobody asked for: {extra:?}");

    // It runs: the loader, the libraries and the passwd/group lookups work.
    let (code, stdout, stderr) = run_image(&sweep, &image.tag, &[]);
    assert_eq!(
        (code, stdout.trim()),
        (Some(0), "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)"),
        "{stderr}"
    );
    let cmd = docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Cmd}}|{{json .Config.Labels}}",
        &image.tag,
    ]);
    assert!(
        cmd.starts_with(r#"["/usr/bin/id","nobody"]|"#) && cmd.contains(r#""emperor.pack.binary":"/usr/bin/id""#),
        "{cmd}"
    );
}

#[test]
fn pack_a_static_binary_and_refuse_what_cannot_be_packed() {
    let image = Packed::new("static");
    let sweep = DockerSweep::new();
    let h = Harness::new("pack_static");
    let out = image.pack_ok(&[EMPEROR, "--version"]);
    assert!(out.contains("static: no loader"), "{out}");
    let files = image.files(&sweep);
    assert!(
        !files
            .keys()
            .any(|p| p.starts_with("/lib64") || p.starts_with("/etc/ld.so.cache")),
        "{files:#?}"
    );
    let (code, stdout, stderr) = run_image(&sweep, &image.tag, &[]);
    assert_eq!(
        (code, stdout.trim()),
        (Some(0), format!("emperor {}", env!("CARGO_PKG_VERSION")).as_str()),
        "{stderr}"
    );

    // A script, a missing --add, a socket: one clear error each, and no image.
    let script = h.root.join("script.sh");
    fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let missing = h.root.join("missing");
    let sock = h.root.join("a.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let cases: [(Vec<&str>, String); 4] = [
        (
            vec![script.to_str().unwrap()],
            format!("{} is not an ELF program", script.display()),
        ),
        (
            vec!["--add", missing.to_str().unwrap(), "/usr/bin/id"],
            format!("--add {}", missing.display()),
        ),
        (
            vec!["--add", sock.to_str().unwrap(), "/usr/bin/id"],
            "is a socket, fifo or device".into(),
        ),
        (
            vec!["no-such-program-here"],
            "\"no-such-program-here\" not found in PATH".into(),
        ),
    ];
    let other = Packed::new("refused");
    for (args, expected) in cases {
        let out = other.pack(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&expected),
            "{args:?}: expected {expected:?} in:\n{stderr}"
        );
    }
    assert!(
        !docker(&["image", "inspect", &other.tag]).unwrap().success,
        "a refused pack made an image"
    );
}

/// The packed nginx's config: both inherited sockets, a static file, and a directive of a module loaded
/// with `load_module` (dlopen) from an --add'ed file.
fn packed_nginx_conf(sock: &Path, port: u16, html: &Path) -> String {
    format!(
        "load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;\n\
         worker_processes 1;\nerror_log stderr notice;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  include /etc/nginx/mime.types;\n\
         server {{\n    listen unix:{sock};\n    listen 127.0.0.1:{port};\n    root {html};\n\
         location = /echo {{ echo \"echo module in a packed image\"; }}\n  }}\n}}\n",
        sock = sock.display(),
        html = html.display(),
    )
}

#[test]
fn packed_nginx_serves_as_an_on_demand_docker_vassal_with_network_none() {
    let image = Packed::new("nginx");
    let sweep = DockerSweep::new();
    let mut h = Harness::new("pack_nginx");
    let name = unique_name("nano-nginx");
    let sock = h.sock(&format!("{name}.sock"));
    let port = free_port();
    let site = h.root.join("site");
    fs::create_dir_all(site.join("html")).unwrap();
    fs::write(site.join("html/index.html"), "hello from packed nginx\n").unwrap();
    let conf = site.join("nginx.conf");
    fs::write(&conf, packed_nginx_conf(&sock, port, &site.join("html"))).unwrap();

    // As the README's example: the config and content, mime.types, the module; Debian's built-in paths
    // (the pid file in /run, temp files in /var/lib/nginx) as empty directories.
    let out = image.pack_ok(&[
        "--add",
        site.to_str().unwrap(),
        "--add",
        "/etc/nginx/mime.types",
        "--add",
        "/usr/lib/nginx/modules/ngx_http_echo_module.so",
        "--mkdir",
        "/run",
        "--mkdir",
        "/var/lib/nginx",
        "/usr/sbin/nginx",
        "-c",
        conf.to_str().unwrap(),
        "-g",
        "daemon off;",
    ]);
    let files = image.files(&sweep);
    for lib in ldd("/usr/sbin/nginx")
        .iter()
        .chain(&ldd("/usr/lib/nginx/modules/ngx_http_echo_module.so"))
    {
        assert!(
            lookup(&files, lib, &mut BTreeSet::new()).is_some(),
            "{} missing; {out}",
            lib.display()
        );
    }

    let file = format!("{name}.ini");
    h.write_vassal(
        &file,
        &format!(
            "[emperor]\ndocker-image = {tag}\ndocker-network-mode = none\non-demand = true\n\
             socket = {sock}\nsocket = 127.0.0.1:{port}\nstop-signal = SIGQUIT\n",
            tag = image.tag,
            sock = sock.display()
        ),
    );
    let args = sweep.emperor_args();
    h.start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    h.wait_vlog(&file, "waiting for a connection", LONG);

    // A real nginx in front, on the vassal's unix socket: its first request starts the container.
    let front_port = free_port();
    let mut front = Nginx::http(
        &h.root.join("front"),
        &format!(
            "upstream packed {{ server unix:{}; }}\nserver {{ listen 127.0.0.1:{front_port}; \
             location / {{ proxy_pass http://packed; }} }}\n",
            sock.display()
        ),
    );
    front.start();
    let mut last = Err(String::new());
    h.wait_for(
        || {
            last = get(front_port, "packed");
            matches!(&last, Ok((200, body)) if body == "hello from packed nginx\n")
        },
        Duration::from_secs(60),
        "the packed nginx to answer through the front",
    );
    // Directly on 127.0.0.1, the vassal's second socket, served by the module loaded with load_module.
    let direct = get_path(port, "/echo");
    h.check(
        direct
            .as_ref()
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200") && r.contains("echo module in a packed image")),
        format!("GET /echo on 127.0.0.1:{port}: {direct:?}"),
    );
    // The sockets came as NGINX=3;4; (no network in the container to bind anything with); the
    // container's output is in the emperor's stdout.
    h.wait_for(
        || h.stdout().contains("using inherited sockets from \"3;4;\""),
        LONG,
        "nginx to log that it inherited its two sockets",
    );
    assert_eq!(inspect(&file, "{{.HostConfig.NetworkMode}}").as_deref(), Some("none"));
    assert_eq!(inspect(&file, "{{.Config.Image}}").as_deref(), Some(image.tag.as_str()));
    drop(front);
}
