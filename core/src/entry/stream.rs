//! An open stream of the entry ([`EntryStream`]), ready to be joined to a
//! local socket: a Nostr stream driven by the engine, or a reverse-connect
//! stream's raw TCP connection from the exit.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::driver::{pump, Conn, StreamError};
use crate::engine::Dialect;
use crate::stats::{OpenSlot, Stats};

/// An open NWS stream, ready to be joined to a local socket with
/// [`EntryStream::run`].
pub struct EntryStream {
    inner: Inner,
    stats: Arc<Stats>,
}

// One per stream, moved once into `run`: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
enum Inner {
    /// Bytes travel as Nostr events.
    Nostr { conn: Conn, idle_timeout: Duration },
    /// `CONNECTR`: bytes travel over the exit's plain TCP connection.
    Reverse { key: String, socket: TcpStream },
}

impl EntryStream {
    /// A stream whose bytes travel as Nostr events.
    pub(crate) fn nostr(conn: Conn, idle_timeout: Duration, stats: Arc<Stats>) -> Self {
        Self {
            inner: Inner::Nostr { conn, idle_timeout },
            stats,
        }
    }

    /// A reverse-connect stream over the exit's TCP connection.
    pub(crate) fn reverse(key: String, socket: TcpStream, stats: Arc<Stats>) -> Self {
        Self {
            inner: Inner::Reverse { key, socket },
            stats,
        }
    }

    /// The stream's key (a UUID string).
    pub fn key(&self) -> &str {
        match &self.inner {
            Inner::Nostr { conn, .. } => conn.key(),
            Inner::Reverse { key, .. } => key,
        }
    }

    /// Whether the exit speaks version 2 on this stream (a reverse
    /// connection counts as legacy: raw bytes, no stream protocol).
    pub fn dialect(&self) -> Dialect {
        match &self.inner {
            Inner::Nostr { conn, .. } => conn.engine.dialect(),
            Inner::Reverse { .. } => Dialect::Legacy,
        }
    }

    /// Copies bytes both ways between `socket` and the stream until both
    /// directions are closed, the stream is aborted, or it idles out.
    /// `first` is sent before anything read from `socket`.
    ///
    /// # Errors
    ///
    /// [`StreamError`]: why the stream ended early.
    pub async fn run<S>(self, socket: S, first: Vec<u8>) -> Result<(), StreamError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let slot = OpenSlot::new(self.stats.clone());
        match self.inner {
            Inner::Nostr { conn, idle_timeout } => {
                pump(conn, socket, first, idle_timeout, slot).await
            }
            Inner::Reverse {
                socket: mut remote, ..
            } => {
                let mut socket = socket;
                let copied = async {
                    remote.write_all(&first).await?;
                    tokio::io::copy_bidirectional(&mut socket, &mut remote).await
                };
                let result = copied.await;
                drop(slot);
                let (up, down) = result.map_err(|e| StreamError::Io(e.kind()))?;
                self.stats
                    .bytes_sent
                    .fetch_add(up + first.len() as u64, Ordering::Relaxed);
                self.stats.bytes_received.fetch_add(down, Ordering::Relaxed);
                Ok(())
            }
        }
    }
}
