//! The benchmark's backend: `bench-backend 127.0.0.1:PORT`. Answers
//! `GET /__internal/health` with 204, `GET /big/N` with N bytes (up to 64
//! MiB, sliced from one buffer made at start), any request with a body by
//! reading it to its end and answering how many bytes came, and anything
//! else with a 13-byte 200; keep-alive, as fast as hyper allows, so the
//! proxies in front of it are what gets measured.

use std::convert::Infallible;

use std::sync::OnceLock;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const BODY: &[u8] = b"hello, bench\n";

/// The largest `/big/N` body.
const BIG: usize = 64 * 1024 * 1024;

fn big() -> &'static Bytes {
    static ZEROS: OnceLock<Bytes> = OnceLock::new();
    ZEROS.get_or_init(|| Bytes::from(vec![b'x'; BIG]))
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let path = req.uri().path().to_owned();
                    let big_len = path
                        .strip_prefix("/big/")
                        .and_then(|n| n.parse::<usize>().ok())
                        .filter(|&n| n <= BIG);
                    let response = if path == "/__internal/health" {
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = StatusCode::NO_CONTENT;
                        r
                    } else if let Some(n) = big_len {
                        Response::new(Full::new(big().slice(..n)))
                    } else if req.headers().contains_key(http::header::CONTENT_LENGTH)
                        || req.headers().contains_key(http::header::TRANSFER_ENCODING)
                    {
                        // An upload: read it all, say how much came.
                        let mut body = req.into_body();
                        let mut read = 0usize;
                        while let Some(frame) = body.frame().await {
                            match frame {
                                Ok(frame) => read += frame.data_ref().map_or(0, |d| d.len()),
                                Err(_) => break,
                            }
                        }
                        Response::new(Full::new(Bytes::from(format!("{read}\n"))))
                    } else {
                        Response::new(Full::new(Bytes::from_static(BODY)))
                    };
                    Ok::<_, Infallible>(response)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
