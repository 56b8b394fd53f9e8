//! Request smuggling: malformed HTTP/1 framing is refused with 400 and a
//! closed connection, over raw sockets against the real listener; a
//! pipelined request after a good one goes through the guard like any
//! other; a request whose body breaks its framing gets one answer only.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness;
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

/// Sends `request` and reads until the server closes; `None` if it did not
/// close within 10 s.
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn statuses(responses: &str) -> Vec<u16> {
    responses
        .split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|r| r.get(..3)?.parse().ok())
        .collect()
}

#[tokio::test]
async fn malformed_framing_is_refused_and_closed() {
    let orch = harness::start(&unique_db("smuggle"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;
    let cases: &[(&str, &str)] = &[
        (
            "CL and TE",
            "POST /w/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "two CLs",
            "POST /w/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        ),
        (
            "plus CL",
            "POST /w/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: +3\r\n\r\nabc",
        ),
        (
            "empty CL",
            "POST /w/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: \r\n\r\n",
        ),
        (
            "xchunked",
            "POST /w/echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "chunked tab",
            "POST /w/echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\t\r\n\r\n0\r\n\r\n",
        ),
        (
            "identity, chunked",
            "POST /w/echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "second TE",
            "POST /w/echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "obs-fold",
            "GET /w/x HTTP/1.1\r\nHost: localhost\r\nX-A: a\r\n b\r\n\r\n",
        ),
        ("bare LF", "GET /w/x HTTP/1.1\nHost: localhost\n\n"),
        (
            "space before colon",
            "GET /w/x HTTP/1.1\r\nHost : localhost\r\n\r\n",
        ),
        // A fragment would be dropped by `http::Uri` on the way in: the
        // waifu would get `/x` for a target that says more.
        (
            "fragment",
            "GET /w/x#/../__internal/y HTTP/1.1\r\nHost: localhost\r\n\r\n",
        ),
    ];
    for (what, request) in cases {
        let got = exchange(orch.public, request.as_bytes()).await;
        let got = got.unwrap_or_else(|| panic!("{what}: the connection was not closed"));
        // Refused by our strict check (JSON body) or, for what it sees
        // first, by hyper itself (empty body): a 400 either way.
        assert_eq!(statuses(&got), [400], "{what}: {got}");
        // After a good request on the same connection: the good one is
        // answered, then the bad one refused.
        let good = "GET /w/first HTTP/1.1\r\nHost: localhost\r\n\r\n";
        let both = format!("{good}{request}");
        let got = exchange(orch.public, both.as_bytes()).await;
        let got = got.unwrap_or_else(|| panic!("{what} (pipelined): not closed"));
        assert_eq!(statuses(&got), [200, 400], "{what} (pipelined): {got}");
    }
    // None of the malformed requests reached the waifu.
    let seen = w.seen.lock().unwrap().clone();
    assert!(seen.iter().all(|t| t == "/first"), "{seen:?}");
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn pipelined_requests_each_go_through_the_guard() {
    let orch = harness::start(&unique_db("pipeline"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;
    // A request hidden in a body is data: echoed, never routed.
    let hidden = "GET /w/__internal/x HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let requests = [
        "GET /w/a HTTP/1.1\r\nHost: localhost\r\n\r\n".to_string(),
        "GET /w/__internal/health HTTP/1.1\r\nHost: localhost\r\n\r\n".to_string(),
        format!(
            "POST /w/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{hidden}",
            hidden.len()
        ),
        "GET /w/%5f_internal/y HTTP/1.1\r\nHost: localhost\r\n\r\n".to_string(),
        "GET /w/b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_string(),
    ]
    .concat();
    let got = exchange(orch.public, requests.as_bytes())
        .await
        .expect("closed");
    assert_eq!(statuses(&got), [200, 404, 200, 404, 200], "{got}");
    let seen = w.seen.lock().unwrap().clone();
    assert_eq!(seen, ["/a", "/echo", "/b"]);
    orch.stop().await.unwrap();
}

/// A chunked body that breaks its framing after its request went to the
/// waifu: one final answer (400 before the waifu answered, a cut connection
/// after), never a 502 followed by a 400, and never counted as the waifu's
/// failure.
#[tokio::test]
async fn a_broken_request_body_gets_one_answer() {
    let orch = harness::start(&unique_db("onebody"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;
    let head = "POST /w/echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n";
    for body in ["zz\r\n", "5\r\nhello\r\nzz\r\n", "5\r\nhelloXX"] {
        let got = exchange(orch.public, format!("{head}{body}").as_bytes())
            .await
            .unwrap_or_else(|| panic!("{body:?}: not closed"));
        assert_eq!(statuses(&got), [400], "{body:?}: {got}");
        assert!(got.contains(r#""error":"bad_request""#), "{got}");
    }
    // The bad chunk comes once the waifu is already streaming its answer:
    // that answer is cut off, and nothing follows it.
    let mut stream = TcpStream::connect(orch.public).await.unwrap();
    stream
        .write_all(format!("{head}5\r\nhello\r\n").as_bytes())
        .await
        .unwrap();
    let mut first = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut first))
        .await
        .unwrap()
        .unwrap();
    let mut got = String::from_utf8_lossy(&first[..n]).into_owned();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    stream.write_all(b"zz\r\n").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("closed")
        .unwrap();
    got.push_str(&String::from_utf8_lossy(&rest));
    assert_eq!(statuses(&got), [200], "{got}");
    assert!(
        !got.ends_with("0\r\n\r\n"),
        "the answer looks complete: {got}"
    );
    // None of it is the waifu's failure.
    let metrics = harness::send(
        orch.internal,
        http::Method::GET,
        "/__internal/metrics",
        &[],
        bytes::Bytes::new(),
    )
    .await
    .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(
        !metrics.contains(r#"waifus_requests_total{waifu="w",method="POST",status="5xx"}"#),
        "{metrics}"
    );
    orch.stop().await.unwrap();
}

/// A request's chunks are read by the rules a waifu's answers are read by:
/// what the response decoder refuses (a size line without digits, a bare LF
/// or a NUL in an extension, a trailer that is no field) is refused here too,
/// with our JSON 400 and a close, and what follows never becomes a request.
#[tokio::test]
async fn request_chunks_are_read_as_strictly_as_response_chunks() {
    let orch = harness::start(&unique_db("chunkrules"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;
    let head = "POST /w/echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n";
    let next = "GET /w/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for body in [
        ";x=1\r\n\r\n",
        "\r\n\r\n",
        "1;a\nb\r\nx\r\n0\r\n\r\n",
        "1;\0\r\nx\r\n0\r\n\r\n",
        "0\r\nhello\r\n\r\n",
        // Outside RFC 9112's chunk-ext grammar.
        "5 \r\nhello\r\n0\r\n\r\n",
        "5\r\nhello\r\n0;\r\n\r\n",
        "5;a=\r\nhello\r\n0\r\n\r\n",
        "5;a b\r\nhello\r\n0\r\n\r\n",
    ] {
        let got = exchange(orch.public, format!("{head}{body}{next}").as_bytes())
            .await
            .unwrap_or_else(|| panic!("{body:?}: not closed"));
        assert_eq!(statuses(&got), [400], "{body:?}: {got}");
        assert!(got.contains(r#""error":"bad_request""#), "{body:?}: {got}");
    }
    let seen = w.seen.lock().unwrap().clone();
    assert!(seen.iter().all(|t| t != "/smuggled"), "{seen:?}");
    orch.stop().await.unwrap();
}
