//! The upstream client against bare-socket waifus: framing, errors, reuse.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use http_body_util::BodyExt;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use waifus_testkit::http::bare_waifu;

fn endpoint(port: u16) -> Arc<Endpoint> {
    let authority = format!("127.0.0.1:{port}").parse().unwrap();
    Arc::new(Endpoint::new(authority))
}

/// What a GET got: status and body (or the error), and how many
/// connections went back to the pool.
type Got = (Result<(u16, Result<Vec<u8>, String>), String>, usize);

/// Sends one GET to a waifu that answers with `pieces`, written one by
/// one, then closes the connection if `close`.
async fn exchange(method: Method, pieces: Vec<Vec<u8>>, close: bool) -> Got {
    let (port, server) = bare_waifu(pieces, !close).await;
    let instance = endpoint(port);
    let req = Outgoing::bodyless(method, "/x", &[]);
    let got = match send(&instance, req, Duration::from_secs(5)).await {
        Err(e) => Err(e.to_string()),
        Ok(Answer::Switched { .. }) => Err("switched".into()),
        Ok(Answer::Response(r)) => {
            let status = r.status().as_u16();
            let body = r.into_body().collect().await;
            Ok((
                status,
                body.map(|b| b.to_bytes().to_vec())
                    .map_err(|e| e.to_string()),
            ))
        }
    };
    let pooled = instance.pool.idle();
    drop(instance);
    server.abort();
    (got, pooled)
}

fn ok(status: u16, body: &str, pooled: usize) -> Got {
    (Ok((status, Ok(body.as_bytes().to_vec()))), pooled)
}

#[tokio::test]
async fn framing() {
    let cases: &[(&str, &str, bool, Got)] = &[
        (
            "length",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            false,
            ok(200, "hello", 1),
        ),
        (
            "chunked, extensions, trailers",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
            false,
            ok(200, "hello world", 1),
        ),
        (
            "interim 100 and 103 skipped",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
            false,
            ok(201, "ok", 1),
        ),
        (
            "until close",
            "HTTP/1.1 200 OK\r\n\r\nall of it",
            true,
            ok(200, "all of it", 0),
        ),
        (
            "HTTP/1.0 is not reused",
            "HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
            false,
            ok(200, "ok", 0),
        ),
        (
            "Connection: close",
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            false,
            ok(200, "ok", 0),
        ),
        (
            "equal lengths",
            "HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\ncontent-length: 2\r\n\r\nok",
            false,
            ok(200, "ok", 1),
        ),
        (
            "204 has no body",
            "HTTP/1.1 204 No Content\r\n\r\n",
            false,
            ok(204, "", 1),
        ),
        (
            "bytes after a 204: not reused",
            "HTTP/1.1 204 No Content\r\n\r\nstray",
            false,
            ok(204, "", 0),
        ),
        (
            "TE and CL: chunked wins, then close",
            "HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            false,
            ok(200, "ok", 0),
        ),
        (
            "TE not ending in chunked: until close",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nraw",
            true,
            ok(200, "raw", 0),
        ),
    ];
    for (what, raw, close, want) in cases {
        let got = exchange(Method::GET, vec![raw.as_bytes().to_vec()], *close).await;
        assert_eq!(&got, want, "{what}");
    }
}

#[tokio::test]
async fn head_has_no_body() {
    let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n".to_vec();
    assert_eq!(
        exchange(Method::HEAD, vec![raw], false).await,
        ok(200, "", 1)
    );
}

