//! The waifu's database, handed to the app the way Heroku and libpq do:
//! `DATABASE_URL` and the `PG*` variables.

use std::time::Duration;

use tracing::{info, warn};
use waifu::waifus_protocol::DatabaseCredentials;
use waifu::{DatabaseError, Waifu};

/// The variables the app gets for `c`.
pub(crate) fn env(c: &DatabaseCredentials) -> Vec<(String, Option<String>)> {
    let url = format!(
        "postgres://{}:{}@{}:{}/{}",
        encode(&c.user),
        encode(&c.password),
        host_in_url(&c.host),
        c.port,
        encode(&c.database)
    );
    [
        ("DATABASE_URL", url),
        ("PGHOST", c.host.clone()),
        ("PGPORT", c.port.to_string()),
        ("PGDATABASE", c.database.clone()),
        ("PGUSER", c.user.clone()),
        ("PGPASSWORD", c.password.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Some(v)))
    .collect()
}

/// A host as a URL holds it: an IPv6 address in brackets.
fn host_in_url(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Asks for the credentials (the cache answers while the orchestrator is
/// unreachable) until there are some; an answer that retrying cannot
/// change (no secret, a wrong one, a refusal) is returned as an error.
pub(crate) async fn credentials(waifu: &Waifu) -> Result<DatabaseCredentials, DatabaseError> {
    let mut attempt = 0;
    loop {
        match waifu.credentials().await {
            Ok(c) => {
                info!(database = %c.database, host = %c.host, port = c.port, "database credentials ready");
                return Ok(c);
            }
            Err(e @ (DatabaseError::Unavailable(_) | DatabaseError::Throttled { .. })) => {
                let wait = waifu::backoff(attempt).max(Duration::from_millis(500));
                warn!(error = %e, retry_in = ?wait, "no database credentials yet");
                attempt += 1;
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_survives_any_password() {
        let c = DatabaseCredentials {
            database: "notes db".into(),
            user: "waifu_notes".into(),
            password: "p@ss:w/rd?#%".into(),
            host: "10.0.0.2".into(),
            port: 5433,
        };
        let env = env(&c);
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .and_then(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(
            get("DATABASE_URL"),
            "postgres://waifu_notes:p%40ss%3Aw%2Frd%3F%23%25@10.0.0.2:5433/notes%20db"
        );
        assert_eq!(get("PGPASSWORD"), "p@ss:w/rd?#%");
        assert_eq!(get("PGPORT"), "5433");
        assert_eq!(get("PGHOST"), "10.0.0.2");
        assert_eq!(get("PGDATABASE"), "notes db");
        assert_eq!(get("PGUSER"), "waifu_notes");
        assert_eq!(host_in_url("::1"), "[::1]");
        assert_eq!(host_in_url("db.internal"), "db.internal");
    }
}
