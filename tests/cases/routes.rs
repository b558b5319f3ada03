//! Host routing (`--nginx-map`): a real nginx (Debian's) on 127.0.0.1 includes the file the emperor
//! keeps and runs the README's `server` block verbatim; each Host reaches its own vassal, unknown
//! Hosts get nginx's 404, and adding or deleting a vassal file rewrites the map and reloads nginx.

use std::fs;
use std::time::Duration;

use crate::util::nginx::{Nginx, wait_answer};
use crate::util::{Harness, LONG, free_port};

/// A testapp vassal with one unix socket and the given routing lines.
fn routed_ini(h: &Harness, name: &str, routes: &str) -> String {
    format!("{}{routes}\n", h.app_ini(name, ""))
}

#[test]
fn nginx_routes_each_host_to_its_vassal_and_follows_changes() {
    let mut h = Harness::new("routes_nginx");
    let map = h.root.join("nginx").join("routes.conf");
    let port = free_port();
    let mut nginx = Nginx::configure(&h.root.join("nginx"), port, &map);
    h.write_vassal("a.ini", &routed_ini(&h, "a.ini", "domains = a.test"));
    h.write_vassal("b.ini", &routed_ini(&h, "b.ini", "domains = b.test"));
    let reload = nginx.reload_command();
    let map_arg = map.to_string_lossy().into_owned();
    h.start(&["--nginx-map", &map_arg, "--nginx-reload", &reload]);

    // Written at start-up; nginx is not running yet, so that first reload fails, is logged and is not fatal.
    h.wait_for(
        || fs::read_to_string(&map).is_ok_and(|t| t.contains("a.test") && t.contains("b.test")),
        LONG,
        "the map with a.test and b.test",
    );
    h.wait_log("nginx map: the reload command", LONG);
    nginx
        .test_config()
        .unwrap_or_else(|e| panic!("nginx -t refused the generated map: {e}{}", h.tail()));
    nginx.start();

    wait_answer(&h, &nginx, port, "a.test", 200, "hello from a.ini");
    wait_answer(&h, &nginx, port, "b.test", 200, "hello from b.ini");
    wait_answer(&h, &nginx, port, "c.test", 404, "no app for this host");
    // Any case, and a port in the Host header: nginx's $host is the lowercase name alone.
    wait_answer(&h, &nginx, port, "A.Test:8080", 200, "hello from a.ini");

    // A third vassal: the map is rewritten, nginx reloaded, c.test reaches it.
    let written = h.stderr().matches("nginx map: wrote").count();
    h.write_vassal("c.ini", &routed_ini(&h, "c.ini", "domain = c.test"));
    wait_answer(&h, &nginx, port, "c.test", 200, "hello from c.ini");
    h.wait_log("nginx map: ran `", LONG);
    h.check(
        h.stderr().matches("nginx map: wrote").count() == written + 1,
        "one write for one added vassal",
    );

    // A broken edit keeps the vassal's routes (its instance keeps running on the last good config).
    h.write_vassal(
        "a.ini",
        &format!("{}sockte = x\n", routed_ini(&h, "a.ini", "domains = a.test")),
    );
    h.wait_log("sockte", LONG);
    wait_answer(&h, &nginx, port, "a.test", 200, "hello from a.ini");
    h.check(
        fs::read_to_string(&map).unwrap().contains("a.test"),
        "a.test stays in the map",
    );

    // Deleting b: its host goes from the map, nginx answers 404 for it; the others are untouched.
    h.remove_vassal("b.ini");
    wait_answer(&h, &nginx, port, "b.test", 404, "no app for this host");
    wait_answer(&h, &nginx, port, "a.test", 200, "hello from a.ini");
    wait_answer(&h, &nginx, port, "c.test", 200, "hello from c.ini");

    // Stopping the emperor empties the map and reloads nginx: every host is unknown, so 404, not 502.
    h.signal(libc::SIGTERM);
    let status = h.wait_exit(Duration::from_secs(30));
    h.check(status.success(), format!("emperor exit status {status}"));
    let text = fs::read_to_string(&map).unwrap();
    h.check(
        !text.contains("a.test") && text.contains("map $host $emperor_upstream"),
        format!("the map is empty after shutdown:\n{text}"),
    );
    wait_answer(&h, &nginx, port, "a.test", 404, "no app for this host");
}

#[test]
fn generated_map_with_every_kind_of_route_passes_nginx() {
    let mut h = Harness::new("routes_kinds");
    let map = h.root.join("nginx").join("routes.conf");
    let port = free_port();
    let app_port = free_port();
    let mut nginx = Nginx::configure(&h.root.join("nginx"), port, &map);
    // Named sockets (unix and TCP on all addresses), a wildcard, the suffix form, a map keyword as a host.
    h.write_vassal(
        "multi.ini",
        &format!(
            "[emperor]\nsocket = {}\nsocket = name=web,:{app_port}\n{}\
             domains = multi.test .suffix.test default\ndomain = *.wild.test socket=web\n",
            h.sock("multi.sock").display(),
            h.exec_line("multi.ini", "")
        ),
    );
    // Two vassals claim shared.test: other.ini loses it to multi.ini (name order), keeps the rest.
    h.write_vassal(
        "other.ini",
        &routed_ini(&h, "other.ini", "domains = shared.test other.test"),
    );
    h.write_vassal("multi2.ini", &routed_ini(&h, "multi2.ini", "domains = shared.test"));
    let map_arg = map.to_string_lossy().into_owned();
    h.start(&["--nginx-map", &map_arg]);
    h.wait_for(
        || fs::read_to_string(&map).is_ok_and(|t| t.contains("other.test")),
        LONG,
        "the map",
    );
    h.wait_log(
        "[other.ini] host shared.test (shared.test) is also claimed by multi2.ini",
        LONG,
    );
    nginx.test_config().unwrap_or_else(|e| {
        panic!(
            "nginx -t refused the generated map: {e}\n{}{}",
            fs::read_to_string(&map).unwrap_or_default(),
            h.tail()
        )
    });
    nginx.start();
    wait_answer(&h, &nginx, port, "multi.test", 200, "hello from multi.ini");
    wait_answer(&h, &nginx, port, "suffix.test", 200, "hello from multi.ini");
    wait_answer(&h, &nginx, port, "x.y.suffix.test", 200, "hello from multi.ini");
    wait_answer(&h, &nginx, port, "default", 200, "hello from multi.ini");
    wait_answer(&h, &nginx, port, "a.wild.test", 200, "hello from multi.ini");
    wait_answer(&h, &nginx, port, "wild.test", 404, "no app for this host");
    wait_answer(&h, &nginx, port, "shared.test", 200, "hello from multi2.ini");
    wait_answer(&h, &nginx, port, "other.test", 200, "hello from other.ini");
    // The conflict is logged once, not at every rescan.
    h.check(
        h.stderr().matches("is also claimed by").count() == 1,
        "one conflict line",
    );
}
