//! Memory and CPU time of each vassal, for the stats document and the metrics; and the emperor's own
//! figures, for the metrics.
//!
//! **Docker vassals** are measured by their container's cgroup, the kernel's own account of
//! everything the container runs, including page cache and processes that left the shim's process
//! group. The container's cgroup is found from its init pid (which the bridge writes down, see
//! [`crate::docker::record`]) through `/proc/<pid>/cgroup`, rather than by building the path from the
//! container id: that path depends on the daemon's cgroup driver (`/docker/<id>` with cgroupfs,
//! `/system.slice/docker-<id>.scope` with systemd), on the cgroup version, and on where each hierarchy
//! is mounted, while `/proc/<pid>/cgroup` plus the mount table (`/proc/self/mountinfo`, which also
//! gives each mount's root, so an emperor inside a cgroup namespace resolves paths correctly) answer
//! for every layout without a Docker call. cgroup v2 (`memory.current`, `cpu.stat` `usage_usec`) is
//! preferred; on a v1 or hybrid host the v1 `memory` and `cpuacct` hierarchies are used
//! (`memory.usage_in_bytes`, `cpuacct.usage`), each only when the container has a cgroup of its own
//! there.
//!
//! **Process vassals** have no cgroup of their own (they are children of the emperor, in its cgroup),
//! but each runs in its own process group, the unit the emperor stops and kills. So their figures are
//! sums over the live members of that group, from one pass over `/proc/<pid>/stat` per document:
//! resident memory (`rss`; pages shared between processes are counted once per process, as `ps`
//! does), and CPU as `utime + stime` plus `cutime + cstime` (the children each member has reaped,
//! such as uWSGI workers that were replaced), so the figure does not drop when a worker is respawned.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// A vassal's memory and CPU time, and where they were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub memory: Option<u64>,
    pub cpu_usec: Option<u64>,
    /// `"cgroup"` or `"proc"`.
    pub source: &'static str,
}

/// A mounted cgroup hierarchy: where it is mounted, and which cgroup is at that place.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    root: String,
    point: PathBuf,
}

/// The cgroup hierarchies this process can see.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cgroups {
    v2: Option<Mount>,
    /// v1 hierarchies with their controllers (`memory`, `cpu,cpuacct`, `name=systemd`, ...).
    v1: Vec<(Vec<String>, Mount)>,
}

/// `/proc/self/mountinfo` escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(Ok(v)) = b
                .get(i + 1..i + 4)
                .and_then(|d| std::str::from_utf8(d).ok())
                .map(|d| u8::from_str_radix(d, 8))
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Cgroups {
    pub fn load() -> Cgroups {
        std::fs::read_to_string("/proc/self/mountinfo")
            .map(|t| Cgroups::parse(&t))
            .unwrap_or_default()
    }

    /// `id parent major:minor root mountpoint options [optional...] - fstype source superoptions`.
    fn parse(mountinfo: &str) -> Cgroups {
        let mut c = Cgroups::default();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            let (Some(root), Some(point), Some(fstype)) = (l.get(3), l.get(4), r.first()) else {
                continue;
            };
            let m = Mount {
                root: unescape(root),
                point: PathBuf::from(unescape(point)),
            };
            match *fstype {
                "cgroup2" if c.v2.is_none() => c.v2 = Some(m),
                "cgroup" => {
                    let opts = r.get(2).copied().unwrap_or("");
                    let ctrls = opts
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro"))
                        .map(String::from)
                        .collect();
                    c.v1.push((ctrls, m));
                }
                _ => {}
            }
        }
        c
    }

    /// The directories of the cgroups of a process, from its `/proc/<pid>/cgroup` text:
    /// `(v2 dir, v1 memory dir, v1 cpuacct dir)`. A process in the root cgroup (or outside what this
    /// process can see) has none: the root's figures are the whole machine's.
    fn dirs(&self, proc_cgroup: &str) -> (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>) {
        let (mut v2, mut mem, mut cpu) = (None, None, None);
        for line in proc_cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if id == "0" && ctrls.is_empty() {
                v2 = self.v2.as_ref().and_then(|m| resolve(m, path));
                continue;
            }
            let find = |want: &str| -> Option<PathBuf> {
                if !ctrls.split(',').any(|c| c == want) {
                    return None;
                }
                let (_, m) = self.v1.iter().find(|(cs, _)| cs.iter().any(|c| c == want))?;
                resolve(m, path)
            };
            mem = mem.or_else(|| find("memory"));
            cpu = cpu.or_else(|| find("cpuacct"));
        }
        (v2, mem, cpu)
    }

    /// The memory and CPU time of the cgroup that `pid` is in.
    pub fn usage_of(&self, pid: i64) -> Option<Usage> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let (v2, mem, cpu) = self.dirs(&text);
        let memory = v2
            .as_ref()
            .and_then(|d| read_u64(&d.join("memory.current")))
            .or_else(|| mem.and_then(|d| read_u64(&d.join("memory.usage_in_bytes"))));
        let cpu_usec = v2
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.join("cpu.stat")).ok())
            .and_then(|t| cpu_stat_usage(&t))
            .or_else(|| cpu.and_then(|d| read_u64(&d.join("cpuacct.usage"))).map(|ns| ns / 1000));
        (memory.is_some() || cpu_usec.is_some()).then_some(Usage {
            memory,
            cpu_usec,
            source: "cgroup",
        })
    }
}

