//! The entry's side of reverse connect (`CONNECTR`, `docs/PROTOCOL.md` §6): a TCP
//! listener on the entry's public address. For each stream the entry sends
//! the exit a `CONNECTR` naming that address; the exit dials it and writes
//! the stream's key (the 36-character UUID string); the listener answers
//! one byte `0x01` and hands the connection to the waiting stream. From then
//! on the application's bytes cross that connection as they are: plain TCP,
//! no Nostr, no encryption added.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nostr::RelayUrl;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::accept::accept_loop;
use crate::names::ExitAddress;
use crate::protocol::reverse::{ACCEPTED, KEY_LEN};
use crate::protocol::{ErrorReason, Message, MessageType, PROTOCOL_VERSION};
use crate::sync::lock;

use super::{Entry, EntryStream, OpenError};

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
        let listener = crate::accept::listen(addr)?;
        let rev = Arc::new(Self {
            addr: listener.local_addr()?,
            pending: Mutex::default(),
        });
        let weak = Arc::downgrade(&rev);
        let serve = move |sock: TcpStream, peer: SocketAddr| {
            let rev = weak.upgrade();
            async move {
                let Some(rev) = rev else { return };
                match tokio::time::timeout(handshake_timeout, rev.handshake(sock)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => log::info!("reverse connection from {peer}: {e}"),
                    Err(_) => log::info!("reverse connection from {peer}: no key in time"),
                }
            }
        };
        tokio::spawn(accept_loop(
            listener,
            "public address",
            cancel,
            None,
            serve,
            |_, _| async {},
        ));
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
        sock.write_all(&[ACCEPTED]).await?;
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

impl Entry {
    /// Opens a stream by reverse connect: publishes `CONNECTR` and waits
    /// for the exit to dial the public address with the stream's key.
    ///
    /// Toward an exit not marked legacy the `CONNECTR` carries `version: 2`,
    /// and an `ERROR` the exit sends back (refused entry, destination or
    /// entry address that failed) ends the wait at once with
    /// [`OpenError::Refused`]; a legacy exit never answers, so its failures
    /// are an [`OpenError::Timeout`] after `connect_timeout`.
    pub(super) async fn open_reverse(
        &self,
        rev: &Reverse,
        exit: &ExitAddress,
        relays: Vec<RelayUrl>,
        key: String,
        destination: String,
    ) -> Result<EntryStream, OpenError> {
        let (link, mut inbox, _route) = self.answers(exit, relays, &key).await?;
        let mut msg = Message::new(key.clone(), MessageType::ConnectReverse);
        msg.destination = destination;
        msg.entry_public_address = rev.addr().to_string();
        if !self.is_legacy_exit(&exit.public_key) {
            msg.version = Some(PROTOCOL_VERSION);
        }
        let waiting = rev.expect(&key);
        if let Err(e) = link.send(&msg).await {
            rev.forget(&key);
            return Err(e.into());
        }
        let timeout = self.config.connect_timeout;
        let refusal = async {
            while let Some(m) = inbox.next().await {
                if m.key == key && m.kind == MessageType::Error {
                    return ErrorReason::parse(m.reason.as_deref().unwrap_or(""));
                }
            }
            std::future::pending().await
        };
        let socket = tokio::select! {
            r = tokio::time::timeout(timeout, waiting) => match r {
                Ok(Ok(s)) => s,
                _ => {
                    rev.forget(&key);
                    return Err(OpenError::Timeout(timeout));
                }
            },
            reason = refusal => {
                rev.forget(&key);
                log::info!("stream {key}: the exit refused the reverse connect ({reason})");
                return Err(OpenError::Refused(reason));
            }
        };
        log::debug!("stream {key}: reverse connection from the exit");
        Ok(EntryStream::reverse(key, socket, self.stats.clone()))
    }
}
