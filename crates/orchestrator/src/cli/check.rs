//! `orchestrator check URL`: a conformance checker for a waifu written in any
//! language. Each rule of the protocol that can be observed from
//! outside is checked and reported as passed or failed in plain words.

use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use waifus_protocol::{Scheme, parse_host};

/// One rule and how it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleResult {
    /// What the rule requires.
    pub rule: String,
    /// `None` when it passed; otherwise what was seen instead.
    pub failure: Option<String>,
}

/// Everything `check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub target: String,
    pub results: Vec<RuleResult>,
    /// Said after the verdict (where to look when a rule failed).
    pub note: Option<String>,
}

impl Report {
    /// Whether every rule passed.
    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.failure.is_none())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Checking the waifu at {}", self.target)?;
        for r in &self.results {
            match &r.failure {
                None => writeln!(f, "  PASS  {}", r.rule)?,
                Some(why) => writeln!(f, "  FAIL  {}\n        {why}", r.rule)?,
            }
        }
        let failed = self.results.iter().filter(|r| r.failure.is_some()).count();
        if failed == 0 {
            write!(f, "All {} rules passed.", self.results.len())?;
        } else {
            write!(f, "{failed} of {} rules failed.", self.results.len())?;
        }
        match &self.note {
            Some(note) => write!(f, "\n{note}"),
            None => Ok(()),
        }
    }
}

fn rule(rule: &str, failure: Option<String>) -> RuleResult {
    RuleResult {
        rule: rule.to_owned(),
        failure,
    }
}

/// Checks the waifu at `target` (`host:port` or `http://host:port`).
pub async fn check(target: &str, timeout: Duration) -> Report {
    const REACHABLE: &str = "GET /__internal/health answers";
    const IN_TIME: &str = "it answers within the timeout";
    const STATUS: &str = "it answers exactly 204 No Content";
    const EMPTY: &str = "its body is empty";
    let mut report = Report {
        target: target.to_owned(),
        results: Vec::new(),
        note: None,
    };
    let upstream = match parse_host(target) {
        Ok(u) if u.scheme == Scheme::Http => u,
        Ok(_) => {
            report.results.push(rule(
                REACHABLE,
                Some("https:// waifus cannot be checked yet; give the plain http address".into()),
            ));
            return report;
        }
        Err(e) => {
            report.results.push(rule(
                REACHABLE,
                Some(format!("{target:?} is not a waifu address: {e}")),
            ));
            return report;
        }
    };
    report.target = upstream.to_string();
    let url = format!("http://{}/__internal/health", upstream.authority());
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let started = Instant::now();
    let answer = tokio::time::timeout(timeout, async {
        let response = client.get(url.parse()?).await?;
        let status = response.status();
        let body = Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
    })
    .await;
    let elapsed = started.elapsed();
    let (status, body) = match answer {
        Err(_) => {
            report.results.push(rule(REACHABLE, None));
            report.results.push(rule(
                IN_TIME,
                Some(format!("no complete answer within {timeout:?}")),
            ));
            return report;
        }
        Ok(Err(e)) => {
            report.results.push(rule(
                REACHABLE,
                Some(format!("could not get an answer from {url}: {e}")),
            ));
            return report;
        }
        Ok(Ok(answer)) => answer,
    };
    report.results.push(rule(REACHABLE, None));
    report.results.push(rule(IN_TIME, None));
    let status_failure = (status != http::StatusCode::NO_CONTENT).then(|| {
        format!(
            "it answered {status}; the protocol requires 204 No Content (answered in {elapsed:?})"
        )
    });
    report.results.push(rule(STATUS, status_failure));
    let body_failure = (!body.is_empty()).then(|| {
        format!(
            "it sent {} bytes of body; a health answer has none",
            body.len()
        )
    });
    report.results.push(rule(EMPTY, body_failure));
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unusable_targets_fail_with_a_reason() {
        for (target, needle) in [
            ("not a host!", "not a waifu address"),
            ("https://x:1", "https://"),
            ("127.0.0.1:1", "could not get an answer"),
        ] {
            let r = check(target, Duration::from_secs(2)).await;
            assert!(!r.passed());
            let text = r.to_string();
            assert!(text.contains(needle), "{target}: {text}");
            assert!(text.contains("FAIL"), "{text}");
        }
    }
}
