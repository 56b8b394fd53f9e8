//! Operating the orchestrator: metrics, the status page (also in
//! a real headless Chromium), and the `status` / `incidents` commands.

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{self, Orch, sample};
use crate::pg;
use crate::waifu::TestWaifu;

#[tokio::test]
async fn metrics_count_what_operators_need() {
    let db = pg::unique_db("metrics");
    // Checks once an hour: the killed instance below is found by the proxy.
    let orch = harness::start(&db, &["--health-interval", "1h"]).await;
    let w = TestWaifu::start("m").await;
    orch.register("m", &w.host(), json!({})).await;
    orch.wait_health("m", StatusCode::NO_CONTENT).await;
    for _ in 0..3 {
        assert_eq!(orch.get("localhost", "/m/x").await.status, StatusCode::OK);
    }
    let r = harness::send(
        orch.public,
        Method::POST,
        "/m/echo",
        &[("host", "localhost")],
        Bytes::from_static(b"hi"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        orch.get("localhost", "/nobody/x").await.status,
        StatusCode::NOT_FOUND
    );
    let (status, _) = orch.hello(json!({"name": "Bad Name", "host": "x:1"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A database, then a wrong secret: an incident.
    let creds = json!({"name": "m", "secret": "correct horse battery staple"});
    let r = harness::post_json(orch.internal, "/__internal/database", &creds)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let wrong = json!({"name": "m", "secret": "wrong horse battery staple!!"});
    let r = harness::post_json(orch.internal, "/__internal/database", &wrong)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // The name is claimed now: a hello without its secret is refused.
    let (status, _) = orch.hello(json!({"name": "m", "host": w.host()})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A connection held open on the public listener.
    let mut held = tokio::net::TcpStream::connect(orch.public).await.unwrap();
    held.write_all(b"GET /m/held HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let _ = held.read(&mut buf).await.unwrap();

    let text = orch.scrape().await;
    let get = r#"waifus_requests_total{waifu="m",method="GET",status="2xx"}"#;
    assert_eq!(sample(&text, get), Some(4.0), "{text}");
    let post = r#"waifus_requests_total{waifu="m",method="POST",status="2xx"}"#;
    assert_eq!(sample(&text, post), Some(1.0), "{text}");
    let unrouted = r#"waifus_requests_total{waifu="-",method="GET",status="4xx"}"#;
    assert_eq!(sample(&text, unrouted), Some(1.0), "{text}");
    let count = r#"waifus_request_duration_seconds_count{waifu="m"}"#;
    assert_eq!(sample(&text, count), Some(5.0), "{text}");
    let inf = r#"waifus_request_duration_seconds_bucket{le="+Inf",waifu="m"}"#;
    let inf_alt = r#"waifus_request_duration_seconds_bucket{waifu="m",le="+Inf"}"#;
    assert_eq!(
        sample(&text, inf).or(sample(&text, inf_alt)),
        Some(5.0),
        "{text}"
    );
    let healthy = format!(
        r#"waifus_instance_healthy{{waifu="m",instance="{}"}}"#,
        format_args!("http://{}", w.host())
    );
    assert_eq!(sample(&text, &healthy), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, r#"waifus_hellos_total{outcome="ok"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"waifus_hellos_total{outcome="invalid"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"waifus_hellos_total{outcome="secret_required"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"waifus_database_calls_total{outcome="ok"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"waifus_database_calls_total{outcome="wrong_secret"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"waifus_incidents_total{kind="wrong_secret"}"#),
        Some(1.0)
    );
    let public = sample(&text, r#"waifus_open_connections{listener="public"}"#);
    assert!(public.is_some_and(|n| n >= 1.0), "{text}");
    let internal = sample(&text, r#"waifus_open_connections{listener="internal"}"#);
    assert!(internal.is_some_and(|n| n >= 1.0), "{text}");
    assert!(text.trim_end().ends_with("# EOF"));

    // The instance dies: the proxy's failed connect is counted, and the
    // instance is reported unhealthy.
    w.kill();
    assert_eq!(
        orch.get("localhost", "/m/x").await.status,
        StatusCode::BAD_GATEWAY
    );
    let text = orch.scrape().await;
    let errors = r#"waifus_upstream_connect_errors_total{waifu="m"}"#;
    assert_eq!(sample(&text, errors), Some(1.0), "{text}");
    assert_eq!(sample(&text, &healthy), Some(0.0), "{text}");
    drop(held);
    orch.stop().await.unwrap();
}

/// An orchestrator with a healthy waifu `name` (bind `http://shop.test`,
/// database) and an incident. Each test gives its own name: databases and
/// roles are shared by the whole test cluster.
async fn populated(db: &str, name: &str) -> (Orch, TestWaifu) {
    let orch = harness::start(db, &[]).await;
    let w = TestWaifu::start(name).await;
    orch.register(name, &w.host(), json!({"http://shop.test": "/api"}))
        .await;
    orch.wait_health(name, StatusCode::NO_CONTENT).await;
    let creds = json!({"name": name, "secret": "correct horse battery staple"});
    let r = harness::post_json(orch.internal, "/__internal/database", &creds)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let wrong = json!({"name": name, "secret": "wrong horse battery staple!!"});
    let r = harness::post_json(orch.internal, "/__internal/database", &wrong)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // An instance that never answers, for an unhealthy row.
    let (status, _) = orch
        .hello(json!({"name": "ghost", "host": "127.0.0.1:9"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    orch.wait_health("ghost", StatusCode::SERVICE_UNAVAILABLE)
        .await;
    (orch, w)
}

#[tokio::test]
async fn status_page_html_and_json() {
    let name = "shop-html";
    let (orch, _w) = populated(&pg::unique_db("status"), name).await;
    let page = harness::send(
        orch.internal,
        Method::GET,
        "/__internal/status",
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    for needle in [
        name,
        "http://shop.test",
        "/api",
        "ready",
        "wrong_secret",
        "ghost",
        "unhealthy",
    ] {
        assert!(html.contains(needle), "{needle} missing from the page");
    }
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"https://"),
        "no external assets"
    );

    let json = harness::send(
        orch.internal,
        Method::GET,
        "/__internal/status",
        &[("accept", "application/json")],
        Bytes::new(),
    )
    .await
    .unwrap()
    .json();
    let shop = json["waifus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == name)
        .unwrap();
    assert_eq!(shop["database"], "ready");
    assert_eq!(shop["instances"][0]["healthy"], true);
    assert_eq!(json["incidents"][0]["kind"], "wrong_secret");
    assert!(json["requestsPerSecond"].is_number());
    // Not on the public listener.
    let r = orch.get("localhost", "/__internal/status").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    orch.stop().await.unwrap();
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

#[tokio::test]
async fn status_page_renders_in_headless_chromium() {
    let browser = chromium();
    if !harness::tool_present(browser.is_some(), "Chromium (apt-get install chromium)") {
        return;
    }
    let Some(browser) = browser else { return };
    let (orch, _w) = populated(&pg::unique_db("status_browser"), "shop-browser").await;
    // Some traffic, so the rate is not zero once sampled.
    for _ in 0..20 {
        orch.get("localhost", "/shop-browser/x").await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let url = format!("http://{}/__internal/status", orch.internal);
    let profile = harness::temp_dir("chromium");
    let browser = browser.to_owned();
    let dom = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(browser);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=2000", "--dump-dom", &url]);
        harness::output_within(&mut cmd, Duration::from_secs(120))
    })
    .await
    .unwrap();
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    // What the browser built from the page: the tables and their rows.
    assert!(dom.contains("<title>waifus status</title>"), "{dom}");
    assert!(dom.contains(r#"<table id="waifus">"#), "{dom}");
    assert_eq!(dom.matches(r#"<tr class="waifu">"#).count(), 2, "{dom}");
    assert!(dom.contains(r#"<span class="ok">healthy</span>"#), "{dom}");
    assert!(
        dom.contains(r#"<span class="bad">unhealthy</span>"#),
        "{dom}"
    );
    assert!(dom.contains(r#"<tr class="incident">"#), "{dom}");
    assert!(dom.contains("wrong_secret"), "{dom}");
    let rate: f64 = dom
        .split(r#"<span id="rate"><b>"#)
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no rate in {dom}"));
    assert!(rate >= 0.0);
    orch.stop().await.unwrap();
}

/// Runs headless Chromium on `url`; the DOM it built.
fn dump_dom(browser: &str, url: &str) -> String {
    let profile = harness::temp_dir("chromium");
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(["--virtual-time-budget=2000", "--dump-dom", url]);
    let out = harness::output_within(&mut cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// With ADMIN_TOKEN set, a browser opens the status page by HTTP Basic
/// authentication (the token as the password, any user name): its 401 asks
/// for Basic, so the browser prompts. Basic opens that page only.
#[tokio::test]
async fn status_page_opens_in_a_browser_with_the_admin_token_as_basic_password() {
    let token = "status-admin-token-0123456789";
    let orch = harness::start(&pg::unique_db("status_basic"), &["--admin-token", token]).await;
    let w = TestWaifu::start("basic-shop").await;
    orch.register("basic-shop", &w.host(), json!({})).await;
    orch.wait_health("basic-shop", StatusCode::NO_CONTENT).await;
    let get = async |path: &str, authorization: Option<String>| {
        let headers: Vec<(&str, &str)> = authorization
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        harness::send(orch.internal, Method::GET, path, &headers, Bytes::new())
            .await
            .unwrap()
    };
    let basic = |user_password: &str| {
        use base64::Engine as _;
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_password)
        ))
    };
    let r = get("/__internal/status", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let challenges: Vec<&str> = r
        .headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(challenges[0].starts_with("Basic realm="), "{challenges:?}");
    assert_eq!(challenges[1..], ["Bearer"], "{challenges:?}");
    let r = get("/__internal/status", basic("admin:not-the-token")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = get("/__internal/status", basic(&format!("anyone:{token}"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&r.body).contains("basic-shop"));
    let r = get("/__internal/status", Some(format!("Bearer {token}"))).await;
    assert_eq!(r.status, StatusCode::OK);
    // Basic opens the page, nothing else; other endpoints ask for Bearer.
    let r = get("/__internal/waifus", basic(&format!("anyone:{token}"))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers["www-authenticate"], "Bearer");

    let browser = chromium();
    if !harness::tool_present(browser.is_some(), "Chromium (apt-get install chromium)") {
        return;
    }
    let Some(browser) = browser else { return };
    // What the prompt would send, given to headless Chromium as the
    // credentials of its first navigation.
    let with = format!("http://admin:{token}@{}/__internal/status", orch.internal);
    let without = format!("http://{}/__internal/status", orch.internal);
    let (dom, refused) = tokio::task::spawn_blocking(move || {
        (dump_dom(browser, &with), dump_dom(browser, &without))
    })
    .await
    .unwrap();
    assert!(dom.contains(r#"<table id="waifus">"#), "{dom}");
    assert!(dom.contains("basic-shop"), "{dom}");
    // Without them the browser is refused (its prompt, headless, shows
    // nothing of the page).
    assert!(!refused.contains(r#"<table id="waifus">"#), "{refused}");
    assert!(!refused.contains("basic-shop"), "{refused}");
    orch.stop().await.unwrap();
}

fn cli(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    cmd.env_clear().args(args);
    harness::output_within(&mut cmd, Duration::from_secs(60))
}

#[tokio::test]
async fn status_and_incidents_commands_print_tables() {
    let (orch, w) = populated(&pg::unique_db("status_cli"), "shop-cli").await;
    let addr = orch.internal.to_string();
    let out = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || cli(&["status", "--internal-addr", &addr])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // A header row: its first two column names, however wide the columns.
    let header = |h: &str| {
        let (first, second) = h.split_once(' ').unwrap();
        lines
            .iter()
            .position(|l| {
                let mut words = l.split_whitespace();
                words.next() == Some(first) && words.next() == Some(second)
            })
            .unwrap_or_else(|| panic!("{h}: {text}"))
    };
    let waifus = header("WAIFU HEALTHY");
    assert!(
        lines[waifus + 1..]
            .iter()
            .any(|l| l.starts_with("ghost ") && l.contains("0/1")),
        "{text}"
    );
    assert!(
        lines[waifus + 1..]
            .iter()
            .any(|l| l.starts_with("shop-cli ") && l.contains("1/1") && l.contains("ready")),
        "{text}"
    );
    let instances = header("WAIFU INSTANCE");
    let shop_instance = format!("http://{}", w.host());
    assert!(
        lines[instances + 1..]
            .iter()
            .any(|l| l.contains(&shop_instance) && l.contains("healthy")),
        "{text}"
    );
    assert!(text.contains("http://shop.test"), "{text}");
    assert!(text.contains("wrong_secret"), "{text}");

    let out = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || cli(&["incidents", "--internal-addr", &addr, "--limit", "5"])
    })
    .await
    .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("TIME"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains("wrong_secret")).count(),
        1,
        "{text}"
    );
    orch.stop().await.unwrap();

    // Nobody there: a clear error and a failing exit code.
    let out = tokio::task::spawn_blocking(move || cli(&["status", "--internal-addr", &addr]))
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the orchestrator's internal API"),
        "{err}"
    );
}

/// Headless Chromium, after a waifu served traffic for two minutes with a
/// 10 s outage in its first minute: an SVG line of requests per second of
/// at least two points, and the outage in the 24-hour strip; the uptime of
/// that first minute is right within 5 points. Another waifu, which never
/// served a request, is on the page too, without a graph. The page is
/// photographed (`WAIFUS_SCREENSHOT=path` keeps the picture).
#[tokio::test]
async fn status_page_graphs_two_minutes_of_traffic_and_an_outage() {
    let browser = chromium();
    if !harness::tool_present(browser.is_some(), "Chromium (apt-get install chromium)") {
        return;
    }
    let Some(browser) = browser else { return };
    let orch = harness::start(
        &pg::unique_db("status_graphs"),
        &["--health-interval", "200ms"],
    )
    .await;
    let name = "graphed";
    let w = TestWaifu::start(name).await;
    orch.register(name, &w.host(), json!({"http://graphed.test": "/"}))
        .await;
    let (status, _) = orch
        .hello(json!({"name": "idle", "host": "127.0.0.1:9",
                      "additionalBinds": {"http://graphed.test": "/"}}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let started = std::time::Instant::now();
    let stop = tokio_util::sync::CancellationToken::new();
    let traffic = tokio::spawn({
        let (public, stop) = (orch.public, stop.clone());
        async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                // Every tenth a little slower, for a p99 to show.
                let target = if n.is_multiple_of(10) {
                    "/graphed/slow?ms=30"
                } else {
                    "/graphed/x"
                };
                let _ = harness::send(
                    public,
                    Method::GET,
                    target,
                    &[("host", "localhost")],
                    Bytes::new(),
                )
                .await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        }
    });

    // The known outage: its health answers 500 for 10 s.
    tokio::time::sleep_until((started + Duration::from_secs(20)).into()).await;
    w.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    w.healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    orch.wait_health(name, StatusCode::NO_CONTENT).await;

    tokio::time::sleep_until((started + Duration::from_secs(60)).into()).await;
    let (status, h) = orch
        .internal_json(
            Method::GET,
            &format!("/__internal/waifus/{name}/history"),
            String::new(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{h}");
    let day = &h["availability"]["24h"];
    let measured = day["up"].as_f64().unwrap() + day["down"].as_f64().unwrap();
    let want = 1.0 - 10.0 / measured;
    let got = h["uptime"]["24h"].as_f64().unwrap();
    assert!(
        (got - want).abs() <= 0.05,
        "uptime {got} over {measured} s with a 10 s outage: {h}"
    );
    assert_eq!(day["outages"], 1, "{h}");

    tokio::time::sleep_until((started + Duration::from_secs(125)).into()).await;
    stop.cancel();
    let requests = traffic.await.unwrap();
    assert!(requests > 1000, "{requests} requests");

    let url = format!("http://{}/__internal/status", orch.internal);
    let dom = {
        let (browser, url) = (browser.to_owned(), url.clone());
        tokio::task::spawn_blocking(move || dump_dom(&browser, &url))
            .await
            .unwrap()
    };
    let graphed = dom
        .split(r#"<tr class="waifu">"#)
        .find(|row| row.contains(">graphed<"))
        .unwrap_or_else(|| panic!("no row for graphed in {dom}"));
    let points = graphed
        .split(r#"<polyline class="requests" points=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no requests line in {graphed}"));
    assert!(points.split(' ').count() >= 2, "{points}");
    assert!(graphed.contains(r#"<polyline class="p99""#), "{graphed}");
    assert!(graphed.contains(r#"<rect class="down""#), "{graphed}");
    assert!(graphed.contains(" req/s</span>"), "{graphed}");
    let idle = dom
        .split(r#"<tr class="waifu">"#)
        .find(|row| row.contains(">idle<"))
        .unwrap();
    assert!(
        idle.contains("no requests through this orchestrator"),
        "{idle}"
    );
    assert!(idle.contains(r#"<div class="refused">"#), "{idle}");

    let picture = harness::temp_dir("screenshot").join("status.png");
    let shot = {
        let (browser, picture) = (browser.to_owned(), picture.clone());
        tokio::task::spawn_blocking(move || {
            let profile = harness::temp_dir("chromium");
            harness::output_within(
                Command::new(browser)
                    .args([
                        "--headless",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-dev-shm-usage",
                        "--hide-scrollbars",
                        "--window-size=1400,720",
                    ])
                    .arg(format!("--user-data-dir={}", profile.display()))
                    .arg(format!("--screenshot={}", picture.display()))
                    .arg(&url),
                Duration::from_secs(120),
            )
        })
        .await
        .unwrap()
    };
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let png = std::fs::read(&picture).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a picture");
    if let Some(keep) = std::env::var_os("WAIFUS_SCREENSHOT") {
        std::fs::write(keep, &png).unwrap();
    }
    orch.stop().await.unwrap();
}
