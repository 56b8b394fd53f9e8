use super::*;

#[test]
fn addresses_are_written_as_displayed() {
    let mut ips: Vec<IpAddr> = [
        "0.0.0.0",
        "10.0.0.1",
        "192.168.100.25",
        "255.255.255.255",
        "::1",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    ips.extend((0..=255u8).map(|o| IpAddr::from([o, 9, 10, 99])));
    for ip in ips {
        let mut out = BytesMut::new();
        write_ip(&mut out, ip);
        assert_eq!(out, ip.to_string().as_bytes(), "{ip}");
    }
}

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[test]
fn hop_by_hop() {
    let mut h = map(&[
        ("connection", "keep-alive, x-secret"),
        ("x-secret", "1"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("proxy-authorization", "x"),
        ("x-kept", "1"),
    ]);
    strip_hop_by_hop(&mut h, false);
    let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["x-kept"]);

    let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
    strip_hop_by_hop(&mut h, true);
    assert_eq!(h["upgrade"], "websocket");
    assert_eq!(h["connection"], "upgrade");

    // The same answer's fields where they lie.
    let mut fields = response_fields(
        "Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n\
         TE: trailers\r\nTransfer-Encoding: chunked\r\nUpgrade: websocket\r\n\
         Proxy-Authorization: x\r\nX-Kept: 1\r\n",
    );
    strip_hop_by_hop_fields(&mut fields);
    let left: Vec<_> = fields.iter().collect();
    assert_eq!(left, [(&b"x-kept"[..], &b"1"[..])]);
}

/// A waifu's answer with `fields` (lines ending in CRLF), as read.
fn response_fields(fields: &str) -> ResponseFields {
    let raw = format!("HTTP/1.1 200 OK\r\n{fields}content-length: 0\r\n\r\n");
    let mut buf = BytesMut::from(raw.as_bytes());
    let head = waifus_http1::response::parse_head(&mut buf, &http::Method::GET);
    let mut fields = head.unwrap().unwrap().fields;
    fields.retain(|name, _| name != b"content-length");
    fields
}

/// A response head as the fast path writes it, its lines sorted by name
/// (same-name lines keep their order; different names may not).
fn written_response<'a>(fields: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Vec<String> {
    let mut out = BytesMut::new();
    let framing = waifus_http1::encode::Delimited::Length(0);
    waifus_http1::encode::response_head(
        &mut out,
        http::StatusCode::OK,
        fields,
        framing,
        false,
        false,
    );
    let mut lines = lines_by_name(&out);
    lines.retain(|l| !l.starts_with("date: "));
    lines
}

/// A head's lines sorted by name: same-name lines keep their order;
/// different names may not.
fn lines_by_name(head: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(head);
    let mut lines: Vec<String> = text.split("\r\n").map(str::to_owned).collect();
    lines.sort_by_key(|l| l.split(':').next().unwrap_or_default().to_owned());
    lines
}

/// The fields `write_request_fields` writes, parsed back; `(name, value)`
/// in order, and the request id it reports.
fn sent(h: &HeaderMap, upgrade: bool, fwd: &Forwarded<'_>) -> (Vec<(String, String)>, String) {
    let (fields, id, _) = sent_traced(h, upgrade, fwd);
    (fields, id)
}

/// The same, with the trace id it reports. The fields are written from
/// the header map (hyper's view) and from the same fields as the fast
/// path's parser finds them in a head (its view), with the same random
/// draws: the two must write the same, same-name fields in the same order.
fn sent_traced(
    h: &HeaderMap,
    upgrade: bool,
    fwd: &Forwarded<'_>,
) -> (Vec<(String, String)>, String, String) {
    let seed = fastrand::u64(..);
    let written = |fields: Fields<'_>| {
        let mut head = BytesMut::new();
        fastrand::seed(seed);
        let (id, trace) = write_request_fields(&mut head, fields, upgrade, fwd);
        let id = id.to_value();
        let text = std::str::from_utf8(&head).unwrap();
        let fields: Vec<(String, String)> = text
            .strip_suffix("\r\n")
            .unwrap()
            .split("\r\n")
            .map(|line| {
                let (name, value) = line.split_once(": ").unwrap();
                (name.to_owned(), value.to_owned())
            })
            .collect();
        (
            fields,
            id.to_str().unwrap().to_owned(),
            String::from_utf8(trace.to_vec()).unwrap(),
        )
    };
    let from_map = written(Fields::Map(h));
    let raw = raw_head(h);
    let mut parsed = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut parsed);
    assert!(req.parse(&raw).unwrap().is_complete());
    let from_raw = written(Fields::Raw(req.headers));
    assert_eq!(
        by_name(&from_map.0),
        by_name(&from_raw.0),
        "the two views differ"
    );
    assert_eq!((&from_map.1, &from_map.2), (&from_raw.1, &from_raw.2));
    from_map
}

