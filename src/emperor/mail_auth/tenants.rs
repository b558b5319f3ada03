//! Which vassal and socket a mail login goes to: the pure half of `--mail-auth`, rebuilt by the main
//! loop whenever the vassals' routes change and read by every request.
//!
//! A login `user@domain` (or, for SMTP without `AUTH`, the first recipient's address) selects the
//! vassal whose `domains`/`domain` lines claim `domain`, exactly as the nginx map would send a request
//! with `Host: domain` (`routes.rs`: exact names before wildcards, the longest wildcard first, a name
//! two vassals claim kept by the first in name order). Within that vassal the socket is the one named
//! after the protocol (`smtp`, `imap`, `pop3`), else the route's own target (its `socket=`, else the
//! vassal's first socket). nginx's mail proxy connects to an IP address and a port only, so that
//! socket must be a TCP one; a socket bound to every address is answered as loopback.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{SocketAddrSpec, VassalConfig};
use crate::emperor::routes::{Resolved, reachable};

/// The mail protocols nginx proxies, as its `Auth-Protocol` header names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Smtp,
    Imap,
    Pop3,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Smtp, Protocol::Imap, Protocol::Pop3];

    /// `Auth-Protocol`'s value; also the name of the socket that serves it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
        }
    }

    pub fn parse(s: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.name().eq_ignore_ascii_case(s))
    }
}

/// What a domain leads to: a vassal, the socket of its route, and its sockets named after a protocol.
#[derive(Debug, PartialEq, Eq)]
struct Tenant {
    vassal: String,
    route_target: SocketAddrSpec,
    /// By [`Protocol::ALL`]'s order.
    by_protocol: [Option<SocketAddrSpec>; 3],
}

/// Every domain a vassal keeps, as exact names and as wildcard suffixes (`*.a.b` is kept under
/// `a.b`; `.a.b` under both).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tenants {
    exact: HashMap<String, Arc<Tenant>>,
    wild: HashMap<String, Arc<Tenant>>,
}

/// Where a login goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Found<'a> {
    pub vassal: &'a str,
    /// What nginx connects to.
    pub server: SocketAddr,
}

/// Why a login goes nowhere.
#[derive(Debug, PartialEq, Eq)]
pub enum Miss<'a> {
    /// The address has no `@domain` part.
    NoDomain,
    /// No vassal claims the domain.
    Unknown(String),
    /// The vassal's socket for it is a unix one, which nginx's mail proxy cannot connect to.
    NotTcp {
        vassal: &'a str,
        socket: &'a SocketAddrSpec,
    },
}

impl Tenants {
    /// From each vassal's latest valid config, with the names two vassals claim settled as the nginx
    /// map settles them.
    pub fn new(good: &BTreeMap<String, Arc<VassalConfig>>) -> Tenants {
        Tenants::from_resolved(&Resolved::of(good), good)
    }

    /// From the vassals' routes as `resolved` settled them, and their configs (for sockets named after
    /// a protocol).
    pub fn from_resolved(resolved: &Resolved, good: &BTreeMap<String, Arc<VassalConfig>>) -> Tenants {
        let mut tenants = Tenants::default();
        // One tenant per (vassal, route target), shared by its names.
        let mut made: Vec<Arc<Tenant>> = Vec::new();
        for kept in resolved.kept() {
            let Some(config) = good.get(kept.vassal) else { continue };
            let tenant = match made
                .iter()
                .find(|t| t.vassal == kept.vassal && t.route_target == *kept.target)
            {
                Some(t) => t.clone(),
                None => {
                    let named = |p: Protocol| {
                        config
                            .sockets
                            .iter()
                            .find(|s| s.name.as_deref() == Some(p.name()))
                            .map(|s| s.addr.clone())
                    };
                    let t = Arc::new(Tenant {
                        vassal: kept.vassal.to_owned(),
                        route_target: kept.target.clone(),
                        by_protocol: Protocol::ALL.map(named),
                    });
                    made.push(t.clone());
                    t
                }
            };
            let (exact, wild) = crate::config::claims(kept.key);
            if let Some(name) = exact {
                tenants.exact.insert(name.to_owned(), tenant.clone());
            }
            if let Some(suffix) = wild {
                tenants.wild.insert(suffix.to_owned(), tenant);
            }
        }
        tenants
    }

