//! HTTPS: certificates from CERT_DIR and self-signed development
//! certificates, HTTP/2 and HTTP/1.1 over TLS, redirects from plain HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::harness::{self, Orch};
use crate::pg;
use crate::waifu::TestWaifu;

/// A test certificate authority.
pub struct TestCa {
    key: rcgen::KeyPair,
    params: rcgen::CertificateParams,
    pub cert: CertificateDer<'static>,
    /// The root certificate, PEM.
    pub pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "waifus test CA");
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            cert: cert.der().clone(),
            key,
            params,
        }
    }

    /// A leaf for `names`: (chain PEM, key PEM).
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Accepts any server certificate: for looking at self-signed ones.
#[derive(Debug)]
pub(crate) struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// How a test client checks the server.
#[derive(Clone)]
pub enum Trust {
    Roots(Vec<CertificateDer<'static>>),
    Anything,
}

pub(crate) fn client_config(
    trust: &Trust,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap();
    let mut config = match trust {
        Trust::Roots(roots) => {
            let mut store = rustls::RootCertStore::empty();
            for r in roots {
                store.add(r.clone()).unwrap();
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
        Trust::Anything => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub(crate) const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A TLS connection with SNI `sni`.
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    trust: &Trust,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    connect_with(addr, sni, client_config(trust, alpn, BOTH)).await
}

pub(crate) async fn connect_with(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// The leaf certificate served for `sni`, if the handshake succeeds.
pub async fn served_cert(
    addr: SocketAddr,
    sni: &str,
    trust: &Trust,
) -> Option<CertificateDer<'static>> {
    let tls = connect(addr, sni, trust, &[b"http/1.1"]).await.ok()?;
    let (_, session) = tls.get_ref();
    session
        .peer_certificates()?
        .first()
        .map(|c| c.clone().into_owned())
}

/// A whole response over TLS.
pub struct TlsReply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// The ALPN protocol the connection used.
    pub alpn: Option<Vec<u8>>,
}

impl TlsReply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// `GET target` over TLS with SNI and `:authority`/Host `host`, on HTTP/2
/// (`h2`) or HTTP/1.1.
pub async fn get(addr: SocketAddr, host: &str, target: &str, trust: &Trust, h2: bool) -> TlsReply {
    let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
    let tls = connect(addr, host, trust, &[alpn])
        .await
        .expect("TLS handshake");
    let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let io = TokioIo::new(tls);
    let uri = format!("https://{host}{target}");
    let response = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(uri).body(Empty::<Bytes>::new()).unwrap();
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get(target)
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(req).await.unwrap()
    };
    let (parts, body) = response.into_parts();
    TlsReply {
        status: parts.status,
        headers: parts.headers,
        body: tokio::time::timeout(Duration::from_secs(10), body.collect())
            .await
            .expect("the body within 10 s")
            .unwrap()
            .to_bytes(),
        alpn: negotiated,
    }
}

/// Polls until `check` holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn write_pair(dir: &std::path::Path, host: &str, (crt, key): &(String, String)) {
    // Key first, then the certificate, as an operator's script might.
    std::fs::write(dir.join(format!("{host}.key")), key).unwrap();
    std::fs::write(dir.join(format!("{host}.crt")), crt).unwrap();
}

pub(crate) async fn with_echo(orch: &Orch, name: &str, binds: Value) -> TestWaifu {
    let waifu = TestWaifu::start(name).await;
    orch.register(name, &waifu.host(), binds).await;
    orch.wait_health(name, StatusCode::NO_CONTENT).await;
    waifu
}

pub(crate) fn header<'a>(echo: &'a Value, name: &str) -> &'a str {
    echo["headers"][name][0].as_str().unwrap_or("")
}

