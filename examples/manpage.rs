//! Writes emperor's man pages into a directory: `emperor.1` and one `emperor-<command>.1` per visible subcommand.
//! They are rendered from the same clap definition as `--help`, so the two cannot disagree; `scripts/build-deb` runs
//! this and gzips them into the package. An example rather than a subcommand, so that the generator (a
//! dev-dependency) is not part of the binary every Docker vassal mounts as its shim.
//!
//! Usage: `cargo run --release --example manpage -- <DIR>`

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: manpage <DIR>");
        return ExitCode::from(2);
    };
    let dir = PathBuf::from(dir);
    match clap_mangen::generate_to(emperor::command(), &dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("manpage: writing into {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
