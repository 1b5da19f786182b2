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
use nostr::{Event, Keys, PublicKey, SecretKey, Tag, Tags, Timestamp};

use crate::frame::{self, Sender};
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
    /// The plaintext starts like a version-3 frame but is not one.
    #[error("malformed version-3 frame: {0}")]
    Frame(String),
    /// A stream event's signature or id does not verify, and nothing else
    /// proves its author (see [`open_stream_event`]).
    #[error("the event's id or signature does not verify: {0}")]
    Unverified(String),
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

    /// Encrypts a message as JSON into event content (base64 of the NIP-44
    /// v2 payload): [`Cipher::seal_as`] with [`Framing::Json`].
    pub fn seal(&self, msg: &Message) -> Result<String, CodecError> {
        self.seal_as(msg, Framing::Json)
    }

    /// Encrypts a message into event content in `framing`: JSON (legacy and
    /// version 2) or a version-3 binary frame ([`crate::frame`]).
    ///
    /// # Errors
    ///
    /// [`CodecError::TooLarge`] over 65,408 bytes of plaintext,
    /// [`CodecError::Frame`] for fields a frame cannot hold,
    /// [`CodecError::Encrypt`].
    pub fn seal_as(&self, msg: &Message, framing: Framing) -> Result<String, CodecError> {
        let plain = match framing {
            Framing::Json => msg.to_json().into_bytes(),
            Framing::Binary(sender) => frame::encode(msg, sender)?,
        };
        if plain.len() > MAX_PLAINTEXT {
            return Err(CodecError::TooLarge {
                size: plain.len(),
                max: MAX_PLAINTEXT,
            });
        }
        let payload = nip44v2::encrypt_to_bytes(&self.key, &plain)
            .map_err(|e| CodecError::Encrypt(e.to_string()))?;
        Ok(BASE64.encode(payload))
    }

    /// Decrypts event content and parses the message inside, whether JSON
    /// or a version-3 frame: [`Cipher::open_framed`] without the sender.
    pub fn open(&self, content: &str) -> Result<Message, CodecError> {
        self.open_framed(content).map(|(m, _)| m)
    }

    /// Decrypts event content and parses the message inside; for a
    /// version-3 frame also which peer sealed it (`None` for JSON, which
    /// does not say).
    ///
    /// Errors: [`CodecError::Decrypt`] when the content is not base64, the payload's
    /// version byte is not 2 (NIP-44), or the MAC does not match; [`CodecError::Json`]
    /// or [`CodecError::Frame`] when the plaintext is not a message.
    pub fn open_framed(&self, content: &str) -> Result<(Message, Option<Sender>), CodecError> {
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
        if frame::is_frame(&plain) {
            let (m, sender) = frame::decode(&plain)?;
            return Ok((m, Some(sender)));
        }
        Message::from_json(&plain).map(|m| (m, None))
    }
}

/// How a message is written inside the NIP-44 payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The JSON message (legacy and version 2).
    Json,
    /// A version-3 binary frame, sealed by this side.
    Binary(Sender),
}

/// Opens a stream event from `ev.pubkey` addressed to us and proves its
/// author, the one way stream events are accepted (`docs/PROTOCOL.md`,
/// "Authenticating stream events").
///
/// A version-3 frame whose sender bit names `peer_side`, other than
/// `CONNECT` and `CONNECTR`, is accepted on its NIP-44 MAC alone: only the
/// holders of our key or the author's can make the conversation key, and
/// the bit (inside the MAC) says it was not our own event reflected back.
/// Anything else (JSON of version 2 and legacy, every `CONNECT`) must also
/// pass the event's id and Schnorr signature check (NIP-01).
///
/// # Errors
///
/// What [`Cipher::open_framed`] returns, or [`CodecError::Unverified`].
pub fn open_stream_event(
    cipher: &Cipher,
    ev: &Event,
    peer_side: Sender,
) -> Result<Message, CodecError> {
    let (msg, sender) = cipher.open_framed(&ev.content)?;
    let opening = matches!(
        msg.kind,
        crate::message::MessageType::Connect | crate::message::MessageType::ConnectReverse
    );
    if sender == Some(peer_side) && !opening {
        return Ok(msg);
    }
    if sender.is_some() && sender != Some(peer_side) {
        return Err(CodecError::Unverified(format!(
            "a frame sealed by the {:?} side came from the peer",
            sender.unwrap_or(peer_side)
        )));
    }
    ev.verify()
        .map_err(|e| CodecError::Unverified(e.to_string()))?;
    Ok(msg)
}

/// Signs a kind-28333 stream event carrying `content` to `recipient`
/// (tag `["p", <recipient hex>]`), authored by `keys`.
///
/// The event id (NIP-01) is computed once ([`event_id`]) and signed;
/// `EventBuilder` would compute it a second time to check it.
pub fn build_stream_event(
    keys: &Keys,
    recipient: &PublicKey,
    content: String,
) -> Result<Event, CodecError> {
    let pubkey = keys.public_key();
    let created_at = Timestamp::now();
    let kind = stream_kind();
    let tags = Tags::from_list(vec![Tag::public_key(*recipient)]);
    let id = event_id(&pubkey, created_at, kind, &tags, &content)?;
    let sig = keys.sign_schnorr(&nostr::secp256k1::Message::from_digest(id.to_bytes()));
    Ok(Event::new(id, pubkey, created_at, kind, tags, content, sig))
}

/// The NIP-01 id of an event: SHA-256 of the JSON array
/// `[0, pubkey, created_at, kind, tags, content]`, serialized exactly as
/// nostr does, hashed with the `sha2` crate (which uses the CPU's SHA
/// extensions where there are any; nostr's own hash does not).
///
/// # Errors
///
/// [`CodecError::Sign`] if the array cannot be serialized (never for
/// well-formed tags).
pub fn event_id(
    pubkey: &PublicKey,
    created_at: Timestamp,
    kind: nostr::Kind,
    tags: &Tags,
    content: &str,
) -> Result<nostr::EventId, CodecError> {
    use sha2::Digest as _;
    let json = serde_json::to_vec(&(0u8, pubkey, created_at, kind, tags, content))
        .map_err(|e| CodecError::Sign(e.to_string()))?;
    Ok(nostr::EventId::from_byte_array(
        sha2::Sha256::digest(&json).into(),
    ))
}

/// The first `p` tag of an event: the recipient of a stream event.
pub fn recipient(event: &Event) -> Option<PublicKey> {
    event.tags.public_keys().next().copied()
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
