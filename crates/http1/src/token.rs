//! Which bytes may stand where (RFC 9110 §5.6.2, §5.5).

/// A token character: what field names and methods are made of.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `line` has a control character other than HTAB (a CR or LF
/// inside a line, a NUL, DEL).
pub fn has_ctl(line: &[u8]) -> bool {
    line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

/// Whether a line (without its CRLF) is a field line: a token, a colon, a
/// value without control characters.
pub fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    colon > 0 && line[..colon].iter().all(|&b| is_tchar(b)) && !has_ctl(&line[colon + 1..])
}

/// Whether `http::HeaderValue` would take `s` (checked without building
/// one, which copies).
pub fn is_field_value(s: &str) -> bool {
    s.bytes().all(|b| (b >= 0x20 && b != 0x7f) || b == b'\t')
}

/// The elements of a comma-separated field value (RFC 9110 §5.6.1), each
/// without its surrounding whitespace; empty ones are yielded too, for
/// the callers that must refuse them.
pub fn list_elements(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// Whether any of `values` (the lines of one field) lists `token`, in any
/// case.
pub fn lists_token<'a>(values: impl IntoIterator<Item = &'a [u8]>, token: &str) -> bool {
    values
        .into_iter()
        .flat_map(list_elements)
        .any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

#[cfg(test)]
mod tests {
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
                http::HeaderValue::from_str(s).is_ok(),
                "{b:#x}"
            );
        }
        assert!(is_field_value("/ü/"));
    }

    #[test]
    fn lists_are_split_at_commas_and_trimmed() {
        let got: Vec<&[u8]> = list_elements(b" keep-alive ,Upgrade,, \tclose").collect();
        assert_eq!(got, [&b"keep-alive"[..], b"Upgrade", b"", b"close"]);
        assert_eq!(list_elements(b"").collect::<Vec<_>>(), [&b""[..]]);
        let lines = [&b"keep-alive"[..], b"x, UPGRADE"];
        assert!(lists_token(lines, "upgrade"));
        assert!(!lists_token(lines, "close"));
        assert!(!lists_token([&b"closed, xclose"[..]], "close"));
    }

    #[test]
    fn field_lines() {
        for ok in ["a: b", "x-y:z", "t:", "a:\tb c"] {
            assert!(is_field_line(ok.as_bytes()), "{ok}");
        }
        for bad in ["", ":b", "a b: c", "a: b\nc", "a: \0", "hello", "a\"b: c"] {
            assert!(!is_field_line(bad.as_bytes()), "{bad}");
        }
    }
}
