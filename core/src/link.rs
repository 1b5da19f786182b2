//! A stream's way to its peer: the relay transport, our signing keys, the
//! peer's key, the stream's NIP-44 conversation key and the relays it
//! publishes to. Built in one place ([`Link::new`]) for both sides.

use nostr::{Event, Keys, PublicKey, RelayUrl};

use crate::protocol::{build_stream_event, Cipher, CodecError, Framing, Message};
use crate::transport::{Transport, TransportError};

/// Why a message did not go out.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The message could not be sealed or signed (too large for NIP-44, say).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// No relay took the event, or the transport is shut down.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl SendError {
    /// Whether the event reached no relay at all (every relay down or
    /// refusing to queue it): a loss that says nothing about its size.
    pub fn is_path_down(&self) -> bool {
        matches!(self, Self::Transport(TransportError::NotPublished(_)))
    }
}

/// Everything one stream needs to talk to its peer through relays.
#[derive(Clone)]
pub struct Link {
    transport: Transport,
    /// Our signing keys: an entry stream's ephemeral keys, or the exit's keys.
    keys: Keys,
    peer: PublicKey,
    /// The stream's conversation key, derived once.
    cipher: Cipher,
    /// Relays the stream publishes to.
    relays: Vec<RelayUrl>,
}

impl Link {
    /// A link from `keys` to `peer` over `relays`, sealing with `cipher`
    /// (the conversation key of `keys` and `peer`, derived by the caller
    /// once per author or stream).
    pub fn new(
        transport: &Transport,
        keys: Keys,
        peer: PublicKey,
        cipher: Cipher,
        relays: Vec<RelayUrl>,
    ) -> Self {
        Self {
            transport: transport.clone(),
            keys,
            peer,
            cipher,
            relays,
        }
    }

    /// Seals and signs one message into its kind-28333 event.
    ///
    /// # Errors
    ///
    /// [`CodecError`] if the message is too large or signing fails.
    pub fn event(&self, msg: &Message) -> Result<Event, CodecError> {
        self.event_as(msg, Framing::Json)
    }

    /// Like [`Link::event`], written in `framing` (the stream's, from
    /// [`crate::engine::Stream::framing`]).
    pub fn event_as(&self, msg: &Message, framing: Framing) -> Result<Event, CodecError> {
        let content = self.cipher.seal_as(msg, framing)?;
        build_stream_event(&self.keys, &self.peer, content)
    }

    /// Seals, signs and publishes one message to the peer (without waiting
    /// for the relays' `OK`).
    ///
    /// # Errors
    ///
    /// [`SendError::Codec`], or [`SendError::Transport`] when no relay took
    /// the event ([`SendError::is_path_down`]).
    pub async fn send(&self, msg: &Message) -> Result<(), SendError> {
        self.send_as(msg, Framing::Json).await
    }

    /// Like [`Link::send`], written in `framing`.
    ///
    /// # Errors
    ///
    /// As [`Link::send`].
    pub async fn send_as(&self, msg: &Message, framing: Framing) -> Result<(), SendError> {
        let event = self.event_as(msg, framing)?;
        self.transport.publish(&event, &self.relays).await?;
        Ok(())
    }

    /// The relay transport.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The relays the stream publishes to.
    pub fn relays(&self) -> &[RelayUrl] {
        &self.relays
    }

    /// The peer's public key.
    pub fn peer(&self) -> PublicKey {
        self.peer
    }

    /// The stream's conversation key.
    pub fn cipher(&self) -> &Cipher {
        &self.cipher
    }
}
