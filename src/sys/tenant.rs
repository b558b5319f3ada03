//! Files the root emperor opens or creates on a tenant's behalf (tyrant mode): `logto` and its rotation,
//! `docker-cidfile` (whose own rules are in [`super::cidfile`]).
//!
//! A tenant names these paths in its vassal file, and the emperor writes them as root. Opened naively, a
//! tenant would aim them at `/etc/shadow` through a symlink, a symlinked directory, or a hard link. The rule
//! here is the one the issue states: a tenant can never make the emperor write a file it could not write
//! itself. So:
//!
//! - the path is resolved with `openat2(RESOLVE_NO_SYMLINKS)`: no symlink anywhere on the way, in any
//!   component (a tenant's symlink and an admin's alike: the admin can point the vassal at the real path);
//! - an existing file must be a regular file with one link that the tenant may write (owner, group or
//!   other write bit, checked against the tenant's uid, gid and groups as the kernel would);
//! - a missing file is created (`O_EXCL`, so nothing can be slipped in between) only in a directory the
//!   tenant may write and search, and is then owned by the tenant, as if the tenant had created it;
//! - renames and removals (log rotation) happen inside that directory's fd, never through the path again.
//!
//! POSIX ACLs are not consulted: a directory writable by the tenant only through an ACL is refused, which
//! errs on the safe side.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat};
use nix::unistd::{Gid, Uid, fchown};

/// Whom a file is opened for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the gid may be among them).
    pub groups: Vec<u32>,
}

/// For tests that act for a tenant: nobody (65534), with root's check first (they chown files to it, as the emperor
/// in tyrant mode does), failing loudly rather than skipping without root.
#[cfg(test)]
pub fn nobody_for_tests() -> Tenant {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test needs root (it chowns files to another user), as the emperor in tyrant mode does");
    }
    Tenant {
        uid: 65534,
        gid: 65534,
        groups: vec![65534],
    }
}

impl Tenant {
    /// The tenant with uid and gid, and the supplementary groups of the user with that uid, if any.
    pub fn of(uid: u32, gid: u32) -> Tenant {
        let groups = super::users::by_uid(uid).map_or_else(|| vec![gid], |u| super::users::groups_of(&u.name, gid));
        Tenant { uid, gid, groups }
    }

    /// Whether the tenant has all of `bits` (as owner bits: 0o4 read, 0o2 write, 0o1 search) on a file with `st`, as the
    /// kernel decides: the owner's bits if it owns it, else the group's if it is in the group, else others'.
    pub fn may(&self, st: &FileStat, bits: u32) -> bool {
        let mode = st.st_mode;
        let shift = if st.st_uid == self.uid {
            6
        } else if st.st_gid == self.gid || self.groups.contains(&st.st_gid) {
            3
        } else {
            0
        };
        (mode >> shift) & bits == bits
    }
}

/// An opened directory and a name in it.
#[derive(Debug)]
pub struct Place {
    pub dir: OwnedFd,
    pub name: OsString,
}

fn refuse(path: &Path, why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, format!("{}: {why}", path.display()))
}

fn no_symlinks(e: nix::errno::Errno, path: &Path) -> io::Error {
    match e {
        nix::errno::Errno::ELOOP => refuse(path, "a symlink on the way is not followed in tyrant mode"),
        e => io::Error::from(e),
    }
}

impl Place {
    /// The directory holding `path` (absolute), reached without following a symlink.
    pub fn of(path: &Path) -> io::Result<Place> {
        Place::open(path, ResolveFlag::RESOLVE_NO_SYMLINKS)
    }

    /// The directory holding `path` (absolute), reached as `open` would, following symlinks on the way: for
    /// a path an admin names, of which the caller then never follows the last component.
    pub fn following(path: &Path) -> io::Result<Place> {
        Place::open(path, ResolveFlag::empty())
    }

