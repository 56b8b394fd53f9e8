//! Response compression (`COMPRESSION=on`): gzip, br or zstd, by the
//! client's `Accept-Encoding` and its q-values, for compressible content
//! types the waifu did not encode itself, over 1 KiB or of unknown length;
//! never for `text/event-stream`, upgraded connections, `HEAD`, 204 or 304.
//! Streaming: each piece of the waifu's body is compressed and flushed as it
//! comes, so a slow body's first bytes reach the client before it ends.

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};

use super::fields::{Fields, name, text};

/// Bodies smaller than this stay as they are.
const MIN_SIZE: u64 = 1024;
/// Brotli's quality and window: fast enough to stream (nginx's default
/// quality is 6; 11, the library's, is for static files).
const BROTLI_QUALITY: u32 = 5;
const BROTLI_WINDOW: u32 = 22;
/// zstd's level (its own default).
const ZSTD_LEVEL: i32 = 3;

/// A content coding the proxy can apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    Br,
    Zstd,
    Gzip,
}

impl Coding {
    fn name(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }
}

/// The coding the client prefers among ours (`Accept-Encoding`, RFC 9110
/// §12.5.3): the highest q-value above 0, ties going to zstd, then br,
/// then gzip (zstd costs the least CPU for as much saved: see the
/// `compress_16k_json` benchmark); `*` stands for every coding not named.
pub(crate) fn choose(fields: Fields<'_>) -> Option<Coding> {
    let mut q = [None::<f32>; 3];
    let mut star = None;
    for value in fields.all(&name::ACCEPT_ENCODING) {
        let Some(value) = text(value) else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let weight = parts
                .find_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    (k.trim().eq_ignore_ascii_case("q")).then(|| v.trim().parse::<f32>().ok())?
                })
                .unwrap_or(1.0);
            let slot = match name.to_ascii_lowercase().as_str() {
                "zstd" => &mut q[0],
                "br" => &mut q[1],
                "gzip" | "x-gzip" => &mut q[2],
                "*" => &mut star,
                _ => continue,
            };
            *slot = Some(weight);
        }
    }
    let codings = [Coding::Zstd, Coding::Br, Coding::Gzip];
    let mut best: Option<(f32, Coding)> = None;
    for (i, coding) in codings.into_iter().enumerate() {
        let weight = q[i].or(star).unwrap_or(0.0);
        if weight > 0.0 && best.is_none_or(|(w, _)| weight > w) {
            best = Some((weight, coding));
        }
    }
    best.map(|(_, c)| c)
}

/// Whether a content type is worth compressing.
fn compressible(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence == "text/event-stream" {
        return false;
    }
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/json"
                | "application/javascript"
                | "application/xml"
                | "application/wasm"
                | "image/svg+xml"
        )
}

/// Whether this response is one the proxy compresses (its type and its
/// coding), whatever the client accepts: then it varies by
/// `Accept-Encoding`.
fn candidate<B>(response: &Response<B>, head: bool) -> bool {
    let status = response.status();
    let headers = response.headers();
    !head
        && status.is_success()
        && status != StatusCode::NO_CONTENT
        && !headers.contains_key(header::CONTENT_ENCODING)
        && !headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.contains("no-transform")))
        && headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(compressible)
}

/// The response as the client gets it: compressed with `coding` when it
/// is a candidate and large enough, with `Vary: Accept-Encoding` on every
/// candidate.
pub(crate) fn apply<B>(
    response: Response<B>,
    coding: Option<Coding>,
    head: bool,
) -> Response<Compressed<B>>
where
    B: Body<Data = Bytes>,
{
    if !candidate(&response, head) {
        return response.map(Compressed::plain);
    }
    let (mut parts, body) = response.into_parts();
    add_vary(&mut parts.headers);
    let small = body.size_hint().exact().is_some_and(|n| n < MIN_SIZE);
    let Some(coding) = coding.filter(|_| !small) else {
        return Response::from_parts(parts, Compressed::plain(body));
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(coding.name()),
    );
    // A validator of the identity body does not name the compressed one.
    if let Some(etag) = parts.headers.get(header::ETAG)
        && let Ok(text) = etag.to_str()
        && !text.starts_with("W/")
        && let Ok(weak) = HeaderValue::from_str(&format!("W/{text}"))
    {
        parts.headers.insert(header::ETAG, weak);
    }
    Response::from_parts(parts, Compressed::new(body, coding))
}

fn add_vary(headers: &mut HeaderMap) {
    let varies = headers.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|e| e.trim() == "*" || e.trim().eq_ignore_ascii_case("accept-encoding"))
        })
    });
    if !varies {
        headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encoder::Gzip(_) => "gzip",
            Encoder::Br(_) => "br",
            Encoder::Zstd(_) => "zstd",
        })
    }
}

