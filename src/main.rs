//! `emperor`: one binary; the command line and the roles live in the library (`lib.rs`).

fn main() -> std::process::ExitCode {
    emperor::main()
}
