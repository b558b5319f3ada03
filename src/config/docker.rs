//! The `docker-*` keys: uwsgi-docker's attributes, with their names and syntax, and [`DockerConfig`].
//!
//! Where uwsgi-docker checked nothing, what Docker would reject later (names, hostnames, limits, paths)
//! is checked here, so the error names the file and line instead of arriving from the daemon when the
//! container is created. The container is named after the vassal (uwsgi-docker's rule), and a vassal
//! name Docker refuses is an error that suggests a file name instead of being mapped: a mapping could
//! give two vassals one container name (`a b.ini` and `a-b.ini`), and each would then remove the
//! other's container as stale.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use super::Problem;
use super::keys::{check_no_control, parse_bool, parse_env, parse_host_path, parse_size};
use super::raw::RawEntry;
use super::socket::SUN_PATH_LEN;

/// Docker's smallest memory limit (`linuxMinMemory` in the daemon): 6 MiB.
const DOCKER_MIN_MEMORY: i64 = 6 * 1024 * 1024;

/// Linux `HOST_NAME_MAX`: `sethostname` in the container fails above it.
const HOST_NAME_MAX: usize = 64;

/// The Docker side of a vassal: uwsgi-docker's `docker-*` attributes, checked and converted.
/// Paths on the host are absolute (relative ones are resolved against the vassals dir); paths in
/// the container are checked to be absolute and kept as written.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerConfig {
    /// `docker-image`: a name, `name:tag`, `name@digest` or an id; not pulled, so it must exist. With
    /// `docker-build` it is empty as parsed, and the emperor sets it to the tag it built
    /// (`emperor/<repository>:<hash>`, `docker/build.rs`) before anything starts.
    pub image: String,
    /// `docker-build = <context dir>` (relative to the vassals dir): the image is built by the daemon from
    /// the directory's `Dockerfile` (`emperor/build.rs`). Excludes `docker-image`.
    pub build: Option<PathBuf>,
    /// The vassal name, checked against Docker's `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
    pub container_name: String,
    /// `docker-port = [hostip:]hostport:containerport[/tcp|/udp]`, repeatable (uwsgi-docker's
    /// syntax, plus the protocol suffix and `[v6]` host addresses, as `docker run -p`).
    pub ports: Vec<PortMap>,
    /// `docker-workdir`: absolute path inside the container.
    pub workdir: Option<String>,
    /// `docker-mount = host:container[:ro|rw]`, repeatable (`docker run -v` syntax without
    /// named volumes or other options: a host path without `/` is a path relative to the vassals
    /// dir, not a volume name).
    pub mounts: Vec<Mount>,
    /// `docker-network-mode`: `none`, `host`, `bridge`, `container:<name|id>` or a network name.
    pub network_mode: Option<String>,
    /// `docker-hostname`: RFC 1123 labels, at most 64 bytes in all (Linux `HOST_NAME_MAX`).
    pub hostname: Option<String>,
    /// `docker-proxy = hostpath:containerpath`, or one path used on both sides (uwsgi-docker):
    /// where the emperor proxy socket (uWSGI's emperor proxy, `src/proxy_socket.rs`) is bound on the
    /// host and where the container's uWSGI finds it. Both are socket paths, absolute. The emperor
    /// bind-mounts the host path's *parent directory* at the container path's parent directory,
    /// so everything in that directory is visible to the container: give it a directory of its
    /// own. A parent of `/` is refused on either side for that reason.
    pub proxy: Option<ProxyPaths>,
    /// `docker-env = K=V`, repeatable, same rules as `env`. The container gets
    /// [`VassalConfig::env`] followed by these (later entries win).
    pub env: Vec<(String, String)>,
    /// `docker-user`: `name`, `uid`, `uid:gid` or `name:group`, resolved inside the container
    /// (never on the host).
    pub user: Option<String>,
    /// `docker-memory`: bytes, a plain integer (as uwsgi-docker) or with a binary `k`, `m` or
    /// `g` suffix (as `docker run -m`); at least 6m, Docker's minimum.
    pub memory: Option<i64>,
    /// `docker-swap`: Docker's `MemorySwap`, i.e. memory *plus* swap, same syntax as
    /// `docker-memory`, or `-1` for unlimited swap. Needs `docker-memory` and is at least as large
    /// (Docker rejects both otherwise).
    pub swap: Option<i64>,
    /// `docker-cidfile`: host file the container id is written to.
    pub cidfile: Option<PathBuf>,
    /// `docker-dns`, repeatable: DNS server addresses for the container.
    pub dns: Vec<IpAddr>,
    /// `docker-shim = true|false|1|0|yes|no` (any case; default true): run the emperor's shim as
    /// the container's PID 1.
    pub shim: bool,
}

/// One `docker-port` line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortMap {
    /// `None`: all host addresses.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    /// `"tcp"` (the default) or `"udp"`.
    pub proto: String,
}

/// One `docker-mount` line: a bind mount.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub host: PathBuf,
    pub container: String,
    pub read_only: bool,
}

/// `docker-proxy`: the emperor proxy socket's path on each side.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyPaths {
    pub host: PathBuf,
    pub container: String,
}

/// The Docker keys of one file as they are read: the config so far, and the lines of what may not
/// repeat across lines (a host port, a container path), for the "already ... on line N" messages.
pub(super) struct DockerKeys<'a> {
    config: DockerConfig,
    port_lines: HashMap<(Option<IpAddr>, u16, String), Option<usize>>,
    mount_lines: HashMap<String, Option<usize>>,
    /// Checked against `docker-memory` once every line is read.
    swap_entry: Option<&'a RawEntry>,
    /// The `docker-image` or `docker-build` line read first: the two exclude each other.
    source_line: Option<(&'static str, Option<usize>)>,
}