/// A request head carrying `h`'s fields in its order, each name in a mixed
/// case (a client may spell them any way).
fn raw_head(h: &HeaderMap) -> Vec<u8> {
    let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
    for (i, (name, value)) in h.iter().enumerate() {
        let name = waifus_testkit::http::mixed_case(name.as_str(), i);
        raw.extend_from_slice(name.as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value.as_bytes());
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    raw
}

/// Fields sorted by name, same-name fields kept in their order: a header
/// map groups same-name fields, a head need not.
fn by_name(fields: &[(String, String)]) -> Vec<(String, String)> {
    let mut sorted = fields.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted
}

fn one<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let mut values = fields.iter().filter(|(n, _)| n == name);
    let first = values.next().map(|(_, v)| v.as_str());
    assert!(values.next().is_none(), "{name} twice in {fields:?}");
    first
}

#[test]
fn forwarded() {
    let h = map(&[
        ("x-forwarded-for", "1.1.1.1"),
        ("x-forwarded-for", "2.2.2.2"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil"),
        ("x-forwarded-prefix", "/evil"),
        ("x-forwarded-uri", "/__internal/health"),
        ("forwarded", "for=evil"),
        ("x-original-url", "/__internal/health"),
        ("x-rewrite-url", "/__internal/health"),
        ("x-request-id", "abc-123"),
        ("accept", "*/*"),
    ]);
    let host = "localhost:8080";
    let fwd = plain(host, "::ffff:127.0.0.1");
    let (f, id) = sent(&h, false, &fwd);
    // From a peer nobody trusts: afresh.
    assert_eq!(one(&f, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(one(&f, "x-forwarded-proto"), Some("http"));
    assert_eq!(one(&f, "x-forwarded-host"), Some("localhost:8080"));
    assert_eq!(one(&f, "x-forwarded-prefix"), None);
    // The path the client asked for, as checked: never the client's claim.
    assert_eq!(one(&f, "x-forwarded-uri"), Some("/x"));
    assert_eq!(f.iter().filter(|(k, _)| k == "x-forwarded-uri").count(), 1);
    assert_eq!(one(&f, "forwarded"), None);
    assert_eq!(one(&f, "x-original-url"), None);
    assert_eq!(one(&f, "x-rewrite-url"), None);
    assert_eq!(one(&f, "x-request-id"), Some("abc-123"));
    assert_eq!(id, "abc-123");
    assert_eq!(one(&f, "host"), Some("localhost:8080"));
    assert_eq!(one(&f, "accept"), Some("*/*"));

    // An insane id is replaced; the client's own Host is not what the
    // request was routed by, so it is replaced too.
    let h = map(&[("x-request-id", &"x".repeat(200)), ("host", "Example.test")]);
    let fwd = Forwarded {
        prefix: "/link",
        path: "/link/abc",
        query: Some("q=1&r"),
        ..fwd
    };
    let (f, id) = sent(&h, false, &fwd);
    let minted = one(&f, "x-request-id").unwrap();
    assert_eq!(minted.len(), 32);
    assert_eq!(minted, id);
    assert_eq!(one(&f, "x-forwarded-prefix"), Some("/link"));
    assert_eq!(one(&f, "x-forwarded-uri"), Some("/link/abc?q=1&r"));
    assert_eq!(one(&f, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(one(&f, "host"), Some("localhost:8080"));

    // From a trusted proxy: its chain, the peer appended; the client is
    // the address it named.
    let h = map(&[
        ("x-forwarded-for", "1.1.1.1"),
        ("x-forwarded-for", "2.2.2.2"),
    ]);
    let fwd = Forwarded {
        client: "2.2.2.2".parse().unwrap(),
        chain: true,
        ..plain(host, "10.0.0.5")
    };
    let (f, _) = sent(&h, false, &fwd);
    assert_eq!(
        one(&f, "x-forwarded-for"),
        Some("1.1.1.1, 2.2.2.2, 10.0.0.5")
    );
    assert_eq!(one(&f, "x-real-ip"), Some("2.2.2.2"));
}

/// What an untrusted peer at `peer` gets.
fn plain<'a>(host: &'a str, peer: &str) -> Forwarded<'a> {
    let peer: IpAddr = peer.parse().unwrap();
    Forwarded {
        client: peer,
        peer,
        chain: false,
        proto: "http",
        host,
        prefix: "",
        path: "/x",
        query: None,
    }
}

/// Every field by which a client could pose as a proxy (the client's
/// address, scheme, host, port, path, certificate or user, as Rack,
/// Spring, Werkzeug, Django, Express, Tomcat, IIS, Envoy and CDNs write
/// them; CGI maps `_` and `-` alike) never reaches a waifu as the client
/// sent it; `X-Real-IP` is the peer's address.
#[test]
fn forgeable_fields_are_dropped_or_replaced() {
    let forged = [
        "x-real-ip",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-ssl",
        "x-forwarded-server",
        "x-forwarded-uri",
        "x-forwarded-scheme",
        "x-forwarded-user",
        "x-forwarded-client-cert",
        "x-forwarded",
        "forwarded",
        "forwarded-for",
        "front-end-https",
        "x-url-scheme",
        "x-scheme",
        "x-host",
        "x-http-host-override",
        "x-original-host",
        "x-original-uri",
        "x-original-url",
        "x-original-forwarded-for",
        "x-rewrite-url",
        "x-remote-ip",
        "x-remote-addr",
        "x-remote-user",
        "remote-user",
        "x-proxyuser-ip",
        "x-envoy-original-path",
        "x-envoy-external-address",
        "via",
        "proxy",
        "true-client-ip",
        "x-client-ip",
        "client-ip",
        "x-cluster-client-ip",
        "cf-connecting-ip",
        "cf-visitor",
        "fastly-client-ip",
        "x-originating-ip",
        "x-arr-ssl",
        "x-arr-clientcert",
        "x-ssl-client-cert",
        "ssl-client-cert",
        "x-client-cert",
        "x-amzn-oidc-identity",
        "x-goog-authenticated-user-email",
        "x-ms-client-principal-name",
        "x-auth-request-user",
        "x-webauth-user",
        "x-appengine-user-ip",
        "cloudfront-forwarded-proto",
        "transfer_encoding",
        "x_forwarded_for",
        "content_length",
    ];
    let mut pairs: Vec<(&str, &str)> = forged.iter().map(|n| (*n, "6.6.6.6")).collect();
    pairs.push(("x-kept", "1"));
    pairs.push(("x-forwardedness", "kept? no: a member of the family"));
    pairs.push(("accept-language", "de"));
    let h = map(&pairs);
    let host = "h.test";
    let fwd = plain(host, "10.0.0.1");
    let (f, _) = sent(&h, false, &fwd);
    let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "x-kept",
            "accept-language",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-uri",
            "host",
            "x-real-ip",
            "traceparent",
            "x-request-id"
        ]
    );
    assert!(!f.iter().any(|(_, v)| v.contains("6.6.6.6")), "{f:?}");
    assert_eq!(one(&f, "x-real-ip"), Some("10.0.0.1"));
    assert_eq!(one(&f, "x-forwarded-for"), Some("10.0.0.1"));
    // A trusted proxy's chain is kept, nothing else of what it sent.
    let fwd = Forwarded {
        chain: true,
        ..plain(host, "10.0.0.1")
    };
    let (f, _) = sent(&h, false, &fwd);
    assert_eq!(one(&f, "x-forwarded-for"), Some("6.6.6.6, 10.0.0.1"));
    assert_eq!(f.iter().filter(|(_, v)| v.contains("6.6.6.6")).count(), 1);
}

/// Ordinary fields are not taken for forwarding ones.
#[test]
fn ordinary_fields_pass() {
    for name in [
        "accept",
        "authorization",
        "cookie",
        "content-type",
        "user-agent",
        "referer",
        "origin",
        "x-request-id",
        "traceparent",
        "x-csrf-token",
        "x-requested-with",
        "x-amzn-trace-id",
        "if-none-match",
        "sec-websocket-key",
        "range",
    ] {
        assert!(!poses_as_proxy(name.as_bytes()), "{name}");
    }
}

/// No upgrade token but the WebSocket handshake's is ever sent, and
/// that one only as the proxy writes it; `HTTP2-Settings` never.
#[test]
fn only_websocket_upgrades_go_upstream() {
    let host = "h.test";
    let fwd = plain(host, "10.0.0.1");
    for upgrade in ["h2c", "websocket, h2c", "WebSocket"] {
        // Whether or not the client names them in `Connection`.
        for connection in ["Upgrade", "Upgrade, HTTP2-Settings"] {
            let h = map(&[
                ("connection", connection),
                ("upgrade", upgrade),
                ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ]);
            let (f, _) = sent(&h, false, &fwd);
            for (name, _) in &f {
                assert!(
                    !["upgrade", "connection", "http2-settings"].contains(&name.as_str()),
                    "{upgrade} / {connection}: {f:?}"
                );
            }
            let (f, _) = sent(&h, true, &fwd);
            assert_eq!(one(&f, "upgrade"), Some("websocket"), "{f:?}");
            assert_eq!(one(&f, "connection"), Some("upgrade"));
            assert_eq!(one(&f, "http2-settings"), None);
        }
    }
}

/// Hop-by-hop fields never reach the waifu, including those `Connection`
/// names, even forwarding fields named there; an upgrade keeps `Upgrade`.
#[test]
fn request_hop_by_hop() {
    let host = "h.test";
    let fwd = Forwarded {
        proto: "https",
        // Even from a trusted proxy, a chain `Connection` names is dropped.
        chain: true,
        ..plain(host, "10.0.0.1")
    };
    let h = map(&[
        (
            "connection",
            "keep-alive, x-secret, x-request-id, X-Forwarded-For",
        ),
        ("x-secret", "1"),
        ("x-request-id", "kept?"),
        ("x-forwarded-for", "9.9.9.9"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("transfer-encoding", "chunked"),
        ("content-length", "5"),
        ("expect", "100-continue"),
        ("upgrade", "websocket"),
        ("proxy-authorization", "x"),
        ("proxy-connection", "keep-alive"),
        ("trailer", "x"),
        ("x-kept", "1"),
    ]);
    let (f, id) = sent(&h, false, &fwd);
    let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "x-kept",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-uri",
            "host",
            "x-real-ip",
            "traceparent",
            "x-request-id"
        ]
    );
    assert_eq!(one(&f, "x-forwarded-for"), Some("10.0.0.1"));
    assert_ne!(id, "kept?");

    let h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
    let (f, _) = sent(&h, true, &fwd);
    assert_eq!(one(&f, "upgrade"), Some("websocket"));
    assert_eq!(one(&f, "connection"), Some("upgrade"));
}

