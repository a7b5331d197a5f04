//! A small TCP proxy that a test can cut and restore, to make a store outage
//! the way networks fail: when cut, every open connection is closed and new
//! ones are accepted but never answered (packets into a black hole), so the
//! client's own timeouts are what save it.

use std::{net::SocketAddr, sync::Arc};

use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    sync::watch,
};

pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards a free local port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(watch::channel(false).0);
        let state = cut.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let mut rx = state.subscribe();
                tokio::spawn(async move {
                    if *rx.borrow() {
                        // Black hole: hold the socket, say nothing, until
                        // the path is restored; then drop it.
                        let _ = rx.wait_for(|cut| !*cut).await;
                        return;
                    }
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            cut,
            _task: task,
        }
    }

    /// Closes every open connection; new ones hang.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self._task.abort();
    }
}
