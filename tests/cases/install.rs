//! Installing: `scripts/install` staged into a temp root (its DESTDIR mode: nothing outside it is touched), the unit it
//! writes checked by `systemd-analyze verify`, and what a new user reads first: `--help` and the usage line after a
//! mistake.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util::{EMPEROR, Harness};

pub(super) fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `scripts/install --destdir <dest> --binary <the tested emperor>` plus `args`, with `env` set; returns its
/// output, asserting success.
fn install(dest: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(manifest_dir().join("scripts/install"));
    for var in ["PREFIX", "DESTDIR", "EMPEROR_BINARY"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    if !env.iter().any(|(k, _)| *k == "DESTDIR") {
        cmd.arg("--destdir").arg(dest);
    }
    let out = cmd
        .args(["--binary", EMPEROR])
        .args(args)
        .output()
        .expect("running scripts/install");
    let t = text(&out);
    assert!(out.status.success(), "scripts/install failed ({}):\n{t}", out.status);
    t
}

/// `systemd-analyze verify` of one unit file. It exits 0 on a misspelt key or a bad value (it only warns,
/// "Unknown key 'KilMode' in section [Service], ignoring."), so any line about this unit counts as a failure
/// too. Lines about other units (docker.service, pulled in by Wants=) are not ours to judge.
fn verify(unit: &Path) -> Result<(), String> {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(unit)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}): it is in Debian's systemd package, which scripts/setup installs")
        });
    let t = text(&out);
    let ours: Vec<&str> = t.lines().filter(|l| l.contains("emperor.service")).collect();
    if out.status.success() && ours.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "systemd-analyze verify {} ({}):\n{t}",
            unit.display(),
            out.status
        ))
    }
}

/// The value of every `key=` line of a unit file.
pub(super) fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .collect()
}

/// The value of the one `key=` line of a unit file.
#[track_caller]
pub(super) fn one<'a>(unit: &'a str, key: &str) -> &'a str {
    match values(unit, key)[..] {
        [v] => v,
        ref vs => panic!("expected one {key}= line in the unit, found {vs:?}:\n{unit}"),
    }
}

/// The default a client subcommand's `--help` shows for one of its options (`[default: /run/emperor/...]`).
fn client_default(subcommand: &str, option: &str) -> String {
    let out = Command::new(EMPEROR)
        .args([subcommand, "--help"])
        .env_remove("EMPEROR_STATS")
        .env_remove("EMPEROR_CONTROL")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = help
        .lines()
        .find(|l| l.trim_start().starts_with(option))
        .unwrap_or_else(|| panic!("no {option} in `emperor {subcommand} --help`:\n{help}"));
    let (_, rest) = line
        .split_once("[default: ")
        .unwrap_or_else(|| panic!("no default in {line:?}"));
    rest.split(']').next().unwrap().to_owned()
}

/// Checks the unit `scripts/install` staged under `dest` for `prefix`, then verifies a copy whose `prefix` paths
/// point into `dest` (systemd-analyze checks that ExecStart's program exists; `--root=` would instead look for
/// /bin/kill and sysinit.target in the staged tree too). Returns the unit's text.
fn check_staged(h: &Harness, dest: &Path, prefix: &str) -> String {
    let unit_path = dest.join("etc/systemd/system/emperor.service");
    let unit = fs::read_to_string(&unit_path).unwrap_or_else(|e| panic!("{}: {e}", unit_path.display()));
    let staged = |abs: &str| dest.join(abs.trim_start_matches('/'));

    // The binary: the one given, executable, where ExecStart= runs it.
    let exec: Vec<&str> = one(&unit, "ExecStart").split_whitespace().collect();
    let bin = format!("{prefix}/bin/emperor");
    assert_eq!(exec[0], bin, "ExecStart runs the installed binary");
    let meta = fs::metadata(staged(&bin)).expect("the staged binary");
    assert!(meta.permissions().mode() & 0o111 != 0, "{bin} is executable");
    assert_eq!(
        fs::read(staged(&bin)).unwrap(),
        fs::read(EMPEROR).unwrap(),
        "{bin} is the binary given"
    );

    // The sockets the clients use by default, so that `emperor status` and `emperor restart x` work as they are.
    for (opt, sub, client_opt) in [
        ("--emperor-stats", "status", "--stats"),
        ("--emperor-control", "restart", "--control"),
    ] {
        let i = exec
            .iter()
            .position(|a| *a == opt)
            .unwrap_or_else(|| panic!("ExecStart has {opt}: {exec:?}"));
        assert_eq!(
            exec[i + 1],
            client_default(sub, client_opt),
            "{opt} is where `emperor {sub}` looks"
        );
    }

    // The vassals directory: the last argument, staged, and the one systemd creates before each start.
    let vassals = *exec.last().unwrap();
    assert!(staged(vassals).is_dir(), "{vassals} is staged");
    let config_dir = one(&unit, "ConfigurationDirectory");
    assert_eq!(
        format!("/etc/{config_dir}"),
        vassals,
        "ConfigurationDirectory= creates the vassals directory"
    );

    // Documentation= names the installed README.
    let doc = one(&unit, "Documentation");
    let doc_path = doc
        .strip_prefix("file://")
        .unwrap_or_else(|| panic!("Documentation={doc} is a file:// URL"));
    assert_eq!(doc_path, format!("{prefix}/share/doc/emperor/README.md"));
    assert_eq!(
        fs::read_to_string(staged(doc_path)).expect("the staged README"),
        fs::read_to_string(manifest_dir().join("README.md")).unwrap(),
        "Documentation= points at the README"
    );

    let dir = h.root.join(format!("verify{}", prefix.replace('/', "-")));
    fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("emperor.service");
    let moved = unit.replace(&format!("{prefix}/"), &format!("{}{prefix}/", dest.display()));
    fs::write(&copy, &moved).unwrap();
    if let Err(e) = verify(&copy) {
        panic!("the installed unit does not verify: {e}\n--- unit:\n{moved}");
    }
    unit
}