impl<'a> DockerKeys<'a> {
    pub(super) fn new(name: &str) -> DockerKeys<'a> {
        DockerKeys {
            config: empty_docker(name),
            port_lines: HashMap::new(),
            mount_lines: HashMap::new(),
            swap_entry: None,
            source_line: None,
        }
    }

    /// One `docker-*` line (other than `docker-socket` and `docker-precreate`, which are not about the
    /// container's definition); the value is trimmed and not empty.
    pub(super) fn add(&mut self, entry: &'a RawEntry, vassals_dir: &Path) -> Result<(), String> {
        let d = &mut self.config;
        let value = entry.value.as_str();
        match entry.key.as_str() {
            "docker-image" => self
                .one_source("docker-image", entry.line)
                .and_then(|()| parse_image(value))
                .map(|image| self.config.image = image),
            "docker-build" => self
                .one_source("docker-build", entry.line)
                .and_then(|()| parse_host_path(value, vassals_dir))
                .map(|dir| self.config.build = Some(dir)),
            "docker-port" => parse_port_map(value).and_then(|port| self.add_port(port, entry.line)),
            "docker-workdir" => parse_container_path(value, "working directory").map(|w| d.workdir = Some(w)),
            "docker-mount" => parse_mount(value, vassals_dir).and_then(|mount| self.add_mount(mount, entry.line)),
            "docker-network-mode" => parse_network_mode(value).map(|n| d.network_mode = Some(n)),
            "docker-hostname" => parse_hostname(value).map(|h| d.hostname = Some(h)),
            "docker-proxy" => parse_proxy(value).map(|p| d.proxy = Some(p)),
            "docker-env" => parse_env(value).map(|kv| d.env.push(kv)),
            "docker-user" => parse_docker_user(value).map(|u| d.user = Some(u)),
            "docker-memory" => parse_memory(value).map(|m| d.memory = Some(m)),
            "docker-swap" => parse_swap(value).map(|m| {
                d.swap = Some(m);
                self.swap_entry = Some(entry);
            }),
            "docker-cidfile" => parse_host_path(value, vassals_dir).map(|p| d.cidfile = Some(p)),
            "docker-dns" => value
                .parse::<IpAddr>()
                .map(|ip| d.dns.push(ip))
                .map_err(|_| format!("\"{value}\" is not an ip address")),
            "docker-shim" => parse_bool(value).map(|b| d.shim = b),
            // KNOWN_KEYS lists a key that has no parser: a bug here, reported rather than ignored.
            _ => Err("known key without a parser (emperor bug)".to_owned()),
        }
    }

    /// Where the image comes from is said once: `docker-image` names it, `docker-build` builds it (and names it
    /// `emperor/<repository>:<hash>` itself, so that only what the emperor made is ever pruned).
    fn one_source(&mut self, key: &'static str, line: Option<usize>) -> Result<(), String> {
        match self.source_line {
            Some((other, at)) if other != key => Err(match at {
                Some(n) => format!(
                    "docker-image and docker-build exclude each other ({other} is on line {n}); a built image is \
                     tagged emperor/<vassal>:<hash>"
                ),
                None => format!("docker-image and docker-build exclude each other ({other} is given too)"),
            }),
            _ => {
                self.source_line = Some((key, line));
                Ok(())
            }
        }
    }

    fn add_port(&mut self, port: PortMap, line: Option<usize>) -> Result<(), String> {
        let id = (port.host_ip, port.host_port, port.proto.clone());
        if let Some(first) = self.port_lines.get(&id) {
            let shown = match port.host_ip {
                Some(IpAddr::V6(ip)) => format!("[{ip}]:{}/{}", port.host_port, port.proto),
                Some(ip) => format!("{ip}:{}/{}", port.host_port, port.proto),
                None => format!("{}/{}", port.host_port, port.proto),
            };
            return Err(match first {
                Some(line) => format!("host port {shown} already mapped on line {line}"),
                None => format!("host port {shown} already mapped"),
            });
        }
        self.port_lines.insert(id, line);
        self.config.ports.push(port);
        Ok(())
    }

    fn add_mount(&mut self, mount: Mount, line: Option<usize>) -> Result<(), String> {
        if let Some(first) = self.mount_lines.get(&mount.container) {
            return Err(match first {
                Some(line) => format!("container path {} already mounted on line {line}", mount.container),
                None => format!("container path {} already mounted", mount.container),
            });
        }
        self.mount_lines.insert(mount.container.clone(), line);
        self.config.mounts.push(mount);
        Ok(())
    }

    /// The checks that need every line: the vassal name as a container name (reported on the
    /// `docker-image` line) and `docker-swap` against `docker-memory`. `memory_given`: the file has a
    /// `docker-memory` line, valid or not.
    pub(super) fn finish(
        self,
        name: &str,
        image_entry: &RawEntry,
        memory_given: bool,
        problems: &mut Vec<Problem>,
    ) -> DockerConfig {
        let docker = self.config;
        if let Err(message) = check_container_name(name) {
            problems.push(Problem::for_entry(image_entry, message));
        }
        // An invalid docker-memory has its own problem; comparing with it would only add noise.
        let memory_invalid = docker.memory.is_none() && memory_given;
        if let (Some(swap), Some(swap_entry), false) = (docker.swap, self.swap_entry, memory_invalid) {
            let message = match docker.memory {
                _ if swap == -1 => None,
                None => Some(
                    "needs docker-memory: docker-swap is the limit on memory plus swap (Docker's MemorySwap), \
                     and Docker refuses it without a memory limit"
                        .to_owned(),
                ),
                Some(memory) if swap < memory => Some(format!(
                    "docker-swap is the limit on memory plus swap (Docker's MemorySwap), so it must be at \
                     least docker-memory ({memory} bytes), or -1 for unlimited swap"
                )),
                Some(_) => None,
            };
            if let Some(message) = message {
                problems.push(Problem::for_entry(swap_entry, message));
            }
        }
        docker
    }
}

pub(super) fn empty_docker(name: &str) -> DockerConfig {
    DockerConfig {
        image: String::new(),
        build: None,
        container_name: name.to_owned(),
        ports: Vec::new(),
        workdir: None,
        mounts: Vec::new(),
        network_mode: None,
        hostname: None,
        proxy: None,
        env: Vec::new(),
        user: None,
        memory: None,
        swap: None,
        cidfile: None,
        dns: Vec::new(),
        shim: true,
    }
}

/// Docker's rule for container (and network) names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn is_docker_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The container name is the vassal name; an error suggests a file name Docker would accept.
fn check_container_name(name: &str) -> Result<(), String> {
    if is_docker_name(name) {
        return Ok(());
    }
    let stem = name.strip_suffix(".ini").unwrap_or(name);
    let mapped: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let fixed = mapped.trim_start_matches(['_', '.', '-']);
    let suggested = format!("{}.ini", if fixed.is_empty() { "vassal" } else { fixed });
    Err(format!(
        "the vassal name \"{name}\" is not a valid container name ([a-zA-Z0-9][a-zA-Z0-9_.-]*); \
         rename the file, e.g. \"{suggested}\""
    ))
}

/// An image reference; Docker checks the rest when it looks the image up.
fn parse_image(value: &str) -> Result<String, String> {
    if value.chars().any(char::is_whitespace) {
        return Err("an image name contains no whitespace".to_owned());
    }
    check_no_control(value, "image name")?;
    Ok(value.to_owned())
}

const PORT_SYNTAX: &str = "expected \"hostport:containerport\" or \"hostip:hostport:containerport\" \
                           (containerport optionally followed by /tcp or /udp; an ipv6 hostip in brackets)";

fn parse_port_number(value: &str, what: &str) -> Result<u16, String> {
    if value.is_empty() {
        return Err(format!("{what} is empty; {PORT_SYNTAX}"));
    }
    if value.contains('-') && value.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return Err(format!("{what} \"{value}\": port ranges are not supported"));
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} \"{value}\" is not a port number; {PORT_SYNTAX}"));
    }
    match value.parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        _ => Err(format!("{what} {value} is not from 1 to 65535")),
    }
}

