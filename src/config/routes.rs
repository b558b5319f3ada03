//! `domains` and `domain`: the Host names nginx routes to a vassal ([`Route`]), checked per vassal.
//!
//! What nginx would refuse is refused here, with the line: two hosts of one vassal that claim the same
//! name ("conflicting parameter" in its `hostnames` map), and a route to an abstract unix socket (nginx
//! 1.22 takes `unix:@name` for a file name). The same host in two vassals is not an error here, since
//! each file is valid on its own: `emperor/routes.rs` resolves it across vassals.

use super::raw::RawEntry;
use super::socket::check_socket_name;
use super::{Problem, SocketAddrSpec, SocketSpec};

/// Longest DNS name (RFC 1035, without the trailing dot).
const MAX_HOST_LEN: usize = 253;

/// One Host route: requests whose `Host` matches `host` go to the vassal's socket `socket`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    /// A lowercase DNS name (`a.example`), a wildcard (`*.example`: every name below it) or
    /// nginx's suffix form (`.example`: `example` and every name below it). No port, no
    /// trailing dot.
    pub host: String,
    /// `socket=<name>`: a named socket of the vassal; `None`: its first socket.
    pub socket: Option<String>,
}

impl Route {
    /// What the host claims in an nginx `hostnames` map, as (exact name, wildcard suffix): `a.b`
    /// claims the exact name `a.b`, `*.a.b` the names below `a.b`, `.a.b` both. Two hosts conflict
    /// when they claim the same thing (nginx refuses such a map: "conflicting parameter").
    pub fn claims(&self) -> (Option<&str>, Option<&str>) {
        claims(&self.host)
    }

    /// True if the two hosts claim a name in common (see [`Route::claims`]).
    pub fn overlaps(&self, other: &Route) -> bool {
        let (a_exact, a_wild) = self.claims();
        let (b_exact, b_wild) = other.claims();
        (a_exact.is_some() && a_exact == b_exact) || (a_wild.is_some() && a_wild == b_wild)
    }
}

/// What a checked host claims in an nginx `hostnames` map, as (exact name, wildcard suffix); see
/// [`Route::claims`].
pub fn claims(host: &str) -> (Option<&str>, Option<&str>) {
    if let Some(base) = host.strip_prefix("*.") {
        (None, Some(base))
    } else if let Some(base) = host.strip_prefix('.') {
        (Some(base), Some(base))
    } else {
        (Some(host), None)
    }
}

/// The routes of one file as they are read, each with the line it came from (for the checks that
/// need every socket first).
#[derive(Default)]
pub(super) struct RouteKeys<'a> {
    routes: Vec<Route>,
    entries: Vec<&'a RawEntry>,
}

impl<'a> RouteKeys<'a> {
    /// `domains = <host> <host> ...`: one problem per bad host, all on this line.
    pub(super) fn add_hosts(&mut self, entry: &'a RawEntry, problems: &mut Vec<Problem>) {
        for host in entry.value.split_whitespace() {
            if let Err(message) = parse_host(host).and_then(|host| self.add(entry, Route { host, socket: None })) {
                problems.push(Problem::for_entry(entry, message));
            }
        }
    }

    /// `domain = <host> [socket=<name>]`.
    pub(super) fn add_domain(&mut self, entry: &'a RawEntry) -> Result<(), String> {
        parse_domain(&entry.value).and_then(|route| self.add(entry, route))
    }

    /// Adds a route unless its host overlaps one already declared by the vassal (nginx would refuse
    /// the map).
    fn add(&mut self, entry: &'a RawEntry, route: Route) -> Result<(), String> {
        let (routes, entries) = (&mut self.routes, &mut self.entries);
        if let Some(i) = routes.iter().position(|r| r.overlaps(&route)) {
            let (first, line) = (&routes[i].host, entries[i].line);
            let same = if *first == route.host {
                format!("host {} is already routed", route.host)
            } else {
                format!(
                    "host {} overlaps {first} (nginx matches {} through both)",
                    route.host,
                    overlap_example(&routes[i], &route)
                )
            };
            return Err(match line {
                Some(line) => format!("{same} on line {line}"),
                None => same,
            });
        }
        routes.push(route);
        entries.push(entry);
        Ok(())
    }

