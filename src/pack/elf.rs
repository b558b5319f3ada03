//! What an ELF file needs from the dynamic loader, and what the loader says it resolves to.
//!
//! The closure is the loader's own answer: the file's `PT_INTERP` loader run as `<loader> --list <file>`
//! (what `ldd` does, minus the script). Reimplementing the search would mean following glibc in
//! everything it does and may change: DT_RPATH versus DT_RUNPATH and which one a dependency inherits,
//! `$ORIGIN`/`$LIB`/`$PLATFORM`, the binary `ld.so.cache` formats, glibc-hwcaps subdirectories chosen by
//! the CPU, the multiarch default directories Debian patches in, musl's different rules. A copy that
//! drifts from the loader would pack an image that fails to start, so the loader is asked.
//!
//! Only the small part needed before asking is parsed here (with `object`): whether a file is ELF, its
//! `PT_INTERP`, and whether it has `DT_NEEDED` entries at all. That part is necessary: a static binary
//! has no loader to ask, and glibc's `ld.so --list` on one crashes (SIGSEGV) instead of saying so.
//!
//! The loader runs with an empty environment: `LD_LIBRARY_PATH` or `LD_PRELOAD` in the packing shell
//! must not decide what the image holds, since the container will not have them. It does not run the
//! file's code (trace mode maps the objects and exits before relocating them or running constructors);
//! still, it is a program the file names, so it must be a root-owned file that only root can write.

use std::fs::File;
use std::io::{Read, Seek};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use object::read::ReadCache;
use object::read::elf::{Dyn, FileHeader, ProgramHeader};

/// What an ELF file asks of the dynamic loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elf {
    /// `PT_INTERP`: the loader an executable names (None for a static binary or a shared library).
    pub interp: Option<PathBuf>,
    /// How many `DT_NEEDED` entries it has: a static-pie has a dynamic section but needs nothing.
    pub needed: usize,
}

impl Elf {
    /// Whether the loader has anything to resolve for this file.
    pub fn is_dynamic(&self) -> bool {
        self.interp.is_some() || self.needed > 0
    }
}

/// Reads `path`'s ELF headers: None when it is not an ELF file at all.
pub fn inspect(path: &Path) -> Result<Option<Elf>, String> {
    let mut file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut magic = [0u8; 4];
    match file.read_exact(&mut magic) {
        Ok(()) if magic == *b"\x7fELF" => {}
        _ => return Ok(None),
    }
    file.rewind().map_err(|e| format!("{}: {e}", path.display()))?;
    let data = ReadCache::new(file);
    let parsed = match object::FileKind::parse(&data) {
        Ok(object::FileKind::Elf32) => headers::<object::elf::FileHeader32<object::Endianness>>(&data),
        Ok(object::FileKind::Elf64) => headers::<object::elf::FileHeader64<object::Endianness>>(&data),
        Ok(other) => return Err(format!("{}: unexpected file kind {other:?}", path.display())),
        Err(e) => Err(e),
    };
    parsed
        .map(Some)
        .map_err(|e| format!("{}: not a valid ELF file: {e}", path.display()))
}

fn headers<H: FileHeader<Endian = object::Endianness>>(data: &ReadCache<File>) -> object::read::Result<Elf> {
    let header = H::parse(data)?;
    let endian = header.endian()?;
    let mut elf = Elf {
        interp: None,
        needed: 0,
    };
    for ph in header.program_headers(endian, data)? {
        if let Some(name) = ph.interpreter(endian, data)? {
            elf.interp = Some(PathBuf::from(std::ffi::OsStr::from_bytes(name)));
        }
        if let Some(dynamic) = ph.dynamic(endian, data)? {
            elf.needed = dynamic
                .iter()
                .filter(|d| d.d_tag(endian) == object::elf::DT_NEEDED)
                .count();
        }
    }
    Ok(elf)
}

/// How long one `<loader> --list` may take: it maps a few files and prints.
const TRACE_TIMEOUT: Duration = Duration::from_secs(30);

/// The files the loader maps for `object` (its libraries, transitively, and the loader itself), as the
/// paths it opened them by; an error naming every library it could not find.
pub fn trace(loader: &Path, object: &Path) -> Result<Vec<PathBuf>, String> {
    trusted_loader(loader)?;
    let what = format!("{} --list {}", loader.display(), object.display());
    let (stdout, stderr) = (tmpfile()?, tmpfile()?);
    let mut child = Command::new(loader)
        .arg("--list")
        .arg(object)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(clone(&stdout)?)
        .stderr(clone(&stderr)?)
        .spawn()
        .map_err(|e| format!("cannot run `{what}`: {e}"))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < TRACE_TIMEOUT => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("`{what}` ran for {TRACE_TIMEOUT:?}; killed"));
            }
            Err(e) => return Err(format!("waiting for `{what}`: {e}")),
        }
    };
    let (out, err) = (read_all(stdout)?, read_all(stderr)?);
    if !status.success() {
        return Err(format!("`{what}` failed ({status}): {}", err.trim()));
    }
    parse_list(&out).map_err(|missing| {
        format!(
            "{}: the loader {} cannot find {}",
            object.display(),
            loader.display(),
            missing.join(", ")
        )
    })
}

