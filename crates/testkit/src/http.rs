//! One HTTP/1.1 request on a connection of its own, as a client outside
//! would send it: the test crates' one client helper.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// An answer, whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as text (lossily).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// A header field's value, if it is there and is text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// Why there is no answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Failed {
    /// Refused, reset, or not HTTP.
    Broken,
    /// Nothing (or not all of it) within the time given.
    TimedOut,
}

/// A request to send.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub method: Method,
    /// Origin form: `/path?query`.
    pub target: &'a str,
    /// `host` defaults to the address.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Bytes,
    /// Its source address, if not the system's choice.
    pub from: Option<IpAddr>,
    /// The whole exchange, answer body included, within this.
    pub within: Duration,
}

impl<'a> Call<'a> {
    /// `method target`, no body, 10 s.
    pub fn new(method: Method, target: &'a str) -> Call<'a> {
        Call {
            method,
            target,
            headers: &[],
            body: Bytes::new(),
            from: None,
            within: Duration::from_secs(10),
        }
    }

    /// `POST target` with a JSON body.
    pub fn json(target: &'a str, body: impl Into<Bytes>) -> Call<'a> {
        Call {
            headers: &[("content-type", "application/json")],
            body: body.into(),
            ..Call::new(Method::POST, target)
        }
    }
}

/// Sends `call` to `addr` on a connection of its own.
pub async fn send(addr: SocketAddr, call: Call<'_>) -> Result<Reply, Failed> {
    let mut connector = HttpConnector::new();
    connector.set_local_address(call.from);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .set_host(false)
        .build(connector);
    let mut request = Request::builder()
        .method(call.method)
        .uri(format!("http://{addr}{}", call.target));
    let mut has_host = false;
    for (k, v) in call.headers {
        has_host |= k.eq_ignore_ascii_case("host");
        request = request.header(*k, *v);
    }
    if !has_host {
        request = request.header("host", addr.to_string());
    }
    let request = request
        .body(Full::new(call.body))
        .map_err(|_| Failed::Broken)?;
    let exchange = async {
        let response = client.request(request).await.map_err(|_| Failed::Broken)?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|_| Failed::Broken)?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(call.within, exchange)
        .await
        .unwrap_or(Err(Failed::TimedOut))
}

/// A waifu on a bare socket, for tests of the client side: it accepts one
/// connection, reads one request head byte by byte (so nothing after the
/// head is consumed), writes `answer` piece by piece (1 ms apart, so the
/// client sees each in its own read), then, if `hold`, keeps the connection
/// open until the peer closes it. Returns its port and the head it read
/// (short if the peer closed first).
pub async fn bare_waifu(
    answer: Vec<Vec<u8>>,
    hold: bool,
) -> (u16, tokio::task::JoinHandle<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port for the bare waifu");
    let port = listener.local_addr().expect("its address").port();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("one connection");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if s.read(&mut byte).await.unwrap_or(0) == 0 {
                return String::from_utf8_lossy(&head).into_owned();
            }
            head.push(byte[0]);
        }
        for piece in answer {
            s.write_all(&piece).await.expect("the answer written");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if hold {
            let _ = s.read(&mut [0u8; 1]).await;
        }
        String::from_utf8_lossy(&head).into_owned()
    });
    (port, task)
}

/// `name` with every other letter in upper case, starting with the first
/// when `offset` is even: a field name as a client may spell it.
pub fn mixed_case(name: &str, offset: usize) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if (offset + i).is_multiple_of(2) {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}
