//! Reverse connect (`CONNECTR`, `PROTOCOL.md`): instead of answering over
//! Nostr, the exit dials the entry's public address, writes the stream's
//! key, waits for the entry's acceptance byte, and copies raw bytes between
//! that connection and the destination. The handshake's shape is
//! [`crate::protocol::reverse`], shared with the entry.
//!
//! The entry's address is untrusted input that makes the exit dial, so it
//! goes through the egress policy like a public exit's destination.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use nostr::PublicKey;

use super::dispatch::Server;
use super::target::{dial_checked, open_target};
use super::ExitConfig;
use crate::link::Link;
use crate::protocol::reverse::{is_valid_key, ACCEPTED, HANDSHAKE_TIMEOUT};
use crate::protocol::{Cipher, ErrorReason, HostPort, Message};
use crate::stats::OpenSlot;

impl Server {
    /// Starts serving a `CONNECTR` if the entry is admitted. A version-2
    /// entry (`version` on its `CONNECTR`) hears of a refusal or failure as
    /// an `ERROR` with the reason; a legacy entry only sees no connection.
    pub(super) fn accept_reverse(&self, author: PublicKey, cipher: Cipher, msg: Message) {
        if !is_valid_key(&msg.key) {
            log::warn!(
                "CONNECTR from {author} with a key of {} bytes: dropped",
                msg.key.len()
            );
            return;
        }
        let answer =
            (msg.version.is_some() && !self.config.legacy).then(|| self.link(author, cipher));
        if let Some(reason) = self.admission(&author) {
            log::warn!(
                "reverse stream {} from {author}: refused ({reason})",
                msg.key
            );
            self.stats.refusals.count(&reason);
            if let Some(link) = answer {
                tokio::spawn(async move { refuse_reverse(&link, &msg.key, reason).await });
            }
            return;
        }
        let config = self.config.clone();
        let tls = self.tls.clone();
        let cancel = self.cancel.clone();
        let slot = OpenSlot::new(self.stats.clone());
        let stats = self.stats.clone();
        tokio::spawn(async move {
            let key = msg.key.clone();
            tokio::select! {
                r = serve_reverse(&config, tls.as_ref(), msg) => {
                    if let Err((reason, e)) = r {
                        log::info!("reverse stream {key}: {e}");
                        stats.refusals.count(&reason);
                        if let Some(link) = answer {
                            refuse_reverse(&link, &key, reason).await;
                        }
                    }
                }
                _ = cancel.cancelled() => {}
            }
            drop(slot);
        });
    }
}

/// Serves one `CONNECTR`: opens the destination as for a `CONNECT`, dials
/// the entry's public address (checked against the egress policy), writes
/// the stream key, waits for [`ACCEPTED`] and copies bytes both ways.
/// Fails, before any byte is copied, with the reason to send a version-2
/// entry and a line for the log.
async fn serve_reverse(
    config: &ExitConfig,
    tls: Option<&tokio_rustls::TlsAcceptor>,
    msg: Message,
) -> Result<(), (ErrorReason, String)> {
    let key = &msg.key;
    let HostPort { host, port } = HostPort::parse(&msg.entry_public_address).map_err(|_| {
        (
            ErrorReason::ProtocolError,
            format!("bad entryPublicAddress `{}`", msg.entry_public_address),
        )
    })?;
    let mut local = open_target(config, tls, &msg.destination, key)
        .await
        .map_err(|r| (r.clone(), format!("destination `{}`: {r}", msg.destination)))?;
    let mut entry = dial_checked(&config.egress, &host, port, config.connect_timeout, key)
        .await
        .map_err(|r| {
            let line = format!("entry address {}: {r}", msg.entry_public_address);
            (r, line)
        })?;
    let handshake = async {
        entry.write_all(key.as_bytes()).await?;
        let mut ok = [0u8; 1];
        entry.read_exact(&mut ok).await?;
        Ok::<_, std::io::Error>(ok[0])
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(ACCEPTED)) => {}
        Ok(Ok(b)) => {
            return Err((
                ErrorReason::ProtocolError,
                format!("entry answered {b:#04x}, not {ACCEPTED:#04x}"),
            ))
        }
        Ok(Err(e)) => return Err((ErrorReason::from_io(&e), format!("entry handshake: {e}"))),
        Err(_) => return Err((ErrorReason::Timeout, "entry handshake timed out".into())),
    }
    log::debug!(
        "stream {key}: reverse connection open to `{}`",
        msg.destination
    );
    let _ = tokio::io::copy_bidirectional(&mut entry, &mut local).await;
    Ok(())
}

/// Tells a version-2 entry that its `CONNECTR` failed: one `ERROR` with
/// `reason`, published once (if the relays lose it, the entry times out).
async fn refuse_reverse(link: &Link, key: &str, reason: ErrorReason) {
    if let Err(e) = link.send(&Message::error(key, &reason)).await {
        log::warn!("reverse stream {key}: cannot send ERROR {reason}: {e}");
    }
}
