//! The one demultiplexer, used by both sides: events addressed to one
//! long-term key (an exit's key, or an entry's persistent key) carry many
//! streams from many authors. The demultiplexer opens each event with its
//! author's conversation key (derived once per author) and hands the
//! message to its stream's inbox by author × stream key; a message no
//! stream claims goes back to the caller (an exit starts a stream on
//! `CONNECT`).
//!
//! An entry that uses a fresh key per stream needs none of this: the relay
//! transport already routes by recipient, and the recipient is the stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use nostr::{Event, Keys, PublicKey};
use tokio::sync::mpsc;

use crate::protocol::{open_stream_event, Cipher, CodecError, Message, Sender};
use crate::sync::lock;

/// Messages a stream's inbox holds before further ones are dropped (the
/// peer retransmits them): the stream takes them as fast as they come, so
/// only a flood fills it.
pub const STREAM_INBOX: usize = 256;

/// What [`Demux::route`] did with an event.
// Returned once per event and matched at once: boxing the message buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Routed {
    /// Handed to its stream's inbox (or dropped there because the inbox
    /// was full; the peer retransmits).
    Delivered,
    /// No stream of this author has the message's key.
    Unclaimed {
        /// The event's author.
        author: PublicKey,
        /// The conversation key of our key and the author's.
        cipher: Cipher,
        /// The opened message.
        msg: Message,
    },
    /// The event did not open or carries no stream key: dropped with a log line.
    Dropped,
}

struct Author {
    cipher: Cipher,
    streams: HashMap<String, mpsc::Sender<Message>>,
}

/// Routes messages to streams by author × stream key. See the module docs.
pub struct Demux {
    keys: Keys,
    authors: Mutex<HashMap<PublicKey, Author>>,
    /// Keep an author's conversation key after its last stream ended: an
    /// entry talks to few exits again and again; an exit meets a new
    /// ephemeral author per stream and must not grow.
    keep_idle_authors: bool,
    /// The side every author here speaks for (the entry, at an exit).
    peer_side: Sender,
}

impl Demux {
    /// A demultiplexer for events addressed to `keys`, sent by peers on
    /// `peer_side` (an exit's demultiplexer hears entries).
    pub fn new(keys: Keys, keep_idle_authors: bool, peer_side: Sender) -> Arc<Self> {
        Arc::new(Self {
            keys,
            authors: Mutex::default(),
            keep_idle_authors,
            peer_side,
        })
    }

    /// Our keys (the recipient of every event routed here).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The conversation key with `author`: the one kept for it, or a new
    /// derivation (kept only once a stream registers).
    ///
    /// # Errors
    ///
    /// [`CodecError::KeyDerivation`] for a key with no conversation key.
    pub fn cipher_for(&self, author: &PublicKey) -> Result<Cipher, CodecError> {
        if let Some(a) = lock(&self.authors).get(author) {
            return Ok(a.cipher.clone());
        }
        Cipher::derive(self.keys.secret_key(), author)
    }

