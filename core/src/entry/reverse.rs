//! The entry's side of reverse connect (`CONNECTR`, `PROTOCOL.md`): a TCP
//! listener on the entry's public address. For each stream the entry sends
//! the exit a `CONNECTR` naming that address; the exit dials it and writes
//! the stream's key (the 36-character UUID string); the listener answers
//! one byte `0x01` and hands the connection to the waiting stream. From then
//! on the application's bytes cross that connection as they are: plain TCP,
//! no Nostr, no encryption added.

use crate::sync::lock;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Length of a stream key on the wire: a hyphenated UUID string.
const KEY_LEN: usize = 36;

/// The public-address listener and the streams waiting for their exit.
pub(crate) struct Reverse {
    addr: SocketAddr,
    pending: Mutex<HashMap<String, oneshot::Sender<TcpStream>>>,
}

impl Reverse {
    /// Binds `addr` and accepts exits' connections until `cancel`; each
    /// must send its key within `handshake_timeout`.
    pub(crate) async fn bind(
        addr: SocketAddr,
        handshake_timeout: Duration,
        cancel: CancellationToken,
    ) -> std::io::Result<Arc<Self>> {
        let listener = TcpListener::bind(addr).await?;
        let rev = Arc::new(Self {
            addr: listener.local_addr()?,
            pending: Mutex::default(),
        });
        let weak = Arc::downgrade(&rev);
        tokio::spawn(async move {
            loop {
                let (sock, peer) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            log::warn!("public address: accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    _ = cancel.cancelled() => return,
                };
                let Some(rev) = weak.upgrade() else { return };
                tokio::spawn(async move {
                    match tokio::time::timeout(handshake_timeout, rev.handshake(sock)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => log::info!("reverse connection from {peer}: {e}"),
                        Err(_) => log::info!("reverse connection from {peer}: no key in time"),
                    }
                });
            }
        });
        Ok(rev)
    }

    /// Reads the key, and if a stream waits for it, answers `0x01` and
    /// hands the connection over; otherwise drops it.
    async fn handshake(&self, mut sock: TcpStream) -> std::io::Result<()> {
        let mut key = [0u8; KEY_LEN];
        sock.read_exact(&mut key).await?;
        let key = String::from_utf8_lossy(&key).into_owned();
        let waiting = lock(&self.pending).remove(&key);
        let Some(tx) = waiting else {
            return Err(std::io::Error::other(format!("unknown stream key {key}")));
        };
        let _ = sock.set_nodelay(true);
        sock.write_all(&[1]).await?;
        let _ = tx.send(sock);
        Ok(())
    }

    /// The bound address, sent as `entryPublicAddress`.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Registers a stream key; the receiver gets the exit's connection.
    pub(crate) fn expect(&self, key: &str) -> oneshot::Receiver<TcpStream> {
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(key.to_string(), tx);
        rx
    }

    /// Forgets a stream key that gave up waiting.
    pub(crate) fn forget(&self, key: &str) {
        lock(&self.pending).remove(key);
    }
}
