//! Micro-benchmark of the proxy's hot path: the `__internal` guard and the
//! route lookup (with 1 and with 10,000 waifus and binds); and the cost of
//! `COMPRESSION=on` per response (16 KiB of JSON streamed in 4 KiB pieces).
//!
//!     cargo bench -p orchestrator --bench hot_path

use divan::black_box;
use orchestrator::testing::{Table, compress_pieces, normalize};

fn main() {
    divan::main();
}

#[divan::bench(args = [
    "/w1/api/v1/users?x=1",
    "/w1/a/b/c/d/e/f/g/h",
    "/w1/%41%42/x%20y",
    "/w1/x/../y/./z",
    "/w1/__internal/health",
])]
fn guard(target: &str) -> usize {
    match normalize(black_box(target)) {
        Ok(p) => p.len(),
        Err(e) => e.len(),
    }
}

#[divan::bench(args = [1, 10_000])]
fn route_main_domain(bencher: divan::Bencher, waifus: usize) {
    let table = Table::new(waifus);
    bencher.bench(|| table.route(black_box("localhost"), black_box("/w0/api/users")));
}

#[divan::bench(args = [1, 10_000])]
fn route_bind(bencher: divan::Bencher, waifus: usize) {
    let table = Table::new(waifus);
    bencher.bench(|| table.route(black_box("b0.test"), black_box("/p/api/users")));
}

#[divan::bench]
fn guard_and_route(bencher: divan::Bencher) {
    let table = Table::new(10_000);
    bencher.bench(|| {
        let path = normalize(black_box("/w42/api/v1/users")).ok()?;
        table.route("localhost", &path)
    });
}

/// 16 KiB of JSON, as an API answers.
fn json_16k() -> Vec<u8> {
    let items: Vec<String> = (0..2000)
        .map(|i| {
            format!(
                "{{\"id\":{i},\"name\":\"user{i}\",\"active\":{}}}",
                i % 3 == 0
            )
        })
        .collect();
    let mut body = format!("[{}]", items.join(",")).into_bytes();
    body.truncate(16 * 1024);
    body
}

#[divan::bench(args = ["gzip", "br", "zstd"])]
fn compress_16k_json(bencher: divan::Bencher, coding: &str) {
    let body = json_16k();
    bencher
        .counter(divan::counter::BytesCount::new(body.len()))
        .bench(|| compress_pieces(black_box(coding), black_box(&body), 4096));
}
