//! `--mail-auth`: mail tenants behind nginx's mail proxy. nginx terminates SMTP, IMAP and POP3 for
//! every tenant on one address and asks an `auth_http` server where each login goes; the emperor
//! answers that question, because it already knows which vassal serves which domain (`domains` /
//! `domain`, the lines that route HTTP by Host) and where that vassal's sockets are.
//!
//! # Why the emperor, and what it does not do
//!
//! * **Routing only.** A login `user@domain` goes to the vassal that claims `domain` (`tenants.rs`);
//!   the emperor never checks a password and never passes one anywhere. nginx replays the client's
//!   `AUTH` (or IMAP `LOGIN`, POP3 `USER`/`PASS`) to the vassal, whose own server accepts or refuses
//!   it, and nginx passes its refusal on (`proxy_smtp_auth on`, `proxy_pass_error_message on`; the
//!   README's mail block).
//! * **On demand works as for HTTP.** The answer names a socket the emperor bound; nginx's connection
//!   waits in its backlog while an on-demand vassal starts, and the vassal accepts it.
//! * **In step with the vassals, as `--nginx-map` is.** The main loop sends every vassal's latest valid
//!   config (`good`) through a `watch` channel whenever it changes; a vassal whose file became invalid
//!   keeps its domains, a deleted one loses them at once. Before the first scan and once the emperor
//!   stops, logins get a temporary failure (SMTP `451`), which mail clients and MTAs retry.
//!
//! # Bounds
//!
//! One task accepts; each client gets a task holding one of [`MAX_CLIENTS`] permits, taken before the
//! accept (beyond that, nginx's connections wait in the listen backlog, and `auth_http_timeout`
//! bounds its wait). A client has [`READ_TIMEOUT`] to send a head of at most [`http::MAX_HEAD`] bytes
//! and [`WRITE_TIMEOUT`] to take the answer; then the connection is closed. A refused login makes
//! nginx wait [`WAIT`] seconds before the client may try again, up to [`MAX_WAITED_ATTEMPTS`] in a
//! session; after that nginx closes it (nginx keeps memory per attempt until the session ends, and
//! its documentation asks for this).

mod http;
mod tenants;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use log::{debug, info, warn};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, watch};

use super::routes::{ProblemLog, Resolved};
use super::stats::{Conn, Listener};
use crate::config::{VassalConfig, printable};
pub use http::{Answer, Request};
pub use tenants::Tenants;
use tenants::{Miss, Protocol, smtp_address};

/// Clients served at once.
pub const MAX_CLIENTS: usize = 128;
/// How long a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to take the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Seconds nginx waits after a refused login before the client may try again.
pub const WAIT: u32 = 3;
/// The last attempt of a session after which nginx lets the client try again.
pub const MAX_WAITED_ATTEMPTS: u32 = 10;
/// How long a refused client's leftover bytes are read before its connection is closed.
const LINGER: Duration = Duration::from_secs(2);
/// How long the accept loop pauses after a failed accept (out of fds): it would fail again at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What requests are answered from: `None` before the first scan and once the emperor stops.
type Current = Option<Arc<Tenants>>;

/// The main loop's end of `--mail-auth`.
pub struct MailAuth {
    current: watch::Sender<Current>,
    /// Conflicts between vassals' domains, logged here only when no `--nginx-map` logs them.
    problems: Option<ProblemLog>,
}

impl MailAuth {
    /// Starts serving on `listener` (inside the emperor's `LocalSet`); every login gets a temporary
    /// failure until the first [`MailAuth::sync`]. The server stops when this is dropped.
    pub fn start(listener: Listener, log_conflicts: bool) -> MailAuth {
        let (current, answers) = watch::channel(None);
        tokio::task::spawn_local(serve(listener, answers));
        MailAuth {
            current,
            problems: log_conflicts.then(ProblemLog::default),
        }
    }

    /// The vassals' latest valid configs changed (or may have): answers follow them.
    pub fn sync(&mut self, good: &BTreeMap<String, Arc<VassalConfig>>) {
        let resolved = Resolved::of(good);
        if let Some(log) = &mut self.problems {
            log.log(&resolved);
        }
        let tenants = Tenants::from_resolved(&resolved, good);
        self.current.send_if_modified(|current| {
            if current.as_deref() == Some(&tenants) {
                return false;
            }
            *current = Some(Arc::new(tenants));
            true
        });
    }

    /// The emperor is stopping: logins get a temporary failure from now on.
    pub fn close(&self) {
        self.current.send_replace(None);
    }
}

