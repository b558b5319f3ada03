//! nginx's `auth_http` protocol (ngx_mail_auth_http_module), both halves: the request nginx sends
//! and the answer it reads. Pure, so that unit tests and the fuzz target (`fuzzing::mail_auth`) read
//! bytes exactly as the server does.
//!
//! nginx sends one HTTP/1.0 request per login attempt and reads the answer's headers only:
//!
//! ```text
//! GET /any/path HTTP/1.0             Auth-Method: plain (also for LOGIN), apop, cram-md5, external, none
//! Host: ...                          Auth-User, Auth-Pass: URL-escaped (%XX) by nginx
//! Auth-Method: plain                 Auth-Protocol: smtp, imap or pop3
//! Auth-User: foo@foo.test            Auth-Login-Attempt: 1, 2, ... within one session
//! Auth-Pass: secret                  Client-IP, Client-Host
//! Auth-Protocol: smtp                Auth-SMTP-Helo, -From, -To: with `smtp_auth none`, the
//! Auth-Login-Attempt: 1                client's HELO, MAIL FROM and RCPT TO lines
//! Client-IP: 192.0.2.42
//! ```
//!
//! Answers: `Auth-Status: OK` with `Auth-Server: <IP>` and `Auth-Port: <port>` (nginx then connects
//! there and replays the login); or `Auth-Status: <message>` for the client, with `Auth-Error-Code`
//! (SMTP's reply code, nginx's default `535 5.7.0`) and `Auth-Wait: <s>`: nginx waits that long,
//! then lets the client try again; without it nginx closes the session. nginx reads at most 1 KiB of
//! answer, and ignores the status line and any body.
//!
//! Bounds: the request head is at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] lines (the shared
//! `emperor::http`); anything that is not such a request gets `400` and the connection is closed.
//! Nothing here panics on any input.

use std::net::SocketAddr;

pub use crate::emperor::http::{MAX_HEAD, MAX_HEADERS, head_end};
use crate::emperor::http::{header, lines, request_line};

/// What a request asks, as far as routing a login needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// `Auth-Protocol` as sent.
    pub protocol: String,
    /// `Auth-Method`; `plain` when absent (nginx always sends it).
    pub method: String,
    /// `Auth-User`, URL-unescaped; empty for `smtp_auth none`.
    pub user: String,
    /// `Auth-SMTP-To`: the client's `RCPT TO:` line, with `smtp_auth none`.
    pub smtp_to: String,
    /// `Auth-Login-Attempt`: 1 for the first login of a session.
    pub attempt: u32,
    /// `Client-IP`, for the log.
    pub client_ip: String,
}

/// Reads a request head (up to and including its blank line). The error is a short reason, for the
/// debug log.
pub fn parse(head: &[u8]) -> Result<Request, &'static str> {
    if head.len() > MAX_HEAD {
        return Err("request head too long");
    }
    let end = head_end(head).ok_or("no blank line after the headers")?;
    let mut lines = lines(&head[..end]);
    request_line(lines.next().unwrap_or_default())?;
    let mut req = Request {
        method: "plain".into(),
        attempt: 1,
        ..Request::default()
    };
    let mut seen: Vec<&'static str> = Vec::new();
    let mut count = 0;
    for line in lines {
        count += 1;
        if count > MAX_HEADERS {
            return Err("too many header lines");
        }
        let (name, value) = header(line)?;
        let Some(known) = KNOWN.iter().find(|k| k.as_bytes().eq_ignore_ascii_case(name)) else {
            continue;
        };
        if seen.contains(known) {
            return Err("a header given twice");
        }
        seen.push(known);
        let text = String::from_utf8_lossy(value).into_owned();
        match *known {
            "auth-protocol" => req.protocol = text,
            "auth-method" => req.method = text,
            "auth-user" => req.user = unescape(value),
            "auth-smtp-to" => req.smtp_to = text,
            "auth-login-attempt" => req.attempt = text.parse().map_err(|_| "Auth-Login-Attempt is not a number")?,
            _ => req.client_ip = text,
        }
    }
    match seen.contains(&"auth-protocol") {
        true => Ok(req),
        false => Err("no Auth-Protocol header"),
    }
}

