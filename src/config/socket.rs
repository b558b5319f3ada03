//! `socket =` and `docker-socket =` values: the addresses the emperor binds for a vassal. The types are
//! public (the emperor binds them, the stats show them); parsing is here so `FromStr` and the vassal
//! file agree on one syntax.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::keys::resolve;

/// `sizeof(sockaddr_un.sun_path)` on Linux; a path needs its NUL terminator inside it.
pub(super) const SUN_PATH_LEN: usize = 108;

/// Socket names travel in `LISTEN_FDNAMES`, which systemd limits to 255 bytes per name.
const MAX_SOCKET_NAME_LEN: usize = 255;

/// One `socket =` line: an address and an optional name for `LISTEN_FDNAMES`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SocketSpec {
    pub name: Option<String>,
    pub addr: SocketAddrSpec,
}

/// Where a socket listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SocketAddrSpec {
    /// Filesystem unix socket; absolute after [`parse`] (relative paths are resolved against the
    /// vassals dir), as given when parsed through `FromStr`.
    Unix(PathBuf),
    /// Linux abstract unix socket, the name without the leading `@`.
    Abstract(String),
    /// TCP; `localhost` already resolved to 127.0.0.1 (no DNS, ever).
    Tcp(SocketAddr),
}

impl fmt::Display for SocketAddrSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketAddrSpec::Unix(path) => write!(f, "{}", path.display()),
            SocketAddrSpec::Abstract(name) => write!(f, "@{name}"),
            SocketAddrSpec::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

impl fmt::Display for SocketSpec {
    /// The same syntax `FromStr` accepts: `name=<n>,<addr>` or `<addr>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "name={name},{}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

impl FromStr for SocketSpec {
    type Err = String;

    /// Parses a socket spec without a vassals dir: relative unix paths stay relative.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        parse_socket(spec, None).map_err(|msg| format!("invalid socket \"{}\": {msg}", spec.trim()))
    }
}

pub(super) fn parse_socket(spec: &str, base: Option<&Path>) -> Result<SocketSpec, String> {
    let spec = spec.trim();
    let (name, addr) = match spec.strip_prefix("name=") {
        Some(rest) => match rest.split_once(',') {
            Some((name, addr)) => (Some(check_socket_name(name.trim())?), addr.trim()),
            None => return Err("a named socket is written \"name=<name>,<address>\"".to_owned()),
        },
        None => (None, spec),
    };
    Ok(SocketSpec {
        name,
        addr: parse_socket_addr(addr, base)?,
    })
}

