//! `orchestrator check --run -- CMD`: a conformance run of a waifu in any
//! language. CMD runs as instance `a` of a waifu with a throwaway
//! orchestrator (or `--orchestrator`), its calls to the orchestrator
//! relayed through a recorder ([`spy`]); then a second instance `b` starts
//! and `a` is sent SIGTERM under load, as a deploy does. Each rule is
//! judged from what was seen, in the order a waifu meets them.

mod load;
mod platform;
mod spy;

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use orchestrator::CheckArgs;
use waifus_protocol::{WaifuInfo, parse_host};

use super::check::{self, Report, RuleResult};
use platform::{Instance, Orchestrator, Told};
use spy::{Call, Seen};

const HELLO: &str = "it says hello within 60 s of starting";
const HELLO_FIELDS: &str = "its hello carries the name, host, version and secret it was given";
const READY: &str = "its health passes before it says hello";
const ROUTED: &str = "the orchestrator finds it healthy within 30 s";
const INTERNAL: &str = "public requests to its __internal paths never reach it";
const SECOND: &str = "a second instance starts and is routed to";
const GOODBYE: &str = "it says goodbye after SIGTERM";
const NO_FAILED: &str = "no request fails while it leaves under load";
const EXIT: &str = "it exits 0 within the drain time after SIGTERM";
const REHELLO: &str = "it says hello again within 40 s";

/// The version the instances are told to announce.
const VERSION: &str = "check-1";

/// Runs the check; `Err` only when the run itself could not be set up.
pub(super) async fn run(args: &CheckArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(
        !args.command.is_empty(),
        "give the waifu's command after --, as in: orchestrator check --run -- python3 app.py"
    );
    waifus_protocol::validate_name(&args.name)
        .map_err(|e| anyhow::anyhow!("--name {:?}: {e}", args.name))?;
    anyhow::ensure!(
        args.path.starts_with('/'),
        "--path {:?} must start with /",
        args.path
    );
    let dir = std::env::temp_dir().join(format!(
        "waifus-check-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut orchestrator = match (&args.orchestrator, args.public) {
        (Some(internal), Some(public)) => Orchestrator::given(internal, public),
        _ => Orchestrator::start(&dir).await?,
    };
    let (relay, seen) = spy::start(&orchestrator.internal).await?;
    let told = Told {
        command: args.command.clone(),
        orchestrator_url: format!("http://{relay}"),
        name: args.name.clone(),
        version: VERSION.to_owned(),
        secret: format!("check-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
        dir: dir.clone(),
    };
    let mut run = Run {
        args,
        orchestrator: &orchestrator,
        seen: &seen,
        told: &told,
        results: Vec::new(),
    };
    let outcome = run.judge().await;
    let results = run.results;
    orchestrator.stop().await;
    let mut report = Report {
        target: args
            .command
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        results,
        note: None,
    };
    outcome?;
    if report.passed() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        report.note = Some(format!(
            "The instances' output and the orchestrator's log are in {}",
            dir.display()
        ));
    }
    Ok(report)
}

struct Run<'a> {
    args: &'a CheckArgs,
    orchestrator: &'a Orchestrator,
    seen: &'a Seen,
    told: &'a Told,
    results: Vec<RuleResult>,
}

