//! A TCP proxy that can go silent: it relays to an upstream (the machine's PostgreSQL) until
//! `freeze`, then holds every connection open and relays nothing more, and accepts new ones
//! without a word, as a database host behind a dead network path does. `thaw` closes what it
//! held and relays again. For tests of what waits on a database that stopped answering.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct FreezableProxy {
    pub address: SocketAddr,
    frozen: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezableProxy {
    pub async fn start(upstream: SocketAddr) -> FreezableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("proxy address");
        let (frozen, state) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream, state.clone()));
            }
        });
        FreezableProxy {
            address,
            frozen,
            task,
        }
    }

    /// From now on nothing is relayed, on old connections or new ones.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Closes every connection held while frozen; new ones are relayed again.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits while frozen; true once thawed, false when the proxy is gone.
async fn until_thawed(state: &mut watch::Receiver<bool>) -> bool {
    state.wait_for(|frozen| !frozen).await.is_ok()
}

async fn relay(mut client: TcpStream, upstream: SocketAddr, mut state: watch::Receiver<bool>) {
    if *state.borrow_and_update() {
        // Accepted, never answered; closed at the thaw.
        until_thawed(&mut state).await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.split();
    let (mut from_server, mut to_server) = server.split();
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            changed = state.changed() => {
                if changed.is_err() || *state.borrow_and_update() {
                    // Both sockets stay open and unread until the thaw closes them.
                    until_thawed(&mut state).await;
                    return;
                }
            }
            read = from_client.read(&mut up) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if to_server.write_all(&up[..n]).await.is_err() { return },
            },
            read = from_server.read(&mut down) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if to_client.write_all(&down[..n]).await.is_err() { return },
            },
        }
    }
}
