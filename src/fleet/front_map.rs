//! `emperor front`'s include file, from every host's routes: pure, so that what a fleet's routes turn
//! into can be tested without Redis or nginx.
//!
//! The file is the emperor's `--nginx-map` file (`emperor/routes.rs`): the same `map $host
//! $emperor_upstream` with `hostnames`, the same `upstream` blocks, so the README's `server` block
//! works unchanged. What differs is where routes come from: many hosts, each publishing its vassals'
//! domains under `<prefix><vassal>@<address>` (`fleet/beachhead.rs`).
//!
//! # One upstream per name, one server per host
//!
//! Routes are grouped by what they claim in nginx's map (`config::claims`): `a.b` the exact name,
//! `*.a.b` the names below it, `.a.b` both. Every host that publishes a claim becomes one `server` line
//! of that claim's upstream, so a vassal that runs on two hosts, or is moving from one to another
//! (both publish while it moves), gets its requests balanced, and nginx retries the next server when
//! one refuses the connection. An exact name and the names below it that go to the same servers are
//! written as one `.a.b` line; otherwise as two lines with their own upstreams (`.a.b` on one host and
//! `a.b` on another give `a.b` both servers and `*.a.b` the first's only).
//!
//! # Two vassals, one name
//!
//! A name that two *different* vassal names claim (the id's part before `@`) keeps every server too:
//! the front cannot tell a renamed vassal from a mistake, and dropping either would cut off requests
//! that work today. It is logged as a warning naming the ids, once per change, and noted in the file.
//! This differs from the emperor on one host, where the first vassal in name order keeps a name: there
//! both are files in one directory and one is surely a mistake.
//!
//! # What is skipped
//!
//! Each key is checked on its own, and what is wrong with it never stops the others: a value that is
//! not beachhead's layout skips the key; a route whose domain is not a host name nginx's map can take
//! (`config::parse_host`, as for a vassal's `domains`), or whose `http.host` is not an IP address,
//! skips that route. Addresses must be IP literals because nginx resolves names in `server` lines only
//! when it loads its configuration and refuses the whole reload when one fails: one host's typo would
//! freeze every route. Each problem is logged once per key per change of its value, and noted in the
//! file.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use log::{info, warn};

use crate::config::{claims, parse_host, printable};
use crate::emperor::routes::{Include, MapLine, UpstreamBlock, unique_name, upstream_name_of};
use crate::fleet::beachhead;

/// Servers of one claim: address → the (vassal, id) pairs that publish it.
type Servers = BTreeMap<SocketAddr, BTreeSet<(String, String)>>;

/// A key left out, or partly left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The key, printable (control characters escaped, as everything from Redis that is shown).
    pub key: String,
    /// The value as read, so that a changed value is logged again.
    pub value: Vec<u8>,
    pub why: String,
}

/// A name that more than one vassal serves.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Contest {
    /// As nginx's map has it: `a.b`, `*.a.b` or `.a.b`.
    pub name: String,
    /// Every id that publishes it, in order.
    pub ids: Vec<String>,
}

/// One line of the map with its upstream's servers.
struct Line {
    key: String,
    servers: Servers,
}

impl Line {
    fn vassals(&self) -> BTreeSet<&str> {
        self.servers
            .values()
            .flatten()
            .map(|(vassal, _)| vassal.as_str())
            .collect()
    }

    fn ids(&self) -> Vec<String> {
        let ids: BTreeSet<&String> = self.servers.values().flatten().map(|(_, id)| id).collect();
        ids.into_iter().cloned().collect()
    }
}

/// What the file says, before formatting, and what to log.
pub struct Plan {
    lines: Vec<Line>,
    pub skipped: Vec<Skipped>,
    pub contests: Vec<Contest>,
    /// Every key read, good or not.
    pub keys: BTreeSet<String>,
}

impl Plan {
    /// For the log and the header: `<names> host(s) of <vassals> vassal(s), <servers> server(s)`.
    pub fn summary(&self) -> String {
        let vassals: BTreeSet<&str> = self.lines.iter().flat_map(Line::vassals).collect();
        let servers: BTreeSet<&SocketAddr> = self.lines.iter().flat_map(|l| l.servers.keys()).collect();
        format!(
            "{} host(s) of {} vassal(s), {} server(s)",
            self.lines.len(),
            vassals.len(),
            servers.len()
        )
    }
}