/// Refuses to run a loader that someone other than root could have replaced.
fn trusted_loader(loader: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(loader).map_err(|e| format!("the loader {}: {e}", loader.display()))?;
    if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "refusing to run the loader {} to list libraries: it must be a regular file owned by root and \
             writable by root alone (uid {}, mode {:o})",
            loader.display(),
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// An unnamed temporary file: unlike a pipe it never fills up while the child runs.
fn tmpfile() -> Result<File, String> {
    File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(std::env::temp_dir())
        .map_err(|e| {
            format!(
                "cannot make a temporary file in {}: {e}",
                std::env::temp_dir().display()
            )
        })
}

fn clone(f: &File) -> Result<Stdio, String> {
    f.try_clone()
        .map(Stdio::from)
        .map_err(|e| format!("cannot duplicate a file: {e}"))
}

fn read_all(mut f: File) -> Result<String, String> {
    let mut s = Vec::new();
    f.rewind()
        .and_then(|()| f.read_to_end(&mut s))
        .map_err(|e| format!("reading the loader's output: {e}"))?;
    Ok(String::from_utf8_lossy(&s).into_owned())
}

/// Parses `ld.so --list` output (glibc's and musl's share the shape):
/// ```text
///     linux-vdso.so.1 (0x00007ffd...)                   the vDSO: no file
///     libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)
///     libfoo.so.1 => not found
///     /lib64/ld-linux-x86-64.so.2 (0x...)               the loader itself
///     statically linked
/// ```
/// Ok(paths in order, each once) or Err(the names that were not found).
pub fn parse_list(text: &str) -> Result<Vec<PathBuf>, Vec<String>> {
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut missing = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let without_address = match line.rsplit_once(" (0x") {
            Some((head, tail)) if tail.ends_with(')') => head,
            _ => line,
        };
        let path = match without_address.split_once(" => ") {
            Some((name, "not found")) => {
                missing.push(name.to_string());
                continue;
            }
            Some((_, path)) => path,
            None => without_address,
        };
        if path.starts_with('/') && !paths.iter().any(|p| p == Path::new(path)) {
            paths.push(PathBuf::from(path));
        }
    }
    if missing.is_empty() { Ok(paths) } else { Err(missing) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_list_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffc5b5f2000)\n\
                    \tlibpcre2-8.so.0 => /lib/x86_64-linux-gnu/libpcre2-8.so.0 (0x00007f0e2b8e0000)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0e2b6ff000)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f0e2ba9b000)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0e2b6ff000)\n";
        assert_eq!(
            parse_list(text),
            Ok(vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libpcre2-8.so.0"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ])
        );
    }

    #[test]
    fn musl_origin_and_missing() {
        let text = "\t/lib/ld-musl-x86_64.so.1 (0x7f...)\n\tlibc.so => /lib/ld-musl-x86_64.so.1 (0x7f...)\n\
                    \tlibapp.so => /opt/app/bin/../lib/libapp.so (0x7f00)\n";
        assert_eq!(
            parse_list(text),
            Ok(vec![
                PathBuf::from("/lib/ld-musl-x86_64.so.1"),
                PathBuf::from("/opt/app/bin/../lib/libapp.so")
            ])
        );
        let text = "\tlibfoo.so.1 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n\tlibbar.so => not found\n";
        assert_eq!(parse_list(text), Err(vec!["libfoo.so.1".into(), "libbar.so".into()]));
        assert_eq!(parse_list("\tstatically linked\n"), Ok(vec![]));
        // A path with a space and parentheses keeps them.
        assert_eq!(
            parse_list("\tlibx.so => /opt/my app (2)/libx.so (0x10)\n"),
            Ok(vec![PathBuf::from("/opt/my app (2)/libx.so")])
        );
    }

    #[test]
    fn elf_headers_of_real_files() {
        // This test binary: an ELF file; whatever it links, inspect must read it.
        let me = std::env::current_exe().unwrap();
        assert!(inspect(&me).unwrap().is_some());
        // A text file is not ELF.
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        assert_eq!(inspect(&manifest).unwrap(), None);
        // A truncated ELF is an error, not a panic.
        let dir = std::env::temp_dir().join(format!("emperor-elf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cut = dir.join("cut");
        std::fs::write(&cut, b"\x7fELF\x02\x01\x01\0\0\0").unwrap();
        assert!(inspect(&cut).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
