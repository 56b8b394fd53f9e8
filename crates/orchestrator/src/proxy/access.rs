//! The access log: one line per proxied request, written when its
//! response body ends (or is dropped), with the bytes actually sent.
//!
//! Lines are `tracing` events of target `access` at INFO, so `LOG_FORMAT`
//! makes them text or JSON like every other line. The query string is left
//! out: tokens travel in queries, and logs are read by more people than
//! requests are.

use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method};
use hyper::body::{Body, Frame, SizeHint};

use super::fields::{ClientRequest, text};

/// What is known of a request by the time its response starts.
#[derive(Debug)]
pub(crate) struct Entry {
    pub started: Instant,
    pub client: IpAddr,
    pub host: String,
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub waifu: Option<std::sync::Arc<str>>,
    pub instance: Option<String>,
    pub request_id: Option<HeaderValue>,
    /// The W3C trace id the request was sent with.
    pub trace_id: Option<super::trace::TraceId>,
    pub tls: bool,
    bytes: u64,
}

impl Entry {
    pub(crate) fn begin(
        req: &ClientRequest<'_>,
        client: IpAddr,
        started: Instant,
        tls: bool,
    ) -> Entry {
        let host = req
            .authority
            .or_else(|| req.fields.first(&super::fields::name::HOST).and_then(text))
            .unwrap_or("-");
        Entry {
            started,
            client: client.to_canonical(),
            host: host.to_owned(),
            method: req.method.clone(),
            path: req.path.to_owned(),
            status: 0,
            waifu: None,
            instance: None,
            request_id: None,
            trace_id: None,
            tls,
            bytes: 0,
        }
    }

    fn emit(&self, complete: bool) {
        let duration_ms = (self.started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
        let request_id = self
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let trace_id = self
            .trace_id
            .as_ref()
            .and_then(|id| std::str::from_utf8(id).ok())
            .unwrap_or("-");
        tracing::info!(
            target: "access",
            client = %self.client,
            host = %self.host,
            method = %self.method,
            path = %self.path,
            status = self.status,
            bytes = self.bytes,
            duration_ms,
            waifu = %self.waifu.as_deref().unwrap_or("-"),
            instance = %self.instance.as_deref().unwrap_or("-"),
            request_id = %request_id,
            trace_id = %trace_id,
            scheme = %if self.tls { "https" } else { "http" },
            complete,
        );
    }
}

/// A response body that writes its access log line when it ends.
#[derive(Debug)]
pub(crate) struct Logged<B: Body> {
    inner: B,
    entry: Option<Box<Entry>>,
}

impl<B: Body> Logged<B> {
    /// Not logged: the body passes through untouched.
    pub(crate) fn off(inner: B) -> Self {
        Logged { inner, entry: None }
    }

    pub(crate) fn new(inner: B, entry: Box<Entry>) -> Self {
        Logged {
            inner,
            entry: Some(entry),
        }
    }
}

impl<B> Body for Logged<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Some(entry) = self.entry.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        entry.bytes += data.len() as u64;
                    }
                }
                Poll::Ready(None) => {
                    entry.emit(true);
                    self.entry = None;
                }
                Poll::Ready(Some(Err(_))) | Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for Logged<B> {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            // A body hyper never had to poll (empty, HEAD) ends complete;
            // anything else dropped early was cut off (client gone,
            // upstream broke).
            entry.emit(self.inner.is_end_stream());
        }
    }
}