/// The address nginx connects to for a route: an IP literal (v6 with or without brackets), not a
/// wildcard.
fn server_of(host: &str, port: u16) -> Result<SocketAddr, String> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let ip: IpAddr = bare.parse().map_err(|_| {
        format!(
            "http host {host:?} is not an IP address (nginx resolves names only when it loads its \
             configuration, and one that fails stops every reload)"
        )
    })?;
    if ip.is_unspecified() {
        return Err(format!(
            "http host {host} is a wildcard address; publish the address the front reaches the host by"
        ));
    }
    Ok(SocketAddr::new(ip, port))
}

/// Groups the routes of every key (`(key, value)` as read) by what they claim; see the module doc.
/// Deterministic: the same keys and values, in any order, give the same plan.
pub fn plan(values: &[(String, Vec<u8>)]) -> Plan {
    let mut exact: BTreeMap<String, Servers> = BTreeMap::new();
    let mut wild: BTreeMap<String, Servers> = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut keys = BTreeSet::new();
    let mut sorted: Vec<&(String, Vec<u8>)> = values.iter().collect();
    sorted.sort();
    for (key, value) in sorted {
        // Whatever Redis holds reaches logs and the file's comments: control characters escaped.
        let key = printable(key).into_owned();
        keys.insert(key.clone());
        let skip = |why: String| Skipped {
            key: key.clone(),
            value: value.clone(),
            why: printable(&why).into_owned(),
        };
        let routes = match std::str::from_utf8(value) {
            Ok(text) => beachhead::decode(text),
            Err(_) => Err("not UTF-8 text".to_owned()),
        };
        let routes = match routes {
            Ok(routes) => routes,
            Err(e) => {
                skipped.push(skip(format!("not beachhead's layout, key skipped: {e}")));
                continue;
            }
        };
        let mut problems = Vec::new();
        for route in &routes {
            let checked = parse_host(&route.domain)
                .map_err(|e| format!("domain {e}"))
                .and_then(|host| Ok((host, server_of(&route.host, route.port)?)));
            let (host, server) = match checked {
                Ok(c) => c,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            let (want_exact, want_wild) = claims(&host);
            for (base, held) in [(want_exact, &mut exact), (want_wild, &mut wild)] {
                if let Some(base) = base {
                    held.entry(base.to_owned())
                        .or_default()
                        .entry(server)
                        .or_default()
                        .insert((
                            printable(route.vassal()).into_owned(),
                            printable(&route.id).into_owned(),
                        ));
                }
            }
        }
        if !problems.is_empty() {
            let why = format!(
                "{} of its {} route(s) skipped: {}",
                problems.len(),
                routes.len(),
                problems.join("; ")
            );
            skipped.push(skip(why));
        }
    }
    let bases: BTreeSet<&String> = exact.keys().chain(wild.keys()).collect();
    let mut lines = Vec::new();
    for base in bases {
        match (exact.get(base), wild.get(base)) {
            (Some(e), Some(w)) if e.keys().eq(w.keys()) => {
                let mut servers = e.clone();
                for (addr, ids) in w {
                    servers.entry(*addr).or_default().extend(ids.iter().cloned());
                }
                lines.push(Line {
                    key: format!(".{base}"),
                    servers,
                });
            }
            (e, w) => {
                if let Some(e) = e {
                    lines.push(Line {
                        key: base.clone(),
                        servers: e.clone(),
                    });
                }
                if let Some(w) = w {
                    lines.push(Line {
                        key: format!("*.{base}"),
                        servers: w.clone(),
                    });
                }
            }
        }
    }
    // Under one comment per vassal (or set of vassals), as the emperor's file has them.
    lines.sort_by(|a, b| (a.vassals(), base_of(&a.key)).cmp(&(b.vassals(), base_of(&b.key))));
    let contests = lines
        .iter()
        .filter(|l| l.vassals().len() > 1)
        .map(|l| Contest {
            name: l.key.clone(),
            ids: l.ids(),
        })
        .collect();
    Plan {
        lines,
        skipped,
        contests,
        keys,
    }
}

/// The name a map key is about, for ordering (`.a.b`, `a.b` and `*.a.b` together).
fn base_of(key: &str) -> &str {
    key.strip_prefix("*.").or_else(|| key.strip_prefix('.')).unwrap_or(key)
}

/// The include file for `plan`; `path` is where it goes, `source` the Redis server as shown and
/// `prefix` the keys' prefix, for the header.
pub fn render(plan: &Plan, path: &Path, source: &str, prefix: &str) -> String {
    let mut used = HashSet::new();
    let mut upstreams = Vec::new();
    let mut map = Vec::new();
    for line in &plan.lines {
        let base = base_of(&line.key);
        let parts: &[&str] = if line.key.starts_with("*.") {
            &["wildcard", base]
        } else {
            &[base]
        };
        let name = unique_name(&upstream_name_of(parts), &mut used);
        upstreams.push(UpstreamBlock {
            note: format!("{}: {}", line.key, line.ids().join(", ")),
            name: name.clone(),
            servers: line.servers.keys().map(SocketAddr::to_string).collect(),
        });
        map.push(MapLine {
            group: line.vassals().into_iter().collect::<Vec<_>>().join(", "),
            key: line.key.clone(),
            upstream: name,
        });
    }
    let notes = plan
        .contests
        .iter()
        .map(|c| format!("contested: {} by {}; balanced between them", c.name, c.ids.join(", ")))
        .chain(plan.skipped.iter().map(|s| format!("skipped: {}: {}", s.key, s.why)))
        .collect();
    Include {
        about: vec![
            format!("Generated by `emperor front` from the routes under {prefix} in {source}."),
            "Do not edit: it is rewritten (atomically) whenever the routes change, and left as it is".into(),
            "while Redis cannot be reached. Unknown hosts map to \"\".".into(),
        ],
        summary: format!("{}.", plan.summary()),
        upstreams,
        lines: map,
        notes,
    }
    .render(path)
}

/// What has been logged about a fleet's routes, so that each problem is logged once per change.
#[derive(Default)]
pub struct Logged {
    /// Skipped keys with the value that was logged.
    skipped: BTreeMap<String, Vec<u8>>,
    contests: BTreeSet<Contest>,
}

impl Logged {
    /// Logs what is new in `plan` (a key newly skipped or skipped with another value, a new or changed
    /// contest) and what went away.
    pub fn log(&mut self, plan: &Plan) {
        let mut now = BTreeMap::new();
        for s in &plan.skipped {
            if self.skipped.get(&s.key) != Some(&s.value) {
                warn!("front: {}: {}", s.key, s.why);
            }
            now.insert(s.key.clone(), s.value.clone());
        }
        for key in self.skipped.keys() {
            if !now.contains_key(key) && plan.keys.contains(key) {
                info!("front: {key} is read whole again");
            }
        }
        self.skipped = now;
        let contests: BTreeSet<Contest> = plan.contests.iter().cloned().collect();
        for c in contests.difference(&self.contests) {
            warn!(
                "front: host {} is published by different vassals: {}; nginx balances requests between them \
                 (a vassal moving between hosts keeps its name, so this is likely a mistake)",
                c.name,
                c.ids.join(", ")
            );
        }
        for c in self.contests.difference(&contests) {
            if !contests.iter().any(|now| now.name == c.name) {
                info!("front: host {} is no longer contested", c.name);
            }
        }
        self.contests = contests;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emperor::routes::{EMPTY_BODY, body};
    use crate::fleet::beachhead::{Route, encode, name};

    /// One key in beachhead's layout: `vassal` on host `ip` at `port`, with these domains.
    fn key(vassal: &str, ip: &str, port: u16, domains: &[&str]) -> (String, Vec<u8>) {
        let id = name(vassal, ip);
        let routes: Vec<Route> = domains
            .iter()
            .map(|d| Route {
                id: id.clone(),
                domain: (*d).to_owned(),
                host: ip.to_owned(),
                port,
            })
            .collect();
        (format!("/beachhead/{id}"), encode(&routes).into_bytes())
    }

    fn render_t(values: &[(String, Vec<u8>)]) -> String {
        render(
            &plan(values),
            Path::new("/etc/nginx/fleet.conf"),
            "redis://127.0.0.1:6379/0",
            "/beachhead/",
        )
    }

    #[test]
    fn empty_fleet() {
        let text = render_t(&[]);
        assert!(
            text.starts_with(
                "# Generated by `emperor front` from the routes under /beachhead/ in redis://127.0.0.1:6379/0.\n"
            ),
            "{text}"
        );
        assert!(text.contains("#     include /etc/nginx/fleet.conf;\n"), "{text}");
        assert!(
            text.contains("#             proxy_pass http://$emperor_upstream;\n"),
            "{text}"
        );
        assert!(text.contains("# 0 host(s) of 0 vassal(s), 0 server(s).\n"), "{text}");
        assert_eq!(body(&text), EMPTY_BODY);
    }

    #[test]
    fn one_domain_on_two_hosts_is_one_upstream() {
        let values = [
            key("shop.ini", "127.0.0.3", 8001, &["shop.test", ".static.test"]),
            key("shop.ini", "127.0.0.2", 8001, &["shop.test", ".static.test"]),
            key("blog.ini", "127.0.0.2", 8002, &["blog.test"]),
        ];
        let text = render_t(&values);
        assert!(text.contains("# 3 host(s) of 2 vassal(s), 3 server(s).\n"), "{text}");
        assert_eq!(
            body(&text),
            "
# blog.test: blog.ini@127.0.0.2
upstream emperor_blog_test {
    server 127.0.0.2:8002;
    keepalive 16;
}

# shop.test: shop.ini@127.0.0.2, shop.ini@127.0.0.3
upstream emperor_shop_test {
    server 127.0.0.2:8001;
    server 127.0.0.3:8001;
    keepalive 16;
}

# .static.test: shop.ini@127.0.0.2, shop.ini@127.0.0.3
upstream emperor_static_test {
    server 127.0.0.2:8001;
    server 127.0.0.3:8001;
    keepalive 16;
}

map $host $emperor_upstream {
    hostnames;
    default \"\";
    # blog.ini
    blog.test emperor_blog_test;
    # shop.ini
    shop.test emperor_shop_test;
    .static.test emperor_static_test;
}"
        );
        // The same keys in another order give the same bytes.
        let mut again = values.to_vec();
        again.reverse();
        assert_eq!(render_t(&again), text);
        assert!(plan(&values).contests.is_empty());
    }

    #[test]
    fn exact_and_wildcard_split_where_their_servers_differ() {
        // .a.test on one host, a.test on another: the exact name goes to both, the names below to the first.
        let values = [
            key("a.ini", "127.0.0.2", 8001, &[".a.test"]),
            key("a.ini", "127.0.0.3", 8001, &["a.test"]),
            // *.b.test and b.test from the same host are written as .b.test.
            key("b.ini", "127.0.0.2", 8002, &["b.test", "*.b.test"]),
        ];
        let text = render_t(&values);
        for line in [
            "    a.test emperor_a_test;",
            "    *.a.test emperor_wildcard_a_test;",
            "    .b.test emperor_b_test;",
            "upstream emperor_a_test {\n    server 127.0.0.2:8001;\n    server 127.0.0.3:8001;\n",
            "upstream emperor_wildcard_a_test {\n    server 127.0.0.2:8001;\n    keepalive 16;\n",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }

    #[test]
    fn two_vassals_on_one_name_keep_both_servers_and_are_reported() {
        let values = [
            key("a.ini", "127.0.0.2", 8001, &["x.test", "a.test"]),
            key("b.ini", "127.0.0.3", 8001, &["x.test"]),
        ];
        let p = plan(&values);
        assert_eq!(
            p.contests,
            vec![Contest {
                name: "x.test".into(),
                ids: vec!["a.ini@127.0.0.2".into(), "b.ini@127.0.0.3".into()],
            }]
        );
        let text = render_t(&values);
        for line in [
            "    # a.ini\n    a.test emperor_a_test;\n    # a.ini, b.ini\n    x.test emperor_x_test;\n",
            "upstream emperor_x_test {\n    server 127.0.0.2:8001;\n    server 127.0.0.3:8001;\n",
            "    # contested: x.test by a.ini@127.0.0.2, b.ini@127.0.0.3; balanced between them\n",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        // The same vassal on two hosts is no contest.
        let values = [
            key("a.ini", "127.0.0.2", 8001, &["x.test"]),
            key("a.ini", "127.0.0.3", 8001, &["x.test"]),
        ];
        assert!(plan(&values).contests.is_empty());
    }

    #[test]
    fn bad_keys_and_routes_are_skipped_alone() {
        let good = key("a.ini", "127.0.0.2", 8001, &["a.test"]);
        let mixed = key(
            "m.ini",
            "127.0.0.3",
            8001,
            &["m.test", "m.test:8080", "*.*.test", "default"],
        );
        let by_name = (
            "/beachhead/n.ini@web1".to_owned(),
            br#"[{"id":"n.ini@web1","domain":"n.test","http":{"host":"web1.internal","port":80}}]"#.to_vec(),
        );
        let wildcard_ip = key("w.ini", "0.0.0.0", 8001, &["w.test"]);
        let v6 = key("v.ini", "::1", 8001, &["v.test"]);
        let garbage = ("/beachhead/junk".to_owned(), b"{not json".to_vec());
        let binary = ("/beachhead/bin".to_owned(), vec![0xff, 0xfe]);
        let values = [good, mixed, by_name, wildcard_ip, v6, garbage, binary];
        let p = plan(&values);
        let why: BTreeMap<&str, &str> = p.skipped.iter().map(|s| (s.key.as_str(), s.why.as_str())).collect();
        assert_eq!(why.len(), 5, "{why:?}");
        assert!(why["/beachhead/junk"].starts_with("not beachhead's layout, key skipped: not JSON"));
        assert!(why["/beachhead/bin"].contains("not UTF-8"));
        assert!(why["/beachhead/m.ini@127.0.0.3"].starts_with("2 of its 4 route(s) skipped: domain \"m.test:8080\""));
        assert!(why["/beachhead/n.ini@web1"].contains("\"web1.internal\" is not an IP address"));
        assert!(why["/beachhead/w.ini@0.0.0.0"].contains("wildcard address"));
        assert_eq!(p.keys.len(), 7);
        let text = render_t(&values);
        for line in [
            "    a.test emperor_a_test;",
            "    m.test emperor_m_test;",
            // A map keyword as a host name is escaped, as in the emperor's file.
            "    \\default emperor_default;",
            "    v.test emperor_v_test;",
            "    server [::1]:8001;",
            "    # skipped: /beachhead/junk: not beachhead's layout, key skipped: not JSON",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        assert!(!text.contains("    n.test "), "{text}");
    }

    #[test]
    fn control_characters_from_redis_are_escaped() {
        let mut evil = key("a\u{1b}[2J.ini", "127.0.0.2", 8001, &["a.test", "b\u{7}.test"]);
        evil.0.push('\n');
        let p = plan(&[evil]);
        assert_eq!(p.skipped.len(), 1);
        let s = &p.skipped[0];
        assert!(!s.key.chars().chain(s.why.chars()).any(char::is_control), "{s:?}");
        let text = render(&p, Path::new("/x.conf"), "redis://127.0.0.1:6379/0", "/beachhead/");
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text}");
        assert!(text.contains("# a.test: a\\u{1b}[2J.ini@127.0.0.2\n"), "{text}");
    }

    #[test]
    fn upstream_names_stay_unique() {
        let values = [
            key(
                "a.ini",
                "127.0.0.2",
                8001,
                &["a-b.test", "a.b.test", "*.x.test", "wildcard.x.test"],
            ),
            key("a.ini", "127.0.0.3", 8001, &["x.test"]),
        ];
        let text = render_t(&values);
        for line in [
            "    a-b.test emperor_a_b_test;",
            "    a.b.test emperor_a_b_test_2;",
            // Names are given in name order: wildcard.x.test comes before (*.)x.test.
            "    wildcard.x.test emperor_wildcard_x_test;",
            "    *.x.test emperor_wildcard_x_test_2;",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
