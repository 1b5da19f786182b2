//! Sealing a [`Message`] into stream-event content and back: the JSON text
//! encrypted with NIP-44 v2 under one stream's conversation key, then
//! base64 (`docs/PROTOCOL.md`); and the signed kind-28333 event that
//! carries it.
//!
//! A [`Cipher`] holds one stream's NIP-44 conversation key (derived once per
//! stream, never per event); [`build_stream_event`] signs the event.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use nostr::nips::nip44::v2::{self as nip44v2, ConversationKey};
use nostr::{Event, EventBuilder, Keys, PublicKey, SecretKey, Tag};

use crate::message::{stream_kind, Message, MAX_PLAINTEXT};

/// Errors turning event content into a [`Message`] and back.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// No conversation key exists between the two keys (NIP-44 ECDH failed).
    #[error("cannot derive the NIP-44 conversation key: {0}")]
    KeyDerivation(String),
    /// NIP-44 encryption failed (no randomness, say).
    #[error("cannot encrypt the message: {0}")]
    Encrypt(String),
    /// The event content is not a NIP-44 v2 payload for this conversation key
    /// (bad base64, wrong version byte, bad MAC, or wrong keys).
    #[error("cannot decrypt the event content: {0}")]
    Decrypt(String),
    /// The plaintext is not a JSON message of the expected shape.
    #[error("malformed message JSON: {0}")]
    Json(String),
    /// The message is larger than NIP-44 v2 can carry.
    #[error("message of {size} bytes exceeds the NIP-44 limit of {max} bytes")]
    TooLarge {
        /// Plaintext size in bytes.
        size: usize,
        /// Limit in bytes.
        max: usize,
    },
    /// Signing the event failed.
    #[error("cannot sign the event: {0}")]
    Sign(String),
}

/// One stream's NIP-44 v2 conversation key: derived once, used for every
/// event of the stream in both directions.
#[derive(Clone)]
pub struct Cipher {
    key: ConversationKey,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cipher(..)")
    }
}

/// The NIP-44 payload version byte this implementation seals and opens.
const NIP44_VERSION: u8 = 2;

impl Cipher {
    /// Derives the conversation key (ECDH of `secret_key` with `peer`, NIP-44 v2).
    pub fn derive(secret_key: &SecretKey, peer: &PublicKey) -> Result<Self, CodecError> {
        ConversationKey::derive(secret_key, peer)
            .map(|key| Self { key })
            .map_err(|e| CodecError::KeyDerivation(e.to_string()))
    }

    /// Encrypts a message into event content (base64 of the NIP-44 v2 payload).
    pub fn seal(&self, msg: &Message) -> Result<String, CodecError> {
        let json = msg.to_json();
        if json.len() > MAX_PLAINTEXT {
            return Err(CodecError::TooLarge {
                size: json.len(),
                max: MAX_PLAINTEXT,
            });
        }
        let payload = nip44v2::encrypt_to_bytes(&self.key, json.as_bytes())
            .map_err(|e| CodecError::Encrypt(e.to_string()))?;
        Ok(BASE64.encode(payload))
    }

    /// Decrypts event content and parses the message inside.
    ///
    /// Errors: [`CodecError::Decrypt`] when the content is not base64, the payload's
    /// version byte is not 2 (NIP-44), or the MAC does not match; [`CodecError::Json`]
    /// when the plaintext is not a message.
    pub fn open(&self, content: &str) -> Result<Message, CodecError> {
        let payload = BASE64
            .decode(content.as_bytes())
            .map_err(|e| CodecError::Decrypt(format!("content is not base64: {e}")))?;
        // NIP-44: the first payload byte is the version; only version 2 is ours to open.
        // (rust-nostr's v2 decrypt checks the MAC but not this byte.)
        match payload.first() {
            Some(&NIP44_VERSION) => {}
            Some(v) => {
                return Err(CodecError::Decrypt(format!(
                    "unsupported NIP-44 version {v} (expected {NIP44_VERSION})"
                )))
            }
            None => return Err(CodecError::Decrypt("empty payload".into())),
        }
        let plain = nip44v2::decrypt_to_bytes(&self.key, &payload)
            .map_err(|e| CodecError::Decrypt(e.to_string()))?;
        Message::from_json(&plain)
    }
}

/// Signs a kind-28333 stream event carrying `content` to `recipient`
/// (tag `["p", <recipient hex>]`), authored by `keys`.
pub fn build_stream_event(
    keys: &Keys,
    recipient: &PublicKey,
    content: String,
) -> Result<Event, CodecError> {
    EventBuilder::new(stream_kind(), content)
        .tag(Tag::public_key(*recipient))
        .sign_with_keys(keys)
        .map_err(|e| CodecError::Sign(e.to_string()))
}

/// The first `p` tag of an event: the recipient of a stream event.
pub fn recipient(event: &Event) -> Option<PublicKey> {
    event.tags.public_keys().next().copied()
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
