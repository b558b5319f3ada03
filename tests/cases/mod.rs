//! Test modules; they live in a subdirectory so Cargo does not build each one as its own test crate.

mod config_errors;
mod docker;
mod lifecycle;
mod nginx;
mod on_demand;
mod routes;
mod shim;
mod signals;
mod sockets;
mod stats;
mod throttle;
mod uwsgi;
mod uwsgi_docker;
