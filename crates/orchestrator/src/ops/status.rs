//! The status page (`GET /__internal/status`) and the text the
//! `orchestrator status` / `orchestrator incidents` commands print.
//!
//! One snapshot ([`Status`]) feeds all three: rendered as self-refreshing
//! HTML (no script, no external asset), as JSON when asked with
//! `Accept: application/json`, and as text tables by the CLI, which reads
//! that JSON from a running orchestrator. Pure rendering: who gathers the
//! snapshot is the internal API's business.

use std::fmt::Write as _;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use waifus_protocol::{AuditEntry, Availability, History, IncidentInfo, WaifuInfo};

use super::graphs::{POINTS, Point};

/// Incidents shown on the page.
pub(crate) const RECENT_INCIDENTS: i64 = 20;
/// Audit rows shown on the page.
pub(crate) const RECENT_AUDIT: i64 = 20;
/// The page reloads itself this often.
const REFRESH_SECONDS: u32 = 5;
/// The availability strip's slots over 24 hours: 15 minutes each.
pub(crate) const DAY_SLOTS: usize = 96;

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
    /// When the snapshot was taken, Unix milliseconds (the state
    /// database's clock): the end of every waifu's `day`.
    #[serde(default)]
    pub time: i64,
    pub waifus: Vec<WaifuStatus>,
    /// Rollouts running now.
    #[serde(default)]
    pub rollouts: Vec<RolloutInfo>,
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
    /// Requests per second and p99 latency through this orchestrator, one
    /// point a minute over the last hour, oldest first, the minute under
    /// way last.
    #[serde(default)]
    pub traffic: Vec<Point>,
    /// Share of time up over `24h` and `7d` (maintenance left out);
    /// `null` when nothing was measured.
    #[serde(default)]
    pub uptime: BTreeMap<String, Option<f64>>,
    /// The last 24 hours, oldest first, in stretches of 15-minute slots of
    /// one kind.
    #[serde(default)]
    pub day: Vec<Stretch>,
    /// Binds its latest hello asked for and did not get.
    #[serde(default)]
    pub refused: Vec<RefusedBind>,
}

/// Consecutive slots of a waifu's day that look the same: red with any
/// outage, blue with maintenance, green up, grey with no instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stretch {
    /// Unix milliseconds.
    pub from: i64,
    pub to: i64,
    /// `down`, `maintenance`, `up` or `none`: what its slots each were.
    pub state: String,
    /// The seconds behind it, summed over its slots.
    #[serde(flatten)]
    pub figures: Availability,
}

/// What a slot looks like on the strip.
fn look(slot: &Availability) -> &'static str {
    if slot.down > 0.0 {
        "down"
    } else if slot.maintenance > 0.0 {
        "maintenance"
    } else if slot.up > 0.0 {
        "up"
    } else {
        "none"
    }
}

/// `slots` of `slot_ms` each from `from`, merged into stretches.
pub(crate) fn stretches(slots: &[Availability], from: i64, slot_ms: i64) -> Vec<Stretch> {
    let mut out: Vec<Stretch> = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        let start = from + i64::try_from(i).unwrap_or(0) * slot_ms;
        let state = look(slot);
        match out.last_mut() {
            Some(s) if s.state == state => {
                s.to = start + slot_ms;
                s.figures.up += slot.up;
                s.figures.down += slot.down;
                s.figures.maintenance += slot.maintenance;
                s.figures.outages += slot.outages;
            }
            _ => out.push(Stretch {
                from: start,
                to: start + slot_ms,
                state: state.to_owned(),
                figures: *slot,
            }),
        }
    }
    out
}

/// A rollout as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutInfo {
    pub name: String,
    /// The version rolled out (`null`: none announced).
    pub version: Option<String>,
    /// The version it replaces.
    pub from: Option<String>,
    pub steps: Vec<i32>,
    /// Index into `steps` of the step now.
    pub step: i32,
    /// Percent of new clients sent to `version` now.
    pub share: i32,
    pub interval: String,
    pub max_error_rate: f64,
    pub max_latency_ratio: f64,
    /// `running`, `done` or `aborted`.
    pub state: String,
    pub started_at: String,
    /// The figures of the last judgement, or why it was aborted.
    pub judged: Option<String>,
    /// Seconds until the step is judged, while it runs.
    pub next_step_in: Option<f64>,
}

