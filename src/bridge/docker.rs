//! What the bridge asks of the Docker daemon, built as plain data.
//!
//! The container's whole definition is one [`ContainerCreateBody`], everything in `HostConfig` at
//! create time (uwsgi-docker put the host config in `/start`, which Docker dropped in API 1.24). It is
//! built by a pure function from the vassal's config so that it can be unit-tested against what
//! uwsgi-docker would have sent, without a daemon.

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, PortBinding};

use crate::config::{DockerConfig, VassalConfig};
use crate::shim;

/// Where the emperor's binary (the shim) appears inside every container.
pub const SHIM_PATH: &str = "/.emperor/emperor";
/// Where the proxy socket's private directory appears inside the container, unless `docker-proxy`.
pub const PROXY_DIR: &str = "/.emperor/proxy";
/// The proxy socket's file name inside that directory.
pub const PROXY_NAME: &str = "vassal.sock";

/// Labels of every container (../shared/DESIGN.md "Containers").
pub const LABEL_VASSAL: &str = "emperor.vassal";
pub const LABEL_INSTANCE: &str = "emperor.instance";
pub const LABEL_CONFIG_HASH: &str = "emperor.config-hash";

/// Force-removes a container with its anonymous volumes. Already gone (404) or already being removed
/// (409) count as done.
pub async fn remove(docker: &bollard::Docker, id: &str) -> Result<(), bollard::errors::Error> {
    let opts = bollard::query_parameters::RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(opts)).await {
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404 | 409, ..
        }) => Ok(()),
        other => other,
    }
}

/// Everything about the container that does not come from the vassal file.
#[derive(Debug)]
pub struct Context<'a> {
    pub instance: &'a str,
    pub extra_labels: &'a [(String, String)],
    /// The emperor's binary on the host, bind-mounted read-only as the shim.
    pub shim_host: &'a Path,
    /// The proxy socket's directory on the host and inside the container.
    pub proxy_host_dir: &'a Path,
    pub proxy_container_path: &'a str,
    /// The image's own Entrypoint + Cmd, used when the vassal sets no `exec`.
    pub image_command: Vec<String>,
    /// Program run for `[uwsgi]` vassals inside the container (`--emperor-wrapper`).
    pub wrapper: &'a str,
    /// Names of the listening sockets, in fd order.
    pub socket_names: Vec<String>,
    /// Whether a config fd follows the control fd in the hand-over.
    pub has_config: bool,
}

/// The command the vassal runs inside its container, before the shim is put in front of it.
pub fn payload(cfg: &VassalConfig, ctx: &Context<'_>) -> Vec<String> {
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
pub fn container_body(cfg: &VassalConfig, d: &DockerConfig, ctx: &Context<'_>) -> ContainerCreateBody {
    let mut env: Vec<String> = cfg.env.iter().chain(&d.env).map(|(k, v)| format!("{k}={v}")).collect();
    let payload = payload(cfg, ctx);
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
        user: d.user.clone(),
        stop_signal: cfg.stop_signal.map(|s| s.as_str().to_string()),
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
    fn exec_replaces_the_image_command() {
        let c = cfg("[emperor]\ndocker-image = img\nexec = /bin/sh -c 'echo hi'\n");
        let (shim, dir) = (PathBuf::from("/e"), PathBuf::from("/d"));
        assert_eq!(payload(&c, &ctx(&shim, &dir, &[])), vec!["/bin/sh", "-c", "echo hi"]);
    }
}
