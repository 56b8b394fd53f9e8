//! The client commands: `orchestrator check`, `status`, `incidents`,
//! `audit`, and the operator's `claim release`.
//! The only code that reports errors with `anyhow`, for a person to read.

mod check;
mod conformance;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use orchestrator::status::{Status, audit_table, history_table, incident_table, text};
use orchestrator::{
    AuditArgs, CheckArgs, ClientArgs, DbAction, HistoryArgs, MaintenanceArgs, PauseArgs,
    ResumeArgs, RolloutArgs, StateArgs, VersionArgs,
};
use waifus_protocol::{AuditEntry, History, IncidentInfo};

/// `orchestrator check URL` or `check --run -- CMD`: prints the report;
/// exit 0 only if all rules pass.
pub fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = match &args.url {
        Some(url) if !args.run => runtime.block_on(check::check(url, args.timeout)),
        _ => runtime.block_on(conformance::run(args))?,
    };
    println!("{report}");
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints what `fetch` makes of a running orchestrator's answer.
pub fn report(
    fetch: impl std::future::Future<Output = anyhow::Result<String>>,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    print!("{}", runtime.block_on(fetch)?);
    Ok(ExitCode::SUCCESS)
}

/// `orchestrator status`: the status page's content as tables.
pub async fn status(client: ClientArgs) -> anyhow::Result<String> {
    let status: Status = fetch(&client, "/__internal/status").await?;
    Ok(text(&status))
}

/// `orchestrator incidents`: the newest `limit` incidents as a table.
pub async fn incidents(client: ClientArgs, limit: u32) -> anyhow::Result<String> {
    let incidents: Vec<IncidentInfo> =
        fetch(&client, &format!("/__internal/incidents?limit={limit}")).await?;
    Ok(incident_table(&incidents))
}

/// `orchestrator audit`: the newest audit rows as a table.
pub async fn audit(args: AuditArgs) -> anyhow::Result<String> {
    let mut path = format!("/__internal/audit?limit={}", args.limit);
    if let Some(name) = &args.name {
        if waifus_protocol::validate_name(name).is_err() {
            anyhow::bail!("--name {name:?} is not a waifu name (a DNS label)");
        }
        path.push_str("&name=");
        path.push_str(name);
    }
    let entries: Vec<AuditEntry> = fetch(&args.client, &path).await?;
    Ok(audit_table(&entries))
}

/// `orchestrator history NAME`: the uptime line, then the transitions.
pub async fn history(args: HistoryArgs) -> anyhow::Result<String> {
    if waifus_protocol::validate_name(&args.name).is_err() {
        anyhow::bail!("{:?} is not a waifu name (a DNS label)", args.name);
    }
    let mut path = format!(
        "/__internal/waifus/{}/history?limit={}",
        args.name, args.limit
    );
    if let Some(since) = &args.since {
        let valid = humantime::parse_duration(since).is_ok()
            || humantime::parse_rfc3339_weak(since).is_ok();
        if !valid {
            anyhow::bail!(
                "--since {since:?} is neither a duration (90m, 7d) nor an RFC 3339 time \
                 (2026-12-05T10:00:00Z)"
            );
        }
        path.push_str("&since=");
        path.push_str(&percent_encode(since));
    }
    let history: History = fetch(&args.client, &path).await?;
    Ok(history_table(&history))
}

/// `orchestrator rollout NAME [--version V …|--abort]`: the rollout as it
/// stands after the call.
pub async fn rollout(args: RolloutArgs) -> anyhow::Result<String> {
    if waifus_protocol::validate_name(&args.name).is_err() {
        anyhow::bail!("{:?} is not a waifu name (a DNS label)", args.name);
    }
    let path = format!("/__internal/waifus/{}/rollout", args.name);
    let info: orchestrator::status::RolloutInfo = match (&args.version, args.abort) {
        (Some(version), _) => {
            let mut body = serde_json::json!({ "version": version });
            if let Some(steps) = &args.steps {
                body["steps"] = serde_json::json!(steps.0);
            }
            if let Some(interval) = args.interval {
                body["interval"] = humantime::format_duration(interval).to_string().into();
            }
            if let Some(rate) = args.max_error_rate {
                body["maxErrorRate"] = rate.into();
            }
            if let Some(ratio) = args.max_latency_ratio {
                body["maxLatencyRatio"] = ratio.into();
            }
            call(&args.client, http::Method::PUT, &path, Some(body)).await?
        }
        (None, true) => call(&args.client, http::Method::DELETE, &path, None).await?,
        (None, false) => fetch(&args.client, &path).await?,
    };
    Ok(orchestrator::status::rollout_text(&info))
}

