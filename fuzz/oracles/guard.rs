//! The invariants of the fuzz target for the `__internal` guard.
//!
//! Invariant: when the guard accepts a request target, the path it forwards
//! has no `__internal` segment under any decoding a lax backend might apply:
//! percent-decoding repeated up to four times, `\` read as `/`, `;`
//! parameters stripped from segments, Unicode NFKC, invisible
//! (default-ignorable) characters deleted as NFKC_Casefold does, and any
//! case (ASCII or Unicode upper/lower). The checks here are written
//! independently of the guard's own code.
//!
//! Shared by the cargo-fuzz target (`fuzz/fuzz_targets/`) and the smoke run
//! in the test suite (`crates/orchestrator/tests/fuzz_smoke.rs`).

use unicode_normalization::UnicodeNormalization;

/// Panics when an invariant does not hold for `data`.
pub fn check(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    // What hyper hands over as a path: visible ASCII, starting with '/'.
    if !raw.starts_with('/') || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return;
    }
    let Ok(path) = orchestrator::testing::normalize(raw) else {
        return;
    };
    for view in lax_views(&path) {
        assert!(
            !view.split('/').any(reserved),
            "accepted {raw:?} as {path:?}, which a lax backend reads as {view:?}"
        );
    }
}

fn reserved(segment: &str) -> bool {
    segment
        .get(..10)
        .is_some_and(|head| head.eq_ignore_ascii_case("__internal"))
}

/// Every reading of `path` that a lax backend might make.
fn lax_views(path: &str) -> Vec<String> {
    let mut decoded = vec![path.to_owned()];
    for _ in 0..4 {
        let next = percent_decode(decoded.last().map_or("", String::as_str));
        if decoded.contains(&next) {
            break;
        }
        decoded.push(next);
    }
    let mut views = Vec::new();
    for d in decoded {
        let slashes = d.replace('\\', "/");
        let no_params: String = slashes
            .split('/')
            .map(|s| s.split(';').next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("/");
        let visible: String = no_params.chars().filter(|c| !invisible(*c)).collect();
        for v in [d, slashes, no_params, visible] {
            let nfkc: String = v.nfkc().collect();
            for w in [v, nfkc] {
                let (lower, upper) = (w.to_lowercase(), w.to_uppercase());
                views.push(lower.nfkc().collect());
                views.push(upper.nfkc().collect());
                views.extend([w, lower, upper]);
            }
        }
    }
    views
}

/// Unicode's Default_Ignorable_Code_Point, from DerivedCoreProperties.txt
/// (as Perl's Unicode::UCD lists it), written out here again on purpose.
fn invisible(c: char) -> bool {
    const RANGES: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),
        (0x034F, 0x034F),
        (0x061C, 0x061C),
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
    let c = u32::from(c);
    RANGES.iter().any(|(from, to)| (*from..=*to).contains(&c))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
