//! The raw layer: the `[emperor]` section's `key = value` lines, with their line numbers, and nothing
//! else of the file.
//!
//! Why only `[emperor]` reaches rust-ini: the rest of the file is the vassal's (uWSGI's), and rust-ini's
//! grammar is not uWSGI's. Fed a whole uWSGI file, rust-ini 0.21 goes wrong in ways that matter, even
//! with `enabled_escape: false` and `enabled_quote: false`:
//!
//! - a bare key with no `=` (a uWSGI flag such as `master`) is read on across newlines up to the next
//!   `=`, so `master\n[emperor]\nsocket = /x` is one key in `[uwsgi]` and our section disappears (at the
//!   end of the file the same line is a hard error); an indented comment does the same;
//! - a line ending in `\` continues onto the next one even with escapes off (uWSGI has no continuation);
//! - text after a section header (`[uwsgi] ; note`) is an error; `:` separates like `=`; a repeated
//!   header makes a second section of the same name.
//!
//! So the text is cut into sections here with uWSGI's own rules (`ini.c`: a trimmed line starting with
//! `[` is a header, `;`/`#` after leading whitespace is a comment), and rust-ini gets a *masked* copy in
//! which every line outside `[emperor]` is blank, so its line and column numbers stay exact. Within
//! `[emperor]`, comments are blanked, a line with no `=` or `:` is reported here (one clear problem
//! instead of a swallowed next line), and a line ending in `\` gets a trailing space so the backslash
//! stays literal, as in uWSGI. Escapes and quote stripping are off because uWSGI has neither: a value
//! such as `C:\foo` or `"x"` means what it says.
//!
//! rust-ini does not report the lines of keys. [`key_end`] scans as rust-ini does (a `\` takes the next
//! character into the key), so the n-th key located here is the n-th entry rust-ini returns; the two are
//! cross-checked by key.

use ini::{Ini, ParseOption};

use super::{Problem, SECTION};

/// One `key = value` of the `[emperor]` section, as rust-ini read it, with its line.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RawEntry {
    pub(super) key: String,
    pub(super) value: String,
    pub(super) line: Option<usize>,
}

/// The `[emperor]` section, untouched except for trimming, in file order (all `[emperor]`
/// sections of the file, concatenated), plus the syntax problems found on the way.
#[derive(Debug, Default)]
pub(super) struct RawVassal {
    pub(super) entries: Vec<RawEntry>,
    pub(super) problems: Vec<Problem>,
    /// A `[uwsgi]` header was seen.
    pub(super) uwsgi_section: bool,
}

impl RawVassal {
    pub(super) fn read(text: &str) -> RawVassal {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut raw = RawVassal::default();
        // Keys in the order rust-ini will see them, with their lines.
        let mut located: Vec<(String, usize)> = Vec::new();
        let mut masked = String::with_capacity(text.len());
        let mut in_ours = false;

        for (index, line) in text.split('\n').enumerate() {
            let line_no = index + 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            let trimmed = line.trim();
            if index > 0 {
                masked.push('\n');
            }
            if trimmed.starts_with('[') {
                // uWSGI ini.c: a header is `[` ... last char; anything else on the line is part
                // of the name, so `[emperor] ; x` is not our section.
                let header =
                    (trimmed.ends_with(']') && trimmed.len() >= 2).then(|| trimmed[1..trimmed.len() - 1].trim());
                in_ours = header == Some(SECTION);
                raw.uwsgi_section |= header == Some("uwsgi");
                if in_ours {
                    masked.push('[');
                    masked.push_str(SECTION);
                    masked.push(']');
                }
                continue;
            }
            if !in_ours || trimmed.is_empty() || trimmed.starts_with(';') || trimmed.starts_with('#') {
                continue;
            }
            match key_end(line) {
                None => {
                    raw.problems.push(Problem::at_line(
                        line_no,
                        format!("expected \"key = value\", found \"{trimmed}\""),
                    ));
                }
                Some(end) => {
                    located.push((line[..end].trim().to_owned(), line_no));
                    masked.push_str(line);
                    if line.ends_with('\\') {
                        // Keep the backslash literal: rust-ini joins `\`+newline to the next line.
                        masked.push(' ');
                    }
                }
            }
        }

        let options = ParseOption {
            enabled_quote: false,
            enabled_escape: false,
            ..Default::default()
        };
        let ini = match Ini::load_from_str_opt(&masked, options) {
            Ok(ini) => ini,
            Err(e) => {
                raw.problems.push(Problem {
                    line: Some(e.line),
                    column: Some(e.col),
                    key: None,
                    value: None,
                    message: format!("syntax error: {}", e.msg.trim_end_matches('.')),
                });
                return raw;
            }
        };

        let mut located = located.into_iter();
        for props in ini.section_all(Some(SECTION)) {
            for (key, value) in props.iter() {
                let line = match located.next() {
                    Some((k, line)) if k == key => Some(line),
                    _ => None,
                };
                raw.entries.push(RawEntry {
                    key: key.to_owned(),
                    value: value.trim().to_owned(),
                    line,
                });
            }
        }
        raw
    }
}

