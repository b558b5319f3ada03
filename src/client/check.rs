//! `emperor check [--policy FILE] [--tyrant] [--tyrant-nofollow] FILE...`: what the emperor would say
//! about each vassal file, offline, for a tenant's deploy pipeline. Each file is parsed (config errors in
//! their usual format); with `--tyrant` or `--policy` its owner is taken as tyrant mode takes it and it
//! is checked against the policy (the file given, else the built-in one). Every problem is printed, one
//! line each, on stdout; a file with none gets `<file>: ok`, with what the policy forces on it. Exit 1
//! if anything was wrong (the policy file included), 0 otherwise.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::cli::CheckArgs;
use crate::config::{self, printable};
use crate::policy::{self, Owner, Policy};

pub fn main(args: CheckArgs) -> ExitCode {
    let tyrant = args.tyrant || args.tyrant_nofollow;
    let mut failed = false;
    // A broken policy file is reported, and then no file is checked against anything but its syntax:
    // checking against the built-in policy instead would print refusals the real one may not make.
    let policy = match &args.policy {
        Some(path) => match policy::load(path) {
            Ok(p) => Some(p),
            Err(e) => {
                println!("{e}");
                failed = true;
                None
            }
        },
        None if tyrant => Some(Policy::built_in()),
        None => None,
    };
    let policy = policy.map(|p| match docker_host_socket() {
        Some(sock) => p.with_docker_socket(&sock),
        None => p,
    });
    let policy_broken = args.policy.is_some() && policy.is_none();
    for file in &args.files {
        match check_file(file, tyrant, !args.tyrant_nofollow, policy.as_ref()) {
            Ok(_) if policy_broken => println!(
                "{}: parses; not checked against the policy, which has errors",
                printable(&file.display().to_string())
            ),
            Ok(summary) => println!("{}", printable(&summary)),
            Err(lines) => {
                failed = true;
                for line in lines {
                    println!("{line}");
                }
            }
        }
    }
    if failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

/// One file: `Ok` with its `ok` line, or every problem's line.
fn check_file(file: &Path, tyrant: bool, follow: bool, policy: Option<&Policy>) -> Result<String, Vec<String>> {
    // The emperor takes relative paths from the vassals directory, which is the file's directory.
    let dir = vassals_dir(file);
    let cfg = config::load(file, &dir).map_err(|e| vec![e.to_string()])?;
    let shown = file.display();
    if !tyrant && policy.is_none() {
        return Ok(format!("{shown}: ok"));
    }
    let owner = Owner::of_file(file, follow)
        .map_err(|e| vec![printable(&format!("{shown}: cannot stat: {e}")).into_owned()])?;
    if tyrant && let Some(refusal) = policy::refuse_root_owner(file, &owner) {
        return Err(vec![refusal.to_string()]);
    }
    match policy.map(|p| p.check(&cfg, &owner)) {
        None => Ok(format!("{shown}: ok")),
        Some(Ok(decision)) => Ok(format!("{shown}: ok ({decision})")),
        Some(Err(refusals)) => Err(refusals.iter().map(ToString::to_string).collect()),
    }
}

/// The directory of `file`, absolute.
fn vassals_dir(file: &Path) -> PathBuf {
    let parent = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf())
}

/// `DOCKER_HOST`'s socket path when it names a unix socket: never mounted either.
fn docker_host_socket() -> Option<PathBuf> {
    let host = std::env::var("DOCKER_HOST").ok()?;
    host.strip_prefix("unix://").map(PathBuf::from)
}