/// `text` with everything but unreserved characters percent-encoded, for a
/// query string.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `orchestrator claim release NAME`: what was done, in a sentence.
pub async fn release_claim(state: StateArgs, name: String) -> anyhow::Result<String> {
    let released = orchestrator::admin::release_claim(&state, &name).await?;
    let mut out = if released.was_claimed {
        format!(
            "released the claim on {name}: its next hello or database call with a secret claims it again\n"
        )
    } else {
        format!("{name} was not claimed; nothing to release\n")
    };
    match released.sessions_ended {
        Some(n) => out.push_str(&format!(
            "the password of its database role is taken away ({n} session(s) ended); the next \
             database call with its secret sets a new one\n"
        )),
        None => out.push_str("it has no database role\n"),
    }
    Ok(out)
}

/// `orchestrator db ...`: what was done, or the table asked for.
pub async fn db(action: DbAction) -> anyhow::Result<String> {
    use orchestrator::admin;
    Ok(match action {
        DbAction::Dump {
            name,
            output,
            state,
        } => {
            let r = admin::dump(&state, &name, output.as_deref()).await?;
            format!(
                "wrote {} ({} bytes): {} tables, {} rows (their figures in {}.figures.json)\n",
                r.file.display(),
                r.size,
                r.tables,
                r.rows,
                r.file.display()
            )
        }
        DbAction::Restore {
            name,
            file,
            state,
            max_wait,
            latest,
        } => {
            let r = match file {
                Some(file) if !latest => admin::restore(&state, &name, &file, max_wait).await?,
                _ => admin::restore_latest(&state, &name, max_wait).await?,
            };
            let mut out = format!(
                "restored {name} from {}: {} tables, {} rows{}\n",
                r.file.display(),
                r.tables,
                r.rows,
                if r.checked {
                    ", as the dump recorded"
                } else {
                    " (no recorded figures to check against)"
                }
            );
            match r.before {
                Some(copy) => out.push_str(&format!(
                    "the previous database is kept as {copy} (drop it with DROP DATABASE when sure)\n"
                )),
                None => out.push_str("there was no database before\n"),
            }
            out
        }
        DbAction::List { state } => {
            let list = admin::list(&state).await?;
            let mut out = format!(
                "{:<24} {:<12} {:>12} {:>6}  {:<32} {:<21} {}\n",
                "NAME", "STATE", "SIZE", "CONNS", "LAST BACKUP", "LAST VERIFIED", "KEPT COPIES"
            );
            for d in list {
                out.push_str(&format!(
                    "{:<24} {:<12} {:>12} {:>6}  {:<32} {:<21} {}\n",
                    d.name,
                    d.state,
                    d.size_bytes.map_or("-".to_owned(), |b| b.to_string()),
                    d.connections,
                    d.last_backup.as_deref().unwrap_or("-"),
                    d.last_verified.as_deref().unwrap_or("-"),
                    if d.copies.is_empty() {
                        "-".to_owned()
                    } else {
                        d.copies.join(", ")
                    }
                ));
            }
            out
        }
        DbAction::Drop { name, yes, state } => {
            admin::drop_database(&state, &name, yes).await?;
            format!("dropped {name}'s database, kept copies, role and secret\n")
        }
        DbAction::Rotate {
            name,
            new_secret_file,
            state,
        } => {
            admin::rotate(&state, &name, &new_secret_file).await?;
            format!(
                "{name}'s secret and database password are replaced (open sessions go on): \
                 put the new secret where the waifu reads WAIFU_SECRET_FILE\n"
            )
        }
        DbAction::Backups { name, state } => {
            let list = admin::backups(&state, &name).await?;
            if list.is_empty() {
                return Ok(format!(
                    "{name} has no backups (scheduled backups need BACKUP_DIR)\n"
                ));
            }
            let mut out = format!(
                "{:<24} {:<11} {:>10}  {}\n",
                "TAKEN", "VERIFIED", "SIZE", "FILE"
            );
            for b in list {
                let outcome = match b.outcome.as_str() {
                    "verified" => "yes",
                    "unverified" => "NO",
                    "failed" => "failed",
                    other => other,
                };
                out.push_str(&format!(
                    "{:<24} {:<11} {:>10}  {}{}{}\n",
                    b.taken_at,
                    outcome,
                    b.size.map_or("-".to_owned(), |s| s.to_string()),
                    b.file.display(),
                    if b.present || b.outcome != "verified" {
                        ""
                    } else {
                        " (missing)"
                    },
                    b.detail.map(|d| format!("  ({d})")).unwrap_or_default()
                ));
            }
            out
        }
    })
}

/// `orchestrator pause NAME`.
pub async fn pause(args: PauseArgs) -> anyhow::Result<String> {
    let path = format!("/__internal/waifus/{}/pause", checked(&args.name)?);
    let body =
        serde_json::json!({"maxWait": humantime::format_duration(args.max_wait).to_string()});
    let _: serde_json::Value = call(&args.client, http::Method::PUT, &path, Some(body)).await?;
    Ok(format!(
        "{} is paused on every orchestrator: its new requests wait (at most {} each) until `orchestrator resume {}`\n",
        args.name,
        humantime::format_duration(args.max_wait),
        args.name
    ))
}