    /// Every route needs a socket to go to: the named one, or the first. nginx cannot connect to an
    /// abstract unix socket (1.22 takes `unix:@name` as a file name), so one is refused as a target.
    pub(super) fn check_targets(&self, sockets: &[SocketSpec], problems: &mut Vec<Problem>) {
        let mut reported: Vec<Option<usize>> = Vec::new();
        let mut report = |entry: &RawEntry, message: String, problems: &mut Vec<Problem>| {
            // One problem per line, even for a domains line with several hosts.
            if !reported.contains(&entry.line) || entry.line.is_none() {
                reported.push(entry.line);
                problems.push(Problem::for_entry(entry, message));
            }
        };
        for (route, entry) in self.routes.iter().zip(&self.entries) {
            let target = match &route.socket {
                None => match sockets.first() {
                    Some(first) => first,
                    None => {
                        report(
                            entry,
                            "needs a socket: requests for the host go to the vassal's first socket \
                             (or the one named with socket=), and it has none"
                                .to_owned(),
                            problems,
                        );
                        continue;
                    }
                },
                Some(name) => match sockets.iter().find(|s| s.name.as_deref() == Some(name)) {
                    Some(spec) => spec,
                    None => {
                        let named: Vec<&str> = sockets.iter().filter_map(|s| s.name.as_deref()).collect();
                        let known = if named.is_empty() {
                            "it has no named socket (socket = name=<name>,<address>)".to_owned()
                        } else {
                            format!("its named sockets: {}", named.join(", "))
                        };
                        report(
                            entry,
                            format!("the vassal has no socket named \"{name}\"; {known}"),
                            problems,
                        );
                        continue;
                    }
                },
            };
            if let SocketAddrSpec::Abstract(_) = target.addr {
                report(
                    entry,
                    format!(
                        "routes to the abstract socket {}, which nginx cannot connect to; route to a socket \
                         with a path or host:port (domain = <host> socket=<name>)",
                        target.addr
                    ),
                    problems,
                );
            }
        }
    }

    pub(super) fn into_routes(self) -> Vec<Route> {
        self.routes
    }
}

/// A Host for nginx's `hostnames` map: a DNS name, `*.name` or `.name`, lowercased, one trailing
/// dot dropped. Labels are RFC 1123 (`a-z 0-9 -`, 1 to 63, not starting or ending with `-`) plus
/// `_`, which real names use (`_acme-challenge`) and nginx matches like any other character.
/// Also checks the domains that other hosts publish to `emperor front`.
pub fn parse_host(value: &str) -> Result<String, String> {
    let host = value.to_ascii_lowercase();
    if host.contains(':') || host.contains('[') {
        return Err(format!(
            "\"{value}\" has a port or is an ipv6 address: a route matches nginx's $host, which is the \
             name alone (no port); write the name"
        ));
    }
    if host.contains('/') {
        return Err(format!("\"{value}\" is a url or path; write the host name alone"));
    }
    let (prefix, name) = if let Some(rest) = host.strip_prefix("*.") {
        ("*.", rest)
    } else if let Some(rest) = host.strip_prefix('.') {
        (".", rest)
    } else {
        ("", host.as_str())
    };
    if name.contains('*') {
        return Err(format!(
            "\"{value}\": a wildcard is only allowed as a leading \"*.\" (as in *.example.com)"
        ));
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(format!("\"{value}\" has no name after \"{prefix}\""));
    }
    if name.len() > MAX_HOST_LEN {
        return Err(format!(
            "\"{value}\" is {} bytes; a dns name has at most {MAX_HOST_LEN}",
            name.len()
        ));
    }
    for label in name.split('.') {
        let valid = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(format!(
                "\"{value}\" is not a host name: \"{label}\" is not a dns label (1 to 63 of a-z 0-9 - _, \
                 not starting or ending with -)"
            ));
        }
    }
    Ok(format!("{prefix}{name}"))
}

/// `domain = <host> [socket=<name>]`.
fn parse_domain(value: &str) -> Result<Route, String> {
    const SYNTAX: &str = "expected \"<host>\" or \"<host> socket=<name>\"";
    let mut words = value.split_whitespace();
    let host = parse_host(words.next().unwrap_or_default())?;
    let mut socket = None;
    for word in words {
        match word.split_once('=') {
            Some(("socket", name)) if socket.is_none() => socket = Some(check_socket_name(name)?),
            Some(("socket", _)) => return Err(format!("socket= given twice; {SYNTAX}")),
            Some((option, _)) => return Err(format!("unknown option \"{option}\"; {SYNTAX}")),
            None => {
                return Err(format!(
                    "\"{word}\": one host per domain line (use domains = for several); {SYNTAX}"
                ));
            }
        }
    }
    Ok(Route { host, socket })
}

