//! The image's file tree: host paths mirrored one by one, at the same place, with their owners and modes.
//!
//! A path is added as the kernel resolves it, component by component from `/`: every directory on the
//! way becomes a directory entry, every symlink on the way (Debian's `/lib -> usr/lib`, `/lib64/ld-linux-
//! x86-64.so.2 -> /lib/x86_64-linux-gnu/...`) stays a symlink and resolution goes on at its target, which
//! is added too. So the image answers a lookup of the host path exactly as the host does, and a program
//! or the loader opening `/lib/x86_64-linux-gnu/libc.so.6` finds it in the container without anyone
//! knowing about merged `/usr`.
//!
//! A directory brings everything under it. Inside it, a symlink is kept as a symlink and its target is
//! added (a directory target with its contents); a target that does not exist leaves the symlink dangling
//! with a warning, as it would be on the host. Sockets, fifos and devices are skipped with a warning, and
//! nothing under `/proc`, `/sys` or `/dev` is packed: Docker mounts those at run time.

use std::collections::{BTreeMap, HashSet};
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// Most symlinks followed while resolving one path (the kernel's limit, ELOOP).
const MAX_SYMLINKS: usize = 40;

/// What a path in the image is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    /// A regular file, read from the same path on the host when the archive is written.
    File {
        size: u64,
    },
    Symlink(PathBuf),
    /// A file made here (`/etc/passwd`, `/etc/group`), not copied.
    Data(Vec<u8>),
}

/// One path of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits, with setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch (0 for what is made here, so that the same inputs make the same layer).
    pub mtime: u64,
}

impl Entry {
    fn of(kind: Kind, meta: &Metadata) -> Entry {
        Entry {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: u64::try_from(meta.mtime()).unwrap_or(0),
        }
    }

    /// An entry made here, owned by root.
    pub fn made(kind: Kind, mode: u32) -> Entry {
        Entry {
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
        }
    }
}

/// The tree being assembled. Paths are absolute, as in the image; parents sort before their children.
#[derive(Debug, Default)]
pub struct Rootfs {
    pub entries: BTreeMap<PathBuf, Entry>,
    /// Directories whose contents were added (or are queued), so a symlink loop ends.
    walked: HashSet<PathBuf>,
    /// Directories still to walk.
    pending: Vec<PathBuf>,
    /// What was skipped or left dangling, for the user.
    pub warnings: Vec<String>,
}

impl Rootfs {
    /// Adds `path` (absolute) as the host resolves it; a directory with everything under it. Returns the
    /// resolved path (where the file or directory itself is).
    pub fn add(&mut self, path: &Path) -> Result<PathBuf, String> {
        let resolved = self.resolve(path)?;
        self.walk_pending()?;
        Ok(resolved)
    }

    /// Regular files of the tree that are copied from the host.
    pub fn host_files(&self) -> impl Iterator<Item = &Path> {
        self.entries
            .iter()
            .filter(|(_, e)| matches!(e.kind, Kind::File { .. }))
            .map(|(p, _)| p.as_path())
    }

    /// Adds an empty directory made here (`mode`, root-owned), and its missing parents (mode 755). A path
    /// the tree already holds as a directory is kept as it is.
    pub fn mkdir(&mut self, path: &Path, mode: u32) -> Result<(), String> {
        let path = lexical(path).ok_or_else(|| format!("{}: give an absolute path without ..", path.display()))?;
        let mut at = PathBuf::from("/");
        let parts: Vec<_> = path.components().skip(1).collect();
        for (i, part) in parts.iter().enumerate() {
            at.push(part);
            let last = i + 1 == parts.len();
            match self.entries.get(&at) {
                Some(Entry { kind: Kind::Dir, .. }) => {}
                Some(_) => {
                    return Err(format!(
                        "{}: {} is already in the image, not as a directory",
                        path.display(),
                        at.display()
                    ));
                }
                None => {
                    let m = if last { mode } else { 0o755 };
                    self.entries.insert(at.clone(), Entry::made(Kind::Dir, m));
                }
            }
        }
        Ok(())
    }

    /// Adds a file made here unless the tree holds the path already (an `--add` wins), with missing
    /// parent directories made too.
    pub fn put(&mut self, path: &Path, data: Vec<u8>, mode: u32) -> Result<(), String> {
        if self.entries.contains_key(path) {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            self.mkdir(parent, 0o755)?;
        }
        self.entries
            .insert(path.to_path_buf(), Entry::made(Kind::Data(data), mode));
        Ok(())
    }

