//! The one protocol switch the proxy relays: the WebSocket opening
//! handshake of RFC 6455 §4, over HTTP/1.1.
//!
//! Any other upgrade token (`h2c` above all) is never forwarded: after a
//! switch the proxy only copies bytes, so whatever the client says next
//! would reach the waifu unchecked. An h2c tunnel carries any request, to
//! any path, `__internal` included. A WebSocket tunnel carries frames, and
//! only once the waifu has really switched: its `101` must carry
//! `Upgrade: websocket` and the `Sec-WebSocket-Accept` computed from the
//! client's key (§4.2.2), which a handler that merely answers status 101
//! while its server keeps reading HTTP (the "fake 101" of WebSocket
//! smuggling) cannot produce by accident.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use http::header;
use http::{Method, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::fields::{Fields, name};
use crate::routing::Busy;

/// The GUID a server appends to the client's key (RFC 6455 §1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A WebSocket opening handshake from a client: its `Sec-WebSocket-Key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key([u8; 24]);

impl Key {
    /// The key of a request that is a WebSocket handshake: HTTP/1.1 `GET`,
    /// `Connection` listing `upgrade`, exactly one `Upgrade` field whose
    /// value is the single token `websocket` (any case), and one
    /// `Sec-WebSocket-Key` that is 16 bytes in base64. Anything else is
    /// not a handshake, and the request is served as a plain one.
    pub(crate) fn of(method: &Method, version: Version, fields: Fields<'_>) -> Option<Key> {
        if *method != Method::GET || version != Version::HTTP_11 {
            return None;
        }
        let mut upgrades = fields.all(&name::UPGRADE);
        let upgrade = upgrades.next()?;
        if upgrades.next().is_some() || !upgrade.trim_ascii().eq_ignore_ascii_case(b"websocket") {
            return None;
        }
        if !waifus_http1::token::lists_token(fields.all(&name::CONNECTION), "upgrade") {
            return None;
        }
        let mut keys = fields.all(&name::SEC_WEBSOCKET_KEY);
        let key = keys.next()?.trim_ascii();
        if keys.next().is_some() {
            return None;
        }
        is_base64_of_16(key).then(|| {
            let mut k = [0u8; 24];
            k.copy_from_slice(key);
            Key(k)
        })
    }

    /// The `Sec-WebSocket-Accept` a server that took this key answers with.
    pub(crate) fn accept(&self) -> [u8; 28] {
        let mut sha = Sha1::new();
        sha.update(self.0);
        sha.update(GUID);
        base64_20(&sha.finalize().into())
    }

    /// Whether a waifu's `101` completes this handshake: `Upgrade:
    /// websocket` and the right `Sec-WebSocket-Accept`.
    pub(crate) fn is_accepted_by(&self, response: &HeaderMap) -> bool {
        let mut upgrades = response.get_all(header::UPGRADE).iter();
        let upgrade_ok = upgrades
            .next()
            .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"))
            && upgrades.next().is_none();
        let mut accepts = response.get_all(header::SEC_WEBSOCKET_ACCEPT).iter();
        let accept_ok = accepts
            .next()
            .is_some_and(|v| v.as_bytes().trim_ascii() == self.accept())
            && accepts.next().is_none();
        upgrade_ok && accept_ok
    }
}

/// 24 base64 characters ending in `==`: 16 bytes, as RFC 6455 §4.1 asks.
fn is_base64_of_16(key: &[u8]) -> bool {
    key.len() == 24
        && key[22..] == *b"=="
        && key[..22]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Standard base64 (RFC 4648 §4) of a SHA-1 digest.
fn base64_20(bytes: &[u8; 20]) -> [u8; 28] {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = [b'='; 28];
    // 20 bytes: six whole groups of three, then two bytes and one '='.
    for (i, group) in bytes.chunks(3).enumerate() {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = group.len() + 1;
        for (j, slot) in out[i * 4..i * 4 + chars].iter_mut().enumerate() {
            *slot = ALPHABET[((n >> (18 - 6 * j)) & 63) as usize];
        }
    }
    out
}

/// Relays bytes both ways once the client's side has switched protocols
/// too, as a task on `tunnels` until either side closes or `stop`; `early`
/// is what the waifu sent right after its 101. The tunnel counts as in
/// flight to its instance (`busy`) until it closes, which it does at the
/// latest when that instance's drain time is over.
pub(super) fn tunnel(
    tunnels: &TaskTracker,
    stop: &CancellationToken,
    client_side: OnUpgrade,
    mut upstream: TcpStream,
    early: Bytes,
    busy: Arc<Busy>,
) {
    let stop = stop.clone();
    tunnels.spawn(async move {
        let instance = busy.instance().clone();
        let Ok(client_io) = client_side.await else {
            return;
        };
        let mut client_io = TokioIo::new(client_io);
        let relay = async {
            if !early.is_empty() {
                client_io.write_all(&early).await?;
            }
            tokio::io::copy_bidirectional(&mut client_io, &mut upstream).await
        };
        tokio::select! {
            _ = relay => {}
            () = stop.cancelled() => {}
            () = instance.drained() => {}
        }
        drop(busy);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn the_rfc_example_accept() {
        // RFC 6455 §1.3.
        let key = Key::of(
            &Method::GET,
            Version::HTTP_11,
            Fields::Map(&headers(&[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-key", KEY),
            ])),
        )
        .unwrap();
        assert_eq!(&key.accept(), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let ok = headers(&[
            ("upgrade", "WebSocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ]);
        assert!(key.is_accepted_by(&ok));
        let refused: &[&[(&str, &str)]] = &[
            &[
                ("upgrade", "h2c"),
                ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ],
            &[("upgrade", "websocket")],
            &[
                ("upgrade", "websocket"),
                ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOp="),
            ],
            &[("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")],
            &[
                ("upgrade", "websocket"),
                ("upgrade", "h2c"),
                ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ],
        ];
        for r in refused {
            assert!(!key.is_accepted_by(&headers(r)), "{r:?}");
        }
    }

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        // Twenty bytes of each value, checked against a reference encoder.
        let cases: &[([u8; 20], &str)] = &[
            ([0; 20], "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            ([255; 20], "//////////////////////////8="),
            (*b"abcdefghijklmnopqrst", "YWJjZGVmZ2hpamtsbW5vcHFyc3Q="),
        ];
        for (bytes, want) in cases {
            assert_eq!(&base64_20(bytes), want.as_bytes());
        }
    }

    #[test]
    fn only_a_whole_websocket_handshake_is_one() {
        let good = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", KEY),
        ];
        assert!(Key::of(&Method::GET, Version::HTTP_11, Fields::Map(&headers(&good))).is_some());
        assert!(
            Key::of(
                &Method::POST,
                Version::HTTP_11,
                Fields::Map(&headers(&good))
            )
            .is_none()
        );
        assert!(Key::of(&Method::GET, Version::HTTP_10, Fields::Map(&headers(&good))).is_none());
        assert!(Key::of(&Method::GET, Version::HTTP_2, Fields::Map(&headers(&good))).is_none());
        let bad: &[&[(&str, &str)]] = &[
            &[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
                ("sec-websocket-key", KEY),
            ],
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket, h2c"),
                ("sec-websocket-key", KEY),
            ],
            &[
                ("connection", "Upgrade"),
                ("upgrade", "h2c, websocket"),
                ("sec-websocket-key", KEY),
            ],
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("upgrade", "h2c"),
                ("sec-websocket-key", KEY),
            ],
            &[("upgrade", "websocket"), ("sec-websocket-key", KEY)],
            &[
                ("connection", "upgraded"),
                ("upgrade", "websocket"),
                ("sec-websocket-key", KEY),
            ],
            &[("connection", "Upgrade"), ("upgrade", "websocket")],
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-key", "short=="),
            ],
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ!="),
            ],
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-key", KEY),
                ("sec-websocket-key", KEY),
            ],
        ];
        for b in bad {
            assert!(
                Key::of(&Method::GET, Version::HTTP_11, Fields::Map(&headers(b))).is_none(),
                "{b:?}"
            );
        }
    }
}
