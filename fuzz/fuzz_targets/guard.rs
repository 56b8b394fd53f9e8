//! Fuzz target for the `__internal` guard.
//!
//! Invariant: when the guard accepts a request target, the path it forwards
//! has no `__internal` segment under any decoding a lax backend might apply:
//! percent-decoding repeated up to four times, `\` read as `/`, `;`
//! parameters stripped from segments, Unicode NFKC, and any case (ASCII or
//! Unicode upper/lower). The checks here are written independently of the
//! guard's own code.
//!
//! The invariants live in `fuzz/oracles/guard.rs`, shared with the test
//! suite's bounded smoke run.

#![no_main]

#[path = "../oracles/guard.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracle::check(data));