    fn open(path: &Path, resolve: ResolveFlag) -> io::Result<Place> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(refuse(path, "not a file path"));
        };
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(resolve);
        let dir = openat2(nix::fcntl::AT_FDCWD, parent, how).map_err(|e| no_symlinks(e, path))?;
        Ok(Place {
            dir,
            name: name.to_os_string(),
        })
    }

    /// Whether the tenant may create files in the directory (write and search permission).
    pub fn tenant_may_create(&self, t: &Tenant) -> io::Result<bool> {
        Ok(t.may(&fstat(&self.dir)?, 0o3))
    }

    /// A path to the file that goes through the opened directory (`/proc/self/fd/<dir>/<name>`), for calls that
    /// take only a path (`bind` of a unix socket): the directory can no longer be swapped for a symlink.
    pub fn fd_path(&self) -> std::path::PathBuf {
        use std::os::fd::AsRawFd;
        Path::new("/proc/self/fd")
            .join(self.dir.as_raw_fd().to_string())
            .join(&self.name)
    }

    /// `name` with `suffix` appended, in the same directory.
    pub fn sibling(&self, suffix: &str) -> OsString {
        let mut s = self.name.clone();
        s.push(suffix);
        s
    }

    /// Opens the file for writing (appending, or truncated) as the tenant could: see the module doc.
    pub fn open_for(&self, t: &Tenant, append: bool, path: &Path) -> io::Result<File> {
        let flags = OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let existing = nix::fcntl::openat(&self.dir, self.name.as_os_str(), flags, Mode::empty());
        let fd = match existing {
            Ok(fd) => {
                let st = fstat(&fd)?;
                if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
                    return Err(refuse(path, "not a regular file"));
                }
                if st.st_nlink != 1 {
                    return Err(refuse(
                        path,
                        "a file with more than one link is not written in tyrant mode",
                    ));
                }
                if !t.may(&st, 0o2) {
                    return Err(refuse(path, "the vassal's owner may not write this file"));
                }
                if !append {
                    nix::unistd::ftruncate(&fd, 0)?;
                }
                fd
            }
            Err(nix::errno::Errno::ENOENT) => {
                let st = fstat(&self.dir)?;
                if !t.may(&st, 0o3) {
                    return Err(refuse(
                        path,
                        "the vassal's owner may not create files in this directory",
                    ));
                }
                let created = nix::fcntl::openat(
                    &self.dir,
                    self.name.as_os_str(),
                    flags | OFlag::O_CREAT | OFlag::O_EXCL,
                    Mode::from_bits_truncate(0o640),
                )?;
                fchown(&created, Some(Uid::from_raw(t.uid)), Some(Gid::from_raw(t.gid)))?;
                created
            }
            Err(nix::errno::Errno::ELOOP) => return Err(refuse(path, "a symlink is not followed in tyrant mode")),
            Err(e) => return Err(e.into()),
        };
        // Blocking writes from here on (O_NONBLOCK only kept a FIFO from hanging the open).
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flag_set(append)))?;
        Ok(File::from(fd))
    }

    /// Renames `from` to `to` within the directory (a rotation).
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        nix::fcntl::renameat(&self.dir, from, &self.dir, to).map_err(io::Error::from)
    }

    /// Removes `name` from the directory, if it is there.
    pub fn remove(&self, name: &OsStr) -> io::Result<()> {
        match nix::unistd::unlinkat(&self.dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn flag_set(append: bool) -> OFlag {
    if append { OFlag::O_APPEND } else { OFlag::empty() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    const NOBODY: u32 = 65534;

    fn tenant() -> Tenant {
        Tenant {
            uid: NOBODY,
            gid: NOBODY,
            groups: vec![NOBODY],
        }
    }

    fn dir(name: &str, owner: u32, mode: u32) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("emperor-tenant-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(owner), Some(owner)).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
        d
    }

    #[test]
    fn a_tenant_cannot_aim_the_emperor_at_a_file_it_could_not_write() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test needs root (it chowns files to another user), as the emperor in tyrant mode does");
        }
        let t = tenant();
        let own = dir("own", NOBODY, 0o755);
        // A new file in the tenant's directory: created, owned by the tenant.
        let log = own.join("app.log");
        let mut f = Place::of(&log).unwrap().open_for(&t, true, &log).unwrap();
        f.write_all(b"line\n").unwrap();
        let meta = std::fs::metadata(&log).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY));
        // Again: appended to.
        Place::of(&log)
            .unwrap()
            .open_for(&t, true, &log)
            .unwrap()
            .write_all(b"more\n")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "line\nmore\n");

        // A root-only file, reached by a symlink, a hard link, or a symlinked directory: refused, untouched.
        let secret = dir("secret", 0, 0o700).join("shadow");
        std::fs::write(&secret, "root only\n").unwrap();
        std::os::unix::fs::symlink(&secret, own.join("link.log")).unwrap();
        let secret2 = secret.with_file_name("shadow2");
        std::fs::write(&secret2, "root only\n").unwrap();
        std::fs::hard_link(&secret2, own.join("hard.log")).unwrap();
        std::os::unix::fs::symlink(secret.parent().unwrap(), own.join("dirlink")).unwrap();
        for (path, why) in [
            (own.join("link.log"), "symlink"),
            (own.join("hard.log"), "more than one link"),
            (own.join("dirlink").join("shadow"), "symlink"),
            (own.join("dirlink").join("new.log"), "symlink"),
            (secret.clone(), "may not write"),
            (secret.parent().unwrap().join("new.log"), "may not create"),
        ] {
            let e = Place::of(&path)
                .and_then(|p| p.open_for(&t, true, &path))
                .expect_err(&format!("{} must be refused", path.display()));
            assert!(e.to_string().contains(why), "{}: {e}", path.display());
        }
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "root only\n");
        assert!(!secret.parent().unwrap().join("new.log").exists());

        // A group-writable shared directory and file work through the tenant's groups.
        let shared = dir("shared", 0, 0o775);
        std::os::unix::fs::chown(&shared, Some(0), Some(NOBODY)).unwrap();
        let cid = shared.join("app.cid");
        let mut f = Place::of(&cid).unwrap().open_for(&t, false, &cid).unwrap();
        f.write_all(b"abc\n").unwrap();
        let mut f = Place::of(&cid).unwrap().open_for(&t, false, &cid).unwrap();
        f.write_all(b"d\n").unwrap();
        assert_eq!(std::fs::read_to_string(&cid).unwrap(), "d\n", "truncated, not appended");
        for d in [own, secret.parent().unwrap().to_path_buf(), shared] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
