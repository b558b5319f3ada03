//! `emperor check`: the real binary on hostile vassal files, against a policy file and in tyrant mode.
//! No emperor runs and no Docker daemon is needed: every refusal comes from the files alone. The files
//! are chowned to a tenant uid with no user (4242), so the test needs root, as the suite does.

use std::os::unix::fs::{chown, symlink};
use std::path::Path;
use std::process::{Command, Output};

use crate::util::*;

const TENANT: u32 = 4242;

fn check(dir: &Path, args: &[&str]) -> (i32, Vec<String>) {
    let out: Output = Command::new(EMPEROR)
        .arg("check")
        .args(args)
        .current_dir(dir)
        .env_remove("DOCKER_HOST")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {EMPEROR}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.stderr.is_empty(),
        "emperor check {args:?} wrote to stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code().unwrap_or(-1),
        stdout.lines().map(String::from).collect(),
    )
}

/// Writes a vassal file owned by the tenant.
fn tenant_file(h: &Harness, name: &str, text: &str) {
    h.write_vassal(name, text);
    chown(h.vassal(name), Some(TENANT), Some(TENANT))
        .unwrap_or_else(|e| panic!("chown {name} to {TENANT} (the test needs root): {e}"));
}

#[test]
fn hostile_vassal_files_get_one_line_each() {
    let h = Harness::new("check_hostile");
    let tenants = h.root.join("tenants");
    let home = tenants.join(TENANT.to_string());
    std::fs::create_dir_all(home.join("data")).unwrap();
    symlink("/etc", home.join("out")).unwrap();
    let policy = h.root.join("policy.ini");
    std::fs::write(
        &policy,
        format!(
            "[policy]\n; tenants' images and their own directories only\nimage = emperor-test/*\nmount-root = {}/%u\n",
            tenants.display()
        ),
    )
    .unwrap();
    let docker = |extra: &str| format!("[emperor]\ndocker-image = emperor-test/testapp\n{extra}\n");
    let files = [
        ("mount-root.ini", docker("docker-mount = /:/host")),
        ("mount-sock.ini", docker("docker-mount = /var/run/docker.sock:/d.sock")),
        (
            "mount-outside.ini",
            docker(&format!("docker-mount = {}:/x", h.root.join("elsewhere").display())),
        ),
        (
            "mount-link.ini",
            docker(&format!("docker-mount = {}:/x", home.join("out").display())),
        ),
        ("net-host.ini", docker("docker-network-mode = host")),
        ("net-container.ini", docker("docker-network-mode = container:x")),
        ("user.ini", docker("docker-user = 1000:1000")),
        ("image.ini", "[emperor]\ndocker-image = busybox\n".to_owned()),
        (
            "good.ini",
            docker(&format!("docker-mount = {}:/data", home.join("data").display())),
        ),
    ];
    for (name, text) in &files {
        tenant_file(&h, name, text);
    }
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    let mut args = vec!["--tyrant", "--policy", policy.to_str().unwrap()];
    args.extend(&names);
    let (code, lines) = check(&h.vassals(), &args);

    let p = policy.display();
    let cite = format!("refused by {p}:4 (mount-root = {}/%u)", tenants.display());
    let expected = [
        format!("mount-root.ini:3: [emperor] docker-mount = \"/:/host\": {cite}"),
        format!(
            "mount-outside.ini:3: [emperor] docker-mount = \"{}:/x\": {cite}",
            h.root.join("elsewhere").display()
        ),
        format!(
            "mount-link.ini:3: [emperor] docker-mount = \"{}:/x\": {cite}: {} resolves to /etc",
            home.join("out").display(),
            home.join("out").display()
        ),
        "net-host.ini:3: [emperor] docker-network-mode = \"host\": refused by the built-in policy (network = none)"
            .to_owned(),
        "net-container.ini:3: [emperor] docker-network-mode = \"container:x\": refused by the built-in policy (network = none)"
            .to_owned(),
        format!(
            "user.ini:3: [emperor] docker-user = \"1000:1000\": refused by the built-in policy (a container runs as its file's owner, {TENANT}:{TENANT})"
        ),
        format!("image.ini:2: [emperor] docker-image = \"busybox\": refused by {p}:3 (image = emperor-test/*)"),
        format!(
            "good.ini: ok (container: user {TENANT}:{TENANT}, memory 256m, memory+swap 256m, pids 256, cpus 1, network none, cap-drop NET_RAW, no-new-privileges)"
        ),
    ];
    for line in &expected {
        assert!(
            lines.contains(line),
            "missing line:\n{line}\nin output:\n{}",
            lines.join("\n")
        );
    }
    // The Docker socket: refused by the roots whether or not this host has one (the detail differs).
    let sock = format!("mount-sock.ini:3: [emperor] docker-mount = \"/var/run/docker.sock:/d.sock\": {cite}");
    assert!(lines.iter().any(|l| l.starts_with(&sock)), "{}", lines.join("\n"));
    assert_eq!(lines.len(), files.len(), "one line per file:\n{}", lines.join("\n"));
    assert_eq!(code, 1);

    // The good file alone passes; without --tyrant or --policy only the syntax is checked.
    assert_eq!(
        check(
            &h.vassals(),
            &["--tyrant", "--policy", policy.to_str().unwrap(), "good.ini"]
        )
        .0,
        0
    );
    assert_eq!(check(&h.vassals(), &names).0, 0);
}

#[test]
fn root_owned_files_broken_files_and_broken_policies() {
    let h = Harness::new("check_root");
    h.write_vassal("root.ini", "[emperor]\ndocker-image = emperor-test/testapp\n");
    tenant_file(&h, "typo.ini", "[emperor]\ndocker-imgae = x\n");
    let (code, lines) = check(&h.vassals(), &["--tyrant", "root.ini", "typo.ini"]);
    assert_eq!(code, 1);
    assert_eq!(
        lines,
        [
            "root.ini: owned by uid 0 (root), gid 0: refused by tyrant mode (a file owned by uid 0 or gid 0 never runs; chown it to the user it should run as)",
            "typo.ini:2: [emperor] docker-imgae = \"x\": unknown key; did you mean \"docker-image\"?",
        ]
    );
    // Without tyrant mode a root-owned file is the operator's and passes.
    assert_eq!(check(&h.vassals(), &["root.ini"]), (0, vec!["root.ini: ok".to_owned()]));

    let policy = h.root.join("policy.ini");
    std::fs::write(&policy, "[policy]\nimage = emperor-test/*\nmount-roots = /srv/%U\n").unwrap();
    let (code, lines) = check(&h.vassals(), &["--policy", policy.to_str().unwrap(), "root.ini"]);
    assert_eq!(code, 1);
    assert_eq!(
        lines,
        [
            format!(
                "{}:3: [policy] mount-roots = \"/srv/%U\": unknown rule; did you mean \"mount-root\"?",
                policy.display()
            ),
            "root.ini: parses; not checked against the policy, which has errors".to_owned(),
        ]
    );
}
