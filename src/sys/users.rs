//! Users and groups, read from /etc/passwd and /etc/group.
//!
//! Not NSS (`getpwuid_r`, `getgrouplist`): the binary is linked statically, and glibc then `dlopen`s the NSS
//! modules that follow `files` in nsswitch.conf (`systemd`, `sss`, `ldap`, ...), which crashes a static
//! process (seen: a segfault in libnss_systemd for a uid the files do have). Users and groups that exist
//! only in such databases are known here by number only: a tyrant-mode vassal owned by one runs with its
//! file's uid and gid and no supplementary groups.

use std::path::{Path, PathBuf};

/// A user from /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// The records of a passwd- or group-format file, split on ':' (unreadable: none).
fn records(file: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').map(String::from).collect())
        .collect()
}

/// The user with `uid` in /etc/passwd.
pub fn by_uid(uid: u32) -> Option<User> {
    user_in(Path::new("/etc/passwd"), uid)
}

fn user_in(file: &Path, uid: u32) -> Option<User> {
    records(file).into_iter().find_map(|f| match f.as_slice() {
        [name, _, u, g, _, home, ..] if u.parse() == Ok(uid) => Some(User {
            name: name.clone(),
            uid,
            gid: g.parse().ok()?,
            home: PathBuf::from(home),
        }),
        _ => None,
    })
}

/// `gid` and every group of /etc/group that lists `name` as a member, as `initgroups` would give them.
pub fn groups_of(name: &str, gid: u32) -> Vec<u32> {
    groups_in(Path::new("/etc/group"), name, gid)
}

fn groups_in(file: &Path, name: &str, gid: u32) -> Vec<u32> {
    let mut groups = vec![gid];
    for f in records(file) {
        if let [_, _, g, members, ..] = f.as_slice()
            && members.split(',').any(|m| m == name)
            && let Ok(g) = g.parse()
            && !groups.contains(&g)
        {
            groups.push(g);
        }
    }
    groups
}

/// The id (third field) of `name` in a passwd- or group-format file; `Err` if the file cannot be read or
/// the id is not a number.
pub fn id_of(file: &Path, name: &str) -> Result<Option<u32>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    for line in text.lines() {
        let mut fields = line.split(':');
        if fields.next() != Some(name) {
            continue;
        }
        let id = fields.nth(1).unwrap_or_default();
        return id
            .parse()
            .map(Some)
            .map_err(|_| format!("{}: \"{name}\" has an invalid id \"{id}\"", file.display()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_their_groups_come_from_the_files() {
        let dir = std::env::temp_dir().join(format!("emperor-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let passwd = dir.join("passwd");
        let group = dir.join("group");
        std::fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/sh\nt1:x:1001:1001::/srv/t1:/bin/sh\nbad:x:oops:1\n",
        )
        .unwrap();
        std::fs::write(&group, "t1:x:1001:\nweb:x:33:t1,t2\nother:x:50:t2\nweb2:x:34:t1\n").unwrap();
        let t1 = user_in(&passwd, 1001).unwrap();
        assert_eq!(
            (t1.name.as_str(), t1.gid, t1.home.as_path()),
            ("t1", 1001, Path::new("/srv/t1"))
        );
        assert_eq!(user_in(&passwd, 4242), None);
        assert_eq!(groups_in(&group, "t1", 1001), [1001, 33, 34]);
        assert_eq!(groups_in(&group, "nobody-here", 7), [7]);
        assert_eq!(id_of(&passwd, "t1"), Ok(Some(1001)));
        assert_eq!(id_of(&passwd, "zz"), Ok(None));
        assert!(id_of(&passwd, "bad").is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
