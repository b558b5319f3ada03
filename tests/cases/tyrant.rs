//! Tyrant mode (`--emperor-tyrant`, issue 12): a vassal runs as its file's owner, a root-owned file is
//! refused, a chown restarts the vassal as the new owner, and what the root emperor writes for a vassal
//! (`logto`) cannot be aimed through a symlink at a file the tenant could not write.
//!
//! Real users (`useradd`, once per machine) and the real binary; the test app records its uid, gid and
//! `no_new_privs` in its start line.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::util::{Harness, LONG, ensure_user, write_owned};

pub(super) const TENANT_A: &str = "emperor-tenant-a";
const TENANT_B: &str = "emperor-tenant-b";

/// A harness whose test app can run as a tenant: its tree is searchable and its record directory writable.
pub(super) fn tenant_harness(name: &str) -> Harness {
    let h = Harness::new(name);
    fs::set_permissions(&h.root, fs::Permissions::from_mode(0o755)).unwrap();
    for d in ["vassals", "elsewhere"] {
        fs::set_permissions(h.root.join(d), fs::Permissions::from_mode(0o755)).unwrap();
    }
    // Tenants make their sockets in run/ and the test app writes its records in rec/.
    for d in ["run", "rec"] {
        fs::set_permissions(h.root.join(d), fs::Permissions::from_mode(0o1777)).unwrap();
    }
    h
}

#[test]
fn a_vassal_runs_as_its_files_owner_and_a_chown_restarts_it_as_the_new_one() {
    let (a_uid, a_gid) = ensure_user(TENANT_A);
    let (b_uid, b_gid) = ensure_user(TENANT_B);
    let mut h = tenant_harness("tyrant_owner");
    // Both tenants append to one record file.
    fs::write(h.rec_path("app"), "").unwrap();
    fs::set_permissions(h.rec_path("app"), fs::Permissions::from_mode(0o666)).unwrap();
    write_owned(&h.vassal("app.ini"), &h.app_ini("app", "--show-env USER"), a_uid, a_gid);
    h.write_vassal("rooted.ini", &h.app_ini("rooted", ""));
    h.start(&["--emperor-tyrant"]);

    let first = h.wait_starts("app", 1, LONG);
    let rec = &first[0];
    h.check(
        (rec.get("uid"), rec.get("gid")) == (a_uid.to_string().as_str(), a_gid.to_string().as_str()),
        format!("runs as {a_uid}:{a_gid}: {rec:?}"),
    );
    h.check(rec.get("nnp") == "1", "no_new_privs is set");
    h.check(rec.get("env_USER") == TENANT_A, "USER names the owner");

    h.wait_log("rooted.ini", LONG);
    h.wait_log("owned by uid 0 (root), gid 0: refused by tyrant mode", LONG);
    h.check(h.starts("rooted").is_empty(), "a root-owned file is refused, never run");

    // chown changes no mtime: the scan sees metadata only, and in tyrant mode that restarts the vassal.
    std::os::unix::fs::chown(h.vassal("app.ini"), Some(b_uid), Some(b_gid)).unwrap();
    let two = h.wait_starts("app", 2, LONG);
    h.check(
        two[1].get("uid") == b_uid.to_string(),
        format!("restarted as the new owner {b_uid}: {:?}", two[1]),
    );
    h.check(two[1].pid() != two[0].pid(), "a new process, not a reload in place");
}

#[test]
fn logto_through_a_symlink_to_a_root_file_is_refused_and_the_target_is_unchanged() {
    let (uid, gid) = ensure_user(TENANT_A);
    let mut h = tenant_harness("tyrant_logto");
    let logs = h.root.join("elsewhere").join("logs");
    fs::create_dir(&logs).unwrap();
    std::os::unix::fs::chown(&logs, Some(uid), Some(gid)).unwrap();
    let secret = h.root.join("secret");
    fs::write(&secret, "root only\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&secret, logs.join("evil.log")).unwrap();
    let evil = format!("{}logto = {}\n", h.app_ini("evil", ""), logs.join("evil.log").display());
    let good = format!("{}logto = {}\n", h.app_ini("good", ""), logs.join("good.log").display());
    write_owned(&h.vassal("evil.ini"), &evil, uid, gid);
    write_owned(&h.vassal("good.ini"), &good, uid, gid);
    // A socket through a symlinked directory into a root-only one: refused, nothing created there.
    let locked = h.root.join("locked");
    fs::create_dir(&locked).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&locked, logs.join("dir-link")).unwrap();
    let sneaky = format!(
        "[emperor]\nsocket = {}\n{}",
        logs.join("dir-link").join("s.sock").display(),
        h.exec_line("sneaky", "")
    );
    write_owned(&h.vassal("sneaky.ini"), &sneaky, uid, gid);
    h.start(&["--emperor-tyrant"]);
    h.wait_log("dir-link/s.sock: cannot bind", LONG);
    h.check(
        fs::read_dir(&locked).unwrap().next().is_none(),
        "nothing was created in the root-only directory",
    );
    h.wait_starts("evil", 1, LONG);
    h.wait_starts("good", 1, LONG);
    h.wait_log("cannot open logto", LONG);
    h.check(
        h.stderr().contains("a symlink is not followed in tyrant mode"),
        "the refusal says why",
    );
    h.check(
        fs::read_to_string(&secret).unwrap() == "root only\n",
        "the symlink's root-owned target is unchanged",
    );
    let good_log = logs.join("good.log");
    h.wait_for(
        || fs::read_to_string(&good_log).is_ok_and(|t| t.contains("testapp good")),
        LONG,
        "the legal logto to receive the app's output",
    );
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(&good_log).unwrap();
    h.check(
        (meta.uid(), meta.gid()) == (uid, gid),
        "the log file the emperor created belongs to the tenant",
    );
}

