//! HTTPS redirects, development certificates, protocol versions, settings, slow handshakes and HSTS.

use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use tokio::net::TcpStream;

use crate::harness;
use crate::pg;

use crate::tls::*;

#[tokio::test]
async fn redirects_name_the_https_port_unless_it_is_443() {
    let dir = harness::temp_dir("certs");
    let orch = harness::start(
        &pg::unique_db("tls_port"),
        &["--cert-dir", dir.to_str().unwrap()],
    )
    .await;
    let https = orch.https.unwrap();
    let _w = with_echo(&orch, "p", json!({"https://p.example.com": "/"})).await;
    let r = orch.get("p.example.com", "/x").await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        r.headers["location"],
        format!("https://p.example.com:{}/x", https.port()).as_str()
    );
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn development_certificates_only_for_routed_local_names() {
    // HTTPS_ADDR alone: TLS with self-signed certificates.
    let orch = harness::start(
        &pg::unique_db("tls_dev"),
        &["--https-addr", "127.0.0.1:0", "--main-domain", "localhost"],
    )
    .await;
    let https = orch.https.unwrap();
    let _w = with_echo(
        &orch,
        "dev",
        json!({"https://dev.test": "/", "https://public.example.com": "/"}),
    )
    .await;
    let cert = served_cert(https, "dev.test", &Trust::Anything)
        .await
        .expect("dev.test");
    // Self-signed for that name: it verifies as its own root.
    let trust = Trust::Roots(vec![cert.clone()]);
    let reply = get(https, "dev.test", "/hi", &trust, true).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["target"], "/hi");
    let main = served_cert(https, "localhost", &Trust::Anything)
        .await
        .expect("main domain");
    assert_ne!(main, cert);
    let reply = get(
        https,
        "localhost",
        "/dev/x",
        &Trust::Roots(vec![main]),
        false,
    )
    .await;
    assert_eq!(reply.json()["target"], "/x");
    // The same certificate is reused, not made per connection.
    assert_eq!(
        served_cert(https, "dev.test", &Trust::Anything).await,
        Some(cert)
    );
    // Never for names it does not route, nor for public names.
    for name in ["unrouted.test", "public.example.com", "example.org"] {
        assert!(
            served_cert(https, name, &Trust::Anything).await.is_none(),
            "{name}"
        );
    }
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn only_tls_1_2_and_1_3_with_h2_and_http1() {
    let ca = TestCa::new();
    let dir = harness::temp_dir("certs");
    write_pair(&dir, "v.example.com", &ca.leaf(&["v.example.com"]));
    let orch = harness::start(
        &pg::unique_db("tls_versions"),
        &[
            "--cert-dir",
            dir.to_str().unwrap(),
            "--main-domain",
            "v.example.com",
        ],
    )
    .await;
    let https = orch.https.unwrap();
    let trust = Trust::Roots(vec![ca.cert.clone()]);
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let config = client_config(&trust, &[b"h2", b"http/1.1"], &[version]);
        let tls = connect_with(https, "v.example.com", config).await.unwrap();
        let (_, session) = tls.get_ref();
        assert_eq!(session.protocol_version(), Some(version.version));
        assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]), "h2 is preferred");
    }
    // No ALPN at all still works (HTTP/1.1).
    let tls = connect(https, "v.example.com", &trust, &[]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    // A hand-made ClientHello: as TLS 1.2 it gets a ServerHello (so it is
    // well-formed); as TLS 1.0 or 1.1, a fatal protocol_version alert.
    let first_record = |version: u16| async move {
        let mut tcp = TcpStream::connect(https).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut tcp, &client_hello(version, "v.example.com"))
            .await
            .unwrap();
        let mut head = [0u8; 7];
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut head),
        )
        .await;
        assert!(matches!(read, Ok(Ok(_))), "{read:?}");
        head
    };
    let tls12 = first_record(0x0303).await;
    assert_eq!((tls12[0], tls12[5]), (0x16, 2), "a ServerHello: {tls12:?}");
    for old in [0x0301, 0x0302] {
        let answer = first_record(old).await;
        assert_eq!(answer[0], 0x15, "an alert record: {answer:?}");
        assert_eq!(
            &answer[5..7],
            &[2u8, 70],
            "fatal protocol_version: {answer:?}"
        );
    }
    orch.stop().await.unwrap();
}

