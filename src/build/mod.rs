//! `docker-build`: an app directory becomes the image its vassal runs (the dokku seed).
//!
//! The emperor reads the context ([`context`]: no symlink followed, nothing the tenant could not read),
//! hashes it, and names the image after the vassal and the hash: `emperor/<repository>:<hash>`
//! ([`repository`], [`tag`]). An image under that tag whose context label holds the same hash is the
//! build's answer at once (an unchanged context is never rebuilt); otherwise the daemon's classic builder
//! builds it from the archived context ([`build`], offline: `FROM` takes local images only, nothing is
//! pulled, `RUN` steps have no network). Once the new container serves, [`prune`] removes the vassal's
//! older tags, each without force: the daemon refuses to remove an image any container still uses (another
//! replica not replaced yet, another vassal that names it), and such a tag is tried again later.
//!
//! Images carry a label of their own, not the containers' ones: a container created from an image inherits
//! its labels, so an image labelled `emperor.vassal` would make any container of it look like the emperor's.
//! It is one label (`emperor.build = vassal=<name> instance=<id> context=<sha256>`) because the classic
//! builder adds each label as a step of its own, which costs a container and a commit on every build.

pub mod context;
mod ignore;

use std::collections::HashMap;
use std::time::Instant;

use bollard::Docker;
use bollard::query_parameters::{BuildImageOptions, ListImagesOptions, RemoveImageOptions};
use futures_util::StreamExt;

/// Who an image was built for and from what: `vassal=<container name> instance=<emperor instance>
/// context=<SHA-256 of the context>`.
pub const LABEL_BUILD: &str = "emperor.build";
/// Hex digits of the context hash in a tag.
const TAG_HASH_LEN: usize = 16;
/// Longest repository name made here (Docker's limit on a whole reference is 255).
const REPOSITORY_MAX: usize = 200;

/// `emperor/<name>` for a vassal's container name (the vassal name after `--docker-name-prefix`).
/// A repository name is lowercase, with components of `[a-z0-9]` joined by `.`, `_`, `__` or runs of `-`;
/// a container name may hold capitals and other runs of separators. A name that is already valid is used
/// as it is (`app.ini` is `emperor/app.ini`); any other is lowercased, each invalid run of separators
/// becomes `-`, trailing separators go, and `-` and 8 hex digits of the name's hash are appended, so two
/// names that map alike (`App.ini`, `app.ini`) still get two repositories.
pub fn repository(container_name: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    for c in container_name.chars() {
        if c.is_ascii_alphanumeric() {
            if !run.is_empty() && !out.is_empty() {
                let ok = matches!(run.as_str(), "." | "_" | "__") || run.chars().all(|c| c == '-');
                out.push_str(if ok { &run } else { "-" });
            }
            run.clear();
            out.push(c.to_ascii_lowercase());
        } else {
            run.push(c);
        }
    }
    if out != container_name || out.len() > REPOSITORY_MAX {
        out.truncate(REPOSITORY_MAX);
        out = out.trim_end_matches(['.', '_', '-']).to_owned();
        let hash = crate::sys::hash::fnv1a(container_name.as_bytes()) as u32;
        out = format!("{out}-{hash:08x}");
    }
    format!("emperor/{out}")
}

/// The tag of a context with `hash` (SHA-256 hex): its first 16 digits.
pub fn tag(repository: &str, hash: &str) -> String {
    format!("{repository}:{}", &hash[..TAG_HASH_LEN.min(hash.len())])
}

/// Who an image is built for: what labels it and what a prune may remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The vassal's container name.
    pub vassal: String,
    pub instance: String,
    /// `--docker-label`s, put on the image too.
    pub extra_labels: Vec<(String, String)>,
}

impl Owner {
    /// The [`LABEL_BUILD`] value of an image built for this owner from a context with `hash`.
    pub fn label(&self, hash: &str) -> String {
        format!("vassal={} instance={} context={hash}", self.vassal, self.instance)
    }
}

/// The fields of a [`LABEL_BUILD`] value: (vassal, instance, context).
fn parse_label(value: &str) -> Option<(&str, &str, &str)> {
    let mut fields = value.split(' ');
    let vassal = fields.next()?.strip_prefix("vassal=")?;
    let instance = fields.next()?.strip_prefix("instance=")?;
    let context = fields.next()?.strip_prefix("context=")?;
    fields.next().is_none().then_some((vassal, instance, context))
}