#[test]
fn a_tenants_container_runs_as_its_owner_with_the_built_in_policy() {
    let (uid, gid) = ensure_user(TENANT_A);
    let sweep = crate::util::docker::DockerSweep::new();
    let mut h = tenant_harness("tyrant_docker");
    let name = crate::util::docker::unique_name("tenant");
    let file = format!("{name}.ini");
    let sock = h.sock(&format!("{name}.sock"));
    // No network mode, no mount: the built-in policy forces `none` and allows no mount. Its cidfile is a symlink
    // to a root-only file, which the root bridge must not write through.
    let secret = h.root.join("secret-cid");
    fs::write(&secret, "root only\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let cid = h.root.join("run").join(format!("{name}.cid"));
    std::os::unix::fs::symlink(&secret, &cid).unwrap();
    let text = format!(
        "[emperor]\ndocker-image = emperor-test/testapp\nsocket = {}\nexec = /testapp --name {name}\n\
         docker-cidfile = {}\n",
        sock.display(),
        cid.display()
    );
    write_owned(&h.vassal(&file), &text, uid, gid);
    // Refused with one line each, nothing created: a mount of /, the Docker socket, host network, another user.
    let hostile = [
        ("root-mount.ini", "docker-mount = /:/host\n", "docker-mount"),
        (
            "sock-mount.ini",
            "docker-mount = /var/run/docker.sock:/d.sock\n",
            "docker-mount",
        ),
        ("host-net.ini", "docker-network-mode = host\n", "docker-network-mode"),
        ("other-user.ini", "docker-user = 0\n", "docker-user"),
    ];
    for (f, line, _) in hostile {
        let text = format!(
            "[emperor]\ndocker-image = emperor-test/testapp\nsocket = {}\nexec = /testapp\n{line}",
            h.sock(f).display()
        );
        write_owned(&h.vassal(f), &text, uid, gid);
    }
    let mut args = sweep.emperor_args();
    args.push("--emperor-tyrant".into());
    h.start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    h.wait_http_unix(&sock, LONG);
    let get = |format: &str| crate::util::docker::inspect(&file, format).unwrap_or_default();
    h.check(
        get("{{.Config.User}}") == format!("{uid}:{gid}"),
        "User is the file's owner",
    );
    h.check(
        get("{{.HostConfig.SecurityOpt}}").contains("no-new-privileges"),
        "no-new-privileges",
    );
    h.check(get("{{.HostConfig.PidsLimit}}") == "256", "the built-in pids limit");
    h.check(get("{{.HostConfig.NetworkMode}}") == "none", "network none forced");
    // From inside, as the kernel sees the container's init: its uid, no_new_privs, no CAP_NET_RAW (bit 13).
    let pid = get("{{.State.Pid}}");
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    h.check(
        field("Uid:").split_whitespace().next() == Some(uid.to_string().as_str()),
        format!("the app's uid: {}", field("Uid:")),
    );
    h.check(field("NoNewPrivs:") == "1", "NoNewPrivs in the container");
    let bounding = u64::from_str_radix(&field("CapBnd:"), 16).unwrap_or(u64::MAX);
    h.check(
        bounding & (1 << 13) == 0,
        format!("no CAP_NET_RAW: CapBnd {bounding:x}"),
    );
    h.wait_log("cannot write docker-cidfile", LONG);
    h.check(
        fs::read_to_string(&secret).unwrap() == "root only\n",
        "the cidfile symlink's root-only target is unchanged",
    );
    for (f, _, key) in hostile {
        let refusals = || {
            h.stderr()
                .lines()
                .filter(|l| l.contains(f) && l.contains(&format!("[emperor] {key} = ")) && l.contains("refused"))
                .count()
        };
        h.wait_for(|| refusals() > 0, LONG, &format!("the refusal of {f}"));
        let lines = refusals();
        h.check(lines == 1, format!("{f}: one refusal line ({lines})"));
        h.check(
            !crate::util::docker::container_exists(f),
            format!("{f}: no container created"),
        );
    }
}

#[test]
fn a_changed_policy_stops_the_vassals_it_refuses_and_lets_them_run_again() {
    let (uid, gid) = ensure_user(TENANT_A);
    let mut h = tenant_harness("tyrant_policy");
    let policy = h.root.join("elsewhere").join("policy.ini");
    fs::write(&policy, "[policy]\nprogram = *\n").unwrap();
    write_owned(&h.vassal("app.ini"), &h.app_ini("app", ""), uid, gid);
    let policy_arg = policy.display().to_string();
    h.start(&[
        "--emperor-tyrant",
        "--emperor-policy",
        &policy_arg,
        "--emperor-freq",
        "1",
    ]);
    h.wait_starts("app", 1, LONG);
    let pid = h.starts("app")[0].pid();

    // Programs refused: the running vassal is stopped, with the refusal naming the policy's line.
    let replace = |text: &str| {
        let tmp = policy.with_extension("tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, &policy).unwrap();
    };
    replace("[policy]\n; Docker vassals only\nprogram = none\n");
    h.wait_log("checking every vassal against it", LONG);
    h.wait_for(|| !crate::util::alive(pid), LONG, "the refused vassal to stop");
    h.check(
        h.stderr().contains("refused by") && h.stderr().contains("policy.ini:3"),
        "the refusal names the policy's line",
    );
    // A broken policy file keeps the one in force.
    replace("[policy]\nprogam = *\n");
    h.wait_log("the policy in force stays as it was", LONG);
    // Allowed again: it runs again.
    replace("[policy]\nprogram = *\n");
    h.wait_starts("app", 2, LONG);
}

/// A digest of every regular file under `dir` (symlinks not followed), for "nothing changed".
fn tree_digest(dir: &std::path::Path, out: &mut Vec<(String, u64)>) {
    use std::hash::{Hash, Hasher};
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            tree_digest(&e.path(), out);
        } else if t.is_file()
            && let Ok(bytes) = fs::read(e.path())
        {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut hasher);
            out.push((e.path().display().to_string(), hasher.finish()));
        }
    }
}

