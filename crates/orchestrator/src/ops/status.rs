//! The status page (`GET /__internal/status`) and the text the
//! `orchestrator status` / `orchestrator incidents` commands print.
//!
//! One snapshot ([`Status`]) feeds all three: rendered as self-refreshing
//! HTML (no script, no external asset), as JSON when asked with
//! `Accept: application/json`, and as text tables by the CLI, which reads
//! that JSON from a running orchestrator. Pure rendering: who gathers the
//! snapshot is the internal API's business.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use waifus_protocol::{AuditEntry, IncidentInfo, WaifuInfo};

/// Incidents shown on the page.
pub(crate) const RECENT_INCIDENTS: i64 = 20;
/// Audit rows shown on the page.
pub(crate) const RECENT_AUDIT: i64 = 20;
/// The page reloads itself this often.
const REFRESH_SECONDS: u32 = 5;

/// Everything the page shows.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub version: String,
    pub uptime_seconds: u64,
    /// Proxied requests per second, over the last few seconds.
    pub requests_per_second: f64,
    pub open_connections: i64,
    /// Whether this orchestrator runs the health checks (one at a time does).
    pub health_leader: bool,
    pub waifus: Vec<WaifuStatus>,
    /// Newest first.
    pub incidents: Vec<IncidentInfo>,
    /// The newest changes to names, instances, binds, secrets and
    /// databases; newest first.
    #[serde(default)]
    pub audit: Vec<AuditEntry>,
    /// Set when the state database could not be read: databases and
    /// incidents are then unknown.
    pub store_error: Option<String>,
}

/// A waifu and whether it has a database.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaifuStatus {
    #[serde(flatten)]
    pub info: WaifuInfo,
    /// `ready`, `provisioning`, or `None` for no database.
    pub database: Option<String>,
    /// When its newest verified backup was checked (RFC 3339), if any.
    #[serde(rename = "lastBackup", default)]
    pub last_backup: Option<String>,
}

/// HTML-escapes text for element content and quoted attributes.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn uptime(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

