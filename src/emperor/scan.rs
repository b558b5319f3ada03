//! Knowing which vassal files exist and which changed.
//!
//! inotify tells the emperor *that* something happened in the directory; a scan tells it *what*. Each
//! scan lists the regular `*.ini` files with their (mtime, inode, size) and diffs that against the
//! previous snapshot, so bursts of events (an editor's write-rename-chmod dance, `cp` of 100 files)
//! collapse into one diff, and a missed or overflowed event is repaired by the next scan. A file counts
//! as changed when any of the three changes: `touch` moves the mtime (uWSGI's reload trigger, which
//! users rely on) and an atomic replace by rename changes the inode even within the same second.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Identity of one version of a vassal file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    mtime: (i64, i64),
    ino: u64,
    size: u64,
}

pub type Snapshot = BTreeMap<String, Stamp>;

/// Is this directory entry a candidate vassal? uWSGI's rule (`*.ini`) minus hidden files, which are
/// what editors and `rsync` write before renaming into place.
pub fn is_vassal_name(name: &str) -> bool {
    name.len() > 4 && name.ends_with(".ini") && !name.starts_with('.')
}

/// Lists the vassal files in `dir`. Symlinks are followed, as uWSGI does; only regular files count.
pub fn scan(dir: &Path) -> io::Result<Snapshot> {
    let mut snap = Snapshot::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !is_vassal_name(&name) {
            continue;
        }
        // The file may vanish between readdir and stat; then it is simply not there.
        let Ok(meta) = std::fs::metadata(entry.path()) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        snap.insert(
            name,
            Stamp {
                mtime: (meta.mtime(), meta.mtime_nsec()),
                ino: meta.ino(),
                size: meta.size(),
            },
        );
    }
    Ok(snap)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added(String),
    Changed(String),
    Removed(String),
}

/// What happened between two snapshots, in name order.
pub fn diff(old: &Snapshot, new: &Snapshot) -> Vec<Change> {
    let mut changes = Vec::new();
    for (name, stamp) in new {
        match old.get(name) {
            None => changes.push(Change::Added(name.clone())),
            Some(prev) if prev != stamp => changes.push(Change::Changed(name.clone())),
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

    fn stamp(sec: i64, ino: u64) -> Stamp {
        Stamp {
            mtime: (sec, 0),
            ino,
            size: 10,
        }
    }

    #[test]
    fn names() {
        assert!(is_vassal_name("app.ini"));
        for bad in [
            ".app.ini",
            ".app.ini.swp",
            "app.ini~",
            "app.ini.swp",
            "app.txt",
            ".ini",
            "4913",
        ] {
            assert!(!is_vassal_name(bad), "{bad}");
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
                Change::Changed("b.ini".into()),
                Change::Added("d.ini".into()),
                Change::Removed("c.ini".into())
            ]
        );
        let replaced: Snapshot = [("a.ini".into(), stamp(1, 9))].into();
        assert!(diff(&old, &replaced).contains(&Change::Changed("a.ini".into())));
    }

    #[test]
    fn scan_skips_what_is_not_a_vassal() {
        let dir = std::env::temp_dir().join(format!("emperor-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("d.ini")).unwrap();
        for f in ["a.ini", ".h.ini", "a.ini~", "x.txt"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let snap = scan(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(snap.keys().collect::<Vec<_>>(), vec!["a.ini"]);
    }
}