/// A bind a waifu's latest hello was refused, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefusedBind {
    pub bind: String,
    pub reason: String,
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
.graph{{white-space:nowrap}} .graph svg{{vertical-align:middle;background:#f6f8fa}} .graph small{{color:#555}}
polyline{{fill:none;stroke-width:1.5}} polyline.requests{{stroke:#1a73e8}} polyline.p99{{stroke:#8a5a00}}
circle.requests{{fill:#1a73e8}} circle.p99{{fill:#8a5a00}}
rect.up{{fill:#2e9d57}} rect.down{{fill:#b3261e}} rect.maintenance{{fill:#6b7bd6}} rect.none{{fill:#e3e3e3}}
.refused{{color:#b3261e}}
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
             <th>Database</th><th>Last hour · 24 hours</th></tr></thead><tbody>\n",
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
            for r in &w.refused {
                let _ = write!(
                    h,
                    r#"<div class="refused"><code>{}</code> refused: {}</div>"#,
                    esc(&r.bind),
                    esc(&r.reason)
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
            let _ = write!(h, "</td><td>{database}</td><td class=\"graphs\">");
            graphs(&mut h, w, status.time);
            h.push_str("</td></tr>\n");
        }
        h.push_str("</tbody></table>\n");
    }
    rollouts_html(&mut h, &status.rollouts);
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

/// The running rollouts: what rolls out over what, the step and share, the
/// figures the last step was judged on, and when the next judgement is.
fn rollouts_html(h: &mut String, rollouts: &[RolloutInfo]) {
    if rollouts.is_empty() {
        return;
    }
    h.push_str(
        "<h2>Rollouts</h2>\n<table id=\"rollouts\"><thead><tr><th>Waifu</th><th>Version</th>\
         <th>Replacing</th><th>Step</th><th>Share of new clients</th><th>Judged on</th>\
         <th>Next judgement</th></tr></thead><tbody>\n",
    );
    for r in rollouts {
        let _ = writeln!(
            h,
            r#"<tr class="rollout"><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td>{} of {}</td><td><b>{} %</b></td><td>{}</td><td>{}</td></tr>"#,
            esc(&r.name),
            esc(r.version.as_deref().unwrap_or("none")),
            esc(r.from.as_deref().unwrap_or("none")),
            r.step + 1,
            r.steps.len(),
            r.share,
            esc(r.judged.as_deref().unwrap_or("not judged yet")),
            r.next_step_in
                .map_or_else(|| "—".to_owned(), |s| format!("in {s:.0} s")),
        );
    }
    h.push_str("</tbody></table>\n");
}

/// A rollout in lines of text (`orchestrator rollout`, `status`).
pub fn rollout_text(r: &RolloutInfo) -> String {
    let mut out = format!(
        "{}: {} over {}, {}: step {} of {} {:?}, {} % of new clients, every {} \
         (rolled back above {:.2} % errors or {}× the p99)\n",
        r.name,
        r.version.as_deref().unwrap_or("no version"),
        r.from.as_deref().unwrap_or("no version"),
        r.state,
        r.step + 1,
        r.steps.len(),
        r.steps,
        r.share,
        r.interval,
        r.max_error_rate * 100.0,
        r.max_latency_ratio,
    );
    if let Some(j) = &r.judged {
        let _ = writeln!(out, "  last judged on: {j}");
    }
    if let Some(s) = r.next_step_in {
        let _ = writeln!(out, "  next judgement in {s:.0} s");
    }
    out
}

/// Size of a sparkline, and of the availability strip.
const SPARK: (f64, f64) = (180.0, 28.0);
const STRIP_HEIGHT: u32 = 12;

/// A waifu's graphs, each with its value in text beside it: requests per
/// second and p99 over the last hour, and availability over 24 hours.
fn graphs(h: &mut String, w: &WaifuStatus, now: i64) {
    let rates: Vec<Option<f64>> = w.traffic.iter().map(|p| Some(p.rate)).collect();
    let p99s: Vec<Option<f64>> = w.traffic.iter().map(|p| p.p99_ms).collect();
    match w.traffic.last() {
        None => h.push_str(r#"<div class="graph"><small>no requests through this orchestrator in the last hour</small></div>"#),
        Some(last) => {
            h.push_str(r#"<div class="graph">"#);
            sparkline(h, "requests", "requests per second", &rates);
            let _ = write!(h, r#" <span class="value requests">{:.1} req/s</span></div>"#, last.rate);
            h.push_str(r#"<div class="graph">"#);
            sparkline(h, "p99", "99th percentile latency", &p99s);
            let p99 = w.traffic.iter().rev().find_map(|p| p.p99_ms);
            let _ = write!(
                h,
                r#" <span class="value p99">p99 {}</span></div>"#,
                p99.map_or_else(|| "—".to_owned(), |ms| format!("{ms:.1} ms"))
            );
        }
    }
    h.push_str(r#"<div class="graph">"#);
    if !w.day.is_empty() {
        strip(h, &w.day, now);
    }
    let figure = |window: &str| match w.uptime.get(window).copied().flatten() {
        Some(share) => format!("{:.2} %", share * 100.0),
        None => "—".to_owned(),
    };
    let _ = write!(
        h,
        r#" <span class="value uptime">up {} (24 h), {} (7 d)</span></div>"#,
        figure("24h"),
        figure("7d")
    );
}

/// An inline SVG line of `values` (one per step, oldest first; `None`
/// leaves a point out) across the whole width, scaled to its largest, with
/// a dot on the newest; its title says the span (an hour once there is an
/// hour of points).
fn sparkline(h: &mut String, class: &str, label: &str, values: &[Option<f64>]) {
    let (width, height) = SPARK;
    let max = values.iter().flatten().copied().fold(0.0_f64, f64::max);
    let n = values.len();
    let dx = width / (n.max(2) - 1) as f64;
    let mut points = String::new();
    let mut last = None;
    for (i, v) in values.iter().enumerate() {
        let Some(v) = v else { continue };
        let x = if n == 1 { width } else { i as f64 * dx };
        let y = if max > 0.0 {
            height - 2.0 - v / max * (height - 4.0)
        } else {
            height - 2.0
        };
        let _ = write!(points, "{x:.1},{y:.1} ");
        last = Some((x, y));
    }
    let span = n.min(POINTS);
    let _ = write!(
        h,
        r#"<svg class="spark {class}" width="{width}" height="{height}" viewBox="-2 0 {w} {height}" role="img" aria-label="{label}"><title>{label}, last {span} min</title><polyline class="{class}" points="{}"/>"#,
        points.trim_end(),
        w = width + 4.0
    );
    if let Some((x, y)) = last {
        let _ = write!(
            h,
            r#"<circle class="{class}" cx="{x:.1}" cy="{y:.1}" r="2"/>"#
        );
    }
    h.push_str("</svg>");
}

/// An inline SVG strip of a waifu's day (the 24 hours before `now`), one
/// bar per stretch, 2 pixels per 15 minutes; each says what it was in its
/// title.
fn strip(h: &mut String, day: &[Stretch], now: i64) {
    let width = DAY_SLOTS * 2;
    let _ = write!(
        h,
        r#"<svg class="strip availability" width="{width}" height="{STRIP_HEIGHT}" viewBox="0 0 {width} {STRIP_HEIGHT}" role="img" aria-label="availability, last 24 hours"><title>availability, last 24 hours</title>"#
    );
    let day_ms = 24 * 3600 * 1000;
    let start = now - day_ms;
    #[allow(clippy::cast_precision_loss)]
    let x = |t: i64| (t - start).clamp(0, day_ms) as f64 / day_ms as f64 * width as f64;
    for s in day {
        let _ = write!(
            h,
            r#"<rect class="{}" x="{:.0}" y="0" width="{:.0}" height="{STRIP_HEIGHT}"><title>{}–{} UTC: {}</title></rect>"#,
            esc(&s.state),
            x(s.from),
            x(s.to) - x(s.from),
            clock(s.from),
            clock(s.to),
            slot_text(&s.figures)
        );
    }
    h.push_str("</svg>");
}

/// `HH:MM` of Unix milliseconds, UTC.
fn clock(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()[11..16].to_owned()
}

/// A slot's figures in words: `up 14 min 50 s, down 10 s`.
fn slot_text(slot: &Availability) -> String {
    let mut parts = Vec::new();
    for (what, seconds) in [
        ("up", slot.up),
        ("down", slot.down),
        ("maintenance", slot.maintenance),
    ] {
        if seconds > 0.0 {
            let d = std::time::Duration::from_secs(seconds.round() as u64);
            parts.push(format!("{what} {}", humantime::format_duration(d)));
        }
    }
    if parts.is_empty() {
        "no instance".to_owned()
    } else {
        parts.join(", ")
    }
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
    let mut refused = Vec::new();
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
            percent(w.uptime.get("24h").copied().flatten()),
            w.traffic
                .last()
                .map_or_else(|| "-".into(), |p| format!("{:.1}", p.rate)),
            w.info.url.clone(),
        ]);
        for r in &w.refused {
            refused.push(vec![w.info.name.clone(), r.bind.clone(), r.reason.clone()]);
        }
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
        out += &table(
            &[
                "WAIFU", "HEALTHY", "BINDS", "DATABASE", "UP 24H", "REQ/S", "URL",
            ],
            &waifus,
        );
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
        if !refused.is_empty() {
            out.push('\n');
            out += &table(&["WAIFU", "REFUSED BIND", "WHY"], &refused);
        }
    }
    if !status.rollouts.is_empty() {
        out.push('\n');
        for r in &status.rollouts {
            out += &rollout_text(r);
        }
    }
    out.push('\n');
    out += &incident_table(&status.incidents);
    out.push('\n');
    out += &audit_table(&status.audit);
    out
}

/// A share as a percentage with two decimals, or `-`.
pub fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "-".into(), |s| format!("{:.2}%", s * 100.0))
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

/// A waifu's history (`orchestrator history`): uptime per window, then its
/// transitions as a table.
pub fn history_table(history: &History) -> String {
    let mut out = format!("{}: up", history.name);
    for (i, window) in ["24h", "7d", "30d"].into_iter().enumerate() {
        let share = history.uptime.get(window).copied().flatten();
        let sep = if i == 0 { " " } else { ", " };
        let _ = write!(out, "{sep}{} over {window}", percent(share));
        if let Some(a) = history.availability.get(window)
            && (a.down > 0.0 || a.maintenance > 0.0)
        {
            let _ = write!(
                out,
                " ({} outage(s), {} down",
                a.outages,
                humantime::format_duration(std::time::Duration::from_secs(a.down.round() as u64))
            );
            if a.maintenance > 0.0 {
                let _ = write!(
                    out,
                    ", {} in maintenance",
                    humantime::format_duration(std::time::Duration::from_secs(
                        a.maintenance.round() as u64
                    ))
                );
            }
            out.push(')');
        }
    }
    out.push_str("\n\n");
    if history.transitions.is_empty() {
        out.push_str("no changes recorded in that time\n");
        return out;
    }
    let rows: Vec<Vec<String>> = history
        .transitions
        .iter()
        .map(|t| {
            vec![
                t.time.clone(),
                t.instance.clone().unwrap_or_else(|| "(switch)".into()),
                t.from.clone().unwrap_or_else(|| "-".into()),
                t.to.clone(),
                t.reason.clone(),
                t.origin.clone(),
            ]
        })
        .collect();
    out += &table(&["TIME", "INSTANCE", "FROM", "TO", "REASON", "BY"], &rows);
    out
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
            time: 86_400_000,
            rollouts: Vec::new(),
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
                traffic: vec![
                    Point {
                        time: 1_000,
                        rate: 2.0,
                        p99_ms: Some(3.0),
                    },
                    Point {
                        time: 61_000,
                        rate: 4.0,
                        p99_ms: None,
                    },
                ],
                uptime: [("24h".to_owned(), Some(0.5)), ("7d".to_owned(), None)].into(),
                day: stretches(
                    &[
                        Availability {
                            up: 900.0,
                            down: 0.0,
                            maintenance: 0.0,
                            outages: 0,
                        },
                        Availability {
                            up: 890.0,
                            down: 10.0,
                            maintenance: 0.0,
                            outages: 1,
                        },
                        Availability {
                            up: 900.0,
                            down: 0.0,
                            maintenance: 0.0,
                            outages: 0,
                        },
                        Availability {
                            up: 900.0,
                            down: 0.0,
                            maintenance: 0.0,
                            outages: 0,
                        },
                    ],
                    86_400_000 - 4 * 900_000,
                    900_000,
                ),
                refused: vec![RefusedBind {
                    bind: "https://other.waifu/<x>".into(),
                    reason: "taken: the host other.waifu belongs to shop".into(),
                }],
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
    fn graphs_are_inline_svg_with_their_values_in_text() {
        let page = html(&sample());
        // Two points of requests per second; the p99 line leaves out the
        // step without requests.
        let line = page
            .split(r#"<polyline class="requests" points=""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap();
        assert_eq!(line.split(' ').count(), 2, "{line}");
        let p99 = page
            .split(r#"<polyline class="p99" points=""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap();
        assert_eq!(p99.split(' ').count(), 1, "{p99}");
        assert!(page.contains("4.0 req/s"), "{page}");
        assert!(page.contains("p99 3.0 ms"), "{page}");
        // Up, the outage, up again: three bars, the last two slots one.
        assert_eq!(page.matches("<rect ").count(), 3, "{page}");
        assert!(
            page.contains(r#"<rect class="down" x="186" y="0" width="2""#),
            "{page}"
        );
        assert!(
            page.contains(r#"<rect class="up" x="188" y="0" width="4""#),
            "{page}"
        );
        assert!(
            page.contains("23:15–23:30 UTC: up 14m 50s, down 10s"),
            "{page}"
        );
        assert!(page.contains("up 50.00 % (24 h), — (7 d)"), "{page}");
        assert!(page.contains("https://other.waifu/&lt;x&gt;</code> refused: taken"));
        // No traffic, no history: text only, no empty graph.
        let mut quiet = sample();
        quiet.waifus[0].traffic.clear();
        quiet.waifus[0].day.clear();
        let page = html(&quiet);
        assert!(!page.contains("<polyline"));
        assert!(!page.contains("<rect"));
        assert!(page.contains("no requests through this orchestrator"));
        let mut rolling = sample();
        rolling.rollouts.push(RolloutInfo {
            name: "link".into(),
            version: Some("2".into()),
            from: Some("1".into()),
            steps: vec![10, 50, 100],
            step: 1,
            share: 50,
            interval: "1m".into(),
            max_error_rate: 0.01,
            max_latency_ratio: 2.0,
            state: "running".into(),
            started_at: "2026-12-05T12:00:00.000Z".into(),
            judged: Some("new: 40 requests, 0.00 % errors".into()),
            next_step_in: Some(42.4),
        });
        let page = html(&rolling);
        assert!(page.contains(r#"<tr class="rollout"><td>link</td><td><code>2</code></td><td><code>1</code></td><td>2 of 3</td><td><b>50 %</b></td><td>new: 40 requests, 0.00 % errors</td><td>in 42 s</td></tr>"#), "{page}");
        let t = text(&rolling);
        assert!(
            t.contains("link: 2 over 1, running: step 2 of 3 [10, 50, 100], 50 % of new clients"),
            "{t}"
        );
        assert!(t.contains("next judgement in 42 s"), "{t}");
        let text = text(&sample());
        assert!(text.contains("50.00%"), "{text}");
        assert!(text.contains("REFUSED BIND"), "{text}");
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
