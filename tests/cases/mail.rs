//! Mail tenants (`--mail-auth`): Debian's nginx with its mail module runs the README's `mail {}` block
//! in front of on-demand tenants, each a real SMTP server (aiosmtpd, `tests/mail_vassal.py`) on the
//! socket the emperor bound; each login reaches its own tenant, whose vassal nginx's connection starts,
//! and the vassal, not the emperor, checks the password. The answers themselves (following the
//! vassals' files, refusing what is not a login) are asked directly, over a unix socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::nginx::{Nginx, readme_block};
use crate::util::smtp::{Client, pop3_login};
use crate::util::{Harness, LONG, free_port};

/// Debian's python3, which has Debian's aiosmtpd (a python3 earlier on the PATH may not).
const PYTHON: &str = "/usr/bin/python3";
/// Debian's `libnginx-mod-mail`.
const MAIL_MODULE: &str = "/usr/lib/nginx/modules/ngx_mail_module.so";

fn vassal_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mail_vassal.py")
}

/// Fails with what to install when the mail parts are missing: these tests never pass by skipping.
fn require_mail_parts() {
    assert!(
        Path::new(MAIL_MODULE).exists(),
        "{MAIL_MODULE} is missing: run scripts/setup (installs libnginx-mod-mail)"
    );
    let aiosmtpd = Command::new(PYTHON).args(["-c", "import aiosmtpd"]).status();
    assert!(
        aiosmtpd.is_ok_and(|s| s.success()),
        "{PYTHON} cannot import aiosmtpd: run scripts/setup (installs python3-aiosmtpd)"
    );
}

/// An on-demand tenant running `tests/mail_vassal.py <name>` with `lines` (sockets, domains).
fn tenant(name: &str, lines: &str) -> String {
    format!(
        "[emperor]\n{lines}on-demand = true\nexec = {PYTHON} {} {name}\n",
        vassal_script().display()
    )
}

/// nginx's listening ports for the README block's four servers.
struct MailPorts {
    submission: u16,
    mx: u16,
    pop3: u16,
}

/// A private nginx running the README's mail block, its `auth_http` pointed at `auth` (the emperor's
/// `--mail-auth`), started and taking connections.
fn mail_nginx(h: &Harness, auth: &str) -> (Nginx, MailPorts) {
    let ports = MailPorts {
        submission: free_port(),
        mx: free_port(),
        pop3: free_port(),
    };
    let imap = free_port();
    let block = readme_block("Mail tenants through nginx's mail proxy");
    let ours = [
        ("auth_http 127.0.0.1:8025/;", format!("auth_http {auth};")),
        ("listen 587;", format!("listen 127.0.0.1:{};", ports.submission)),
        ("listen 25;", format!("listen 127.0.0.1:{};", ports.mx)),
        ("listen 143;", format!("listen 127.0.0.1:{imap};")),
        ("listen 110;", format!("listen 127.0.0.1:{};", ports.pop3)),
    ]
    .iter()
    .fold(block.clone(), |text, (from, to)| {
        assert!(
            text.contains(from),
            "the README's mail block changed shape (no {from:?}):\n{block}"
        );
        text.replace(from, to)
    });
    let mut nginx = Nginx::with_conf(
        &h.root.join("nginx"),
        "info",
        &format!("load_module {MAIL_MODULE};\n"),
        &ours,
    );
    nginx
        .test_config()
        .unwrap_or_else(|e| panic!("nginx -t refused the README's mail block: {e}\n{ours}"));
    nginx.start();
    h.wait_for(
        || Client::connect(ports.submission).is_ok(),
        LONG,
        "nginx's SMTP greeting",
    );
    (nginx, ports)
}

/// Panics with nginx's error log and the emperor's output.
#[track_caller]
fn check(h: &Harness, nginx: &Nginx, cond: bool, what: impl std::fmt::Display) {
    if !cond {
        panic!(
            "check failed: {what}\n--- nginx error log:\n{}{}",
            nginx.error_log(),
            h.tail()
        );
    }
}

