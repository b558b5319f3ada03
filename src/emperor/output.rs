//! Forwards a vassal's output, one line at a time, to the emperor's stdout prefixed with its name,
//! or to the vassal's `logto` file as is.
//!
//! Output is data, not log records (style guide §8): it bypasses `log` so no filter can drop it.
//!
//! Memory is bounded whatever the vassal prints: lines are cut at [`MAX_LINE`], so a vassal that
//! prints without newlines cannot grow the emperor's memory; complete lines are gathered into at
//! most [`BATCH`] bytes and written synchronously before the next read, so nothing queues behind a
//! slow stdout or disk (the vassal blocks on its full pipe instead). The reader keeps going after
//! the vassal's main process exits until every process that shares the pipe has closed it.

use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use log::error;

use crate::sys::tenant::{self, Tenant};
use tokio::io::AsyncReadExt;

/// Longest line kept in memory; longer ones are forwarded in pieces.
const MAX_LINE: usize = 16 * 1024;

/// Size of one read from the pipe.
const CHUNK: usize = 8192;

/// Complete lines are written once this much is pending, and at the end of every read.
const BATCH: usize = 64 * 1024;

/// Creates the pipe a vassal writes its stdout and stderr to; returns (read end, write end).
pub fn pipe() -> std::io::Result<(tokio::net::unix::pipe::Receiver, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
    // The write end goes to the vassal, which expects a blocking stdout.
    nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()))?;
    Ok((tokio::net::unix::pipe::Receiver::from_owned_fd(r)?, w))
}

/// Where one vassal's lines go. Shared by every instance of the vassal (an overlapping reload runs
/// two), so they append to one file with one size count; the actor changes the target when its
/// config changes, which takes effect at the next line. A replica's handle ([`Log::replica`]) shares the
/// sink and tags each of its lines with `#<k>`.
#[derive(Debug, Clone)]
pub struct Log(Rc<RefCell<Sink>>, Option<u32>);

#[derive(Debug)]
struct Sink {
    name: String,
    /// `logto`; `None` means the emperor's stdout.
    path: Option<PathBuf>,
    max: Option<u64>,
    /// Open `path`, with the bytes it holds; `None` until the next line opens it.
    file: Option<(File, u64)>,
    /// Opening or writing `path` failed: lines go to stdout until the setting changes or the
    /// vassal restarts, and the error is not logged again.
    failed: bool,
    /// Tyrant mode: the file is opened, created and rotated as its tenant could ([`tenant`]).
    tenant: Option<Tenant>,
    /// Lines not written yet, already formatted for their target.
    pending: Vec<u8>,
}

impl Log {
    pub fn new(name: &str) -> Log {
        Log(
            Rc::new(RefCell::new(Sink {
                name: name.to_owned(),
                path: None,
                max: None,
                file: None,
                failed: false,
                tenant: None,
                pending: Vec::new(),
            })),
            None,
        )
    }

    /// The same sink, for replica `k` of a vassal that runs several: its lines read `[name#k] ...` on stdout and
    /// `[#k] ...` in `logto`.
    pub fn replica(&self, k: u32) -> Log {
        Log(Rc::clone(&self.0), Some(k))
    }

    /// Applies `logto` / `log-maxsize`; a new path is opened at the next line.
    pub fn configure(&self, path: Option<&Path>, max: Option<u64>, tenant: Option<Tenant>) {
        let mut sink = self.0.borrow_mut();
        sink.flush();
        if sink.path.as_deref() != path || sink.tenant != tenant {
            sink.path = path.map(Path::to_path_buf);
            sink.tenant = tenant;
            sink.file = None;
            sink.failed = false;
        }
        sink.max = max;
    }

    /// Writes one line of the emperor's own where the vassal's lines go (its build's output): with the
    /// vassal's `[name]` prefix on stdout, as it is in `logto`.
    pub fn emit(&self, line: &str) {
        let mut sink = self.0.borrow_mut();
        sink.line(line.as_bytes(), self.1);
        sink.flush();
    }

    /// Closes the file so the next line reopens it (a restart: the file may have been moved away),
    /// and retries a path that failed.
    pub fn reopen(&self) {
        let mut sink = self.0.borrow_mut();
        sink.flush();
        sink.file = None;
        sink.failed = false;
    }
}

/// Copies lines until EOF. Spawned as its own task per vassal process.
pub async fn forward(log: Log, mut rx: tokio::net::unix::pipe::Receiver) {
    let mut buf = Vec::with_capacity(MAX_LINE + CHUNK);
    let mut chunk = [0u8; CHUNK];
    loop {
        let n = match rx.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        // No await from here to the flush: the sink is borrowed only within one read.
        let mut sink = log.0.borrow_mut();
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
            sink.line(&buf[start..start + pos], log.1);
            start += pos + 1;
        }
        while buf.len() - start >= MAX_LINE {
            sink.line(&buf[start..start + MAX_LINE], log.1);
            start += MAX_LINE;
        }
        sink.flush();
        buf.drain(..start);
    }
    if !buf.is_empty() {
        let mut sink = log.0.borrow_mut();
        sink.line(&buf, log.1);
        sink.flush();
    }
}

