//! beachhead-companion's Redis layout, the contract between the hosts that publish routes and the fronts
//! that read them (confd templates written for beachhead read ours unchanged).
//!
//! One key per published vassal, `<prefix><name>` (prefix `/beachhead/` by default), set with `SETEX` so
//! that a host that dies stops being routed to once the TTL lapses. Its value is a JSON array with one
//! object per domain: `{"id": <name>, "domain": <domain>, "http": {"host": <address>, "port": <port>}}`.
//! beachhead's `https` member is read (and ignored) but never written: the emperor hands out plain sockets.
//!
//! `<name>` is `<vassal>@<address>`: the vassal's name (with its extension) and the address the front
//! reaches its host by. beachhead used the container name, which is unique per host; ours must be unique
//! across hosts too, because while a vassal moves it is published by two hosts at once and neither may
//! overwrite or delete the other's key.

use serde_json::{Value, json};

/// One domain of one published vassal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// `<vassal>@<address>`.
    pub id: String,
    /// As the vassal's `domains` line has it: `a.example`, `*.example` or `.example`.
    pub domain: String,
    /// Where the front connects for plain HTTP.
    pub host: String,
    pub port: u16,
}

impl Route {
    /// The vassal's name, from the id (everything before the last `@`).
    pub fn vassal(&self) -> &str {
        self.id.rsplit_once('@').map_or(self.id.as_str(), |(v, _)| v)
    }
}

/// The key name (after the prefix) and id of `vassal` published from `address`.
pub fn name(vassal: &str, address: &str) -> String {
    format!("{vassal}@{address}")
}

/// The key's value for these routes, in beachhead's layout.
pub fn encode(routes: &[Route]) -> String {
    let items: Vec<Value> = routes
        .iter()
        .map(|r| json!({"id": r.id, "domain": r.domain, "http": {"host": r.host, "port": r.port}}))
        .collect();
    Value::Array(items).to_string()
}

/// Reads a key's value. Entries without an `http` endpoint (https only) are skipped; anything that is not
/// beachhead's layout is an error naming what is wrong, so a front can log it once per key.
pub fn decode(text: &str) -> Result<Vec<Route>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Array(items) = value else {
        return Err("not a JSON array".into());
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = |k: &str| item.get(k).and_then(Value::as_str).map(str::to_owned);
        let (Some(id), Some(domain)) = (field("id"), field("domain")) else {
            return Err(format!("entry {i}: needs string members \"id\" and \"domain\""));
        };
        let Some(http) = item.get("http").filter(|v| !v.is_null()) else {
            continue;
        };
        let host = http.get("host").and_then(Value::as_str);
        let port = http
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok());
        match (host, port) {
            (Some(host), Some(port)) if port != 0 && !host.is_empty() => out.push(Route {
                id,
                domain,
                host: host.to_owned(),
                port,
            }),
            _ => {
                return Err(format!(
                    "entry {i}: \"http\" needs a string \"host\" and a port 1-65535"
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(domain: &str) -> Route {
        Route {
            id: name("app.ini", "10.1.2.3"),
            domain: domain.into(),
            host: "10.1.2.3".into(),
            port: 8001,
        }
    }

    #[test]
    fn round_trip_in_beachheads_layout() {
        let routes = vec![route("a.example"), route("*.b.example")];
        let text = encode(&routes);
        assert_eq!(
            text,
            r#"[{"domain":"a.example","http":{"host":"10.1.2.3","port":8001},"id":"app.ini@10.1.2.3"},{"domain":"*.b.example","http":{"host":"10.1.2.3","port":8001},"id":"app.ini@10.1.2.3"}]"#
        );
        assert_eq!(decode(&text).unwrap(), routes);
        assert_eq!(routes[0].vassal(), "app.ini");
    }

    #[test]
    fn reads_what_beachhead_wrote() {
        let text = r#"[{"id":"4f2a","domain":"shop.example","http":{"host":"192.0.2.7","port":32768},"https":{"host":"192.0.2.7","port":32769}},
                       {"id":"4f2a","domain":"tls-only.example","https":{"host":"192.0.2.7","port":32770}}]"#;
        let routes = decode(text).unwrap();
        assert_eq!(routes.len(), 1);
        assert_eq!((routes[0].host.as_str(), routes[0].port), ("192.0.2.7", 32768));
        assert_eq!(routes[0].vassal(), "4f2a");
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        assert!(decode("{").unwrap_err().starts_with("not JSON"));
        assert_eq!(decode("{}").unwrap_err(), "not a JSON array");
        assert!(decode(r#"[{"id":1,"domain":"a"}]"#).unwrap_err().contains("\"id\""));
        assert!(
            decode(r#"[{"id":"x","domain":"a","http":{"host":"h","port":70000}}]"#)
                .unwrap_err()
                .contains("port")
        );
        assert!(decode(r#"[{"id":"x","domain":"a","http":{"port":80}}]"#).is_err());
        assert_eq!(decode("[]").unwrap(), vec![]);
    }
}