#[tokio::test]
async fn broken_responses_are_errors() {
    let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "a: b\r\n".repeat(101));
    let cases: &[(&str, &str, bool, &str)] = &[
        (
            "conflicting lengths",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
            false,
            "conflicting Content-Length",
        ),
        (
            "plus sign",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello",
            false,
            "invalid Content-Length",
        ),
        (
            "empty length",
            "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            false,
            "invalid Content-Length",
        ),
        (
            "garbage",
            "HTTP/1.1 OK\r\n\r\n",
            false,
            "malformed response head",
        ),
        (
            "too many fields",
            &many,
            false,
            "too many response header fields",
        ),
        (
            "unasked 101",
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
            false,
            "without an upgrade request",
        ),
        ("closed at once", "", true, "closed before a response"),
        (
            "truncated head",
            "HTTP/1.1 200 OK\r\ncontent-",
            true,
            "truncated response head",
        ),
    ];
    for (what, raw, close, want) in cases {
        let (got, pooled) = exchange(Method::GET, vec![raw.as_bytes().to_vec()], *close).await;
        let err = got.expect_err(what);
        assert!(err.contains(want), "{what}: {err}");
        assert_eq!(pooled, 0, "{what}");
    }
    let bodies: &[(&str, &str, &str)] = &[
        (
            "short body",
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello",
            "mid-body",
        ),
        (
            "bad chunk size",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            "without a size",
        ),
        (
            "no CRLF after data",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
            "not followed by CRLF",
        ),
        (
            "chunk size overflow",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
            "invalid chunk size",
        ),
        (
            "truncated chunked",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
            "mid-body",
        ),
        // Found by `fuzz/fuzz_targets/upstream.rs`: httparse takes any
        // byte in a chunk extension, and trailers were only split at CRLF.
        (
            "NUL in an extension",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;x=\0\r\nok\r\n0\r\n\r\n",
            "control character in a chunk-size line",
        ),
        (
            "bare LF in an extension",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0;x\n\r\n\r\n",
            "control character in a chunk-size line",
        ),
        (
            "no size, only an extension",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n;x=1\r\n\r\n",
            "without a size",
        ),
        (
            "an empty chunk-size line",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\r\n\r\n",
            "without a size",
        ),
        (
            "bare LF in the trailers",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx: 1\n\r\n",
            "malformed trailer line",
        ),
        (
            "a trailer that is not a field",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nhello\r\n\r\n",
            "malformed trailer line",
        ),
    ];
    for (what, raw, want) in bodies {
        let (got, pooled) = exchange(Method::GET, vec![raw.as_bytes().to_vec()], true).await;
        let (status, body) = got.expect(what);
        assert_eq!(status, 200, "{what}");
        let err = body.expect_err(what);
        assert!(err.contains(want), "{what}: {err}");
        assert_eq!(pooled, 0, "{what}");
    }
}

/// A pooled connection the waifu closed meanwhile is never used for the
/// next request: it is noticed as closed (or the GET is retried).
#[tokio::test]
async fn closed_pooled_connection_is_not_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut closed_tx = Some(closed_tx);
        for _ in 0..2 {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            drop(s);
            if let Some(tx) = closed_tx.take() {
                let _ = tx.send(());
            }
        }
    });
    let instance = endpoint(port);
    let mut closed_rx = Some(closed_rx);
    for round in 0..2 {
        let req = Outgoing::bodyless(Method::GET, "/", &[]);
        let Ok(Answer::Response(r)) = send(&instance, req, Duration::from_secs(5)).await else {
            panic!("round {round}: no response");
        };
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "ok", "round {round}");
        if round == 0 {
            assert_eq!(instance.pool.idle(), 1);
            instance.pool.reap(Duration::from_secs(30));
            assert_eq!(instance.pool.idle(), 1, "young: kept");
            closed_rx.take().unwrap().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    instance.pool.reap(Duration::ZERO);
    assert!(instance.pool.idle() == 0, "old: closed");
}

/// A closing request says so to the waifu, and its connection is not kept
/// even when the waifu would keep it open; an ordinary one is kept.
#[tokio::test]
async fn a_closing_request_asks_for_close_and_is_not_pooled() {
    for closing in [false, true] {
        // An answer with no body, that would keep the connection open.
        let (port, server) =
            bare_waifu(vec![b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()], true).await;
        let instance = endpoint(port);
        let mut req = Outgoing::bodyless(Method::GET, "/h", &[("host", "x")]);
        if closing {
            req = req.closing().closing();
        }
        let Ok(Answer::Response(r)) = send(&instance, req, Duration::from_secs(5)).await else {
            panic!("no response");
        };
        assert_eq!(r.status(), 204);
        r.into_body().collect().await.unwrap();
        assert_eq!(
            instance.pool.idle(),
            usize::from(!closing),
            "closing: {closing}"
        );
        drop(instance);
        let head = server.await.unwrap();
        let expected = if closing {
            "GET /h HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        } else {
            "GET /h HTTP/1.1\r\nhost: x\r\n\r\n"
        };
        assert_eq!(head, expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// However the waifu's bytes are split across reads, a chunked body
    /// decodes to the same bytes and leaves the connection reusable.
    #[test]
    fn chunked_survives_any_split(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        let mut want = Vec::new();
        for c in &chunks {
            raw.extend_from_slice(format!("{:X}\r\n", c.len()).as_bytes());
            raw.extend_from_slice(c);
            raw.extend_from_slice(b"\r\n");
            want.extend_from_slice(c);
        }
        raw.extend_from_slice(b"0\r\n\r\n");
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(raw.len())).collect();
        at.push(raw.len());
        at.sort_unstable();
        let mut pieces = Vec::new();
        let mut from = 0;
        for to in at {
            if to > from {
                pieces.push(raw[from..to].to_vec());
                from = to;
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let got = rt.block_on(exchange(Method::GET, pieces, false));
        prop_assert_eq!(got, (Ok((200, Ok(want))), 1));
    }
}
