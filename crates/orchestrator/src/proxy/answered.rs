//! A proxied response on its way to the client: the waifu's fields where
//! they lie in the head it sent, and the proxy's own in a `HeaderMap`.
//!
//! The HTTP/1.1 fast path writes the waifu's fields straight from its
//! head, so no map is built, hashed and dropped for them; hyper's writers
//! and compression take the whole response as an `http::Response`
//! ([`Answered::into_http`]). Whoever asks whether the response has a
//! field asks [`Answered::contains`], which looks at both.

use http::header::HeaderName;
use http::{HeaderMap, Response};
use waifus_http1::response::ResponseFields;

/// A response and, apart from its map, the waifu's fields.
#[derive(Debug)]
pub(crate) struct Answered<B> {
    /// Status, body, and the fields the proxy added (or all of them, for
    /// the proxy's own answers and once [`Answered::into_http`] merged).
    pub response: Response<B>,
    /// The waifu's fields, cleaned of hop-by-hop ones: written before the
    /// map's.
    pub waifu: Option<ResponseFields>,
}

impl<B> Answered<B> {
    /// One of the proxy's own answers: all its fields in the map.
    pub(crate) fn own(response: Response<B>) -> Self {
        Answered {
            response,
            waifu: None,
        }
    }

    /// Whether either part has a field named `name`.
    pub(crate) fn contains(&self, name: &HeaderName) -> bool {
        self.response.headers().contains_key(name)
            || self
                .waifu
                .as_ref()
                .is_some_and(|fields| fields.contains(name.as_str().as_bytes()))
    }

    /// The same response with its body mapped.
    pub(crate) fn map<C>(self, f: impl FnOnce(B) -> C) -> Answered<C> {
        Answered {
            response: self.response.map(f),
            waifu: self.waifu,
        }
    }

    /// The whole response as an `http::Response`: the waifu's fields, then
    /// the proxy's, in one map.
    pub(crate) fn into_http(self) -> Response<B> {
        let Some(fields) = self.waifu else {
            return self.response;
        };
        let (mut parts, body) = self.response.into_parts();
        let own = std::mem::replace(&mut parts.headers, HeaderMap::new());
        fields.append_to(&mut parts.headers);
        let mut last: Option<HeaderName> = None;
        for (name, value) in own {
            // A name comes once, before all its values.
            if let Some(name) = name {
                last = Some(name);
            }
            if let Some(name) = &last {
                parts.headers.append(name.clone(), value);
            }
        }
        Response::from_parts(parts, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use http::{HeaderValue, Method, header};
    use waifus_http1::response::parse_head;

    fn fields(raw: &str) -> ResponseFields {
        let mut buf = BytesMut::from(raw);
        let head = parse_head(&mut buf, &Method::GET);
        head.ok().flatten().map(|h| h.fields).expect("a head")
    }

    #[test]
    fn the_waifus_fields_come_first_and_both_parts_are_asked() {
        let mut response = Response::new(());
        response
            .headers_mut()
            .append(header::SET_COOKIE, HeaderValue::from_static("ours=1"));
        response
            .headers_mut()
            .append(header::SET_COOKIE, HeaderValue::from_static("ours=2"));
        let answered = Answered {
            response,
            waifu: Some(fields(
                "HTTP/1.1 200 OK\r\nX-A: 1\r\nset-cookie: theirs=1\r\ncontent-length: 0\r\n\r\n",
            )),
        };
        assert!(answered.contains(&header::SET_COOKIE));
        assert!(answered.contains(&HeaderName::from_static("x-a")));
        assert!(!answered.contains(&header::STRICT_TRANSPORT_SECURITY));
        let merged = answered.into_http();
        let cookies: Vec<_> = merged
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .collect();
        assert_eq!(cookies, ["theirs=1", "ours=1", "ours=2"]);
        assert_eq!(merged.headers()["x-a"], "1");
        assert_eq!(merged.headers()[header::CONTENT_LENGTH], "0");
        assert_eq!(merged.headers().len(), 5);
    }
}
