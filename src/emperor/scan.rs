//! Knowing which vassal files exist and which changed.
//!
//! inotify tells the emperor *that* something happened in the directory; a scan tells it *what*. Each
//! scan lists the `*.ini` entries with their (mtime, ctime, inode, size) and diffs that against the
//! previous snapshot, so bursts of events (an editor's write-rename-chmod dance, `cp` of 100 files)
//! collapse into one diff, and a missed or overflowed event is repaired by the next scan. A file counts
//! as changed when any of them changes: `touch` moves the mtime (uWSGI's reload trigger, which users
//! rely on), an atomic replace by rename changes the inode even within the same second, and a `chmod` or
//! `chown` moves only the ctime (a file made readable must be picked up without a `touch`).
//!
//! An entry that looks like a vassal but cannot be one (a directory, a dangling or looping symlink, a
//! FIFO, a name that is not UTF-8 or holds control characters) is kept in the snapshot with the reason,
//! so the emperor reports it once when it appears or changes instead of skipping it in silence.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Identity of one version of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    size: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
            size: meta.size(),
        }
    }

    /// Only the ctime differs: permissions or ownership changed, the content did not.
    fn meta_only_change(&self, other: &Stamp) -> bool {
        self != other
            && Stamp {
                ctime: other.ctime,
                ..*self
            } == *other
    }
}

/// One `*.ini` entry of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub stamp: Stamp,
    /// Why this entry cannot be a vassal (one line for the log and `emperor status`, without the path, control
    /// characters escaped); `None` for a regular file, whose content may still be bad. Such a path does not lead
    /// to a file at all, so a running vassal whose file became one is stopped as if the file were deleted.
    pub unusable: Option<String>,
}

pub type Snapshot = BTreeMap<String, Entry>;

/// Is this directory entry a candidate vassal? uWSGI's rule (`*.ini`) minus hidden files, which are
/// what editors and `rsync` write before renaming into place.
pub fn is_vassal_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.len() > 4 && b.ends_with(b".ini") && !b.starts_with(b".")
}

/// Lists the vassal entries in `dir`. Symlinks are followed, as uWSGI does; regular files are vassal
/// files, anything else named like one is listed as unusable with the reason.
pub fn scan(dir: &Path) -> io::Result<Snapshot> {
    let mut snap = Snapshot::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let raw = entry.file_name();
        if !is_vassal_name(&raw) {
            continue;
        }
        let path = entry.path();
        // The entry may vanish between readdir and stat; then it is simply not there.
        let (name, bad_name) = match raw.to_str() {
            Some(n) if !n.chars().any(char::is_control) => (n.to_owned(), None),
            Some(n) => (
                crate::config::printable(n).into_owned(),
                Some("its name holds control characters; rename it"),
            ),
            None => (
                crate::config::printable(&raw.to_string_lossy()).into_owned(),
                Some("its name is not valid UTF-8; rename it"),
            ),
        };
        let (stamp, unusable) = match std::fs::metadata(&path) {
            Ok(meta) => {
                let why = match bad_name {
                    Some(why) => Some(why.to_owned()),
                    None if meta.is_file() => None,
                    None => Some(not_a_file(&meta.file_type())),
                };
                (Stamp::of(&meta), why)
            }
            Err(e) => {
                // The entry itself: a symlink that does not resolve, or gone since readdir (then it is not there).
                let Ok(lmeta) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                let why = if lmeta.file_type().is_symlink() {
                    let target = std::fs::read_link(&path)
                        .map(|t| crate::config::printable(&t.display().to_string()).into_owned())
                        .unwrap_or_else(|_| "?".into());
                    match e.raw_os_error() {
                        Some(libc::ELOOP) => format!("a symlink loop (-> {target}); not a vassal file"),
                        Some(libc::ENOENT) | Some(libc::ENOTDIR) => {
                            format!("a dangling symlink (-> {target}); not a vassal file")
                        }
                        _ => format!("cannot follow the symlink (-> {target}): {e}"),
                    }
                } else {
                    format!("cannot stat: {e}")
                };
                (Stamp::of(&lmeta), Some(why))
            }
        };
        snap.insert(name, Entry { stamp, unusable });
    }
    Ok(snap)
}

fn not_a_file(t: &std::fs::FileType) -> String {
    let what = if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    };
    format!("{what}, not a vassal file (a vassal is a regular file named *.ini)")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added(String),
    /// `meta_only`: only permissions or ownership changed (the ctime), not the content.
    Changed {
        name: String,
        meta_only: bool,
    },
    Removed(String),
}

