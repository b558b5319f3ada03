//! `emperor`: one binary with several roles (emperor, bridge, shim, accept and the clients). It is a library
//! only so that the fuzz targets in `fuzz/` and the corpus replay in `tests/fuzz_corpora.rs` can reach
//! the parsers through [`fuzzing`]; everything else stays private to the crate.

mod accept;
mod bridge;
mod build;
mod cli;
mod client;
mod config;
mod docker;
mod emperor;
mod exit;
mod fleet;
pub mod fuzzing;
mod pack;
mod policy;
mod protocol;
mod proxy_socket;
mod shim;
mod sys;

use std::io::Write;
use std::process::ExitCode;

/// The command line's definition, for the man pages (`examples/manpage.rs`, run by `scripts/build-deb`).
#[doc(hidden)]
pub fn command() -> clap::Command {
    <cli::Cli as clap::CommandFactory>::command()
}

/// Parses the command line (and an `--ini` file) and hands over to a role.
pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("EMPEROR_LOG", "info"))
        .format(|buf, record| {
            let ts = buf.timestamp_millis();
            writeln!(buf, "{ts} {:<5} {}", record.level(), record.args())
        })
        .init();
    let cli = match cli::parse(std::env::args_os().collect()) {
        Ok((cli, note)) => {
            if let Some(note) = note {
                log::info!("{note}");
            }
            cli
        }
        Err(cli::Refusal::Usage(e)) => e.exit(),
        Err(cli::Refusal::Ini(e)) => {
            log::error!("{e}");
            return ExitCode::from(2);
        }
    };
    match cli.role {
        Some(cli::Role::Status(args)) => client::status::main(args),
        Some(cli::Role::Restart(args)) => client::control::main("restart", args),
        Some(cli::Role::Stop(args)) => client::control::main("stop", args),
        Some(cli::Role::Start(args)) => client::control::main("start", args),
        Some(cli::Role::Shell(args)) => client::shell::main(args),
        Some(cli::Role::Check(args)) => client::check::main(args),
        Some(cli::Role::Front(args)) => fleet::front::main(args),
        Some(cli::Role::Pack(args)) => pack::main(args),
        Some(cli::Role::Shim(args)) => shim::main(args),
        Some(cli::Role::Bridge(args)) => bridge::main(args),
        Some(cli::Role::Accept(args)) => accept::main(args),
        None => match cli.emperor.into_options() {
            Ok(opts) => emperor::run(opts),
            Err(e) => {
                log::error!("{e}");
                ExitCode::from(2)
            }
        },
    }
}
