//! The process plumbing that needs `unsafe`: forking, placing fds, the steps between `fork` and `exec`,
//! reaping children and the signals of a supervisor (`supervise`, shared by the shim and the accept role).
//!
//! Both the emperor (spawning vassals) and the shim (PID 1 in a container) start programs with an exact
//! fd layout and a `LISTEN_PID` that only exists after the fork, which `std::process::Command` cannot
//! do. Keeping that code here, once, means one place to review for soundness and for the
//! async-signal-safety rules, instead of two copies that drift. The roles keep their policy (which
//! fds, which environment, what to do with a failure); this module only does the mechanics.
//!
//! `cidfile` and `tenant` are here because they are the files root writes where a vassal file says.
//!
//! `hash` is here because it is the one helper every role shares and it has no better home.

pub mod child;
pub mod cidfile;
pub mod fd;
pub mod fork;
pub mod hash;
pub mod supervise;
pub mod tenant;
pub mod users;