/// The headers read, lowercase.
const KNOWN: [&str; 6] = [
    "auth-protocol",
    "auth-method",
    "auth-user",
    "auth-smtp-to",
    "auth-login-attempt",
    "client-ip",
];

/// Undoes nginx's escaping of `Auth-User` (`%XX`); a `%` not followed by two hex digits stays.
fn unescape(value: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                value.get(i + 1).copied().and_then(hex),
                value.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(value[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the emperor answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The login goes to this socket.
    Server(SocketAddr),
    /// The login goes nowhere: `status` for the client, `code` for an SMTP client (else nginx's
    /// `535 5.7.0`), and how long nginx waits before the client may try again (`None`: it closes).
    Refuse {
        status: &'static str,
        code: Option<&'static str>,
        wait: Option<u32>,
    },
    /// Not an `auth_http` request.
    BadRequest,
}

impl Answer {
    /// The whole answer: an HTTP/1.0 head, no body; the connection is closed after it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        match self {
            Answer::Server(addr) => {
                out.push_str("HTTP/1.0 200 OK\r\nAuth-Status: OK\r\n");
                // nginx takes a bare IPv6 address here, not the bracketed form.
                out.push_str(&format!("Auth-Server: {}\r\nAuth-Port: {}\r\n", addr.ip(), addr.port()));
            }
            Answer::Refuse { status, code, wait } => {
                out.push_str(&format!("HTTP/1.0 200 OK\r\nAuth-Status: {status}\r\n"));
                if let Some(code) = code {
                    out.push_str(&format!("Auth-Error-Code: {code}\r\n"));
                }
                if let Some(wait) = wait {
                    out.push_str(&format!("Auth-Wait: {wait}\r\n"));
                }
            }
            Answer::BadRequest => out.push_str("HTTP/1.0 400 Bad Request\r\n"),
        }
        out.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What nginx 1.22 sent for `AUTH PLAIN` (captured from Debian's nginx with the mail module).
    const NGINX_PLAIN: &[u8] = b"GET /mail HTTP/1.0\r\nHost: 127.0.0.1\r\nAuth-Method: plain\r\n\
        Auth-User: foo@foo.test\r\nAuth-Pass: pw\r\nAuth-Protocol: smtp\r\nAuth-Login-Attempt: 1\r\n\
        Client-IP: 127.0.0.1\r\nClient-Host: [UNAVAILABLE]\r\n\r\n";

    /// ... and with `smtp_auth none`, after `RCPT TO`.
    const NGINX_NONE: &[u8] = b"GET /mail HTTP/1.0\r\nHost: 127.0.0.1\r\nAuth-Method: none\r\nAuth-User: \r\n\
        Auth-Pass: \r\nAuth-Protocol: smtp\r\nAuth-Login-Attempt: 1\r\nClient-IP: 127.0.0.1\r\n\
        Client-Host: [UNAVAILABLE]\r\nAuth-SMTP-Helo: client\r\nAuth-SMTP-From: mail FROM:<a@b.test>\r\n\
        Auth-SMTP-To: rcpt TO:<rcpt@bar.test>\r\n\r\n";

    #[test]
    fn nginx_requests() {
        assert_eq!(head_end(NGINX_PLAIN), Some(NGINX_PLAIN.len()));
        assert_eq!(
            parse(NGINX_PLAIN),
            Ok(Request {
                protocol: "smtp".into(),
                method: "plain".into(),
                user: "foo@foo.test".into(),
                smtp_to: String::new(),
                attempt: 1,
                client_ip: "127.0.0.1".into(),
            })
        );
        let none = parse(NGINX_NONE).unwrap();
        assert_eq!((none.method.as_str(), none.user.as_str()), ("none", ""));
        assert_eq!(none.smtp_to, "rcpt TO:<rcpt@bar.test>");
    }

    #[test]
    fn lenient_where_http_is_and_strict_where_routing_needs_it() {
        // HTTP/1.1, LF line ends, any case, blanks around values, unknown headers, any method and path.
        let r = parse(b"POST /x?y HTTP/1.1\nauth-PROTOCOL:\timap \nX-Other: 1\nAUTH-USER:   a%40b.test\n\n").unwrap();
        assert_eq!(
            (r.protocol.as_str(), r.user.as_str(), r.method.as_str()),
            ("imap", "a@b.test", "plain")
        );
        let bad = |head: &[u8]| parse(head).err();
        assert_eq!(bad(b"GET / HTTP/1.0\r\n\r\n"), Some("no Auth-Protocol header"));
        assert_eq!(
            bad(b"GET / HTTP/2.0\r\nAuth-Protocol: smtp\r\n\r\n"),
            Some("not an HTTP/1.x request line")
        );
        assert_eq!(bad(b"GET /\r\n\r\n"), Some("not an HTTP request line"));
        assert_eq!(bad(b"GET  / HTTP/1.0\r\n\r\n"), Some("not an HTTP request line"));
        assert_eq!(
            bad(b"GET / HTTP/1.0\r\nAuth-User: a@b\r\nAuth-User: c@d\r\nAuth-Protocol: smtp\r\n\r\n"),
            Some("a header given twice")
        );
        assert_eq!(
            bad(b"GET / HTTP/1.0\r\n folded: x\r\n\r\n"),
            Some("a header name that is not a token")
        );
        assert_eq!(
            bad(b"GET / HTTP/1.0\r\nno colon\r\n\r\n"),
            Some("a header line without a colon")
        );
        assert_eq!(
            bad(b"GET / HTTP/1.0\r\nAuth-Protocol: smtp\r\nAuth-Login-Attempt: x\r\n\r\n"),
            Some("Auth-Login-Attempt is not a number")
        );
        assert_eq!(
            bad(b"GET / HTTP/1.0\r\nAuth-Protocol: smtp\r\n"),
            Some("no blank line after the headers")
        );
        let many = format!("GET / HTTP/1.0\r\n{}\r\n", "A: b\r\n".repeat(MAX_HEADERS + 1));
        assert_eq!(bad(many.as_bytes()), Some("too many header lines"));
        let long = format!("GET / HTTP/1.0\r\nA: {}\r\n\r\n", "x".repeat(MAX_HEAD));
        assert_eq!(bad(long.as_bytes()), Some("request head too long"));
    }

    #[test]
    fn logins_are_unescaped() {
        assert_eq!(unescape(b"a%40b%2Ec"), "a@b.c");
        assert_eq!(unescape(b"100%"), "100%");
        assert_eq!(unescape(b"%zz%4"), "%zz%4");
        assert_eq!(unescape(b"%e2%82%ac"), "\u{20ac}");
        assert_eq!(unescape(b"%ff"), "\u{fffd}");
    }

    #[test]
    fn answers() {
        assert_eq!(
            Answer::Server("127.0.0.1:2525".parse().unwrap()).render(),
            "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 2525\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert!(
            Answer::Server("[::1]:25".parse().unwrap())
                .render()
                .contains("Auth-Server: ::1\r\nAuth-Port: 25\r\n")
        );
        assert_eq!(
            Answer::Refuse {
                status: "Invalid login or password",
                code: None,
                wait: Some(3)
            }
            .render(),
            "HTTP/1.0 200 OK\r\nAuth-Status: Invalid login or password\r\nAuth-Wait: 3\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert!(Answer::BadRequest.render().starts_with("HTTP/1.0 400 Bad Request\r\n"));
    }
}
