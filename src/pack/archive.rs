//! The tree as a tar stream: the root filesystem `docker import` makes the image's one layer from.
//!
//! Owners and modes are written as numbers (no user or group names: this binary reads no NSS database),
//! exactly as planned; a file is read when its turn comes, so the archive streams in constant memory. A
//! file whose size changed since it was planned fails the archive rather than writing a header that lies
//! about its length.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::rootfs::{Entry, Kind, Rootfs};

/// Totals of what was written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub entries: usize,
    pub bytes: u64,
}

/// Writes every entry of `rootfs` (parents first) and the end-of-archive marker into `out`.
pub fn write(rootfs: &Rootfs, out: impl Write) -> io::Result<Totals> {
    let mut tar = tar::Builder::new(out);
    let mut totals = Totals::default();
    for (path, entry) in &rootfs.entries {
        let name = path.strip_prefix("/").unwrap_or(path);
        if name.as_os_str().is_empty() {
            continue;
        }
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode);
        header.set_uid(u64::from(entry.uid));
        header.set_gid(u64::from(entry.gid));
        header.set_mtime(entry.mtime);
        match &entry.kind {
            Kind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                tar.append_data(&mut header, name, io::empty())?;
            }
            Kind::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                tar.append_link(&mut header, name, target)?;
            }
            Kind::Data(bytes) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(bytes.len() as u64);
                tar.append_data(&mut header, name, bytes.as_slice())?;
                totals.bytes += bytes.len() as u64;
            }
            Kind::File { size } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(*size);
                let file = open_planned(path, entry)?;
                tar.append_data(
                    &mut header,
                    name,
                    Exact {
                        file,
                        left: *size,
                        path,
                    },
                )?;
                totals.bytes += size;
            }
        }
        totals.entries += 1;
    }
    tar.into_inner()?.flush()?;
    Ok(totals)
}

/// Opens a planned file without following a symlink that may have replaced it since.
fn open_planned(path: &Path, entry: &Entry) -> io::Result<File> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let meta = file.metadata()?;
    if !meta.is_file() || Some(meta.len()) != planned_size(entry) {
        return Err(io::Error::other(format!(
            "{} changed while the image was being packed",
            path.display()
        )));
    }
    Ok(file)
}

fn planned_size(entry: &Entry) -> Option<u64> {
    match entry.kind {
        Kind::File { size } => Some(size),
        _ => None,
    }
}

/// A file that must yield exactly `left` more bytes: a short read at the end is an error, and bytes past
/// it are not read, so the tar header's size is always true.
struct Exact<'a> {
    file: File,
    left: u64,
    path: &'a Path,
}

impl Read for Exact<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while the image was being packed", self.path.display()),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn entries_round_trip_through_a_tar_reader() {
        let dir = std::env::temp_dir().join(format!("emperor-archive-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, b"hello").unwrap();
        let mut r = Rootfs::default();
        r.entries.insert(
            PathBuf::from("/etc"),
            Entry {
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: 7,
            },
        );
        r.entries.insert(
            PathBuf::from("/etc/passwd"),
            Entry::made(Kind::Data(b"root:x:0:0::/:/x\n".to_vec()), 0o644),
        );
        let long = format!("/lib/{}", "l".repeat(150));
        r.entries.insert(
            PathBuf::from(&long),
            Entry {
                kind: Kind::Symlink(PathBuf::from("usr/lib")),
                mode: 0o777,
                uid: 0,
                gid: 0,
                mtime: 0,
            },
        );
        r.entries.insert(
            file.clone(),
            Entry {
                kind: Kind::File { size: 5 },
                mode: 0o4755,
                uid: 33,
                gid: 65534,
                mtime: 1,
            },
        );
        let mut buf = Vec::new();
        let totals = write(&r, &mut buf).unwrap();
        assert_eq!(
            totals,
            Totals {
                entries: 4,
                bytes: 5 + 17
            }
        );
        let mut seen = Vec::new();
        for e in tar::Archive::new(buf.as_slice()).entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            let link = e.link_name().unwrap().map(|l| l.into_owned());
            seen.push((
                e.path().unwrap().into_owned(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                link,
                body,
            ));
        }
        let f = seen.iter().find(|s| s.0 == file.strip_prefix("/").unwrap()).unwrap();
        assert_eq!((f.1, f.2, f.3, f.5.as_slice()), (0o4755, 33, 65534, &b"hello"[..]));
        let l = seen.iter().find(|s| s.0 == Path::new(&long[1..])).unwrap();
        assert_eq!(l.4.as_deref(), Some(Path::new("usr/lib")));
        assert_eq!(seen[0].0, Path::new("etc"));

        // A file that changed size since it was planned fails the archive.
        std::fs::write(&file, b"hello, longer").unwrap();
        let e = write(&r, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("changed while"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
