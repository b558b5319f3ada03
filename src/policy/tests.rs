//! The policy file's parsing, every rule's check with its exact refusal line, and what a decision forces.
//! Paths that must resolve live in a throw-away directory under the system temp dir.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use bollard::models::{ContainerCreateBody, HostConfig, Mount};

use super::*;
use crate::config;

fn alice() -> Owner {
    Owner {
        uid: 1000,
        gid: 1000,
        name: Some("alice".into()),
    }
}

fn policy(text: &str) -> Policy {
    parse(Path::new("policy.ini"), text).unwrap_or_else(|e| panic!("{e}"))
}

fn policy_err(text: &str) -> Vec<String> {
    match parse(Path::new("policy.ini"), text) {
        Ok(_) => panic!("expected errors for {text:?}"),
        Err(e) => e.to_string().lines().map(String::from).collect(),
    }
}

fn vassal(text: &str) -> VassalConfig {
    config::parse("shop.ini", Path::new("shop.ini"), text, Path::new("/srv/vassals")).unwrap_or_else(|e| panic!("{e}"))
}

/// The refusal lines for `text` (a vassal file) under `p`, run as alice.
fn refused(p: &Policy, text: &str) -> Vec<String> {
    match p.check(&vassal(text), &alice()) {
        Ok(d) => panic!("expected refusals, got {d:?}"),
        Err(rs) => rs.iter().map(ToString::to_string).collect(),
    }
}

fn container(p: &Policy, text: &str) -> ContainerDecision {
    match p.check(&vassal(text), &alice()) {
        Ok(Decision::Container(c)) => *c,
        other => panic!("expected a container decision: {other:?}"),
    }
}

