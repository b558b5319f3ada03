//! `.dockerignore`, as the Docker CLI reads it: what of a build context is not sent to the daemon.
//!
//! The emperor builds without the CLI, so it reads the file itself, with the CLI's rules (moby's
//! `patternmatcher`): one pattern per line, `#` comments and blank lines skipped, a leading `/` and `./`
//! dropped, `.`/`..` components cleaned; `*` is any run of characters but `/`, `?` one such character,
//! `[a-z]`/`[^a-z]` a class, `\` escapes, and `**` any number of directories (`**/x`, `a/**`, `a/**/b`).
//! A pattern that matches a directory excludes everything under it. Patterns are applied in order and the
//! last one that matches a path (or one of its parent directories) decides; `!` before a pattern makes it
//! an exception that brings a path back. `Dockerfile` and `.dockerignore` are always sent, as the CLI does.

/// The patterns of one `.dockerignore`.
#[derive(Debug, Default, Clone)]
pub struct Ignore {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    /// Cleaned, without `!`.
    text: String,
    exception: bool,
}

/// Files the daemon needs whatever the patterns say.
const ALWAYS_SENT: &[&str] = &["Dockerfile", ".dockerignore"];

impl Ignore {
    /// Parses the file's text; a pattern that cleans to nothing (`/`, `.`) is left out.
    pub fn parse(text: &str) -> Ignore {
        let patterns = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| {
                let (exception, rest) = match l.strip_prefix('!') {
                    Some(r) => (true, r.trim()),
                    None => (false, l),
                };
                let text = clean(rest);
                (!text.is_empty()).then_some(Pattern { text, exception })
            })
            .collect();
        Ignore { patterns }
    }

    /// Whether any pattern is an exception: an excluded directory must then still be walked, since an
    /// exception may bring back something under it.
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exception)
    }

    /// Whether `path` (relative to the context, `/`-separated, no leading `/`) is left out.
    pub fn excludes(&self, path: &str) -> bool {
        if ALWAYS_SENT.contains(&path) {
            return false;
        }
        let mut excluded = false;
        for p in &self.patterns {
            if p.exception != excluded {
                // Only a pattern that would change the verdict needs matching.
                continue;
            }
            if matches_or_parent(&p.text, path) {
                excluded = !p.exception;
            }
        }
        excluded
    }
}

/// `filepath.Clean` of a pattern, without its leading `/`: `./a//b/../c` is `a/c`.
fn clean(pattern: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// The pattern matches the path or one of its parent directories.
fn matches_or_parent(pattern: &str, path: &str) -> bool {
    if glob(pattern.as_bytes(), path.as_bytes()) {
        return true;
    }
    path.match_indices('/')
        .any(|(i, _)| glob(pattern.as_bytes(), &path.as_bytes()[..i]))
}

/// Matches a whole `/`-separated path against a pattern (see the module doc).
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') if p.get(1) == Some(&b'*') => {
            let rest = &p[2..];
            match rest.first() {
                // `**/`: zero or more whole directories.
                Some(b'/') => {
                    let rest = &rest[1..];
                    glob(rest, s) || s.iter().enumerate().any(|(i, &c)| c == b'/' && glob(rest, &s[i + 1..]))
                }
                // `**` elsewhere: any run of characters, `/` included.
                _ => (0..=s.len()).any(|i| glob(rest, &s[i..])),
            }
        }
        Some(b'*') => {
            let rest = &p[1..];
            let run = s.iter().position(|&c| c == b'/').unwrap_or(s.len());
            (0..=run).any(|i| glob(rest, &s[i..]))
        }
        Some(b'?') => s.first().is_some_and(|&c| c != b'/') && glob(&p[1..], &s[1..]),
        Some(b'[') => match (class(&p[1..]), s.first()) {
            (Some((hit, len)), Some(&c)) if c != b'/' => hit(c) && glob(&p[1 + len..], &s[1..]),
            // An unclosed `[` is a literal, as in a shell.
            (None, Some(b'[')) => glob(&p[1..], &s[1..]),
            _ => false,
        },
        Some(b'\\') if p.len() > 1 => s.first() == Some(&p[1]) && glob(&p[2..], &s[1..]),
        Some(&c) => s.first() == Some(&c) && glob(&p[1..], &s[1..]),
    }
}

/// A character class after its `[`: a test of a byte and the class's length up to and including `]`.
fn class(p: &[u8]) -> Option<(impl Fn(u8) -> bool, usize)> {
    let (negated, start) = match p.first() {
        Some(b'^' | b'!') => (true, 1),
        _ => (false, 0),
    };
    let end = start + p[start..].iter().skip(1).position(|&c| c == b']')? + 1;
    let body = p[start..end].to_vec();
    let test = move |c: u8| {
        let mut i = 0;
        let mut hit = false;
        while i < body.len() {
            if i + 2 < body.len() && body[i + 1] == b'-' {
                hit |= (body[i]..=body[i + 2]).contains(&c);
                i += 3;
            } else {
                hit |= body[i] == c;
                i += 1;
            }
        }
        hit != negated
    };
    Some((test, end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_the_docker_cli_matches_them() {
        for (p, s, want) in [
            ("*.log", "a.log", true),
            ("*.log", "d/a.log", false),
            ("*/*.log", "d/a.log", true),
            ("**/*.log", "a.log", true),
            ("**/*.log", "d/e/a.log", true),
            ("d/**", "d/e/f", true),
            ("d/**/f", "d/f", true),
            ("d/**/f", "d/x/y/f", true),
            ("d/**/f", "e/f", false),
            ("a?c", "abc", true),
            ("a?c", "a/c", false),
            ("[a-c]x", "bx", true),
            ("[^a-c]x", "bx", false),
            ("[!a-c]x", "dx", true),
            ("\\*x", "*x", true),
            ("\\*x", "ax", false),
            ("[x", "[x", true),
            ("node_modules", "node_modules", true),
        ] {
            assert_eq!(glob(p.as_bytes(), s.as_bytes()), want, "{p} vs {s}");
        }
    }

    #[test]
    fn the_last_matching_pattern_decides_and_directories_take_their_contents() {
        let i = Ignore::parse(
            "# comment\n\n/node_modules\n*.log\n!keep.log\n./tmp/../cache/\nsecret/\n!secret/public\nDockerfile\n",
        );
        assert!(i.has_exceptions());
        for (path, out) in [
            ("node_modules", true),
            ("node_modules/x/y.js", true),
            ("a.log", true),
            ("keep.log", false),
            ("d/a.log", false),
            ("cache/x", true),
            ("tmp", false),
            ("secret/key", true),
            ("secret/public", false),
            ("secret/public/x", false),
            ("Dockerfile", false),
            (".dockerignore", false),
            ("src/main.rs", false),
        ] {
            assert_eq!(i.excludes(path), out, "{path}");
        }
        assert!(!Ignore::parse("*\n!x\n").excludes("x"));
        assert!(Ignore::parse("*\n!x\n").excludes("y"));
        assert!(!Ignore::parse("/\n.\n").excludes("a"));
        assert!(!Ignore::parse("a").has_exceptions());
    }
}
