//! A TCP proxy a test can cut and restore: the broker behind it stays up (and keeps its data),
//! while the relay sees it go unreachable and come back on the same address.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// Forwards `127.0.0.1:<port>` to an upstream address until cut.
pub struct Proxy {
    addr: SocketAddr,
    upstream: Arc<std::sync::Mutex<String>>,
    state: Arc<Mutex<Option<Running>>>,
}

struct Running {
    accept: JoinHandle<()>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    /// Starts forwarding a fresh local port to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let proxy = Proxy {
            addr,
            upstream: Arc::new(std::sync::Mutex::new(upstream.to_string())),
            state: Arc::new(Mutex::new(None)),
        };
        proxy.serve(listener).await;
        proxy
    }

    /// The local address clients should use, `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The local port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Points the proxy at another upstream (for a broker started after the proxy, e.g. one
    /// that must advertise the proxy's address). Applies to new connections.
    pub fn set_upstream(&self, upstream: &str) {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner()) = upstream.to_string();
    }

    async fn serve(&self, listener: TcpListener) {
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let upstream = self.upstream.clone();
        let tracked = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let handle = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tracked.lock().await.push(handle);
            }
        });
        *self.state.lock().await = Some(Running { accept, conns });
    }

    /// Makes the broker unreachable: closes every connection and refuses new ones.
    pub async fn cut(&self) {
        if let Some(running) = self.state.lock().await.take() {
            running.accept.abort();
            let _ = running.accept.await;
            for c in running.conns.lock().await.drain(..) {
                c.abort();
            }
        }
    }

    /// Makes the broker reachable again on the same address.
    pub async fn restore(&self) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("re-binding proxy port {}: {e}", self.addr),
            }
        };
        self.serve(listener).await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(mut state) = self.state.try_lock() {
            if let Some(running) = state.take() {
                running.accept.abort();
                if let Ok(mut conns) = running.conns.try_lock() {
                    for c in conns.drain(..) {
                        c.abort();
                    }
                }
            }
        }
    }
}