/// The id of the image under `tag`, if it was built from a context with `hash`; `None` when there is no
/// such image, or it holds something else (it is then built anew and takes the tag).
pub async fn existing(docker: &Docker, tag: &str, hash: &str) -> Result<Option<String>, bollard::errors::Error> {
    match docker.inspect_image(tag).await {
        Ok(image) => {
            let label = image
                .config
                .as_ref()
                .and_then(|c| c.labels.as_ref())
                .and_then(|l| l.get(LABEL_BUILD))
                .and_then(|v| parse_label(v));
            Ok(label
                .is_some_and(|(_, _, context)| context == hash)
                .then(|| image.id.unwrap_or_default()))
        }
        Err(e) if crate::docker::is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Why a build failed: the step it was at (`2/3 (COPY app /app)`), and the words of whoever failed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub step: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.step {
            Some(step) => write!(f, "step {step}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// What a build made: the image id, and how long it took.
#[derive(Debug, Clone)]
pub struct Built {
    pub id: String,
    pub secs: f64,
}

/// Builds `ctx` as `tag` with the classic builder; every line of the daemon's output goes to `line`
/// (`Step N/M : ...` lines as `build step N/M: ...`, the others as `build: ...`).
pub async fn build(
    docker: &Docker,
    ctx: context::Context,
    tag: &str,
    owner: &Owner,
    mut line: impl FnMut(&str),
) -> Result<Built, Failed> {
    let started = Instant::now();
    let mut labels: HashMap<String, String> = owner.extra_labels.iter().cloned().collect();
    labels.insert(LABEL_BUILD.into(), owner.label(&ctx.hash));
    let options = BuildImageOptions {
        dockerfile: "Dockerfile".into(),
        t: Some(tag.to_owned()),
        rm: true,
        forcerm: true,
        networkmode: Some("none".into()),
        labels: Some(labels),
        ..Default::default()
    };
    let (body, writer) = crate::docker::body::from_writer(move |out| ctx.write_tar(out));
    let mut answers = docker.build_image(options, None, Some(bollard::body_try_stream(body)));
    let (mut step, mut id, mut failed) = (None, None, None);
    while let Some(answer) = answers.next().await {
        match answer {
            Ok(info) => {
                for l in info.stream.as_deref().unwrap_or_default().lines() {
                    let l = l.trim_end();
                    match l.strip_prefix("Step ") {
                        Some(rest) => {
                            let (n, what) = rest.split_once(" : ").unwrap_or((rest, ""));
                            line(&format!("build step {n}: {what}"));
                            step = Some(format!("{n} ({what})"));
                        }
                        None if !l.is_empty() => line(&format!("build: {l}")),
                        None => {}
                    }
                }
                if let Some(aux) = info.aux {
                    id = aux.id.or(id);
                }
            }
            Err(e) => {
                failed = Some(match e {
                    bollard::errors::Error::DockerStreamError { error } => error,
                    e => crate::docker::message(&e),
                });
                break;
            }
        }
    }
    drop(answers);
    let written = tokio::task::spawn_blocking(move || writer.join())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_else(|| Err(std::io::Error::other("the context writer panicked")));
    let fail = |message: String| Failed {
        step: step.clone(),
        message: message.trim().to_owned(),
    };
    match (written, failed) {
        // The daemon stopped reading: its answer says why.
        (Err(e), Some(daemon)) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(fail(daemon)),
        (Err(e), _) => Err(Failed {
            step: None,
            message: format!("cannot send the build context: {e}"),
        }),
        (Ok(_), Some(daemon)) => Err(fail(daemon)),
        (Ok(_), None) => match id {
            Some(id) => Ok(Built {
                id,
                secs: started.elapsed().as_secs_f64(),
            }),
            None => Err(fail("the Docker daemon did not say which image it built".into())),
        },
    }
}

/// What a prune did: the tags removed, and those a container still uses (tried again later).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub removed: Vec<String>,
    pub in_use: Vec<String>,
}

/// Removes the tags of `repository` that the emperor built for `owner` (by the image labels), except
/// `keep`; never with force, so an image a container uses stays (see the module doc). `keep = None`
/// removes them all (the vassal is gone).
pub async fn prune(
    docker: &Docker,
    repository: &str,
    owner: &Owner,
    keep: Option<&str>,
) -> Result<Pruned, bollard::errors::Error> {
    let filters = HashMap::from([("label".to_string(), vec![LABEL_BUILD.to_string()])]);
    let images = docker
        .list_images(Some(ListImagesOptions {
            filters: Some(filters),
            ..Default::default()
        }))
        .await?;
    let prefix = format!("{repository}:");
    let mut done = Pruned::default();
    let built_for_owner = |i: &&bollard::models::ImageSummary| {
        i.labels
            .get(LABEL_BUILD)
            .and_then(|v| parse_label(v))
            .is_some_and(|(vassal, instance, _)| vassal == owner.vassal && instance == owner.instance)
    };
    for tag in images.iter().filter(built_for_owner).flat_map(|i| &i.repo_tags) {
        let ours = tag
            .strip_prefix(&prefix)
            .is_some_and(|h| h.len() == TAG_HASH_LEN && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ours || Some(tag.as_str()) == keep {
            continue;
        }
        match docker.remove_image(tag, None::<RemoveImageOptions>, None).await {
            Ok(_) => done.removed.push(tag.clone()),
            Err(e) if crate::docker::is_not_found(&e) => {}
            Err(e) if crate::docker::is_conflict(&e) => done.in_use.push(tag.clone()),
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_are_valid_and_distinct() {
        assert_eq!(repository("app.ini"), "emperor/app.ini");
        assert_eq!(repository("t1-my_app.ini"), "emperor/t1-my_app.ini");
        assert_eq!(repository("a--b__c.ini"), "emperor/a--b__c.ini");
        let upper = repository("App.ini");
        assert!(
            upper.starts_with("emperor/app.ini-") && upper.len() == "emperor/app.ini-".len() + 8,
            "{upper}"
        );
        assert_ne!(upper, repository("APP.ini"));
        let odd = repository("a._b.-c___d.ini.");
        assert!(odd.starts_with("emperor/a-b-c-d.ini-"), "{odd}");
        let long = repository(&"x".repeat(300));
        assert!(long.len() <= "emperor/".len() + REPOSITORY_MAX + 9, "{}", long.len());
        // Every name is a valid repository path component.
        for name in ["app.ini", "App.ini", "a._b.-c___d.ini.", "9.ini", "x-.ini", "x_-_y"] {
            let repo = repository(name);
            let comp = repo.strip_prefix("emperor/").unwrap();
            assert!(valid_component(comp), "{name} -> {repo}");
        }
        assert_eq!(
            tag("emperor/app.ini", &"ab".repeat(32)),
            format!("emperor/app.ini:{}", "ab".repeat(8))
        );
    }

    #[test]
    fn the_build_label_round_trips() {
        let owner = Owner {
            vassal: "app.ini".into(),
            instance: "0123abcd".into(),
            extra_labels: Vec::new(),
        };
        let label = owner.label("ff00");
        assert_eq!(label, "vassal=app.ini instance=0123abcd context=ff00");
        assert_eq!(parse_label(&label), Some(("app.ini", "0123abcd", "ff00")));
        for bad in [
            "",
            "vassal=a",
            "instance=x vassal=a context=c",
            "vassal=a instance=b context=c d",
        ] {
            assert_eq!(parse_label(bad), None, "{bad}");
        }
    }

    /// Docker's `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`.
    fn valid_component(s: &str) -> bool {
        let mut parts = Vec::new();
        let mut cur = String::new();
        let mut seps = Vec::new();
        let mut sep = String::new();
        for c in s.chars() {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                if !sep.is_empty() {
                    seps.push(std::mem::take(&mut sep));
                    parts.push(std::mem::take(&mut cur));
                }
                cur.push(c);
            } else if matches!(c, '.' | '_' | '-') {
                if cur.is_empty() {
                    return false;
                }
                sep.push(c);
            } else {
                return false;
            }
        }
        parts.push(cur);
        sep.is_empty()
            && parts.iter().all(|p| !p.is_empty())
            && seps
                .iter()
                .all(|s| matches!(s.as_str(), "." | "_" | "__") || s.chars().all(|c| c == '-'))
    }
}