/// `orchestrator resume NAME`.
pub async fn resume(args: ResumeArgs) -> anyhow::Result<String> {
    let path = format!("/__internal/waifus/{}/pause", checked(&args.name)?);
    let answer: serde_json::Value = call(&args.client, http::Method::DELETE, &path, None).await?;
    Ok(if answer["wasPaused"] == true {
        format!("{} is resumed: the held requests go on\n", args.name)
    } else {
        format!("{} was not paused\n", args.name)
    })
}

/// `orchestrator maintenance NAME on|off`.
pub async fn maintenance(args: MaintenanceArgs) -> anyhow::Result<String> {
    let path = format!("/__internal/waifus/{}/maintenance", checked(&args.name)?);
    if args.state == "off" {
        let answer: serde_json::Value =
            call(&args.client, http::Method::DELETE, &path, None).await?;
        return Ok(if answer["wasOn"] == true {
            format!(
                "{} is out of maintenance: its requests go through again\n",
                args.name
            )
        } else {
            format!("{} was not in maintenance\n", args.name)
        });
    }
    let body = serde_json::json!({"message": args.message, "retryAfter": args.retry_after});
    let _: serde_json::Value = call(&args.client, http::Method::PUT, &path, Some(body)).await?;
    Ok(format!(
        "{} is in maintenance on every orchestrator: its requests are answered 503 \
         (Retry-After: {} s) until `orchestrator maintenance {} off`\n",
        args.name, args.retry_after, args.name
    ))
}

/// `orchestrator upgrade`.
pub async fn upgrade(client: ClientArgs) -> anyhow::Result<String> {
    let answer: serde_json::Value = call(
        &client,
        http::Method::POST,
        orchestrator::upgrade::API_PATH,
        None,
    )
    .await?;
    Ok(format!(
        "upgraded: the new orchestrator (pid {}) serves; the previous one (pid {}) drains and exits\n",
        answer["pid"], answer["previous"]
    ))
}

/// `orchestrator version NAME VERSION`.
pub async fn version(args: VersionArgs) -> anyhow::Result<String> {
    let path = format!("/__internal/waifus/{}/version", checked(&args.name)?);
    let body = serde_json::json!({"version": args.version});
    let answer: serde_json::Value =
        call(&args.client, http::Method::PUT, &path, Some(body)).await?;
    Ok(if answer["changed"] == true {
        format!(
            "{} {} is current on every orchestrator (was {}): its instances get the new requests while one is healthy\n",
            args.name,
            args.version,
            answer["from"].as_str().unwrap_or("no version")
        )
    } else {
        format!("{} {} was current already\n", args.name, args.version)
    })
}

fn checked(name: &str) -> anyhow::Result<&str> {
    if waifus_protocol::validate_name(name).is_err() {
        anyhow::bail!("{name:?} is not a waifu name (a DNS label)");
    }
    Ok(name)
}

/// Fetches `path` from a running orchestrator's internal API as JSON,
/// with the client's token.
async fn fetch<T: serde::de::DeserializeOwned>(
    client: &ClientArgs,
    path: &str,
) -> anyhow::Result<T> {
    call(client, http::Method::GET, path, None).await
}

/// `method path` on a running orchestrator's internal API, with `body` as
/// JSON and the client's token; the answer as JSON.
async fn call<T: serde::de::DeserializeOwned>(
    client: &ClientArgs,
    method: http::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<T> {
    let client = client.clone().read_files()?;
    let addr: SocketAddr = client.internal_addr;
    let token = client.token();
    use anyhow::Context as _;
    use http_body_util::{BodyExt, Full, Limited};
    let http: hyper_util::client::legacy::Client<_, Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header(http::header::ACCEPT, "application/json");
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let payload = match body {
        Some(v) => {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
            bytes::Bytes::from(v.to_string())
        }
        None => bytes::Bytes::new(),
    };
    let request = request.body(Full::new(payload))?;
    // An upgrade answers once the new process serves.
    let within = if path == orchestrator::upgrade::API_PATH {
        orchestrator::upgrade::READY_WITHIN + Duration::from_secs(10)
    } else {
        Duration::from_secs(10)
    };
    let response = tokio::time::timeout(within, http.request(request))
        .await
        .map_err(|_| anyhow::anyhow!("{addr} did not answer within {} s", within.as_secs()))?
        .with_context(|| format!("cannot reach the orchestrator's internal API at {addr}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), 64 << 20)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
        .to_bytes();
    if !status.is_success() {
        anyhow::bail!(
            "{path} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    serde_json::from_slice(&body)
        .with_context(|| format!("{path} did not answer the expected JSON"))
}
