//! A TCP relay the test can cut and restore: PostgreSQL made unreachable
//! for one orchestrator without stopping it for all.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

use crate::harness::{Orch, start_with_url};
use crate::pg;

/// An orchestrator whose connections to PostgreSQL go through a [`Relay`],
/// so the test can make the database unreachable for it alone.
pub async fn start_behind_relay(db: &str) -> (Orch, Relay) {
    let cluster = pg::cluster();
    let backend = format!("127.0.0.1:{}", cluster.port).parse().unwrap();
    let relay = Relay::start(backend).await;
    let url = format!(
        "postgres://{}:{}@{}/{db}",
        cluster.user, cluster.password, relay.addr
    );
    (start_with_url(&url, &[]).await, relay)
}

/// A TCP relay to a backend that the test can cut and restore, to make
/// PostgreSQL unreachable for one orchestrator without stopping it for all.
pub struct Relay {
    pub addr: SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl Relay {
    pub async fn start(backend: SocketAddr) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let cut = std::sync::Arc::new(cut);
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is reset
                }
                let mut cuts = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(backend).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Relay { addr, up, cut }
    }

    /// Drops every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
