//! uwsgi-docker's container attributes, each seen twice: in the container's definition (`docker inspect`) and
//! from inside the container, by the vassal's own command (busybox's `pwd`, `hostname`, and the memory cgroup's
//! files, printed to the emperor's stdout).
//!
//! The memory cgroup: on cgroup v1 (this machine: Docker 20.10, cgroupfs driver) the container sees its own
//! cgroup at /sys/fs/cgroup/memory, where `memory.limit_in_bytes` is `docker-memory` and
//! `memory.memsw.limit_in_bytes` is `docker-swap` (memory + swap, Docker's `MemorySwap`; -1 shows as the
//! largest page-aligned value). On cgroup v2 the files are /sys/fs/cgroup/memory.max and memory.swap.max, the
//! latter holding swap alone (`docker-swap` - `docker-memory`, or `max`); the vassal's script reads whichever
//! exists and the test checks each by its own rule.
//!
//! And `docker-cidfile`: it holds the running container's id and goes when the container goes, however it
//! goes (a stop, a reload to a new container, the emperor's shutdown; its deletion is in tests/cases/docker.rs),
//! and what is already at its path is never written through.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use crate::util::docker::{DockerSweep, inspect, unique_name, wait_no_container};
use crate::util::{Harness, LONG, ctl_ok};

