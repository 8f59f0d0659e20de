//! The benchmark agent's link to the API server: a TCP relay that can be cut (open
//! connections closed, new ones closed on arrival) and restored. A userspace relay,
//! because the agent runs in this host's network namespace, where cutting a route would
//! cut the benchmark's own view of the API server too; tokio's `copy_bidirectional` moves
//! the bytes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct State {
    up: bool,
    /// Cancelled by a cut: every connection relayed since the last one.
    relayed: CancellationToken,
}

/// A running relay to one upstream address.
pub struct Link {
    address: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Link {
    /// A relay on a free loopback port to `upstream`, up.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            up: true,
            relayed: CancellationToken::new(),
        }));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut downstream, _)) = listener.accept().await else {
                    continue;
                };
                let relayed = {
                    let s = shared.lock().unwrap_or_else(PoisonError::into_inner);
                    s.up.then(|| s.relayed.clone())
                };
                // Cut: the connection is closed at once, as a dead route would fail it.
                let Some(relayed) = relayed else { continue };
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        () = relayed.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream) => {}
                    }
                });
            }
        });
        Ok(Self {
            address,
            state,
            task,
        })
    }

    /// Where the agent connects.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Closes every open connection and refuses new ones until [`Link::restore`].
    pub fn cut(&self) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.up = false;
        s.relayed.cancel();
        s.relayed = CancellationToken::new();
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).up = true;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        address
    }

    async fn round_trip(s: &mut TcpStream) -> bool {
        if s.write_all(b"ping").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.is_ok() && &buf == b"ping"
    }

    #[tokio::test]
    async fn a_cut_closes_open_connections_and_refuses_new_ones_until_restored() {
        let link = Link::start(echo().await).await.expect("the relay");
        let mut open = TcpStream::connect(link.address()).await.expect("connect");
        assert!(round_trip(&mut open).await);
        link.cut();
        assert!(!round_trip(&mut open).await, "an open connection is closed");
        let mut refused = TcpStream::connect(link.address()).await.expect("accepted");
        assert!(!round_trip(&mut refused).await, "a new one is closed");
        link.restore();
        let mut again = TcpStream::connect(link.address()).await.expect("connect");
        assert!(round_trip(&mut again).await);
    }
}
