//! Which bytes may stand where (RFC 9110 §5.6.2, §5.5).

/// A set of bytes as a table built at compile time: one load per byte,
/// where testing several ranges or searching a list of punctuation took a
/// dozen instructions for some bytes. Every byte of a request passes
/// through several of these.
#[derive(Debug)]
pub struct ByteSet([bool; 256]);

impl ByteSet {
    /// The bytes in any of `ranges` (both ends included) or in `singles`.
    pub const fn new(ranges: &[(u8, u8)], singles: &[u8]) -> ByteSet {
        let mut table = [false; 256];
        let mut i = 0;
        while i < ranges.len() {
            let (low, high) = ranges[i];
            let mut b = low as usize;
            while b <= high as usize {
                table[b] = true;
                b += 1;
            }
            i += 1;
        }
        let mut i = 0;
        while i < singles.len() {
            table[singles[i] as usize] = true;
            i += 1;
        }
        ByteSet(table)
    }

    pub fn contains(&self, b: u8) -> bool {
        self.0[usize::from(b)]
    }

    /// Whether every byte of `s` is in the set. Each is looked at, with no
    /// branch per byte.
    pub fn holds_all(&self, s: &[u8]) -> bool {
        s.iter().fold(true, |ok, &b| ok & self.0[usize::from(b)])
    }
}

/// `0-9`, `A-Z`, `a-z`, as ranges for [`ByteSet::new`].
pub const ALPHANUMERIC: [(u8, u8); 3] = [(b'0', b'9'), (b'A', b'Z'), (b'a', b'z')];

/// Token characters: what field names and methods are made of.
pub static TCHAR: ByteSet = ByteSet::new(&ALPHANUMERIC, b"!#$%&'*+-.^_`|~");

/// What a field value may hold: HTAB, space, visible ASCII and obs-text;
/// what `http::HeaderValue` takes.
pub static FIELD_VALUE: ByteSet = ByteSet::new(&[(0x20, 0x7e), (0x80, 0xff)], b"\t");

/// A token character.
pub fn is_tchar(b: u8) -> bool {
    TCHAR.contains(b)
}

/// Whether `line` has a control character other than HTAB (a CR or LF
/// inside a line, a NUL, DEL).
pub fn has_ctl(line: &[u8]) -> bool {
    !FIELD_VALUE.holds_all(line)
}

/// Whether a line (without its CRLF) is a field line: a token, a colon, a
/// value without control characters.
pub fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    colon > 0 && TCHAR.holds_all(&line[..colon]) && !has_ctl(&line[colon + 1..])
}

/// Whether `http::HeaderValue` would take `s` (checked without building
/// one, which copies).
pub fn is_field_value(s: &str) -> bool {
    FIELD_VALUE.holds_all(s.as_bytes())
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

    /// The tables hold exactly the bytes the rules name.
    #[test]
    fn the_tables_are_the_rules() {
        for b in 0..=255u8 {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(TCHAR.contains(b), tchar, "{b:#x}");
            assert_eq!(TCHAR.holds_all(&[b'a', b, b'z']), tchar, "{b:#x}");
            let ctl = (b < 0x20 && b != b'\t') || b == 0x7f;
            assert_eq!(FIELD_VALUE.contains(b), !ctl, "{b:#x}");
            assert_eq!(has_ctl(&[b'a', b]), ctl, "{b:#x}");
            let name = http::HeaderName::from_bytes(&[b'x', b]).is_ok();
            assert_eq!(
                is_field_line(&[b'x', b, b':', b'v']),
                name || b == b':',
                "{b:#x}"
            );
        }
        assert!(TCHAR.holds_all(b""));
        assert!(!TCHAR.holds_all(b"a b"));
    }

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
