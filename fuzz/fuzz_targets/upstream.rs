//! Fuzz target for the proxy's reading of a waifu's answer
//! (`crates/orchestrator/src/upstream/`, `crates/http1/`): a waifu is less trusted than the orchestrator, and
//! a connection reused after a misread answer would hand one client's bytes
//! to the next.
//!
//! The first input byte picks the request method (odd: `HEAD`, else `GET`);
//! the rest is everything the waifu sends before closing. Invariants,
//! checked with a reader written here, independently of the proxy's:
//! - nothing panics (the release build aborts on a panic);
//! - a decoded body is never longer than what was sent;
//! - a connection is kept for reuse only after an HTTP/1.1 answer without
//!   `Connection: close`, whose body was framed explicitly and read exactly:
//!   a single `Content-Length` it matches, or `chunked` (last coding, no
//!   `Content-Length`) that decodes to the same bytes, or no body where none
//!   is allowed; with nothing sent after it.
//!
//! The invariants live in `fuzz/oracles/upstream.rs`, shared with the test
//! suite's bounded smoke run.

#![no_main]

#[path = "../oracles/upstream.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracle::check(data));
