//! A build context as the root emperor reads it for a tenant: walked, hashed and archived without ever
//! following a symlink and, in tyrant mode, without reading anything the vassal's owner could not read.
//!
//! The context directory is named by a vassal file, and the emperor runs as root, so:
//!
//! - every file and directory inside is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from
//!   the context's own fd: a symlink anywhere on the way is refused by the kernel, and nothing outside
//!   the context can be reached however the tree changes meanwhile. A symlink *in* the context is archived
//!   as a symlink (its target as written), never followed, as the Docker CLI does;
//! - with a tenant (tyrant mode), the context path was resolved by the policy (`build-root`); it is opened
//!   component by component with `O_NOFOLLOW`, every directory on the way must be searchable by the tenant,
//!   every directory inside readable and searchable, and every file readable (owner, group or other bits
//!   against the tenant's uid, gid and groups, as `sys/tenant.rs` checks writes). A file the tenant could not
//!   read fails the build with its path; it is never sent, and never skipped in silence;
//! - sockets, FIFOs and devices are left out (the CLI leaves out sockets; reading a FIFO would hang).
//!
//! The **hash** is SHA-256 over every entry in path order (kind, path, permission bits, and a file's size
//! and bytes or a symlink's target); modification times and owners are left out, so a `touch` or a
//! `cp -a` of the same tree changes nothing. It is computed while walking, and computed again while the
//! archive is written: if the tree changed between the two, the archive fails before its end and the
//! daemon drops the build, so a tag never names content other than what its hash says.
//!
//! The archive has the CLI's shape: owners 0:0 (a `COPY` makes files root's anyway), modes and
//! modification times as on disk.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use sha2::{Digest, Sha256};

use super::ignore::Ignore;
use crate::sys::tenant::Tenant;

/// One entry of the context, in archive order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the context, `/`-separated.
    pub path: String,
    pub kind: Kind,
    /// Permission bits (setuid, setgid and sticky included).
    pub mode: u32,
    pub mtime: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { size: u64 },
    Symlink(OsString),
}

/// A context read and hashed: what to archive if the image must be built.
#[derive(Debug)]
pub struct Context {
    /// The context directory, as the vassal file gives it (after the vassals directory and the policy).
    pub dir: PathBuf,
    root: OwnedFd,
    tenant: Option<Tenant>,
    pub entries: Vec<Entry>,
    /// SHA-256, lowercase hex.
    pub hash: String,
    /// Bytes of file content.
    pub bytes: u64,
    /// What was left out, for the log: sockets, FIFOs and devices.
    pub skipped: Vec<String>,
}

fn err(path: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{}: {why}", path.display()))
}

fn denied(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{}: the vassal's owner may not read it", path.display()),
    )
}

/// Reads the context at `dir` (see the module doc); `tenant` in tyrant mode.
pub fn read(dir: &Path, tenant: Option<Tenant>) -> io::Result<Context> {
    let root = open_root(dir, tenant.as_ref())?;
    let ignore = match open_beneath(&root, "Dockerfile", OFlag::O_RDONLY) {
        Ok(fd) => {
            let st = nix::sys::stat::fstat(&fd)?;
            if kind_of(&st) != SFlag::S_IFREG {
                return Err(err(&dir.join("Dockerfile"), "not a regular file"));
            }
            read_ignore(&root, dir, tenant.as_ref())?
        }
        Err(nix::errno::Errno::ENOENT) => return Err(err(dir, "no Dockerfile in the build context")),
        Err(nix::errno::Errno::ELOOP) => return Err(err(&dir.join("Dockerfile"), "a symlink; not followed")),
        Err(e) => return Err(err(&dir.join("Dockerfile"), e)),
    };
    let mut ctx = Context {
        dir: dir.to_path_buf(),
        root,
        tenant,
        entries: Vec::new(),
        hash: String::new(),
        bytes: 0,
        skipped: Vec::new(),
    };
    ctx.walk("", &ignore, false)?;
    let mut hasher = Sha256::new();
    for i in 0..ctx.entries.len() {
        let entry = ctx.entries[i].clone();
        feed_header(&mut hasher, &entry);
        if let Kind::File { size } = entry.kind {
            let mut file = ctx.open_file(&entry)?;
            let copied = io::copy(&mut (&mut file).take(size + 1), &mut HashWriter(&mut hasher))?;
            if copied != size {
                return Err(err(&ctx.dir.join(&entry.path), "changed while it was read"));
            }
            ctx.bytes += size;
        }
    }
    ctx.hash = hex(&hasher.finalize());
    Ok(ctx)
}