#[test]
fn installed_unit_passes_systemd_analyze_verify() {
    let h = Harness::new("installed_unit_verifies");
    let dest = h.root.join("dest");
    let out = install(&dest, &[], &[]);
    assert!(
        out.contains("systemctl daemon-reload && systemctl enable --now emperor"),
        "it prints the line that starts the service:\n{out}"
    );
    let unit = check_staged(&h, &dest, "/usr/local");
    assert_eq!(
        unit,
        fs::read_to_string(manifest_dir().join("contrib/emperor.service")).unwrap(),
        "with the default prefix the unit is contrib/emperor.service as it is"
    );

    // The check is not blind: a misspelt key (which systemd ignores with a warning, exit status 0) and an
    // ExecStart program that does not exist both fail it.
    let bad = h.root.join("bad");
    fs::create_dir_all(&bad).unwrap();
    let copy = bad.join("emperor.service");
    let good = unit.replace("/usr/local/", &format!("{}/usr/local/", dest.display()));
    for (what, broken) in [
        ("a misspelt key", good.replace("\nKillMode=", "\nKilMode=")),
        ("a missing program", good.replace("/bin/emperor ", "/bin/emperorr ")),
    ] {
        assert_ne!(broken, good, "{what}: the replacement applies");
        fs::write(&copy, &broken).unwrap();
        assert!(
            verify(&copy).is_err(),
            "systemd-analyze verify must reject {what}:\n{broken}"
        );
    }
}

#[test]
fn install_into_another_prefix_moves_the_units_paths_and_runs_again_unchanged() {
    let h = Harness::new("install_prefix");
    let dest: PathBuf = h.root.join("dest");
    let dest_s = dest.to_str().unwrap();
    // DESTDIR and PREFIX from the environment, as `make install` takes them.
    let env = [("DESTDIR", dest_s), ("PREFIX", "/opt/emperor")];
    let first = install(&dest, &[], &env);
    assert!(first.contains("emperor.service (written)"), "{first}");
    let unit = check_staged(&h, &dest, "/opt/emperor");
    let left: Vec<&str> = unit
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("/usr/local"))
        .collect();
    assert!(
        left.is_empty(),
        "no /usr/local path is left in the unit's settings: {left:?}"
    );

    let again = install(&dest, &[], &env);
    assert!(
        again.contains("emperor.service (unchanged)"),
        "a second run rewrites nothing:\n{again}"
    );
    assert_eq!(
        fs::read_to_string(dest.join("etc/systemd/system/emperor.service")).unwrap(),
        unit
    );
    assert!(
        !dest.join("usr").exists(),
        "nothing is installed under the default prefix when another is given"
    );
}

#[test]
fn help_and_usage_describe_both_kinds_of_vassal_and_the_subcommands() {
    let help = Command::new(EMPEROR).arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for word in [
        "Docker",
        "process",
        "on-demand",
        "idle",
        "status",
        "restart",
        "stop",
        "start",
        "shell",
    ] {
        assert!(help.contains(word), "--help mentions {word:?}:\n{help}");
    }
    assert!(
        !help.contains("as a plain process"),
        "--help does not say vassals are only processes:\n{help}"
    );

    // After a mistake, the usage line shows every form, not only what the error was about.
    for args in [&["--bogus"][..], &[], &["--reload-mercy", "5"]] {
        let out = Command::new(EMPEROR).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "emperor {args:?} is a usage error");
        let err = String::from_utf8_lossy(&out.stderr);
        for form in [
            "Usage: emperor [OPTIONS] <VASSALS_DIR>",
            "emperor status [--stats <ADDR>]",
            "emperor restart|stop|start <VASSAL>",
            "emperor shell ",
        ] {
            assert!(
                err.contains(form),
                "the usage after `emperor {args:?}` shows {form:?}:\n{err}"
            );
        }
    }
}