#[test]
fn each_login_reaches_its_tenant_whose_vassal_it_starts() {
    require_mail_parts();
    let mut h = Harness::new("mail_tenants");
    let (foo_smtp, foo_pop3, bar_smtp, auth) = (free_port(), free_port(), free_port(), free_port());
    h.write_vassal(
        "foo.ini",
        &tenant(
            "foo",
            &format!(
                "socket = name=smtp,127.0.0.1:{foo_smtp}\nsocket = name=pop3,127.0.0.1:{foo_pop3}\ndomains = foo.test\n"
            ),
        ),
    );
    // Unnamed and bound to every address: the route's target, answered as 127.0.0.1.
    h.write_vassal(
        "bar.ini",
        &tenant("bar", &format!("socket = 0.0.0.0:{bar_smtp}\ndomain = bar.test\n")),
    );
    h.start(&["--mail-auth", &format!("127.0.0.1:{auth}")]);
    h.wait_vlog("foo.ini", "waiting for a connection", LONG);
    h.wait_vlog("bar.ini", "waiting for a connection", LONG);
    let (nginx, ports) = mail_nginx(&h, &format!("127.0.0.1:{auth}/"));
    check(&h, &nginx, h.spawned().is_empty(), "nothing runs before a login");

    // foo@foo.test: AUTH PLAIN through nginx reaches foo's vassal, which that login started.
    let mut c = Client::connect(ports.submission).unwrap();
    let r = c.login("foo@foo.test", "secret").unwrap();
    check(&h, &nginx, r.code == 235, format!("foo's login: {r:?}"));
    // (The log is read from the emperor's pipe: wait for lines rather than expect them at once.)
    h.wait_for(|| !h.spawned().is_empty(), LONG, "foo.ini's start in the log");
    let spawned = h.spawned();
    check(
        &h,
        &nginx,
        spawned.len() == 1 && spawned[0].contains("[foo.ini]"),
        format!("the login started foo.ini, and only it: {spawned:?}"),
    );
    let r = c.send("foo@foo.test", "friend@elsewhere.test").unwrap();
    check(
        &h,
        &nginx,
        r.code == 250 && r.text.contains("foo delivered to friend@elsewhere.test"),
        format!("foo's vassal took the mail: {r:?}"),
    );
    h.wait_for(
        || h.stdout().contains("[foo.ini] foo: login foo@foo.test"),
        LONG,
        "foo's vassal to log the login",
    );

    // bar@bar.test reaches bar's.
    let mut c = Client::connect(ports.submission).unwrap();
    let r = c.login("bar@bar.test", "secret").unwrap();
    check(&h, &nginx, r.code == 235, format!("bar's login: {r:?}"));
    let r = c.send("bar@bar.test", "friend@elsewhere.test").unwrap();
    check(
        &h,
        &nginx,
        r.text.contains("bar delivered"),
        format!("bar's vassal took the mail: {r:?}"),
    );
    h.wait_for(|| h.spawned().len() == 2, LONG, "bar's login to start bar.ini");

    // The vassal checks the password, and its refusal reaches the client (proxy_pass_error_message).
    let mut c = Client::connect(ports.submission).unwrap();
    let r = c.login("foo@foo.test", "wrong").unwrap();
    check(
        &h,
        &nginx,
        r.code == 535 && r.text.contains("foo refuses"),
        format!("foo's refusal of a wrong password: {r:?}"),
    );

    // A domain no vassal has: nginx's 535 after the emperor's Auth-Wait (3 s), and a line in the log.
    let mut c = Client::connect(ports.submission).unwrap();
    let t0 = Instant::now();
    let r = c.login("someone@nowhere.test", "secret").unwrap();
    let waited = t0.elapsed();
    check(
        &h,
        &nginx,
        r.code == 535 && r.text.contains("Invalid login or password"),
        format!("an unknown domain: {r:?}"),
    );
    check(
        &h,
        &nginx,
        waited >= Duration::from_millis(2500),
        format!("nginx waited {waited:?} before refusing"),
    );
    h.wait_log(
        "mail-auth: refused smtp login \"someone@nowhere.test\" from 127.0.0.1: no vassal has the domain nowhere.test",
        LONG,
    );

    // Mail to a tenant without a login (smtp_auth none): the recipient's domain decides.
    let mut c = Client::connect(ports.mx).unwrap();
    let r = c.send("sender@elsewhere.test", "rcpt@bar.test").unwrap();
    check(
        &h,
        &nginx,
        r.code == 250 && r.text.contains("bar delivered to rcpt@bar.test"),
        format!("mail to bar.test: {r:?}"),
    );

    // POP3 goes to foo's socket named pop3.
    let r = pop3_login(ports.pop3, "foo@foo.test", "secret").unwrap();
    check(
        &h,
        &nginx,
        r == "+OK foo: foo@foo.test logged in",
        format!("foo's POP3: {r:?}"),
    );
    check(&h, &nginx, h.spawned().len() == 2, "one start per tenant");
}

