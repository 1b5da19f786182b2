//! Message decoding: the JSON inside an event, and event content (base64 of
//! a NIP-44 v2 payload) as `Cipher::open` sees it.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use nostr::nips::nip44::v2::{self as nip44v2, ConversationKey};
use nostr::{Keys, SecretKey};
use nws_protocol::frame::{self, Sender};
use nws_protocol::{Cipher, CodecError, Framing, Message, MAX_PLAINTEXT};

/// Two fixed key pairs and the ciphers between them (derived once: ECDH is
/// the slow part and says nothing new per input).
pub(crate) struct Fixed {
    /// Alice's cipher toward Bob.
    pub alice: Cipher,
    /// Bob's cipher toward Alice (the same conversation key).
    pub bob: Cipher,
    /// The raw conversation key, to build payloads by hand.
    pub key: ConversationKey,
}

pub(crate) fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let a = Keys::new(SecretKey::from_slice(&[0x11; 32]).expect("valid secret"));
        let b = Keys::new(SecretKey::from_slice(&[0x22; 32]).expect("valid secret"));
        Fixed {
            alice: Cipher::derive(a.secret_key(), &b.public_key()).expect("derive"),
            bob: Cipher::derive(b.secret_key(), &a.public_key()).expect("derive"),
            key: ConversationKey::derive(a.secret_key(), &b.public_key()).expect("derive"),
        }
    })
}

/// Target `message_json`: `data` as decrypted message JSON.
///
/// A message that parses serializes to JSON that parses back to the same
/// message, and survives sealing and opening unchanged.
pub fn message_json(data: &[u8]) {
    let Ok(msg) = Message::from_json(data) else {
        return;
    };
    let json = msg.to_json();
    let again = Message::from_json(json.as_bytes())
        .unwrap_or_else(|e| panic!("own JSON does not parse: {e}\n{json}"));
    assert_eq!(again, msg, "JSON round trip changed the message: {json}");
    let f = fixed();
    match f.alice.seal(&msg) {
        Ok(content) => {
            let opened = f
                .bob
                .open(&content)
                .unwrap_or_else(|e| panic!("sealed message does not open: {e}"));
            assert_eq!(opened, msg, "seal/open changed the message");
        }
        Err(CodecError::TooLarge { size, max }) => {
            assert!(
                size > max && max == MAX_PLAINTEXT,
                "bogus TooLarge {size} {max}"
            )
        }
        Err(e) => panic!("sealing a parsed message failed: {e}"),
    }
}

/// Target `frame`: `data` as a decrypted version-3 frame
/// (`nws_protocol::frame::decode`).
///
/// A frame that decodes encodes to a frame that decodes to the same message
/// and sender, which survives sealing and opening unchanged; one that does
/// not decode is an error, never a panic.
pub fn frame(data: &[u8]) {
    let Ok((msg, sender)) = frame::decode(data) else {
        return;
    };
    let encoded = frame::encode(&msg, sender)
        .unwrap_or_else(|e| panic!("a decoded message does not encode: {e}\n{msg:?}"));
    let again = frame::decode(&encoded)
        .unwrap_or_else(|e| panic!("own frame does not decode: {e}\n{msg:?}"));
    assert_eq!(again, (msg.clone(), sender), "frame round trip changed the message");
    let f = fixed();
    match f.alice.seal_as(&msg, Framing::Binary(sender)) {
        Ok(content) => {
            let opened = f
                .bob
                .open_framed(&content)
                .unwrap_or_else(|e| panic!("sealed frame does not open: {e}"));
            assert_eq!(opened, (msg, Some(sender)), "seal/open changed the frame");
        }
        Err(CodecError::TooLarge { size, max }) => {
            assert!(size > max && max == MAX_PLAINTEXT, "bogus TooLarge {size} {max}")
        }
        Err(e) => panic!("sealing a decoded frame failed: {e}"),
    }
    // The other sender bit is the only difference.
    let other = match sender {
        Sender::Entry => Sender::Exit,
        Sender::Exit => Sender::Entry,
    };
    let flipped = frame::encode(&again.0, other).expect("encodes");
    assert_eq!(frame::decode(&flipped).expect("decodes").1, other);
}

/// Target `nip44_open`: the first byte picks what the rest is.
///
/// * 0: event content as text, opened as is;
/// * 1: a NIP-44 payload (version byte, nonce, ciphertext, MAC), base64'd;
/// * 2: a plaintext, sealed properly, then opened (the JSON path after decryption);
/// * 3: a plaintext sealed properly, then one byte of the payload changed
///   (position and XOR mask from the next two bytes): must never open.
pub fn nip44_open(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixed();
    match mode % 4 {
        0 => {
            let _ = f.bob.open(&String::from_utf8_lossy(rest));
        }
        1 => {
            let _ = f.bob.open(&BASE64.encode(rest));
        }
        2 => {
            let Ok(payload) = nip44v2::encrypt_to_bytes(&f.key, rest) else {
                return;
            };
            // The plaintext is a version-3 frame or JSON, by its first byte.
            let expected = if frame::is_frame(rest) {
                frame::decode(rest).map(|(m, _)| m).ok()
            } else {
                Message::from_json(rest).ok()
            };
            match f.bob.open(&BASE64.encode(&payload)) {
                Ok(msg) => assert_eq!(expected, Some(msg)),
                Err(CodecError::Json(_) | CodecError::Frame(_)) => assert!(expected.is_none()),
                Err(e) => panic!("a properly sealed payload fails to decrypt: {e}"),
            }
        }
        _ => {
            let (Some(&pos), Some(&mask), Some(plain)) = (rest.first(), rest.get(1), rest.get(2..))
            else {
                return;
            };
            let Ok(mut payload) = nip44v2::encrypt_to_bytes(&f.key, plain) else {
                return;
            };
            let i = usize::from(pos) * payload.len() / 256;
            let mask = if mask == 0 { 1 } else { mask };
            payload[i] ^= mask;
            if let Ok(msg) = f.bob.open(&BASE64.encode(&payload)) {
                panic!("payload with byte {i} changed still opens: {msg:?}");
            }
        }
    }
}
