//! `emperor status`: reads the document a running emperor serves on `--emperor-stats` and prints a
//! table (or, with `--json`, the document as received).

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::cli::StatusArgs;

const TIMEOUT: Duration = Duration::from_secs(5);

pub fn main(args: StatusArgs) -> ExitCode {
    let raw = match fetch(&args.stats) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "emperor status: cannot read the stats from {}: {e} (is the emperor running with --emperor-stats {}?)",
                args.stats, args.stats
            );
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let _ = out.write_all(&raw);
        return ExitCode::SUCCESS;
    }
    match render(&raw, crate::emperor::unix_now()) {
        Ok(text) => {
            let _ = out.write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("emperor status: {} did not send valid JSON: {e}", args.stats);
            ExitCode::FAILURE
        }
    }
}

/// The table for what the stats socket sent. Whatever sits behind that address is trusted with no
/// more than the terminal's contents: apart from the socket so that the fuzz target (`fuzz/`) feeds
/// it the bytes a broken or hostile server could send.
pub fn render(raw: &[u8], now: u64) -> Result<String, serde_json::Error> {
    let doc: Value = serde_json::from_slice(raw)?;
    Ok(table(&doc, now))
}

/// Connects (TCP if the address has a `:` and no `/`, as the server decides) and reads to EOF.
fn fetch(addr: &str) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if addr.contains(':') && !addr.contains('/') && !addr.starts_with('@') {
        let sa: std::net::SocketAddr = addr
            .parse()
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a unix path or an IP:port"))?;
        let mut s = std::net::TcpStream::connect_timeout(&sa, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.read_to_end(&mut buf)?;
    } else {
        let mut s = match addr.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let sa = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                std::os::unix::net::UnixStream::connect_addr(&sa)?
            }
            None => std::os::unix::net::UnixStream::connect(addr)?,
        };
        s.set_read_timeout(Some(TIMEOUT))?;
        s.read_to_end(&mut buf)?;
    }
    if buf.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "empty answer"));
    }
    Ok(buf)
}

/// The readable table: one row per vassal, then one line per throttled vassal.
fn table(doc: &Value, now: u64) -> String {
    // The document comes from a socket and its strings from vassal files: no raw control byte reaches the terminal.
    let s = |v: &Value| match v {
        Value::String(s) => crate::config::printable(s).into_owned(),
        Value::Null => "-".into(),
        // serde_json escapes only the C0 controls in the strings of a value it prints: DEL and the C1
        // controls (U+009B is a CSI on some terminals) would still reach the terminal.
        other => crate::config::printable(&other.to_string()).into_owned(),
    };
    let mut rows = vec![
        [
            "VASSAL",
            "KIND",
            "STATE",
            "SINCE",
            "PID",
            "RESTARTS",
            "MEM",
            "CPU",
            "SOCKETS (connections)",
            "NEXT START",
        ]
        .map(String::from),
    ];
    let empty = Vec::new();
    let vassals = doc["vassals"].as_array().unwrap_or(&empty);
    for v in vassals {
        let pid = match v["pid"].as_i64() {
            Some(p) if p > 0 => p.to_string(),
            _ => "-".into(),
        };
        let sockets: Vec<String> = v["sockets"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|so| {
                let conns = so["connections"].as_u64().map_or("?".into(), |c| c.to_string());
                match so["queue"].as_u64() {
                    Some(q) if q > 0 => format!("{} ({conns}, {q} queued)", s(&so["addr"])),
                    _ => format!("{} ({conns})", s(&so["addr"])),
                }
            })
            .collect();
        let next = match v["throttle"]["next_start"].as_u64() {
            Some(t) => format!(
                "in {}s (attempt {})",
                t.saturating_sub(now),
                v["throttle"]["attempts"].as_u64().unwrap_or(0)
            ),
            None => "-".into(),
        };
        let since = match v["state_since"].as_u64() {
            Some(t) if t > 0 => ago(now.saturating_sub(t)),
            _ => "-".into(),
        };
        rows.push([
            s(&v["id"]),
            s(&v["kind"]),
            s(&v["state"]),
            since,
            pid,
            s(&v["restarts"]),
            v["memory"]["bytes"].as_u64().map_or("-".into(), bytes),
            v["cpu_usec"].as_u64().map_or("-".into(), cpu),
            if sockets.is_empty() {
                "-".into()
            } else {
                sockets.join(", ")
            },
            next,
        ]);
        // A vassal with replicas: one indented row per instance.
        for r in v["replicas"]["instances"].as_array().unwrap_or(&empty) {
            let pid = match r["pid"].as_i64() {
                Some(p) if p > 0 => p.to_string(),
                _ => "-".into(),
            };
            let outdated = if r["outdated"].as_bool() == Some(true) {
                " (old config)"
            } else {
                ""
            };
            rows.push([
                format!("  #{}", s(&r["index"])),
                String::new(),
                format!("{}{outdated}", s(&r["state"])),
                String::new(),
                pid,
                String::new(),
                r["usage"]["memory"]["bytes"].as_u64().map_or("-".into(), bytes),
                r["usage"]["cpu_usec"].as_u64().map_or("-".into(), cpu),
                String::new(),
                String::new(),
            ]);
        }
    }
    let mut widths = [0usize; 10];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for v in vassals {
        if let Some(e) = v["error"].as_str() {
            let first = crate::config::printable(e.lines().next().unwrap_or(""));
            out.push_str(&format!("{}: {first}\n", s(&v["id"])));
        }
    }
    out
}

