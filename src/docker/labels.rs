//! The labels every container of an emperor carries (../shared/DESIGN.md "Containers").
//!
//! They are how an emperor recognises its own containers across its restarts (reaping orphans, replacing
//! a stale container, refusing a foreign one) and how `emperor shell` tells a vassal's container from a
//! stranger's: renaming one orphans every container already running.

/// The vassal's name (`app.ini`); its presence marks a container as an emperor's.
pub const LABEL_VASSAL: &str = "emperor.vassal";
/// The emperor's instance id, derived from its vassals directory.
pub const LABEL_INSTANCE: &str = "emperor.instance";
/// A hash of the vassal file's `[emperor]` section.
pub const LABEL_CONFIG_HASH: &str = "emperor.config-hash";
/// The [`fingerprint`](super::fingerprint) of the container's whole definition: a container created ahead of
/// time for an on-demand vassal is started only if it is exactly the one the bridge would create now.
pub const LABEL_FINGERPRINT: &str = "emperor.fingerprint";
/// The `docker-cidfile` the bridge writes for the container, if the vassal has one: whoever removes the
/// container (its bridge, the next bridge replacing a stale one, the emperor reaping an orphan) removes the
/// file with it ([`forget_cidfile`]).
pub const LABEL_CIDFILE: &str = "emperor.cidfile";
/// Replica `K` (from 1) of a vassal with `replicas`; the first (`K` = 0) has no such label. A bridge replaces
/// stale containers of its own replica only, never a sibling that serves.
pub const LABEL_REPLICA: &str = "emperor.replica";

/// Removes the cidfile a removed container's labels name, if it still holds that container's id (an
/// overlapping reload's new container may have written its own id there); what else is there (a symlink,
/// a FIFO, another file) is left alone ([`crate::sys::cidfile`]).
pub fn forget_cidfile(labels: &std::collections::HashMap<String, String>, id: &str) {
    if let Some(path) = labels.get(LABEL_CIDFILE)
        && let Err(e) = crate::sys::cidfile::remove(std::path::Path::new(path), id)
    {
        log::debug!("cannot remove docker-cidfile {path}: {e}");
    }
}
