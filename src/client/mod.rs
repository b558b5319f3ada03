//! The client commands: short-lived processes an operator runs against a running emperor (`status` reads
//! its --emperor-stats socket; `restart|stop|start` use its --emperor-control socket) or against Docker
//! (`shell`), or offline (`check`: vassal files against a policy, no emperor needed). They live apart
//! from `emperor::`, which is the server side of those sockets, so that `client::control` (this end) is
//! never mistaken for `emperor::control` (the other end).

pub mod check;
pub mod control;
pub mod shell;
pub mod status;
