//! Why a request got no response from a waifu.

use std::io;

use waifus_http1::response::BadHead;

/// Why a request got no response from the waifu.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: the instance is down.
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The client's request body failed (it broke off or broke its framing).
    #[error("the request body failed: {0}")]
    RequestBody(#[source] hyper::Error),
    /// The client's body grew past its limit: nothing beyond the limit was
    /// sent, and the request is never completed (its connection is closed).
    #[error("the request body is larger than allowed")]
    BodyTooLarge,
    #[error("bad response: {0}")]
    BadHead(#[from] BadHead),
    #[error("bad response: response head too large (over 64 KiB)")]
    HeadTooLarge,
    #[error("bad response: truncated response head")]
    TruncatedHead,
    #[error("the connection closed before a response")]
    ClosedEarly,
    #[error("bad response: 101 Switching Protocols without an upgrade request")]
    UnaskedSwitch,
}