/// A minimal but well-formed ClientHello offering only `version` (no
/// supported_versions extension), with SNI.
fn client_hello(version: u16, sni: &str) -> Vec<u8> {
    fn u16be(v: usize) -> [u8; 2] {
        u16::try_from(v).unwrap().to_be_bytes()
    }
    let mut sni_ext = Vec::new();
    sni_ext.extend(u16be(sni.len() + 3));
    sni_ext.push(0);
    sni_ext.extend(u16be(sni.len()));
    sni_ext.extend(sni.as_bytes());
    let mut exts = Vec::new();
    for (kind, data) in [
        (0x0000u16, sni_ext),
        (0x000a, vec![0, 2, 0, 0x17]),
        (0x000b, vec![1, 0]),
        (0x000d, vec![0, 4, 4, 3, 8, 4]),
    ] {
        exts.extend(kind.to_be_bytes());
        exts.extend(u16be(data.len()));
        exts.extend(data);
    }
    let mut body = Vec::new();
    body.extend(version.to_be_bytes());
    body.extend([7u8; 32]);
    body.push(0);
    // ECDHE-ECDSA/RSA-AES128-GCM-SHA256, which TLS 1.2 supports.
    body.extend([0, 4, 0xc0, 0x2b, 0xc0, 0x2f]);
    body.extend([1, 0]);
    body.extend(u16be(exts.len()));
    body.extend(exts);
    let mut handshake = vec![1, 0];
    handshake.extend(u16be(body.len()));
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(u16be(handshake.len()));
    record.extend(handshake);
    record
}

