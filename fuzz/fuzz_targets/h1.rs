//! Fuzz target for the public listener's HTTP/1.1 loop (the fast path in
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
//! The invariants live in `fuzz/oracles/h1.rs`, shared with the test
//! suite's bounded smoke run.

#![no_main]

#[path = "../oracles/h1.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracle::check(data));
