//! A TCP forwarding proxy that a test can cut and restore, to show how clients behave when
//! their broker or backend connection is lost, without touching the shared servers.
//!
//! ```ignore
//! let proxy = Proxy::start("127.0.0.1:6379").await;
//! let url = format!("redis://127.0.0.1:{}/14", proxy.port());
//! proxy.cut();            // every forwarded connection dropped, new ones refused
//! proxy.restore().await;  // accepting again, on the same port
//! ```
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// A proxy on `127.0.0.1:<port>` forwarding every connection to a target address.
pub struct Proxy {
    addr: SocketAddr,
    target: String,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// The accept loop, while accepting.
    acceptor: Option<JoinHandle<()>>,
    /// One task per forwarded connection; aborting it drops both sockets.
    links: Vec<JoinHandle<()>>,
    /// Counts cuts, so an acceptor that was cut cannot register a late link.
    generation: u64,
}

impl Proxy {
    /// Listen on a free local port and forward to `target` (`host:port`).
    pub async fn start(target: &str) -> Proxy {
        let listener = listen("127.0.0.1:0".parse().expect("an address"));
        let addr = listener.local_addr().expect("the proxy's address");
        let proxy = Proxy {
            addr,
            target: target.to_owned(),
            state: Arc::default(),
        };
        proxy.accept_on(listener);
        proxy
    }

    /// The local port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Drop every forwarded connection and stop accepting: connecting is refused.
    pub fn cut(&self) {
        let mut state = self.lock();
        state.generation += 1;
        if let Some(acceptor) = state.acceptor.take() {
            acceptor.abort();
        }
        for link in state.links.drain(..) {
            link.abort();
        }
    }

    /// Accept and forward again, on the same port.
    pub async fn restore(&self) {
        if self.lock().acceptor.is_some() {
            return;
        }
        // The aborted acceptor drops its listener when the runtime gets to it; retry briefly.
        for _ in 0..100 {
            if let Some(listener) = try_listen(self.addr) {
                self.accept_on(listener);
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("cannot listen on {} again", self.addr);
    }

    /// How many forwarded connections are open.
    pub fn links(&self) -> usize {
        let mut state = self.lock();
        state.links.retain(|l| !l.is_finished());
        state.links.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn accept_on(&self, listener: TcpListener) {
        let state = self.state.clone();
        let target = self.target.clone();
        let mut slot = self.lock();
        let generation = slot.generation;
        let acceptor = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let target = target.clone();
                let link = tokio::spawn(async move {
                    // A target that cannot be reached: the client sees the connection close.
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                if s.generation != generation {
                    link.abort();
                    return;
                }
                s.links.retain(|l| !l.is_finished());
                s.links.push(link);
            }
        });
        slot.acceptor = Some(acceptor);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

fn try_listen(addr: SocketAddr) -> Option<TcpListener> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.set_reuseaddr(true).ok()?;
    socket.bind(addr).ok()?;
    socket.listen(1024).ok()
}

fn listen(addr: SocketAddr) -> TcpListener {
    try_listen(addr).unwrap_or_else(|| panic!("cannot listen on {addr}"))
}