impl Context {
    /// Adds the entries under `rel` (`""`: the context itself), in byte order of their names.
    /// `excluded`: `rel` itself is left out (walked only because an exception may bring back what it holds).
    fn walk(&mut self, rel: &str, ignore: &Ignore, excluded: bool) -> io::Result<()> {
        let shown = self.dir.join(rel);
        let fd = open_beneath(
            &self.root,
            if rel.is_empty() { "." } else { rel },
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        )
        .map_err(|e| err(&shown, e))?;
        let st = nix::sys::stat::fstat(&fd)?;
        if self.tenant.as_ref().is_some_and(|t| !t.may(&st, 0o5)) {
            return Err(denied(&shown));
        }
        if !rel.is_empty() && !excluded {
            self.entries.push(Entry {
                path: rel.to_owned(),
                kind: Kind::Dir,
                mode: st.st_mode & 0o7777,
                mtime: st.st_mtime,
            });
        }
        let mut names: Vec<OsString> = Vec::new();
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(|e| err(&shown, e))?;
        for entry in dir.iter() {
            let entry = entry.map_err(|e| err(&shown, e))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(std::ffi::OsStr::from_bytes(name).to_os_string());
            }
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let Some(name) = name.to_str().map(str::to_owned) else {
                return Err(err(&shown.join(&name), "not valid UTF-8; rename it"));
            };
            let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            self.add(&dir, path, ignore)?;
        }
        Ok(())
    }

    /// One name found in a directory (`dir`, open): recorded, walked into, or left out.
    fn add(&mut self, dir: &nix::dir::Dir, path: String, ignore: &Ignore) -> io::Result<()> {
        let name = path.rsplit('/').next().unwrap_or(&path).to_owned();
        let shown = self.dir.join(&path);
        let st = nix::sys::stat::fstatat(dir, name.as_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| err(&shown, e))?;
        let excluded = ignore.excludes(&path);
        let mode = st.st_mode & 0o7777;
        let kind = match kind_of(&st) {
            SFlag::S_IFDIR => {
                if excluded && !ignore.has_exceptions() {
                    return Ok(());
                }
                return self.walk(&path, ignore, excluded);
            }
            _ if excluded => return Ok(()),
            SFlag::S_IFREG => Kind::File {
                size: st.st_size as u64,
            },
            SFlag::S_IFLNK => Kind::Symlink(nix::fcntl::readlinkat(dir, name.as_str()).map_err(|e| err(&shown, e))?),
            _ => {
                self.skipped.push(path);
                return Ok(());
            }
        };
        self.entries.push(Entry {
            path,
            kind,
            mode,
            mtime: st.st_mtime,
        });
        Ok(())
    }

    /// A file of the context, opened without following a symlink, checked to be the regular file walked
    /// (and readable by the tenant).
    fn open_file(&self, entry: &Entry) -> io::Result<File> {
        let shown = self.dir.join(&entry.path);
        let fd = open_beneath(&self.root, entry.path.as_str(), OFlag::O_RDONLY | OFlag::O_NONBLOCK)
            .map_err(|e| err(&shown, e))?;
        let st = nix::sys::stat::fstat(&fd)?;
        if kind_of(&st) != SFlag::S_IFREG {
            return Err(err(&shown, "changed while it was read"));
        }
        if self.tenant.as_ref().is_some_and(|t| !t.may(&st, 0o4)) {
            return Err(denied(&shown));
        }
        Ok(File::from(fd))
    }

    /// Writes the archive to `out`, hashing again as it goes: if the tree no longer hashes as it did, the
    /// archive is cut short with an error (see the module doc). Returns the bytes of content written.
    pub fn write_tar(&self, out: impl Write) -> io::Result<u64> {
        let mut tar = tar::Builder::new(out);
        let mut hasher = Sha256::new();
        let mut written = 0;
        for entry in &self.entries {
            feed_header(&mut hasher, entry);
            let mut header = tar::Header::new_gnu();
            header.set_mode(entry.mode);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(u64::try_from(entry.mtime).unwrap_or(0));
            match &entry.kind {
                Kind::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    tar.append_data(&mut header, format!("{}/", entry.path), io::empty())?;
                }
                Kind::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    tar.append_link(&mut header, &entry.path, Path::new(target))?;
                }
                Kind::File { size } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(*size);
                    let file = self.open_file(entry)?;
                    let shown = self.dir.join(&entry.path);
                    let body = Teed {
                        inner: file.take(*size),
                        hasher: &mut hasher,
                        left: *size,
                        path: &shown,
                    };
                    tar.append_data(&mut header, &entry.path, body)?;
                    written += size;
                }
            }
        }
        if hex(&hasher.finalize()) != self.hash {
            return Err(io::Error::other(format!(
                "{}: the build context changed while it was sent; the build is dropped (touch the vassal file again)",
                self.dir.display()
            )));
        }
        tar.into_inner()?.flush()?;
        Ok(written)
    }
}

