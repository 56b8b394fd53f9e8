//! The `__internal` guard: no public request reaches a path with a segment
//! starting with `__internal`, however it is spelled.
//!
//! A request path is percent-decoded exactly once (RFC 3986 §2.1), its
//! dot-segments are resolved (RFC 3986 §5.2.4), every segment is checked for
//! the reserved `__internal` prefix in any case, and the result is re-encoded
//! in one canonical form. That canonical string is what routing matches and
//! what the waifu receives: nothing downstream ever sees the client's spelling.
//!
//! Anything a lax backend could read differently is refused as ambiguous
//! (400): an encoded `/`, `\` raw or encoded, NUL and other control bytes,
//! bad percent-encoding, bytes that are not UTF-8 after decoding (this covers
//! overlong UTF-8), a decoded `%HH` that would decode again, a `.` or `..`
//! segment carrying `;` parameters, and `..` climbing above the root. A
//! segment that Unicode normalisation (NFKC) or Unicode case mapping turns
//! into a reserved one is treated as reserved (404). A segment holding a
//! default-ignorable code point (zero-width space, soft hyphen, BOM,
//! bidirectional controls, variation selectors, tags: Unicode's
//! `Default_Ignorable_Code_Point`) is refused (400): NFKC_Casefold, IDNA
//! mapping and many sanitisers delete them, so `__inte\u{AD}rnal` reads as
//! `__internal` there, and no legitimate path needs an invisible character.

use std::borrow::Cow;

use waifus_http1::token::{ALPHANUMERIC, ByteSet};
use waifus_protocol::is_internal_segment;

/// Why a request target was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// A segment starts with `__internal`: answered 404, like any unknown path.
    Internal,
    /// The target is ambiguous or malformed: answered 400.
    Ambiguous(&'static str),
}

/// Decodes, resolves and checks a raw request path; returns the canonical path.
///
/// Borrows when the raw path is already canonical, the common case, so the
/// hot path does not allocate.
pub(crate) fn normalize(raw: &str) -> Result<Cow<'_, str>, Rejection> {
    if !raw.starts_with('/') {
        return Err(Rejection::Ambiguous(
            "the request target must be a path starting with '/'",
        ));
    }
    if CANONICAL_OR_SLASH.holds_all(raw.as_bytes()) {
        let mut segments = segments(&raw[1..]);
        if segments.all(|s| dot_segment(s).is_none() && !is_internal_segment(s)) {
            return Ok(Cow::Borrowed(raw));
        }
    }
    normalize_slow(raw).map(Cow::Owned)
}

/// Whether a canonical path (as produced by [`normalize`], or joined from
/// such a path and a validated bind target) reaches a reserved segment.
pub(crate) fn reaches_internal(canonical: &str) -> bool {
    segments(canonical).any(is_internal_segment)
}