    /// Where the mail of `address` (`user@domain`) goes for `protocol`.
    pub fn find(&self, address: &str, protocol: Protocol) -> Result<Found<'_>, Miss<'_>> {
        let domain = domain_of(address).ok_or(Miss::NoDomain)?;
        let tenant = self.tenant(&domain).ok_or(Miss::Unknown(domain))?;
        let socket = tenant.by_protocol[protocol as usize]
            .as_ref()
            .unwrap_or(&tenant.route_target);
        match socket {
            SocketAddrSpec::Tcp(addr) => Ok(Found {
                vassal: &tenant.vassal,
                server: reachable(*addr),
            }),
            other => Err(Miss::NotTcp {
                vassal: &tenant.vassal,
                socket: other,
            }),
        }
    }

    /// nginx's `hostnames` rule: the exact name, else the longest wildcard suffix.
    fn tenant(&self, domain: &str) -> Option<&Tenant> {
        if let Some(t) = self.exact.get(domain) {
            return Some(t);
        }
        domain
            .match_indices('.')
            .find_map(|(i, _)| self.wild.get(&domain[i + 1..]))
            .map(Arc::as_ref)
    }
}

/// The domain of `user@domain` as routes hold it: lowercase, one trailing dot dropped. The last `@`
/// counts (a quoted local part may hold one). `None` without a domain, or with one that cannot be a
/// host name at all (too long, spaces), so that nothing odd is ever looked up or logged as a domain.
pub fn domain_of(address: &str) -> Option<String> {
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    let plausible = !domain.is_empty()
        && domain.len() <= 253
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    plausible.then(|| domain.to_ascii_lowercase())
}