/// `[hostip:]hostport:containerport[/tcp|/udp]`; `hostip` is IPv4 or `[IPv6]`.
fn parse_port_map(value: &str) -> Result<PortMap, String> {
    let (host_ip, rest) = if let Some(after) = value.strip_prefix('[') {
        let Some((ip, rest)) = after.split_once(']') else {
            return Err(PORT_SYNTAX.to_owned());
        };
        let ip: Ipv6Addr = ip.parse().map_err(|_| format!("\"{ip}\" is not an ipv6 address"))?;
        let Some(rest) = rest.strip_prefix(':') else {
            return Err(PORT_SYNTAX.to_owned());
        };
        (Some(IpAddr::V6(ip)), rest)
    } else {
        match value.split(':').count() {
            2 => (None, value),
            3 => {
                let (ip, rest) = value.split_once(':').unwrap_or_default();
                if ip.is_empty() {
                    return Err(format!("host ip is empty; {PORT_SYNTAX}"));
                }
                let ip: Ipv4Addr = ip
                    .parse()
                    .map_err(|_| format!("\"{ip}\" is not an ip address (an ipv6 one needs brackets)"))?;
                (Some(IpAddr::V4(ip)), rest)
            }
            _ => return Err(PORT_SYNTAX.to_owned()),
        }
    };
    let Some((host_port, container)) = rest.split_once(':') else {
        return Err(PORT_SYNTAX.to_owned());
    };
    if container.contains(':') {
        return Err(PORT_SYNTAX.to_owned());
    }
    let (container_port, proto) = match container.split_once('/') {
        Some((port, proto @ ("tcp" | "udp"))) => (port, proto),
        Some((_, proto)) => return Err(format!("protocol \"{proto}\" is not tcp or udp")),
        None => (container, "tcp"),
    };
    Ok(PortMap {
        host_ip,
        host_port: parse_port_number(host_port, "host port")?,
        container_port: parse_port_number(container_port, "container port")?,
        proto: proto.to_owned(),
    })
}

/// A path inside the container: absolute, kept as written.
fn parse_container_path(value: &str, what: &str) -> Result<String, String> {
    check_no_control(value, what)?;
    if !value.starts_with('/') {
        return Err(format!(
            "{what} \"{value}\" must be an absolute path inside the container"
        ));
    }
    Ok(value.to_owned())
}

const MOUNT_SYNTAX: &str = "expected \"hostpath:containerpath\" or \"hostpath:containerpath:ro\" (or :rw)";

/// `host:container[:ro|rw]`, `docker run -v` style.
fn parse_mount(value: &str, vassals_dir: &Path) -> Result<Mount, String> {
    let parts: Vec<&str> = value.split(':').collect();
    let (host, container, read_only) = match parts[..] {
        [host, container] => (host, container, false),
        [host, container, "ro"] => (host, container, true),
        [host, container, "rw"] => (host, container, false),
        [_, _, mode] => return Err(format!("mode \"{mode}\" is not ro or rw; {MOUNT_SYNTAX}")),
        _ => return Err(MOUNT_SYNTAX.to_owned()),
    };
    if host.is_empty() || container.is_empty() {
        return Err(format!("empty path; {MOUNT_SYNTAX}"));
    }
    Ok(Mount {
        host: parse_host_path(host, vassals_dir)?,
        container: parse_container_path(container, "container path")?,
        read_only,
    })
}

/// `none`, `host`, `bridge`, `container:<name|id>` or the name of a network.
fn parse_network_mode(value: &str) -> Result<String, String> {
    if let Some(container) = value.strip_prefix("container:") {
        if !is_docker_name(container) {
            return Err(format!(
                "\"{container}\" is not a container name or id ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"
            ));
        }
    } else if !is_docker_name(value) {
        return Err("expected none, host, bridge, container:<name|id> or a network name \
                    ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"
            .to_owned());
    }
    Ok(value.to_owned())
}

/// RFC 1123 labels joined by dots, within Linux's `HOST_NAME_MAX`.
fn parse_hostname(value: &str) -> Result<String, String> {
    if value.len() > HOST_NAME_MAX {
        return Err(format!(
            "hostname is {} bytes; the limit is {HOST_NAME_MAX} (linux HOST_NAME_MAX)",
            value.len()
        ));
    }
    for label in value.split('.') {
        let valid = (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(format!(
                "\"{label}\" is not a hostname label (rfc 1123: 1 to 63 of a-z A-Z 0-9 -, \
                 not starting or ending with -)"
            ));
        }
    }
    Ok(value.to_owned())
}

/// `hostpath:containerpath`, or one path for both; both absolute socket paths.
fn parse_proxy(value: &str) -> Result<ProxyPaths, String> {
    const SYNTAX: &str = "expected \"hostpath:containerpath\" or one path for both";
    let (host, container) = match value.split_once(':') {
        Some((host, container)) if !container.contains(':') => (host, container),
        Some(_) => return Err(SYNTAX.to_owned()),
        None => (value, value),
    };
    for (side, path) in [("host", host), ("container", container)] {
        if path.is_empty() {
            return Err(format!("{side} path is empty; {SYNTAX}"));
        }
        check_no_control(path, "path")?;
        if !path.starts_with('/') {
            return Err(format!("{side} path \"{path}\" must be absolute"));
        }
        if path.ends_with('/') {
            return Err(format!(
                "{side} path \"{path}\" names a directory; it must name the socket"
            ));
        }
        if path.len() >= SUN_PATH_LEN {
            return Err(format!(
                "{side} path {path} is {} bytes; it must be shorter than {SUN_PATH_LEN} (sun_path)",
                path.len()
            ));
        }
        if Path::new(path).parent() == Some(Path::new("/")) {
            return Err(format!(
                "{side} path \"{path}\" is directly in /: the socket's directory is bind-mounted into the \
                 container, so use a directory of its own, such as /run/emperor/<name>/proxy.sock"
            ));
        }
    }
    Ok(ProxyPaths {
        host: PathBuf::from(host),
        container: container.to_owned(),
    })
}

/// `name`, `uid`, `uid:gid` or `name:group`; resolved in the container, so only the form is checked.
fn parse_docker_user(value: &str) -> Result<String, String> {
    const SYNTAX: &str = "expected \"name\", \"uid\", \"uid:gid\" or \"name:group\"";
    let parts: Vec<&str> = value.split(':').collect();
    if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(SYNTAX.to_owned());
    }
    for part in parts {
        if part.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("\"{part}\" contains whitespace; {SYNTAX}"));
        }
        if part.bytes().all(|b| b.is_ascii_digit()) && part.parse::<u32>().is_err() {
            return Err(format!("id {part} is out of range"));
        }
    }
    Ok(value.to_owned())
}

fn parse_memory(value: &str) -> Result<i64, String> {
    let bytes = parse_size(value)?;
    if bytes < DOCKER_MIN_MEMORY {
        return Err(format!(
            "{bytes} bytes is below Docker's minimum memory limit of 6m ({DOCKER_MIN_MEMORY} bytes)"
        ));
    }
    Ok(bytes)
}

