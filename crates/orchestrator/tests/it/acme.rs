//! Automatic certificates against Debian's Pebble, a real ACME
//! server, and pebble-challtestsrv, its mock DNS that answers 127.0.0.1 for
//! every name. Validation is real: Pebble connects back to the
//! orchestrator's listeners for TLS-ALPN-01 and HTTP-01.
//!
//! Without the `pebble` package these tests say so and pass without
//! running; `.ci/run` installs it, so CI always runs them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::StatusCode;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::json;

use waifus_testkit::free_port;

use crate::harness::{self, Ports};
use crate::pg;
use crate::tls::{TestCa, Trust, eventually, get, served_cert};
use crate::waifu::TestWaifu;

/// A running Pebble with its mock DNS; both are killed on drop.
struct Pebble {
    directory: String,
    /// The root Pebble's own HTTPS endpoint is signed by (for ACME_CA_FILE).
    ca_file: PathBuf,
    ca: TestCa,
    management: SocketAddr,
    children: Vec<Child>,
}

fn installed() -> bool {
    let found = |p: &str| {
        Command::new(p)
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    harness::tool_present(
        found("pebble") && found("pebble-challtestsrv"),
        "Debian's pebble package (apt-get install pebble)",
    )
}

impl Pebble {
    /// Pebble validating on `http_port` (HTTP-01) and `tls_port`
    /// (TLS-ALPN-01) of 127.0.0.1; certificates valid for `validity` seconds.
    async fn start(http_port: u16, tls_port: u16, validity: u64) -> Pebble {
        // Its four ports are picked free and then bound by Pebble: another
        // test may take one meanwhile, and then Pebble exits; it is started
        // again on new ones.
        let mut why = String::new();
        for _ in 0..5 {
            match Pebble::try_start(http_port, tls_port, validity).await {
                Ok(pebble) => return pebble,
                Err(e) => why = e,
            }
        }
        panic!("Pebble did not start: {why}");
    }

    async fn try_start(http_port: u16, tls_port: u16, validity: u64) -> Result<Pebble, String> {
        let dir = harness::temp_dir("pebble");
        let ca = TestCa::new();
        let (crt, key) = ca.leaf(&["127.0.0.1", "localhost"]);
        std::fs::write(dir.join("cert.pem"), crt).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        let (acme, management, dns, dns_management) =
            (free_port(), free_port(), free_port(), free_port());
        let config = json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.join("cert.pem"),
            "privateKey": dir.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity,
        }});
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .unwrap();
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .unwrap();
        let mut pebble = Pebble {
            directory: format!("https://127.0.0.1:{acme}/dir"),
            ca_file,
            ca,
            management: SocketAddr::from(([127, 0, 0, 1], management)),
            children: vec![dns_server, pebble],
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        for port in [acme, management, dns_management] {
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                let exited = pebble
                    .children
                    .iter_mut()
                    .any(|c| c.try_wait().ok().flatten().is_some());
                if exited || std::time::Instant::now() > deadline {
                    let err = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
                    // Dropped: the children are stopped.
                    return Err(format!(
                        "port {port}: pebble: {} challtestsrv: {}",
                        err("pebble.err"),
                        err("challtestsrv.err")
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(pebble)
    }

    /// Pebble validating against the orchestrator that will serve on `ports`.
    async fn for_ports(ports: &Ports, validity: u64) -> Pebble {
        let port = |l: &tokio::net::TcpListener| l.local_addr().unwrap().port();
        Pebble::start(port(&ports.public), port(&ports.https), validity).await
    }

    /// The orchestrator flags that point it at this Pebble, then `extra`.
    fn flags(&self, extra: &[&str]) -> Vec<String> {
        let mut flags = vec![
            "--acme-directory".to_owned(),
            self.directory.clone(),
            "--acme-ca-file".to_owned(),
            self.ca_file.to_str().unwrap().to_owned(),
        ];
        flags.extend(extra.iter().map(|f| f.to_string()));
        flags
    }

    /// The root Pebble signs certificates under (new on every start).
    async fn root(&self) -> CertificateDer<'static> {
        let trust = Trust::Roots(vec![self.ca.cert.clone()]);
        let reply = get(self.management, "127.0.0.1", "/roots/0", &trust, false).await;
        assert_eq!(reply.status, StatusCode::OK);
        CertificateDer::from_pem_slice(&reply.body).unwrap()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn stored_hosts(db: &str) -> Vec<String> {
    let client = pg::cluster().superuser(db).await;
    client
        .query("SELECT host FROM certificates ORDER BY host", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn tls_alpn_issues_renews_and_a_restart_needs_no_order() {
    if !installed() {
        return;
    }
    let ports = Ports::bind().await;
    // 30 s certificates: renewed after 20 s.
    let pebble = Pebble::for_ports(&ports, 30).await;
    let db = pg::unique_db("acme_alpn");
    let url = pg::cluster().url(&db);
    let flags = pebble.flags(&[
        "--acme-email",
        "ops@example.net",
        "--acme-challenge",
        "tls-alpn-01",
    ]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let orch = harness::start_with_ports(&url, &flags, Some(ports)).await;
    let https = orch.https.unwrap();
    let waifu = TestWaifu::start("app").await;
    orch.register(
        "app",
        &waifu.host(),
        json!({"https://app.example.net": "/"}),
    )
    .await;
    orch.wait_health("app", StatusCode::NO_CONTENT).await;

    let trust = Trust::Roots(vec![pebble.root().await]);
    eventually(
        Duration::from_secs(60),
        "a certificate from Pebble",
        || async {
            served_cert(https, "app.example.net", &trust)
                .await
                .is_some()
        },
    )
    .await;
    let first = served_cert(https, "app.example.net", &trust).await.unwrap();
    for h2 in [true, false] {
        let reply = get(https, "app.example.net", "/hello", &trust, h2).await;
        assert_eq!(reply.status, StatusCode::OK, "h2={h2}");
        assert_eq!(reply.json()["target"], "/hello");
        assert_eq!(reply.json()["headers"]["x-forwarded-proto"][0], "https");
    }
    assert_eq!(stored_hosts(&db).await, ["app.example.net"]);

    // Renewal ahead of expiry: a new certificate replaces the first.
    eventually(Duration::from_secs(60), "a renewed certificate", || async {
        served_cert(https, "app.example.net", &trust)
            .await
            .is_some_and(|c| c != first)
    })
    .await;
    let renewed = served_cert(https, "app.example.net", &trust).await.unwrap();
    orch.stop().await.unwrap();

    // The ACME server goes away; a restart still serves the stored
    // certificate at once: it needs no order and no contact with the CA.
    drop(pebble);
    let orch = harness::start_with_url(&url, &flags).await;
    let https = orch.https.unwrap();
    assert_eq!(
        served_cert(https, "app.example.net", &trust).await,
        Some(renewed)
    );
    let reply = get(https, "app.example.net", "/again", &trust, true).await;
    assert_eq!(reply.status, StatusCode::OK);
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn http01_for_accepted_binds_and_main_domain_only() {
    if !installed() {
        return;
    }
    let ports = Ports::bind().await;
    let pebble = Pebble::for_ports(&ports, 3600).await;
    let db = pg::unique_db("acme_http01");
    let url = pg::cluster().url(&db);
    let flags = pebble.flags(&[
        "--acme-challenge",
        "http-01",
        "--main-domain",
        "main.example.net",
    ]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let orch = harness::start_with_ports(&url, &flags, Some(ports)).await;
    let https = orch.https.unwrap();
    let owner = TestWaifu::start("owner").await;
    let answer = orch
        .register(
            "owner",
            &owner.host(),
            json!({
                "https://two.example.net": "/",
                "https://three.example.net/__internal": "/",
            }),
        )
        .await;
    let refused = answer["binds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["bind"] == "https://three.example.net/__internal")
        .unwrap();
    assert_eq!(refused["reason"], "internal_path", "{answer}");
    let thief = TestWaifu::start("thief").await;
    let answer = orch
        .register(
            "thief",
            &thief.host(),
            json!({"https://two.example.net": "/"}),
        )
        .await;
    assert_eq!(answer["binds"][0]["reason"], "taken", "{answer}");
    orch.wait_health("owner", StatusCode::NO_CONTENT).await;

    let trust = Trust::Roots(vec![pebble.root().await]);
    for host in ["two.example.net", "main.example.net"] {
        eventually(
            Duration::from_secs(60),
            "certificates from Pebble",
            || async { served_cert(https, host, &trust).await.is_some() },
        )
        .await;
    }
    let reply = get(https, "two.example.net", "/x", &trust, true).await;
    assert_eq!(reply.json()["id"], "owner");
    let reply = get(https, "main.example.net", "/thief/y", &trust, false).await;
    assert_eq!(reply.json()["id"], "thief");

    // A refused bind and a name nobody routes got nothing, and asking for
    // them in a handshake orders nothing either.
    for host in ["three.example.net", "random.example.net"] {
        assert!(
            served_cert(https, host, &Trust::Roots(vec![]))
                .await
                .is_none()
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stored_hosts(&db).await,
        ["main.example.net", "two.example.net"]
    );
    let client = pg::cluster().superuser(&db).await;
    let accounts: i64 = client
        .query_one("SELECT count(*) FROM acme_accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(accounts, 1);
    orch.stop().await.unwrap();
}

/// A TCP load balancer in front of two orchestrators that sends each
/// connection to the one that does NOT hold the ACME ordering lock (read
/// from PostgreSQL by the sessions' application names), or in turn when
/// neither does: so the CA's validation always reaches the orchestrator
/// that did not place the order.
struct AwayFromTheOrderer {
    http: std::net::SocketAddr,
    tls: std::net::SocketAddr,
}

impl AwayFromTheOrderer {
    /// `backends`: (application name, public address, TLS address).
    async fn start(db: &str, backends: [(&'static str, SocketAddr, SocketAddr); 2]) -> Self {
        let db = db.to_owned();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addrs = (http.local_addr().unwrap(), tls.local_addr().unwrap());
        for (listener, tls) in [(http, false), (tls, true)] {
            let db = db.clone();
            tokio::spawn(async move {
                // Connected at the first validation, once the orchestrators
                // have made the database.
                let mut sql = None;
                let mut turn = 0usize;
                while let Ok((mut client, _)) = listener.accept().await {
                    if sql.is_none() {
                        sql = Some(pg::cluster().superuser(&db).await);
                    }
                    let Some(sql) = &sql else { continue };
                    // The session holding an advisory lock other than the
                    // health leader's ("waifusHC") is ordering.
                    let orderer: Option<String> = sql
                        .query_opt(
                            "SELECT a.application_name FROM pg_locks l
                             JOIN pg_stat_activity a ON a.pid = l.pid
                             WHERE l.locktype = 'advisory' AND l.granted
                               AND NOT (l.classid = 2002872678 AND l.objid = 1970489411)
                             LIMIT 1",
                            &[],
                        )
                        .await
                        .ok()
                        .flatten()
                        .map(|r| r.get(0));
                    let pick = match orderer {
                        Some(name) => backends.iter().position(|b| b.0 != name).unwrap_or(0),
                        None => {
                            turn += 1;
                            turn % 2
                        }
                    };
                    let to = if tls {
                        backends[pick].2
                    } else {
                        backends[pick].1
                    };
                    tokio::spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(to).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
            });
        }
        AwayFromTheOrderer {
            http: addrs.0,
            tls: addrs.1,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orchestrators_answer_each_others_challenges_with_one_order_per_name() {
    if !installed() {
        return;
    }
    for (challenge, host) in [
        ("http-01", "ha-http.example.net"),
        ("tls-alpn-01", "ha-alpn.example.net"),
    ] {
        let db = pg::unique_db(&format!("acme_ha_{}", &challenge[..3]));
        let (ports_a, ports_b) = (Ports::bind().await, Ports::bind().await);
        let addr = |l: &tokio::net::TcpListener| l.local_addr().unwrap();
        let balancer = AwayFromTheOrderer::start(
            &db,
            [
                ("orch_a", addr(&ports_a.public), addr(&ports_a.https)),
                ("orch_b", addr(&ports_b.public), addr(&ports_b.https)),
            ],
        )
        .await;
        let pebble = Pebble::start(balancer.http.port(), balancer.tls.port(), 3600).await;
        let flags = pebble.flags(&["--acme-challenge", challenge]);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let url = pg::cluster().url(&db);
        let a = harness::start_with_ports(
            &format!("{url}?application_name=orch_a"),
            &flags,
            Some(ports_a),
        )
        .await;
        let b = harness::start_with_ports(
            &format!("{url}?application_name=orch_b"),
            &flags,
            Some(ports_b),
        )
        .await;
        let owner = TestWaifu::start("owner").await;
        a.register(
            "owner",
            &owner.host(),
            json!({ format!("https://{host}"): "/" }),
        )
        .await;
        let trust = Trust::Roots(vec![pebble.root().await]);
        let (a_https, b_https) = (a.https.unwrap(), b.https.unwrap());
        eventually(
            Duration::from_secs(90),
            &format!("a certificate for {host} by {challenge} on both"),
            || async {
                served_cert(a_https, host, &trust).await.is_some()
                    && served_cert(b_https, host, &trust).await.is_some()
            },
        )
        .await;
        // One order: one stored certificate, the same on both.
        assert_eq!(
            served_cert(a_https, host, &trust).await,
            served_cert(b_https, host, &trust).await,
            "{challenge}"
        );
        assert_eq!(stored_hosts(&db).await, [host], "{challenge}");
        let reply = get(b_https, host, "/x", &trust, false).await;
        assert_eq!(reply.json()["id"], "owner");
        // Answered challenges are withdrawn.
        let sql = pg::cluster().superuser(&db).await;
        eventually(Duration::from_secs(10), "challenges withdrawn", || async {
            sql.query_one("SELECT count(*) FROM acme_challenges", &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 0
        })
        .await;
        a.stop().await.unwrap();
        b.stop().await.unwrap();
    }
}