    /// Opens `ev`, proves its author ([`open_stream_event`]) and hands its
    /// message to the stream it belongs to.
    pub fn route(&self, ev: &Event) -> Routed {
        let author = ev.pubkey;
        let cipher = match self.cipher_for(&author) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("event {} from {author}: {e}: dropped", ev.id);
                return Routed::Dropped;
            }
        };
        let msg = match open_stream_event(&cipher, ev, self.peer_side) {
            Ok(m) => m,
            Err(e) => {
                log::warn!("event {} from {author}: {e}: dropped", ev.id);
                return Routed::Dropped;
            }
        };
        if msg.key.is_empty() {
            log::warn!(
                "event {} from {author}: message without key: dropped",
                ev.id
            );
            return Routed::Dropped;
        }
        let authors = lock(&self.authors);
        match authors.get(&author).and_then(|a| a.streams.get(&msg.key)) {
            Some(tx) => {
                offer(tx, msg);
                Routed::Delivered
            }
            None => Routed::Unclaimed {
                author,
                cipher,
                msg,
            },
        }
    }

    /// Registers stream `key` of `author`: its messages go to the returned
    /// inbox until the [`Registration`] is dropped. A stream registered
    /// twice replaces the first registration's inbox.
    pub fn register(
        self: &Arc<Self>,
        author: PublicKey,
        cipher: Cipher,
        key: &str,
    ) -> (mpsc::Receiver<Message>, Registration) {
        let (tx, rx) = mpsc::channel(STREAM_INBOX);
        lock(&self.authors)
            .entry(author)
            .or_insert_with(|| Author {
                cipher,
                streams: HashMap::new(),
            })
            .streams
            .insert(key.to_string(), tx);
        let registration = Registration {
            demux: Arc::downgrade(self),
            author,
            key: key.to_string(),
        };
        (rx, registration)
    }

    /// Streams of `author` registered now.
    pub fn streams_of(&self, author: &PublicKey) -> usize {
        lock(&self.authors)
            .get(author)
            .map_or(0, |a| a.streams.len())
    }

    fn forget(&self, author: &PublicKey, key: &str) {
        let mut authors = lock(&self.authors);
        if let Some(a) = authors.get_mut(author) {
            a.streams.remove(key);
            if a.streams.is_empty() && !self.keep_idle_authors {
                authors.remove(author);
            }
        }
    }
}

/// A stream's place in the [`Demux`]; dropping it removes the stream.
pub struct Registration {
    demux: Weak<Demux>,
    author: PublicKey,
    key: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(demux) = self.demux.upgrade() {
            demux.forget(&self.author, &self.key);
        }
    }
}

/// Hands `msg` to a stream's inbox without waiting; a full inbox drops it.
pub fn offer(tx: &mpsc::Sender<Message>, msg: Message) {
    if let Err(mpsc::error::TrySendError::Full(m)) = tx.try_send(msg) {
        log::debug!("stream {}: inbox full, {} dropped", m.key, m.kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{build_stream_event, MessageType};

    fn event_from(author: &Keys, to: &Keys, msg: &Message) -> Event {
        let cipher = Cipher::derive(author.secret_key(), &to.public_key()).unwrap();
        build_stream_event(author, &to.public_key(), cipher.seal(msg).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn routes_by_author_and_stream_key() {
        let exit = Keys::generate();
        let (a, b) = (Keys::generate(), Keys::generate());
        let demux = Demux::new(exit.clone(), false, Sender::Entry);
        let cipher = demux.cipher_for(&a.public_key()).unwrap();
        let (mut rx, reg) = demux.register(a.public_key(), cipher, "k1");
        let data = Message::new("k1", MessageType::Data);
        assert!(matches!(
            demux.route(&event_from(&a, &exit, &data)),
            Routed::Delivered
        ));
        assert_eq!(rx.recv().await.unwrap(), data);
        // The same stream key from another author is not this stream.
        match demux.route(&event_from(&b, &exit, &data)) {
            Routed::Unclaimed { author, msg, .. } => {
                assert_eq!(author, b.public_key());
                assert_eq!(msg, data);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(demux.streams_of(&a.public_key()), 1);
        drop(reg);
        assert_eq!(demux.streams_of(&a.public_key()), 0);
        assert!(matches!(
            demux.route(&event_from(&a, &exit, &data)),
            Routed::Unclaimed { .. }
        ));
    }

    #[test]
    fn events_that_do_not_open_are_dropped() {
        let exit = Keys::generate();
        let a = Keys::generate();
        let demux = Demux::new(exit.clone(), true, Sender::Entry);
        let other = Keys::generate();
        // Sealed for another recipient: the MAC does not verify here.
        let ev = event_from(&a, &other, &Message::new("k", MessageType::Data));
        assert!(matches!(demux.route(&ev), Routed::Dropped));
        let keyless = event_from(&a, &exit, &Message::new("", MessageType::Data));
        assert!(matches!(demux.route(&keyless), Routed::Dropped));
    }
}
