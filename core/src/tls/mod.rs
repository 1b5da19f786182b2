//! The exit's HTTPS front certificate, published on Nostr.
//!
//! An exit may terminate TLS itself for its `.nostr` domain, so that an
//! application speaking HTTPS to `https://<…>.nostr/` gets a certificate for
//! that name. No public CA issues certificates for `.nostr`, so the exit
//! makes a self-signed one ([`FrontCertificate::generate`]) and publishes it
//! (`PROTOCOL.md`, "Event kinds"):
//!
//! * kind **38334**: content = the PEM certificate, plain text; tag
//!   `["p", <exit's own hex pubkey>]`. Entries and applications fetch it
//!   (filter: author = exit, kind 38334, `#p` = exit) and pin it
//!   ([`FrontCertificate::certificate_from_event`], [`client_config_trusting`]).
//! * kind **38335**: a backup of the private key so the exit can reuse the
//!   certificate after a restart: content = NIP-44 v2 ciphertext, from the
//!   exit to itself, of a stream-style JSON message
//!   `{"key":"<uuid>","type":"TLSKEY","data":"<base64 of the PEM key>"}`;
//!   tag `["p", <exit's own hex pubkey>]`.
//!
//! Compatibility with the reference implementation (asmogo/nws): its exit
//! writes the backup message with no `type` (Go omits the empty string) and
//! an all-zero `key`, and reads only `data`. We write `type` =
//! [`KEY_BACKUP_TYPE`] (ignored by the reference) and read any message with
//! a `data` field, whatever its `key` and `type`, so either exit can restore
//! the other's backup. The reference generates an RSA-2048 key (PEM
//! `RSA PRIVATE KEY`, PKCS#1); we generate ECDSA P-256 (`PRIVATE KEY`,
//! PKCS#8) and accept PKCS#1, PKCS#8 and SEC1 keys when restoring.
//!
//! Rooms: this file (the certificate, its TLS configurations, errors);
//! `events` (the two events, reading them back); `generate` (making a
//! certificate, exit only: the entry side must not link rcgen); `fetch`
//! (an entry's or application's lookup of an exit's certificate, the one
//! place here that uses the network: publishing is the exit's job).

use std::sync::Arc;

use nostr::{PublicKey, RelayUrl};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::names::{encode_nostr_domain, NameError};
use crate::protocol::CodecError;

mod events;
mod fetch;
#[cfg(feature = "exit")]
mod generate;
#[cfg(all(test, feature = "exit"))]
mod tests;

pub use fetch::{fetch_certificate, FetchCertificateError};

/// The `type` of the key-backup message inside a kind-38335 event.
///
/// The reference implementation leaves `type` empty; readers (ours and
/// theirs) ignore it.
pub const KEY_BACKUP_TYPE: &str = "TLSKEY";

/// How long a generated certificate is valid, in days from now.
pub const VALIDITY_DAYS: i64 = 365;

/// The ALPN protocol the front server offers (RFC 7301).
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// Errors making, publishing, restoring or using a front certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// No domain was given to [`FrontCertificate::generate`].
    #[error("a certificate needs at least one domain")]
    NoDomains,
    /// A domain is not a valid DNS name (RFC 1035 / RFC 5280 dNSName).
    #[error("`{0}` is not a valid DNS name for a certificate")]
    InvalidDomain(String),
    /// The exit's `.nostr` name cannot be written (relay URL too long).
    #[error(transparent)]
    Name(#[from] NameError),
    /// The certificate could not be generated.
    #[cfg(feature = "exit")]
    #[error("cannot generate the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM text holds no certificate or no private key of a known kind.
    #[error("bad PEM: {0}")]
    Pem(String),
    /// rustls refused the certificate or key (for example a key that does
    /// not belong to the certificate), or a configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// An event is not of the expected kind.
    #[error("expected an event of kind {expected}, got kind {got}")]
    WrongKind {
        /// The kind expected (38334 or 38335).
        expected: u16,
        /// The event's kind.
        got: u16,
    },
    /// An event is not authored by the expected key.
    #[error("event is authored by {got}, not by {expected}")]
    WrongAuthor {
        /// The key that should have signed it.
        expected: PublicKey,
        /// The event's author.
        got: PublicKey,
    },
    /// An event lacks the `["p", <author>]` tag.
    #[error("event has no `p` tag naming its author")]
    MissingPTag,
    /// An event's id or signature does not verify (NIP-01).
    #[error("event signature does not verify: {0}")]
    BadSignature(String),
    /// Sealing the key backup, or signing an event, failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The key backup cannot be decrypted or does not hold a PEM key.
    #[error("bad key backup: {0}")]
    KeyBackup(String),
}