/// What happened between two snapshots, in name order.
pub fn diff(old: &Snapshot, new: &Snapshot) -> Vec<Change> {
    let mut changes = Vec::new();
    for (name, entry) in new {
        match old.get(name) {
            None => changes.push(Change::Added(name.clone())),
            Some(prev) if prev != entry => changes.push(Change::Changed {
                name: name.clone(),
                meta_only: prev.unusable == entry.unusable && prev.stamp.meta_only_change(&entry.stamp),
            }),
            Some(_) => {}
        }
    }
    for name in old.keys() {
        if !new.contains_key(name) {
            changes.push(Change::Removed(name.clone()));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(sec: i64, ino: u64) -> Entry {
        Entry {
            stamp: Stamp {
                mtime: (sec, 0),
                ctime: (sec, 0),
                ino,
                size: 10,
            },
            unusable: None,
        }
    }

    #[test]
    fn names() {
        assert!(is_vassal_name(OsStr::new("app.ini")));
        for bad in [
            ".app.ini",
            ".app.ini.swp",
            "app.ini~",
            "app.ini.swp",
            "app.txt",
            ".ini",
            "4913",
        ] {
            assert!(!is_vassal_name(OsStr::new(bad)), "{bad}");
        }
    }

    #[test]
    fn diff_added_changed_removed() {
        let old: Snapshot = [
            ("a.ini".into(), stamp(1, 1)),
            ("b.ini".into(), stamp(1, 2)),
            ("c.ini".into(), stamp(1, 3)),
        ]
        .into();
        let new: Snapshot = [
            ("a.ini".into(), stamp(1, 1)),
            ("b.ini".into(), stamp(2, 2)),
            ("d.ini".into(), stamp(1, 4)),
        ]
        .into();
        assert_eq!(
            diff(&old, &new),
            vec![
                Change::Changed {
                    name: "b.ini".into(),
                    meta_only: false
                },
                Change::Added("d.ini".into()),
                Change::Removed("c.ini".into())
            ]
        );
        let replaced: Snapshot = [("a.ini".into(), stamp(1, 9))].into();
        assert!(diff(&old, &replaced).contains(&Change::Changed {
            name: "a.ini".into(),
            meta_only: false
        }));
        let mut chmodded = old.clone();
        chmodded.get_mut("a.ini").unwrap().stamp.ctime.0 += 1;
        assert_eq!(
            diff(&old, &chmodded),
            vec![Change::Changed {
                name: "a.ini".into(),
                meta_only: true
            }]
        );
    }

    #[test]
    fn scan_lists_what_cannot_be_a_vassal_with_the_reason() {
        use std::os::unix::fs::symlink;
        let dir = std::env::temp_dir().join(format!("emperor-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("d.ini")).unwrap();
        for f in ["a.ini", ".h.ini", "a.ini~", "x.txt"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        symlink("nowhere.conf", dir.join("dangling.ini")).unwrap();
        symlink("loop.ini", dir.join("loop.ini")).unwrap();
        symlink("a.ini", dir.join("link.ini")).unwrap();
        nix::unistd::mkfifo(&dir.join("fifo.ini"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::write(dir.join("bell\x07.ini"), "").unwrap();
        std::fs::write(dir.join(OsStr::from_bytes(b"latin\xe9.ini")), "").unwrap();
        let snap = scan(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let why = |n: &str| snap[n].unusable.clone().unwrap_or_default();
        assert_eq!(
            snap.keys().collect::<Vec<_>>(),
            vec![
                "a.ini",
                "bell\\u{7}.ini",
                "d.ini",
                "dangling.ini",
                "fifo.ini",
                "latin\u{fffd}.ini",
                "link.ini",
                "loop.ini"
            ]
        );
        assert!(snap["a.ini"].unusable.is_none() && snap["link.ini"].unusable.is_none());
        assert!(why("d.ini").starts_with("a directory, not a vassal file (a vassal is a regular file named *.ini)"));
        assert!(
            why("dangling.ini").contains("a dangling symlink (-> nowhere.conf)"),
            "{}",
            why("dangling.ini")
        );
        assert!(why("loop.ini").contains("a symlink loop"), "{}", why("loop.ini"));
        assert!(why("fifo.ini").contains("a FIFO"));
        assert!(why("bell\\u{7}.ini").contains("control characters"));
        assert!(!why("bell\\u{7}.ini").contains('\x07'));
        assert!(why("latin\u{fffd}.ini").contains("not valid UTF-8"));
    }
}