impl Run<'_> {
    fn judged(&mut self, rule: &str, failure: Option<String>) {
        self.results.push(RuleResult {
            rule: rule.to_owned(),
            failure,
        });
    }

    /// `rules` could not be judged: each fails, saying why.
    fn not_reached(&mut self, rules: &[&str], why: &str) {
        for rule in rules {
            self.judged(rule, Some(format!("not checked: {why}")));
        }
    }

    async fn judge(&mut self) -> anyhow::Result<()> {
        let mut a = self.told.start("a")?;
        let Some(first) = self.first_hello(&mut a, Duration::from_secs(60)).await else {
            self.not_reached(
                &[
                    HELLO_FIELDS,
                    READY,
                    ROUTED,
                    INTERNAL,
                    SECOND,
                    GOODBYE,
                    NO_FAILED,
                    EXIT,
                    REHELLO,
                ],
                "no hello",
            );
            platform::stop(&mut a.child, self.args.drain).await;
            return Ok(());
        };
        self.judged(HELLO, None);
        self.judged(HELLO_FIELDS, self.fields_wrong(&first, &a.host));
        self.judged(
            READY,
            match &first.health_then {
                Some(Err(why)) => Some(format!("when its first hello arrived, {why}")),
                _ => None,
            },
        );
        let declared = first
            .body
            .as_ref()
            .and_then(|b| b.get("health"))
            .and_then(|h| h.as_str())
            .map(str::to_owned);
        let routed = self.routed(&a.host, Duration::from_secs(30)).await;
        self.judged(ROUTED, routed.clone().err());
        // Judged once it had its time to start, as the orchestrator does.
        self.health_rules(&a.host, declared.as_deref()).await;
        self.judged(INTERNAL, self.internal_refused().await);

        // A deploy: b starts; once it serves, a is told to stop under load.
        let mut b = self.told.start("b")?;
        let second = match self.first_hello(&mut b, Duration::from_secs(60)).await {
            Some(_) => self.routed(&b.host, Duration::from_secs(30)).await,
            None => Err("the second instance said no hello within 60 s".to_owned()),
        };
        self.judged(SECOND, second.clone().err());
        if second.is_err() || routed.is_err() {
            self.not_reached(
                &[GOODBYE, NO_FAILED, EXIT],
                "no deploy without two instances",
            );
        } else {
            self.deploy(&mut a).await;
        }
        self.rehello(&a, &b).await;
        platform::stop(&mut a.child, Duration::from_secs(5)).await;
        platform::stop(&mut b.child, self.args.drain).await;
        Ok(())
    }

    /// The first hello of `instance`, judged [`HELLO`] when none comes.
    async fn first_hello(&mut self, instance: &mut Instance, within: Duration) -> Option<Call> {
        let host = canonical(&instance.host);
        let found = |calls: &[Call]| {
            calls
                .iter()
                .find(|c| {
                    c.path == "/__internal/hello" && c.host().map(canonical) == Some(host.clone())
                })
                .cloned()
        };
        let waited = tokio::select! {
            hello = self.seen.until(within, found) => hello,
            status = instance.child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                self.judged(HELLO, Some(format!(
                    "it exited ({status}) before saying hello; its output: {}",
                    instance.log.display()
                )));
                return None;
            }
        };
        if waited.is_none() {
            self.judged(
                HELLO,
                Some(format!(
                    "no hello from {} within {within:?}; its output: {}",
                    instance.host,
                    instance.log.display()
                )),
            );
        }
        waited
    }

    /// What in `hello` differs from what the instance was told.
    fn fields_wrong(&self, hello: &Call, host: &str) -> Option<String> {
        let body = hello.body.as_ref()?;
        let field = |k: &str| body.get(k).and_then(|v| v.as_str());
        let mut wrong = Vec::new();
        if field("name") != Some(self.told.name.as_str()) {
            wrong.push(format!(
                "name {:?}, told {:?}",
                field("name"),
                self.told.name
            ));
        }
        if field("host").map(canonical) != Some(canonical(host)) {
            wrong.push(format!("host {:?}, told {host:?}", field("host")));
        }
        if field("version") != Some(VERSION) {
            wrong.push(format!(
                "version {:?}, told {VERSION:?} (WAIFU_VERSION)",
                field("version")
            ));
        }
        if field("secret") != Some(self.told.secret.as_str()) {
            wrong.push(match field("secret") {
                None => "no secret, though WAIFU_SECRET was set".to_owned(),
                Some(_) => "a secret other than WAIFU_SECRET".to_owned(),
            });
        }
        (!wrong.is_empty()).then(|| wrong.join("; "))
    }

    /// The health endpoint's rules: the protocol's (204, no body) or the
    /// declared path's (any 2xx).
    async fn health_rules(&mut self, host: &str, declared: Option<&str>) {
        let Some(path) = declared else {
            let report = check::check(host, self.args.timeout).await;
            for r in report.results {
                self.judged(&format!("health: {}", r.rule), r.failure);
            }
            return;
        };
        let rule = format!("health: GET {path} (declared in its hello) answers 2xx");
        let url = format!(
            "http://{}{path}",
            canonical(host).trim_start_matches("http://")
        );
        let failure = match get(&url, &[], self.args.timeout).await {
            Ok((status, _)) if (200..300).contains(&status) => None,
            Ok((status, _)) => Some(format!("it answered {status}")),
            Err(e) => Some(e),
        };
        self.judged(&rule, failure);
    }

    /// Waits until the orchestrator lists `host` as healthy and serving.
    async fn routed(&self, host: &str, within: Duration) -> Result<(), String> {
        let host = canonical(host);
        let url = format!("{}/__internal/waifus", self.orchestrator.internal);
        let token = self.args.admin_token.as_deref();
        let headers: Vec<(&str, String)> = token
            .map(|t| ("authorization", format!("Bearer {t}")))
            .into_iter()
            .collect();
        let deadline = Instant::now() + within;
        loop {
            let last;
            match get(&url, &headers, Duration::from_secs(5)).await {
                Ok((200, body)) => {
                    let list: Vec<WaifuInfo> = serde_json::from_slice(&body).unwrap_or_default();
                    let found = list
                        .iter()
                        .filter(|w| w.name == self.told.name)
                        .flat_map(|w| &w.instances)
                        .find(|i| i.host == host);
                    match found {
                        Some(i) if i.healthy && !i.draining => return Ok(()),
                        Some(i) => {
                            last = format!("listed, healthy {}, draining {}", i.healthy, i.draining)
                        }
                        None => last = "not listed".to_owned(),
                    }
                }
                Ok((status, body)) => {
                    last = format!(
                        "the list of waifus answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                return Err(format!("{host} after {within:?}: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Public requests for the waifu's `__internal` paths, in the forms an
    /// attacker tries: each must be answered by the orchestrator.
    async fn internal_refused(&self) -> Option<String> {
        let name = &self.told.name;
        let mut reached = Vec::new();
        for path in [
            "/__internal/health",
            "/__INTERNAL/health",
            "/%5F%5Finternal/health",
            "/x/../__internal/health",
            "/a/__internal_x",
        ] {
            let url = format!("http://{}/{name}{path}", self.orchestrator.public);
            match get(
                &url,
                &[("host", "localhost".to_owned())],
                Duration::from_secs(5),
            )
            .await
            {
                Ok((status, body)) => {
                    let ours = serde_json::from_slice::<serde_json::Value>(&body)
                        .is_ok_and(|j| j.get("error").is_some());
                    if !(matches!(status, 400 | 404) && ours) {
                        reached.push(format!("{path}: {status}"));
                    }
                }
                Err(e) => reached.push(format!("{path}: {e}")),
            }
        }
        (!reached.is_empty()).then(|| {
            format!(
                "not answered by the orchestrator itself: {}",
                reached.join(", ")
            )
        })
    }

    /// `a` is sent SIGTERM while both serve under load.
    async fn deploy(&mut self, a: &mut Instance) {
        let load = load::Load::start(self.orchestrator.public, &self.told.name, &self.args.path);
        let deadline = Instant::now() + Duration::from_secs(10);
        while load.sent() < 100 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stopped = Instant::now();
        platform::signal(&a.child);
        let host = canonical(&a.host);
        let goodbye_of_a = |calls: &[Call]| {
            calls
                .iter()
                .find(|c| {
                    c.at >= stopped
                        && c.path == "/__internal/goodbye"
                        && c.host().map(canonical) == Some(host.clone())
                })
                .map(|c| c.status)
        };
        let left = tokio::time::Instant::from_std(stopped + self.args.drain);
        // Until a goodbye or its exit, whichever is first; a goodbye after
        // the process ended cannot come.
        let (goodbye, exit) = tokio::select! {
            goodbye = self.seen.until(self.args.drain, goodbye_of_a) => {
                (goodbye, tokio::time::timeout_at(left, a.child.wait()).await)
            }
            exit = tokio::time::timeout_at(left, a.child.wait()) => {
                (self.seen.until(Duration::from_millis(500), goodbye_of_a).await, exit)
            }
        };
        // The load goes on a moment after it left.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let outcome = load.finish().await;
        self.judged(
            GOODBYE,
            match goodbye {
                Some(200) => None,
                Some(status) => Some(format!("its goodbye was answered {status}")),
                None => Some(format!("no goodbye within {:?}", self.args.drain)),
            },
        );
        let mut failed = outcome.failed.clone();
        failed.dedup();
        self.judged(
            NO_FAILED,
            (!outcome.failed.is_empty() || outcome.sent == 0).then(|| {
                format!(
                    "{} of {} requests to /{}{} failed: {}",
                    outcome.failed.len(),
                    outcome.sent,
                    self.told.name,
                    self.args.path,
                    failed.join(", ")
                )
            }),
        );
        self.judged(
            EXIT,
            match exit {
                Ok(Ok(status)) if status.success() => None,
                Ok(Ok(status)) => Some(format!("it exited with {status}")),
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("still running {:?} after SIGTERM", self.args.drain)),
            },
        );
    }

    /// A second hello from either instance within 40 s of its first.
    async fn rehello(&mut self, a: &Instance, b: &Instance) {
        let hosts = [canonical(&a.host), canonical(&b.host)];
        let again = |calls: &[Call]| {
            hosts.iter().find_map(|host| {
                let hellos: Vec<Instant> = calls
                    .iter()
                    .filter(|c| {
                        c.path == "/__internal/hello"
                            && c.host().map(canonical) == Some(host.clone())
                    })
                    .map(|c| c.at)
                    .collect();
                (hellos.len() >= 2).then(|| hellos[1] - hellos[0])
            })
        };
        let first = self
            .seen
            .calls()
            .iter()
            .filter(|c| c.path == "/__internal/hello")
            .map(|c| c.at)
            .max()
            .unwrap_or_else(Instant::now);
        let within = (first + Duration::from_secs(40)).saturating_duration_since(Instant::now());
        let failure = match self.seen.until(within, again).await {
            Some(gap) if gap <= Duration::from_secs(40) => None,
            Some(gap) => Some(format!("the second hello came {gap:?} after the first")),
            None => Some("no second hello within 40 s of the first".to_owned()),
        };
        self.judged(REHELLO, failure);
    }
}

/// A host as the orchestrator writes it (`http://host:port`).
fn canonical(host: &str) -> String {
    parse_host(host).map_or_else(|_| host.to_owned(), |u| u.to_string())
}

/// One GET with `headers`: its status and body.
async fn get(
    url: &str,
    headers: &[(&str, String)],
    within: Duration,
) -> Result<(u16, Bytes), String> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::get(url);
    for (k, v) in headers {
        request = request.header(*k, v);
    }
    let request = request.body(Empty::new()).map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(within, async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    })
    .await;
    answer.unwrap_or_else(|_| Err(format!("GET {url}: no answer within {within:?}")))
}