impl Encoder {
    fn new(coding: Coding) -> std::io::Result<Encoder> {
        Ok(match coding {
            Coding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::default(),
            )),
            Coding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                BROTLI_QUALITY,
                BROTLI_WINDOW,
            ))),
            Coding::Zstd => {
                Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)?)
            }
        })
    }

    /// Compresses `data` and flushes: what is ready to send.
    fn push(&mut self, data: &[u8]) -> std::io::Result<Bytes> {
        let out = match self {
            Encoder::Gzip(e) => {
                e.write_all(data)?;
                e.flush()?;
                e.get_mut()
            }
            Encoder::Br(e) => {
                e.write_all(data)?;
                e.flush()?;
                e.get_mut()
            }
            Encoder::Zstd(e) => {
                e.write_all(data)?;
                e.flush()?;
                e.get_mut()
            }
        };
        Ok(Bytes::from(std::mem::take(out)))
    }

    /// The end of the stream.
    fn finish(self) -> std::io::Result<Bytes> {
        Ok(Bytes::from(match self {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Br(e) => e.into_inner(),
            Encoder::Zstd(e) => e.finish()?,
        }))
    }
}

/// A response body passed through, or compressed as it streams.
#[derive(Debug)]
pub(crate) struct Compressed<B> {
    inner: B,
    /// `None`: passed through (or the stream has ended).
    /// Boxed: most responses are not compressed, and this body is part of
    /// every response the proxy moves around.
    encoder: Option<Box<Encoder>>,
    ended: bool,
}

impl<B> Compressed<B> {
    pub(crate) fn plain(inner: B) -> Self {
        Compressed {
            inner,
            encoder: None,
            ended: true,
        }
    }

    fn new(inner: B, coding: Coding) -> Self {
        match Encoder::new(coding) {
            Ok(encoder) => Compressed {
                inner,
                encoder: Some(Box::new(encoder)),
                ended: false,
            },
            Err(_) => Compressed::plain(inner),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B> Body for Compressed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(encoder) = this.encoder.as_mut() else {
            if this.ended {
                // Passed through as it is.
                return Pin::new(&mut this.inner)
                    .poll_frame(cx)
                    .map(|f| f.map(|f| f.map_err(Into::into)));
            }
            return Poll::Ready(None);
        };
        loop {
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers are dropped: they would describe the
                    // identity body.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let out = encoder.push(&data)?;
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
                Some(Err(e)) => {
                    this.encoder = None;
                    this.ended = false;
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => {
                    let Some(encoder) = this.encoder.take() else {
                        return Poll::Ready(None);
                    };
                    this.ended = false;
                    let out = encoder.finish()?;
                    return Poll::Ready((!out.is_empty()).then(|| Ok(Frame::data(out))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.encoder {
            None if self.ended => self.inner.is_end_stream(),
            None => true,
            Some(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.encoder {
            None if self.ended => self.inner.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

/// Compresses `body` in pieces of `piece` bytes as a response streams,
/// with `coding` (`gzip`, `br`, `zstd`); the bytes it came to. For the
/// benchmark.
pub(crate) fn compress_pieces(coding: &str, body: &[u8], piece: usize) -> std::io::Result<usize> {
    let coding = match coding {
        "br" => Coding::Br,
        "zstd" => Coding::Zstd,
        _ => Coding::Gzip,
    };
    let mut encoder = Encoder::new(coding)?;
    let mut out = 0;
    for chunk in body.chunks(piece.max(1)) {
        out += encoder.push(chunk)?.len();
    }
    Ok(out + encoder.finish()?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> Option<Coding> {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        choose(Fields::Map(&h))
    }

    #[test]
    fn the_clients_preference_decides() {
        assert_eq!(accept("gzip, deflate, br, zstd"), Some(Coding::Zstd));
        assert_eq!(accept("gzip, deflate, br"), Some(Coding::Br));
        assert_eq!(accept("gzip;q=1.0, br;q=0.5"), Some(Coding::Gzip));
        assert_eq!(accept("zstd, gzip;q=0.9"), Some(Coding::Zstd));
        assert_eq!(accept("br;q=0, gzip"), Some(Coding::Gzip));
        assert_eq!(accept("identity"), None);
        assert_eq!(accept("*;q=0.1, br;q=0"), Some(Coding::Zstd));
        assert_eq!(accept("GZIP"), Some(Coding::Gzip));
        assert_eq!(choose(Fields::Map(&HeaderMap::new())), None);
    }

    #[test]
    fn only_what_compresses() {
        for t in [
            "text/html; charset=utf-8",
            "application/json",
            "application/problem+json",
            "image/svg+xml",
        ] {
            assert!(compressible(t), "{t}");
        }
        for t in [
            "text/event-stream",
            "image/png",
            "application/octet-stream",
            "video/mp4",
        ] {
            assert!(!compressible(t), "{t}");
        }
    }
}
