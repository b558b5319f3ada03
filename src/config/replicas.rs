//! `replicas`, `replicas-up` and `replicas-down`: several instances of one vassal on the same listening
//! sockets, so the kernel spreads connections among them with no balancer in between (each instance
//! blocks in `accept` on the one queue). `replicas = N` runs N; `replicas = MIN..MAX` scales between the
//! two on the accept queue (`emperor/vassal/replicas.rs`). The keys change what the emperor does around
//! the vassal, not an instance, so they are left out of the `[emperor]` hash: a new count applies at
//! once, without a restart.

use std::time::Duration;

use super::keys::parse_seconds;
use super::raw::RawEntry;
use super::{Problem, VassalConfig};

/// The most instances one vassal may run: more is almost surely a typo, and each costs a process or a
/// container.
pub const MAX_REPLICAS: u32 = 64;
/// `replicas-up` when unset: connections waited in the accept queue at every look for this long.
pub const DEFAULT_UP: Duration = Duration::from_secs(1);
/// `replicas-down` when unset: no connection waited, and at least one instance had nothing open, for
/// this long.
pub const DEFAULT_DOWN: Duration = Duration::from_secs(10);

/// How many instances a vassal runs, and when a range scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicas {
    pub min: u32,
    pub max: u32,
    /// Scale up after connections waited this long ([`DEFAULT_UP`]).
    pub up: Duration,
    /// Scale down after this long without waiting connections and with an instance to spare ([`DEFAULT_DOWN`]).
    pub down: Duration,
}

impl Default for Replicas {
    fn default() -> Self {
        Replicas {
            min: 1,
            max: 1,
            up: DEFAULT_UP,
            down: DEFAULT_DOWN,
        }
    }
}

impl Replicas {
    /// Whether the count follows the load (`replicas = MIN..MAX` with MIN < MAX).
    pub fn scales(&self) -> bool {
        self.max > self.min
    }
}

/// `N` or `MIN..MAX`, each from 1 to [`MAX_REPLICAS`].
fn parse_count(value: &str) -> Result<(u32, u32), String> {
    let one = |s: &str| -> Result<u32, String> {
        let s = s.trim();
        match s.parse::<u32>() {
            Ok(n) if (1..=MAX_REPLICAS).contains(&n) => Ok(n),
            Ok(_) => Err(format!("expected a count from 1 to {MAX_REPLICAS}, got {s}")),
            Err(_) => Err(format!(
                "expected a count such as 4, or a range such as 1..4 (scaled on the accept queue), got \"{s}\""
            )),
        }
    };
    match value.split_once("..") {
        None => one(value).map(|n| (n, n)),
        Some((lo, hi)) => {
            let (lo, hi) = (one(lo)?, one(hi)?);
            if lo > hi {
                return Err(format!("the range {lo}..{hi} is empty: write MIN..MAX"));
            }
            Ok((lo, hi))
        }
    }
}

