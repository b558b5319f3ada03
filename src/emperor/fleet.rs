//! This host's part in a fleet: which routes it publishes, and handing a vassal over to another host.
//!
//! # What is published
//! A vassal's routes (its `domains`) are published while its latest config is good, its actor holds its
//! sockets (it reported a state other than `invalid`, `throttled`, `stopping` or `done`) and it is not
//! being handed over. Only TCP targets are published: a unix socket is of no use to a front on another host.
//! A socket bound to every address is published with `--routes-address`; one bound to a loopback address is
//! left out unless `--routes-address` is itself a loopback one (several emperors on one machine, as in the
//! tests); any other address is published as it is bound.
//!
//! # Handing a vassal over (a move between hosts)
//! A row whose `handoff` column is true belongs to another host now. The emperor on the old host keeps the
//! vassal running and published until a route for one of its domains appears in Redis from another host,
//! then withdraws its own route, keeps serving for `--routes-drain` (the front re-renders within a second and
//! nginx lets requests in flight finish), and only then stops it. If no other host publishes within
//! `--routes-handoff-timeout`, it stops anyway: the store says the vassal is no longer ours. Without
//! `--routes-redis` there is nothing to wait for and the vassal stops at once, as for a deleted row.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use log::{info, warn};
use tokio::sync::mpsc;

use crate::config::{SocketAddrSpec, VassalConfig};
use crate::fleet::beachhead;
use crate::fleet::publish::{Publisher, Wanted};

/// States in which a vassal's actor holds its sockets and can take connections (queued until it serves).
/// Whether a vassal in `state` has its routes published.
pub fn publishable(state: &str) -> bool {
    PUBLISHABLE.contains(&state)
}

const PUBLISHABLE: &[&str] = &["waiting", "starting", "running", "reloading", "paused", "held"];

/// The next step of a hand-over, sent by its task to the main loop.
#[derive(Debug)]
pub enum Step {
    /// Another host publishes the vassal (or the wait timed out): stop publishing it.
    Withdraw(String),
    /// The drain period is over: stop it.
    Stop(String),
}

pub struct Fleet {
    publisher: Option<Publisher>,
    /// Vassals being handed over, with their task.
    handoffs: HashMap<String, tokio::task::AbortHandle>,
    /// Vassals whose route is withdrawn (their hand-over is draining).
    withdrawn: HashSet<String>,
    steps: (mpsc::UnboundedSender<Step>, mpsc::UnboundedReceiver<Step>),
    /// The emperor is stopping: nothing is published any more.
    stopping: bool,
}

impl Fleet {
    pub fn new(publisher: Option<Publisher>) -> Fleet {
        Fleet {
            publisher,
            handoffs: HashMap::new(),
            withdrawn: HashSet::new(),
            steps: mpsc::unbounded_channel(),
            stopping: false,
        }
    }

    /// Publishes what `good` and `states` say should be.
    pub fn sync(&self, good: &BTreeMap<String, Arc<VassalConfig>>, states: &BTreeMap<String, &'static str>) {
        if let Some(p) = self.publisher.as_ref().filter(|_| !self.stopping) {
            let opts = p.options();
            p.set(wanted(good, states, &self.withdrawn, opts.address, &opts.prefix));
        }
    }

    /// The emperor is stopping: every route is withdrawn now, before any vassal stops.
    pub fn withdraw_all_soon(&mut self) {
        self.stopping = true;
        if let Some(p) = &self.publisher {
            p.set(Wanted::new());
        }
    }

    /// Withdraws every route (the emperor is stopping) and waits a little for Redis to have it.
    pub async fn withdraw_all(&mut self) {
        self.stopping = true;
        if let Some(p) = &self.publisher {
            p.set(Wanted::new());
            if !p.settle(std::time::Duration::from_secs(2)).await {
                warn!("routes: could not withdraw them from Redis in time; they lapse with their TTL");
            }
        }
    }

    pub fn handing_over(&self, name: &str) -> bool {
        self.handoffs.contains_key(name)
    }

    /// Starts handing `name` over. `true` when it should stop at once (nothing to wait for).
    pub fn hand_over(&mut self, name: &str, cfg: &VassalConfig) -> bool {
        let Some(p) = &self.publisher else {
            info!("[{name}] placed on another host: stopping it");
            return true;
        };
        let domains: Vec<String> = cfg.routes.iter().map(|r| r.host.clone()).collect();
        if domains.is_empty() {
            info!("[{name}] placed on another host: stopping it (it has no domains to hand over)");
            return true;
        }
        let opts = p.options().clone();
        info!(
            "[{name}] placed on another host: serving until that host publishes {} (at most {} s)",
            domains.join(" "),
            opts.handoff_timeout.as_secs()
        );
        let wait = p.wait_for_successor(domains, opts.handoff_timeout);
        let (tx, owned) = (self.steps.0.clone(), name.to_owned());
        let task = tokio::task::spawn_local(async move {
            if wait.await {
                info!(
                    "[{owned}] the new host publishes it: withdrawing this host's route, stopping in {} s",
                    opts.drain.as_secs()
                );
            } else {
                warn!(
                    "[{owned}] no other host published it within {} s; withdrawing and stopping it anyway",
                    opts.handoff_timeout.as_secs()
                );
            }
            let _ = tx.send(Step::Withdraw(owned.clone()));
            tokio::time::sleep(opts.drain).await;
            let _ = tx.send(Step::Stop(owned));
        });
        self.handoffs.insert(name.to_owned(), task.abort_handle());
        false
    }

