//! Making the image: `docker import` through the Engine API (`POST /images/create?fromSrc=-`), with the
//! tree streamed as the request body.
//!
//! Import rather than a build: the archive is the image's root filesystem as it is, owners and modes
//! included (a `COPY` in a Dockerfile would make every file root's), in one layer, with no Dockerfile,
//! no build cache and nothing pulled. The command and labels come as import's `changes` (Dockerfile
//! lines the daemon applies to the image's config).
//!
//! The archive is written by a thread into the request's body ([`crate::docker::body`]), so memory stays
//! small however big the image. A failure while writing (a file that changed) ends the body early; the
//! writer's error is the one reported, since the daemon can only say that the stream broke.

use std::io;
use std::path::Path;
use std::time::Duration;

use bollard::query_parameters::CreateImageOptions;
use futures_util::StreamExt;

use super::archive::{self, Totals};
use super::rootfs::Rootfs;

/// How long the whole import may take (a big image on a slow disk).
const IMPORT_TIMEOUT: Duration = Duration::from_secs(900);

/// Imports `rootfs` as `tag` with `changes`; returns the image id and what the archive held.
pub async fn import(
    socket: Option<&Path>,
    tag: &str,
    changes: Vec<String>,
    rootfs: Rootfs,
) -> Result<(String, Totals), String> {
    let docker = crate::docker::daemon::connect(socket, crate::docker::daemon::EMPEROR_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?
        .with_timeout(IMPORT_TIMEOUT);
    let (body, writer) = crate::docker::body::from_writer(move |out| archive::write(&rootfs, out));
    let options = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(tag.to_string()),
        changes,
        ..Default::default()
    };
    let mut answers = docker.create_image(Some(options), Some(bollard::body_try_stream(body)), None);
    let mut id = None;
    let mut failed = None;
    while let Some(answer) = answers.next().await {
        match answer {
            Ok(info) => id = info.status.or(id),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    drop(answers);
    let written = writer.join().map_err(|_| "the archive writer panicked".to_string())?;
    let refused = |e| format!("the Docker daemon refused the import of {tag}: {e}");
    let totals = match (written, failed) {
        (Ok(totals), None) => totals,
        // The daemon answered without reading on: its answer says why.
        (Err(e), Some(daemon)) if e.kind() == io::ErrorKind::BrokenPipe => return Err(refused(daemon)),
        (Err(e), _) => return Err(format!("writing the image's files: {e}")),
        (Ok(_), Some(daemon)) => return Err(refused(daemon)),
    };
    let id = id.ok_or_else(|| format!("the Docker daemon did not say which image it made for {tag}"))?;
    Ok((id.trim().to_string(), totals))
}
