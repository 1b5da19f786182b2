//! The front certificate on Nostr: the kind-38334 event that publishes it,
//! the kind-38335 event that backs up its key for the exit itself, and
//! reading both back with every check an untrusted event needs (module
//! docs of [`super`] for the formats).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use nostr::{Event, EventBuilder, Keys, Kind, PublicKey, Tag};
use serde::Deserialize;

use super::{parse_certs, FrontCertificate, TlsError, KEY_BACKUP_TYPE};
use crate::protocol::{
    Cipher, CodecError, Message, MessageType, KIND_EXIT_CERTIFICATE, KIND_EXIT_KEY_BACKUP,
};

/// Checks that `event` is a signed event of `kind` by `author`, p-tagged to
/// `author`.
fn check_event(event: &Event, kind: u16, author: &PublicKey) -> Result<(), TlsError> {
    let got = event.kind.as_u16();
    if got != kind {
        return Err(TlsError::WrongKind {
            expected: kind,
            got,
        });
    }
    if event.pubkey != *author {
        return Err(TlsError::WrongAuthor {
            expected: *author,
            got: event.pubkey,
        });
    }
    if !event.tags.public_keys().any(|p| p == author) {
        return Err(TlsError::MissingPTag);
    }
    event
        .verify()
        .map_err(|e| TlsError::BadSignature(e.to_string()))
}

/// The plaintext of a key backup, read leniently: only `data` matters
/// (the reference implementation writes no `type`).
#[derive(Deserialize)]
struct KeyBackupMessage {
    #[serde(default)]
    data: Option<String>,
}

impl FrontCertificate {
    /// The kind-38334 event publishing the certificate: content = `cert_pem`,
    /// tags `["p", <own hex pubkey>]` and `["d", ""]` (addressable, NIP-01),
    /// signed by the exit's `keys`.
    ///
    /// # Errors
    ///
    /// [`TlsError::Codec`] if signing fails.
    pub fn certificate_event(&self, keys: &Keys) -> Result<Event, TlsError> {
        EventBuilder::new(Kind::Custom(KIND_EXIT_CERTIFICATE), self.cert_pem.clone())
            .tag(Tag::public_key(keys.public_key()))
            // Kind 38334 is addressable (NIP-01): an empty `d` tag makes the
            // latest event replace the earlier ones; some relays
            // (nostr-relay-builder) reject addressable events without one.
            .tag(Tag::identifier(""))
            // rust-nostr drops p tags naming the author unless told not to.
            .allow_self_tagging()
            .sign_with_keys(keys)
            .map_err(|e| CodecError::Sign(e.to_string()).into())
    }

    /// The kind-38335 event backing up the private key: content = NIP-44 v2
    /// ciphertext from `keys` to itself of the message
    /// `{"key":"<fresh uuid>","type":"TLSKEY","data":"<base64 of key_pem>"}`,
    /// tag `["p", <own hex pubkey>]`, signed by `keys`. Only the holder of
    /// the exit's secret key can read it.
    ///
    /// # Errors
    ///
    /// [`TlsError::Codec`] if encryption or signing fails.
    pub fn key_backup_event(&self, keys: &Keys) -> Result<Event, TlsError> {
        let own = keys.public_key();
        let cipher = Cipher::derive(keys.secret_key(), &own)?;
        let mut message = Message::new(
            uuid::Uuid::new_v4().to_string(),
            MessageType::Unknown(KEY_BACKUP_TYPE.to_owned()),
        );
        message.data = self.key_pem.as_bytes().to_vec();
        let content = cipher.seal(&message)?;
        EventBuilder::new(Kind::Custom(KIND_EXIT_KEY_BACKUP), content)
            .tag(Tag::public_key(own))
            .tag(Tag::identifier(""))
            .allow_self_tagging()
            .sign_with_keys(keys)
            .map_err(|e| CodecError::Sign(e.to_string()).into())
    }

    /// Restores the certificate from the exit's own kind-38334 and
    /// kind-38335 events (for reuse after a restart).
    ///
    /// Both events must be of the right kind, authored by `keys`' public
    /// key, p-tagged to it and correctly signed; the backup must decrypt
    /// with `keys` and its key must belong to the certificate. Expiry is not
    /// checked here.
    ///
    /// # Errors
    ///
    /// [`TlsError::WrongKind`], [`TlsError::WrongAuthor`],
    /// [`TlsError::MissingPTag`], [`TlsError::BadSignature`],
    /// [`TlsError::KeyBackup`], [`TlsError::Pem`] or [`TlsError::Rustls`].
    pub fn from_events(cert: &Event, key_backup: &Event, keys: &Keys) -> Result<Self, TlsError> {
        let own = keys.public_key();
        let cert_pem = Self::certificate_from_event(cert, &own)?;
        check_event(key_backup, KIND_EXIT_KEY_BACKUP, &own)?;
        let plain = nostr::nips::nip44::decrypt(keys.secret_key(), &own, &key_backup.content)
            .map_err(|e| TlsError::KeyBackup(format!("cannot decrypt: {e}")))?;
        let message: KeyBackupMessage = serde_json::from_str(&plain)
            .map_err(|e| TlsError::KeyBackup(format!("malformed message: {e}")))?;
        let data = message
            .data
            .ok_or_else(|| TlsError::KeyBackup("message has no data".into()))?;
        let key = BASE64
            .decode(data.as_bytes())
            .map_err(|e| TlsError::KeyBackup(format!("data is not base64: {e}")))?;
        let key_pem = String::from_utf8(key)
            .map_err(|_| TlsError::KeyBackup("data is not PEM text".into()))?;
        let restored = Self { cert_pem, key_pem };
        // Parses both and checks that the key belongs to the certificate.
        restored.server_config()?;
        Ok(restored)
    }

    /// The PEM certificate from a kind-38334 event authored by `exit` (what
    /// an entry or application fetches to pin the exit's certificate).
    ///
    /// # Errors
    ///
    /// [`TlsError::WrongKind`], [`TlsError::WrongAuthor`],
    /// [`TlsError::MissingPTag`], [`TlsError::BadSignature`], or
    /// [`TlsError::Pem`] if the content holds no PEM certificate.
    pub fn certificate_from_event(event: &Event, exit: &PublicKey) -> Result<String, TlsError> {
        check_event(event, KIND_EXIT_CERTIFICATE, exit)?;
        parse_certs(&event.content)?;
        Ok(event.content.clone())
    }
}
