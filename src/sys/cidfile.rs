//! `docker-cidfile`: the file a bridge writes its container's id to, and that goes with the container.
//!
//! The path comes from a vassal file (a tenant's, in tyrant mode), while the bridge that writes it and
//! whoever removes it (that bridge, a later one replacing a stale container, the emperor's reaper) run as
//! root. So neither the write nor the removal may be turned against another file:
//!
//! - **Never written in place.** The id goes into a new file (`O_EXCL`, in the same directory) that is
//!   then renamed over the path: a symlink or a hard link found there is replaced, never written
//!   through, and a reader never sees half an id.
//! - **Only a cidfile is replaced.** What is at the path must be nothing, or a regular file that is empty
//!   or holds one container id (a stale cidfile, or the old container's during an overlapping reload).
//!   Anything else (a symlink, a directory, a FIFO, a file with other content) is refused and left as
//!   it is, as `docker run --cidfile` refuses an existing file.
//! - **Symlinks.** The last component is never followed. Directories on the way are followed, since an
//!   admin names them (`/var/run -> /run`), except in tyrant mode, where no symlink is followed anywhere
//!   and the tenant must be allowed to create the file there (and, in a sticky directory, to replace
//!   the one there); the new file is then the tenant's ([`super::tenant`]).
//! - **Removal** looks at the name without following it and opens it without blocking (a FIFO or a
//!   device put there can neither hang nor trigger anything), reads a few bytes, and unlinks the name
//!   only if it is a regular file holding exactly that container's id (the new container of an
//!   overlapping reload may have written its own by then) and is still the file it read.
//!
//! The content is the id alone, without a newline, as `docker run --cidfile` writes it.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use nix::unistd::{Gid, Uid, fchown};

use super::tenant::{Place, Tenant};

/// How much of a file is read to tell whether it is a cidfile: an id (64 bytes) and some whitespace.
const MAX_READ: u64 = 128;

fn refuse(path: &Path, why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, format!("{}: {why}", path.display()))
}

/// Writes `id` to the cidfile at `path` (absolute), for `tenant` in tyrant mode: see the module doc.
pub fn write(path: &Path, id: &str, tenant: Option<&Tenant>) -> io::Result<()> {
    let place = match tenant {
        Some(_) => Place::of(path)?,
        None => Place::following(path)?,
    };
    if let Some(t) = tenant
        && !place.tenant_may_create(t)?
    {
        return Err(refuse(
            path,
            "the vassal's owner may not create files in this directory",
        ));
    }
    if let Some((st, content)) = existing(&place, path)? {
        if !looks_like_a_cidfile(&content) {
            return Err(refuse(
                path,
                "the file there holds something else than a container id; it is not overwritten \
                 (remove it if it is yours)",
            ));
        }
        if let Some(t) = tenant
            && !tenant_may_replace(&place, &st, t)?
        {
            return Err(refuse(
                path,
                "the file there is another user's, in a sticky directory; the vassal's owner may not replace it",
            ));
        }
    }
    let temp = temp_name();
    let fd = openat(
        &place.dir,
        temp.as_os_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )?;
    let written = (|| {
        if let Some(t) = tenant {
            fchown(&fd, Some(Uid::from_raw(t.uid)), Some(Gid::from_raw(t.gid)))?;
        }
        File::from(fd).write_all(id.as_bytes())?;
        place.rename(&temp, &place.name)
    })();
    if written.is_err() {
        let _ = place.remove(&temp);
    }
    written
}

/// Removes the cidfile at `path` if it still holds exactly `id`; whether it did. Never follows a symlink
/// there and never blocks on what it finds.
pub fn remove(path: &Path, id: &str) -> io::Result<bool> {
    let place = Place::following(path)?;
    let Some((st, content)) = existing(&place, path).or_else(not_a_cidfile)? else {
        return Ok(false);
    };
    if content.trim() != id || id.is_empty() {
        return Ok(false);
    }
    // Still the file that was read (and not one renamed there meanwhile)?
    match fstatat(&place.dir, place.name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(now) if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino) => {}
        _ => return Ok(false),
    }
    place.remove(&place.name)?;
    Ok(true)
}

/// Whether the cidfile at `path` holds `id` (a bridge carrying on with a container takes over its cidfile).
pub fn holds(path: &Path, id: &str) -> bool {
    Place::following(path)
        .and_then(|place| existing(&place, path))
        .is_ok_and(|found| found.is_some_and(|(_, content)| !id.is_empty() && content.trim() == id))
}

/// What is at the place's name: `None` if nothing; the file's status and its first bytes if a regular
/// file; refused otherwise (a symlink, a directory, a FIFO, a device: none of them is opened).
fn existing(place: &Place, path: &Path) -> io::Result<Option<(FileStat, String)>> {
    let st = match fstatat(&place.dir, place.name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if kind == SFlag::S_IFLNK {
        return Err(refuse(path, "a symlink is there; it is neither followed nor replaced"));
    }
    if kind != SFlag::S_IFREG {
        return Err(refuse(
            path,
            "something else than a regular file is there; it is left alone",
        ));
    }
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let fd = openat(&place.dir, place.name.as_os_str(), flags, Mode::empty())?;
    let opened = fstat(&fd)?;
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino) {
        return Err(refuse(path, "the file changed while it was looked at"));
    }
    let mut bytes = Vec::new();
    File::from(fd).take(MAX_READ).read_to_end(&mut bytes)?;
    Ok(Some((st, String::from_utf8_lossy(&bytes).into_owned())))
}