/// The address in an SMTP command line as nginx passes it (`Auth-SMTP-To: RCPT TO:<a@b.example>`,
/// with any parameters after it): the part between `<` and `>`, else the first word after the `:`.
pub fn smtp_address(line: &str) -> Option<&str> {
    let (_, rest) = line.split_once(':')?;
    let rest = rest.trim_start();
    let address = match rest.strip_prefix('<') {
        Some(inner) => inner.split_once('>')?.0,
        None => rest.split_whitespace().next()?,
    };
    (!address.is_empty()).then_some(address)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn good(files: &[(&str, &str)]) -> BTreeMap<String, Arc<VassalConfig>> {
        files
            .iter()
            .map(|(name, body)| {
                let text = format!("[emperor]\nexec = /bin/true\n{body}");
                let cfg = crate::config::parse(name, &Path::new("/v").join(name), &text, Path::new("/v"))
                    .unwrap_or_else(|e| panic!("{e}"));
                (name.to_string(), Arc::new(cfg))
            })
            .collect()
    }

    #[test]
    fn a_login_goes_to_the_socket_named_after_its_protocol_else_the_route_target() {
        let t = Tenants::new(&good(&[
            (
                "foo.ini",
                "socket = name=web,/run/foo.sock\nsocket = name=smtp,127.0.0.1:2525\n\
                 socket = name=imap,0.0.0.0:1143\ndomains = foo.test\n",
            ),
            ("bar.ini", "socket = :2526\ndomain = bar.test\n"),
            (
                "mx.ini",
                "socket = name=web,127.0.0.1:8080\nsocket = name=in,127.0.0.1:25\ndomain = mx.test socket=in\n",
            ),
        ]));
        use Protocol::{Imap, Pop3, Smtp};
        let cases = [
            ("foo@foo.test", Smtp, "foo.ini 127.0.0.1:2525"),
            // Bound to every address: reached on loopback.
            ("foo@foo.test", Imap, "foo.ini 127.0.0.1:1143"),
            // No pop3 socket: the route's target, the unix socket, which nginx cannot reach.
            (
                "foo@foo.test",
                Pop3,
                "NotTcp { vassal: \"foo.ini\", socket: Unix(\"/run/foo.sock\") }",
            ),
            ("bar@bar.test", Smtp, "bar.ini 127.0.0.1:2526"),
            ("bar@bar.test", Pop3, "bar.ini 127.0.0.1:2526"),
            ("x@mx.test", Smtp, "mx.ini 127.0.0.1:25"),
            // Case and a trailing dot do not matter; the last @ counts.
            ("\"a@b\"@BAR.Test.", Smtp, "bar.ini 127.0.0.1:2526"),
            ("bar", Smtp, "NoDomain"),
            ("bar@", Smtp, "NoDomain"),
            ("a@b c.test", Smtp, "NoDomain"),
            ("a@baz.test", Smtp, "Unknown(\"baz.test\")"),
        ];
        for (address, protocol, expected) in cases {
            let found = match t.find(address, protocol) {
                Ok(f) => format!("{} {}", f.vassal, f.server),
                Err(miss) => format!("{miss:?}"),
            };
            assert_eq!(found, expected, "{address} over {protocol:?}");
        }
    }

    #[test]
    fn wildcards_and_conflicts_as_the_nginx_map_has_them() {
        let t = Tenants::new(&good(&[
            (
                "a.ini",
                "socket = 127.0.0.1:1001\ndomains = *.example .b.example shared.example\n",
            ),
            (
                "b.ini",
                "socket = 127.0.0.1:1002\ndomains = b.example x.b.example shared.example\n",
            ),
            ("c.ini", "socket = 127.0.0.1:1003\ndomains = c.b.example\n"),
        ]));
        let vassal = |address: &str| t.find(address, Protocol::Smtp).map(|f| f.vassal.to_owned()).ok();
        // a.ini is first in name order: it keeps shared.example and b.example; b.ini keeps its x.b.example.
        assert_eq!(vassal("u@shared.example").as_deref(), Some("a.ini"));
        assert_eq!(vassal("u@b.example").as_deref(), Some("a.ini"));
        assert_eq!(vassal("u@x.b.example").as_deref(), Some("b.ini"));
        // Exact beats wildcard; the longest wildcard wins.
        assert_eq!(vassal("u@c.b.example").as_deref(), Some("c.ini"));
        assert_eq!(vassal("u@y.b.example").as_deref(), Some("a.ini"));
        assert_eq!(vassal("u@z.y.example").as_deref(), Some("a.ini"));
        // `*.example` is not `example`.
        assert_eq!(vassal("u@example"), None);
    }

    #[test]
    fn a_vassal_without_routes_gets_no_mail() {
        let t = Tenants::new(&good(&[("a.ini", "socket = name=smtp,127.0.0.1:25\n")]));
        assert_eq!(t, Tenants::default());
    }

    #[test]
    fn smtp_addresses_as_nginx_passes_them() {
        assert_eq!(smtp_address("rcpt TO:<a@b.test>"), Some("a@b.test"));
        assert_eq!(smtp_address("RCPT TO: <a@b.test> NOTIFY=NEVER"), Some("a@b.test"));
        assert_eq!(smtp_address("RCPT TO:a@b.test"), Some("a@b.test"));
        assert_eq!(smtp_address("RCPT TO:<>"), None);
        assert_eq!(smtp_address("RCPT TO:<a@b.test"), None);
        assert_eq!(smtp_address("RCPT"), None);
        assert_eq!(smtp_address(""), None);
    }

    #[test]
    fn protocols() {
        assert_eq!(Protocol::parse("SMTP"), Some(Protocol::Smtp));
        assert_eq!(Protocol::parse("pop3"), Some(Protocol::Pop3));
        assert_eq!(Protocol::parse("imap"), Some(Protocol::Imap));
        assert_eq!(Protocol::parse("http"), None);
    }
}
