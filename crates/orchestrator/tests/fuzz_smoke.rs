//! A bounded smoke run of the three fuzz targets' invariants, in the test
//! suite: docs/security.md cites them as proofs, so they must hold on every
//! change, not only when someone runs cargo-fuzz.
//!
//! Each target's invariants (`fuzz/oracles/*.rs`, shared with the cargo-fuzz
//! targets) are checked on its committed seed corpus, then on random
//! mutations of it (flips, insertions of dictionary tokens and seed
//! fragments, deletions, splices) for `FUZZ_SMOKE_SECONDS` (default 30) each,
//! the three in parallel. No coverage guidance: this finds regressions of
//! what the corpus already reaches, and a long cargo-fuzz run remains the
//! real search. A failure prints the input and the seed
//! (`FUZZ_SMOKE_SEED=... cargo test -p orchestrator --test fuzz_smoke`
//! repeats the run).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[path = "../../../fuzz/oracles/guard.rs"]
mod guard;
#[path = "../../../fuzz/oracles/h1.rs"]
mod h1;
#[path = "../../../fuzz/oracles/upstream.rs"]
mod upstream;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The seed corpus of a target.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut seeds: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds.into_iter().map(|(_, b)| b).collect()
}

/// Tokens worth inserting: the guard's dictionary, and what HTTP is made of.
fn tokens() -> Vec<Vec<u8>> {
    let mut tokens: Vec<Vec<u8>> = [
        "\r\n",
        "\r\n\r\n",
        "\n",
        "\r",
        "\0",
        " ",
        "\t",
        ":",
        ";",
        ",",
        "/",
        "%",
        "#",
        "?",
        "0",
        "1",
        "ff",
        "chunked",
        "Transfer-Encoding: ",
        "Content-Length: ",
        "Upgrade: ",
        "Connection: close",
        "Expect: ",
        "HTTP/1.1",
        "HTTP/1.0",
        "HTTP/1.1 200 OK\r\n",
        "GET / HTTP/1.1\r\n",
        "__internal",
        "%5F",
        "%2F",
        "..",
        "\\",
    ]
    .iter()
    .map(|t| t.as_bytes().to_vec())
    .collect();
    if let Ok(dict) = std::fs::read_to_string(fuzz_dir().join("guard.dict")) {
        for line in dict.lines() {
            let line = line.trim();
            if let (Some(a), Some(b)) = (line.find('"'), line.rfind('"'))
                && b > a
            {
                tokens.push(unescape(&line[a + 1..b]));
            }
        }
    }
    tokens
}

/// A libFuzzer dictionary entry's bytes (`\xNN` and `\\` escapes).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1) == Some(&b'x')
            && i + 3 < b.len()
            && let Ok(n) = u8::from_str_radix(&s[i + 2..i + 4], 16)
        {
            out.push(n);
            i += 4;
            continue;
        }
        if b[i] == b'\\' && i + 1 < b.len() {
            out.push(b[i + 1]);
            i += 2;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// One random change (or a few) to `input`.
fn mutate(rng: &mut fastrand::Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>], tokens: &[Vec<u8>]) {
    for _ in 0..rng.usize(1..4) {
        let len = input.len();
        match rng.u8(0..7) {
            0 if len > 0 => {
                let i = rng.usize(..len);
                input[i] ^= 1 << rng.u8(0..8);
            }
            1 if len > 0 => {
                let i = rng.usize(..len);
                input[i] = rng.u8(..);
            }
            2 => {
                let token = &tokens[rng.usize(..tokens.len())];
                let at = rng.usize(..=len);
                input.splice(at..at, token.iter().copied());
            }
            3 if len > 0 => {
                let from = rng.usize(..len);
                let to = (from + rng.usize(1..=8)).min(len);
                input.drain(from..to);
            }
            4 => {
                let other = &seeds[rng.usize(..seeds.len())];
                if !other.is_empty() {
                    let from = rng.usize(..other.len());
                    let to = rng.usize(from..=other.len());
                    let at = rng.usize(..=len);
                    input.splice(at..at, other[from..to].iter().copied());
                }
            }
            5 if len > 1 => {
                let from = rng.usize(..len);
                let to = rng.usize(from..=len);
                let copy = input[from..to].to_vec();
                let at = rng.usize(..=input.len());
                input.splice(at..at, copy);
            }
            _ if len > 0 => input.truncate(rng.usize(..len)),
            _ => input.push(rng.u8(..)),
        }
    }
    input.truncate(4096);
}

/// Runs `check` on the corpus, then on mutations until the time is up.
fn smoke(target: &str, check: fn(&[u8])) {
    let seconds: u64 = std::env::var("FUZZ_SMOKE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("FUZZ_SMOKE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let seeds = corpus(target);
    let tokens = tokens();
    let run = |input: &[u8]| {
        if std::panic::catch_unwind(|| check(input)).is_err() {
            panic!(
                "{target}: an invariant broke on {:?} (FUZZ_SMOKE_SEED={seed})",
                String::from_utf8_lossy(input)
            );
        }
    };
    for input in &seeds {
        run(input);
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut runs = 0u64;
    'outer: while Instant::now() < deadline {
        let mut input = seeds[rng.usize(..seeds.len())].clone();
        for k in 0..64 {
            if k % 8 == 0 && Instant::now() >= deadline {
                break 'outer;
            }
            mutate(&mut rng, &mut input, &seeds, &tokens);
            run(&input);
            runs += 1;
        }
    }
    eprintln!(
        "{target}: {} seeds and {runs} mutations in {seconds} s (FUZZ_SMOKE_SEED={seed})",
        seeds.len()
    );
    assert!(runs > 0 || seconds == 0);
}

#[test]
fn guard_invariants_hold() {
    smoke("guard", guard::check);
}

#[test]
fn h1_invariants_hold() {
    smoke("h1", h1::check);
}

#[test]
fn upstream_invariants_hold() {
    smoke("upstream", upstream::check);
}

/// The smoke run is not blind: an input that breaks an invariant is caught.
#[test]
fn a_broken_invariant_is_caught() {
    fn strict(data: &[u8]) {
        assert!(!data.windows(2).any(|w| w == b"\r\r"), "found it");
    }
    let caught = std::panic::catch_unwind(|| {
        let seeds = vec![b"GET / HTTP/1.1\r\n\r\n".to_vec()];
        let mut rng = fastrand::Rng::with_seed(7);
        let tokens = vec![b"\r".to_vec()];
        for _ in 0..10_000 {
            let mut input = seeds[0].clone();
            mutate(&mut rng, &mut input, &seeds, &tokens);
            strict(&input);
        }
    });
    assert!(
        caught.is_err(),
        "10,000 mutations never inserted a second CR"
    );
}