/// A name two overlapping hosts both claim, for the message.
fn overlap_example(a: &Route, b: &Route) -> String {
    let (a_exact, a_wild) = a.claims();
    let (b_exact, b_wild) = b.claims();
    match (
        a_exact.filter(|e| Some(*e) == b_exact),
        a_wild.filter(|w| Some(*w) == b_wild),
    ) {
        (Some(exact), _) => exact.to_owned(),
        (None, Some(wild)) => format!("*.{wild}"),
        (None, None) => a.host.clone(),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{err, ok, problems, route, with_image};

    #[test]
    fn routes_from_domains_and_domain() {
        let c = ok("[emperor]\n\
            socket = /run/a.sock\n\
            socket = name=admin,127.0.0.1:9001\n\
            domains = Shop.Example  www.shop.example\tapi.shop.example.\n\
            domain = *.Apps.Example\n\
            domain = admin.shop.example socket=admin\n\
            domains = .static.example _acme.x-1.example localhost\n");
        assert_eq!(
            c.routes,
            vec![
                route("shop.example", None),
                route("www.shop.example", None),
                route("api.shop.example", None),
                route("*.apps.example", None),
                route("admin.shop.example", Some("admin")),
                route(".static.example", None),
                route("_acme.x-1.example", None),
                route("localhost", None),
            ]
        );
        // A named socket may also be the first one.
        let c = ok("[emperor]\nsocket = name=web,/run/w.sock\ndomain = a.example socket=web\ndomain = b.example\n");
        assert_eq!(
            c.routes,
            vec![route("a.example", Some("web")), route("b.example", None)]
        );
    }

    #[test]
    fn routes_invalid() {
        let base = "[emperor]\nsocket = /run/a.sock\nsocket = name=admin,/run/admin.sock\nsocket = name=abs,@abs\n";
        let cases: &[(&str, &str, &str)] = &[
            (
                "domains = a.example:8080",
                "domains",
                "\"a.example:8080\" has a port or is an ipv6 address: a route matches nginx's $host, which is \
                 the name alone (no port); write the name",
            ),
            (
                "domain = [::1]",
                "domain",
                "\"[::1]\" has a port or is an ipv6 address: a route matches nginx's $host, which is the name \
                 alone (no port); write the name",
            ),
            (
                "domain = http://a.example/",
                "domain",
                "\"http://a.example/\" has a port or is an ipv6 address: a route matches nginx's $host, which \
                 is the name alone (no port); write the name",
            ),
            (
                "domain = a.example/x",
                "domain",
                "\"a.example/x\" is a url or path; write the host name alone",
            ),
            (
                "domain = www.*.example",
                "domain",
                "\"www.*.example\": a wildcard is only allowed as a leading \"*.\" (as in *.example.com)",
            ),
            (
                "domain = example.*",
                "domain",
                "\"example.*\": a wildcard is only allowed as a leading \"*.\" (as in *.example.com)",
            ),
            ("domain = *.", "domain", "\"*.\" has no name after \"*.\""),
            ("domain = .", "domain", "\".\" has no name after \".\""),
            (
                "domain = a..example",
                "domain",
                "\"a..example\" is not a host name: \"\" is not a dns label (1 to 63 of a-z 0-9 - _, not \
                 starting or ending with -)",
            ),
            (
                "domain = -a.example",
                "domain",
                "\"-a.example\" is not a host name: \"-a\" is not a dns label (1 to 63 of a-z 0-9 - _, not \
                 starting or ending with -)",
            ),
            (
                "domain = a.example b.example",
                "domain",
                "\"b.example\": one host per domain line (use domains = for several); expected \"<host>\" or \
                 \"<host> socket=<name>\"",
            ),
            (
                "domain = a.example weight=2",
                "domain",
                "unknown option \"weight\"; expected \"<host>\" or \"<host> socket=<name>\"",
            ),
            (
                "domain = a.example socket=admin socket=admin",
                "domain",
                "socket= given twice; expected \"<host>\" or \"<host> socket=<name>\"",
            ),
            ("domain = a.example socket=", "domain", "socket name is empty"),
            (
                "domain = a.example socket=nope",
                "domain",
                "the vassal has no socket named \"nope\"; its named sockets: admin, abs",
            ),
            (
                "domain = a.example socket=abs",
                "domain",
                "routes to the abstract socket @abs, which nginx cannot connect to; route to a socket with a \
                 path or host:port (domain = <host> socket=<name>)",
            ),
        ];
        for (line, key, message) in cases {
            let e = err(&format!("{base}{line}\n"));
            assert_eq!(problems(&e), vec![(Some(5), Some(*key), *message)], "{line}");
        }
        let long = format!("{}.example", "a".repeat(64));
        let e = err(&format!("{base}domain = {long}\n"));
        assert!(e.problems[0].message.contains("is not a dns label"), "{e}");
        let huge = vec!["a".repeat(60); 5].join(".");
        let e = err(&format!("{base}domain = {huge}\n"));
        assert_eq!(
            e.problems[0].message,
            format!("\"{huge}\" is {} bytes; a dns name has at most 253", huge.len())
        );
    }

    #[test]
    fn routes_same_host_twice_in_one_vassal() {
        let e = err("[emperor]\nsocket = /run/a.sock\ndomains = a.example B.example\n\
                     domain = b.example\ndomains = c.example A.EXAMPLE.\n");
        assert_eq!(
            problems(&e),
            vec![
                (Some(4), Some("domain"), "host b.example is already routed on line 3"),
                (Some(5), Some("domains"), "host a.example is already routed on line 3"),
            ]
        );
        // Overlaps nginx would refuse in one map: .x claims x and *.x.
        let e = err("[emperor]\nsocket = /run/a.sock\ndomains = .x.example\ndomains = x.example *.x.example\n");
        assert_eq!(
            problems(&e),
            vec![
                (
                    Some(4),
                    Some("domains"),
                    "host x.example overlaps .x.example (nginx matches x.example through both) on line 3"
                ),
                (
                    Some(4),
                    Some("domains"),
                    "host *.x.example overlaps .x.example (nginx matches *.x.example through both) on line 3"
                ),
            ]
        );
        // A wildcard and the exact name do not overlap.
        let c = ok("[emperor]\nsocket = /run/a.sock\ndomains = x.example *.x.example\n");
        assert_eq!(c.routes.len(), 2);
    }

    #[test]
    fn routes_need_a_socket() {
        let e = err("[emperor]\ndomains = a.example b.example\ndomain = c.example\n");
        let needs = "needs a socket: requests for the host go to the vassal's first socket (or the one named \
                     with socket=), and it has none";
        assert_eq!(
            problems(&e),
            vec![(Some(2), Some("domains"), needs), (Some(3), Some("domain"), needs)]
        );
        // The socket may come after the route, and docker-socket counts.
        let c = ok("[emperor]\ndomain = a.example socket=web\nsocket = name=web,/run/w.sock\n");
        assert_eq!(c.routes, vec![route("a.example", Some("web"))]);
        let c = ok(&with_image(
            "domain = a.example socket=d\ndocker-socket = name=d,/run/d.sock",
        ));
        assert_eq!(c.routes, vec![route("a.example", Some("d"))]);
        // A first socket that is abstract cannot be the default target.
        let e = err("[emperor]\nsocket = @abs\nsocket = name=p,/run/p.sock\ndomain = a.example\n");
        assert_eq!(e.problems.len(), 1, "{e}");
        assert!(
            e.problems[0].message.starts_with("routes to the abstract socket @abs"),
            "{e}"
        );
        assert!(
            ok("[emperor]\nsocket = @abs\nsocket = name=p,/run/p.sock\ndomain = a.example socket=p\n")
                .routes
                .len()
                == 1
        );
        // An invalid socket line is reported alone: it may be the one the route meant.
        let e = err("[emperor]\nsocket = name=web,garbage\ndomain = a.example socket=web\n");
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(e.problems[0].key.as_deref(), Some("socket"));
    }

    #[test]
    fn readme_routing_example_parses() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("\n## Routing by Host with nginx\n")
            .nth(1)
            .unwrap_or_else(|| panic!("README section"));
        let text = section
            .split("```ini\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .unwrap_or_else(|| panic!("ini block"));
        let c = ok(text);
        assert_eq!(
            c.routes,
            vec![
                route("shop.example", None),
                route("www.shop.example", None),
                route("admin.shop.example", Some("admin")),
                route("*.shops.example", None),
            ]
        );
    }

    #[test]
    fn route_overlaps() {
        let cases = [
            ("a.b", "a.b", true),
            ("a.b", "*.a.b", false),
            ("a.b", ".a.b", true),
            ("*.a.b", ".a.b", true),
            ("*.a.b", "*.a.b", true),
            ("x.a.b", "*.a.b", false),
            ("a.b", "b", false),
        ];
        for (a, b, expected) in cases {
            assert_eq!(route(a, None).overlaps(&route(b, None)), expected, "{a} {b}");
            assert_eq!(route(b, None).overlaps(&route(a, None)), expected, "{b} {a}");
        }
    }
}
