//! Test modules; they live in a subdirectory so Cargo does not build each one as its own test crate.

mod accept;
mod check;
mod config_errors;
mod control;
mod docker;
mod faults;
mod fleet;
mod front;
mod install;
mod lifecycle;
mod logs;
mod mail;
mod nginx;
mod on_demand;
mod pg_schema;
mod routes;
mod shell;
mod shim;
mod signals;
mod sockets;
mod ssh;
mod stats;
mod throttle;
mod tyrant;
mod uwsgi;
mod uwsgi_docker;
