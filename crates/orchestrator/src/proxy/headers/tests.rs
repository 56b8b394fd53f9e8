use super::*;

#[test]
fn field_values_are_judged_as_header_value_judges_them() {
    for b in 0..=255u8 {
        let s = [b'a', b, b'z'];
        let Ok(s) = std::str::from_utf8(&s) else {
            continue;
        };
        assert_eq!(
            is_field_value(s),
            HeaderValue::from_str(s).is_ok(),
            "{b:#x}"
        );
    }
    assert!(is_field_value("/ü/"));
}

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
}

/// The fields `write_request_fields` writes, parsed back; `(name, value)`
/// in order, and the request id it reports.
fn sent(h: &HeaderMap, upgrade: bool, fwd: &Forwarded<'_>) -> (Vec<(String, String)>, String) {
    let mut head = BytesMut::new();
    let id = write_request_fields(&mut head, h, upgrade, fwd).to_value();
    let text = std::str::from_utf8(&head).unwrap();
    let fields = text
        .strip_suffix("\r\n")
        .unwrap()
        .split("\r\n")
        .map(|line| {
            let (name, value) = line.split_once(": ").unwrap();
            (name.to_owned(), value.to_owned())
        })
        .collect();
    (fields, id.to_str().unwrap().to_owned())
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
        ("forwarded", "for=evil"),
        ("x-original-url", "/__internal/health"),
        ("x-rewrite-url", "/__internal/health"),
        ("x-request-id", "abc-123"),
        ("accept", "*/*"),
    ]);
    let host = HeaderValue::from_static("localhost:8080");
    let fwd = Forwarded {
        client: "::ffff:127.0.0.1".parse().unwrap(),
        proto: "http",
        host: &host,
        prefix: "",
    };
    let (f, id) = sent(&h, false, &fwd);
    assert_eq!(
        one(&f, "x-forwarded-for"),
        Some("1.1.1.1, 2.2.2.2, 127.0.0.1")
    );
    assert_eq!(one(&f, "x-forwarded-proto"), Some("http"));
    assert_eq!(one(&f, "x-forwarded-host"), Some("localhost:8080"));
    assert_eq!(one(&f, "x-forwarded-prefix"), None);
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
        ..fwd
    };
    let (f, id) = sent(&h, false, &fwd);
    let minted = one(&f, "x-request-id").unwrap();
    assert_eq!(minted.len(), 32);
    assert_eq!(minted, id);
    assert_eq!(one(&f, "x-forwarded-prefix"), Some("/link"));
    assert_eq!(one(&f, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(one(&f, "host"), Some("localhost:8080"));
}

/// Fields a waifu could trust for the client's address, or read as
/// framing or forwarding fields (CGI maps `_` and `-` alike), never
/// reach it as the client sent them; `X-Real-IP` is the peer's address.
#[test]
fn forgeable_fields_are_dropped_or_replaced() {
    let h = map(&[
        ("x-real-ip", "6.6.6.6"),
        ("true-client-ip", "6.6.6.6"),
        ("x-client-ip", "6.6.6.6"),
        ("client-ip", "6.6.6.6"),
        ("x-cluster-client-ip", "6.6.6.6"),
        ("cf-connecting-ip", "6.6.6.6"),
        ("fastly-client-ip", "6.6.6.6"),
        ("x-originating-ip", "6.6.6.6"),
        ("transfer_encoding", "chunked"),
        ("x_forwarded_for", "6.6.6.6"),
        ("content_length", "0"),
        ("x-kept", "1"),
    ]);
    let host = HeaderValue::from_static("h.test");
    let fwd = Forwarded {
        client: "10.0.0.1".parse().unwrap(),
        proto: "http",
        host: &host,
        prefix: "",
    };
    let (f, _) = sent(&h, false, &fwd);
    let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "x-kept",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "host",
            "x-real-ip",
            "x-request-id"
        ]
    );
    assert_eq!(one(&f, "x-real-ip"), Some("10.0.0.1"));
    assert_eq!(one(&f, "x-forwarded-for"), Some("10.0.0.1"));
}

/// No upgrade token but the WebSocket handshake's is ever sent, and
/// that one only as the proxy writes it; `HTTP2-Settings` never.
#[test]
fn only_websocket_upgrades_go_upstream() {
    let host = HeaderValue::from_static("h.test");
    let fwd = Forwarded {
        client: "10.0.0.1".parse().unwrap(),
        proto: "http",
        host: &host,
        prefix: "",
    };
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
    let host = HeaderValue::from_static("h.test");
    let fwd = Forwarded {
        client: "10.0.0.1".parse().unwrap(),
        proto: "https",
        host: &host,
        prefix: "",
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
            "host",
            "x-real-ip",
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