    /// Resolves `path` component by component from `/`, adding each directory and symlink met, and the
    /// final file or directory (a directory is queued for its contents).
    fn resolve(&mut self, path: &Path) -> Result<PathBuf, String> {
        let shown = path.display();
        if !path.is_absolute() {
            return Err(format!("{shown}: not an absolute path"));
        }
        let mut todo: Vec<std::ffi::OsString> = components_reversed(path);
        let mut at = PathBuf::from("/");
        let mut hops = 0;
        while let Some(part) = todo.pop() {
            if part == ".." {
                at.pop();
                continue;
            }
            let next = at.join(&part);
            if runtime_mount(&next) {
                return Err(format!(
                    "{shown}: {} is Docker's at run time, not packed",
                    next.display()
                ));
            }
            let meta = std::fs::symlink_metadata(&next).map_err(|e| format!("{shown}: {}: {e}", next.display()))?;
            let ft = meta.file_type();
            if ft.is_symlink() {
                let target = std::fs::read_link(&next).map_err(|e| format!("{shown}: {}: {e}", next.display()))?;
                self.entries
                    .entry(next.clone())
                    .or_insert_with(|| Entry::of(Kind::Symlink(target.clone()), &meta));
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(format!("{shown}: too many levels of symbolic links"));
                }
                if target.is_absolute() {
                    at = PathBuf::from("/");
                }
                todo.extend(components_reversed(&target));
            } else if ft.is_dir() {
                self.entries
                    .entry(next.clone())
                    .or_insert_with(|| Entry::of(Kind::Dir, &meta));
                at = next;
            } else if !todo.is_empty() {
                return Err(format!("{shown}: {} is not a directory", next.display()));
            } else if ft.is_file() {
                self.entries
                    .entry(next.clone())
                    .or_insert_with(|| Entry::of(Kind::File { size: meta.len() }, &meta));
                return Ok(next);
            } else {
                return Err(format!(
                    "{shown}: {} is a socket, fifo or device: only files, directories and symlinks are packed",
                    next.display()
                ));
            }
        }
        if at != Path::new("/") && self.walked.insert(at.clone()) {
            self.pending.push(at.clone());
        }
        Ok(at)
    }

    /// Adds the contents of every queued directory; a symlink's target may queue more.
    fn walk_pending(&mut self) -> Result<(), String> {
        while let Some(dir) = self.pending.pop() {
            let mut children: Vec<_> = std::fs::read_dir(&dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?
                .map(|d| d.map(|d| d.file_name()))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            children.sort();
            for name in children {
                self.add_child(&dir.join(name))?;
            }
        }
        Ok(())
    }

    /// One entry met inside a walked directory.
    fn add_child(&mut self, path: &Path) -> Result<(), String> {
        if runtime_mount(path) {
            self.warnings
                .push(format!("skipped {}: Docker mounts it at run time", path.display()));
            return Ok(());
        }
        let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            self.entries
                .entry(path.to_path_buf())
                .or_insert_with(|| Entry::of(Kind::Dir, &meta));
            if self.walked.insert(path.to_path_buf()) {
                self.pending.push(path.to_path_buf());
            }
        } else if ft.is_file() {
            self.entries
                .entry(path.to_path_buf())
                .or_insert_with(|| Entry::of(Kind::File { size: meta.len() }, &meta));
        } else if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(|e| format!("{}: {e}", path.display()))?;
            self.entries
                .entry(path.to_path_buf())
                .or_insert_with(|| Entry::of(Kind::Symlink(target.clone()), &meta));
            let dir = path.parent().unwrap_or(Path::new("/"));
            if let Err(e) = self.resolve(&dir.join(&target)) {
                self.warnings.push(format!(
                    "kept the symlink {} -> {} without its target: {e}",
                    path.display(),
                    target.display()
                ));
            }
        } else {
            self.warnings
                .push(format!("skipped {}: a socket, fifo or device", path.display()));
        }
        Ok(())
    }
}

/// `path`'s components last first (a stack), without `/` and `.`.
fn components_reversed(path: &Path) -> Vec<std::ffi::OsString> {
    path.components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// `path` without `.` components, if it is absolute and has no `..`.
fn lexical(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return None;
    }
    Some(path.components().collect())
}