#[tokio::test]
async fn cert_dir_serves_h2_and_http1_and_picks_up_changes() {
    let ca = TestCa::new();
    let dir = harness::temp_dir("certs");
    write_pair(&dir, "app.example.com", &ca.leaf(&["app.example.com"]));
    let orch = harness::start(
        &pg::unique_db("tls_files"),
        &[
            "--cert-dir",
            dir.to_str().unwrap(),
            "--main-domain",
            "main.example.com",
        ],
    )
    .await;
    let https = orch.https.expect("TLS listener");
    let _w = with_echo(&orch, "app", json!({"https://app.example.com": "/"})).await;
    let trust = Trust::Roots(vec![ca.cert.clone()]);

    for h2 in [true, false] {
        let reply = get(https, "app.example.com", "/x?y=1", &trust, h2).await;
        assert_eq!(reply.status, StatusCode::OK, "h2={h2}");
        assert_eq!(
            reply.alpn.as_deref(),
            Some(if h2 { &b"h2"[..] } else { b"http/1.1" })
        );
        let echo = reply.json();
        assert_eq!(echo["target"], "/x?y=1");
        assert_eq!(header(&echo, "x-forwarded-proto"), "https");
    }

    // No certificate for a name: the handshake fails, for routed and
    // unknown names alike.
    for name in ["main.example.com", "other.example.com"] {
        assert!(served_cert(https, name, &trust).await.is_none(), "{name}");
    }

    // A certificate dropped in later is picked up without a restart, and a
    // replaced one is served once both files are in place.
    write_pair(&dir, "main.example.com", &ca.leaf(&["main.example.com"]));
    eventually(Duration::from_secs(15), "new file picked up", || async {
        served_cert(https, "main.example.com", &trust)
            .await
            .is_some()
    })
    .await;
    let before = served_cert(https, "app.example.com", &trust).await.unwrap();
    write_pair(&dir, "app.example.com", &ca.leaf(&["app.example.com"]));
    eventually(
        Duration::from_secs(15),
        "replaced file picked up",
        || async {
            served_cert(https, "app.example.com", &trust)
                .await
                .is_some_and(|c| c != before)
        },
    )
    .await;
    let reply = get(https, "main.example.com", "/app/z", &trust, true).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["target"], "/z");

    // A wildcard pair covers one label.
    write_pair(
        &dir,
        "*.wild.example.com",
        &ca.leaf(&["*.wild.example.com"]),
    );
    eventually(Duration::from_secs(15), "wildcard picked up", || async {
        served_cert(https, "a.wild.example.com", &trust)
            .await
            .is_some()
    })
    .await;
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn https_binds_redirect_plain_http_and_hosts_must_match_sni() {
    let ca = TestCa::new();
    let dir = harness::temp_dir("certs");
    for host in ["secure.example.com", "open.example.com", "main.example.com"] {
        write_pair(&dir, host, &ca.leaf(&[host]));
    }
    let orch = harness::start(
        &pg::unique_db("tls_redirect"),
        &[
            "--cert-dir",
            dir.to_str().unwrap(),
            "--main-domain",
            "main.example.com",
            "--public-https-port",
            "443",
        ],
    )
    .await;
    let https = orch.https.unwrap();
    let _w = with_echo(
        &orch,
        "site",
        json!({"https://secure.example.com/api": "/v1", "http://open.example.com": "/"}),
    )
    .await;
    let trust = Trust::Roots(vec![ca.cert.clone()]);

    // Plain HTTP to an https:// bind: 308 to the same path and query on HTTPS,
    // for any method; nothing reaches the waifu.
    for method in [http::Method::GET, http::Method::POST] {
        let r = harness::send(
            orch.public,
            method.clone(),
            "/api/a?b=c",
            &[("host", "Secure.Example.com:8080")],
            Bytes::from_static(b"x"),
        )
        .await
        .unwrap();
        assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT, "{method}");
        assert_eq!(
            r.headers["location"],
            "https://secure.example.com/api/a?b=c"
        );
    }
    // The guard still comes first.
    let r = orch.get("secure.example.com", "/api/__internal/x").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Over TLS the bind is served, with X-Forwarded-Proto https.
    let reply = get(https, "secure.example.com", "/api/a?b=c", &trust, true).await;
    assert_eq!(reply.status, StatusCode::OK);
    let echo = reply.json();
    assert_eq!(echo["target"], "/v1/a?b=c");
    assert_eq!(header(&echo, "x-forwarded-proto"), "https");

    // An http:// bind and the main domain are served on plain HTTP...
    let r = orch.get("open.example.com", "/p").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(header(&r.json(), "x-forwarded-proto"), "http");
    let r = orch.get("main.example.com", "/site/q").await;
    assert_eq!(r.status, StatusCode::OK);
    // ...and over TLS when a certificate exists for them.
    let reply = get(https, "open.example.com", "/p", &trust, false).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(header(&reply.json(), "x-forwarded-proto"), "https");

    // A request for another host on a connection made for one name is 421,
    // on HTTP/1.1 and HTTP/2.
    let tls = connect(https, "open.example.com", &trust, &[b"http/1.1"])
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/api/x")
        .header("host", "secure.example.com")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = send.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);
    let tls = connect(https, "open.example.com", &trust, &[b"h2"])
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://secure.example.com/api/x")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = send.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);
    orch.stop().await.unwrap();
}

/// Every field that names a host must name the one the TLS connection was
/// made for: `:authority` and `host` over HTTP/2, the absolute-form
/// target and `Host` over HTTP/1.1; else 421, and the waifu sees nothing.
#[tokio::test]
async fn every_host_field_must_match_the_tls_name() {
    let ca = TestCa::new();
    let dir = harness::temp_dir("certs");
    for host in ["localhost", "secure.localhost"] {
        write_pair(&dir, host, &ca.leaf(&[host]));
    }
    let orch = harness::start(
        &pg::unique_db("tls_hosts"),
        &["--cert-dir", dir.to_str().unwrap()],
    )
    .await;
    let https = orch.https.unwrap();
    let w = with_echo(&orch, "w", json!({"https://secure.localhost": "/"})).await;
    let trust = Trust::Roots(vec![ca.cert.clone()]);

    // HTTP/2: SNI and :authority `localhost`, a host field for the bind.
    let mut tls = connect(https, "localhost", &trust, &[b"h2"]).await.unwrap();
    let fields = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", "/w/h2-mismatch"),
        ("host", "secure.localhost"),
    ];
    let answer = crate::h2::request_on(&mut tls, &fields).await;
    assert!(
        !matches!(answer, crate::h2::Answer::Status(Some(s)) if s < 400),
        "{answer:?}"
    );
    // The same with a matching host field is served (control).
    let mut tls = connect(https, "localhost", &trust, &[b"h2"]).await.unwrap();
    let fields = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", "/w/h2-match"),
        ("host", "LOCALHOST"),
    ];
    let answer = crate::h2::request_on(&mut tls, &fields).await;
    assert_eq!(answer, crate::h2::Answer::Status(Some(200)));

    // HTTP/1.1: an absolute-form target for the TLS name, Host for another.
    let mut tls = connect(https, "localhost", &trust, &[b"http/1.1"])
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut tls,
        b"GET https://localhost/w/h1-mismatch HTTP/1.1\r\nHost: secure.localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
    let seen = w.seen.lock().unwrap().clone();
    assert_eq!(seen, ["/h2-match"]);
    orch.stop().await.unwrap();
}