pub(super) fn check_socket_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("socket name is empty".to_owned());
    }
    if name.len() > MAX_SOCKET_NAME_LEN {
        return Err(format!(
            "socket name is {} bytes; the limit is {MAX_SOCKET_NAME_LEN}",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(format!("socket name \"{name}\" may contain only A-Z a-z 0-9 _ . -"));
    }
    Ok(name.to_owned())
}

fn parse_socket_addr(addr: &str, base: Option<&Path>) -> Result<SocketAddrSpec, String> {
    if addr.is_empty() {
        return Err("empty socket address".to_owned());
    }
    if addr.contains('\0') {
        return Err("socket address contains a nul byte".to_owned());
    }
    if let Some(name) = addr.strip_prefix('@') {
        if name.is_empty() {
            return Err("abstract socket name after '@' is empty".to_owned());
        }
        // sun_path holds a leading NUL byte, then the name.
        if name.len() >= SUN_PATH_LEN {
            return Err(format!(
                "abstract socket name is {} bytes; the limit is {} (sun_path)",
                name.len(),
                SUN_PATH_LEN - 1
            ));
        }
        return Ok(SocketAddrSpec::Abstract(name.to_owned()));
    }
    if addr.contains('/') || addr.ends_with(".sock") {
        let path = Path::new(addr);
        let path = match base {
            Some(base) if path.is_relative() => resolve(base, path),
            _ => path.to_path_buf(),
        };
        let len = path.as_os_str().len();
        if len >= SUN_PATH_LEN {
            return Err(format!(
                "unix socket path {} is {len} bytes; it must be shorter than {SUN_PATH_LEN} (sun_path)",
                path.display()
            ));
        }
        return Ok(SocketAddrSpec::Unix(path));
    }
    if addr.contains(':') {
        return parse_tcp(addr).map(SocketAddrSpec::Tcp);
    }
    Err("not a unix socket path (containing '/' or ending in .sock), @abstract name or host:port".to_owned())
}

fn parse_tcp(addr: &str) -> Result<SocketAddr, String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err("expected host:port".to_owned());
    };
    let ip: IpAddr = if host.is_empty() {
        Ipv4Addr::UNSPECIFIED.into()
    } else if host == "localhost" {
        Ipv4Addr::LOCALHOST.into()
    } else if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<Ipv6Addr>()
            .map_err(|_| format!("\"{v6}\" is not an ipv6 address"))?
            .into()
    } else if host.contains(':') || host.contains('[') || host.contains(']') {
        return Err("an ipv6 address needs brackets, as in [::1]:8000".to_owned());
    } else {
        host.parse::<Ipv4Addr>()
            .map_err(|_| format!("\"{host}\" is not an ip address (only localhost is resolved; no dns)"))?
            .into()
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("\"{port}\" is not a port number"));
    }
    let port: u16 = port.parse().map_err(|_| format!("port {port} is above 65535"))?;
    if port == 0 {
        return Err("port 0 is not allowed: the socket must keep its address across restarts".to_owned());
    }
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{DIR, tcp};

    #[test]
    fn socket_specs() {
        let dir = Some(Path::new(DIR));
        let unix = |p: &str| SocketAddrSpec::Unix(PathBuf::from(p));
        let cases: &[(&str, Option<&str>, SocketAddrSpec)] = &[
            ("/run/app.sock", None, unix("/run/app.sock")),
            ("/run/app", None, unix("/run/app")),
            ("app.sock", None, unix("/srv/vassals.d/app.sock")),
            ("./run/app", None, unix("/srv/vassals.d/run/app")),
            ("../run/app.sock", None, unix("/srv/vassals.d/../run/app.sock")),
            ("@abstract", None, SocketAddrSpec::Abstract("abstract".into())),
            ("@with/slash", None, SocketAddrSpec::Abstract("with/slash".into())),
            ("127.0.0.1:8000", None, tcp("127.0.0.1:8000")),
            (":8000", None, tcp("0.0.0.0:8000")),
            ("0.0.0.0:80", None, tcp("0.0.0.0:80")),
            ("localhost:80", None, tcp("127.0.0.1:80")),
            ("[::1]:80", None, tcp("[::1]:80")),
            ("[::]:65535", None, tcp("[::]:65535")),
            ("name=web,:8000", Some("web"), tcp("0.0.0.0:8000")),
            ("name=a.b-c_9,/run/x.sock", Some("a.b-c_9"), unix("/run/x.sock")),
            ("  name=web , /run/x.sock ", Some("web"), unix("/run/x.sock")),
        ];
        for (spec, name, addr) in cases {
            let got = parse_socket(spec, dir).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(
                got,
                SocketSpec {
                    name: name.map(str::to_owned),
                    addr: addr.clone()
                },
                "{spec}"
            );
        }
        // Through FromStr, relative paths stay relative.
        let got: SocketSpec = "app.sock".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.addr, unix("app.sock"));
    }

    #[test]
    fn socket_specs_invalid() {
        let long_path = format!("/{}", "p".repeat(107));
        let ok_path = format!("/{}", "p".repeat(106));
        assert!(parse_socket(&ok_path, None).is_ok());
        let long_name = format!("name={},/x.sock", "n".repeat(256));
        let long_abstract = format!("@{}", "a".repeat(108));
        let long_relative = format!("{}.sock", "r".repeat(90)); // fits alone, not after the dir
        let cases: &[(&str, &str)] = &[
            (
                "garbage",
                "not a unix socket path (containing '/' or ending in .sock), @abstract name or host:port",
            ),
            ("", "empty socket address"),
            ("@", "abstract socket name after '@' is empty"),
            (
                &long_abstract,
                "abstract socket name is 108 bytes; the limit is 107 (sun_path)",
            ),
            (&long_path, "is 108 bytes; it must be shorter than 108 (sun_path)"),
            (&long_relative, "is 110 bytes; it must be shorter than 108 (sun_path)"),
            (
                "127.0.0.1:0",
                "port 0 is not allowed: the socket must keep its address across restarts",
            ),
            (
                ":0",
                "port 0 is not allowed: the socket must keep its address across restarts",
            ),
            ("127.0.0.1:99999", "port 99999 is above 65535"),
            ("127.0.0.1:http", "\"http\" is not a port number"),
            ("127.0.0.1:", "\"\" is not a port number"),
            (
                "example.com:80",
                "\"example.com\" is not an ip address (only localhost is resolved; no dns)",
            ),
            ("::1:80", "an ipv6 address needs brackets, as in [::1]:8000"),
            ("[nope]:80", "\"nope\" is not an ipv6 address"),
            ("[::1]", "an ipv6 address needs brackets, as in [::1]:8000"),
            ("name=,/x.sock", "socket name is empty"),
            (
                "name=a:b,/x.sock",
                "socket name \"a:b\" may contain only A-Z a-z 0-9 _ . -",
            ),
            ("name=web", "a named socket is written \"name=<name>,<address>\""),
            (&long_name, "socket name is 256 bytes; the limit is 255"),
        ];
        for (spec, message) in cases {
            match parse_socket(spec, Some(Path::new(DIR))) {
                Ok(got) => panic!("{spec}: expected an error, got {got:?}"),
                Err(e) => assert!(e.ends_with(message), "{spec}: {e}"),
            }
        }
        // FromStr names the spec.
        let e = "garbage".parse::<SocketSpec>().err().unwrap_or_default();
        assert!(e.starts_with("invalid socket \"garbage\": "), "{e}");
    }

    #[test]
    fn socket_display_round_trips() {
        for spec in [
            "/run/a.sock",
            "@abs",
            "127.0.0.1:80",
            "[::1]:80",
            "name=web,0.0.0.0:8000",
        ] {
            let parsed: SocketSpec = spec.parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed.to_string(), spec);
        }
    }
}
