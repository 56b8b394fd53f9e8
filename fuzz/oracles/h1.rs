//! The invariants of the fuzz target for the public listener's HTTP/1.1 loop (the fast path in
//! `crates/orchestrator/src/edge/h1/`; the guarantees are docs/security.md §2).
//!
//! The bytes go through the strict framing check first, as on the public
//! listener; of what it lets through, these invariants are checked with a
//! line reader written here, independently of the parser:
//! - a head the loop does not serve leaves every byte for hyper;
//! - a head it serves is taken whole, up to and including its first empty
//!   line, and nothing after it;
//! - that head is bodyless HTTP/1.1 in origin form: no line that any reader
//!   could take for `Transfer-Encoding`, `Upgrade` or `Expect` (name trimmed,
//!   any case), no `Content-Length` but `0`, no `CONNECT`;
//! - the request the proxy sees is the one on the wire: the same method and
//!   target, the same fields with the same values, none dropped or made up,
//!   and `close` exactly when a `Connection` field has the `close` token.
//!
//! Shared by the cargo-fuzz target (`fuzz/fuzz_targets/`) and the smoke run
//! in the test suite (`crates/orchestrator/tests/fuzz_smoke.rs`).

/// Panics when an invariant does not hold for `data`.
pub fn check(data: &[u8]) {
    let (passed, head, left) = orchestrator::testing::h1_parse(data);
    let data = &data[..passed];
    let Some(head) = head else {
        assert_eq!(left, data, "a head not served here must leave every byte");
        return;
    };
    let taken = data.len() - left.len();
    assert_eq!(&data[taken..], &left[..], "only a prefix may be taken");
    let raw = &data[..taken];

    // Lines end with LF, an optional CR before it dropped; empty lines
    // before the request line are skipped (RFC 9112 §2.2); the head ends at
    // its first empty line after it.
    let body = raw
        .strip_suffix(b"\n")
        .expect("a head ends with a line end");
    let lines: Vec<&[u8]> = body
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .skip_while(|l| l.is_empty())
        .collect();
    let (blank, lines) = lines.split_last().expect("at least one line");
    assert!(
        blank.is_empty(),
        "the head must end with an empty line: {raw:?}"
    );
    assert!(
        lines.iter().all(|l| !l.is_empty()),
        "an empty line inside the head: {raw:?}"
    );
    let (request_line, field_lines) = lines.split_first().expect("a request line");

    let parts: Vec<&[u8]> = request_line.split(|&b| b == b' ').collect();
    let [method, target, version] = parts[..] else {
        panic!("not three parts in the request line {request_line:?}");
    };
    assert_eq!(version, b"HTTP/1.1");
    assert_eq!(method, head.method.as_bytes());
    assert_ne!(method, b"CONNECT");
    assert!(target.starts_with(b"/"), "not origin form: {target:?}");
    assert_eq!(target, head.target.as_bytes(), "the target changed");

    // The fields as the wire has them, in order.
    let mut wire: Vec<(String, Vec<u8>)> = Vec::new();
    let mut close = false;
    for line in field_lines {
        let colon = line.iter().position(|&b| b == b':');
        let colon = colon.unwrap_or_else(|| panic!("a field line without a colon: {line:?}"));
        let name = String::from_utf8_lossy(line[..colon].trim_ascii()).to_ascii_lowercase();
        let value = line[colon + 1..].trim_ascii().to_vec();
        match name.as_str() {
            "transfer-encoding" | "upgrade" | "expect" => {
                panic!("{name} in a head served without a body: {raw:?}")
            }
            "content-length" => assert_eq!(value, b"0", "a body announced: {raw:?}"),
            "connection" => {
                close |= value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            }
            _ => {}
        }
        wire.push((name, value));
    }
    assert_eq!(head.fields, wire, "fields differ from the wire: {raw:?}");
    assert_eq!(head.close, close, "close flag wrong: {raw:?}");
}