#[test]
fn logins_arriving_while_a_tenant_starts_all_wait_for_that_start() {
    require_mail_parts();
    let mut h = Harness::new("mail_cold");
    let (smtp, auth) = (free_port(), free_port());
    h.write_vassal(
        "foo.ini",
        &tenant("foo", &format!("socket = 127.0.0.1:{smtp}\ndomains = foo.test\n")),
    );
    h.start(&["--mail-auth", &format!("127.0.0.1:{auth}")]);
    h.wait_vlog("foo.ini", "waiting for a connection", LONG);
    let (nginx, ports) = mail_nginx(&h, &format!("127.0.0.1:{auth}/"));

    const CLIENTS: usize = 8;
    let ready = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let ready = ready.clone();
            let port = ports.submission;
            thread::spawn(move || -> Result<String, String> {
                let mut c = Client::connect(port)?;
                ready.wait();
                let r = c.login(&format!("user{i}@foo.test"), "secret")?;
                if r.code != 235 {
                    return Err(format!("login: {r:?}"));
                }
                Ok(c.send(&format!("user{i}@foo.test"), "friend@elsewhere.test")?.text)
            })
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        let r = c.join().unwrap();
        check(
            &h,
            &nginx,
            r.as_ref().is_ok_and(|t| t.contains("foo delivered")),
            format!("client {i} of the cold start: {r:?}"),
        );
    }
    h.wait_for(|| !h.spawned().is_empty(), LONG, "foo.ini's start in the log");
    check(
        &h,
        &nginx,
        h.spawned().len() == 1,
        format!("one start served {CLIENTS} logins: {:?}", h.spawned()),
    );
}

/// One request to the unix socket at `path`: the answer's head.
fn ask(path: &Path, request: &[u8]) -> String {
    let mut s = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect to {}: {e}", path.display()));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

fn login(protocol: &str, user: &str) -> Vec<u8> {
    format!(
        "GET /auth HTTP/1.0\r\nHost: localhost\r\nAuth-Method: plain\r\nAuth-User: {user}\r\nAuth-Pass: x\r\n\
         Auth-Protocol: {protocol}\r\nAuth-Login-Attempt: 1\r\nClient-IP: 192.0.2.7\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn answers_follow_the_vassal_files_and_refuse_what_is_not_a_login() {
    let mut h = Harness::new("mail_answers");
    let port = free_port();
    let sock = h.sock("mail-auth.sock");
    let ini =
        |routes: &str| format!("[emperor]\nsocket = 127.0.0.1:{port}\n{routes}\non-demand = true\nexec = /bin/true\n");
    h.write_vassal("foo.ini", &ini("domains = foo.test"));
    h.start(&["--mail-auth", &sock.to_string_lossy()]);
    let to_foo = format!("HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: {port}\r\n");
    let refused = "HTTP/1.0 200 OK\r\nAuth-Status: Invalid login or password\r\nAuth-Wait: 3\r\n";
    // Before the first scan a login gets a temporary failure; then foo's domain is known.
    h.wait_for(
        || sock.exists() && ask(&sock, &login("smtp", "foo@foo.test")).starts_with(&to_foo),
        LONG,
        "foo@foo.test answered with foo's socket",
    );
    // HTTP/1.1 with bare LF line ends, nginx's escaping, any case in the domain.
    let r = ask(
        &sock,
        b"GET / HTTP/1.1\nAuth-Protocol: imap\nAuth-User: a%40FOO.test\n\n",
    );
    h.check(r.starts_with(&to_foo), format!("an HTTP/1.1 request: {r:?}"));

    // A changed file moves the domain; a broken one keeps its last good config; a deleted one loses it.
    h.write_vassal("foo.ini", &ini("domains = baz.test"));
    h.wait_for(
        || ask(&sock, &login("smtp", "x@baz.test")).starts_with(&to_foo),
        LONG,
        "baz.test after the edit",
    );
    h.check(
        ask(&sock, &login("smtp", "foo@foo.test")).starts_with(refused),
        "foo.test is gone",
    );
    h.write_vassal("foo.ini", &format!("{}sockte = x\n", ini("domains = other.test")));
    h.wait_log("sockte", LONG);
    h.check(
        ask(&sock, &login("smtp", "x@baz.test")).starts_with(&to_foo),
        "a broken file keeps its domains",
    );
    h.remove_vassal("foo.ini");
    h.wait_for(
        || ask(&sock, &login("smtp", "x@baz.test")).starts_with(refused),
        LONG,
        "baz.test refused once foo.ini is deleted",
    );
    h.wait_log("mail-auth: refused smtp login \"x@baz.test\" from 192.0.2.7", LONG);

    // Not a login request: 400, closed. A head over 16 KiB: the same.
    let r = ask(&sock, b"hello\r\n\r\n");
    h.check(r.starts_with("HTTP/1.0 400 Bad Request\r\n"), format!("garbage: {r:?}"));
    let long = format!("GET / HTTP/1.0\r\nX: {}\r\n\r\n", "a".repeat(20 * 1024));
    let r = ask(&sock, long.as_bytes());
    h.check(
        r.starts_with("HTTP/1.0 400 Bad Request\r\n"),
        format!("a long head: {r:?}"),
    );

    // The socket file goes with the emperor.
    h.signal(libc::SIGTERM);
    let status = h.wait_exit(LONG);
    h.check(status.success(), format!("exit status {status}"));
    h.check(!sock.exists(), "the --mail-auth socket file is removed at exit");
}
