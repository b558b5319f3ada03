//! The container a vassal gets, built as plain data, and the fingerprint that seals it.
//!
//! Two roles create containers for a vassal: the bridge when the vassal starts, and the emperor ahead of
//! time for an on-demand vassal (`emperor/prepare.rs`). A container created ahead of time is started only
//! if it is exactly the one the bridge would create now, so both must build it with the same pure
//! function ([`plan`]); the fingerprint label is how the bridge recognises it. A change to what the body
//! or the fingerprint hold makes every pre-created container look stale once, so it is a contract.
//!
//! The container's whole definition is one [`ContainerCreateBody`], everything in `HostConfig` at
//! create time (uwsgi-docker put the host config in `/start`, which Docker dropped in API 1.24), so that
//! it can be unit-tested against what uwsgi-docker would have sent, without a daemon.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, HostConfig, HostConfigLogConfig,
    ImageInspect, Mount, MountType, PortBinding,
};

use super::labels::{LABEL_CIDFILE, LABEL_CONFIG_HASH, LABEL_FINGERPRINT, LABEL_INSTANCE, LABEL_VASSAL};
use crate::config::{DockerConfig, VassalConfig};
use crate::shim;

/// Where the emperor's binary (the shim) appears inside every container.
pub const SHIM_PATH: &str = "/.emperor/emperor";
/// Where the proxy socket's private directory appears inside the container, unless `docker-proxy`.
pub const PROXY_DIR: &str = "/.emperor/proxy";
/// The proxy socket's file name inside that directory.
pub const PROXY_NAME: &str = "vassal.sock";

/// The image's own command (Entrypoint + Cmd), run when the vassal sets no `exec`.
fn image_command(image: &ImageInspect) -> Vec<String> {
    image
        .config
        .as_ref()
        .map(|c| {
            c.entrypoint
                .iter()
                .flatten()
                .chain(c.cmd.iter().flatten())
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Creates a proxy-socket directory and its parents. A bridge that exits removes the instance
/// directory once it is empty, which can happen between the two mkdirs here: one retry covers that.
pub fn make_proxy_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::create_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir),
        other => other,
    }
}

/// Where the proxy socket lives, on the host and inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyPaths {
    pub host_sock: PathBuf,
    pub host_dir: PathBuf,
    pub container_sock: String,
    /// The directory is the emperor's own (not `docker-proxy`): it is created, opened up and removed.
    pub private: bool,
}

/// The proxy socket of a container created as `create_name`: `docker-proxy`'s paths, or a private
/// directory `<run_dir>/<instance>/<create_name>/` mounted at [`PROXY_DIR`].
fn proxy_paths(d: &DockerConfig, run_dir: &Path, instance: &str, create_name: &str) -> ProxyPaths {
    let (host_sock, container_sock, private) = match &d.proxy {
        Some(p) => (p.host.clone(), p.container.clone(), false),
        None => (
            run_dir.join(instance).join(create_name).join(PROXY_NAME),
            format!("{PROXY_DIR}/{PROXY_NAME}"),
            true,
        ),
    };
    let host_dir = host_sock
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    ProxyPaths {
        host_sock,
        host_dir,
        container_sock,
        private,
    }
}

