//! A small SMTP client (and a POP3 login) for the mail tests: one command, one reply, every read
//! bounded by a timeout.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long any one reply may take: covers nginx's `Auth-Wait` (3 s) and an on-demand start.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// One SMTP reply: its code and its lines' text joined by `\n`.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    /// Connects to 127.0.0.1:`port` and reads the greeting (which must be a 220) and the EHLO reply.
    pub fn connect(port: u16) -> Result<Client, String> {
        let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect to {port}: {e}"))?;
        s.set_read_timeout(Some(REPLY_TIMEOUT)).ok();
        s.set_write_timeout(Some(REPLY_TIMEOUT)).ok();
        let mut c = Client {
            reader: BufReader::new(s.try_clone().map_err(|e| e.to_string())?),
            writer: s,
        };
        let greeting = c.reply()?;
        if greeting.code != 220 {
            return Err(format!("greeting {greeting:?}"));
        }
        c.expect("EHLO client.test", 250)?;
        Ok(c)
    }

    /// Sends one command line and reads its reply.
    pub fn cmd(&mut self, line: &str) -> Result<Reply, String> {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .map_err(|e| format!("sending {line:?}: {e}"))?;
        self.reply().map_err(|e| format!("reply to {line:?}: {e}"))
    }

    /// [`Client::cmd`], and the reply must have `code`.
    pub fn expect(&mut self, line: &str, code: u16) -> Result<Reply, String> {
        let r = self.cmd(line)?;
        if r.code != code {
            return Err(format!("{line:?}: expected {code}, got {r:?}"));
        }
        Ok(r)
    }

    fn reply(&mut self) -> Result<Reply, String> {
        let mut text = Vec::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return Err("connection closed".into()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
            let line = line.trim_end();
            let code = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("not a reply line: {line:?}"))?;
            text.push(line.get(4..).unwrap_or_default().to_owned());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply {
                    code,
                    text: text.join("\n"),
                });
            }
        }
    }

    /// `AUTH PLAIN` with the initial response.
    pub fn login(&mut self, user: &str, password: &str) -> Result<Reply, String> {
        self.cmd(&format!(
            "AUTH PLAIN {}",
            base64(format!("\0{user}\0{password}").as_bytes())
        ))
    }

    /// MAIL FROM, RCPT TO, DATA and a short message: the reply to the message.
    pub fn send(&mut self, from: &str, to: &str) -> Result<Reply, String> {
        self.expect(&format!("MAIL FROM:<{from}>"), 250)?;
        self.expect(&format!("RCPT TO:<{to}>"), 250)?;
        self.expect("DATA", 354)?;
        self.cmd("Subject: test\r\n\r\nHello.\r\n.")
    }
}

/// Logs in over POP3 at 127.0.0.1:`port` (USER, PASS) and returns the reply to PASS.
pub fn pop3_login(port: u16, user: &str, password: &str) -> Result<String, String> {
    let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect to {port}: {e}"))?;
    s.set_read_timeout(Some(REPLY_TIMEOUT)).ok();
    let mut writer = s.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    let mut exchange = |send: Option<String>| -> Result<String, String> {
        if let Some(cmd) = send {
            writer
                .write_all(format!("{cmd}\r\n").as_bytes())
                .map_err(|e| e.to_string())?;
        }
        line.clear();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        Ok(line.trim_end().to_owned())
    };
    let greeting = exchange(None)?;
    if !greeting.starts_with("+OK") {
        return Err(format!("greeting {greeting:?}"));
    }
    exchange(Some(format!("USER {user}")))?;
    let pass = exchange(Some(format!("PASS {password}")))?;
    let _ = exchange(Some("QUIT".into()));
    Ok(pass)
}

/// Standard base64 with padding, for `AUTH PLAIN`.
pub fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_of_rfc4648() {
    let cases = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foobar", "Zm9vYmFy"),
    ];
    for (plain, encoded) in cases {
        assert_eq!(base64(plain.as_bytes()), encoded);
    }
}