    /// `name` is ours again (its row came back) or gone: any hand-over is called off.
    pub fn keep(&mut self, name: &str) {
        if let Some(task) = self.handoffs.remove(name) {
            task.abort();
            info!("[{name}] placed on this host again: the hand-over is called off");
        }
        self.withdrawn.remove(name);
    }

    /// A hand-over's step happened: its route is withdrawn, or it is done (then the caller stops the vassal).
    pub fn step(&mut self, step: &Step) {
        match step {
            Step::Withdraw(name) => {
                if self.handoffs.contains_key(name) {
                    self.withdrawn.insert(name.clone());
                }
            }
            Step::Stop(name) => {
                self.handoffs.remove(name);
                self.withdrawn.remove(name);
            }
        }
    }

    /// Whether a step is still current (a hand-over called off meanwhile sent it before being aborted).
    pub fn current(&self, step: &Step) -> bool {
        match step {
            Step::Withdraw(name) | Step::Stop(name) => self.handoffs.contains_key(name),
        }
    }

    pub async fn next_step(&mut self) -> Option<Step> {
        self.steps.1.recv().await
    }
}

/// The keys to publish: one per vassal, `<prefix><vassal>@<address>`.
fn wanted(
    good: &BTreeMap<String, Arc<VassalConfig>>,
    states: &BTreeMap<String, &'static str>,
    withdrawn: &HashSet<String>,
    address: IpAddr,
    prefix: &str,
) -> Wanted {
    let mut out = Wanted::new();
    let table =
        crate::emperor::routes::table(good.iter().filter(|(name, _)| {
            !withdrawn.contains(*name) && states.get(*name).is_some_and(|s| PUBLISHABLE.contains(s))
        }));
    for (vassal, routes) in table {
        let id = beachhead::name(&vassal, &address.to_string());
        let items: Vec<beachhead::Route> = routes
            .iter()
            .filter_map(|(route, target)| {
                let SocketAddrSpec::Tcp(addr) = target else { return None };
                let host = reachable(addr.ip(), address)?;
                Some(beachhead::Route {
                    id: id.clone(),
                    domain: route.host.clone(),
                    host: host.to_string(),
                    port: addr.port(),
                })
            })
            .collect();
        if !items.is_empty() {
            out.insert(format!("{prefix}{id}"), beachhead::encode(&items));
        }
    }
    out
}

/// The address a front on another host reaches a socket bound to `ip` by, if any.
fn reachable(ip: IpAddr, address: IpAddr) -> Option<IpAddr> {
    if ip.is_unspecified() {
        Some(address)
    } else if ip.is_loopback() && !address.is_loopback() {
        None
    } else {
        Some(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Arc<VassalConfig> {
        let dir = std::path::Path::new("/srv/vassals");
        Arc::new(crate::config::parse("a.ini", &dir.join("a.ini"), text, dir).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn only_reachable_tcp_routes_of_serving_vassals_are_published() {
        let exec = "exec = /bin/true\n";
        let good: BTreeMap<String, Arc<VassalConfig>> = [
            (
                "any.ini",
                format!("[emperor]\n{exec}socket = 0.0.0.0:8001\ndomains = any.test .w.test\n"),
            ),
            (
                "lo.ini",
                format!("[emperor]\n{exec}socket = 127.0.0.1:8002\ndomains = lo.test\n"),
            ),
            (
                "unix.ini",
                format!("[emperor]\n{exec}socket = /run/u.sock\ndomains = unix.test\n"),
            ),
            (
                "own.ini",
                format!("[emperor]\n{exec}socket = 192.0.2.9:8003\ndomains = own.test\n"),
            ),
            (
                "gone.ini",
                format!("[emperor]\n{exec}socket = :8004\ndomains = gone.test\n"),
            ),
            (
                "bad.ini",
                format!("[emperor]\n{exec}socket = :8005\ndomains = bad.test\n"),
            ),
            (
                "drain.ini",
                format!("[emperor]\n{exec}socket = :8006\ndomains = drain.test\n"),
            ),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_string(), cfg(&t)))
        .collect();
        let states: BTreeMap<String, &'static str> = [
            ("any.ini", "running"),
            ("lo.ini", "waiting"),
            ("unix.ini", "running"),
            ("own.ini", "paused"),
            ("bad.ini", "throttled"),
            ("drain.ini", "running"),
        ]
        .into_iter()
        .map(|(n, s)| (n.to_string(), s))
        .collect();
        let withdrawn: HashSet<String> = ["drain.ini".to_string()].into();
        let host: IpAddr = "198.51.100.4".parse().unwrap();
        let w = wanted(&good, &states, &withdrawn, host, "/beachhead/");
        assert_eq!(
            w.keys().collect::<Vec<_>>(),
            ["/beachhead/any.ini@198.51.100.4", "/beachhead/own.ini@198.51.100.4"]
        );
        let any = beachhead::decode(&w["/beachhead/any.ini@198.51.100.4"]).unwrap();
        assert_eq!(any.len(), 2);
        assert_eq!(
            (any[0].host.as_str(), any[0].port, any[0].domain.as_str()),
            ("198.51.100.4", 8001, "any.test")
        );
        assert_eq!(any[1].domain, ".w.test");
        let own = beachhead::decode(&w["/beachhead/own.ini@198.51.100.4"]).unwrap();
        assert_eq!(own[0].host, "192.0.2.9");
        // Several emperors on one machine: loopback sockets are reachable by a loopback front.
        let w = wanted(&good, &states, &withdrawn, "127.0.0.2".parse().unwrap(), "/p/");
        assert!(w.contains_key("/p/lo.ini@127.0.0.2"));
    }
}