impl Sink {
    fn line(&mut self, line: &[u8], replica: Option<u32>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let tag = replica.map(|k| format!("#{k}")).unwrap_or_default();
        if self.path.is_some() && !self.failed {
            let tagged;
            self.file_line(match replica {
                Some(_) => {
                    tagged = [b"[", tag.as_bytes(), b"] ", line].concat();
                    &tagged
                }
                None => line,
            });
        }
        if self.path.is_none() || self.failed {
            self.pending.extend_from_slice(b"[");
            self.pending.extend_from_slice(self.name.as_bytes());
            self.pending.extend_from_slice(tag.as_bytes());
            self.pending.extend_from_slice(b"] ");
            self.pending.extend_from_slice(line);
            self.pending.push(b'\n');
        }
        if self.pending.len() >= BATCH {
            self.flush();
        }
    }

    /// Queues `line` for the file, rotating first if it would take the file past `max`. Sets
    /// `failed` (and queues nothing) when the file cannot be opened.
    fn file_line(&mut self, line: &[u8]) {
        let len = line.len() as u64 + 1;
        if self.file.is_none() && !self.open() {
            return;
        }
        if let Some(max) = self.max {
            let held = self.file.as_ref().map_or(0, |(_, size)| *size) + self.pending.len() as u64;
            if held > 0 && held + len > max {
                self.flush();
                if self.failed || (self.over(max, len) && !self.rotate()) {
                    return;
                }
            }
        }
        self.pending.extend_from_slice(line);
        self.pending.push(b'\n');
    }

    /// The file's real size (another writer, or `copytruncate`, may have changed it) still leaves
    /// no room for `len` more bytes.
    fn over(&mut self, max: u64, len: u64) -> bool {
        let Some((file, size)) = self.file.as_mut() else {
            return false;
        };
        if let Ok(meta) = file.metadata() {
            *size = meta.len();
        }
        *size > 0 && *size + len > max
    }

    fn open(&mut self) -> bool {
        let Some(path) = &self.path else { return false };
        let opened = match &self.tenant {
            Some(t) => tenant::Place::of(path).and_then(|p| p.open_for(t, true, path)),
            None => std::fs::OpenOptions::new().append(true).create(true).open(path),
        }
        .and_then(|f| f.metadata().map(|m| (f, m.len())));
        match opened {
            Ok(file) => {
                self.file = Some(file);
                true
            }
            Err(e) => {
                self.fail(format!("cannot open logto {}: {e}", path.display()));
                false
            }
        }
    }

    /// `<file>` becomes `<file>.1` (replacing it) and a new `<file>` is opened. In tyrant mode both happen
    /// inside the directory reached without symlinks, never through the path again.
    fn rotate(&mut self) -> bool {
        let Some(path) = self.path.clone() else { return false };
        self.file = None;
        let rotated = match &self.tenant {
            Some(_) => tenant::Place::of(&path).and_then(|p| {
                let old = p.sibling(".1");
                p.remove(&old)?;
                p.rename(&p.name, &old)
            }),
            None => {
                let mut old = path.clone().into_os_string();
                old.push(".1");
                // Freeing the old `<file>.1` can take a while (ext4 with `discard`: ~10 ms for 10 MB); done
                // by the rename, that time would be spent with no `<file>` at all.
                let _ = std::fs::remove_file(&old);
                std::fs::rename(&path, &old)
            }
        };
        if let Err(e) = rotated {
            self.fail(format!("cannot rotate logto {}: {e}", path.display()));
            return false;
        }
        self.open()
    }

    fn fail(&mut self, message: String) {
        error!("[{}] {message}; its output goes to the emperor's stdout", self.name);
        self.failed = true;
        self.file = None;
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if let Some((file, size)) = self.file.as_mut() {
            match file.write_all(&self.pending) {
                Ok(()) => {
                    *size += self.pending.len() as u64;
                    self.pending.clear();
                    return;
                }
                Err(e) => {
                    let path = self.path.as_deref().unwrap_or(Path::new("")).display().to_string();
                    self.fail(format!("cannot write logto {path}: {e}"));
                    // What was pending for the file goes to stdout, prefixed like the rest.
                    let lines = std::mem::take(&mut self.pending);
                    for line in lines.split_inclusive(|&b| b == b'\n') {
                        self.pending.extend_from_slice(format!("[{}] ", self.name).as_bytes());
                        self.pending.extend_from_slice(line);
                    }
                }
            }
        }
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&self.pending).and_then(|()| out.flush());
        self.pending.clear();
    }
}
