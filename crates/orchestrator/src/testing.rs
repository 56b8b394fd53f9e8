//! Hooks into the crate's internals for what is outside it but needs them:
//! the micro-benchmark (`benches/hot_path.rs`), the fuzz targets
//! (`fuzz/fuzz_targets/`) and the integration tests' PostgreSQL harness.
//! Not part of the orchestrator's interface.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use waifus_http1::body::Decoder;
use waifus_http1::chunked::Step;

use crate::routing::{BindRoute, Instance, RouteTable, WaifuRoute};

/// The guard: the canonical path, or why the target is refused.
pub fn normalize(raw: &str) -> Result<std::borrow::Cow<'_, str>, &'static str> {
    crate::proxy::guard::normalize(raw).map_err(|r| match r {
        crate::proxy::guard::Rejection::Internal => "internal",
        crate::proxy::guard::Rejection::Ambiguous(why) => why,
    })
}

/// Response compression as the proxy streams it: `body` in pieces of
/// `piece` bytes, with `coding` (`gzip`, `br`, `zstd`); the bytes out.
pub fn compress_pieces(coding: &str, body: &[u8], piece: usize) -> usize {
    crate::proxy::compress::compress_pieces(coding, body, piece).unwrap_or(0)
}

/// A request head as the public listener's HTTP/1.1 loop takes it.
#[derive(Debug)]
pub struct H1Head {
    pub method: String,
    /// The request target, as the proxy reads it.
    pub target: String,
    /// Field names (lowercase) and values, in the order they came.
    pub fields: Vec<(String, Vec<u8>)>,
    /// The client asked to close the connection after this request.
    pub close: bool,
}

/// What the public listener makes of `data` arriving in one read (for
/// `fuzz/fuzz_targets/h1.rs`): how many bytes the strict framing check lets
/// through, the head the HTTP/1.1 loop serves itself from those, if any,
/// and the bytes it leaves in its buffer (all it was given when it serves
/// none: hyper gets them).
pub fn h1_parse(data: &[u8]) -> (usize, Option<H1Head>, Vec<u8>) {
    let passed = waifus_http1::check::Checker::default().check(data).pass;
    let mut buf = BytesMut::from(&data[..passed]);
    let seen = |req: crate::proxy::ClientRequest<'_>| H1Head {
        method: req.method.to_string(),
        target: match req.query {
            Some(query) => format!("{}?{query}", req.path),
            None => req.path.to_owned(),
        },
        fields: req
            .fields
            .each()
            .map(|(name, value)| (String::from_utf8_lossy(name).to_lowercase(), value.to_vec()))
            .collect(),
        close: false,
    };
    let head = match crate::edge::parse_fast(&buf, seen) {
        crate::edge::Parsed::Fast(head) => {
            buf.advance(head.len);
            Some(H1Head {
                close: head.close,
                ..head.served
            })
        }
        crate::edge::Parsed::Partial | crate::edge::Parsed::HandOff => None,
    };
    (passed, head, buf.to_vec())
}

/// What the proxy makes of `data` when it is all a waifu sends on a
/// connection (answering a `HEAD` when `head` is set, else a `GET`) before
/// closing it, for `fuzz/fuzz_targets/upstream.rs`: the head parsed and the
/// body decoded by the same code the upstream client runs.
pub fn upstream_decode(data: &[u8], head: bool) -> Decoded {
    let method = if head {
        http::Method::HEAD
    } else {
        http::Method::GET
    };
    let mut buf = BytesMut::from(data);
    let parsed = match waifus_http1::response::parse_head(&mut buf, &method) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Decoded::HeadIncomplete,
        Err(_) => return Decoded::Refused,
    };
    let status = parsed.status.as_u16();
    if status == 101 {
        return Decoded::Switched { early: buf.len() };
    }
    let mut decoder = Decoder::from(parsed.framing);
    let mut body = Vec::new();
    // The upstream body's loop, with the end of `data` as the end of the stream.
    let ending = loop {
        if decoder.is_done() {
            break BodyEnd::Complete;
        }
        match decoder.step(&buf) {
            Err(_) => break BodyEnd::BadChunk,
            Ok(Step::Data(n)) => {
                body.extend_from_slice(&buf[..n]);
                buf.advance(n);
            }
            Ok(Step::Framing(n)) => buf.advance(n),
            Ok(Step::More) => match decoder.at_end_of_stream() {
                Ok(()) => break BodyEnd::AtClose,
                Err(_) => break BodyEnd::Truncated,
            },
        }
    };
    let left = buf.len();
    // Only a complete message with nothing after it leaves the connection
    // fit for another request.
    let reusable = ending == BodyEnd::Complete && parsed.keep_alive && left == 0;
    Decoded::Response {
        status,
        body,
        ending,
        left,
        reusable,
    }
}

/// See [`upstream_decode`].
#[derive(Debug)]
pub enum Decoded {
    Refused,
    HeadIncomplete,
    Switched {
        early: usize,
    },
    Response {
        status: u16,
        body: Vec<u8>,
        ending: BodyEnd,
        /// Bytes after the message.
        left: usize,
        reusable: bool,
    },
}

/// How a decoded body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    Complete,
    AtClose,
    Truncated,
    BadChunk,
}

/// A route table with `waifus` waifus (`w0`, `w1`, ...) and as many binds
/// (`b{i}.test` → waifu `w{i}`, prefix `/p`).
#[derive(Debug)]
pub struct Table(RouteTable);

impl Table {
    pub fn new(waifus: usize) -> Table {
        let routes: Vec<Arc<WaifuRoute>> = (0..waifus)
            .map(|i| {
                let upstream =
                    waifus_protocol::parse_host(&format!("10.0.{}.{}:8080", i / 250, i % 250))
                        .expect("valid host");
                let instance = Arc::new(Instance::new(upstream, true));
                Arc::new(WaifuRoute::new(format!("w{i}"), vec![instance]))
            })
            .collect();
        let binds: Vec<(String, BindRoute)> = routes
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let bind = BindRoute {
                    prefix: "/p".into(),
                    target: "/t".into(),
                    waifu: w.clone(),
                    tls: false,
                };
                (format!("b{i}.test"), bind)
            })
            .collect();
        Table(RouteTable::new(Some("localhost"), routes, binds))
    }

    /// Resolves and picks an instance; returns the upstream path's length.
    pub fn route(&self, host: &str, path: &str) -> Option<usize> {
        let resolved = self.0.resolve(host, path)?;
        resolved.waifu.pick()?;
        Some(resolved.path.len())
    }
}
