//! `COMPRESSION=on`: a compressible answer arrives gzip-, br- or
//! zstd-encoded as the client prefers, decodes to the waifu's bytes, and
//! says `Vary: Accept-Encoding`; a server-sent event stream and a body the
//! waifu encoded itself pass untouched; a slow compressed body's first
//! bytes arrive before it ends. Off (the default), nothing changes.

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;

use crate::harness;
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::decode_all(body).unwrap(),
        other => panic!("{other}"),
    }
    out
}

/// What a gzip stream cut short decodes to so far.
fn gzip_prefix(body: &[u8]) -> Vec<u8> {
    let mut decoder = flate2::read::GzDecoder::new(body);
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = decoder.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_compressed_as_the_client_accepts_and_streams_stay_streams() {
    let orch = harness::start(&unique_db("compress"), &["--compression", "on"]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;
    let plain = orch.get("localhost", "/w/json").await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(plain.body.len(), 10 * 1024);
    assert!(plain.header("content-encoding").is_none());
    assert_eq!(plain.header("vary").as_deref(), Some("Accept-Encoding"));

    for (accept, want) in [
        ("gzip", "gzip"),
        ("gzip;q=0.5, br", "br"),
        ("zstd, gzip;q=0.9", "zstd"),
        ("br;q=0, *", "zstd"),
    ] {
        let r = orch
            .request(
                Method::GET,
                "localhost",
                "/w/json",
                &[("accept-encoding", accept)],
                Bytes::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{accept}");
        assert_eq!(
            r.header("content-encoding").as_deref(),
            Some(want),
            "{accept}"
        );
        assert_eq!(r.header("vary").as_deref(), Some("Accept-Encoding"));
        assert!(
            r.body.len() < plain.body.len() / 2,
            "{accept}: {}",
            r.body.len()
        );
        assert_eq!(decode(want, &r.body), plain.body.to_vec(), "{accept}");
    }
    // Small, already encoded, or an event stream: untouched.
    let small = orch
        .request(
            Method::GET,
            "localhost",
            "/w/x",
            &[("accept-encoding", "gzip")],
            Bytes::new(),
        )
        .await;
    assert!(small.header("content-encoding").is_none());
    let encoded = orch
        .request(
            Method::GET,
            "localhost",
            "/w/encoded",
            &[("accept-encoding", "gzip")],
            Bytes::new(),
        )
        .await;
    assert_eq!(
        encoded.header("content-encoding").as_deref(),
        Some("identity-test")
    );
    assert_eq!(encoded.body.len(), 4096);

    // Streams: the first piece arrives before the waifu sends the rest,
    // compressed (text) or not (events).
    for (path, coding) in [("/w/slow-text", Some("gzip")), ("/w/sse", None)] {
        let stream = tokio::net::TcpStream::connect(orch.public).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header("host", "localhost")
            .header("accept-encoding", "gzip")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = send.send_request(req).await.unwrap();
        assert_eq!(
            response
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap()),
            coding,
            "{path}"
        );
        let mut body = response.into_body();
        let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .unwrap_or_else(|_| panic!("{path}: nothing before the end"))
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        assert!(!first.is_empty(), "{path}");
        match coding {
            // The first piece is whole in what came: compressed and flushed.
            Some(_) => {
                let prefix = gzip_prefix(&first);
                assert!(
                    prefix.len() == 4096 && prefix.iter().all(|b| *b == b'a'),
                    "{path}: the first piece decoded to {} bytes",
                    prefix.len()
                );
            }
            None => assert_eq!(&first[..], b"data: first\n\n"),
        }
        w.release.notify_waiters();
        let mut rest = first.to_vec();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                rest.extend_from_slice(&data);
            }
        }
        if let Some(coding) = coding {
            let text = decode(coding, &rest);
            assert_eq!(text.len(), 8192, "{path}");
        }
    }
    orch.stop().await.unwrap();

    // Off: nothing is compressed.
    let off = harness::start(&unique_db("compressoff"), &[]).await;
    off.register("w", &w.host(), json!({})).await;
    let r = off
        .request(
            Method::GET,
            "localhost",
            "/w/json",
            &[("accept-encoding", "gzip, br")],
            Bytes::new(),
        )
        .await;
    assert!(r.header("content-encoding").is_none());
    assert!(r.header("vary").is_none());
    assert_eq!(r.body.len(), 10 * 1024);
    off.stop().await.unwrap();
}