/// The page. Every value that came from outside is escaped.
pub fn html(status: &Status) -> String {
    let mut h = String::with_capacity(8 * 1024);
    let healthy = status
        .waifus
        .iter()
        .filter(|w| w.info.instances.iter().any(|i| i.healthy))
        .count();
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>waifus status</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#222;background:#fafafa}}
h1{{font-size:1.4rem;margin:0 0 .5rem}} h2{{font-size:1.1rem;margin:1.5rem 0 .5rem}}
table{{border-collapse:collapse;width:100%;background:#fff}}
th,td{{text-align:left;padding:.3rem .6rem;border-bottom:1px solid #e3e3e3;vertical-align:top}}
th{{background:#f0f0f0;font-weight:600}} code{{font-size:13px}}
.ok{{color:#17723b;font-weight:600}} .bad{{color:#b3261e;font-weight:600}} .draining{{color:#8a5a00;font-weight:600}}
.summary span{{display:inline-block;margin-right:1.5rem}} .warn{{background:#fff4e5;padding:.5rem;border:1px solid #f0c36d}}
</style></head><body>
<h1>waifus status</h1>
<p class="summary"><span>version <b>{version}</b></span><span>up <b>{up}</b></span>
<span id="rate"><b>{rate:.1}</b> requests/s</span><span><b>{conns}</b> open connections</span>
<span><b>{healthy}</b> of <b>{total}</b> waifus healthy</span>
<span>health checks: <b>{leader}</b></span></p>
"#,
        version = esc(&status.version),
        up = uptime(status.uptime_seconds),
        rate = status.requests_per_second,
        conns = status.open_connections,
        total = status.waifus.len(),
        leader = if status.health_leader {
            "run here"
        } else {
            "run by another orchestrator"
        },
    );
    if let Some(e) = &status.store_error {
        let _ = writeln!(
            h,
            r#"<p class="warn">The state database cannot be read ({}): databases and incidents are not shown. Routing goes on.</p>"#,
            esc(e)
        );
    }
    h.push_str("<h2>Waifus</h2>\n");
    if status.waifus.is_empty() {
        h.push_str("<p>No waifu has said hello yet.</p>\n");
    } else {
        h.push_str(
            "<table id=\"waifus\"><thead><tr><th>Waifu</th><th>Instances</th><th>Binds</th>\
             <th>Database</th></tr></thead><tbody>\n",
        );
        for w in &status.waifus {
            let _ = write!(
                h,
                r#"<tr class="waifu"><td><a href="{url}"><b>{name}</b></a>{state}</td><td>"#,
                url = esc(&w.info.url),
                name = esc(&w.info.name),
                state = match w.info.state.as_str() {
                    "open" | "" => String::new(),
                    other => format!(r#" <span class="bad">{}</span>"#, esc(other)),
                }
            );
            for i in &w.info.instances {
                let (class, word) = if i.healthy {
                    ("ok", "healthy")
                } else {
                    ("bad", "unhealthy")
                };
                let checked = i.last_check.as_deref().unwrap_or("never");
                let version = i
                    .version
                    .as_deref()
                    .map(|v| format!(" <code class=\"version\">{}</code>", esc(v)))
                    .unwrap_or_default();
                let draining = if i.draining {
                    r#" <span class="draining">draining</span>"#
                } else {
                    ""
                };
                let limits = i
                    .limits
                    .as_ref()
                    .map(|l| format!(" <small>{}</small>", esc(&limits_text(l))))
                    .unwrap_or_default();
                let _ = write!(
                    h,
                    r#"<div class="instance"><code>{host}</code>{version} <span class="{class}">{word}</span>{draining} <small>checked {checked}</small>{limits}</div>"#,
                    host = esc(&i.host),
                    checked = esc(checked),
                );
            }
            h.push_str("</td><td>");
            for b in &w.info.binds {
                let _ = write!(
                    h,
                    "<div><code>{}</code> → <code>{}</code></div>",
                    esc(&b.bind),
                    esc(&b.target)
                );
            }
            let mut database = match (&w.database, &status.store_error) {
                (Some(state), _) => esc(state),
                (None, None) => "—".to_owned(),
                (None, Some(_)) => "unknown".to_owned(),
            };
            if let Some(at) = &w.last_backup {
                let _ = write!(
                    database,
                    r#"<br><small>backup verified {}</small>"#,
                    esc(at)
                );
            }
            let _ = writeln!(h, "</td><td>{database}</td></tr>");
        }
        h.push_str("</tbody></table>\n");
    }
    let incidents: Vec<[&str; 5]> = status
        .incidents
        .iter()
        .map(|i| [&*i.time, &*i.kind, &*i.name, &*i.source, &*i.detail])
        .collect();
    log_table(
        &mut h,
        "Recent incidents",
        "incidents",
        "incident",
        "Kind",
        &incidents,
    );
    let changes: Vec<[&str; 5]> = status
        .audit
        .iter()
        .map(|a| [&*a.time, &*a.action, &*a.name, &*a.source, &*a.detail])
        .collect();
    log_table(
        &mut h,
        "Recent changes",
        "audit",
        "change",
        "Action",
        &changes,
    );
    let _ = writeln!(
        h,
        "<p><small>Refreshes every {REFRESH_SECONDS} s. JSON: <code>curl -H 'Accept: application/json' \
         …/__internal/status</code>; metrics: <a href=\"/__internal/metrics\">/__internal/metrics</a>.</small></p>\n</body></html>"
    );
    h
}

/// A section of log rows (time, what, waifu, source, detail), escaped.
fn log_table(h: &mut String, title: &str, id: &str, class: &str, what: &str, rows: &[[&str; 5]]) {
    let _ = writeln!(h, "<h2>{title}</h2>");
    if rows.is_empty() {
        h.push_str("<p>None.</p>\n");
        return;
    }
    let _ = writeln!(
        h,
        "<table id=\"{id}\"><thead><tr><th>Time</th><th>{what}</th><th>Waifu</th>\
         <th>Source</th><th>Detail</th></tr></thead><tbody>"
    );
    for row in rows {
        let _ = write!(h, "<tr class=\"{class}\">");
        for cell in row {
            let _ = write!(h, "<td>{}</td>", esc(cell));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody></table>\n");
}

/// Left-aligned columns separated by two spaces.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            text.push_str(cell);
            if i + 1 < widths.len() {
                text.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// The page's content as text tables (`orchestrator status`).
pub fn text(status: &Status) -> String {
    let mut out = format!(
        "orchestrator {}, up {}, {:.1} requests/s, {} open connections, health checks {}\n",
        status.version,
        uptime(status.uptime_seconds),
        status.requests_per_second,
        status.open_connections,
        if status.health_leader {
            "run here"
        } else {
            "run by another orchestrator"
        }
    );
    if let Some(e) = &status.store_error {
        let _ = writeln!(out, "warning: the state database cannot be read: {e}");
    }
    out.push('\n');
    let mut waifus = Vec::new();
    let mut instances = Vec::new();
    let mut binds = Vec::new();
    for w in &status.waifus {
        let healthy = w.info.instances.iter().filter(|i| i.healthy).count();
        waifus.push(vec![
            match w.info.state.as_str() {
                "open" | "" => w.info.name.clone(),
                other => format!("{} ({other})", w.info.name),
            },
            format!("{healthy}/{}", w.info.instances.len()),
            w.info.binds.len().to_string(),
            w.database.clone().unwrap_or_else(|| "-".into()),
            w.info.url.clone(),
        ]);
        for i in &w.info.instances {
            let mut state = if i.healthy { "healthy" } else { "unhealthy" }.to_owned();
            if i.draining {
                state.push_str(", draining");
            }
            instances.push(vec![
                w.info.name.clone(),
                i.host.clone(),
                i.version.clone().unwrap_or_else(|| "-".into()),
                state,
                i.last_check.clone().unwrap_or_else(|| "never".into()),
                i.limits.as_ref().map_or_else(|| "-".into(), limits_text),
            ]);
        }
        for b in &w.info.binds {
            binds.push(vec![w.info.name.clone(), b.bind.clone(), b.target.clone()]);
        }
    }
    if waifus.is_empty() {
        out.push_str("no waifus\n");
    } else {
        out += &table(&["WAIFU", "HEALTHY", "BINDS", "DATABASE", "URL"], &waifus);
        out.push('\n');
        out += &table(
            &[
                "WAIFU",
                "INSTANCE",
                "VERSION",
                "STATE",
                "LAST CHECK",
                "LIMITS",
            ],
            &instances,
        );
        if !binds.is_empty() {
            out.push('\n');
            out += &table(&["WAIFU", "BIND", "TARGET"], &binds);
        }
    }
    out.push('\n');
    out += &incident_table(&status.incidents);
    out.push('\n');
    out += &audit_table(&status.audit);
    out
}

/// Audit rows as a text table (`orchestrator audit`).
pub fn audit_table(entries: &[AuditEntry]) -> String {
    if entries.is_empty() {
        return "no changes recorded\n".into();
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|a| {
            vec![
                a.time.clone(),
                a.action.clone(),
                a.name.clone(),
                a.source.clone(),
                a.detail.clone(),
            ]
        })
        .collect();
    table(&["TIME", "ACTION", "WAIFU", "SOURCE", "DETAIL"], &rows)
}

/// Incidents as a text table (`orchestrator incidents`).
pub fn incident_table(incidents: &[IncidentInfo]) -> String {
    if incidents.is_empty() {
        return "no incidents\n".into();
    }
    let rows: Vec<Vec<String>> = incidents
        .iter()
        .map(|i| {
            vec![
                i.time.clone(),
                i.kind.clone(),
                i.name.clone(),
                i.source.clone(),
                i.detail.clone(),
            ]
        })
        .collect();
    table(&["TIME", "KIND", "WAIFU", "SOURCE", "DETAIL"], &rows)
}

/// An instance's limits in a few words: `body ≤ 1 MiB, 4 in flight, 30s`.
fn limits_text(l: &waifus_protocol::Limits) -> String {
    let mut parts = Vec::new();
    if let Some(b) = l.max_body_size {
        parts.push(format!("body ≤ {}", size_text(b)));
    }
    if let Some(n) = l.max_in_flight {
        parts.push(format!("{n} in flight"));
    }
    if let Some(t) = &l.timeout {
        parts.push(format!("timeout {t}"));
    }
    parts.join(", ")
}

/// Bytes in the largest binary unit that divides them evenly (or bytes).
fn size_text(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{} {unit}", bytes / size);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;
    use waifus_protocol::{BindInfo, InstanceInfo};

    fn sample() -> Status {
        Status {
            version: "0.1.0".into(),
            uptime_seconds: 4000,
            requests_per_second: 12.5,
            open_connections: 3,
            health_leader: true,
            waifus: vec![WaifuStatus {
                info: WaifuInfo {
                    name: "link".into(),
                    url: "http://localhost:8080/link".into(),
                    instances: vec![InstanceInfo {
                        host: "http://127.0.0.1:3000".into(),
                        healthy: true,
                        last_check: Some("2026-11-27T23:00:00Z".into()),
                        version: Some("1.2.3".into()),
                        draining: false,
                        limits: Some(waifus_protocol::Limits {
                            max_body_size: Some(1 << 20),
                            max_in_flight: Some(4),
                            timeout: Some("30s".into()),
                        }),
                    }],
                    state: "paused".into(),
                    binds: vec![BindInfo {
                        bind: "https://link.waifu".into(),
                        target: "/<script>".into(),
                    }],
                },
                database: Some("ready".into()),
                last_backup: Some("2026-12-05T01:00:00Z".into()),
            }],
            incidents: vec![IncidentInfo {
                time: "2026-11-27T23:00:01Z".into(),
                kind: "wrong_secret".into(),
                name: "link".into(),
                source: "10.0.0.5".into(),
                detail: "a \"quoted\" <b>detail</b> & more".into(),
                delivered: false,
            }],
            audit: vec![AuditEntry {
                time: "2026-11-27T22:59:00Z".into(),
                action: "bind_accepted".into(),
                name: "link".into(),
                source: "10.0.0.5".into(),
                detail: "<i>bind</i>".into(),
            }],
            store_error: None,
        }
    }

    #[test]
    fn html_escapes_everything_from_outside() {
        let page = html(&sample());
        assert!(page.contains("/&lt;script&gt;"));
        assert!(page.contains("&lt;i&gt;bind&lt;/i&gt;"));
        assert!(page.contains("a &quot;quoted&quot; &lt;b&gt;detail&lt;/b&gt; &amp; more"));
        assert!(!page.contains("<script>"));
        assert!(page.contains(r#"http-equiv="refresh""#));
        assert!(!page.contains("http://") || page.contains(r#"href="http://localhost:8080/link""#));
    }

    #[test]
    fn tables_line_up() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    LONGER\nxyz  1\nq    22\n");
    }

    #[test]
    fn json_round_trips() {
        let json = serde_json::to_string(&sample()).unwrap();
        assert!(json.contains(r#""requestsPerSecond":12.5"#), "{json}");
        assert!(json.contains(r#""database":"ready""#), "{json}");
        let back: Status = serde_json::from_str(&json).unwrap();
        assert_eq!(back.waifus[0].info.name, "link");
    }
}
