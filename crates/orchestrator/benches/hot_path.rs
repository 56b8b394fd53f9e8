//! Micro-benchmark of the proxy's hot path: the `__internal` guard and the
//! route lookup (with 1 and with 10,000 waifus and binds).
//!
//!     cargo bench -p orchestrator --bench hot_path

use divan::black_box;
use orchestrator::testing::{Table, normalize};

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
