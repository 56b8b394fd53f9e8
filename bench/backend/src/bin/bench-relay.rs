//! The proxy benchmark's floor: `bench-relay LISTEN UPSTREAM`.
//!
//! Not a proxy: it parses nothing and routes nothing. Each client
//! connection gets one upstream connection of its own, and bytes are copied
//! both ways as they come, on one thread. A request passes through it with
//! the same system calls an HTTP proxy needs at least (a read and a write
//! each way), so its CPU time per request is what the kernel and an event
//! loop cost before any HTTP work: no proxy on the same machine can spend
//! less. `bench/run.py` measures it beside the real proxies.

use tokio::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream] = a.as_slice() else {
        eprintln!("usage: bench-relay LISTEN UPSTREAM (both host:port)");
        std::process::exit(2);
    };
    let upstream = upstream.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (mut client, _) = listener.accept().await?;
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    })
}
