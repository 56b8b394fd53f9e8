//! The bodies of proxied responses.

use bytes::Bytes;
use http_body_util::{Either, Full};

use super::access;
use super::compress::Compressed;
use crate::upstream::UpstreamBody;

/// Body of every proxied response: the waifu's stream, or our own error.
pub(crate) type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// What the client gets: the body (compressed with `COMPRESSION=on`),
/// written to the access log when it ends.
pub(crate) type ClientBody = access::Logged<Compressed<ProxyBody>>;
