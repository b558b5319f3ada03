//! Which emperor owns a container: two emperors can share one Docker daemon (two vassals directories, two
//! tenants), and a container labelled by the other one must never be taken for a stale one of our own while
//! that emperor runs. A dead emperor's containers are still fair game (they are reaped, as before).
//!
//! Liveness is an `flock` that a running emperor holds on `<run-dir>/<instance>/emperor.lock` for its whole
//! life: the kernel drops it when the process dies, even by `kill -9`, so there is no stale pid to trust. The
//! file also says who holds it (pid and vassals directory), for the message that names the other emperor.
//! Emperors that share a daemon must therefore share the run directory (`--emperor-run-dir`, default
//! `/run/emperor`), which they do unless told otherwise.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The lock file of the emperor with this instance id.
pub fn lock_path(run_dir: &Path, instance: &str) -> PathBuf {
    run_dir.join(instance).join("emperor.lock")
}

/// This emperor's claim on its instance, held until dropped (or the process dies).
#[derive(Debug)]
pub struct Held {
    path: PathBuf,
    _lock: Flock<File>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        // The instance directory too, once nothing else is in it (its bridges' proxy directories are removed
        // before): under systemd's RuntimeDirectoryPreserve=yes, /run/emperor would otherwise collect one empty
        // directory per vassals directory ever run until the next boot.
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Takes the claim. `Err` when another emperor with the same instance (the same vassals directory) already
/// holds it, or the file cannot be made.
pub fn hold(run_dir: &Path, instance: &str, vassals_dir: &Path) -> std::io::Result<Held> {
    let path = lock_path(run_dir, instance);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .read(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)?;
    let mut lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| std::io::Error::from(e))?;
    lock.set_len(0)?;
    write!(lock, "{}\n{}\n", std::process::id(), vassals_dir.display())?;
    Ok(Held { path, _lock: lock })
}

/// A running emperor, as its lock file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: String,
    pub vassals_dir: String,
}

/// The emperor with instance id `instance`, if it is running.
pub fn alive(run_dir: &Path, instance: &str) -> Option<Owner> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(lock_path(run_dir, instance))
        .ok()?;
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    // Someone holds it exactly when we cannot take it (ours is released at once when `Flock` drops).
    if Flock::lock(file, FlockArg::LockSharedNonblock).is_ok() {
        return None;
    }
    let mut lines = text.lines();
    Some(Owner {
        pid: lines.next().unwrap_or("?").to_owned(),
        vassals_dir: lines.next().unwrap_or("?").to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emperor_is_alive_while_it_holds_its_lock() {
        let run = std::env::temp_dir().join(format!("emperor-owner-{}", std::process::id()));
        assert_eq!(alive(&run, "abc"), None, "no file: nobody");
        let held = hold(&run, "abc", Path::new("/srv/vassals")).unwrap();
        assert_eq!(
            alive(&run, "abc"),
            Some(Owner {
                pid: std::process::id().to_string(),
                vassals_dir: "/srv/vassals".into()
            })
        );
        assert!(
            hold(&run, "abc", Path::new("/other")).is_err(),
            "one emperor per instance"
        );
        drop(held);
        assert_eq!(alive(&run, "abc"), None, "released and removed");
        assert!(!run.join("abc").exists(), "the empty instance directory is removed too");

        // A directory that still holds something (a live bridge's proxy directory) stays.
        let held = hold(&run, "abc", Path::new("/srv/vassals")).unwrap();
        std::fs::create_dir(run.join("abc").join("proxy")).unwrap();
        drop(held);
        assert!(
            run.join("abc/proxy").is_dir(),
            "a non-empty instance directory is left alone"
        );
        let _ = std::fs::remove_dir_all(&run);
    }
}