/// Accepts clients until the main loop's end is dropped.
async fn serve(listener: Listener, mut answers: watch::Receiver<Current>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let conn = tokio::select! {
            conn = listener.accept() => conn,
            changed = answers.changed() => match changed {
                Ok(()) => continue,
                Err(_) => return,
            },
        };
        match conn {
            Ok(conn) => {
                let answers = answers.clone();
                tokio::task::spawn_local(async move {
                    handle(conn, answers).await;
                    drop(permit);
                });
            }
            Err(e) => {
                warn!("mail-auth: cannot accept: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// One client: one request, one answer, closed.
async fn handle(mut conn: Conn, answers: watch::Receiver<Current>) {
    let answer = match tokio::time::timeout(READ_TIMEOUT, crate::emperor::http::read_head(&mut conn)).await {
        Ok(Ok(head)) => {
            let current = answers.borrow().clone();
            let (answer, log) = respond(current.as_deref(), &head);
            match log {
                Log::Debug(line) => debug!("{line}"),
                Log::Info(line) => info!("{line}"),
            }
            answer
        }
        Ok(Err(e)) => {
            debug!("mail-auth: a client went away: {e}");
            return;
        }
        Err(_) => {
            debug!("mail-auth: a client sent no request within {READ_TIMEOUT:?}");
            return;
        }
    };
    let write = async {
        conn.write_all(answer.render().as_bytes()).await?;
        conn.shutdown().await
    };
    if let Err(e) = tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    {
        debug!("mail-auth: a client went away before its answer: {e}");
        return;
    }
    if answer == Answer::BadRequest {
        // What it sent may not all be read.
        crate::emperor::http::linger(&mut conn, LINGER).await;
    }
}

/// A line for the log, at its level.
#[derive(Debug, PartialEq, Eq)]
pub enum Log {
    /// A login that goes somewhere, a request that is not one.
    Debug(String),
    /// A login refused.
    Info(String),
}

impl Log {
    pub fn text(&self) -> &str {
        match self {
            Log::Debug(s) | Log::Info(s) => s,
        }
    }
}

/// The answer to a request head as a client sent it, and the line to log. `tenants` is `None` while
/// the emperor starts or stops. Pure: the server, its tests and the fuzz target all call this.
pub fn respond(tenants: Option<&Tenants>, head: &[u8]) -> (Answer, Log) {
    match http::parse(head) {
        Ok(req) => decide(tenants, &req),
        Err(why) => (
            Answer::BadRequest,
            Log::Debug(format!("mail-auth: a bad request: {why}")),
        ),
    }
}

/// The answer to a login request, and the line to log.
fn decide(tenants: Option<&Tenants>, req: &Request) -> (Answer, Log) {
    let protocol = Protocol::parse(&req.protocol);
    let smtp = protocol == Some(Protocol::Smtp);
    let from = printable(&req.client_ip);
    let refuse = |status, code, why: String| {
        let wait = (req.attempt < MAX_WAITED_ATTEMPTS).then_some(WAIT);
        let code = if smtp { code } else { None };
        (
            Answer::Refuse { status, code, wait },
            Log::Info(format!("mail-auth: refused {why}")),
        )
    };
    let invalid = |why| refuse("Invalid login or password", None, why);
    let Some(protocol) = protocol else {
        return invalid(format!(
            "a login over {:?} from {from}: not smtp, imap or pop3",
            req.protocol
        ));
    };
    let by_recipient = req.method.eq_ignore_ascii_case("none");
    let (address, what) = if by_recipient {
        (smtp_address(&req.smtp_to).unwrap_or_default(), "mail to")
    } else {
        (req.user.as_str(), "login")
    };
    // `{:?}` escapes control characters: a login never drives the terminal or splits a log line.
    let shown = format!("{} {what} {address:?} from {from}", protocol.name());
    if matches!(req.method.to_ascii_lowercase().as_str(), "apop" | "cram-md5") {
        return invalid(format!(
            "{shown}: {} sends no password, and the vassal needs one to check the login; allow only plain \
             and login in nginx (smtp_auth, imap_auth, pop3_auth)",
            printable(&req.method)
        ));
    }
    let Some(tenants) = tenants else {
        return refuse(
            "Temporary server problem, try again later",
            Some("451 4.3.0"),
            format!("{shown}: the emperor is starting or stopping"),
        );
    };
    match tenants.find(address, protocol) {
        Ok(found) => (
            Answer::Server(found.server),
            Log::Debug(format!("[{}] mail-auth: {shown}: to {}", found.vassal, found.server)),
        ),
        Err(miss) => {
            let why = match miss {
                Miss::NoDomain if by_recipient => "no recipient domain".to_owned(),
                Miss::NoDomain => "no @domain in the login".to_owned(),
                Miss::Unknown(domain) => format!("no vassal has the domain {domain}"),
                Miss::NotTcp { vassal, socket } => format!(
                    "{vassal} has the domain, but its socket for {} is {socket}, and nginx's mail proxy \
                     connects to TCP sockets only (name a TCP socket {0})",
                    protocol.name()
                ),
            };
            if by_recipient {
                refuse("Relay access denied", Some("554 5.7.1"), format!("{shown}: {why}"))
            } else {
                invalid(format!("{shown}: {why}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tenants() -> Tenants {
        let text = "[emperor]\nexec = /bin/true\nsocket = name=w,/run/w.sock\nsocket = name=smtp,127.0.0.1:2525\n\
                    domain = foo.test\n";
        let cfg = crate::config::parse("foo.ini", Path::new("/v/foo.ini"), text, Path::new("/v")).unwrap();
        let good = BTreeMap::from([("foo.ini".to_owned(), Arc::new(cfg))]);
        Tenants::new(&good)
    }

    fn req(protocol: &str, method: &str, user: &str, attempt: u32) -> Request {
        Request {
            protocol: protocol.into(),
            method: method.into(),
            user: user.into(),
            attempt,
            client_ip: "192.0.2.1".into(),
            ..Request::default()
        }
    }

    #[test]
    fn a_login_to_a_known_domain_goes_to_its_vassal() {
        let t = tenants();
        let (answer, log) = decide(Some(&t), &req("smtp", "plain", "foo@foo.test", 1));
        assert_eq!(answer, Answer::Server("127.0.0.1:2525".parse().unwrap()));
        assert_eq!(
            log,
            Log::Debug("[foo.ini] mail-auth: smtp login \"foo@foo.test\" from 192.0.2.1: to 127.0.0.1:2525".into())
        );
        // `smtp_auth none`: the first recipient decides.
        let mut none = req("smtp", "none", "", 1);
        none.smtp_to = "RCPT TO:<bob@FOO.test>".into();
        assert_eq!(
            decide(Some(&t), &none).0,
            Answer::Server("127.0.0.1:2525".parse().unwrap())
        );
    }

    #[test]
    fn refusals_wait_then_close() {
        let t = tenants();
        let invalid = |wait| Answer::Refuse {
            status: "Invalid login or password",
            code: None,
            wait,
        };
        let (answer, log) = decide(Some(&t), &req("smtp", "plain", "foo@bar.test", 1));
        assert_eq!(answer, invalid(Some(WAIT)));
        assert_eq!(
            log,
            Log::Info(
                "mail-auth: refused smtp login \"foo@bar.test\" from 192.0.2.1: no vassal has the domain bar.test"
                    .into()
            )
        );
        assert_eq!(
            decide(Some(&t), &req("smtp", "plain", "foo", MAX_WAITED_ATTEMPTS)).0,
            invalid(None)
        );
        // IMAP has no socket named imap: the route's target, a unix socket.
        let (answer, log) = decide(Some(&t), &req("imap", "plain", "foo@foo.test", 1));
        assert_eq!(answer, invalid(Some(WAIT)));
        assert!(log.text().contains("connects to TCP sockets only"));
        assert_eq!(
            decide(Some(&t), &req("smtp", "cram-md5", "foo@foo.test", 1)).0,
            invalid(Some(WAIT))
        );
        assert_eq!(
            decide(Some(&t), &req("http", "plain", "foo@foo.test", 1)).0,
            invalid(Some(WAIT))
        );
        let mut none = req("smtp", "none", "", 1);
        none.smtp_to = "RCPT TO:<bob@elsewhere.test>".into();
        assert_eq!(
            decide(Some(&t), &none).0,
            Answer::Refuse {
                status: "Relay access denied",
                code: Some("554 5.7.1"),
                wait: Some(WAIT)
            }
        );
    }

    #[test]
    fn nothing_is_known_while_starting_or_stopping() {
        let (answer, _) = decide(None, &req("smtp", "plain", "foo@foo.test", 1));
        assert_eq!(
            answer,
            Answer::Refuse {
                status: "Temporary server problem, try again later",
                code: Some("451 4.3.0"),
                wait: Some(WAIT)
            }
        );
        // Error codes are SMTP's only.
        let (answer, _) = decide(None, &req("pop3", "plain", "foo@foo.test", 1));
        assert!(matches!(answer, Answer::Refuse { code: None, .. }));
    }

    #[test]
    fn control_characters_never_reach_the_log() {
        let (_, log) = decide(None, &req("smtp", "plain", "a\u{1b}[2J@x\n", 1));
        assert!(!log.text().chars().any(char::is_control));
    }
}
