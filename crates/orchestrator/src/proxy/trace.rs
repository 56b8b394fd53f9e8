//! W3C Trace Context (level 1) at the edge: a request's `traceparent` is
//! passed on byte for byte when valid, with its `tracestate`; an invalid
//! one (or several) is replaced and its `tracestate` dropped; a missing one
//! is generated. Exactly one `traceparent` reaches the waifu, and its trace
//! id is the access log's.

/// The length of a version-00 `traceparent`.
const LEN: usize = 55;

/// A trace id: 32 lowercase hex digits.
pub(crate) type TraceId = [u8; 32];

/// Whether `v` is a `traceparent` a tracer would accept: `00-{32 hex}-{16
/// hex}-{2 hex}` in lowercase, with a trace id and a parent id that are not
/// all zeros; a later version (not `ff`) may append `-…` after those 55.
pub(crate) fn is_valid(v: &[u8]) -> bool {
    if v.len() < LEN || (v.len() > LEN && (v[..2] == *b"00" || v[LEN] != b'-')) {
        return false;
    }
    let hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let (version, trace, parent, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    v[2] == b'-'
        && v[35] == b'-'
        && v[52] == b'-'
        && hex(version)
        && version != b"ff"
        && hex(trace)
        && hex(parent)
        && hex(flags)
        && trace.iter().any(|b| *b != b'0')
        && parent.iter().any(|b| *b != b'0')
}

/// The trace id of a valid `traceparent`.
pub(crate) fn trace_id(v: &[u8]) -> TraceId {
    let mut id = [0u8; 32];
    id.copy_from_slice(&v[3..35]);
    id
}

/// A new `traceparent`: random ids, sampled (a tracer with a parent-based
/// sampler behind the proxy still records).
pub(crate) fn generate() -> [u8; LEN] {
    let mut v = *b"00-00000000000000000000000000000000-0000000000000000-01";
    hex_into(&mut v[3..35], fastrand::u128(1..));
    hex_into(&mut v[36..52], u128::from(fastrand::u64(1..)));
    v
}

/// The low `out.len() / 2` bytes of `n` in lowercase hex, most significant
/// first (`out.len()` even, at most 32). A byte at a time from a table: a
/// digit at a time from a `u128` cost twice as much, and a request writes
/// 80 of them (its trace and request ids).
pub(crate) fn hex_into(out: &mut [u8], n: u128) {
    static DIGITS: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut table = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            table[i] = [HEX[i >> 4], HEX[i & 15]];
            i += 1;
        }
        table
    };
    let bytes = n.to_le_bytes();
    for (pair, byte) in out.rchunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&DIGITS[usize::from(byte)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_valid() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_valid(good));
        assert_eq!(&trace_id(good), b"4bf92f3577b34da6a3ce929d0e0e4736");
        // A later version may carry more after a dash.
        assert!(is_valid(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        ));
        for bad in [
            &b""[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert!(!is_valid(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn hex_is_written_as_formatted() {
        for n in [
            0,
            1,
            0xab,
            u128::from(u64::MAX),
            u128::MAX,
            fastrand::u128(..),
        ] {
            let mut long = [0u8; 32];
            hex_into(&mut long, n);
            assert_eq!(long, format!("{n:032x}").as_bytes());
            let mut short = [0u8; 16];
            hex_into(&mut short, n);
            assert_eq!(short, format!("{:016x}", n as u64).as_bytes());
        }
    }

    #[test]
    fn generated_ones_are_valid_and_differ() {
        let (a, b) = (generate(), generate());
        assert!(is_valid(&a), "{}", String::from_utf8_lossy(&a));
        assert_ne!(a, b);
    }
}
