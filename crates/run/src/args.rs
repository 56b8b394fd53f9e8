//! The command line: `waifu-run [OPTIONS] -- CMD ARGS…`.

use std::ffi::OsString;

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Args {
    /// `--name`: the waifu's name (else `WAIFU_NAME`, else the hostname).
    pub name: Option<String>,
    /// `--port`: where the app listens, passed to it as `PORT` (else
    /// `PORT`, else 8080).
    pub port: Option<u16>,
    /// `--health`: the app's health path (any 2xx is healthy); else the
    /// protocol's `/__internal/health`.
    pub health: Option<String>,
    /// `--database`: fetch the database credentials and pass them on.
    pub database: bool,
    /// The app and its arguments.
    pub command: Vec<OsString>,
}

/// What `--help` prints.
pub(crate) const USAGE: &str = "\
usage: waifu-run [--name NAME] [--port PORT] [--health PATH] [--database] -- CMD [ARGS...]

Runs CMD as a waifu: it starts CMD with PORT set, waits until its health path
answers 2xx, says hello to the orchestrator (and again every 30 s); on SIGTERM
or SIGINT it says goodbye, waits until the orchestrator has no request in
flight to it (at most DRAIN_TIMEOUT, default 25s), then passes SIGTERM to CMD
and exits with its status. If CMD exits, it says goodbye at once and exits
with CMD's status.

options:
  --name NAME     the waifu's name (default: WAIFU_NAME, else the hostname)
  --port PORT     the port CMD listens on, given to it as PORT (default: PORT, else 8080)
  --health PATH   CMD's health path, any 2xx is healthy
                  (default: /__internal/health answering 204)
  --database      ask for the waifu's database first and give CMD DATABASE_URL,
                  PGHOST, PGPORT, PGDATABASE, PGUSER and PGPASSWORD

settings from the environment: ORCHESTRATOR_URL, WAIFU_NAME, WAIFU_HOST,
WAIFU_SECRET(_FILE), ORCHESTRATOR_TOKEN(_FILE), WAIFU_VERSION, WAIFU_BINDS,
WAIFU_CACHE_DIR, DRAIN_TIMEOUT, LOG_FORMAT (text or json), RUST_LOG.
";

/// Why the command line cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ArgsError {
    /// `--help`.
    Help,
    /// `--version`.
    Version,
    Bad(String),
}

impl Args {
    /// Reads the arguments after the program's name.
    pub(crate) fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args, ArgsError> {
        let mut args = args.into_iter();
        let mut parsed = Args {
            name: None,
            port: None,
            health: None,
            database: false,
            command: Vec::new(),
        };
        while let Some(arg) = args.next() {
            let Some(text) = arg.to_str() else {
                return Err(bad(format!(
                    "{arg:?} is not an option (put the command after --)"
                )));
            };
            let (flag, inline) = match text.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
                _ => (text, None),
            };
            let mut value = |what: &str| -> Result<String, ArgsError> {
                match inline.clone() {
                    Some(v) => Ok(v),
                    None => args
                        .next()
                        .and_then(|v| v.into_string().ok())
                        .ok_or_else(|| bad(format!("{flag} needs {what}"))),
                }
            };
            match flag {
                "--" => {
                    parsed.command = args.by_ref().collect();
                    break;
                }
                "-h" | "--help" => return Err(ArgsError::Help),
                "-V" | "--version" => return Err(ArgsError::Version),
                "--name" => parsed.name = Some(value("a name")?),
                "--port" => {
                    let v = value("a port")?;
                    parsed.port = Some(
                        v.parse::<u16>()
                            .ok()
                            .filter(|p| *p != 0)
                            .ok_or_else(|| bad(format!("--port {v:?} is not a port (1-65535)")))?,
                    );
                }
                "--health" => {
                    let v = value("a path")?;
                    if let Err(e) = waifu::waifus_protocol::validate_health_path(&v) {
                        return Err(bad(format!("--health {v:?}: {e}")));
                    }
                    parsed.health = Some(v);
                }
                "--database" if inline.is_none() => parsed.database = true,
                _ if text.starts_with('-') => {
                    return Err(bad(format!("unknown option {text:?}")));
                }
                _ => {
                    return Err(bad(format!(
                        "{text:?} is not an option: put the command after --, \
                         as in waifu-run -- {text}"
                    )));
                }
            }
        }
        if parsed.command.is_empty() {
            return Err(bad(
                "no command: give the app to run after --, as in waifu-run -- python3 app.py"
                    .to_owned(),
            ));
        }
        Ok(parsed)
    }
}

fn bad(message: String) -> ArgsError {
    ArgsError::Bad(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, ArgsError> {
        Args::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn options_then_the_command() {
        let a = parse(&[
            "--name",
            "notes",
            "--port=9000",
            "--health",
            "/healthz",
            "--database",
            "--",
            "node",
            "app.js",
            "--port",
            "1",
        ])
        .unwrap();
        assert_eq!(a.name.as_deref(), Some("notes"));
        assert_eq!(a.port, Some(9000));
        assert_eq!(a.health.as_deref(), Some("/healthz"));
        assert!(a.database);
        assert_eq!(a.command, ["node", "app.js", "--port", "1"]);
        let plain = parse(&["--", "app"]).unwrap();
        assert_eq!((plain.name, plain.port, plain.health), (None, None, None));
        assert!(!plain.database);
    }

    #[test]
    fn every_mistake_is_named() {
        let message = |args: &[&str]| match parse(args) {
            Err(ArgsError::Bad(m)) => m,
            other => panic!("{args:?}: {other:?}"),
        };
        assert!(message(&[]).contains("no command"));
        assert!(message(&["--database"]).contains("no command"));
        assert!(message(&["--port", "0", "--", "a"]).contains("not a port"));
        assert!(message(&["--port", "x", "--", "a"]).contains("not a port"));
        assert!(message(&["--port"]).contains("--port needs a port"));
        assert!(message(&["--health", "healthz", "--", "a"]).contains("--health"));
        assert!(message(&["--frobnicate", "--", "a"]).contains("unknown option"));
        assert!(message(&["--database=yes", "--", "a"]).contains("unknown option"));
        assert!(message(&["python3", "app.py"]).contains("after --"));
        assert_eq!(parse(&["--help"]), Err(ArgsError::Help));
    }
}