/// A size as for `docker-memory`, or `-1` for unlimited; compared with the memory in `build`.
fn parse_swap(value: &str) -> Result<i64, String> {
    if value == "-1" {
        return Ok(-1);
    }
    parse_size(value).map_err(|e| format!("{e}, or -1 for unlimited"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nix::sys::signal::Signal;

    use super::*;
    use crate::config::tests::{DIR, docker, err, ok, one, parse_as, problems, with_image};
    use crate::config::typed::KNOWN_KEYS;
    use crate::config::{Owner, SocketAddrSpec, SocketSpec};

    #[test]
    fn docker_every_key_valid() {
        let text = "[uwsgi]\nmodule = app\n[emperor]\n\
            docker-image = registry.example:5000/team/app:1.2@sha256:abc\n\
            docker-socket = /run/app.sock\n\
            docker-port = 8080:80\n\
            docker-port = 127.0.0.1:5353:53/udp\n\
            docker-workdir = /srv/app\n\
            docker-mount = /data:/data:ro\n\
            docker-network-mode = none\n\
            docker-hostname = app.example\n\
            docker-proxy = /run/emperor/app/proxy.sock:/run/proxy/proxy.sock\n\
            docker-env = A=1\n\
            docker-user = 1000:1000\n\
            docker-memory = 512m\n\
            docker-swap = 1g\n\
            docker-cidfile = run/app.cid\n\
            docker-dns = 1.1.1.1\n\
            docker-dns = 2606:4700:4700::1111\n\
            docker-shim = no\n\
            exec = /app/server --port 80\n\
            env = B=2\n\
            stop-signal = TERM\n";
        let c = ok(text);
        assert!(c.has_uwsgi_section());
        assert_eq!(c.chdir, None);
        assert_eq!(c.exec, Some(vec!["/app/server".into(), "--port".into(), "80".into()]));
        assert_eq!(
            c.sockets,
            vec!["/run/app.sock".parse().unwrap_or_else(|e| panic!("{e}"))]
        );
        assert_eq!(
            c.docker,
            Some(DockerConfig {
                image: "registry.example:5000/team/app:1.2@sha256:abc".into(),
                build: None,
                container_name: "app.ini".into(),
                ports: vec![
                    PortMap {
                        host_ip: None,
                        host_port: 8080,
                        container_port: 80,
                        proto: "tcp".into()
                    },
                    PortMap {
                        host_ip: Some(Ipv4Addr::LOCALHOST.into()),
                        host_port: 5353,
                        container_port: 53,
                        proto: "udp".into()
                    },
                ],
                workdir: Some("/srv/app".into()),
                mounts: vec![Mount {
                    host: "/data".into(),
                    container: "/data".into(),
                    read_only: true
                }],
                network_mode: Some("none".into()),
                hostname: Some("app.example".into()),
                proxy: Some(ProxyPaths {
                    host: "/run/emperor/app/proxy.sock".into(),
                    container: "/run/proxy/proxy.sock".into()
                }),
                env: vec![("A".into(), "1".into())],
                user: Some("1000:1000".into()),
                memory: Some(512 << 20),
                swap: Some(1 << 30),
                cidfile: Some("/srv/vassals.d/run/app.cid".into()),
                dns: vec![
                    "1.1.1.1".parse().unwrap_or_else(|e| panic!("{e}")),
                    "2606:4700:4700::1111".parse().unwrap_or_else(|e| panic!("{e}")),
                ],
                shim: false,
            })
        );
        assert_eq!(c.env, vec![("B".into(), "2".into())]);
    }

    #[test]
    fn docker_defaults_and_process_vassals() {
        let d = docker(&with_image(""));
        assert_eq!(d, empty_docker("app.ini").tap_image("img"));
        assert!(d.shim);
        // No docker-image: a process vassal, with no container environment.
        let c = ok("[emperor]\nenv = A=1\n");
        assert_eq!(c.docker, None);
        assert!(!c.has_uwsgi_section());
        assert_eq!(ok("[uwsgi]\n").docker, None);
    }

    impl DockerConfig {
        fn tap_image(mut self, image: &str) -> DockerConfig {
            self.image = image.into();
            self
        }
    }

    #[test]
    fn docker_keys_valid_values() {
        type Check = fn(&DockerConfig) -> bool;
        let cases: &[(&str, Check)] = &[
            ("docker-image = busybox:latest", |d| d.image == "busybox:latest"),
            ("docker-workdir = /", |d| d.workdir.as_deref() == Some("/")),
            ("docker-network-mode = host", |d| {
                d.network_mode.as_deref() == Some("host")
            }),
            ("docker-network-mode = bridge", |d| {
                d.network_mode.as_deref() == Some("bridge")
            }),
            ("docker-network-mode = container:db.ini", |d| {
                d.network_mode.as_deref() == Some("container:db.ini")
            }),
            ("docker-network-mode = my_net-1", |d| {
                d.network_mode.as_deref() == Some("my_net-1")
            }),
            ("docker-hostname = web1", |d| d.hostname.as_deref() == Some("web1")),
            ("docker-hostname = 9a-b.c-d.E", |d| {
                d.hostname.as_deref() == Some("9a-b.c-d.E")
            }),
            ("docker-proxy = /run/x/p.sock", |d| {
                d.proxy
                    == Some(ProxyPaths {
                        host: "/run/x/p.sock".into(),
                        container: "/run/x/p.sock".into(),
                    })
            }),
            ("docker-env = K=", |d| d.env == vec![("K".into(), String::new())]),
            ("docker-env = K=a=b", |d| d.env == vec![("K".into(), "a=b".into())]),
            ("docker-user = www-data", |d| d.user.as_deref() == Some("www-data")),
            ("docker-user = 33", |d| d.user.as_deref() == Some("33")),
            ("docker-user = www-data:www-data", |d| {
                d.user.as_deref() == Some("www-data:www-data")
            }),
            ("docker-cidfile = /run/app.cid", |d| {
                d.cidfile == Some("/run/app.cid".into())
            }),
            ("docker-cidfile = ./app.cid", |d| {
                d.cidfile == Some("/srv/vassals.d/app.cid".into())
            }),
            ("docker-dns = ::1", |d| d.dns == vec![IpAddr::from(Ipv6Addr::LOCALHOST)]),
            ("docker-shim = TRUE", |d| d.shim),
            ("docker-shim = 1", |d| d.shim),
            ("docker-shim = yes", |d| d.shim),
            ("docker-shim = false", |d| !d.shim),
            ("docker-shim = 0", |d| !d.shim),
        ];
        for (line, check) in cases {
            let text = if line.starts_with("docker-image") {
                one(line)
            } else {
                with_image(line)
            };
            let d = docker(&text);
            assert!(check(&d), "{line}: {d:?}");
        }
    }

    #[test]
    fn docker_keys_invalid_values() {
        let long_host = format!("docker-hostname = {}", "h".repeat(65));
        let long_label = format!("docker-hostname = {}", "l".repeat(64));
        let cases: &[(&str, &str)] = &[
            ("docker-image = my image", "an image name contains no whitespace"),
            ("docker-image =", "empty value"),
            (
                "docker-workdir = srv/app",
                "working directory \"srv/app\" must be an absolute path inside the container",
            ),
            (
                "docker-network-mode = container:",
                "\"\" is not a container name or id ([a-zA-Z0-9][a-zA-Z0-9_.-]*)",
            ),
            (
                "docker-network-mode = bad:mode",
                "expected none, host, bridge, container:<name|id> or a network name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)",
            ),
            (
                "docker-network-mode = -net",
                "expected none, host, bridge, container:<name|id> or a network name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)",
            ),
            (
                "docker-hostname = -web",
                "\"-web\" is not a hostname label (rfc 1123: 1 to 63 of a-z A-Z 0-9 -, not starting or ending with -)",
            ),
            (
                "docker-hostname = a..b",
                "\"\" is not a hostname label (rfc 1123: 1 to 63 of a-z A-Z 0-9 -, not starting or ending with -)",
            ),
            (
                "docker-hostname = web_1",
                "\"web_1\" is not a hostname label (rfc 1123: 1 to 63 of a-z A-Z 0-9 -, not starting or ending with -)",
            ),
            (
                &long_host,
                "hostname is 65 bytes; the limit is 64 (linux HOST_NAME_MAX)",
            ),
            (
                &long_label,
                "is not a hostname label (rfc 1123: 1 to 63 of a-z A-Z 0-9 -, not starting or ending with -)",
            ),
            ("docker-proxy = run/p.sock", "host path \"run/p.sock\" must be absolute"),
            (
                "docker-proxy = /run/x/p.sock:p.sock",
                "container path \"p.sock\" must be absolute",
            ),
            (
                "docker-proxy = /a/b:/c/d:/e",
                "expected \"hostpath:containerpath\" or one path for both",
            ),
            (
                "docker-proxy = :/c/d",
                "host path is empty; expected \"hostpath:containerpath\" or one path for both",
            ),
            (
                "docker-proxy = /run/x/:/c/d",
                "host path \"/run/x/\" names a directory; it must name the socket",
            ),
            (
                "docker-proxy = /run/x/p.sock:/p.sock",
                "container path \"/p.sock\" is directly in /: the socket's directory is bind-mounted into the \
                 container, so use a directory of its own, such as /run/emperor/<name>/proxy.sock",
            ),
            ("docker-env = NOVALUE", "expected NAME=VALUE"),
            ("docker-env = =x", "variable name is empty"),
            (
                "docker-user = a:b:c",
                "expected \"name\", \"uid\", \"uid:gid\" or \"name:group\"",
            ),
            (
                "docker-user = :100",
                "expected \"name\", \"uid\", \"uid:gid\" or \"name:group\"",
            ),
            (
                "docker-user = a b",
                "\"a b\" contains whitespace; expected \"name\", \"uid\", \"uid:gid\" or \"name:group\"",
            ),
            ("docker-user = 4294967296", "id 4294967296 is out of range"),
            ("docker-dns = 8.8.8", "\"8.8.8\" is not an ip address"),
            ("docker-dns = dns.google", "\"dns.google\" is not an ip address"),
            ("docker-dns = 1.1.1.1:53", "\"1.1.1.1:53\" is not an ip address"),
            ("docker-shim = maybe", "expected true, false, 1, 0, yes or no"),
            ("docker-cidfile =", "empty value"),
        ];
        for (line, message) in cases {
            let text = if line.starts_with("docker-image") {
                one(line)
            } else {
                with_image(line)
            };
            let e = err(&text);
            assert_eq!(e.problems.len(), 1, "{line}: {e}");
            let p = &e.problems[0];
            let key = line.split_once('=').map(|(k, _)| k.trim());
            assert_eq!(
                (p.key.as_deref(), p.line),
                (key, Some(if line.starts_with("docker-image") { 2 } else { 3 })),
                "{line}"
            );
            assert!(p.message.ends_with(message), "{line}: {}", p.message);
        }
    }

    #[test]
    fn docker_ports() {
        let v4 = |s: &str| -> Option<IpAddr> { Some(s.parse().unwrap_or_else(|e| panic!("{e}"))) };
        let cases: &[(&str, Option<IpAddr>, u16, u16, &str)] = &[
            ("9001:3031", None, 9001, 3031, "tcp"),
            ("127.0.0.1:5001:5000", v4("127.0.0.1"), 5001, 5000, "tcp"),
            ("53:53/udp", None, 53, 53, "udp"),
            ("0.0.0.0:8080:80/tcp", v4("0.0.0.0"), 8080, 80, "tcp"),
            ("[::1]:8080:80", v4("::1"), 8080, 80, "tcp"),
            ("[::]:5353:53/udp", v4("::"), 5353, 53, "udp"),
            ("1:65535", None, 1, 65535, "tcp"),
        ];
        for (spec, host_ip, host_port, container_port, proto) in cases {
            let got = parse_port_map(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(
                got,
                PortMap {
                    host_ip: *host_ip,
                    host_port: *host_port,
                    container_port: *container_port,
                    proto: (*proto).into()
                },
                "{spec}"
            );
        }
        let bad: &[(&str, &str)] = &[
            ("8080", PORT_SYNTAX),
            ("a:b:c:d", PORT_SYNTAX),
            ("::1:8080:80", PORT_SYNTAX),
            ("0:80", "host port 0 is not from 1 to 65535"),
            ("80:0", "container port 0 is not from 1 to 65535"),
            ("70000:80", "host port 70000 is not from 1 to 65535"),
            ("http:80", "host port \"http\" is not a port number; "),
            (":80", "host port is empty; "),
            ("127.0.0.1::80", "host port is empty; "),
            (":8080:80", "host ip is empty; "),
            (
                "localhost:8080:80",
                "\"localhost\" is not an ip address (an ipv6 one needs brackets)",
            ),
            ("[nope]:8080:80", "\"nope\" is not an ipv6 address"),
            ("[::1]8080:80", PORT_SYNTAX),
            ("[::1]:8080", PORT_SYNTAX),
            ("80:80/sctp", "protocol \"sctp\" is not tcp or udp"),
            ("80:80/", "protocol \"\" is not tcp or udp"),
            ("8000-8010:80", "host port \"8000-8010\": port ranges are not supported"),
        ];
        for (spec, message) in bad {
            match parse_port_map(spec) {
                Ok(got) => panic!("{spec}: expected an error, got {got:?}"),
                Err(e) => assert!(e.starts_with(message) || e.ends_with(message), "{spec}: {e}"),
            }
        }
        // Through the file: the same host port twice is caught with both lines; the same
        // number on another protocol or address is a different binding.
        let e = err(&with_image(
            "docker-port = 8080:80\ndocker-port = 8080:81\ndocker-port = 8080:80/udp\n\
             docker-port = 127.0.0.1:8080:80\ndocker-port = [::1]:9:9\ndocker-port = [::1]:9:10",
        ));
        assert_eq!(
            problems(&e),
            vec![
                (
                    Some(4),
                    Some("docker-port"),
                    "host port 8080/tcp already mapped on line 3"
                ),
                (
                    Some(8),
                    Some("docker-port"),
                    "host port [::1]:9/tcp already mapped on line 7"
                ),
            ]
        );
    }

    #[test]
    fn docker_mounts() {
        let cases: &[(&str, &str, &str, bool)] = &[
            ("/srv/data:/data", "/srv/data", "/data", false),
            ("/srv/data:/data:ro", "/srv/data", "/data", true),
            ("/srv/data:/data:rw", "/srv/data", "/data", false),
            ("data:/data", "/srv/vassals.d/data", "/data", false),
            ("./shared/x:/x:ro", "/srv/vassals.d/shared/x", "/x", true),
            ("../pty/foo:/pty", "/srv/vassals.d/../pty/foo", "/pty", false),
        ];
        for (spec, host, container, read_only) in cases {
            let got = parse_mount(spec, Path::new(DIR)).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(
                got,
                Mount {
                    host: (*host).into(),
                    container: (*container).into(),
                    read_only: *read_only
                },
                "{spec}"
            );
        }
        let bad: &[(&str, &str)] = &[
            (
                "/srv/data:/data:rx",
                "mode \"rx\" is not ro or rw; expected \"hostpath:containerpath\" or \"hostpath:containerpath:ro\" (or :rw)",
            ),
            ("/srv/data:/data:ro,z", "mode \"ro,z\" is not ro or rw; "),
            (
                "/srv/data",
                "expected \"hostpath:containerpath\" or \"hostpath:containerpath:ro\" (or :rw)",
            ),
            (
                "/a:/b:ro:x",
                "expected \"hostpath:containerpath\" or \"hostpath:containerpath:ro\" (or :rw)",
            ),
            (
                "/srv/data:data",
                "container path \"data\" must be an absolute path inside the container",
            ),
            (
                "/srv/data:./data:ro",
                "container path \"./data\" must be an absolute path inside the container",
            ),
            (":/data", "empty path; expected"),
            ("/srv/data:", "empty path; expected"),
        ];
        for (spec, message) in bad {
            match parse_mount(spec, Path::new(DIR)) {
                Ok(got) => panic!("{spec}: expected an error, got {got:?}"),
                Err(e) => assert!(e.starts_with(message), "{spec}: {e}"),
            }
        }
        let e = err(&with_image("docker-mount = /a:/data\ndocker-mount = /b:/data:ro"));
        assert_eq!(
            problems(&e),
            vec![(
                Some(4),
                Some("docker-mount"),
                "container path /data already mounted on line 3"
            )]
        );
    }

    #[test]
    fn docker_memory_and_swap() {
        let sizes: &[(&str, i64)] = &[
            ("6291456", 6 << 20),
            ("6144k", 6 << 20),
            ("6144K", 6 << 20),
            ("512m", 512 << 20),
            ("512M", 512 << 20),
            ("2g", 2 << 30),
            ("2G", 2 << 30),
            ("536870912", 512 << 20),
        ];
        for (value, bytes) in sizes {
            let d = docker(&with_image(&format!("docker-memory = {value}")));
            assert_eq!(d.memory, Some(*bytes), "{value}");
        }
        let not_a_number = "is not a number of bytes; expected an integer with an optional k, m or g suffix \
                            (binary: 1k = 1024), such as 536870912 or 512m";
        let bad: &[(&str, String)] = &[
            (
                "docker-memory = 6291455",
                "6291455 bytes is below Docker's minimum memory limit of 6m (6291456 bytes)".into(),
            ),
            (
                "docker-memory = 5m",
                "5242880 bytes is below Docker's minimum memory limit of 6m (6291456 bytes)".into(),
            ),
            ("docker-memory = lots", format!("\"lots\" {not_a_number}")),
            ("docker-memory = 512mb", format!("\"512mb\" {not_a_number}")),
            ("docker-memory = 1.5g", format!("\"1.5g\" {not_a_number}")),
            ("docker-memory = -1", format!("\"-1\" {not_a_number}")),
            ("docker-memory = m", format!("\"m\" {not_a_number}")),
            ("docker-memory = 512 m", format!("\"512 m\" {not_a_number}")),
            ("docker-memory = 99999999999g", "99999999999g is too large".into()),
            (
                "docker-memory = 99999999999999999999",
                "99999999999999999999 is too large".into(),
            ),
            ("docker-swap = x", format!("\"x\" {not_a_number}, or -1 for unlimited")),
            (
                "docker-swap = 1g",
                "needs docker-memory: docker-swap is the limit on memory plus swap (Docker's MemorySwap), \
                 and Docker refuses it without a memory limit"
                    .into(),
            ),
        ];
        for (line, message) in bad {
            let e = err(&with_image(line));
            let key = line.split_once(' ').map(|(k, _)| k);
            assert_eq!(problems(&e), vec![(Some(3), key, message.as_str())], "{line}");
        }
        // The message names the file, line, key and value.
        let e = err(&with_image("docker-memory = lots"));
        assert_eq!(
            e.to_string(),
            format!("/srv/vassals.d/app.ini:3: [emperor] docker-memory = \"lots\": \"lots\" {not_a_number}")
        );

        // Swap is memory + swap: below memory is an error on the swap line, wherever it is.
        let e = err(&with_image("docker-swap = 256m\ndocker-memory = 512m"));
        assert_eq!(
            problems(&e),
            vec![(
                Some(3),
                Some("docker-swap"),
                "docker-swap is the limit on memory plus swap (Docker's MemorySwap), so it must be at least \
                 docker-memory (536870912 bytes), or -1 for unlimited swap"
            )]
        );
        let d = docker(&with_image("docker-memory = 512m\ndocker-swap = 512m"));
        assert_eq!((d.memory, d.swap), (Some(512 << 20), Some(512 << 20)));
        let d = docker(&with_image("docker-memory = 512m\ndocker-swap = -1"));
        assert_eq!((d.memory, d.swap), (Some(512 << 20), Some(-1)));
        let d = docker(&with_image("docker-swap = -1"));
        assert_eq!((d.memory, d.swap), (None, Some(-1)));
        // An invalid memory does not add a swap error on top.
        let e = err(&with_image("docker-memory = 1k\ndocker-swap = 1g"));
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(e.problems[0].key.as_deref(), Some("docker-memory"));
    }

    #[test]
    fn docker_build_is_a_docker_vassal_whose_image_is_built() {
        let c = ok("[emperor]\ndocker-build = app\ndocker-network-mode = none\n");
        let d = c.docker.expect("docker-build makes a Docker vassal");
        assert_eq!(d.build, Some(Path::new(DIR).join("app")));
        assert_eq!(d.image, "", "the emperor names the image once it is built");
        assert_eq!(d.network_mode.as_deref(), Some("none"));
        let d = ok("[emperor]\ndocker-build = /srv/app\n").docker.unwrap();
        assert_eq!(d.build.as_deref(), Some(Path::new("/srv/app")));
        // Both, in either order: the second line is the one refused, and it names the first.
        for (text, line, key, other) in [
            (
                "[emperor]\ndocker-image = a\ndocker-build = /b\n",
                3,
                "docker-build",
                "docker-image",
            ),
            (
                "[emperor]\ndocker-build = /b\n\ndocker-image = a\n",
                4,
                "docker-image",
                "docker-build",
            ),
        ] {
            let e = err(text);
            let got = problems(&e);
            assert_eq!(got.len(), 1, "{e}");
            assert_eq!((got[0].0, got[0].1), (Some(line), Some(key)));
            assert!(
                got[0].2.starts_with(&format!(
                    "docker-image and docker-build exclude each other ({other} is on line 2)"
                )),
                "{e}"
            );
        }
        assert_eq!(
            problems(&err("[emperor]\ndocker-build = a\u{1}b\n"))[0].1,
            Some("docker-build")
        );
    }

    #[test]
    fn docker_keys_need_docker_image() {
        let keys = [
            "docker-socket = /run/a.sock",
            "docker-port = 80:80",
            "docker-workdir = /srv",
            "docker-mount = /a:/b",
            "docker-network-mode = none",
            "docker-hostname = h",
            "docker-proxy = /run/x/p.sock",
            "docker-env = A=1",
            "docker-user = 1",
            "docker-memory = 1g",
            "docker-swap = 1g",
            "docker-cidfile = /c",
            "docker-dns = 1.1.1.1",
            "docker-shim = false",
            "docker-precreate = false",
            "docker-memory = bad",
        ];
        let text = format!("[emperor]\nchdir = /srv\n{}\n", keys.join("\n"));
        let e = err(&text);
        let got = problems(&e);
        assert_eq!(got.len(), keys.len(), "{e}");
        for (i, (line, key, message)) in got.into_iter().enumerate() {
            assert_eq!(line, Some(i + 3));
            assert_eq!(key, keys[i].split_once(' ').map(|(k, _)| k));
            let expected = if i == keys.len() - 1 {
                "given twice (first on line 12)"
            } else {
                "needs docker-image or docker-build"
            };
            assert_eq!(message, expected, "{}", keys[i]);
        }
        // Every docker-* key in KNOWN_KEYS except docker-image and docker-build is covered.
        let covered: Vec<&str> = keys.iter().filter_map(|k| k.split_once(' ').map(|(k, _)| k)).collect();
        for key in KNOWN_KEYS
            .iter()
            .filter(|k| k.starts_with("docker-") && !["docker-image", "docker-build"].contains(k))
        {
            assert!(covered.contains(key), "{key}");
        }
    }

    #[test]
    fn docker_invalid_vassal_name() {
        let text = "[emperor]\nlisten = 5\ndocker-image = img\n";
        let cases = [
            ("my app.ini", "my-app.ini"),
            ("_app.ini", "app.ini"),
            ("-.app.ini", "app.ini"),
            ("café.ini", "caf-.ini"),
            ("é.ini", "vassal.ini"),
            ("a:b.ini", "a-b.ini"),
        ];
        for (name, suggested) in cases {
            let e = parse_as(name, text)
                .err()
                .unwrap_or_else(|| panic!("{name}: expected an error"));
            assert_eq!(
                problems(&e),
                vec![(
                    Some(3),
                    Some("docker-image"),
                    format!(
                        "the vassal name \"{name}\" is not a valid container name ([a-zA-Z0-9][a-zA-Z0-9_.-]*); \
                         rename the file, e.g. \"{suggested}\""
                    )
                    .as_str()
                )],
                "{name}"
            );
            // The suggestion is itself valid.
            assert!(is_docker_name(suggested), "{suggested}");
            // A process vassal may have any name.
            assert!(parse_as(name, "[emperor]\nlisten = 5\n").is_ok(), "{name}");
        }
        for name in ["app.ini", "A1.ini", "9_x-y.z.ini"] {
            let c = parse_as(name, text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.docker.map(|d| d.container_name), Some(name.to_owned()));
        }
        // Reported along with the image's own problem.
        let e = parse_as("a b.ini", "[emperor]\ndocker-image = x y\n")
            .err()
            .unwrap_or_else(|| panic!("error"));
        assert_eq!(e.problems.len(), 2, "{e}");
    }

    #[test]
    fn docker_socket_and_socket_keep_file_order() {
        let c = ok(&with_image(
            "socket = /run/a.sock\ndocker-socket = 127.0.0.1:9000\nsocket = name=b,/run/b.sock\n\
             docker-socket = name=c,@c",
        ));
        let got: Vec<String> = c.sockets.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            ["/run/a.sock", "127.0.0.1:9000", "name=b,/run/b.sock", "name=c,@c"]
        );
        // Same syntax, same checks, and one address may not appear under both keys.
        let e = err(&with_image(
            "socket = /run/a.sock\ndocker-socket = run/a.sock\ndocker-socket = /run/a.sock\ndocker-socket = garbage",
        ));
        let got = problems(&e);
        assert_eq!(got.len(), 2, "{e}");
        assert_eq!(
            got[0],
            (
                Some(5),
                Some("docker-socket"),
                "address /run/a.sock already used by the socket on line 3"
            )
        );
        assert_eq!((got[1].0, got[1].1), (Some(6), Some("docker-socket")));
        assert!(got[1].2.starts_with("not a unix socket path"), "{}", got[1].2);
        assert_eq!(
            ok(&with_image("docker-socket = run/a.sock")).sockets[0].addr,
            SocketAddrSpec::Unix("/srv/vassals.d/run/a.sock".into())
        );
    }

    #[test]
    fn docker_vassal_rejects_chdir() {
        let e = err(&with_image("chdir = /srv/app\ndocker-workdir = /srv/app"));
        assert_eq!(
            problems(&e),
            vec![(
                Some(3),
                Some("chdir"),
                "use docker-workdir for a container's working directory"
            )]
        );
        // Even before docker-image, and even if docker-image is itself invalid.
        let e = err("[emperor]\nchdir = /srv\ndocker-image = a b\n");
        assert_eq!(
            problems(&e),
            vec![
                (
                    Some(2),
                    Some("chdir"),
                    "use docker-workdir for a container's working directory"
                ),
                (Some(3), Some("docker-image"), "an image name contains no whitespace"),
            ]
        );
        // The other process keys keep their meaning.
        let c = ok(&with_image(
            "stop-signal = QUIT\nstop-timeout = 3\nchmod-socket = 660\nchown-socket = 0:0\nlisten = 64\nexec = sh -c 'x'",
        ));
        assert_eq!(c.stop_signal, Some(Signal::SIGQUIT));
        assert_eq!(c.stop_timeout, Some(Duration::from_secs(3)));
        assert_eq!((c.chmod_socket, c.listen), (Some(0o660), Some(64)));
        assert_eq!(
            c.chown_socket,
            Some(Owner {
                uid: Some(0),
                gid: Some(0)
            })
        );
        assert_eq!(c.exec, Some(vec!["sh".into(), "-c".into(), "x".into()]));
    }

    #[test]
    fn docker_unknown_and_retired_keys() {
        let cases: &[(&str, &str)] = &[
            ("docker-ports = 80:80", "unknown key; did you mean \"docker-port\"?"),
            ("docker-imge = img", "unknown key; did you mean \"docker-image\"?"),
            ("docker-mounts = /a:/b", "unknown key; did you mean \"docker-mount\"?"),
            (
                "docker-uid = 1000",
                "not supported (an early uwsgi-docker name); use \"docker-user\"",
            ),
            (
                "docker-disable-network = true",
                "not supported (an early uwsgi-docker attribute); use \"docker-network-mode = none\"",
            ),
        ];
        for (line, message) in cases {
            let e = err(&with_image(line));
            assert_eq!(e.problems.len(), 1, "{line}");
            assert_eq!(e.problems[0].message, *message, "{line}");
        }
        let e = err("[emperor]\ndocker-image = a\ndocker-image = b\n");
        assert_eq!(
            problems(&e),
            vec![(Some(3), Some("docker-image"), "given twice (first on line 2)")]
        );
    }

    // The vassal files of unbit/uwsgi-docker's README.md (and the two from its t/Emperor/), as
    // written there.

    /// README "Quickstart": a psgi vassal with two docker-port lines.
    const README_PSGI: &str = "\
; the [emperor] section is parsed ONLY by the Emperor
[emperor]
; use psgi001 as the docker image
docker-image = psgi001
; map host port 9001 to container port 3031/tcp
docker-port = 9001:3031
; map host port 127.0.0.1:5001 to container port 5000/tcp
docker-port = 127.0.0.1:5001:5000

[uwsgi]
psgi = /var/www/app.pl
processes = 4
; in bridged mode the class B network is allocated, so we can simply bind to the first address starting with 172
; so we use the very handy .* trick
socket = 172.*:3031
uid = www-data
gid = www-data
; we are free to bind the stats server to all of the address
; docker will protect it
stats = :5000
";

    /// README "Simplyfing socket management": docker-socket.
    const README_DOCKER_SOCKET: &str = "\
; the [emperor] section is parsed ONLY by the Emperor
[emperor]
; use psgi001 as the docker image
docker-image = psgi001
; bind to address /var/run/example.com.socket
docker-socket = /var/run/example.com.socket

[uwsgi]
psgi = /var/www/app.pl
processes = 4
uid = www-data
gid = www-data
";

    /// README "The Emperor Proxy": docker-proxy (written without spaces around `=`).
    const README_DOCKER_PROXY: &str = "\
; the [emperor] section is parsed ONLY by the Emperor
[emperor]
; use psgi001 as the docker image
docker-image = psgi001
; bind to address /var/run/example.com.socket
docker-socket = /var/run/example.com.socket

docker-proxy=/var/run/foobar.sock:/tmp/foosocket

[uwsgi]
psgi = /var/www/app.pl
processes = 4
uid = www-data
gid = www-data
";

    /// README "Integration with the forkpty router plugin": docker-mount.
    const README_DOCKER_MOUNT: &str = "\
; the [emperor] section is parsed ONLY by the Emperor
[emperor]
; use psgi001 as the docker image
docker-image = psgi001
; bind to address /var/run/example.com.socket
docker-socket = /var/run/example.com.socket

; mount /pty/foo as /foo (ensure it is owned by www-data)
docker-mount = /pty/foo:/pty

[uwsgi]
plugin = path_to/forkptyrouter_plugin.so
psgi = /var/www/app.pl
processes = 4
uid = www-data
gid = www-data
forkpty-router = /pty/socket
forkptyrouter-command = /bin/bash
";

    /// t/Emperor/vassal_with_standard_socket.ini: ports, proxy and mount together.
    const T_STANDARD_SOCKET: &str = "\
; the [emperor] section is parsed ONLY by the Emperor
[emperor]
; use psgi001 as the docker image
docker-image = psgi001
; map host port 9001 to container port 3031/tcp
docker-port = 9001:3031
; map host port 127.0.0.1:5001 to container port 5000/tcp
docker-port = 127.0.0.1:5001:5000
docker-proxy=/tmp/vassal_with_standard_socket.sock:/tmp/vassal_with_standard_socket
; mount /pty/foo as /foo (ensure it is owned by www-data)
docker-mount = /pty/foo:/pty

[uwsgi]
psgi = /var/www/app.pl
processes = 4
socket = :3031
uid = www-data
gid = www-data
stats = :5000
forkpty-router = /pty/socket
forkptyrouter-command = /bin/bash
chmod-socket = 666
";

    #[test]
    fn uwsgi_docker_readme_examples() {
        let psgi001 = |d: DockerConfig| DockerConfig {
            image: "psgi001".into(),
            ..d
        };
        let example_sock = || {
            vec![SocketSpec {
                name: None,
                addr: SocketAddrSpec::Unix("/var/run/example.com.socket".into()),
            }]
        };
        let port = |host_ip: Option<IpAddr>, host_port, container_port| PortMap {
            host_ip,
            host_port,
            container_port,
            proto: "tcp".into(),
        };
        let readme_ports = vec![
            port(None, 9001, 3031),
            port(Some(Ipv4Addr::LOCALHOST.into()), 5001, 5000),
        ];
        let pty_mount = vec![Mount {
            host: "/pty/foo".into(),
            container: "/pty".into(),
            read_only: false,
        }];

        let c = parse_as("psgi.ini", README_PSGI).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.sockets.is_empty() && c.exec.is_none() && c.has_uwsgi_section());
        assert_eq!(
            c.docker,
            Some(psgi001(DockerConfig {
                ports: readme_ports.clone(),
                ..empty_docker("psgi.ini")
            }))
        );

        let c = parse_as("example.com.ini", README_DOCKER_SOCKET).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.sockets, example_sock());
        assert!(c.has_uwsgi_section());
        assert_eq!(c.docker, Some(psgi001(empty_docker("example.com.ini"))));

        let c = parse_as("foobar.ini", README_DOCKER_PROXY).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.sockets, example_sock());
        assert_eq!(
            c.docker,
            Some(psgi001(DockerConfig {
                proxy: Some(ProxyPaths {
                    host: "/var/run/foobar.sock".into(),
                    container: "/tmp/foosocket".into(),
                }),
                ..empty_docker("foobar.ini")
            }))
        );

        let c = parse_as("foo.ini", README_DOCKER_MOUNT).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.sockets, example_sock());
        assert_eq!(
            c.docker,
            Some(psgi001(DockerConfig {
                mounts: pty_mount.clone(),
                ..empty_docker("foo.ini")
            }))
        );

        let c = parse_as("vassal_with_standard_socket.ini", T_STANDARD_SOCKET).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.sockets.is_empty());
        assert_eq!(
            c.docker,
            Some(psgi001(DockerConfig {
                ports: readme_ports,
                mounts: pty_mount,
                proxy: Some(ProxyPaths {
                    host: "/tmp/vassal_with_standard_socket.sock".into(),
                    container: "/tmp/vassal_with_standard_socket".into(),
                }),
                ..empty_docker("vassal_with_standard_socket.ini")
            }))
        );
        // The vassal's own sections (uwsgi's `socket`, `chmod-socket`, ...) are not ours.
        assert_eq!(c.chmod_socket, None);
        assert_eq!(c.text, T_STANDARD_SOCKET);
    }
}