/// Byte offset of the `=` or `:` that ends the key on this line, scanning as rust-ini does
/// (a backslash takes the next character into the key). `None`: no separator on the line.
fn key_end(line: &str) -> Option<usize> {
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '=' | ':' => return Some(i),
            '\\' => {
                chars.next();
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::config::tests::{err, ok, one};

    #[test]
    fn line_numbers_after_foreign_sections_and_repeated_emperor() {
        let text = "; comment\n\
                    [uwsgi]\n\
                    socket = /not/ours\n\
                    master\n\
                    [emperor]\n\
                    listen = 5\n\
                    \n\
                    [uwsgi]\n\
                    workers = 4\n\
                    [emperor]\n\
                    # comment\n\
                    \x20  ; indented comment\n\
                    listen = 6\n\
                    bogus = 1\n";
        let e = err(text);
        let got: Vec<_> = e
            .problems
            .iter()
            .map(|p| (p.line, p.key.as_deref(), p.message.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(13), Some("listen"), "given twice (first on line 6)"),
                (Some(14), Some("bogus"), "unknown key"),
            ]
        );
    }

    #[test]
    fn crlf_line_endings() {
        let c = ok("[emperor]\r\nsocket = /a.sock\r\nexec = app arg\r\n");
        assert_eq!(c.exec, Some(vec!["app".into(), "arg".into()]));
        let e = err("[uwsgi]\r\nx = 1\r\n[emperor]\r\nlisten = 0\r\n");
        assert_eq!(e.problems[0].line, Some(4));
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let e = err("[uwsgi]\nx = 1\n[emperor]\n= value\n");
        assert_eq!(e.problems.len(), 1);
        let p = &e.problems[0];
        assert_eq!((p.line, p.key.as_deref()), (Some(4), None));
        assert!(p.column.is_some());
        assert!(p.message.starts_with("syntax error: missing key"), "{}", p.message);
        let shown = e.to_string();
        assert!(shown.starts_with("/srv/vassals.d/app.ini:4:"), "{shown}");
        assert!(!shown.ends_with('.'), "{shown}");
    }

    #[test]
    fn backslashes_survive() {
        // No INI escapes: the file's `\\` reaches shlex, which makes it one backslash.
        let c = ok(&one(r"exec = C:\\foo"));
        assert_eq!(c.exec, Some(vec![r"C:\foo".to_owned()]));
        let c = ok(&one(r"chdir = /srv/a\tb\n"));
        assert_eq!(c.chdir, Some(PathBuf::from(r"/srv/a\tb\n")));
        let c = ok(&one(r"env = P=C:\Windows\x41"));
        assert_eq!(c.env, vec![("P".to_owned(), r"C:\Windows\x41".to_owned())]);
        // A trailing backslash is literal (uWSGI has no line continuation) and does not eat the
        // next line.
        let c = ok("[emperor]\nchdir = /srv/app\\\nlisten = 7\n");
        assert_eq!(c.chdir, Some(PathBuf::from("/srv/app\\")));
        assert_eq!(c.listen, Some(7));
    }

    #[test]
    fn quotes_are_not_stripped() {
        let c = ok(&one("env = A=\"quoted\""));
        assert_eq!(c.env, vec![("A".to_owned(), "\"quoted\"".to_owned())]);
        let c = ok(&one("chdir = '/srv/x'"));
        assert_eq!(c.chdir, Some(PathBuf::from("/srv/vassals.d/'/srv/x'")));
    }

    #[test]
    fn foreign_sections_never_cause_errors() {
        let long = "x".repeat(200_000);
        let texts = [
            "[uwsgi]\nmaster\n[emperor]\nlisten = 9\n".to_owned(),
            "[uwsgi]\nmaster\n".to_owned(),
            "[uwsgi]\n   # indented comment\nworkers = 2\n[emperor]\nlisten = 9\n".to_owned(),
            "[uwsgi]\nchdir = C:\\dir\\\n[emperor]\nlisten = 9\n".to_owned(),
            "[uwsgi] ; inline comment\nfoo = 1\n[emperor]\nlisten = 9\n".to_owned(),
            "[uwsgi]\nsocket = %(dir)/%n.sock\n%(weird) = key\n= novalue\nbare: colon\n[emperor]\nlisten = 9\n"
                .to_owned(),
            format!("[uwsgi]\nlong = {long}\n{long}\n[emperor]\nlisten = 9\n"),
            "general = before any section\n[emperor\n[emperor] trailing\nnot ours\n[emperor]\nlisten = 9\n".to_owned(),
            "\u{feff}[emperor]\nlisten = 9\n".to_owned(),
        ];
        for text in &texts {
            let c = ok(text);
            assert_eq!(c.text, *text);
            if text.contains("[emperor]\nlisten") {
                assert_eq!(c.listen, Some(9), "{:.80}", text);
            }
        }
        // The hash covers only [emperor]: changing the vassal's own sections keeps it.
        assert_eq!(ok(&texts[0]).emperor_hash, ok(&texts[2]).emperor_hash);
    }

    #[test]
    fn bare_line_in_emperor_is_reported_and_does_not_swallow_next() {
        let e = err("[emperor]\non-demand\nlisten = 0\n");
        let got: Vec<_> = e.problems.iter().map(|p| (p.line, p.message.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (Some(2), "expected \"key = value\", found \"on-demand\""),
                (Some(3), "expected a number from 1 to 65535"),
            ]
        );
    }
}