/// Bytes in binary units, as `ps` and `top` show memory: `812K`, `23M`, `1.2G`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    match v {
        _ if n < 1024 => format!("{n}B"),
        v if v < 10.0 => format!("{v:.1}{}", UNITS[unit]),
        v => format!("{v:.0}{}", UNITS[unit]),
    }
}

/// CPU time: `0.35s`, `12.4s`, `7m12s`, `3h05m`.
fn cpu(usec: u64) -> String {
    let secs = usec / 1_000_000;
    match secs {
        0..10 => format!("{:.2}s", usec as f64 / 1e6),
        10..60 => format!("{:.1}s", usec as f64 / 1e6),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

fn ago(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_row_per_vassal() {
        let doc = serde_json::json!({"vassals": [
            {"id": "a.ini", "kind": "process", "state": "running", "state_since": 90, "pid": 42, "restarts": 1,
             "sockets": [{"addr": "/run/a.sock", "name": null, "queue": 3, "backlog": 1024, "connections": 5}],
             "memory": {"bytes": 24_543_232, "source": "proc"}, "cpu_usec": 1_250_000,
             "throttle": null, "error": null},
            {"id": "b \"x\".ini", "kind": "docker", "state": "throttled", "state_since": 99, "pid": -1, "restarts": 0,
             "sockets": [], "throttle": {"attempts": 3, "next_start": 103}, "error": "bad key"},
        ]});
        let t = table(&doc, 100);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("VASSAL"));
        assert!(lines[0].contains("MEM") && lines[0].contains("CPU"));
        assert!(
            lines[1].contains("a.ini") && lines[1].contains("/run/a.sock (5, 3 queued)") && lines[1].contains("10s")
        );
        assert!(
            lines[1].contains(" 23M ") && lines[1].contains(" 1.25s "),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains("throttled") && lines[2].contains("in 3s (attempt 3)"));
        assert_eq!(lines[3], "b \"x\".ini: bad key");

        // Control characters from the socket never reach the terminal raw.
        let doc = serde_json::json!({"vassals": [
            {"id": "n.ini", "kind": "process", "state": "invalid\u{0}", "error": "x = \"a\u{0}b\u{1b}[2J\""},
        ]});
        let t = table(&doc, 100);
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        assert!(t.contains("invalid\\0") && t.contains("a\\0b\\u{1b}[2J"), "{t}");
    }

    /// Found by the `stats` fuzz target: an `id` that is not a string was printed as serde_json writes
    /// it, which leaves DEL and the C1 controls raw.
    #[test]
    fn a_non_string_value_reaches_the_terminal_escaped() {
        let t = render(br#"{"vassals":[{"id":["\u007f\u009b2J"]}]}"#, 0).unwrap();
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        assert!(t.contains(r#"["\u{7f}\u{9b}2J"]"#), "{t}");
    }

    #[test]
    fn human_units() {
        assert_eq!(bytes(900), "900B");
        assert_eq!(bytes(812 * 1024), "812K");
        assert_eq!(bytes(5 * 1024 * 1024 + 300 * 1024), "5.3M");
        assert_eq!(bytes(3 << 30), "3.0G");
        assert_eq!(cpu(350_000), "0.35s");
        assert_eq!(cpu(12_400_000), "12.4s");
        assert_eq!(cpu(432_000_000), "7m12s");
        assert_eq!(cpu(11_100_000_000), "3h05m");
    }
}