/// Opens `rel` under the context without following any symlink and without leaving it.
fn open_beneath(root: &OwnedFd, rel: &str, flags: OFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    nix::fcntl::openat2(root.as_fd(), rel, how)
}

/// The context directory itself. As root (no tenant) its path is the operator's: symlinks in it are
/// followed (a deploy's `current -> releases/42`). For a tenant, the path the policy resolved is walked one
/// component at a time without following symlinks, each directory searchable by the tenant.
fn open_root(dir: &Path, tenant: Option<&Tenant>) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let Some(t) = tenant else {
        return nix::fcntl::open(dir, flags, Mode::empty()).map_err(|e| err(dir, e));
    };
    if !dir.is_absolute() {
        return Err(err(dir, "not an absolute path"));
    }
    let mut fd = nix::fcntl::open("/", flags, Mode::empty()).map_err(|e| err(Path::new("/"), e))?;
    let mut at = PathBuf::from("/");
    for part in dir.components().skip(1) {
        let st = nix::sys::stat::fstat(&fd)?;
        if !t.may(&st, 0o1) {
            return Err(denied(&at));
        }
        at.push(part);
        fd = nix::fcntl::openat(&fd, part.as_os_str(), flags | OFlag::O_NOFOLLOW, Mode::empty()).map_err(
            |e| match e {
                nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR => {
                    err(&at, "a symlink or not a directory; not followed in tyrant mode")
                }
                e => err(&at, e),
            },
        )?;
    }
    Ok(fd)
}

/// `.dockerignore`, if the context has one (read as its files are: no symlink, readable by the tenant).
fn read_ignore(root: &OwnedFd, dir: &Path, tenant: Option<&Tenant>) -> io::Result<Ignore> {
    let path = dir.join(".dockerignore");
    let fd = match open_beneath(root, ".dockerignore", OFlag::O_RDONLY | OFlag::O_NONBLOCK) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(Ignore::default()),
        Err(e) => return Err(err(&path, e)),
    };
    let st = nix::sys::stat::fstat(&fd)?;
    if kind_of(&st) != SFlag::S_IFREG {
        return Err(err(&path, "not a regular file"));
    }
    if tenant.is_some_and(|t| !t.may(&st, 0o4)) {
        return Err(denied(&path));
    }
    let mut text = String::new();
    File::from(fd)
        .take(1 << 20)
        .read_to_string(&mut text)
        .map_err(|e| err(&path, e))?;
    Ok(Ignore::parse(&text))
}