#[tokio::test]
async fn tls_settings_are_checked_at_start() {
    let db = pg::unique_db("tls_config");
    let missing = harness::temp_dir("nothing").join("missing");
    let url = pg::cluster().url(&db);
    for (flags, want) in [
        (vec!["--cert-dir", missing.to_str().unwrap()], "CERT_DIR"),
        (
            vec!["--acme-directory", "http://ca.example/dir"],
            "ACME_DIRECTORY",
        ),
        (vec!["--acme-email", "a@b.c"], "ACME_EMAIL"),
        (
            vec![
                "--acme-directory",
                "https://ca.example/dir",
                "--acme-ca-file",
                missing.to_str().unwrap(),
            ],
            "ACME_CA_FILE",
        ),
    ] {
        let mut args = vec!["orchestrator", "--database-url", &url];
        args.extend(flags);
        let config = <orchestrator::Cli as clap::Parser>::try_parse_from(&args)
            .unwrap()
            .serve;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
}

#[tokio::test]
async fn slow_handshakes_are_cut_and_framing_is_strict_over_tls() {
    let ca = TestCa::new();
    let dir = harness::temp_dir("certs");
    write_pair(&dir, "s.example.com", &ca.leaf(&["s.example.com"]));
    let orch = harness::start(
        &pg::unique_db("tls_strict"),
        &[
            "--cert-dir",
            dir.to_str().unwrap(),
            "--main-domain",
            "s.example.com",
            "--header-read-timeout",
            "1s",
        ],
    )
    .await;
    let https = orch.https.unwrap();
    let w = with_echo(&orch, "w", json!({})).await;

    // A connection that never says hello is closed after the header-read timeout.
    let mut silent = TcpStream::connect(https).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut silent, &mut buf),
    )
    .await
    .expect("closed within the timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // Content-Length with Transfer-Encoding over TLS: 400, and nothing
    // smuggled reaches the waifu.
    let trust = Trust::Roots(vec![ca.cert.clone()]);
    let mut tls = connect(https, "s.example.com", &trust, &[b"http/1.1"])
        .await
        .unwrap();
    let smuggle = "POST /w/echo HTTP/1.1\r\nHost: s.example.com\r\nContent-Length: 4\r\n\
                   Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /w/smuggled HTTP/1.1\r\nHost: s.example.com\r\n\r\n";
    tokio::io::AsyncWriteExt::write_all(&mut tls, smuggle.as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
    assert!(
        w.seen
            .lock()
            .unwrap()
            .iter()
            .all(|t| !t.contains("smuggled"))
    );
    orch.stop().await.unwrap();
}

/// `HSTS` puts `Strict-Transport-Security` on every answer over TLS (the
/// waifu's, the orchestrator's own errors) unless the waifu sent its own,
/// and never on plain HTTP.
#[tokio::test]
async fn hsts_goes_on_https_answers_only() {
    let ca = TestCa::new();
    let dir = harness::temp_dir("certs");
    write_pair(&dir, "app.example.com", &ca.leaf(&["app.example.com"]));
    let orch = harness::start(
        &pg::unique_db("hsts"),
        &[
            "--cert-dir",
            dir.to_str().unwrap(),
            "--hsts",
            "max-age=31536000; includeSubDomains",
        ],
    )
    .await;
    let https = orch.https.expect("TLS listener");
    let _w = with_echo(&orch, "app", json!({"https://app.example.com": "/"})).await;
    let trust = Trust::Roots(vec![ca.cert.clone()]);
    for h2 in [true, false] {
        for target in ["/x", "/__internal/health"] {
            let reply = get(https, "app.example.com", target, &trust, h2).await;
            assert_eq!(
                reply.headers["strict-transport-security"], "max-age=31536000; includeSubDomains",
                "{target} h2={h2}"
            );
        }
        // The waifu's own is left as it is, and alone.
        let reply = get(https, "app.example.com", "/hsts", &trust, h2).await;
        let values: Vec<_> = reply
            .headers
            .get_all("strict-transport-security")
            .iter()
            .collect();
        assert_eq!(values, ["max-age=5"], "h2={h2}");
    }
    let plain = orch.get("localhost", "/app/x").await;
    assert_eq!(plain.status, StatusCode::OK);
    assert!(!plain.headers.contains_key("strict-transport-security"));
    orch.stop().await.unwrap();
    // A value that is no HSTS value does not start.
    let config = <orchestrator::Cli as clap::Parser>::try_parse_from([
        "orchestrator",
        "--hsts",
        "max-age=soon",
    ])
    .unwrap()
    .serve;
    let e = config.validate().unwrap_err().to_string();
    assert!(e.contains("HSTS \"max-age=soon\""), "{e}");
}

/// A client that had a session with one orchestrator resumes it on another
/// of the same state database (TLS 1.3 tickets under shared keys): no
/// certificate signature, no key exchange; and on the first one again.
#[tokio::test]
async fn a_session_resumes_on_any_orchestrator_of_the_database() {
    use rustls::HandshakeKind;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let db = pg::unique_db("tickets");
    let flags = ["--https-addr", "127.0.0.1:0", "--main-domain", "localhost"];
    let a = harness::start(&db, &flags).await;
    let b = harness::start(&db, &flags).await;
    let (a_tls, b_tls) = (a.https.unwrap(), b.https.unwrap());
    // One exchange, read to its end: the tickets come before the answer.
    let visit = |addr, config| async move {
        let mut tls = crate::tls::connect_with(addr, "localhost", config)
            .await
            .unwrap();
        let kind = tls.get_ref().1.handshake_kind();
        tls.write_all(b"GET /nobody HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 404"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        kind
    };
    // Both take the shared key when they start; until then each seals
    // under its own, so this is polled.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let config = crate::tls::client_config(
            &crate::tls::Trust::Anything,
            &[b"http/1.1"],
            &[&rustls::version::TLS13],
        );
        assert_eq!(
            visit(a_tls, config.clone()).await,
            Some(HandshakeKind::Full)
        );
        if visit(b_tls, config.clone()).await == Some(HandshakeKind::Resumed) {
            assert_eq!(visit(a_tls, config).await, Some(HandshakeKind::Resumed));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never resumed on the other orchestrator"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