#[test]
fn fifty_hostile_files_from_two_tenants_each_get_their_line_and_change_nothing() {
    let tenants = [ensure_user(TENANT_A), ensure_user(TENANT_B)];
    let mut h = tenant_harness("tyrant_fifty");
    let tenants_root = h.root.join("elsewhere").join("tenants");
    for (name, (uid, gid)) in [TENANT_A, TENANT_B].iter().zip(tenants) {
        let d = tenants_root.join(name);
        fs::create_dir_all(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(uid), Some(gid)).unwrap();
    }
    // A root-only file the tenants would like to overwrite, and an escape from a tenant's root.
    let secret = h.root.join("secret");
    fs::write(&secret, "root only\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("/etc", tenants_root.join(TENANT_A).join("etc-link")).unwrap();
    let policy = h.root.join("policy.ini");
    fs::write(
        &policy,
        format!(
            "[policy]\nmount-root = {}/%U\nimage = emperor-test/testapp\n",
            tenants_root.display()
        ),
    )
    .unwrap();
    let docker = |extra: &str| format!("[emperor]\ndocker-image = emperor-test/testapp\nexec = /testapp\n{extra}");
    let a_root = tenants_root.join(TENANT_A);
    let hostile: Vec<String> = vec![
        docker("docker-mount = /:/host\n"),
        docker("docker-mount = /var/run/docker.sock:/d.sock\n"),
        docker("docker-mount = /run/docker.sock:/d.sock\n"),
        docker("docker-mount = /etc:/etc\n"),
        docker("docker-mount = /proc:/p\n"),
        docker("docker-mount = /sys:/s\n"),
        docker("docker-mount = /dev:/d\n"),
        docker(&format!("docker-mount = {}:/x\n", a_root.join("etc-link").display())),
        // The other tenant's root (filled in per tenant below).
        String::new(),
        docker(&format!("docker-mount = {}:/x\n", a_root.join("missing").display())),
        docker("docker-network-mode = host\n"),
        docker("docker-network-mode = container:other\n"),
        docker("docker-network-mode = bridge\n"),
        docker("docker-user = 0\n"),
        docker("docker-user = root\n"),
        docker("docker-user = 0:0\n"),
        docker("docker-port = 8080:80\n"),
        docker("docker-memory = 64g\n"),
        "[emperor]\ndocker-image = busybox\nexec = sh\n".into(),
        "[emperor]\ndocker-image = emperor-test/uwsgi\nexec = sh\n".into(),
        "[emperor]\nsocket = 127.0.0.1:80\nexec = /bin/true\n".into(),
        "[emperor]\nsocket = 127.0.0.1:22\nexec = /bin/true\n".into(),
        "[emperor]\nsocket = /tmp/x.sock\nchown-socket = root\nexec = /bin/true\n".into(),
    ];
    let mut expected = Vec::new();
    // 23 kinds × 2 tenants = 46 hostile files, 4 root-owned ones, and 2 legal vassals per tenant.
    for (t, (uid, gid)) in tenants.iter().enumerate() {
        let other = tenants_root.join([TENANT_B, TENANT_A][t]);
        for (i, text) in hostile.iter().enumerate() {
            let f = format!("h{t}-{i:02}.ini");
            let other_root = docker(&format!("docker-mount = {}:/x\n", other.display()));
            let text = if text.is_empty() { &other_root } else { text };
            write_owned(&h.vassal(&f), text, *uid, *gid);
            expected.push(f);
        }
        for n in 0..2 {
            let name = format!("ok{t}{n}");
            write_owned(&h.vassal(&format!("{name}.ini")), &h.app_ini(&name, ""), *uid, *gid);
        }
    }
    for i in 0..4 {
        let f = format!("rooted{i}.ini");
        h.write_vassal(&f, &h.app_ini(&format!("rooted{i}"), ""));
        expected.push(f);
    }
    assert_eq!(expected.len() + 4, 54);
    let mut before = Vec::new();
    tree_digest(std::path::Path::new("/etc"), &mut before);
    let policy_arg = policy.display().to_string();
    h.start(&["--emperor-tyrant", "--emperor-policy", &policy_arg]);
    for t in 0..2 {
        for n in 0..2 {
            h.wait_starts(&format!("ok{t}{n}"), 1, LONG);
        }
    }
    for f in &expected {
        h.wait_for(
            || {
                h.stderr()
                    .lines()
                    .any(|l| l.contains(&format!("/{f}")) && l.contains("refused"))
            },
            LONG,
            &format!("the refusal of {f}"),
        );
    }
    let stderr = h.stderr();
    for f in &expected {
        let lines = stderr.lines().filter(|l| l.contains(&format!("[{f}]"))).count();
        h.check(lines >= 1, format!("{f}: its line"));
        h.check(
            h.starts(f.trim_end_matches(".ini")).is_empty(),
            format!("{f} never ran"),
        );
    }
    h.check(!stderr.contains("panicked"), "no panic");
    let mut after = Vec::new();
    tree_digest(std::path::Path::new("/etc"), &mut after);
    h.check(before == after, "nothing under /etc changed");
    h.check(
        fs::read_to_string(&secret).unwrap() == "root only\n",
        "the root-only file is unchanged",
    );
}

/// Rows from PostgreSQL in tyrant mode: uWSGI's 4th and 5th columns are the owner. A row of root, or with no
/// owner, is refused with its name; the others run as their uid and gid.
#[test]
fn pg_rows_run_as_their_uid_and_gid_and_rows_of_root_or_nobody_are_refused() {
    let (uid, gid) = ensure_user(TENANT_A);
    let mut h = tenant_harness("tyrant_pg");
    let pg = crate::util::pg::Postgres::with_schema();
    let source = format!(
        "pg://{};SELECT name, config, EXTRACT(epoch FROM ts), uid, gid FROM vassals",
        pg.conninfo()
    );
    h.start_role(&["--emperor-tyrant", "--emperor-freq", "60", &source]);
    let row = |name: &str, owner: &str| {
        let config = h.app_ini(name, "");
        pg.sql(&format!(
            "INSERT INTO vassals (name, config, uid, gid) VALUES ('{name}.ini', $c${config}$c$, {owner})"
        ));
    };
    row("tenant", &format!("{uid}, {gid}"));
    row("root", "0, 0");
    row("nobody", "NULL, NULL");
    let start = &h.wait_starts("tenant", 1, LONG)[0];
    h.check(
        start.get("uid") == uid.to_string() && start.get("gid") == gid.to_string(),
        format!("runs as {uid}:{gid}: {start:?}"),
    );
    h.wait_log(
        "pg:root.ini: refused: in tyrant mode a row of uid 0 or gid 0 never runs",
        LONG,
    );
    h.wait_log(
        "pg:nobody.ini: refused: in tyrant mode a row needs its uid and gid",
        LONG,
    );
    h.check(
        h.starts("root").is_empty() && h.starts("nobody").is_empty(),
        "neither runs",
    );
    // Its owner changed to root's group: the running vassal keeps its last good config (as for a broken file),
    // and the refusal names the row.
    pg.sql("UPDATE vassals SET gid = 0 WHERE name = 'tenant.ini'");
    h.wait_log("pg:tenant.ini: refused: in tyrant mode a row of uid 0", LONG);
}
