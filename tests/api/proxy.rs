//! A small TCP proxy that a test can cut, stall and restore, to make a store
//! outage the ways networks fail:
//! - `cut`: every open connection is closed; new ones are accepted but never
//!   answered (packets into a black hole);
//! - `stall`: open connections stay open but nothing passes either way (a
//!   frozen server or a silent network); new ones hang likewise. Whatever was
//!   sent meanwhile is delivered on `restore`.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Open,
    Stall,
    Cut,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards a free local port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = watch::channel(Mode::Open).0;
        let state = mode.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(client, upstream, state.subscribe()));
            }
        });
        Proxy { addr, mode, task }
    }

    /// Closes every open connection; new ones hang.
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Nothing passes, but connections stay open.
    pub fn stall(&self) {
        self.mode.send_replace(Mode::Stall);
    }

    pub fn restore(&self) {
        self.mode.send_replace(Mode::Open);
    }
}

async fn serve(client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    // A connection made while the path is down waits, unanswered.
    let Ok(m) = mode.wait_for(|m| *m == Mode::Open).await.map(|m| *m) else {
        return;
    };
    if m != Mode::Open {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::select! {
        _ = pump(cr, sw, mode.clone()) => {}
        _ = pump(sr, cw, mode.clone()) => {}
        _ = mode.wait_for(|m| *m == Mode::Cut) => {}
    }
}

/// Copies one direction, holding data while the path is stalled.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match mode.wait_for(|m| *m != Mode::Stall).await.map(|m| *m) {
            Ok(Mode::Open) => {}
            _ => return,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.mode.send_replace(Mode::Cut);
        self.task.abort();
    }
}