fn kind_of(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

/// What the hash takes of an entry besides a file's bytes: its kind, path, permission bits, and a file's
/// size or a symlink's target. NUL separates the variable parts (a path holds no NUL).
fn feed_header(h: &mut Sha256, e: &Entry) {
    let (tag, extra): (u8, Vec<u8>) = match &e.kind {
        Kind::Dir => (b'd', Vec::new()),
        Kind::File { size } => (b'f', size.to_le_bytes().to_vec()),
        Kind::Symlink(target) => (b'l', target.as_bytes().to_vec()),
    };
    h.update([tag]);
    h.update(e.path.as_bytes());
    h.update([0]);
    h.update(e.mode.to_le_bytes());
    h.update(&extra);
    h.update([0]);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A file's bytes on their way into the archive, hashed as they pass; exactly `left` of them, or an error
/// (a header must never lie about the size that follows it).
struct Teed<'a, R> {
    inner: R,
    hasher: &'a mut Sha256,
    left: u64,
    path: &'a Path,
}

impl<R: Read> Read for Teed<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(err(self.path, "shrank while it was sent"));
        }
        self.hasher.update(&buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn tree(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("emperor-context-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("src")).unwrap();
        std::fs::write(d.join("Dockerfile"), "FROM scratch\nCOPY . /\n").unwrap();
        std::fs::write(d.join("src/main.txt"), "hello").unwrap();
        std::fs::write(d.join("a.log"), "noise").unwrap();
        d
    }

    fn paths(c: &Context) -> Vec<&str> {
        c.entries.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn the_hash_follows_content_modes_and_links_not_times() {
        let d = tree("hash");
        let first = read(&d, None).unwrap();
        assert_eq!(paths(&first), ["Dockerfile", "a.log", "src", "src/main.txt"]);
        assert_eq!(first.hash.len(), 64);
        assert_eq!(first.bytes, 22 + 5 + 5);
        // Same tree, new times: same hash.
        let f = File::options().write(true).open(d.join("a.log")).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(read(&d, None).unwrap().hash, first.hash);
        // One byte, a mode, a new link: each a new hash.
        std::fs::write(d.join("src/main.txt"), "hellO").unwrap();
        let content = read(&d, None).unwrap().hash;
        assert_ne!(content, first.hash);
        std::fs::set_permissions(d.join("a.log"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let mode = read(&d, None).unwrap().hash;
        assert_ne!(mode, content);
        symlink("/etc/passwd", d.join("link")).unwrap();
        let link = read(&d, None).unwrap();
        assert_ne!(link.hash, mode);
        assert_eq!(
            link.entries.iter().find(|e| e.path == "link").unwrap().kind,
            Kind::Symlink("/etc/passwd".into())
        );
        // .dockerignore leaves files out of the hash and the archive.
        std::fs::write(d.join(".dockerignore"), "*.log\n").unwrap();
        let ignored = read(&d, None).unwrap();
        assert_eq!(
            paths(&ignored),
            [".dockerignore", "Dockerfile", "link", "src", "src/main.txt"]
        );
        std::fs::write(d.join("a.log"), "other noise").unwrap();
        assert_eq!(read(&d, None).unwrap().hash, ignored.hash);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_archive_holds_links_as_links_and_fails_on_a_change() {
        let d = tree("tar");
        symlink("../../etc/shadow", d.join("src/escape")).unwrap();
        nix::unistd::mkfifo(&d.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let c = read(&d, None).unwrap();
        assert_eq!(c.skipped, ["fifo"]);
        let mut buf = Vec::new();
        assert_eq!(c.write_tar(&mut buf).unwrap(), c.bytes);
        let mut seen = Vec::new();
        for e in tar::Archive::new(buf.as_slice()).entries().unwrap() {
            let mut e = e.unwrap();
            let (path, kind) = (e.path().unwrap().into_owned(), e.header().entry_type());
            let link = e.link_name().unwrap().map(|l| l.into_owned());
            let mut body = String::new();
            e.read_to_string(&mut body).unwrap();
            assert_eq!((e.header().uid().unwrap(), e.header().gid().unwrap()), (0, 0));
            seen.push((path, kind, link, body));
        }
        let escape = seen.iter().find(|s| s.0 == Path::new("src/escape")).unwrap();
        assert_eq!(escape.1, tar::EntryType::Symlink);
        assert_eq!(escape.2.as_deref(), Some(Path::new("../../etc/shadow")));
        assert_eq!(escape.3, "", "a symlink is never followed");
        let main = seen.iter().find(|s| s.0 == Path::new("src/main.txt")).unwrap();
        assert_eq!(main.3, "hello");
        // A file that changed (same size) since the hash: the archive fails before its end.
        std::fs::write(d.join("src/main.txt"), "HELLO").unwrap();
        let e = c.write_tar(io::sink()).unwrap_err();
        assert!(e.to_string().contains("changed while it was sent"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_context_without_a_dockerfile_or_through_a_symlink_is_refused() {
        let d = tree("bad");
        std::fs::remove_file(d.join("Dockerfile")).unwrap();
        let e = read(&d, None).unwrap_err();
        assert!(e.to_string().ends_with("no Dockerfile in the build context"), "{e}");
        symlink("/etc/hostname", d.join("Dockerfile")).unwrap();
        let e = read(&d, None).unwrap_err();
        assert!(e.to_string().contains("a symlink; not followed"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_tenant_reads_only_what_it_could_read() {
        let t = crate::sys::tenant::nobody_for_tests();
        const NOBODY: u32 = 65534;
        let d = tree("tenant");
        for p in ["", "Dockerfile", "src", "src/main.txt", "a.log"] {
            std::os::unix::fs::chown(d.join(p), Some(NOBODY), Some(NOBODY)).unwrap();
        }
        assert_eq!(read(&d, Some(t.clone())).unwrap().entries.len(), 4);
        // A root-only file in the tenant's context: the build fails naming it.
        std::fs::write(d.join("src/secret"), "root only").unwrap();
        std::fs::set_permissions(d.join("src/secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = read(&d, Some(t.clone())).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("src/secret: the vassal's owner may not read it"),
            "{e}"
        );
        assert!(read(&d, None).is_ok(), "root reads it");
        std::fs::remove_file(d.join("src/secret")).unwrap();
        // A context reached through a symlink is refused in tyrant mode (the policy resolves it first).
        let link = d.with_extension("link");
        let _ = std::fs::remove_file(&link);
        symlink(&d, &link).unwrap();
        let e = read(&link, Some(t.clone())).unwrap_err();
        assert!(e.to_string().contains("not followed in tyrant mode"), "{e}");
        assert!(read(&link, None).is_ok(), "the operator's symlinks are followed");
        // A directory on the way the tenant cannot search.
        let outer = d.with_extension("outer");
        let _ = std::fs::remove_dir_all(&outer);
        std::fs::create_dir_all(&outer).unwrap();
        std::fs::set_permissions(&outer, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::rename(&d, outer.join("ctx")).unwrap();
        let e = read(&outer.join("ctx"), Some(t)).unwrap_err();
        assert!(e.to_string().contains("the vassal's owner may not read it"), "{e}");
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&outer).unwrap();
    }
}
