//! The part of HTTP/1.x that the emperor's two small servers share: `--mail-auth` (nginx's `auth_http`
//! asks where a login goes) and `--emperor-metrics` (Prometheus scrapes). Both read one request head
//! and answer once, with `Connection: close`, so there is no body to read, no keep-alive and no
//! chunking: a head, bounded in size ([`MAX_HEAD`], [`MAX_HEADERS`]) and in time by the caller.
//! The parsing is pure, so unit tests and the fuzz targets read bytes exactly as the servers do;
//! nothing here panics on any input.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest request head read, blank line included. nginx's `auth_http` requests are far shorter
/// (the login and password come from a client line of at most `*_client_buffer`, 4 or 8 KiB, at most
/// tripled by escaping in the worst case), and so is a scraper's.
pub const MAX_HEAD: usize = 16 * 1024;

/// The most header lines read.
pub const MAX_HEADERS: usize = 64;

/// The index just past the head's blank line, if `buf` holds a whole head (lines may end in CRLF or
/// LF alone, as nginx's own parser allows and RFC 9112 §2.2 lets a server accept).
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    for (i, b) in buf.iter().enumerate() {
        if *b != b'\n' {
            continue;
        }
        let line = &buf[start..i];
        if line.is_empty() || line == b"\r" {
            return Some(i + 1);
        }
        start = i + 1;
    }
    None
}

/// The head's lines, without their line ends: the request line first, then the header lines, up to
/// (not including) the blank line. `head` is what [`head_end`] measured.
pub fn lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    head.split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .take_while(|l| !l.is_empty())
}

/// `METHOD SP target SP HTTP/1.x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLine<'a> {
    pub method: &'a [u8],
    pub target: &'a [u8],
    /// The `x` of `HTTP/1.x`.
    pub minor: u8,
}

/// Reads a request line: any method and target made of visible ASCII, and HTTP/1.0 or 1.1 (an
/// HTTP/1.2 would be answered as 1.1, RFC 9110 §6.2).
pub fn request_line(line: &[u8]) -> Result<RequestLine<'_>, &'static str> {
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not an HTTP request line");
    };
    let token = |s: &[u8]| !s.is_empty() && s.iter().all(|b| b.is_ascii_graphic());
    let minor = match version.strip_prefix(b"HTTP/1.") {
        Some([d]) if d.is_ascii_digit() => d - b'0',
        _ => return Err("not an HTTP/1.x request line"),
    };
    if !token(method) || !token(target) {
        return Err("not an HTTP/1.x request line");
    }
    Ok(RequestLine { method, target, minor })
}

/// `Name: value`, the value without the blanks around it.
pub fn header(line: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    let colon = line
        .iter()
        .position(|b| *b == b':')
        .ok_or("a header line without a colon")?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty()
        || !name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    {
        return Err("a header name that is not a token");
    }
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !blank(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !blank(b)).map_or(start, |i| i + 1);
    Ok((name, &value[start..end]))
}

/// Reads up to the blank line after the headers, at most [`MAX_HEAD`] bytes; a longer head is
/// returned as it is, for the parser to refuse. The caller bounds the time it takes.
pub async fn read_head<C: AsyncRead + Unpin + ?Sized>(conn: &mut C) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
        // From the start each time: a line split across reads is whole only now (at most a few
        // scans of 16 KiB).
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Ok(head);
        }
    }
}

/// After an answer to a request that may not have been read whole (a refused one, or one with a
/// body): reads on until the client closes, at most `limit`. Closing at once with unread bytes would
/// reset the connection, and the client could lose the answer; HTTP servers linger the same way.
pub async fn linger<C: AsyncRead + AsyncWrite + Unpin + ?Sized>(conn: &mut C, limit: std::time::Duration) {
    let _ = conn.shutdown().await;
    let mut sink = [0u8; 2048];
    let drain = async { while conn.read(&mut sink).await.is_ok_and(|n| n > 0) {} };
    let _ = tokio::time::timeout(limit, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_end_at_a_blank_line_with_or_without_cr() {
        assert_eq!(head_end(b"GET / HTTP/1.0\r\nA: b\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.0\nA: b\n\nbody"), Some(21));
        assert_eq!(head_end(b"\r\n"), Some(2));
        assert_eq!(head_end(b""), None);
        let head = b"GET / HTTP/1.1\r\nHost: x\nA: b\r\n\r\n";
        assert_eq!(
            lines(head).collect::<Vec<_>>(),
            [&b"GET / HTTP/1.1"[..], b"Host: x", b"A: b"]
        );
    }

    #[test]
    fn request_lines() {
        assert_eq!(
            request_line(b"GET /metrics HTTP/1.1"),
            Ok(RequestLine {
                method: b"GET",
                target: b"/metrics",
                minor: 1
            })
        );
        assert_eq!(request_line(b"HEAD * HTTP/1.0").map(|r| r.minor), Ok(0));
        assert_eq!(request_line(b"GET /"), Err("not an HTTP request line"));
        assert_eq!(request_line(b"GET  / HTTP/1.0"), Err("not an HTTP request line"));
        assert_eq!(request_line(b"GET / HTTP/2.0"), Err("not an HTTP/1.x request line"));
        assert_eq!(request_line(b"GET / HTTP/1.10"), Err("not an HTTP/1.x request line"));
        assert_eq!(request_line(b"GET /\x7f HTTP/1.1"), Err("not an HTTP/1.x request line"));
    }

    #[test]
    fn headers() {
        assert_eq!(header(b"Host:\t a b \t"), Ok((&b"Host"[..], &b"a b"[..])));
        assert_eq!(header(b"X-Empty:"), Ok((&b"X-Empty"[..], &b""[..])));
        assert_eq!(header(b" folded: x"), Err("a header name that is not a token"));
        assert_eq!(header(b"no colon"), Err("a header line without a colon"));
    }

    #[tokio::test]
    async fn a_head_is_read_whole_however_it_is_split() {
        let head = b"GET / HTTP/1.0\r\nAuth-Protocol: smtp\r\nAuth-User: a@foo.test\r\n\r\n";
        // Every split point, also between the \r and the \n of a line: the head ends at its blank line.
        for at in 1..head.len() {
            let (mut client, mut server) = tokio::io::duplex(64);
            let writer = async {
                client.write_all(&head[..at]).await.unwrap();
                tokio::task::yield_now().await;
                client.write_all(&head[at..]).await.unwrap();
                client.write_all(b"ignored").await.unwrap();
            };
            let (read, ()) = tokio::join!(read_head(&mut server), writer);
            assert_eq!(read.unwrap(), head, "split at {at}");
        }
        // A client that stops early: an error, no answer.
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.0\r\n").await.unwrap();
        drop(client);
        assert!(read_head(&mut server).await.is_err());
        // A head that never ends stops being read past the limit.
        let (mut client, mut server) = tokio::io::duplex(4096);
        let endless = async { while client.write_all(&[b'x'; 1024]).await.is_ok() {} };
        tokio::select! {
            read = read_head(&mut server) => assert!(read.unwrap().len() > MAX_HEAD),
            () = endless => panic!("the reader stopped first"),
        }
    }
}