/// Where cgroup `path` (as `/proc/<pid>/cgroup` names it) is under mount `m`; `None` for the root
/// cgroup or one outside the mount.
fn resolve(m: &Mount, path: &str) -> Option<PathBuf> {
    let rel = if m.root == "/" {
        path
    } else {
        path.strip_prefix(m.root.as_str())?
    };
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        return None;
    }
    Some(m.point.join(rel))
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// `usage_usec` from cgroup v2's `cpu.stat`.
fn cpu_stat_usage(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    pgrp: i32,
    /// utime + stime + cutime + cstime, in clock ticks.
    ticks: u64,
    /// Resident pages.
    rss: u64,
}

/// Field `n` (1-based, as proc(5) numbers them) of `/proc/<pid>/stat` as a number.
/// `pid (comm) state ppid pgrp ...`: comm may hold spaces and parentheses, so fields are counted
/// after its last `)`.
fn stat_field(text: &str, n: usize) -> Option<u64> {
    let (_, rest) = text.rsplit_once(')')?;
    // rest's first word is field 3 (state).
    rest.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

fn parse_stat(text: &str) -> Option<Stat> {
    let num = |n| stat_field(text, n);
    Some(Stat {
        pgrp: i32::try_from(num(5)?).ok()?,
        ticks: num(14)? + num(15)? + num(16)? + num(17)?,
        rss: num(24)?,
    })
}

/// The emperor's own figures (for `--emperor-metrics`), as the Prometheus client libraries' process
/// collectors report them; each `None` when it cannot be read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Own {
    /// User and system CPU time of the emperor itself (not of the vassals it reaped).
    pub cpu_seconds: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub vsize_bytes: Option<u64>,
    /// When it started, UNIX seconds.
    pub start_time: Option<f64>,
    pub open_fds: Option<u64>,
    /// The soft limit on open files.
    pub max_fds: Option<u64>,
}

