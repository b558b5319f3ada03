//! The contracts between an emperor, its bridges and the containers they make, in one place that belongs
//! to neither role.
//!
//! The emperor creates containers ahead of time, reaps its orphans, pauses idle vassals and reads what a
//! bridge recorded; a bridge creates, replaces and supervises one container; `emperor shell` enters one.
//! Each of them must agree with the others on the labels, on the exact container a vassal gets (its
//! fingerprint), on the bridge's record file and on how the daemon is reached. Kept here, a change to any of
//! them is one change, and neither role reaches into the other's code for it.
//!
//! - [`labels`]: what marks a container as an emperor's, and whose;
//! - [`plan`]: the container a vassal gets, and its fingerprint;
//! - [`owner`]: whether the emperor that labelled a container is still running;
//! - [`record`]: what a bridge leaves on disk for the emperor (its container, its reason for giving up);
//! - [`daemon`]: the one client constructor and the reading of the daemon's refusals;
//! - [`body`]: a request body written by a thread (an image's archive, a build context).

pub mod body;
pub mod daemon;
pub mod labels;
pub mod owner;
pub mod plan;
pub mod record;

pub use daemon::{is_conflict, is_not_found, message, remove, short, status};
pub use labels::{LABEL_INSTANCE, LABEL_REPLICA, LABEL_VASSAL};
pub use plan::{Inputs, PROXY_DIR, Plan, ProxyPaths, SHIM_PATH, is_uwsgi, make_proxy_dir, plan, reusable};