/// A digest of everything the container is created from: the create body (as JSON with sorted object
/// keys, since labels and port maps are hash maps) and the image id the tag points to now, so a
/// rebuilt image under the same tag does not match. 64-bit FNV-1a, hex.
pub fn fingerprint(body: &ContainerCreateBody, image_id: &str) -> String {
    fn canonical(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<_> = m.keys().collect();
                keys.sort();
                out.push('{');
                for k in keys {
                    out.push_str(&serde_json::Value::String(k.clone()).to_string());
                    out.push(':');
                    canonical(&m[k], out);
                    out.push(',');
                }
                out.push('}');
            }
            serde_json::Value::Array(a) => {
                out.push('[');
                for x in a {
                    canonical(x, out);
                    out.push(',');
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut text = String::new();
    if let Ok(v) = serde_json::to_value(body) {
        canonical(&v, &mut text);
    }
    text.push_str(image_id);
    crate::sys::hash::fnv1a_hex(text.as_bytes())
}

/// What the container is created from besides the vassal file and the image.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub instance: &'a str,
    pub extra_labels: &'a [(String, String)],
    /// The emperor's binary on the host, bind-mounted read-only as the shim.
    pub shim_host: &'a Path,
    /// `--emperor-run-dir`, where private proxy-socket directories are made.
    pub run_dir: &'a Path,
    /// The name the container is created under.
    pub create_name: &'a str,
    pub wrapper: &'a str,
    /// Names of the listening sockets, in fd order.
    pub socket_names: Vec<String>,
    /// Whether a config fd follows the control fd in the hand-over.
    pub has_config: bool,
}

/// The container to create, sealed with its fingerprint, and where its proxy socket goes.
#[derive(Debug)]
pub struct Plan {
    pub proxy: ProxyPaths,
    pub body: ContainerCreateBody,
    pub fingerprint: String,
}

/// The one way to turn a vassal into a container definition, used by the bridge and by the emperor's
/// creation ahead of time alike, so that a container created ahead of time matches what the bridge
/// would create exactly when nothing changed. `None` when there is nothing to run (no `exec`, and the
/// image has no Entrypoint or Cmd).
pub fn plan(cfg: &VassalConfig, d: &DockerConfig, image: &ImageInspect, inputs: Inputs<'_>) -> Option<Plan> {
    let proxy = proxy_paths(d, inputs.run_dir, inputs.instance, inputs.create_name);
    let ctx = Context {
        instance: inputs.instance,
        extra_labels: inputs.extra_labels,
        shim_host: inputs.shim_host,
        proxy_host_dir: &proxy.host_dir,
        proxy_container_path: &proxy.container_sock,
        image_command: image_command(image),
        image_stop_signal: image.config.as_ref().and_then(|c| c.stop_signal.clone()),
        wrapper: inputs.wrapper,
        socket_names: inputs.socket_names,
        has_config: inputs.has_config,
    };
    if payload(cfg, &ctx).is_empty() {
        return None;
    }
    let mut body = container_body(cfg, d, &ctx);
    // Before the seal: a container made under another policy has another fingerprint, and is not reused.
    if let Some(forced) = &cfg.container_policy {
        forced.apply(&mut body);
    }
    let fingerprint = seal(&mut body, image.id.as_deref().unwrap_or_default());
    Some(Plan {
        proxy,
        body,
        fingerprint,
    })
}

/// Labels the body with its own fingerprint (computed without that label).
fn seal(body: &mut ContainerCreateBody, image_id: &str) -> String {
    let fp = fingerprint(body, image_id);
    body.labels
        .get_or_insert_with(HashMap::new)
        .insert(LABEL_FINGERPRINT.into(), fp.clone());
    fp
}

/// Whether an existing container may be started as the one this bridge would create: an emperor's
/// container for this vassal and instance, never started, with the same fingerprint.
pub fn reusable(c: &ContainerInspectResponse, vassal: &str, instance: &str, fp: &str) -> bool {
    let labels = c.config.as_ref().and_then(|c| c.labels.as_ref());
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    let created = c
        .state
        .as_ref()
        .and_then(|s| s.status)
        .is_some_and(|s| s == ContainerStateStatusEnum::CREATED);
    created
        && label(LABEL_VASSAL) == Some(vassal)
        && label(LABEL_INSTANCE) == Some(instance)
        && label(LABEL_FINGERPRINT) == Some(fp)
}

/// Everything about the container that does not come from the vassal file.
#[derive(Debug)]
struct Context<'a> {
    pub instance: &'a str,
    pub extra_labels: &'a [(String, String)],
    /// The emperor's binary on the host, bind-mounted read-only as the shim.
    pub shim_host: &'a Path,
    /// The proxy socket's directory on the host and inside the container.
    pub proxy_host_dir: &'a Path,
    pub proxy_container_path: &'a str,
    /// The image's own Entrypoint + Cmd, used when the vassal sets no `exec`.
    pub image_command: Vec<String>,
    /// The image's `STOPSIGNAL`, used when the vassal sets no `stop-signal`.
    pub image_stop_signal: Option<String>,
    /// Program run for `[uwsgi]` vassals inside the container (`--emperor-wrapper`).
    pub wrapper: &'a str,
    /// Names of the listening sockets, in fd order.
    pub socket_names: Vec<String>,
    /// Whether a config fd follows the control fd in the hand-over.
    pub has_config: bool,
}