/// HTTP/2 cookies (one field each) reach an HTTP/1.1 waifu as one field,
/// in order, where the first one was.
#[test]
fn cookies_are_joined() {
    let host = "h.test";
    let fwd = plain(host, "10.0.0.1");
    let h = map(&[
        ("accept", "*/*"),
        ("cookie", "a=1"),
        ("x-kept", "1"),
        ("cookie", "b=2"),
        ("cookie", "c=3; d=4"),
    ]);
    let (f, _) = sent(&h, false, &fwd);
    assert_eq!(one(&f, "cookie"), Some("a=1; b=2; c=3; d=4"));
    let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).take(3).collect();
    assert_eq!(names, ["accept", "cookie", "x-kept"]);
    let (f, _) = sent(&map(&[("cookie", "only=1")]), false, &fwd);
    assert_eq!(one(&f, "cookie"), Some("only=1"));
}

#[test]
fn new_request_ids_are_32_hex_digits_and_do_not_repeat() {
    let ids: std::collections::HashSet<[u8; 32]> = (0..200).map(|_| new_request_id()).collect();
    assert_eq!(ids.len(), 200, "every id is new");
    for id in &ids {
        assert!(
            id.iter()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }
    let tails: std::collections::HashSet<&[u8]> = ids.iter().map(|id| &id[1..]).collect();
    assert!(tails.len() > 100, "the digits after the first vary too");
}

#[test]
fn exactly_one_valid_traceparent_is_sent() {
    let host = "localhost";
    let fwd = plain(host, "127.0.0.1");
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let trace = |h: &HeaderMap| {
        let (fields, _, id) = sent_traced(h, false, &fwd);
        let parents: Vec<String> = fields
            .iter()
            .filter(|(n, _)| n == "traceparent")
            .map(|(_, v)| v.clone())
            .collect();
        let states: Vec<String> = fields
            .iter()
            .filter(|(n, _)| n == "tracestate")
            .map(|(_, v)| v.clone())
            .collect();
        assert_eq!(parents.len(), 1, "{fields:?}");
        assert!(super::trace::is_valid(parents[0].as_bytes()), "{parents:?}");
        (parents[0].clone(), states, id)
    };
    // Valid: kept byte for byte, with its tracestate; the id is its own.
    let (parent, states, id) = trace(&map(&[("traceparent", valid), ("tracestate", "a=1,b=2")]));
    assert_eq!(parent, valid);
    assert_eq!(states, ["a=1,b=2"]);
    assert_eq!(id, "4bf92f3577b34da6a3ce929d0e0e4736");
    // Invalid, doubled, or named hop-by-hop: replaced, its state dropped.
    for h in [
        map(&[("traceparent", "00-xyz"), ("tracestate", "a=1")]),
        map(&[
            ("traceparent", valid),
            ("traceparent", valid),
            ("tracestate", "a=1"),
        ]),
        map(&[
            ("traceparent", valid),
            ("connection", "traceparent"),
            ("tracestate", "a=1"),
        ]),
    ] {
        let (parent, states, id) = trace(&h);
        assert_ne!(parent, valid, "{h:?}");
        assert!(states.is_empty(), "{h:?}");
        assert_eq!(id, parent[3..35], "{h:?}");
    }
    // Missing: generated.
    let (parent, _, id) = trace(&map(&[]));
    assert_eq!(&parent[..3], "00-");
    assert_eq!(id, parent[3..35]);
}

#[test]
fn the_first_letter_filter_lets_every_listed_name_through() {
    for name in PROXY_PREFIXES.iter().chain(PROXY_NAMES) {
        assert!(POSSIBLE_FIRST.contains(&name.as_bytes()[0]), "{name}");
        assert!(poses_as_proxy(name.as_bytes()), "{name}");
    }
}

proptest::proptest! {
    /// Whatever the fields, in whatever order and case: the fast path's
    /// view writes what hyper's header map writes, for an untrusted peer
    /// and for a trusted one, with and without a WebSocket switch.
    #[test]
    fn both_views_of_the_fields_write_the_same(
        fields in proptest::collection::vec((
            proptest::sample::select(vec![
                "Cookie", "cookie", "X-Request-Id", "x-request-id", "traceparent",
                "TraceState", "Connection", "X-Forwarded-For", "x-forwarded-proto",
                "Host", "Accept", "X-Secret", "Keep-Alive", "TE", "Forwarded",
                "X_Forwarded_For", "Content-Length", "Via", "x-a",
            ]),
            proptest::sample::select(vec![
                "1", "a=1", "x-secret", "close, X-Secret", "traceparent", "0",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "1.1.1.1", "https", "x-request-id", "\t v ", "k\u{e9}",
            ]),
        ), 0..10),
        trusted in proptest::bool::ANY,
        websocket in proptest::bool::ANY,
    ) {
        let mut h = HeaderMap::new();
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for (name, value) in &fields {
            // As hyper reads the field: without the space around it.
            let trimmed = value.trim_matches([' ', '\t']);
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(trimmed.as_bytes()).unwrap(),
            );
            raw.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let mut parsed = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut parsed);
        proptest::prop_assert!(req.parse(&raw).unwrap().is_complete());
        let fwd = Forwarded {
            chain: trusted,
            ..plain("h.test", "10.0.0.5")
        };
        let seed = fastrand::u64(..);
        let written = |fields: Fields<'_>| {
            let mut head = BytesMut::new();
            fastrand::seed(seed);
            let (id, trace) = write_request_fields(&mut head, fields, websocket, &fwd);
            (lines_by_name(&head), id.to_value(), trace)
        };
        proptest::prop_assert_eq!(written(Fields::Map(&h)), written(Fields::Raw(req.headers)));
    }

    /// Whatever a waifu answers, in whatever order and case: its fields
    /// cleaned where they lie and written straight from its head come out
    /// as the header map hyper's path builds, cleans and writes.
    #[test]
    fn both_views_of_an_answer_clean_and_write_the_same(
        fields in proptest::collection::vec((
            proptest::sample::select(vec![
                "Connection", "connection", "X-Secret", "x-secret", "Keep-Alive",
                "TE", "Trailer", "Transfer-Encoding", "Upgrade", "Proxy-Authenticate",
                "Proxy-Connection", "Set-Cookie", "Date", "Content-Type", "X-A", "x-a",
                "Strict-Transport-Security",
            ]),
            proptest::sample::select(vec![
                "1", "a=1", "x-secret", "close, X-Secret", "X-A,, te", "upgrade",
                "\t v ", "k\u{e9}", "text/plain", "max-age=1",
            ]),
        ), 0..12),
    ) {
        let mut lines = String::new();
        for (name, value) in &fields {
            lines.push_str(&format!("{name}: {value}\r\n"));
        }
        let mut fields = response_fields(&lines);
        // hyper's path: the map as the answer used to be read, cleaned.
        let mut map = fields.to_header_map();
        strip_hop_by_hop(&mut map, false);
        strip_hop_by_hop_fields(&mut fields);
        proptest::prop_assert_eq!(&fields.to_header_map(), &map);
        proptest::prop_assert_eq!(
            written_response(fields.iter()),
            written_response(waifus_http1::encode::map_fields(&map))
        );
    }
}
