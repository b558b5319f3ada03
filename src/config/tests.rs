//! Helpers for the tests of every file of `config`, and the tests of [`parse`] and [`load`] as a whole.

use std::path::{Path, PathBuf};

use super::*;

pub(super) const DIR: &str = "/srv/vassals.d";

pub(super) fn ok(text: &str) -> VassalConfig {
    match parse("app.ini", Path::new("/srv/vassals.d/app.ini"), text, Path::new(DIR)) {
        Ok(config) => config,
        Err(e) => panic!("expected {text:?} to parse, got:\n{e}"),
    }
}

pub(super) fn err(text: &str) -> ConfigError {
    match parse("app.ini", Path::new("/srv/vassals.d/app.ini"), text, Path::new(DIR)) {
        Ok(config) => panic!("expected {text:?} to fail, got {config:?}"),
        Err(e) => e,
    }
}

/// `[emperor]` + one line.
pub(super) fn one(line: &str) -> String {
    format!("[emperor]\n{line}\n")
}

pub(super) fn tcp(s: &str) -> SocketAddrSpec {
    SocketAddrSpec::Tcp(s.parse().expect("test address"))
}

pub(super) fn parse_as(name: &str, text: &str) -> Result<VassalConfig, ConfigError> {
    parse(name, &Path::new(DIR).join(name), text, Path::new(DIR))
}

pub(super) fn docker(text: &str) -> DockerConfig {
    ok(text)
        .docker
        .unwrap_or_else(|| panic!("expected a docker vassal: {text:?}"))
}

/// `[emperor]` + `docker-image = img` + the given lines.
pub(super) fn with_image(lines: &str) -> String {
    format!("[emperor]\ndocker-image = img\n{lines}\n")
}

/// (line, key, message) of every problem.
pub(super) fn problems(e: &ConfigError) -> Vec<(Option<usize>, Option<&str>, &str)> {
    e.problems
        .iter()
        .map(|p| (p.line, p.key.as_deref(), p.message.as_str()))
        .collect()
}

pub(super) fn route(host: &str, socket: Option<&str>) -> Route {
    Route {
        host: host.into(),
        socket: socket.map(Into::into),
    }
}

#[test]
fn no_emperor_section_is_a_classic_vassal() {
    let text = "[uwsgi]\nhttp-socket = :8080\nmaster = true\n";
    let c = ok(text);
    assert_eq!(c.name, "app.ini");
    assert_eq!(c.path, Path::new("/srv/vassals.d/app.ini"));
    assert_eq!(c.text, text);
    assert!(c.sockets.is_empty() && c.exec.is_none() && c.env.is_empty() && c.chdir.is_none());
    assert_eq!(
        (c.stop_signal, c.stop_timeout, c.chmod_socket, c.listen),
        (None, None, None, None)
    );
    assert_eq!(c.chown_socket, None);
    assert_eq!(ok("[uwsgi]\n").emperor_hash, c.emperor_hash);
}

#[test]
fn all_problems_in_one_pass() {
    let e = err("[emperor]\nsockte = /a.sock\nlisten = 0\nmaster\nlisten = 3\n");
    assert_eq!(
        e.to_string(),
        "/srv/vassals.d/app.ini:2: [emperor] sockte = \"/a.sock\": unknown key; did you mean \"socket\"?\n\
         /srv/vassals.d/app.ini:3: [emperor] listen = \"0\": expected a number from 1 to 65535\n\
         /srv/vassals.d/app.ini:4: expected \"key = value\", found \"master\"\n\
         /srv/vassals.d/app.ini:5: [emperor] listen = \"3\": given twice (first on line 3)"
    );
}

#[test]
fn display_typical() {
    let e = err("[uwsgi]\nmodule = app\n\n[emperor]\nsocket = /run/a.sock\nsocket = 10.0.0.1:0\n");
    assert_eq!(
        e.to_string(),
        "/srv/vassals.d/app.ini:6: [emperor] socket = \"10.0.0.1:0\": \
         port 0 is not allowed: the socket must keep its address across restarts"
    );
}

#[test]
fn load_reads_file_and_reports_io_and_utf8() {
    let dir = std::env::temp_dir().join(format!("emperor-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let good = dir.join("good.ini");
    std::fs::write(&good, "[emperor]\nsocket = run/g.sock\n").unwrap_or_else(|e| panic!("{e}"));
    let c = load(&good, &dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.name, "good.ini");
    assert_eq!(c.sockets[0].addr, SocketAddrSpec::Unix(dir.join("run/g.sock")));

    let bad = dir.join("bad.ini");
    std::fs::write(&bad, b"[emperor]\nexec = \xff\n").unwrap_or_else(|e| panic!("{e}"));
    let e = load(&bad, &dir).err().unwrap_or_else(|| panic!("expected utf-8 error"));
    assert_eq!(e.problems.len(), 1);
    assert_eq!(e.problems[0].line, Some(2));
    assert_eq!(
        e.to_string(),
        format!(
            "{}:2: not valid UTF-8 (bad byte at offset 17); a vassal file is UTF-8 text",
            bad.display()
        )
    );

    let missing = dir.join("missing.ini");
    let e = load(&missing, &dir)
        .err()
        .unwrap_or_else(|| panic!("expected io error"));
    assert_eq!(e.problems[0].line, None);
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot read: ", missing.display())),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nul_bytes_and_empty_files_are_errors_and_messages_are_printable() {
    let p = Path::new("/v/x.ini");
    let e = parse("x.ini", p, "[emperor]\nexec = /bin/true\0 --evil\n", Path::new("/v")).unwrap_err();
    assert_eq!(e.problems[0].line, Some(2));
    assert!(e.to_string().starts_with("/v/x.ini:2: a NUL byte"), "{e}");
    for empty in ["", "\n\n", "  ; a comment\n# another\n", "\u{feff}"] {
        let e = parse("x.ini", p, empty, Path::new("/v")).unwrap_err();
        assert!(e.to_string().contains("empty file: nothing to run"), "{empty:?}: {e}");
    }
    // A control character in a value is shown escaped, never raw.
    let e = parse("x.ini", p, "[emperor]\nsockte = a\u{1b}[2Jb\n", Path::new("/v")).unwrap_err();
    let shown = e.to_string();
    assert!(shown.contains("a\\u{1b}[2Jb") && !shown.contains('\u{1b}'), "{shown}");
    assert_eq!(printable("tab\there"), "tab\\there");
    assert_eq!(printable("caf\u{e9}"), "caf\u{e9}");
}

#[test]
fn examples_in_vassals_d_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("vassals.d");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return; // no examples yet
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ini"))
        .collect();
    paths.sort();
    for path in paths {
        if let Err(e) = load(&path, &dir) {
            panic!("example does not parse:\n{e}");
        }
    }
}

#[test]
fn emperor_lines_are_kept_with_their_line_numbers() {
    let c = ok("[uwsgi]\nmaster = true\n[emperor]\n; note\nsocket = /a.sock\nenv = A=1\n[emperor]\nsocket = /b.sock\n");
    let got: Vec<(&str, &str, Option<usize>)> = c
        .lines
        .iter()
        .map(|l| (l.key.as_str(), l.value.as_str(), l.line))
        .collect();
    assert_eq!(
        got,
        [
            ("socket", "/a.sock", Some(5)),
            ("env", "A=1", Some(6)),
            ("socket", "/b.sock", Some(8))
        ]
    );
}