/// `path.split('/')`, by a byte loop: the `char` searcher's setup costs
/// more than a short segment's search.
fn segments(path: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(path);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.bytes().position(|b| b == b'/') {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dot {
    One,
    Two,
}

/// `.`/`..`, also with `;` parameters (`..;x`), which Java servers resolve.
fn dot_segment(segment: &str) -> Option<(Dot, bool)> {
    // Most segments are names: no search for `;` in them.
    if !segment.starts_with('.') {
        return None;
    }
    let (head, has_params) = match segment.split_once(';') {
        Some((head, _)) => (head, true),
        None => (segment, false),
    };
    match head {
        "." => Some((Dot::One, has_params)),
        ".." => Some((Dot::Two, has_params)),
        _ => None,
    }
}

fn normalize_slow(raw: &str) -> Result<String, Rejection> {
    let decoded = decode_once(raw.as_bytes())?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| Rejection::Ambiguous("the path is not valid UTF-8 after percent-decoding"))?;
    if has_percent_triplet(decoded.as_bytes()) {
        return Err(Rejection::Ambiguous(
            "the path is percent-encoded twice; a second decoding would change it",
        ));
    }
    if decoded.chars().any(is_default_ignorable) {
        return Err(Rejection::Ambiguous(
            "the path holds an invisible (default-ignorable) character, such as a zero-width \
             space, a soft hyphen or a byte order mark",
        ));
    }
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in segments(&decoded[1..]) {
        match dot_segment(segment) {
            Some((_, true)) => {
                return Err(Rejection::Ambiguous(
                    "a '.' or '..' segment may not carry ';' parameters",
                ));
            }
            Some((Dot::One, false)) => trailing_slash = true,
            Some((Dot::Two, false)) => {
                if kept.pop().is_none() {
                    return Err(Rejection::Ambiguous("the path climbs above the root"));
                }
                trailing_slash = true;
            }
            None => {
                if is_internal_segment(segment) || looks_internal(segment) {
                    return Err(Rejection::Internal);
                }
                kept.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(raw.len() + 8);
    for segment in &kept {
        out.push('/');
        encode_segment(segment, &mut out);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

fn decode_once(raw: &[u8]) -> Result<Vec<u8>, Rejection> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        let (byte, encoded) = if b == b'%' {
            let hi = raw.get(i + 1).copied().and_then(hex_value);
            let lo = raw.get(i + 2).copied().and_then(hex_value);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(Rejection::Ambiguous(
                    "bad percent-encoding: '%' must be followed by two hex digits",
                ));
            };
            i += 3;
            (hi << 4 | lo, true)
        } else {
            i += 1;
            (b, false)
        };
        match byte {
            b'/' if encoded => {
                return Err(Rejection::Ambiguous("an encoded '/' (%2F) is not allowed"));
            }
            b'\\' => return Err(Rejection::Ambiguous("'\\' is not allowed in a path")),
            0 => return Err(Rejection::Ambiguous("NUL is not allowed in a path")),
            0x01..=0x1f | 0x7f => {
                return Err(Rejection::Ambiguous(
                    "control characters are not allowed in a path",
                ));
            }
            _ => out.push(byte),
        }
    }
    Ok(out)
}

/// Whether a non-ASCII segment reads as reserved to a backend that
/// normalises Unicode (NFKC: `＿＿ｉｎｔｅｒｎａｌ`, `ⅰ`, mathematical
/// letters) or compares case with Unicode rules (`ı` upper-cases to `I`).
fn looks_internal(segment: &str) -> bool {
    use unicode_normalization::UnicodeNormalization;
    if segment.is_ascii() {
        return false;
    }
    let nfkc: String = segment.nfkc().collect();
    [segment, nfkc.as_str()].iter().any(|s| {
        let (lower, upper) = (s.to_lowercase(), s.to_uppercase());
        let (lower_nfkc, upper_nfkc): (String, String) =
            (lower.nfkc().collect(), upper.nfkc().collect());
        [
            s,
            &lower.as_str(),
            &upper.as_str(),
            &lower_nfkc.as_str(),
            &upper_nfkc.as_str(),
        ]
        .iter()
        .any(|v| is_internal_segment(v))
    })
}

/// Unicode's `Default_Ignorable_Code_Point` (DerivedCoreProperties.txt,
/// unchanged from Unicode 14 through 16): characters that are invisible and
/// that NFKC_Casefold removes.
fn is_default_ignorable(c: char) -> bool {
    matches!(
        u32::from(c),
        0xAD | 0x34F
            | 0x61C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFF8
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

fn has_percent_triplet(bytes: &[u8]) -> bool {
    bytes
        .windows(3)
        .any(|w| w[0] == b'%' && hex_value(w[1]).is_some() && hex_value(w[2]).is_some())
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 `pchar` minus `%`: the bytes written as themselves.
static CANONICAL: ByteSet = ByteSet::new(&ALPHANUMERIC, b"-._~!$&'()*+,;=:@");
/// The same and `/`: a path all of them is canonical as it is.
static CANONICAL_OR_SLASH: ByteSet = ByteSet::new(&ALPHANUMERIC, b"-._~!$&'()*+,;=:@/");

fn is_canonical_byte(b: u8) -> bool {
    CANONICAL.contains(b)
}

fn encode_segment(segment: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in segment.as_bytes() {
        if is_canonical_byte(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tables hold exactly the bytes RFC 3986 names.
    #[test]
    fn canonical_bytes_are_pchar_without_percent() {
        for b in 0..=255u8 {
            let pchar = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b);
            assert_eq!(is_canonical_byte(b), pchar, "{b:#x}");
            assert_eq!(CANONICAL_OR_SLASH.contains(b), pchar || b == b'/', "{b:#x}");
        }
    }
    #[test]
    fn segments_are_what_split_gives() {
        for path in [
            "",
            "/",
            "a",
            "a/b",
            "/a/",
            "//",
            "a//b/",
            "__internal/x",
            "é/ü//",
        ] {
            let ours: Vec<&str> = super::segments(path).collect();
            let split: Vec<&str> = path.split('/').collect();
            assert_eq!(ours, split, "{path:?}");
        }
    }

    use proptest::prelude::*;

    #[derive(Debug, PartialEq)]
    enum Want {
        Path(&'static str),
        NotFound,
        Bad,
    }
    use Want::*;

    /// Runs a raw request target the way the proxy does: hyper parses it into
    /// a `Uri` (rejecting what it cannot parse, which is a 400 too), then the
    /// guard checks the path.
    fn check(target: &str) -> Want {
        let Ok(uri) = target.parse::<http::Uri>() else {
            return Bad;
        };
        match normalize(uri.path()) {
            Ok(p) => Path(Box::leak(p.into_owned().into_boxed_str())),
            Err(Rejection::Internal) => NotFound,
            Err(Rejection::Ambiguous(_)) => Bad,
        }
    }

    #[test]
    fn a_reserved_segment_anywhere_in_a_joined_path_is_seen() {
        // A segment that starts with the reserved word, in any case.
        for path in [
            "/__internal",
            "/a/__internal/b",
            "/x/__INTERNALx",
            "/__internal/",
        ] {
            assert!(reaches_internal(path), "{path}");
        }
        for path in ["/", "/a/b", "/x__internal", "/a/_internal", "/a/__interna"] {
            assert!(!reaches_internal(path), "{path}");
        }
    }

    #[test]
    fn hostile_targets() {
        let table: &[(&str, Want)] = &[
            // plain and canonical
            ("/link/abc", Path("/link/abc")),
            ("/link/abc?q=1", Path("/link/abc")),
            ("/", Path("/")),
            ("/link/", Path("/link/")),
            // the reserved segment, spelled every way
            ("/__internal/health", NotFound),
            ("/link/__internal/health", NotFound),
            ("/link/__INTERNAL", NotFound),
            ("/link/__InTeRnAl/x", NotFound),
            ("/link/__internalfoo", NotFound),
            ("/link/__internal;x=1", NotFound),
            ("/link/%5f%5finternal", NotFound),
            ("/link/%5F_internal", NotFound),
            ("/link/_%5Finternal", NotFound),
            ("/link/__%69nternal", NotFound),
            ("/link/%5F%5F%49%4E%54%45%52%4E%41%4C", NotFound),
            ("/link/x/../__internal", NotFound),
            ("/link/%2e%2e/__internal", NotFound),
            ("/link/.%2E/__internal/health", NotFound),
            ("/link/./__internal", NotFound),
            ("//__internal", NotFound),
            ("/link//__internal", NotFound),
            ("http://localhost/link/__internal/health", NotFound),
            ("http://localhost/%5f_internal", NotFound),
            // Unicode look-alikes: fullwidth, dotless i (upper-cases to I),
            // small roman numeral one (NFKC: i), mathematical bold i.
            ("/w/%EF%BC%BF%EF%BC%BFinternal", NotFound),
            ("/w/__%C4%B1nternal", NotFound),
            ("/w/__%E2%85%B0nternal/x", NotFound),
            ("/w/__%F0%9D%90%A2nternal", NotFound),
            ("/w/%EF%BC%BF%EF%BC%BF%EF%BC%A9NTERNAL", NotFound),
            ("/w/caf%C3%A9", Path("/w/caf%C3%A9")),
            // Invisible (default-ignorable) characters, in or beside the
            // reserved word or anywhere else.
            ("/hc/%E2%80%8B__internal/secret", Bad),
            ("/hc/__inte%C2%ADrnal/secret", Bad),
            ("/hc/%EF%BB%BF__internal", Bad),
            ("/hc/__internal%E2%80%8D", Bad),
            ("/hc/_%E2%81%A0_internal", Bad),
            ("/hc/__%F3%A0%80%81internal", Bad),
            ("/hc/a%C2%ADb", Bad),
            ("/hc/%E2%80%AEcod.exe", Bad),
            ("/hc/%C2%AC", Path("/hc/%C2%AC")),
            // prefix boundary: not a reserved segment
            ("/name__internal", Path("/name__internal")),
            ("/link/x__internal", Path("/link/x__internal")),
            ("/link/_internal", Path("/link/_internal")),
            // dot segments resolved once
            ("/link/a/../b", Path("/link/b")),
            ("/link/a/%2e%2e/b", Path("/link/b")),
            ("/link/./a", Path("/link/a")),
            ("/link/a/.", Path("/link/a/")),
            ("/link/a/..", Path("/link/")),
            ("/..", Bad),
            ("/link/../../x", Bad),
            ("/%2e%2e/x", Bad),
            // dot segments with parameters (Java servers resolve them)
            ("/link/..;/__internal", Bad),
            ("/link/..;/x", Bad),
            ("/link/.;x/y", Bad),
            ("/link/a..;b", Path("/link/a..;b")),
            // encoded separators and backslashes
            ("/link%2F__internal", Bad),
            ("/link%2f..%2f__internal", Bad),
            ("/link/a%2Fb", Bad),
            ("/link\\__internal", Bad),
            ("/link/%5C__internal", Bad),
            ("/link/%5c..%5c__internal", Bad),
            // NUL, controls, bad encodings
            ("/link/%00", Bad),
            ("/link/__internal%00", Bad),
            ("/link/%00__internal", Bad),
            ("/link/%0a", Bad),
            ("/link/%7F", Bad),
            ("/link/%", Bad),
            ("/link/%4", Bad),
            ("/link/%zz", Bad),
            ("/link/%%35%66", Bad),
            // double encoding: a second decode would change the path
            ("/link/%255F_internal", Bad),
            ("/link/%25%35%46_internal", Bad),
            ("/link/%2525", Bad),
            ("/link/100%25", Path("/link/100%25")),
            // overlong and invalid UTF-8
            ("/link/%C0%AE%C0%AE/__internal", Bad),
            ("/link/%C0%AF", Bad),
            ("/link/%E0%80%AE", Bad),
            ("/link/%FF", Bad),
            ("/link/%C3%A9", Path("/link/%C3%A9")),
            // re-encoding is canonical
            ("/link/a%20b", Path("/link/a%20b")),
            ("/link/%7e%41", Path("/link/~A")),
            ("/link/a\"b", Path("/link/a%22b")),
            // absolute-form, asterisk, authority and opaque targets
            ("http://example.com/link/x", Path("/link/x")),
            ("*", Bad),
            ("example.com:443", Bad),
            ("mailto:x", Bad),
            ("link/x", Bad),
            ("", Bad),
        ];
        assert!(table.len() >= 40);
        for (target, want) in table {
            assert_eq!(check(target), *want, "{target:?}");
        }
    }

    /// Every default-ignorable code point, in and around the reserved word
    /// and alone: never accepted.
    #[test]
    fn default_ignorables_are_refused() {
        let ranges: &[(u32, u32)] = &[
            (0xAD, 0xAD),
            (0x34F, 0x34F),
            (0x61C, 0x61C),
            (0x115F, 0x1160),
            (0x17B4, 0x17B5),
            (0x180B, 0x180F),
            (0x200B, 0x200F),
            (0x202A, 0x202E),
            (0x2060, 0x206F),
            (0x3164, 0x3164),
            (0xFE00, 0xFE0F),
            (0xFEFF, 0xFEFF),
            (0xFFA0, 0xFFA0),
            (0xFFF0, 0xFFF8),
            (0x1BCA0, 0x1BCA3),
            (0x1D173, 0x1D17A),
            (0xE0000, 0xE0FFF),
        ];
        let mut tried = 0;
        for (from, to) in ranges {
            for cp in *from..=*to {
                let Some(c) = char::from_u32(cp) else {
                    continue;
                };
                let mut buf = [0u8; 4];
                let encoded: String = c
                    .encode_utf8(&mut buf)
                    .bytes()
                    .map(|b| format!("%{b:02X}"))
                    .collect();
                for path in [
                    format!("/w/__inte{encoded}rnal/x"),
                    format!("/w/{encoded}__internal"),
                    format!("/w/a{encoded}b"),
                ] {
                    assert_eq!(check(&path), Bad, "{path}");
                }
                tried += 1;
            }
        }
        assert!(tried > 4000, "{tried}");
        // Their neighbours are ordinary characters.
        for cp in [0xAC, 0xAE, 0x2010, 0x2070, 0xFE10, 0xE1000] {
            assert!(
                !is_default_ignorable(char::from_u32(cp).unwrap()),
                "{cp:#x}"
            );
        }
    }

    #[test]
    fn borrows_canonical_paths() {
        assert!(matches!(normalize("/link/abc/def"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("/link/%41"), Ok(Cow::Owned(_))));
    }

    #[test]
    fn canonical_is_a_fixed_point() {
        for raw in ["/a/%C3%A9/b%20c/", "/x/./y/../z", "/100%25"] {
            let once = normalize(raw).unwrap().into_owned();
            assert_eq!(normalize(&once).unwrap(), once.as_str());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// No accepted target forwards a reserved segment, and the forwarded
        /// path is itself canonical (a second pass changes nothing).
        #[test]
        fn accepted_paths_never_reach_internal(
            parts in proptest::collection::vec(prop_oneof![
                Just("/".to_string()), Just("__internal".to_string()),
                Just("__INTERNAL".to_string()), Just("%5f".to_string()),
                Just("%5F".to_string()), Just("_".to_string()), Just(".".to_string()),
                Just("..".to_string()), Just("%2e".to_string()), Just("%2f".to_string()),
                Just("%25".to_string()), Just(";".to_string()), Just("\\".to_string()),
                Just("%69".to_string()), Just("internal".to_string()), Just("%00".to_string()),
                Just("%C0%AE".to_string()), "[a-zA-Z0-9%._~-]{0,4}",
            ], 0..12)
        ) {
            let raw = format!("/{}", parts.concat());
            if let Ok(path) = normalize(&raw) {
                prop_assert!(!reaches_internal(&path), "{raw} -> {path}");
                prop_assert!(path.starts_with('/'));
                prop_assert_eq!(normalize(&path).ok(), Some(path.clone()));
            }
        }
    }
}