/// A directory of its own, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "emperor-policy-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("alice")).unwrap_or_else(|e| panic!("{e}"));
        Scratch(dir)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    fn show(&self, rel: &str) -> String {
        self.path(rel).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_built_in_policy_parses_as_a_file_would() {
    let text = BUILT_IN.replacen("[policy]", "[policy]\n; the same text, from a file", 1);
    parse(Path::new("p.ini"), &text).unwrap_or_else(|e| panic!("{e}"));
    let b = Policy::built_in();
    assert_eq!(b.image.value, vec![Pattern("*".into())]);
    assert!(b.mount_root.value.is_empty());
    assert_eq!(b.memory_max.value, Some(1 << 30));
    assert_eq!(b.source_of_network(), &Source::BuiltIn);
    // Every rule in BUILT_IN is a known one (a test of the table, not of the parser).
    for line in BUILT_IN.lines().skip(1) {
        let rule = line.split('=').next().unwrap_or_default().trim();
        assert!(RULES.contains(&rule), "{rule}");
    }
}

impl Policy {
    fn source_of_network(&self) -> &Source {
        &self.network.source
    }
}

#[test]
fn a_file_replaces_the_rules_it_gives_and_keeps_the_others() {
    let p = policy("[policy]\nnetwork = bridge\nnetwork = container:%U-*\nmemory-max = 2g\n");
    assert_eq!(p.network.source, Source::File("policy.ini".into()));
    assert_eq!(
        p.network.lines,
        vec![(Some(2), "bridge".into()), (Some(3), "container:%U-*".into())]
    );
    assert_eq!(p.memory_max.value, Some(2 << 30));
    assert_eq!(p.memory_default.source, Source::BuiltIn);
    assert_eq!(p.memory_default.value, Some(256 << 20));
    // Comments, blank lines, spaces around '=', CRLF and a BOM are fine.
    let p = policy("\u{feff}; tenants\r\n[ policy ]\r\n# x\r\n\r\n  image   =   emperor-test/*  \r\n");
    assert_eq!(p.image.lines, vec![(Some(5), "emperor-test/*".into())]);
}

#[test]
fn policy_file_problems_are_all_reported_with_line_and_rule() {
    let got = policy_err(
        "image = x\n[policy]\nmount-rot = /srv\nmemory-max = 1g\nmemory-max = 2g\nnetwork =\nwhat\n[other]\nimage = y\n",
    );
    assert_eq!(
        got,
        [
            "policy.ini:1: [policy] image = \"x\": outside a [policy] section",
            "policy.ini:3: [policy] mount-rot = \"/srv\": unknown rule; did you mean \"mount-root\"?",
            "policy.ini:5: [policy] memory-max = \"2g\": given twice (first on line 4)",
            "policy.ini:6: [policy] network = \"\": empty value",
            "policy.ini:7: expected \"rule = value\", found \"what\"",
            "policy.ini:8: unknown section [other]; a policy file has one [policy] section",
        ]
    );
    assert_eq!(policy_err(""), ["policy.ini: no [policy] section"]);
    assert_eq!(
        policy_err("[policy]\nfrobnicate = 1\n"),
        [format!(
            "policy.ini:2: [policy] frobnicate = \"1\": unknown rule (the rules: {})",
            RULES.join(", ")
        )]
    );
}

#[test]
fn policy_rule_values() {
    let cases: &[(&str, &str)] = &[
        (
            "mount-root = /",
            "/ would allow every path on the host; list the directories tenants may mount",
        ),
        ("mount-root = srv", "must be an absolute path"),
        ("mount-root = /srv/../etc", "must not contain . or .. components"),
        ("mount-root = /proc/1", "/proc is never mounted into a container"),
        ("mount-root = /sys", "/sys is never mounted into a container"),
        ("mount-root = /dev/shm", "/dev is never mounted into a container"),
        (
            "mount-root = /srv/*",
            "a mount-root is a directory, not a pattern; use %U or %u for per-owner roots",
        ),
        (
            "mount-root = /srv/%x",
            "unknown placeholder: %U (owner name), %u (uid), %g (gid) and %% are known",
        ),
        ("image = a b", "a pattern contains no whitespace"),
        (
            "program = bin/*",
            "must be an absolute path (globs allowed: /usr/bin/*), * or none",
        ),
        ("publish = 0", "\"0\" is not a port from 1 to 65535, or true, or false"),
        ("publish = 9000-8000", "9000 is above 8000, or true, or false"),
        ("socket-port = 70000", "\"70000\" is not a port from 1 to 65535"),
        ("uid-range = 1000-x", "\"x\" is not a uid"),
        ("uid-range = none", "\"none\" is not a uid"),
        (
            "memory-max = 5m",
            "5242880 bytes is below Docker's minimum memory limit of 6m",
        ),
        (
            "memory-max = lots",
            "\"lots\" is not a number of bytes; expected an integer with an optional k, m or g suffix (binary: 1k = 1024), such as 536870912 or 512m, or unlimited",
        ),
        (
            "pids-max = 0",
            "expected a number of processes (at least 1) or unlimited",
        ),
        (
            "cpus-max = 0",
            "expected a number of CPUs above 0 (decimals allowed: 0.5) or unlimited",
        ),
        (
            "cpus-max = 1.5.",
            "expected a number of CPUs above 0 (decimals allowed: 0.5) or unlimited",
        ),
        ("cap-add = NET_RAWW", "not a capability; did you mean \"NET_RAW\"?"),
        ("no-new-privileges = maybe", "expected true or false"),
    ];
    for (line, message) in cases {
        let got = policy_err(&format!("[policy]\n{line}\n"));
        let (rule, value) = line.split_once(" = ").unwrap_or_default();
        assert_eq!(
            got,
            [format!("policy.ini:2: [policy] {rule} = \"{value}\": {message}")],
            "{line}"
        );
    }
    // `none` / `true` / `false` stand alone.
    assert_eq!(
        policy_err("[policy]\nimage = a\nimage = none\n"),
        ["policy.ini:3: [policy] image = \"none\": \"none\" must be the rule's only line"]
    );
    assert_eq!(
        policy_err("[policy]\npublish = 80\npublish = true\n"),
        ["policy.ini:3: [policy] publish = \"true\": \"true\" must be the rule's only line"]
    );
    // A default above its ceiling, also against the built-in ceiling.
    assert_eq!(
        policy_err("[policy]\nmemory-default = 2g\n"),
        [
            "policy.ini:2: [policy] memory-default = \"2g\": above memory-max (1g, from the built-in policy); a default must fit under its ceiling"
        ]
    );
    assert_eq!(
        policy_err("[policy]\npids-max = 100\npids-default = unlimited\n"),
        [
            "policy.ini:3: [policy] pids-default = \"unlimited\": above pids-max (100, policy.ini:2); a default must fit under its ceiling"
        ]
    );
    // Values that parse.
    let p = policy(
        "[policy]\ncpus-max = 0.25\npids-max = unlimited\nmemory-max = unlimited\nmemory-default = unlimited\n\
         cap-add = cap_sys_ptrace\ncap-add = NET_RAW\npublish = true\nuid-range = 1000-59999\nuid-range = 70000\n",
    );
    assert_eq!(p.cpus_max.value, Some(250_000_000));
    assert_eq!(
        (p.pids_max.value, p.memory_max.value, p.memory_default.value),
        (None, None, None)
    );
    assert_eq!(p.cap_add.value, ["SYS_PTRACE", "NET_RAW"]);
    assert_eq!(p.publish.value, [PortRange(1, 65535)]);
    assert_eq!(p.uid_range.value, [(1000, 59999), (70000, 70000)]);
    assert!(policy("[policy]\npublish = false\n").publish.value.is_empty());
    assert!(policy("[policy]\nprogram = none\n").program.value.is_empty());
}

#[test]
fn the_issue_example_renders_exactly() {
    let p = policy("[policy]\nimage = *\nmount-root = /srv/tenants/%U\n");
    let text =
        "[emperor]\ndocker-image = app\nsocket = /run/shop.sock\ndocker-network-mode = none\ndocker-mount = /:/host\n";
    assert_eq!(
        refused(&p, text),
        ["shop.ini:5: [emperor] docker-mount = \"/:/host\": refused by policy.ini:3 (mount-root = /srv/tenants/%U)"]
    );
    // The built-in policy has no mount root at all.
    assert_eq!(
        refused(&Policy::built_in(), text),
        ["shop.ini:5: [emperor] docker-mount = \"/:/host\": refused by the built-in policy (no mount-root rule)"]
    );
}

#[test]
fn mounts_are_checked_resolved() {
    let s = Scratch::new();
    let p = policy(&format!(
        "[policy]\nmount-root = {}/%U\nmount-root = {}/shared\n",
        s.0.display(),
        s.0.display()
    ));
    std::fs::create_dir(s.path("alice/data")).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink("/etc", s.path("alice/etc-link")).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(s.path("alice/data"), s.path("alice/inner-link")).unwrap_or_else(|e| panic!("{e}"));
    let cite = format!(
        "refused by policy.ini:2 (mount-root = {0}/%U), policy.ini:3 (mount-root = {0}/shared)",
        s.0.display()
    );
    let mount = |host: &str| format!("[emperor]\ndocker-image = app\ndocker-mount = {host}:/m\n");
    let cases = [
        ("/".to_owned(), String::new()),
        ("/etc".to_owned(), String::new()),
        ("/var/run/docker.sock".to_owned(), String::new()),
        (
            s.show("alice/etc-link"),
            format!(": {} resolves to /etc", s.show("alice/etc-link")),
        ),
        (
            s.show("alice/missing"),
            format!(": {} does not exist", s.show("alice/missing")),
        ),
        (
            s.show("alice/../bob"),
            format!(": {} does not exist", s.show("alice/../bob")),
        ),
    ];
    for (host, detail) in cases {
        let got = refused(&p, &mount(&host));
        let expected = format!("shop.ini:3: [emperor] docker-mount = \"{host}:/m\": {cite}{detail}");
        // The Docker socket may or may not exist on this host; either way it is refused by the roots.
        if host.ends_with("docker.sock") {
            assert!(got.len() == 1 && got[0].starts_with(&expected), "{got:?}");
        } else {
            assert_eq!(got, [expected], "{host}");
        }
    }
    // Inside the root, also through a symlink that stays inside: the resolved path is handed back.
    let d = container(&p, &mount(&s.show("alice/inner-link")));
    assert_eq!(d.mount_sources, [(s.path("alice/inner-link"), s.path("alice/data"))]);
    // Another owner's root is not alice's.
    let bob = Owner {
        uid: 1001,
        gid: 1001,
        name: Some("bob".into()),
    };
    std::fs::create_dir(s.path("bob")).unwrap_or_else(|e| panic!("{e}"));
    assert!(p.check(&vassal(&mount(&s.show("bob"))), &bob).is_ok());
    assert!(p.check(&vassal(&mount(&s.show("bob"))), &alice()).is_err());
    // An owner with no name has no %U root.
    let nameless = Owner { name: None, ..alice() };
    assert!(p.check(&vassal(&mount(&s.show("alice/data"))), &nameless).is_err());
}

#[test]
fn the_docker_socket_is_never_mounted_even_under_a_root() {
    let s = Scratch::new();
    std::fs::write(s.path("alice/docker.sock"), "").unwrap_or_else(|e| panic!("{e}"));
    let p = policy(&format!("[policy]\nmount-root = {}/%U\n", s.0.display()))
        .with_docker_socket(&s.path("alice/docker.sock"));
    for host in [s.show("alice/docker.sock"), s.show("alice")] {
        assert_eq!(
            refused(
                &p,
                &format!("[emperor]\ndocker-image = app\ndocker-mount = {host}:/m\n")
            ),
            [format!(
                "shop.ini:3: [emperor] docker-mount = \"{host}:/m\": refused by the built-in policy (never the Docker socket)"
            )]
        );
    }
    // docker-proxy's directory is a mount too.
    assert_eq!(
        refused(&p, "[emperor]\ndocker-image = app\ndocker-proxy = /run/x/p.sock\n"),
        [format!(
            "shop.ini:3: [emperor] docker-proxy = \"/run/x/p.sock\": refused by policy.ini:2 (mount-root = {}/%U): /run/x does not exist",
            s.0.display()
        )]
    );
    std::fs::create_dir(s.path("alice/proxy")).unwrap_or_else(|e| panic!("{e}"));
    let host = s.path("alice/proxy/p.sock");
    let d = container(
        &p,
        &format!(
            "[emperor]\ndocker-image = app\ndocker-proxy = {}:/p/p.sock\n",
            host.display()
        ),
    );
    assert_eq!(d.proxy_dir, Some((s.path("alice/proxy"), s.path("alice/proxy"))));
}

#[test]
fn network_modes() {
    let b = Policy::built_in();
    let with = |mode: &str| format!("[emperor]\ndocker-image = app\ndocker-network-mode = {mode}\n");
    for mode in ["host", "container:other.ini", "bridge", "tenantnet"] {
        assert_eq!(
            refused(&b, &with(mode)),
            [format!(
                "shop.ini:3: [emperor] docker-network-mode = \"{mode}\": refused by the built-in policy (network = none)"
            )]
        );
    }
    assert_eq!(container(&b, &with("none")).network_mode, None);
    // No mode given: none is forced rather than Docker's bridge.
    assert_eq!(
        container(&b, "[emperor]\ndocker-image = app\n").network_mode.as_deref(),
        Some("none")
    );

    let p = policy("[policy]\nnetwork = none\nnetwork = container:%U-*\n");
    assert!(p.check(&vassal(&with("container:alice-db.ini")), &alice()).is_ok());
    assert_eq!(
        refused(&p, &with("container:bob-db.ini")),
        [
            "shop.ini:3: [emperor] docker-network-mode = \"container:bob-db.ini\": refused by policy.ini:2 (network = none), policy.ini:3 (network = container:%U-*)"
        ]
    );
    // Bridge allowed: an unset mode stays Docker's default; neither none nor bridge: refused.
    let p = policy("[policy]\nnetwork = bridge\n");
    assert_eq!(container(&p, "[emperor]\ndocker-image = app\n").network_mode, None);
    let p = policy("[policy]\nnetwork = host\n");
    assert_eq!(
        refused(&p, "[emperor]\ndocker-image = app\n"),
        ["shop.ini: no docker-network-mode (Docker's default is bridge): refused by policy.ini:2 (network = host)"]
    );
}

#[test]
fn images() {
    let p = policy("[policy]\nimage = emperor-test/*\nimage = shop:%U\n");
    for ok in ["emperor-test/testapp", "emperor-test/busybox:latest", "shop:alice"] {
        assert!(
            p.check(&vassal(&format!("[emperor]\ndocker-image = {ok}\n")), &alice())
                .is_ok(),
            "{ok}"
        );
    }
    for bad in ["busybox", "docker.io/emperor-test/testapp", "shop:bob", "3f2a9c"] {
        assert_eq!(
            refused(&p, &format!("[emperor]\ndocker-image = {bad}\n")),
            [format!(
                "shop.ini:2: [emperor] docker-image = \"{bad}\": refused by policy.ini:2 (image = emperor-test/*), policy.ini:3 (image = shop:%U)"
            )]
        );
    }
    assert_eq!(
        refused(&policy("[policy]\nimage = none\n"), "[emperor]\ndocker-image = x\n"),
        ["shop.ini:2: [emperor] docker-image = \"x\": refused by policy.ini:2 (image = none)"]
    );
}

#[test]
fn docker_user_is_the_owner() {
    let b = Policy::built_in();
    for ok in ["1000", "1000:1000"] {
        let d = container(&b, &format!("[emperor]\ndocker-image = app\ndocker-user = {ok}\n"));
        assert_eq!(d.user, "1000:1000");
    }
    for bad in ["0", "1001", "1000:0", "alice", "root:root"] {
        assert_eq!(
            refused(&b, &format!("[emperor]\ndocker-image = app\ndocker-user = {bad}\n")),
            [format!(
                "shop.ini:3: [emperor] docker-user = \"{bad}\": refused by the built-in policy (a container runs as its file's owner, 1000:1000)"
            )]
        );
    }
}

#[test]
fn ports_published_and_bound() {
    let b = Policy::built_in();
    assert_eq!(
        refused(&b, "[emperor]\ndocker-image = app\ndocker-port = 8080:80\n"),
        ["shop.ini:3: [emperor] docker-port = \"8080:80\": refused by the built-in policy (publish = false)"]
    );
    let p = policy("[policy]\npublish = 8000-8999\n");
    assert!(
        p.check(
            &vassal("[emperor]\ndocker-image = app\ndocker-port = 8080:80\n"),
            &alice()
        )
        .is_ok()
    );
    assert_eq!(
        refused(&p, "[emperor]\ndocker-image = app\ndocker-port = 127.0.0.1:80:80\n"),
        ["shop.ini:3: [emperor] docker-port = \"127.0.0.1:80:80\": refused by policy.ini:2 (publish = 8000-8999)"]
    );
    // The emperor binds sockets as root: only ports the owner could bind, unless the policy says so.
    assert_eq!(
        refused(
            &b,
            "[emperor]\nexec = /bin/true\nsocket = /run/a.sock\nsocket = 127.0.0.1:80\nsocket = :8080\n"
        ),
        ["shop.ini:4: [emperor] socket = \"127.0.0.1:80\": refused by the built-in policy (socket-port = 1024-65535)"]
    );
    assert_eq!(
        refused(
            &policy("[policy]\nsocket-port = none\n"),
            "[emperor]\ndocker-image = a\ndocker-socket = :8080\n"
        ),
        ["shop.ini:3: [emperor] docker-socket = \":8080\": refused by policy.ini:2 (socket-port = none)"]
    );
}

#[test]
fn memory_swap_pids_cpus_and_capabilities() {
    let b = Policy::built_in();
    let d = container(&b, "[emperor]\ndocker-image = app\n");
    assert_eq!(
        d,
        ContainerDecision {
            user: "1000:1000".into(),
            memory: Some(256 << 20),
            memory_swap: Some(256 << 20),
            pids_limit: Some(256),
            nano_cpus: Some(1_000_000_000),
            cap_add: vec![],
            cap_drop: vec!["NET_RAW".into()],
            no_new_privileges: true,
            network_mode: Some("none".into()),
            mount_sources: vec![],
            proxy_dir: None,
            build_context: None,
        }
    );
    assert_eq!(
        d.to_string(),
        "user 1000:1000, memory 256m, memory+swap 256m, pids 256, cpus 1, network none, cap-drop NET_RAW, no-new-privileges"
    );
    assert_eq!(
        container(&b, "[emperor]\ndocker-image = app\ndocker-memory = 1g\n").memory,
        Some(1 << 30)
    );
    assert_eq!(
        refused(&b, "[emperor]\ndocker-image = app\ndocker-memory = 1025m\n"),
        ["shop.ini:3: [emperor] docker-memory = \"1025m\": refused by the built-in policy (memory-max = 1g)"]
    );
    // Swap beyond memory: none under the built-in policy.
    for swap in ["-1", "600m"] {
        assert_eq!(
            refused(
                &b,
                &format!("[emperor]\ndocker-image = a\ndocker-memory = 512m\ndocker-swap = {swap}\n")
            ),
            [format!(
                "shop.ini:4: [emperor] docker-swap = \"{swap}\": refused by the built-in policy (swap-max = 0)"
            )]
        );
    }
    let d = container(
        &b,
        "[emperor]\ndocker-image = a\ndocker-memory = 512m\ndocker-swap = 512m\n",
    );
    assert_eq!((d.memory, d.memory_swap), (Some(512 << 20), Some(512 << 20)));
    // Unset swap: Docker's default (as much as memory), capped by swap-max.
    let p = policy("[policy]\nswap-max = 100m\n");
    let d = container(&p, "[emperor]\ndocker-image = a\ndocker-memory = 512m\n");
    assert_eq!(d.memory_swap, Some(612 << 20));
    let p = policy("[policy]\nswap-max = unlimited\nmemory-default = unlimited\nmemory-max = unlimited\n");
    let d = container(
        &p,
        "[emperor]\ndocker-image = a\ndocker-memory = 64m\ndocker-swap = -1\n",
    );
    assert_eq!(d.memory_swap, Some(-1));
    let d = container(&p, "[emperor]\ndocker-image = a\n");
    assert_eq!((d.memory, d.memory_swap), (None, None));
    // Capabilities: NET_RAW kept back, others added; no-new-privileges can be turned off.
    let p = policy(
        "[policy]\ncap-add = NET_RAW\ncap-add = SYS_PTRACE\nno-new-privileges = false\ncpus-max = 1.5\npids-default = 10\n",
    );
    let d = container(&p, "[emperor]\ndocker-image = a\n");
    assert_eq!((d.cap_add, d.cap_drop), (vec!["SYS_PTRACE".to_owned()], vec![]));
    assert!(!d.no_new_privileges);
    assert_eq!((d.nano_cpus, d.pids_limit), (Some(1_500_000_000), Some(10)));
}

#[test]
fn process_vassals_programs_and_uids() {
    let s = Scratch::new();
    let app = s.path("alice/app");
    std::fs::write(&app, "#!/bin/sh\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(&app, s.path("alice/app-link")).unwrap_or_else(|e| panic!("{e}"));
    let exec = |program: &str| format!("[emperor]\nexec = {program} --port 1\n");

    // The built-in policy lets a process vassal run anything, as itself (uWSGI's tyrant mode).
    match Policy::built_in().check(&vassal(&exec(&s.show("alice/app-link"))), &alice()) {
        Ok(Decision::Process(d)) => assert_eq!(
            d,
            ProcessDecision {
                uid: 1000,
                gid: 1000,
                program: Some(app.clone())
            }
        ),
        other => panic!("{other:?}"),
    }
    let p = policy(&format!(
        "[policy]\nprogram = {}/%U/*\nuid-range = 1000-1999\n",
        s.0.display()
    ));
    assert!(p.check(&vassal(&exec(&s.show("alice/app"))), &alice()).is_ok());
    // A bare name is looked up in the vassal's own PATH.
    let in_path = format!("[emperor]\nenv = PATH={}\nexec = app\n", s.show("alice"));
    match p.check(&vassal(&in_path), &alice()) {
        Ok(Decision::Process(d)) => assert_eq!(d.program, Some(app.clone())),
        other => panic!("{other:?}"),
    }
    let cite = format!("refused by policy.ini:2 (program = {}/%U/*)", s.0.display());
    assert_eq!(
        refused(&p, &exec("/bin/sh")),
        [format!(
            "shop.ini:2: [emperor] exec = \"/bin/sh --port 1\": {cite}{}",
            match Path::new("/bin/sh").canonicalize() {
                Ok(real) if real != Path::new("/bin/sh") => format!(": /bin/sh is {}", real.display()),
                _ => String::new(),
            }
        )]
    );
    assert_eq!(
        refused(&p, "[emperor]\nenv = PATH=/nonexistent\nexec = app\n"),
        [format!(
            "shop.ini:3: [emperor] exec = \"app\": {cite}: app is not found in PATH"
        )]
    );
    // Owners outside the uid range.
    let bob = Owner {
        uid: 70000,
        gid: 70000,
        name: Some("bob".into()),
    };
    let got: Vec<String> = match p.check(&vassal("[emperor]\ndocker-image = a\n"), &bob) {
        Err(rs) => rs.iter().map(ToString::to_string).collect(),
        Ok(d) => panic!("{d:?}"),
    };
    assert_eq!(
        got,
        ["shop.ini: owned by uid 70000 (bob): refused by policy.ini:3 (uid-range = 1000-1999)"]
    );
    // program = none: Docker vassals only, the wrapper (no exec) included.
    let p = policy("[policy]\nprogram = none\n");
    assert_eq!(
        refused(&p, "[uwsgi]\nmodule = app\n"),
        ["shop.ini: a process vassal (no docker-image): refused by policy.ini:2 (program = none)"]
    );
    assert_eq!(
        refused(&p, "[emperor]\nexec = /bin/true\n"),
        ["shop.ini:2: [emperor] exec = \"/bin/true\": refused by policy.ini:2 (program = none)"]
    );
}

#[test]
fn every_refusal_is_reported_in_file_order() {
    let text = "[emperor]\ndocker-network-mode = host\ndocker-image = x\ndocker-mount = /:/h\ndocker-user = 0\n";
    let got = refused(&Policy::built_in(), text);
    let lines: Vec<&str> = got.iter().map(|l| l.split(": [").next().unwrap_or_default()).collect();
    assert_eq!(lines, ["shop.ini:2", "shop.ini:4", "shop.ini:5"]);
}

#[test]
fn tyrant_refuses_root_owned_files() {
    let root = Owner {
        uid: 0,
        gid: 0,
        name: Some("root".into()),
    };
    let r = refuse_root_owner(Path::new("shop.ini"), &root).map(|r| r.to_string());
    assert_eq!(
        r.as_deref(),
        Some(
            "shop.ini: owned by uid 0 (root), gid 0: refused by tyrant mode (a file owned by uid 0 or gid 0 never runs; chown it to the user it should run as)"
        )
    );
    assert!(refuse_root_owner(Path::new("x"), &Owner { gid: 0, ..alice() }).is_some());
    assert!(refuse_root_owner(Path::new("x"), &alice()).is_none());
}

#[test]
fn owners_and_names() {
    let passwd = "root:x:0:0:root:/root:/bin/bash\nbroken\nalice:x:1000:1000::/home/alice:/bin/sh\n";
    assert_eq!(user_name(passwd, 1000).as_deref(), Some("alice"));
    assert_eq!(user_name(passwd, 0).as_deref(), Some("root"));
    assert_eq!(user_name(passwd, 5), None);
    let s = Scratch::new();
    let file = s.path("alice/v.ini");
    std::fs::write(&file, "").unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(&file, s.path("link.ini")).unwrap_or_else(|e| panic!("{e}"));
    let me = Owner::of_file(&file, true).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(me.uid, nix::unistd::getuid().as_raw());
    assert_eq!(
        Owner::of_file(&s.path("link.ini"), false).map(|o| o.uid).ok(),
        Some(me.uid)
    );
    // A placeholder that cannot leave its directory.
    for bad in ["..", "a/b", "*"] {
        let o = Owner {
            name: Some(bad.into()),
            ..alice()
        };
        assert_eq!(Pattern("/srv/%U".into()).expand(&o), None, "{bad}");
    }
    assert_eq!(
        Pattern("/srv/%u-%g/%%".into()).expand(&alice()).as_deref(),
        Some("/srv/1000-1000/%")
    );
}

#[test]
fn the_decision_is_forced_on_a_container_definition() {
    let s = Scratch::new();
    std::fs::create_dir(s.path("alice/data")).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(s.path("alice/data"), s.path("alice/link")).unwrap_or_else(|e| panic!("{e}"));
    let p = policy(&format!("[policy]\nmount-root = {}/%U\n", s.0.display()));
    let d = container(
        &p,
        &format!(
            "[emperor]\ndocker-image = a\ndocker-mount = {}:/m\n",
            s.show("alice/link")
        ),
    );
    let bind = |source: &str| Mount {
        source: Some(source.into()),
        target: Some("/m".into()),
        ..Default::default()
    };
    let mut body = ContainerCreateBody {
        user: Some("0".into()),
        host_config: Some(HostConfig {
            mounts: Some(vec![bind("/run/emperor/x"), bind(&s.show("alice/link"))]),
            security_opt: Some(vec!["label=disable".into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    d.apply(&mut body);
    assert_eq!(body.user.as_deref(), Some("1000:1000"));
    let host = body.host_config.unwrap_or_default();
    assert_eq!(host.memory, Some(256 << 20));
    assert_eq!(host.memory_swap, Some(256 << 20));
    assert_eq!(host.pids_limit, Some(256));
    assert_eq!(host.nano_cpus, Some(1_000_000_000));
    assert_eq!(host.cap_drop, Some(vec!["NET_RAW".to_owned()]));
    assert_eq!(host.cap_add, None);
    assert_eq!(host.network_mode.as_deref(), Some("none"));
    assert_eq!(
        host.security_opt,
        Some(vec!["label=disable".to_owned(), "no-new-privileges".to_owned()])
    );
    let sources: Vec<Option<String>> = host.mounts.unwrap_or_default().into_iter().map(|m| m.source).collect();
    assert_eq!(sources, [Some("/run/emperor/x".into()), Some(s.show("alice/data"))]);
}

#[test]
fn a_build_context_lies_under_a_build_root_resolved() {
    let s = Scratch::new();
    std::fs::create_dir(s.path("alice/app")).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(s.path("alice/app"), s.path("alice/current")).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink("/etc", s.path("alice/etc")).unwrap_or_else(|e| panic!("{e}"));
    let build = |dir: &str| format!("[emperor]\ndocker-build = {dir}\n");
    // The built-in policy builds nothing.
    assert_eq!(
        refused(&Policy::built_in(), &build(&s.show("alice/app"))),
        [format!(
            "shop.ini:2: [emperor] docker-build = \"{}\": refused by the built-in policy (no build-root rule)",
            s.show("alice/app")
        )]
    );
    let p = policy(&format!("[policy]\nbuild-root = {}/%U\n", s.0.display()));
    let d = container(&p, &build(&s.show("alice/app")));
    assert_eq!(d.build_context, Some((s.path("alice/app"), s.path("alice/app"))));
    assert!(
        d.to_string()
            .ends_with(&format!(", built from {}", s.show("alice/app"))),
        "{d}"
    );
    // A deploy symlink inside the root: the resolved directory is what the emperor reads.
    let cfg = admit(&p, vassal(&build(&s.show("alice/current"))), &alice()).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(cfg.docker.and_then(|d| d.build), Some(s.path("alice/app")));
    // Out of the root through a symlink, or missing: refused, saying where it leads.
    assert_eq!(
        refused(&p, &build(&s.show("alice/etc"))),
        [format!(
            "shop.ini:2: [emperor] docker-build = \"{0}\": refused by policy.ini:2 (build-root = {1}/%U): {0} resolves to /etc",
            s.show("alice/etc"),
            s.0.display()
        )]
    );
    assert!(refused(&p, &build(&s.show("alice/none")))[0].ends_with("does not exist"));
    // A mount root is not a build root, nor the other way round.
    let mounts = policy(&format!("[policy]\nmount-root = {}/%U\n", s.0.display()));
    assert!(mounts.check(&vassal(&build(&s.show("alice/app"))), &alice()).is_err());
    assert!(
        p.check(
            &vassal(&format!(
                "[emperor]\ndocker-image = a\ndocker-mount = {}:/m\n",
                s.show("alice/app")
            )),
            &alice()
        )
        .is_err()
    );
    for (line, message) in [
        (
            "build-root = /",
            "/ would allow every path on the host; list the directories tenants may build from",
        ),
        ("build-root = /proc/x", "/proc is never read as a build context"),
        (
            "build-root = /srv/*",
            "a build-root is a directory, not a pattern; use %U or %u for per-owner roots",
        ),
    ] {
        let got = policy_err(&format!("[policy]\n{line}\n"));
        assert!(got.iter().any(|l| l.ends_with(message)), "{line}: {got:?}");
    }
}