impl Own {
    pub fn read() -> Own {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let btime = std::fs::read_to_string("/proc/stat").ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())
        });
        Own::from(
            &stat,
            btime,
            sysconf(nix::unistd::SysconfVar::PAGE_SIZE, 4096),
            sysconf(nix::unistd::SysconfVar::CLK_TCK, 100),
        )
        .with_fds()
    }

    /// From `/proc/self/stat`'s text, the boot time (`btime` of `/proc/stat`), the page size and the clock tick.
    fn from(stat: &str, btime: Option<u64>, page: u64, hz: u64) -> Own {
        let num = |n| stat_field(stat, n);
        let hz = hz.max(1) as f64;
        Own {
            cpu_seconds: num(14).zip(num(15)).map(|(u, s)| (u + s) as f64 / hz),
            rss_bytes: num(24).map(|p| p * page),
            vsize_bytes: num(23),
            start_time: num(22).zip(btime).map(|(t, b)| b as f64 + t as f64 / hz),
            open_fds: None,
            max_fds: None,
        }
    }

    fn with_fds(mut self) -> Own {
        self.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64);
        self.max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|t| max_open_files(&t));
        self
    }
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits` (`None` when unlimited).
fn max_open_files(limits: &str) -> Option<u64> {
    let rest = limits.lines().find_map(|l| l.strip_prefix("Max open files"))?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Sums per process group, from one pass over /proc.
#[derive(Debug, Default)]
pub struct Groups {
    sums: HashMap<i32, (u64, u64)>,
    page: u64,
    tick_hz: u64,
}

impl Groups {
    /// Reads every process in /proc once, keeping the groups led by `leaders`.
    pub fn load(leaders: &HashSet<i32>) -> Groups {
        let mut g = Groups {
            sums: HashMap::new(),
            page: sysconf(nix::unistd::SysconfVar::PAGE_SIZE, 4096),
            tick_hz: sysconf(nix::unistd::SysconfVar::CLK_TCK, 100),
        };
        if leaders.is_empty() {
            return g;
        }
        let Ok(dir) = std::fs::read_dir("/proc") else { return g };
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else {
                continue;
            };
            // A process may end between the listing and the read: skip it.
            let Some(st) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|t| parse_stat(&t))
            else {
                continue;
            };
            if leaders.contains(&st.pgrp) {
                let s = g.sums.entry(st.pgrp).or_default();
                s.0 += st.rss;
                s.1 += st.ticks;
            }
        }
        g
    }

    /// The process group led by `pgid`; `None` if it has no live member.
    pub fn usage_of(&self, pgid: i32) -> Option<Usage> {
        let (rss, ticks) = self.sums.get(&pgid)?;
        Some(Usage {
            memory: Some(rss * self.page),
            cpu_usec: Some(ticks * 1_000_000 / self.tick_hz.max(1)),
            source: "proc",
        })
    }
}

fn sysconf(var: nix::unistd::SysconfVar, default: u64) -> u64 {
    match nix::unistd::sysconf(var) {
        Ok(Some(v)) if v > 0 => v as u64,
        _ => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
33 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_cgroupfs_driver() {
        let c = Cgroups::parse(HYBRID);
        let id = "0123abcd";
        let text = format!(
            "9:name=systemd:/docker/{id}\n4:memory:/docker/{id}\n2:cpu,cpuacct:/docker/{id}\n0::/docker/{id}\n"
        );
        let (v2, mem, cpu) = c.dirs(&text);
        assert_eq!(v2, Some(PathBuf::from(format!("/sys/fs/cgroup/unified/docker/{id}"))));
        assert_eq!(mem, Some(PathBuf::from(format!("/sys/fs/cgroup/memory/docker/{id}"))));
        assert_eq!(
            cpu,
            Some(PathBuf::from(format!("/sys/fs/cgroup/cpu,cpuacct/docker/{id}")))
        );
        // A process in the root cgroup: nothing (the root's figures are the whole machine's).
        assert_eq!(c.dirs("4:memory:/\n2:cpu,cpuacct:/\n0::/\n"), (None, None, None));
    }

    #[test]
    fn v2_systemd_driver_and_a_cgroup_namespace() {
        let c = Cgroups::parse("30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n");
        let (v2, mem, cpu) = c.dirs("0::/system.slice/docker-0123abcd.scope\n");
        assert_eq!(
            v2,
            Some(PathBuf::from("/sys/fs/cgroup/system.slice/docker-0123abcd.scope"))
        );
        assert_eq!((mem, cpu), (None, None));
        // Mounted from a sub-tree (a cgroup namespace, or a bind mount): paths are relative to its root.
        let c = Cgroups::parse("30 23 0:27 /outer /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        assert_eq!(
            c.dirs("0::/outer/docker/x\n").0,
            Some(PathBuf::from("/sys/fs/cgroup/docker/x"))
        );
        assert_eq!(c.dirs("0::/elsewhere/x\n").0, None);
        assert_eq!(c.dirs("0::/outer\n").0, None);
    }

    #[test]
    fn mountinfo_escapes() {
        let c = Cgroups::parse("1 2 0:1 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n");
        assert_eq!(c.v2.unwrap().point, PathBuf::from("/mnt/with space"));
    }

    #[test]
    fn cpu_stat_and_proc_stat() {
        assert_eq!(
            cpu_stat_usage("usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n"),
            Some(123_456)
        );
        assert_eq!(cpu_stat_usage("nr_periods 0\n"), None);
        // comm with a space and a parenthesis; utime 7, stime 3, cutime 20, cstime 5, rss 250 pages.
        let line = "4242 (my (app) x) S 1 4240 4240 0 -1 4194560 100 0 0 0 7 3 20 5 20 0 1 0 100 1000000 250 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                pgrp: 4240,
                ticks: 35,
                rss: 250
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        // The emperor's own: utime 7 + stime 3 ticks, started 100 ticks after boot, 1000000 bytes of
        // address space, 250 pages resident.
        let own = Own::from(line, Some(1_700_000_000), 4096, 100);
        assert_eq!(
            own,
            Own {
                cpu_seconds: Some(0.1),
                rss_bytes: Some(250 * 4096),
                vsize_bytes: Some(1_000_000),
                start_time: Some(1_700_000_001.0),
                open_fds: None,
                max_fds: None,
            }
        );
        assert_eq!(Own::from("garbage", None, 4096, 100), Own::default());
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             unlimited            unlimited            processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(max_open_files("Max open files unlimited unlimited files\n"), None);
    }

    #[test]
    fn the_emperor_reads_its_own_figures() {
        let own = Own::read();
        assert!(own.rss_bytes.is_some_and(|b| b > 1024 * 1024), "{own:?}");
        assert!(
            own.open_fds.is_some_and(|n| n >= 3) && own.max_fds.is_some_and(|n| n >= 3),
            "{own:?}"
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            own.start_time
                .is_some_and(|t| t <= now + 1.0 && t > now - 86400.0 * 365.0),
            "{own:?}"
        );
        assert!(own.cpu_seconds.is_some(), "{own:?}");
    }

    #[test]
    fn this_process_group_is_measured() {
        let me = nix::unistd::getpgrp().as_raw();
        let g = Groups::load(&HashSet::from([me]));
        let u = g.usage_of(me).expect("our own group has a live member");
        assert_eq!(u.source, "proc");
        assert!(u.memory.is_some_and(|m| m > 1024 * 1024), "{u:?}");
        assert!(g.usage_of(-5).is_none());
    }
}
