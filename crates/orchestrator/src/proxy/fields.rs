//! A client's request as the proxy reads it, whichever parser read it.
//!
//! hyper hands over an `http::Request` whose fields are in a `HeaderMap`;
//! the HTTP/1.1 fast path ([`crate::edge`]) hands over the fields as the
//! parser found them in its read buffer, with nothing copied, hashed or
//! allocated. Every rule about fields (what is forwarded, which host, which
//! rollout side, which coding) is written once, against [`Fields`], and
//! applies to both alike; a property test holds the two views to the same
//! answers.

use http::header::HeaderName;
use http::{HeaderMap, Method, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use waifus_http1::token::{ByteSet, FIELD_VALUE};

/// A request's header fields.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fields<'a> {
    /// hyper's (names in lower case, same-name fields grouped).
    Map(&'a HeaderMap),
    /// The fast path's, in the order they came, names as the client spelled
    /// them. The parser checked every name is a token; the fast path checked
    /// every value is valid field text.
    Raw(&'a [httparse::Header<'a>]),
}

impl<'a> Fields<'a> {
    /// Every field as (name, value). A name may be in any case: lower it
    /// before comparing.
    pub(crate) fn each(self) -> Each<'a> {
        match self {
            Fields::Map(map) => Each::Map(map.iter()),
            Fields::Raw(raw) => Each::Raw(raw.iter()),
        }
    }

    /// The values of the fields named `name`, in the order they came.
    pub(crate) fn all(self, name: &'a HeaderName) -> All<'a> {
        match self {
            Fields::Map(map) => All::Map(map.get_all(name).into_iter()),
            Fields::Raw(raw) => All::Raw(raw.iter(), name),
        }
    }

    /// The first value of the fields named `name`.
    pub(crate) fn first(self, name: &'a HeaderName) -> Option<&'a [u8]> {
        self.all(name).next()
    }

    /// Whether a field named `name` is present.
    pub(crate) fn contains(self, name: &'a HeaderName) -> bool {
        self.first(name).is_some()
    }
}

/// [`Fields::each`].
pub(crate) enum Each<'a> {
    Map(http::header::Iter<'a, http::HeaderValue>),
    Raw(std::slice::Iter<'a, httparse::Header<'a>>),
}

impl<'a> Iterator for Each<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Each::Map(it) => it
                .next()
                .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes())),
            Each::Raw(it) => it.next().map(|h| (h.name.as_bytes(), h.value)),
        }
    }
}

/// [`Fields::all`].
pub(crate) enum All<'a> {
    Map(http::header::ValueIter<'a, http::HeaderValue>),
    Raw(std::slice::Iter<'a, httparse::Header<'a>>, &'a HeaderName),
}

fn named<'a>(h: &httparse::Header<'a>, name: &HeaderName) -> Option<&'a [u8]> {
    h.name
        .eq_ignore_ascii_case(name.as_str())
        .then_some(h.value)
}

impl<'a> Iterator for All<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        match self {
            All::Map(it) => it.next().map(http::HeaderValue::as_bytes),
            All::Raw(it, name) => it.find_map(|h| named(h, name)),
        }
    }
}

impl DoubleEndedIterator for All<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        match self {
            All::Map(it) => it.next_back().map(http::HeaderValue::as_bytes),
            All::Raw(it, name) => it.rev().find_map(|h| named(h, name)),
        }
    }
}

/// A field value as text, when it is all visible ASCII, spaces and tabs
/// (what `HeaderValue::to_str` accepts).
pub(crate) fn text(value: &[u8]) -> Option<&str> {
    static TEXT: ByteSet = ByteSet::new(&[(b' ', b'~')], b"\t");
    if TEXT.holds_all(value) {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// Whether every byte of a field value is one `HeaderValue` accepts: any
/// but the controls other than tab.
pub(crate) fn is_value(value: &[u8]) -> bool {
    FIELD_VALUE.holds_all(value)
}

/// The names the proxy looks fields up by, as statics: a name is passed by
/// reference (the http crate's constants are not, and a name by value
/// costs a construction and a drop per lookup on the request path).
pub(crate) mod name {
    use http::header::{self, HeaderName};

    pub(crate) static ACCEPT_ENCODING: HeaderName = header::ACCEPT_ENCODING;
    pub(crate) static CONNECTION: HeaderName = header::CONNECTION;
    pub(crate) static CONTENT_LENGTH: HeaderName = header::CONTENT_LENGTH;
    pub(crate) static COOKIE: HeaderName = header::COOKIE;
    pub(crate) static HOST: HeaderName = header::HOST;
    pub(crate) static SEC_WEBSOCKET_KEY: HeaderName = header::SEC_WEBSOCKET_KEY;
    pub(crate) static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
    pub(crate) static UPGRADE: HeaderName = header::UPGRADE;
    pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
}

/// A client's request, read by hyper or by the fast path.
#[derive(Debug)]
pub(crate) struct ClientRequest<'a> {
    pub method: Method,
    pub version: Version,
    /// The target's authority: an absolute-form target's, or HTTP/2's
    /// `:authority`.
    pub authority: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub fields: Fields<'a>,
    /// `None` for the fast path, which serves no request with a body.
    pub body: Option<Incoming>,
    /// hyper's hold on the connection, for a WebSocket switch.
    pub upgrade: Option<OnUpgrade>,
}

impl<'a> ClientRequest<'a> {
    /// The view of a request hyper read; its `OnUpgrade` is taken out.
    pub(crate) fn of_hyper(parts: &'a mut http::request::Parts, body: Incoming) -> Self {
        let upgrade = parts.extensions.remove::<OnUpgrade>();
        let parts = &*parts;
        ClientRequest {
            method: parts.method.clone(),
            version: parts.version,
            authority: parts.uri.authority().map(|a| a.as_str()),
            path: parts.uri.path(),
            query: parts.uri.query(),
            fields: Fields::Map(&parts.headers),
            body: Some(body),
            upgrade,
        }
    }

    /// The target as the client sent it (origin form): `path[?query]`.
    pub(crate) fn target_len(&self) -> usize {
        self.path.len() + self.query.map_or(0, |q| q.len() + 1)
    }
}

#[cfg(test)]
mod tests {
    /// What `HeaderValue` takes, and what of it `to_str` gives as text.
    #[test]
    fn values_and_text_are_judged_as_header_value_judges_them() {
        for b in 0..=255u8 {
            let bytes = [b'a', b, b'z'];
            let value = http::HeaderValue::from_bytes(&bytes);
            assert_eq!(super::is_value(&bytes), value.is_ok(), "{b:#x}");
            let text = value.as_ref().ok().and_then(|v| v.to_str().ok());
            assert_eq!(super::text(&bytes), text, "{b:#x}");
        }
    }
}