/// The `key=value` fields of the vassal's first output line starting with `attrs `.
fn attrs(h: &Harness, file: &str) -> std::collections::HashMap<String, String> {
    h.wait_for(
        || h.vassal_output(file).iter().any(|l| l.starts_with("attrs ")),
        LONG,
        &format!("the attrs line of {file}"),
    );
    let line = h
        .vassal_output(file)
        .into_iter()
        .find(|l| l.starts_with("attrs "))
        .unwrap();
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A busybox vassal that prints what it sees of its container, then sleeps.
fn busybox_vassal(extra: &str) -> String {
    // No single quote inside: the whole script is one single-quoted `exec` argument.
    let script = "m=/sys/fs/cgroup/memory; \
        if [ -e $m/memory.memsw.limit_in_bytes ]; \
        then cg=\"cg=v1 memory=$(cat $m/memory.limit_in_bytes) swap=$(cat $m/memory.memsw.limit_in_bytes)\"; \
        else cg=\"cg=v2 memory=$(cat /sys/fs/cgroup/memory.max) swap=$(cat /sys/fs/cgroup/memory.swap.max)\"; fi; \
        echo \"attrs pwd=$(pwd) hostname=$(hostname) $cg\"; exec sleep 600";
    format!(
        "[emperor]\ndocker-image = emperor-test/busybox\ndocker-network-mode = none\n{extra}exec = sh -c '{script}'\n"
    )
}

#[test]
fn docker_workdir_hostname_memory_and_swap_reach_the_container() {
    let sweep = DockerSweep::new();
    let mut h = Harness::new("docker_attrs");
    let (a, b) = (unique_name("attrs"), unique_name("attrsunl"));
    let (fa, fb) = (format!("{a}.ini"), format!("{b}.ini"));
    h.write_vassal(
        &fa,
        &busybox_vassal(
            "docker-workdir = /srv/work\ndocker-hostname = shop-1.example\ndocker-memory = 64m\ndocker-swap = 96m\n",
        ),
    );
    h.write_vassal(&fb, &busybox_vassal("docker-memory = 32m\ndocker-swap = -1\n"));
    let args = sweep.emperor_args();
    h.start(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // From inside: the shell's working directory (Docker creates it), the kernel's hostname, the cgroup's limits.
    let seen = attrs(&h, &fa);
    let field = |k: &str| seen.get(k).map(String::as_str).unwrap_or("");
    h.check(field("pwd") == "/srv/work", format!("pwd in the container: {seen:?}"));
    h.check(
        field("hostname") == "shop-1.example",
        format!("hostname in the container: {seen:?}"),
    );
    let (memory, swap) = (64u64 << 20, 96u64 << 20);
    match field("cg") {
        "v1" => {
            h.check(
                field("memory") == memory.to_string(),
                format!("memory.limit_in_bytes: {seen:?}"),
            );
            h.check(
                field("swap") == swap.to_string(),
                format!("memory.memsw.limit_in_bytes: {seen:?}"),
            );
        }
        "v2" => {
            h.check(field("memory") == memory.to_string(), format!("memory.max: {seen:?}"));
            h.check(
                field("swap") == (swap - memory).to_string(),
                format!("memory.swap.max: {seen:?}"),
            );
        }
        other => h.check(false, format!("unknown cgroup version {other:?}: {seen:?}")),
    }
    // Unlimited swap: the limit is the largest value the kernel keeps (v1), `max` (v2).
    let unl = attrs(&h, &fb);
    let ufield = |k: &str| unl.get(k).map(String::as_str).unwrap_or("");
    h.check(ufield("memory") == (32u64 << 20).to_string(), format!("{unl:?}"));
    h.check(
        ufield("swap") == "max" || ufield("swap").parse::<u64>().is_ok_and(|v| v > 1 << 62),
        format!("unlimited swap in the container: {unl:?}"),
    );

    // The container's definition.
    let get = |file: &str, f: &str| inspect(file, f).unwrap_or_default();
    h.check(get(&fa, "{{.Config.WorkingDir}}") == "/srv/work", "Config.WorkingDir");
    h.check(get(&fa, "{{.Config.Hostname}}") == "shop-1.example", "Config.Hostname");
    h.check(
        get(&fa, "{{.HostConfig.Memory}}") == memory.to_string(),
        "HostConfig.Memory",
    );
    h.check(
        get(&fa, "{{.HostConfig.MemorySwap}}") == swap.to_string(),
        "HostConfig.MemorySwap",
    );
    h.check(
        get(&fb, "{{.HostConfig.MemorySwap}}") == "-1",
        "HostConfig.MemorySwap -1",
    );
    // Without docker-hostname, Docker's default: the container id's first 12 characters.
    let id = get(&fb, "{{.Id}}");
    h.check(
        ufield("hostname") == &id[..12.min(id.len())],
        format!("the default hostname is the short id {id}: {unl:?}"),
    );
}

/// What the cidfile holds now ("" when it is missing).
fn cid_text(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// The cidfile holds the running container's id (nothing else, as `docker run --cidfile` writes it) and is
/// removed when the container goes: `emperor stop`, a reload to a new container, the emperor's shutdown.
#[test]
fn the_cidfile_follows_its_container_through_stop_reload_and_shutdown() {
    let sweep = DockerSweep::new();
    let mut h = Harness::new("docker_cid_life");
    let name = unique_name("cidlife");
    let file = format!("{name}.ini");
    let cid = h.root.join("run").join("app.cid");
    h.write_vassal(
        &file,
        &crate::util::docker::testapp_vassal(&h, &name, &format!("docker-cidfile = {}\n", cid.display())),
    );
    let control = h.root.join("control.sock");
    let mut args = sweep.emperor_args();
    args.extend(["--emperor-control".into(), control.display().to_string()]);
    args.extend(["--reload-mercy", "5"].map(String::from));
    h.start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let id = || inspect(&file, "{{.Id}}").unwrap_or_default();
    h.wait_starts(&name, 1, LONG);
    let id1 = id();
    h.wait_for(
        || cid_text(&cid) == id1,
        LONG,
        "the cidfile with the first container's id",
    );
    let meta = fs::metadata(&cid).unwrap();
    h.check(
        meta.uid() == 0 && meta.permissions().mode() & 0o777 == 0o644,
        format!("root's, 0644: {:o} uid {}", meta.permissions().mode(), meta.uid()),
    );

    // A reload: the new container's id replaces the old one's, and the old container's removal leaves it.
    h.touch_vassal(&file);
    h.wait_starts(&name, 2, LONG);
    h.wait_for(
        || sweep.containers().len() == 1 && !id().is_empty() && id() != id1,
        Duration::from_secs(30),
        "the new container alone, under the vassal's name",
    );
    let id2 = id();
    h.wait_for(
        || cid_text(&cid) == id2,
        LONG,
        "the cidfile with the new container's id",
    );

    // `emperor stop`: the container goes, and its cidfile with it; `emperor start` writes the next one's.
    ctl_ok(&h, &control, &["stop", &file]);
    h.check(wait_no_container(&file, LONG), "the container is removed on stop");
    h.wait_for(|| !cid.exists(), LONG, "the cidfile removed with the stopped container");
    ctl_ok(&h, &control, &["start", &file]);
    h.wait_starts(&name, 3, LONG);
    let id3 = id();
    h.wait_for(
        || !id3.is_empty() && cid_text(&cid) == id3,
        LONG,
        "the cidfile of the container started again",
    );

    // The emperor's shutdown.
    h.signal(libc::SIGTERM);
    let st = h.wait_exit(Duration::from_secs(30));
    h.check(st.code() == Some(0), format!("emperor exit status {st:?}"));
    h.check(sweep.containers().is_empty(), "no container left");
    h.check(!cid.exists(), "no cidfile left after the shutdown");
}

/// What a vassal file's cidfile path already leads to is never written through: a symlink to another file, or
/// a file that is not a cidfile, stays as it is (the container runs all the same, with a warning); and a FIFO
/// put in the cidfile's place cannot hang the bridge that removes its container.
#[test]
fn the_cidfile_never_writes_through_what_is_already_there() {
    let sweep = DockerSweep::new();
    let mut h = Harness::new("docker_cid_safe");
    let run = h.root.join("run");
    let precious = h.root.join("elsewhere").join("precious");
    fs::write(&precious, "keep me\n").unwrap();
    let (l, o, f) = (unique_name("cidlink"), unique_name("cidother"), unique_name("cidfifo"));
    let link = run.join("link.cid");
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    let other = run.join("other.cid");
    fs::write(&other, "not an id\n").unwrap();
    let fifo_cid = run.join("fifo.cid");
    for (n, path) in [(&l, &link), (&o, &other), (&f, &fifo_cid)] {
        h.write_vassal(
            &format!("{n}.ini"),
            &crate::util::docker::testapp_vassal(&h, n, &format!("docker-cidfile = {}\n", path.display())),
        );
    }
    let args = sweep.emperor_args();
    h.start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    for n in [&l, &o, &f] {
        h.wait_starts(n, 1, LONG);
    }
    h.wait_vlog(
        &format!("{l}.ini"),
        "a symlink is there; it is neither followed nor replaced",
        LONG,
    );
    h.wait_vlog(&format!("{o}.ini"), "holds something else than a container id", LONG);
    h.check(cid_text(&precious) == "keep me\n", "the symlink's target is untouched");
    h.check(cid_text(&other) == "not an id\n", "the other file is untouched");
    h.check(
        fs::symlink_metadata(&link).unwrap().file_type().is_symlink(),
        "the symlink is still there",
    );
    let fifo_id = inspect(&format!("{f}.ini"), "{{.Id}}").unwrap_or_default();
    h.wait_for(|| cid_text(&fifo_cid) == fifo_id, LONG, "the third vassal's cidfile");
    // Its cidfile replaced by a FIFO: removing the container must neither block on it nor remove it.
    let fifo_tmp = run.join("fifo.tmp");
    nix::unistd::mkfifo(&fifo_tmp, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    fs::rename(&fifo_tmp, &fifo_cid).unwrap();

    for n in [&l, &o, &f] {
        h.remove_vassal(&format!("{n}.ini"));
    }
    for n in [&l, &o, &f] {
        h.check(
            wait_no_container(&format!("{n}.ini"), LONG),
            format!("{n}'s container removed"),
        );
    }
    // Each bridge exits once its container is gone (none hangs on the FIFO): the emperor says the vassal is done.
    for n in [&l, &o, &f] {
        h.wait_log(&format!("[{n}.ini] removed"), LONG);
    }
    h.check(
        cid_text(&precious) == "keep me\n",
        "the symlink's target is still untouched",
    );
    h.check(fs::symlink_metadata(&link).is_ok(), "the symlink is left alone");
    h.check(cid_text(&other) == "not an id\n", "the other file is left alone");
    h.check(
        fs::symlink_metadata(&fifo_cid).is_ok_and(|m| !m.is_file()),
        "the FIFO is left alone",
    );
    h.signal(libc::SIGTERM);
    let st = h.wait_exit(Duration::from_secs(30));
    h.check(
        st.code() == Some(0),
        format!("emperor exit status {st:?} (no bridge hangs)"),
    );
}