/// The three keys as read so far, with their lines.
#[derive(Default)]
pub(super) struct ReplicaKeys<'a> {
    count: Option<(u32, u32)>,
    up: Option<(&'a RawEntry, Duration)>,
    down: Option<(&'a RawEntry, Duration)>,
    /// The `replicas` line, for problems across keys.
    entry: Option<&'a RawEntry>,
}

impl<'a> ReplicaKeys<'a> {
    /// Reads a `replicas`, `replicas-up` or `replicas-down` line.
    pub fn add(&mut self, entry: &'a RawEntry) -> Result<(), String> {
        match entry.key.as_str() {
            "replicas" => {
                self.entry = Some(entry);
                self.count = Some(parse_count(&entry.value)?);
            }
            "replicas-up" => self.up = Some((entry, parse_seconds(&entry.value, "replicas-up")?)),
            _ => self.down = Some((entry, parse_seconds(&entry.value, "replicas-down")?)),
        }
        Ok(())
    }

    /// Sets [`VassalConfig::replicas`] once every line is in (`accept` decided), or says why it cannot be.
    pub fn finish(self, config: &mut VassalConfig, problems: &mut Vec<Problem>) {
        let (min, max) = self.count.unwrap_or((1, 1));
        for (entry, _) in [self.up, self.down].into_iter().flatten() {
            if min == max {
                problems.push(Problem::for_entry(
                    entry,
                    "needs replicas = MIN..MAX: it says when a range of replicas scales",
                ));
            }
        }
        if let Some(entry) = self.entry.filter(|_| max > 1) {
            if config.accept.is_some() {
                problems.push(Problem::for_entry(
                    entry,
                    "does not go with accept = true: that vassal already runs one program per connection",
                ));
            }
            if config.sockets.is_empty() {
                problems.push(Problem::for_entry(
                    entry,
                    "needs a socket: the replicas share the vassal's listening sockets, which spread the connections",
                ));
            }
        }
        config.replicas = Replicas {
            min,
            max,
            up: self.up.map_or(DEFAULT_UP, |(_, d)| d),
            down: self.down.map_or(DEFAULT_DOWN, |(_, d)| d),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{err, ok, problems, with_image};

    const BASE: &str = "[emperor]\nsocket = 127.0.0.1:9000\nexec = app\n";

    #[test]
    fn counts_and_ranges() {
        assert_eq!(ok(BASE).replicas, Replicas::default());
        assert!(!ok(BASE).replicas.scales());
        let c = ok(&format!("{BASE}replicas = 4\n"));
        assert_eq!((c.replicas.min, c.replicas.max), (4, 4));
        assert!(!c.replicas.scales());
        let c = ok(&format!(
            "{BASE}replicas = 1..4\nreplicas-up = 0.5\nreplicas-down = 3\n"
        ));
        assert_eq!((c.replicas.min, c.replicas.max), (1, 4));
        assert!(c.replicas.scales());
        assert_eq!(c.replicas.up, Duration::from_millis(500));
        assert_eq!(c.replicas.down, Duration::from_secs(3));
        let c = ok(&format!("{BASE}replicas = 2 .. 2\n"));
        assert_eq!((c.replicas.min, c.replicas.max), (2, 2));
        // Docker vassals too: each replica is a container of its own.
        assert_eq!(ok(&with_image("socket = /run/a.sock\nreplicas = 3")).replicas.max, 3);
        // A new count is not a new process: the same [emperor] hash.
        assert_eq!(
            ok(BASE).emperor_hash,
            ok(&format!("{BASE}replicas = 1..8\nreplicas-down = 2\n")).emperor_hash
        );
    }

    #[test]
    fn bad_values_name_line_and_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("replicas = 0", "replicas", "expected a count from 1 to 64, got 0"),
            ("replicas = 65", "replicas", "expected a count from 1 to 64, got 65"),
            ("replicas = many", "replicas", "expected a count such as 4"),
            ("replicas = 4..2", "replicas", "the range 4..2 is empty"),
            ("replicas = 1..", "replicas", "expected a count such as 4"),
            (
                "replicas = 1..4\nreplicas-up = 0",
                "replicas-up",
                "must be greater than 0",
            ),
            (
                "replicas = 1..4\nreplicas-down = soon",
                "replicas-down",
                "expected seconds",
            ),
            (
                "replicas = 3\nreplicas-up = 2",
                "replicas-up",
                "needs replicas = MIN..MAX",
            ),
            ("replicas-down = 2", "replicas-down", "needs replicas = MIN..MAX"),
        ];
        for (lines, key, message) in cases {
            let e = err(&format!("{BASE}{lines}\n"));
            let p = problems(&e);
            assert_eq!(p.len(), 1, "{lines:?}: {e}");
            assert_eq!(p[0].1, Some(*key), "{lines:?}: {e}");
            assert!(p[0].2.contains(message), "{lines:?}: {e}");
            assert!(p[0].0.is_some_and(|l| l >= 4), "{lines:?}: {e}");
        }
    }

    #[test]
    fn what_replicas_need() {
        let e = err("[emperor]\nsocket = 127.0.0.1:22\nexec = sshd -i\naccept = true\nreplicas = 2\n");
        assert_eq!(
            problems(&e),
            vec![(
                Some(5),
                Some("replicas"),
                "does not go with accept = true: that vassal already runs one program per connection"
            )]
        );
        let e = err("[emperor]\nexec = app\nreplicas = 1..3\n");
        assert!(problems(&e)[0].2.starts_with("needs a socket"), "{e}");
        // One replica needs nothing.
        assert_eq!(ok("[emperor]\nexec = app\nreplicas = 1\n").replicas.max, 1);
    }
}
