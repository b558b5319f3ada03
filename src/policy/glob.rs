//! Globs as the policy writes them: `*` any run of characters (`/` and `:` included, so `emperor-test/*`
//! takes every tag), `?` exactly one; everything else literal. No classes, no escapes: image names,
//! network modes and paths need none.

/// Whether `text` matches `pattern` as a whole.
pub(super) fn matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // The last `*` seen and the text position it was tried at: on a mismatch it takes one more char.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs() {
        for (pattern, text, expected) in [
            ("*", "", true),
            ("*", "anything/at:all", true),
            ("emperor-test/*", "emperor-test/testapp", true),
            ("emperor-test/*", "emperor-test/testapp:latest", true),
            ("emperor-test/*", "emperor-test", false),
            ("emperor-test/*", "docker.io/emperor-test/testapp", false),
            ("container:alice-*", "container:alice-db.ini", true),
            ("container:alice-*", "container:bob-db.ini", false),
            ("none", "none", true),
            ("none", "nonex", false),
            ("n?ne", "none", true),
            ("n?ne", "nne", false),
            ("/usr/bin/*", "/usr/bin/python3", true),
            ("/usr/bin/*", "/usr/local/bin/python3", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("*.ini", "a.ini.ini", true),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(matches(pattern, text), expected, "{pattern:?} ~ {text:?}");
        }
    }
}
