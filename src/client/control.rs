//! `emperor restart|stop|start <vassal>`: the client of the emperor's `--emperor-control` socket.
//! Sends one line (`restart app.ini`), prints the one-line answer, and exits 0 on `ok`, 1 otherwise.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::ControlArgs;

/// The emperor answers within its own 5 s request limit; a little more here.
const TIMEOUT: Duration = Duration::from_secs(10);

pub fn main(verb: &str, args: ControlArgs) -> ExitCode {
    let path = args.control.display();
    if args.vassal.is_empty() || args.vassal.contains(['\n', '\r']) {
        eprintln!("emperor {verb}: {:?} is not a vassal name", args.vassal);
        return ExitCode::from(2);
    }
    let reply = match request(&args.control, &format!("{verb} {}\n", args.vassal)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "emperor {verb}: cannot use the control socket {path}: {e} (is the emperor running with --emperor-control {path}?)"
            );
            return ExitCode::FAILURE;
        }
    };
    if let Some(msg) = reply.strip_prefix("ok") {
        println!("{}", msg.trim());
        ExitCode::SUCCESS
    } else {
        eprintln!("emperor {verb}: {}", reply.strip_prefix("error ").unwrap_or(&reply));
        ExitCode::FAILURE
    }
}

fn request(path: &std::path::Path, line: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    // An emperor that refuses may answer and close before reading: its answer is still there to read.
    if let Err(e) = s.write_all(line.as_bytes())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e);
    }
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply)?;
    if reply.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the emperor closed the connection without an answer",
        ));
    }
    Ok(reply.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, ControlArgs, Role};

    #[test]
    fn subcommands() {
        let cli = Cli::try_parse_from(["emperor", "restart", "a.ini", "--control", "/x.sock"]).unwrap();
        assert!(
            matches!(cli.role, Some(Role::Restart(ControlArgs { ref vassal, ref control }))
            if vassal == "a.ini" && control.to_str() == Some("/x.sock"))
        );
        let cli = Cli::try_parse_from(["emperor", "stop", "a"]).unwrap();
        assert!(matches!(cli.role, Some(Role::Stop(_))));
        let cli = Cli::try_parse_from(["emperor", "start", "a"]).unwrap();
        assert!(matches!(cli.role, Some(Role::Start(_))));
        assert!(
            Cli::try_parse_from(["emperor", "stop"]).is_err(),
            "a vassal is required"
        );
        let cli = Cli::try_parse_from(["emperor", "./stop"]).unwrap();
        assert!(cli.role.is_none());
    }
}