/// A TLS certificate and its private key, both PEM (RFC 7468).
///
/// Generated certificates are self-signed, ECDSA P-256 with SHA-256, valid
/// for [`VALIDITY_DAYS`] days, for server authentication, with one
/// subjectAltName dNSName per domain (RFC 5280 §4.2.1.6).
#[derive(Clone, PartialEq, Eq)]
pub struct FrontCertificate {
    /// The certificate, one `-----BEGIN CERTIFICATE-----` block.
    pub cert_pem: String,
    /// The private key, a `PRIVATE KEY` (PKCS#8), `RSA PRIVATE KEY` (PKCS#1)
    /// or `EC PRIVATE KEY` (SEC1) block.
    pub key_pem: String,
}

impl std::fmt::Debug for FrontCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontCertificate")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The domains an exit's front certificate names: its full `.nostr` domain
/// with `relays` (`<relay labels>.<pubkey label>.nostr`) and the bare
/// `<pubkey label>.nostr` (52-character label), without duplicates.
///
/// With many relays the full domain can exceed the 253-octet DNS limit;
/// [`FrontCertificate::generate`] then refuses it, so pass the relays the
/// exit advertises in its name, not every relay it uses.
///
/// # Errors
///
/// [`TlsError::Name`] if a relay URL is too long for a DNS label.
pub fn front_domains(public_key: &PublicKey, relays: &[RelayUrl]) -> Result<Vec<String>, TlsError> {
    let full = encode_nostr_domain(public_key, relays)?;
    let bare = encode_nostr_domain(public_key, &[])?;
    Ok(if full == bare {
        vec![bare]
    } else {
        vec![full, bare]
    })
}

/// The `ring` crypto provider (the one already built for the relay
/// transport; no aws-lc-rs).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM text, in order.
fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(format!("certificate: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

impl FrontCertificate {
    /// The certificate in DER (the first block of `cert_pem`).
    ///
    /// # Errors
    ///
    /// [`TlsError::Pem`] if `cert_pem` holds no certificate.
    pub fn cert_der(&self) -> Result<CertificateDer<'static>, TlsError> {
        parse_certs(&self.cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| TlsError::Pem("no CERTIFICATE block".into()))
    }

    /// A rustls server configuration serving this certificate: TLS 1.2 and
    /// 1.3 with the `ring` provider, no client authentication, ALPN
    /// `http/1.1`.
    ///
    /// # Errors
    ///
    /// [`TlsError::Pem`] for unreadable PEM, [`TlsError::Rustls`] if the key
    /// does not match the certificate or is of an unsupported kind.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let certs = parse_certs(&self.cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| TlsError::Pem(format!("private key: {e}")))?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
        Ok(Arc::new(config))
    }

    /// A tokio TLS acceptor over [`FrontCertificate::server_config`].
    ///
    /// # Errors
    ///
    /// As [`FrontCertificate::server_config`].
    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        Ok(tokio_rustls::TlsAcceptor::from(self.server_config()?))
    }
}

/// A rustls client configuration (the `ring` provider, TLS 1.2 and 1.3, no
/// client certificate, no ALPN) that trusts exactly the certificates in
/// `cert_pem` as roots, and nothing else: for tests and for applications
/// pinning an exit's front certificate. The usual name check still applies,
/// so connect with one of the certificate's domains as server name.
///
/// # Errors
///
/// [`TlsError::Pem`] if `cert_pem` holds no certificate,
/// [`TlsError::Rustls`] if one cannot serve as a trust anchor.
pub fn client_config_trusting(cert_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(cert_pem)? {
        roots.add(cert)?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