/// Whether Docker mounts `path` (or a directory above it) in every container.
fn runtime_mount(path: &Path) -> bool {
    ["/proc", "/sys", "/dev"].iter().any(|m| path.starts_with(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tmp(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("emperor-rootfs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn kind(r: &Rootfs, p: &Path) -> Option<Kind> {
        r.entries.get(p).map(|e| e.kind.clone())
    }

    #[test]
    fn symlinks_on_the_way_are_kept_and_followed() {
        let d = tmp("way");
        let root = &d.0;
        std::fs::create_dir_all(root.join("usr/lib/x")).unwrap();
        std::fs::write(root.join("usr/lib/x/libc.so.6"), b"elf").unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink(root.join("lib/x/libc.so.6"), root.join("usr/lib/x/libc.so")).unwrap();
        let mut r = Rootfs::default();
        let got = r.add(&root.join("lib/x/libc.so")).unwrap();
        assert_eq!(got, root.join("usr/lib/x/libc.so.6"));
        assert_eq!(kind(&r, &root.join("lib")), Some(Kind::Symlink("usr/lib".into())));
        assert_eq!(
            kind(&r, &root.join("usr/lib/x/libc.so")),
            Some(Kind::Symlink(root.join("lib/x/libc.so.6")))
        );
        assert_eq!(
            kind(&r, &root.join("usr/lib/x/libc.so.6")),
            Some(Kind::File { size: 3 })
        );
        assert_eq!(kind(&r, &root.join("usr/lib")), Some(Kind::Dir));
        // Nothing was walked: only the path's own entries, the temp dir and the directories above it.
        assert_eq!(
            r.entries.keys().filter(|p| p.starts_with(root)).count(),
            7,
            "{:#?}",
            r.entries.keys()
        );
        // A parent always sorts before its children.
        let keys: Vec<_> = r.entries.keys().collect();
        for (i, k) in keys.iter().enumerate() {
            if let Some(parent) = k.parent().filter(|p| *p != Path::new("/")) {
                assert!(
                    keys[..i].contains(&&parent.to_path_buf()),
                    "{} before its parent",
                    k.display()
                );
            }
        }
    }

    #[test]
    fn a_directory_brings_its_tree_and_symlink_targets() {
        let d = tmp("tree");
        let root = &d.0;
        std::fs::create_dir_all(root.join("conf/sub")).unwrap();
        std::fs::create_dir_all(root.join("elsewhere/dir")).unwrap();
        std::fs::write(root.join("conf/a"), b"a").unwrap();
        std::fs::write(root.join("conf/sub/b"), b"bb").unwrap();
        std::fs::write(root.join("elsewhere/t"), b"t").unwrap();
        std::fs::write(root.join("elsewhere/dir/u"), b"u").unwrap();
        std::fs::write(root.join("elsewhere/not-wanted"), b"n").unwrap();
        symlink("../elsewhere/t", root.join("conf/rel")).unwrap();
        symlink(root.join("elsewhere/dir"), root.join("conf/abs")).unwrap();
        symlink("missing", root.join("conf/dangling")).unwrap();
        symlink(".", root.join("conf/sub/loop")).unwrap();
        let mut r = Rootfs::default();
        r.add(&root.join("conf")).unwrap();
        for f in ["conf/a", "conf/sub/b", "elsewhere/t", "elsewhere/dir/u"] {
            assert!(matches!(kind(&r, &root.join(f)), Some(Kind::File { .. })), "{f}");
        }
        assert_eq!(
            kind(&r, &root.join("conf/rel")),
            Some(Kind::Symlink("../elsewhere/t".into()))
        );
        assert_eq!(
            kind(&r, &root.join("conf/dangling")),
            Some(Kind::Symlink("missing".into()))
        );
        assert_eq!(kind(&r, &root.join("elsewhere/not-wanted")), None);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(
            r.warnings[0].contains("conf/dangling -> missing without its target"),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn errors_and_made_entries() {
        let d = tmp("err");
        let root = &d.0;
        std::fs::write(root.join("f"), b"f").unwrap();
        symlink("l2", root.join("l1")).unwrap();
        symlink("l1", root.join("l2")).unwrap();
        let mut r = Rootfs::default();
        let e = r.add(&root.join("f/x")).unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
        let e = r.add(&root.join("l1")).unwrap_err();
        assert!(e.contains("too many levels"), "{e}");
        let e = r.add(&root.join("nope")).unwrap_err();
        assert!(e.contains("No such file"), "{e}");
        let e = r.add(Path::new("/proc/self/status")).unwrap_err();
        assert!(e.contains("Docker's at run time"), "{e}");
        assert!(r.add(Path::new("relative")).is_err());

        r.mkdir(Path::new("/var/lib/nginx"), 0o700).unwrap();
        assert_eq!(r.entries[Path::new("/var")], Entry::made(Kind::Dir, 0o755));
        assert_eq!(r.entries[Path::new("/var/lib/nginx")], Entry::made(Kind::Dir, 0o700));
        r.put(Path::new("/etc/passwd"), b"root".to_vec(), 0o644).unwrap();
        r.put(Path::new("/etc/passwd"), b"other".to_vec(), 0o600).unwrap();
        assert_eq!(
            r.entries[Path::new("/etc/passwd")],
            Entry::made(Kind::Data(b"root".to_vec()), 0o644)
        );
        let e = r.mkdir(Path::new("/etc/passwd/x"), 0o755).unwrap_err();
        assert!(e.contains("not as a directory"), "{e}");
        assert!(r.mkdir(Path::new("/a/../b"), 0o755).is_err());
    }
}