/// The command the vassal runs inside its container, before the shim is put in front of it.
fn payload(cfg: &VassalConfig, ctx: &Context<'_>) -> Vec<String> {
    match &cfg.exec {
        Some(argv) => argv.clone(),
        None if cfg.uwsgi_section => vec![
            ctx.wrapper.to_string(),
            "--ini".into(),
            format!("emperor://{}", cfg.name),
        ],
        None => ctx.image_command.clone(),
    }
}

/// Does the vassal run uWSGI, which wants its socket on fd 0 and its config over the config pipe?
pub fn is_uwsgi(cfg: &VassalConfig) -> bool {
    cfg.exec.is_none() && cfg.uwsgi_section
}

/// The create body for the vassal's container.
fn container_body(cfg: &VassalConfig, d: &DockerConfig, ctx: &Context<'_>) -> ContainerCreateBody {
    let mut env: Vec<String> = cfg.env.iter().chain(&d.env).map(|(k, v)| format!("{k}={v}")).collect();
    // accept = true: the shim's payload is the bind-mounted binary's accept role, which runs the command
    // once per connection inside this one container (config refuses it without the shim).
    let payload = match cfg.accept {
        Some(max) => crate::accept::command(SHIM_PATH, max, &payload(cfg, ctx)),
        None => payload(cfg, ctx),
    };
    let (entrypoint, cmd) = if d.shim {
        env.push(format!("{}={}", shim::ENV_PROXY, ctx.proxy_container_path));
        env.push(format!("{}={}", shim::ENV_SOCKETS, ctx.socket_names.len()));
        env.push(format!("{}={}", shim::ENV_CONFIG, u8::from(ctx.has_config)));
        env.push(format!("{}={}", shim::ENV_FDNAMES, ctx.socket_names.join(":")));
        env.push(format!("{}={}", shim::ENV_STDIN_SOCKET, u8::from(is_uwsgi(cfg))));
        (
            Some(vec![SHIM_PATH.to_string(), "shim".into(), "--".into()]),
            Some(payload),
        )
    } else {
        // A uWSGI that speaks the proxy protocol itself connects on its own (uwsgi-docker's way). An
        // explicit command replaces the image's Entrypoint and Cmd (Docker then drops the image's Cmd).
        env.push(format!("UWSGI_EMPEROR_PROXY={}", ctx.proxy_container_path));
        let own = cfg.exec.clone().or_else(|| is_uwsgi(cfg).then_some(payload));
        (own, None)
    };

    let mut labels: HashMap<String, String> = ctx.extra_labels.iter().cloned().collect();
    labels.insert(LABEL_VASSAL.into(), cfg.name.clone());
    labels.insert(LABEL_INSTANCE.into(), ctx.instance.into());
    labels.insert(LABEL_CONFIG_HASH.into(), format!("{:016x}", cfg.emperor_hash));
    if let Some(cid) = &d.cidfile {
        labels.insert(LABEL_CIDFILE.into(), cid.to_string_lossy().into_owned());
    }

    let bind = |source: &Path, target: &str, read_only: bool| Mount {
        typ: Some(MountType::BIND),
        source: Some(source.to_string_lossy().into_owned()),
        target: Some(target.to_string()),
        read_only: Some(read_only),
        ..Default::default()
    };
    let proxy_container_dir = Path::new(ctx.proxy_container_path)
        .parent()
        .map_or("/".into(), |p| p.to_string_lossy());
    let mut mounts = vec![bind(ctx.proxy_host_dir, &proxy_container_dir, false)];
    if d.shim {
        mounts.push(bind(ctx.shim_host, SHIM_PATH, true));
    }
    mounts.extend(d.mounts.iter().map(|m| bind(&m.host, &m.container, m.read_only)));

    let mut exposed = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &d.ports {
        let key = format!("{}/{}", p.container_port, p.proto);
        exposed.push(key.clone());
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: p.host_ip.map(|ip| ip.to_string()),
                host_port: Some(p.host_port.to_string()),
            });
    }

    ContainerCreateBody {
        image: Some(d.image.clone()),
        entrypoint,
        cmd,
        env: Some(env),
        labels: Some(labels),
        tty: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        working_dir: d.workdir.clone(),
        hostname: d.hostname.clone(),
        // Tyrant mode: the file's owner, whatever the image says (a docker-user naming anyone else is refused
        // before anything is created).
        user: cfg.run_as.map(|r| r.to_string()).or_else(|| d.user.clone()),
        // `docker stop` sends this to the shim, which passes it on. Without `stop-signal`, the image's
        // STOPSIGNAL (nginx's images: SIGQUIT, its graceful stop), as `docker run` would take it; said here
        // rather than left to the daemon's create-time merge, so the bridge knows what it sends.
        stop_signal: cfg
            .stop_signal
            .map(|s| s.as_str().to_string())
            .or_else(|| ctx.image_stop_signal.clone()),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(HostConfig {
            mounts: Some(mounts),
            network_mode: d.network_mode.clone(),
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            dns: (!d.dns.is_empty()).then(|| d.dns.iter().map(|ip| ip.to_string()).collect()),
            memory: d.memory,
            memory_swap: d.swap,
            // Docker keeps its own copy of the output; bound it so a chatty vassal cannot fill the disk.
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".into(), "10m".into()),
                    ("max-file".into(), "2".into()),
                ])),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn cfg(text: &str) -> VassalConfig {
        crate::config::parse("app.ini", Path::new("/v/app.ini"), text, Path::new("/v")).expect("valid")
    }

    fn ctx<'a>(shim_host: &'a Path, dir: &'a Path, labels: &'a [(String, String)]) -> Context<'a> {
        Context {
            instance: "abc",
            extra_labels: labels,
            shim_host,
            proxy_host_dir: dir,
            proxy_container_path: "/.emperor/proxy/vassal.sock",
            image_command: vec!["/app".into(), "--serve".into()],
            image_stop_signal: None,
            wrapper: "/usr/bin/uwsgi",
            socket_names: vec!["web".into()],
            has_config: false,
        }
    }

    #[test]
    fn everything_goes_into_host_config_at_create() {
        let c = cfg(
            "[emperor]\ndocker-image = img\nsocket = name=web,/run/a.sock\ndocker-port = 127.0.0.1:8080:80\n\
                     docker-mount = /srv/data:/data:ro\ndocker-network-mode = none\ndocker-memory = 64m\n\
                     docker-dns = 1.1.1.1\ndocker-env = A=1\nenv = B=2\ndocker-user = nobody\n",
        );
        let d = c.docker.clone().unwrap();
        let (shim, dir) = (
            PathBuf::from("/usr/bin/emperor"),
            PathBuf::from("/run/emperor/abc/app.ini"),
        );
        let labels = [("emperor.test".to_string(), "1".to_string())];
        let b = container_body(&c, &d, &ctx(&shim, &dir, &labels));
        assert_eq!(
            b.entrypoint.as_deref(),
            Some(&[SHIM_PATH.to_string(), "shim".into(), "--".into()][..])
        );
        assert_eq!(
            b.cmd.as_deref(),
            Some(&["/app".to_string(), "--serve".into()][..]),
            "the image's own command"
        );
        let env = b.env.unwrap();
        assert!(env.contains(&"B=2".to_string()) && env.contains(&"A=1".to_string()));
        assert!(env.contains(&format!("{}=/.emperor/proxy/vassal.sock", shim::ENV_PROXY)));
        assert!(env.contains(&format!("{}=web", shim::ENV_FDNAMES)));
        let labels = b.labels.unwrap();
        assert_eq!(labels.get(LABEL_VASSAL).map(String::as_str), Some("app.ini"));
        assert_eq!(labels.get(LABEL_INSTANCE).map(String::as_str), Some("abc"));
        assert!(labels.contains_key(LABEL_CONFIG_HASH) && labels.contains_key("emperor.test"));
        let hc = b.host_config.unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(hc.memory, Some(64 << 20));
        assert_eq!(hc.dns, Some(vec!["1.1.1.1".to_string()]));
        let mounts = hc.mounts.unwrap();
        let targets: Vec<_> = mounts
            .iter()
            .map(|m| (m.target.clone().unwrap(), m.read_only))
            .collect();
        assert!(
            targets.contains(&("/.emperor/proxy".into(), Some(false))),
            "{targets:?}"
        );
        assert!(targets.contains(&(SHIM_PATH.into(), Some(true))), "{targets:?}");
        assert!(targets.contains(&("/data".into(), Some(true))), "{targets:?}");
        let pb = hc.port_bindings.unwrap();
        let bind = &pb["80/tcp"].as_ref().unwrap()[0];
        assert_eq!(
            (bind.host_ip.as_deref(), bind.host_port.as_deref()),
            (Some("127.0.0.1"), Some("8080"))
        );
        assert_eq!(b.user.as_deref(), Some("nobody"));
        assert_eq!(b.tty, Some(true));
    }

    #[test]
    fn uwsgi_vassals_run_the_wrapper_with_the_config_pipe() {
        let c = cfg("[emperor]\ndocker-image = img\nsocket = /run/a.sock\n[uwsgi]\nmaster = true\n");
        assert!(is_uwsgi(&c));
        let (shim, dir) = (PathBuf::from("/e"), PathBuf::from("/d"));
        let x = ctx(&shim, &dir, &[]);
        assert_eq!(payload(&c, &x), vec!["/usr/bin/uwsgi", "--ini", "emperor://app.ini"]);
        let b = container_body(&c, c.docker.as_ref().unwrap(), &x);
        assert!(b.env.unwrap().contains(&format!("{}=1", shim::ENV_STDIN_SOCKET)));
    }

    #[test]
    fn without_the_shim_uwsgi_connects_to_the_proxy_itself() {
        let c = cfg("[emperor]\ndocker-image = img\ndocker-shim = false\n[uwsgi]\nmaster = true\n");
        let (shim, dir) = (PathBuf::from("/e"), PathBuf::from("/d"));
        let b = container_body(&c, c.docker.as_ref().unwrap(), &ctx(&shim, &dir, &[]));
        assert_eq!(
            b.entrypoint.as_deref(),
            Some(&["/usr/bin/uwsgi".to_string(), "--ini".into(), "emperor://app.ini".into()][..])
        );
        assert_eq!(b.cmd, None);
        assert!(
            b.env
                .unwrap()
                .contains(&"UWSGI_EMPEROR_PROXY=/.emperor/proxy/vassal.sock".to_string())
        );
        let mounts = b.host_config.unwrap().mounts.unwrap();
        assert!(mounts.iter().all(|m| m.target.as_deref() != Some(SHIM_PATH)));
    }

    #[test]
    fn the_fingerprint_is_stable_and_sees_every_change() {
        let c = cfg("[emperor]\ndocker-image = img\nsocket = /run/a.sock\ndocker-env = A=1\ndocker-env = B=2\n");
        let (shim, dir) = (PathBuf::from("/e"), PathBuf::from("/d"));
        let labels = [("x".to_string(), "1".to_string()), ("y".to_string(), "2".to_string())];
        let body = || container_body(&c, c.docker.as_ref().unwrap(), &ctx(&shim, &dir, &labels));
        // Labels are a HashMap: its order differs between maps, the fingerprint must not.
        let fp = fingerprint(&body(), "sha256:1");
        for _ in 0..20 {
            assert_eq!(fingerprint(&body(), "sha256:1"), fp);
        }
        assert_ne!(
            fingerprint(&body(), "sha256:2"),
            fp,
            "a rebuilt image under the same tag"
        );
        let mut other = body();
        other.env.as_mut().unwrap().push("C=3".into());
        assert_ne!(fingerprint(&other, "sha256:1"), fp);
        let mut sealed = body();
        assert_eq!(
            seal(&mut sealed, "sha256:1"),
            fp,
            "sealing labels the body with its fingerprint"
        );
        assert_eq!(sealed.labels.unwrap()[LABEL_FINGERPRINT], fp);
    }

    #[test]
    fn the_fingerprint_does_not_move() {
        // Every container created ahead of time carries it: a different value for the same vassal (a new
        // hash, another canonical form, a renamed label) makes every one of them look stale after an upgrade.
        let c = cfg("[emperor]\ndocker-image = img\nsocket = name=web,/run/a.sock\ndocker-env = A=1\n");
        let (shim, dir) = (PathBuf::from("/e"), PathBuf::from("/d"));
        let labels = [("x".to_string(), "1".to_string())];
        let body = container_body(&c, c.docker.as_ref().unwrap(), &ctx(&shim, &dir, &labels));
        assert_eq!(fingerprint(&body, "sha256:1"), "64eb7eaf06c79a5f");
    }

    #[test]
    fn only_an_unstarted_container_of_the_same_vassal_and_fingerprint_is_reused() {
        use bollard::models::{ContainerConfig, ContainerState};
        let make = |status, vassal: &str, fp: &str| ContainerInspectResponse {
            state: Some(ContainerState {
                status: Some(status),
                ..Default::default()
            }),
            config: Some(ContainerConfig {
                labels: Some(HashMap::from([
                    (LABEL_VASSAL.to_string(), vassal.to_string()),
                    (LABEL_INSTANCE.to_string(), "i".to_string()),
                    (LABEL_FINGERPRINT.to_string(), fp.to_string()),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(reusable(
            &make(ContainerStateStatusEnum::CREATED, "a.ini", "f"),
            "a.ini",
            "i",
            "f"
        ));
        assert!(!reusable(
            &make(ContainerStateStatusEnum::EXITED, "a.ini", "f"),
            "a.ini",
            "i",
            "f"
        ));
        assert!(!reusable(
            &make(ContainerStateStatusEnum::RUNNING, "a.ini", "f"),
            "a.ini",
            "i",
            "f"
        ));
        assert!(!reusable(
            &make(ContainerStateStatusEnum::CREATED, "b.ini", "f"),
            "a.ini",
            "i",
            "f"
        ));
        assert!(!reusable(
            &make(ContainerStateStatusEnum::CREATED, "a.ini", "g"),
            "a.ini",
            "i",
            "f"
        ));
        assert!(!reusable(
            &make(ContainerStateStatusEnum::CREATED, "a.ini", "f"),
            "a.ini",
            "j",
            "f"
        ));
        assert!(!reusable(&ContainerInspectResponse::default(), "a.ini", "i", "f"));
    }

    #[test]
    fn proxy_paths_are_private_unless_docker_proxy() {
        let c = cfg("[emperor]\ndocker-image = img\n");
        let p = proxy_paths(c.docker.as_ref().unwrap(), Path::new("/run/e"), "abc", "app.ini");
        assert_eq!(p.host_sock, PathBuf::from("/run/e/abc/app.ini/vassal.sock"));
        assert_eq!(p.host_dir, PathBuf::from("/run/e/abc/app.ini"));
        assert_eq!(p.container_sock, "/.emperor/proxy/vassal.sock");
        assert!(p.private);
    }

    #[test]
    fn accept_runs_the_command_under_the_accept_role_of_the_shim_binary() {
        let (shim, dir) = (PathBuf::from("/e"), PathBuf::from("/d"));
        let c = cfg("[emperor]\ndocker-image = img\nsocket = 127.0.0.1:2222\naccept = true\nmax-connections = 4\n");
        let b = container_body(&c, c.docker.as_ref().unwrap(), &ctx(&shim, &dir, &[]));
        assert_eq!(
            b.entrypoint.as_deref(),
            Some(&[SHIM_PATH.to_string(), "shim".into(), "--".into()][..])
        );
        let cmd = b.cmd.unwrap();
        assert_eq!(
            cmd,
            [SHIM_PATH, "accept", "--max-connections", "4", "--", "/app", "--serve"],
            "the image's own command, once per connection"
        );
    }

    #[test]
    fn the_images_stopsignal_unless_the_vassal_names_one() {
        let (shim, dir) = (PathBuf::from("/e"), PathBuf::from("/d"));
        let mut image_ctx = ctx(&shim, &dir, &[]);
        image_ctx.image_stop_signal = Some("SIGQUIT".into());
        let signal = |text: &str, ctx: &Context<'_>| {
            let c = cfg(text);
            container_body(&c, c.docker.as_ref().unwrap(), ctx).stop_signal
        };
        let plain = "[emperor]\ndocker-image = img\n";
        let own = "[emperor]\ndocker-image = img\nstop-signal = INT\n";
        assert_eq!(signal(plain, &image_ctx).as_deref(), Some("SIGQUIT"), "the image's");
        assert_eq!(signal(own, &image_ctx).as_deref(), Some("SIGINT"), "the vassal's wins");
        assert_eq!(signal(plain, &ctx(&shim, &dir, &[])), None, "neither: Docker's SIGTERM");
    }

    #[test]
    fn exec_replaces_the_image_command() {
        let c = cfg("[emperor]\ndocker-image = img\nexec = /bin/sh -c 'echo hi'\n");
        let (shim, dir) = (PathBuf::from("/e"), PathBuf::from("/d"));
        assert_eq!(payload(&c, &ctx(&shim, &dir, &[])), vec!["/bin/sh", "-c", "echo hi"]);
    }
}
