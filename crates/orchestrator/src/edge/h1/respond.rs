//! Writing a response on the fast path: head and body, framed for
//! HTTP/1.1, gathered into as few writes as possible.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use waifus_http1::encode::{Delimited, chunk_size_line, map_fields, response_head};

use crate::proxy::{Answered, ClientBody};

/// Response bytes gathered before they are written.
const WRITE_BUF: usize = 16 * 1024;
/// A gathering buffer larger than this after a response is not kept.
const KEEP_AT_MOST: usize = 8 * 1024;

/// Why a response could not be written whole: the connection must not be
/// used again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RespondError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the response body failed; connection aborted")]
    Body,
}

/// Writes a response: head and body, framed for HTTP/1.1. An error means
/// the connection must not be used again.
pub(super) async fn respond<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut BytesMut,
    response: Answered<ClientBody>,
    is_head: bool,
    close: bool,
) -> Result<(), RespondError> {
    let Answered { response, waifu } = response;
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let bodyless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodyless || is_head {
        Delimited::None
    } else {
        match body.size_hint().exact() {
            Some(n) => Delimited::Length(n),
            None => Delimited::Chunked,
        }
    };
    out.clear();
    out.reserve(512);
    response_head(
        out,
        status,
        // The waifu's fields straight from its head, then the proxy's.
        waifu
            .iter()
            .flat_map(|fields| fields.iter())
            .chain(map_fields(&parts.headers)),
        framing,
        is_head && !bodyless,
        close,
    );
    if framing == Delimited::None {
        drop(body);
        return flush(io, out).await;
    }
    let mut left = match framing {
        Delimited::Length(n) => Some(n),
        _ => None,
    };
    loop {
        // Whatever is ready goes out together; before waiting, what is
        // gathered is written.
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                flush(io, out).await?;
                body.frame().await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(_)) => return Err(RespondError::Body),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers: not sent over HTTP/1
            },
        };
        if data.is_empty() {
            continue;
        }
        match &mut left {
            Some(left) => {
                // More than announced would desynchronise the client.
                *left = left
                    .checked_sub(data.len() as u64)
                    .ok_or(RespondError::Body)?;
                put(io, out, data).await?;
            }
            None => {
                chunk_size_line(out, data.len());
                put(io, out, data).await?;
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    match left {
        Some(0) => {}
        // Fewer bytes than announced: the client must see it cut off.
        Some(_) => return Err(RespondError::Body),
        None => out.extend_from_slice(b"0\r\n\r\n"),
    }
    flush(io, out).await?;
    if out.capacity() > KEEP_AT_MOST {
        // A large body passed through: do not keep its buffer.
        *out = BytesMut::new();
    }
    Ok(())
}

/// Adds body bytes: small ones are gathered, a large one is written as is.
async fn put<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut BytesMut,
    mut data: Bytes,
) -> Result<(), RespondError> {
    if out.len() + data.len() <= WRITE_BUF {
        out.extend_from_slice(&data);
        return Ok(());
    }
    flush(io, out).await?;
    io.write_all_buf(&mut data).await?;
    Ok(())
}

async fn flush<S: AsyncWrite + Unpin>(io: &mut S, out: &mut BytesMut) -> Result<(), RespondError> {
    if !out.is_empty() {
        io.write_all_buf(out).await?;
    }
    io.flush().await?;
    Ok(())
}