/// For a removal, what is not a regular file there is simply not this container's cidfile.
fn not_a_cidfile(e: io::Error) -> io::Result<Option<(FileStat, String)>> {
    if e.kind() == io::ErrorKind::PermissionDenied {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Empty, or one container id (64 lowercase hex digits), with whitespace around it.
fn looks_like_a_cidfile(content: &str) -> bool {
    let id = content.trim();
    id.is_empty() || (id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// In a sticky directory, only the file's owner or the directory's may replace a file (as the kernel
/// decides for that user; root may always, which is why it is checked here).
fn tenant_may_replace(place: &Place, file: &FileStat, t: &Tenant) -> io::Result<bool> {
    let dir = fstat(&place.dir)?;
    let sticky = dir.st_mode & libc::S_ISVTX != 0;
    Ok(!sticky || file.st_uid == t.uid || dir.st_uid == t.uid)
}

/// A name for the new file before it is renamed into place: hidden, and unique to this process and moment.
fn temp_name() -> OsString {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    OsString::from(format!(".emperor-cid-{}-{nanos}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const OTHER: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("emperor-cidfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn written_by_rename_and_removed_only_while_it_holds_the_id() {
        let d = dir("cycle");
        let cid = d.join("app.cid");
        write(&cid, ID, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(&cid).unwrap(),
            ID,
            "the id alone, as docker writes it"
        );
        assert_eq!(std::fs::metadata(&cid).unwrap().mode() & 0o777, 0o644);
        assert!(holds(&cid, ID) && !holds(&cid, OTHER) && !holds(&cid, ""));
        // An overlapping reload: the new container's id replaces the old one's, which then leaves it alone.
        write(&cid, OTHER, None).unwrap();
        assert!(!remove(&cid, ID).unwrap());
        assert_eq!(std::fs::read_to_string(&cid).unwrap(), OTHER);
        assert!(remove(&cid, OTHER).unwrap());
        assert!(!cid.exists());
        assert!(!remove(&cid, OTHER).unwrap(), "nothing there: nothing to do");
        // An empty file (a stale one) and a stale id with a newline are replaced too.
        std::fs::write(&cid, "").unwrap();
        write(&cid, ID, None).unwrap();
        std::fs::write(&cid, format!("{OTHER}\n")).unwrap();
        write(&cid, ID, None).unwrap();
        assert_eq!(std::fs::read_to_string(&cid).unwrap(), ID);
        let left: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, vec![OsString::from("app.cid")], "no temporary file left");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn what_is_not_a_cidfile_is_never_written_through_replaced_or_removed() {
        let d = dir("hostile");
        let precious = d.join("precious");
        std::fs::write(&precious, "keep me\n").unwrap();

        // A symlink to another file: not followed, not replaced, on write or removal.
        let link = d.join("link.cid");
        std::os::unix::fs::symlink(&precious, &link).unwrap();
        let e = write(&link, ID, None).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        // A symlink to a file holding the id is not removed either: only the name's own file counts.
        std::fs::write(&precious, ID).unwrap();
        assert!(!remove(&link, ID).unwrap() && link.exists() && precious.exists());
        std::fs::write(&precious, "keep me\n").unwrap();

        // A file with other content (a hard link to it, too): neither truncated nor replaced.
        let other = d.join("other.cid");
        std::fs::hard_link(&precious, &other).unwrap();
        let e = write(&other, ID, None).unwrap_err();
        assert!(e.to_string().contains("something else than a container id"), "{e}");
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me\n");
        assert!(!remove(&other, ID).unwrap() && other.exists());

        // A FIFO: refused at once, never opened (opening it for reading would block).
        let fifo = d.join("fifo.cid");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        assert!(write(&fifo, ID, None).unwrap_err().to_string().contains("regular file"));
        assert!(!remove(&fifo, ID).unwrap() && !holds(&fifo, ID));
        // A directory.
        let sub = d.join("sub.cid");
        std::fs::create_dir(&sub).unwrap();
        assert!(write(&sub, ID, None).is_err() && !remove(&sub, ID).unwrap() && sub.is_dir());
        // A missing directory: an error, nothing created.
        assert!(write(&d.join("missing/app.cid"), ID, None).is_err());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn in_tyrant_mode_the_file_is_the_tenants_and_goes_only_where_the_tenant_may_write() {
        let t = crate::sys::tenant::nobody_for_tests();
        const NOBODY: u32 = 65534;
        let d = dir("tyrant");
        let own = d.join("own");
        std::fs::create_dir(&own).unwrap();
        std::os::unix::fs::chown(&own, Some(NOBODY), Some(NOBODY)).unwrap();
        let cid = own.join("app.cid");
        write(&cid, ID, Some(&t)).unwrap();
        let meta = std::fs::metadata(&cid).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY), "the tenant's file");
        assert!(remove(&cid, ID).unwrap());

        // A root-only directory, and a symlinked directory leading to it: refused.
        let root_only = d.join("root-only");
        std::fs::create_dir(&root_only).unwrap();
        std::fs::set_permissions(&root_only, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&root_only, own.join("dirlink")).unwrap();
        assert!(write(&root_only.join("a.cid"), ID, Some(&t)).is_err());
        assert!(write(&own.join("dirlink/a.cid"), ID, Some(&t)).is_err());
        assert!(!root_only.join("a.cid").exists());

        // A sticky world-writable directory: the tenant may create its own file there, but not replace root's.
        let sticky = d.join("sticky");
        std::fs::create_dir(&sticky).unwrap();
        std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
        write(&sticky.join("mine.cid"), ID, Some(&t)).unwrap();
        std::fs::write(sticky.join("roots.cid"), OTHER).unwrap();
        let e = write(&sticky.join("roots.cid"), ID, Some(&t)).unwrap_err();
        assert!(e.to_string().contains("sticky"), "{e}");
        assert_eq!(std::fs::read_to_string(sticky.join("roots.cid")).unwrap(), OTHER);
        let _ = std::fs::remove_dir_all(d);
    }
}
