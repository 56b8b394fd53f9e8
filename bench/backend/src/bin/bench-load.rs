//! An open-loop load generator: `bench-load ADDR HOST PATH CONNECTIONS RATE
//! SECONDS`.
//!
//! wrk sends the next request on a connection when the last one is answered,
//! so the rate follows the server and, at saturation, p99 follows throughput.
//! This sends `RATE` requests a second in all, spread evenly over
//! `CONNECTIONS` keep-alive connections, on a schedule that does not wait for
//! the server: latency is what a request meets at a load the server can
//! carry. A request sent late because its connection was still waiting for
//! the previous answer counts from the time it was due (no coordinated
//! omission); one sent late only because this process's timer woke late
//! (tokio's timers have a 1 ms grain) counts from when it was sent.
//!
//! Prints one JSON line: requests sent and answered, errors (a non-2xx
//! answer or a broken connection, which is then reopened), and latency
//! percentiles in milliseconds. Responses must carry `Content-Length`.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    addr: String,
    request: Vec<u8>,
    connections: u32,
    rate: f64,
    seconds: f64,
}

fn args() -> Result<Args, String> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [addr, host, path, connections, rate, seconds] = a.as_slice() else {
        return Err("usage: bench-load ADDR HOST PATH CONNECTIONS RATE SECONDS".into());
    };
    let number = |what: &str, s: &str| {
        s.parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n > 0.0)
            .ok_or(format!("{what} must be a positive number, not {s:?}"))
    };
    Ok(Args {
        addr: addr.clone(),
        request: format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n").into_bytes(),
        connections: connections.parse().ok().filter(|&n| n > 0).ok_or(format!(
            "CONNECTIONS must be a positive integer, not {connections:?}"
        ))?,
        rate: number("RATE", rate)?,
        seconds: number("SECONDS", seconds)?,
    })
}

/// What one connection saw.
#[derive(Default)]
struct Tally {
    /// Latencies in microseconds.
    latencies: Vec<u32>,
    sent: u64,
    errors: u64,
}

fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let tallies = runtime.block_on(async {
        let start = Instant::now() + Duration::from_millis(50);
        let end = start + Duration::from_secs_f64(args.seconds);
        let every = Duration::from_secs_f64(f64::from(args.connections) / args.rate);
        let tasks: Vec<_> = (0..args.connections)
            .map(|c| {
                // Connections take turns: their schedules are offset evenly.
                let first = start + every.mul_f64(f64::from(c) / f64::from(args.connections));
                let (addr, request) = (args.addr.clone(), args.request.clone());
                tokio::spawn(connection(addr, request, first, every, end))
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.unwrap_or_default());
        }
        all
    });
    let mut latencies: Vec<u32> = tallies
        .iter()
        .flat_map(|t| t.latencies.iter().copied())
        .collect();
    latencies.sort_unstable();
    let sent: u64 = tallies.iter().map(|t| t.sent).sum();
    let errors: u64 = tallies.iter().map(|t| t.errors).sum();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
        f64::from(latencies.get(i).copied().unwrap_or(0)) / 1000.0
    };
    println!(
        "{{\"sent\": {sent}, \"answered\": {}, \"errors\": {errors}, \"rate\": {:.0}, \
         \"p50\": {:.3}, \"p90\": {:.3}, \"p99\": {:.3}, \"p999\": {:.3}, \"max\": {:.3}}}",
        latencies.len(),
        latencies.len() as f64 / args.seconds,
        at(0.5),
        at(0.9),
        at(0.99),
        at(0.999),
        at(1.0),
    );
}

/// Sends on one connection on its schedule until `end`.
async fn connection(
    addr: String,
    request: Vec<u8>,
    first: Instant,
    every: Duration,
    end: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut io: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(4096);
    let mut due = first;
    while due < end {
        // Behind schedule already: the server kept this connection waiting.
        let behind = Instant::now() >= due;
        if !behind {
            tokio::time::sleep_until(due.into()).await;
        }
        let from = if behind { due } else { Instant::now() };
        due += every;
        tally.sent += 1;
        if io.is_none() {
            io = TcpStream::connect(&addr).await.ok();
            if let Some(s) = &io {
                let _ = s.set_nodelay(true);
            }
        }
        let answered = match io.as_mut() {
            Some(s) => exchange(s, &request, &mut buf).await,
            None => Err(()),
        };
        match answered {
            Ok(true) => tally
                .latencies
                .push(u32::try_from(from.elapsed().as_micros()).unwrap_or(u32::MAX)),
            Ok(false) => tally.errors += 1,
            Err(()) => {
                tally.errors += 1;
                io = None;
            }
        }
    }
    tally
}

/// One request and its response; `Ok(success)`, or `Err` if the connection
/// broke or the response could not be read.
async fn exchange(io: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> Result<bool, ()> {
    io.write_all(request).await.map_err(drop)?;
    buf.clear();
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut fields);
        if let httparse::Status::Complete(head) = response.parse(buf).map_err(drop)? {
            let length = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .ok_or(())?;
            let ok = response.code.is_some_and(|c| (200..300).contains(&c));
            while buf.len() < head + length {
                read_more(io, buf).await?;
            }
            if buf.len() > head + length {
                return Err(()); // an answer nobody asked for
            }
            return Ok(ok);
        }
        read_more(io, buf).await?;
    }
}

async fn read_more(io: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), ()> {
    let mut chunk = [0u8; 4096];
    match io.read(&mut chunk).await {
        Ok(0) | Err(_) => Err(()),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}
