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
//! Nothing here touches the network: publishing and fetching the events is
//! the caller's job.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use nostr::{Event, EventBuilder, Keys, Kind, PublicKey, RelayUrl, Tag};
#[cfg(feature = "exit")]
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::Deserialize;

use crate::names::{encode_nostr_domain, NameError};
use crate::protocol::{
    Cipher, CodecError, Message, MessageType, KIND_EXIT_CERTIFICATE, KIND_EXIT_KEY_BACKUP,
};

/// The `type` of the key-backup message inside a kind-38335 event.
///
/// The reference implementation leaves `type` empty; readers (ours and
/// theirs) ignore it.
pub const KEY_BACKUP_TYPE: &str = "TLSKEY";

/// How long a generated certificate is valid, in days from now.
pub const VALIDITY_DAYS: i64 = 365;

/// How far back a generated certificate's validity starts, in minutes, to
/// tolerate clocks that run behind.
#[cfg(feature = "exit")]
const BACKDATE_MINUTES: i64 = 60;

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

/// Normalizes and checks a domain for a certificate: ASCII lower case, no
/// trailing dot, a valid DNS name (at most 253 octets, labels of at most
/// 63).
#[cfg(feature = "exit")]
fn normalize_domain(domain: &str) -> Result<String, TlsError> {
    let name = domain
        .strip_suffix('.')
        .unwrap_or(domain)
        .to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 || name.split('.').any(|l| l.len() > 63) {
        return Err(TlsError::InvalidDomain(domain.to_owned()));
    }
    rustls::pki_types::DnsName::try_from(name.as_str())
        .map_err(|_| TlsError::InvalidDomain(domain.to_owned()))?;
    Ok(name)
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
    /// Generates a self-signed certificate for `domains` (typically
    /// [`front_domains`]: the exit's `.nostr` domain and its bare
    /// `<pubkey label>.nostr`), with a fresh ECDSA P-256 key, valid from an
    /// hour ago for [`VALIDITY_DAYS`] days. Domains are lower-cased and a
    /// trailing dot is dropped; duplicates are kept once.
    ///
    /// # Errors
    ///
    /// [`TlsError::NoDomains`], [`TlsError::InvalidDomain`], or
    /// [`TlsError::Generate`].
    #[cfg(feature = "exit")]
    pub fn generate(domains: &[String]) -> Result<Self, TlsError> {
        let mut names: Vec<String> = Vec::with_capacity(domains.len());
        for domain in domains {
            let name = normalize_domain(domain)?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
        if names.is_empty() {
            return Err(TlsError::NoDomains);
        }
        let mut params = CertificateParams::default();
        params.subject_alt_names = names
            .into_iter()
            .map(|n| n.try_into().map(SanType::DnsName))
            .collect::<Result<Vec<_>, rcgen::Error>>()?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "NWS");
        dn.push(DnType::CommonName, "NWS exit");
        params.distinguished_name = dn;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(BACKDATE_MINUTES);
        params.not_after = now + time::Duration::days(VALIDITY_DAYS);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

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

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsConnector;

    use super::*;

    fn relay(url: &str) -> RelayUrl {
        RelayUrl::parse(url).expect("test relay URL is valid")
    }

    fn domains_of(keys: &Keys) -> Vec<String> {
        front_domains(&keys.public_key(), &[relay("ws://0.0.0.0:7777")])
            .expect("short relay URL fits a label")
    }

    /// Verifies `cert` for `name` at `now` against a verifier that trusts it.
    fn verify_for(cert: &FrontCertificate, name: &str, now: SystemTime) -> Result<(), String> {
        let mut roots = RootCertStore::empty();
        roots.add(cert.cert_der().unwrap()).unwrap();
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
        let since_epoch = now.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        verifier
            .verify_server_cert(
                &cert.cert_der().unwrap(),
                &[],
                &ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                UnixTime::since_unix_epoch(since_epoch),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn front_domains_are_full_and_bare() {
        let keys = Keys::generate();
        let d = domains_of(&keys);
        assert_eq!(d.len(), 2);
        assert!(
            d[0].starts_with("etpjkbpf60n30bhg5oo3kdpn6srg."),
            "{}",
            d[0]
        );
        assert!(d[0].ends_with(&d[1]));
        assert_eq!(d[1].len(), 52 + ".nostr".len());
        assert_eq!(
            front_domains(&keys.public_key(), &[]).unwrap(),
            vec![d[1].clone()]
        );
    }

    #[test]
    fn generated_certificate_names_the_domains() {
        let keys = Keys::generate();
        let domains = domains_of(&keys);
        let cert = FrontCertificate::generate(&domains).unwrap();
        assert!(cert.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(cert.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(!format!("{cert:?}").contains("BEGIN PRIVATE KEY"));
        let der = cert.cert_der().unwrap();
        let now = SystemTime::now();
        for domain in &domains {
            // dNSName SANs are stored as raw IA5String bytes.
            let raw = der.windows(domain.len()).any(|w| w == domain.as_bytes());
            assert!(raw, "{domain} not in the certificate");
            verify_for(&cert, domain, now).unwrap();
        }
        let err = verify_for(&cert, "other.nostr", now).unwrap_err();
        assert!(err.contains("not valid for name"), "{err}");
        // Valid for about a year, from about now.
        let day = Duration::from_secs(86_400);
        verify_for(&cert, &domains[0], now + 364 * day).unwrap();
        assert!(verify_for(&cert, &domains[0], now + 366 * day).is_err());
        assert!(verify_for(&cert, &domains[0], now - day).is_err());
    }

    #[test]
    fn rejects_bad_domain_lists() {
        assert!(matches!(
            FrontCertificate::generate(&[]),
            Err(TlsError::NoDomains)
        ));
        for bad in [
            "",
            "bad name.nostr",
            "-x..nostr",
            &"a".repeat(64),
            "x.nostr\n",
        ] {
            assert!(
                matches!(
                    FrontCertificate::generate(&[bad.to_owned()]),
                    Err(TlsError::InvalidDomain(_))
                ),
                "{bad:?} accepted"
            );
        }
        // Case and a trailing dot are normalized; duplicates collapse.
        let cert =
            FrontCertificate::generate(&["Example.NOSTR.".into(), "example.nostr".into()]).unwrap();
        verify_for(&cert, "example.nostr", SystemTime::now()).unwrap();
    }

    #[test]
    fn events_round_trip() {
        let keys = Keys::generate();
        let cert = FrontCertificate::generate(&domains_of(&keys)).unwrap();
        let cert_event = cert.certificate_event(&keys).unwrap();
        let backup = cert.key_backup_event(&keys).unwrap();

        assert_eq!(cert_event.kind, Kind::Custom(KIND_EXIT_CERTIFICATE));
        assert_eq!(cert_event.content, cert.cert_pem);
        assert_eq!(backup.kind, Kind::Custom(KIND_EXIT_KEY_BACKUP));
        for ev in [&cert_event, &backup] {
            assert_eq!(ev.pubkey, keys.public_key());
            let tagged: Vec<_> = ev.tags.public_keys().copied().collect();
            assert_eq!(tagged, vec![keys.public_key()]);
            ev.verify().unwrap();
        }
        assert!(!backup.content.contains("PRIVATE"));

        // The backup is a stream-style message, readable as one.
        let cipher = Cipher::derive(keys.secret_key(), &keys.public_key()).unwrap();
        let message = cipher.open(&backup.content).unwrap();
        assert_eq!(message.kind.as_str(), KEY_BACKUP_TYPE);
        assert_eq!(message.data, cert.key_pem.as_bytes());
        assert!(uuid::Uuid::parse_str(&message.key).is_ok());

        let restored = FrontCertificate::from_events(&cert_event, &backup, &keys).unwrap();
        assert_eq!(restored, cert);
        assert_eq!(
            FrontCertificate::certificate_from_event(&cert_event, &keys.public_key()).unwrap(),
            cert.cert_pem
        );
    }

    #[test]
    fn restores_a_reference_style_backup() {
        // The reference exit writes no `type` and an all-zero key.
        let keys = Keys::generate();
        let cert = FrontCertificate::generate(&domains_of(&keys)).unwrap();
        let json = format!(
            r#"{{"key":"00000000-0000-0000-0000-000000000000","data":"{}"}}"#,
            BASE64.encode(cert.key_pem.as_bytes())
        );
        let content = nostr::nips::nip44::encrypt(
            keys.secret_key(),
            &keys.public_key(),
            json,
            nostr::nips::nip44::Version::V2,
        )
        .unwrap();
        let backup = EventBuilder::new(Kind::Custom(KIND_EXIT_KEY_BACKUP), content)
            .tag(Tag::public_key(keys.public_key()))
            .allow_self_tagging()
            .sign_with_keys(&keys)
            .unwrap();
        let cert_event = cert.certificate_event(&keys).unwrap();
        let restored = FrontCertificate::from_events(&cert_event, &backup, &keys).unwrap();
        assert_eq!(restored, cert);
    }

    #[test]
    fn rejects_foreign_or_mismatched_events() {
        let keys = Keys::generate();
        let other = Keys::generate();
        let cert = FrontCertificate::generate(&domains_of(&keys)).unwrap();
        let cert_event = cert.certificate_event(&keys).unwrap();
        let backup = cert.key_backup_event(&keys).unwrap();

        // Someone else's certificate event is not the exit's.
        let foreign = cert.certificate_event(&other).unwrap();
        assert!(matches!(
            FrontCertificate::certificate_from_event(&foreign, &keys.public_key()),
            Err(TlsError::WrongAuthor { .. })
        ));
        assert!(matches!(
            FrontCertificate::from_events(&foreign, &backup, &keys),
            Err(TlsError::WrongAuthor { .. })
        ));
        // Both events of another key: wrong author for `keys`.
        let other_backup = cert.key_backup_event(&other).unwrap();
        assert!(matches!(
            FrontCertificate::from_events(&cert_event, &other_backup, &keys),
            Err(TlsError::WrongAuthor { .. })
        ));
        // Swapped events: wrong kinds.
        assert!(matches!(
            FrontCertificate::from_events(&backup, &cert_event, &keys),
            Err(TlsError::WrongKind {
                expected: 38334,
                got: 38335
            })
        ));
        // Right author, but no p tag naming it.
        let untagged =
            EventBuilder::new(Kind::Custom(KIND_EXIT_CERTIFICATE), cert.cert_pem.clone())
                .tag(Tag::public_key(other.public_key()))
                .sign_with_keys(&keys)
                .unwrap();
        assert!(matches!(
            FrontCertificate::certificate_from_event(&untagged, &keys.public_key()),
            Err(TlsError::MissingPTag)
        ));
        // Tampered content: the signature no longer verifies.
        let mut tampered = cert_event.clone();
        tampered.content.push(' ');
        assert!(matches!(
            FrontCertificate::certificate_from_event(&tampered, &keys.public_key()),
            Err(TlsError::BadSignature(_))
        ));
        // Not a certificate at all.
        let junk = EventBuilder::new(Kind::Custom(KIND_EXIT_CERTIFICATE), "hello")
            .tag(Tag::public_key(keys.public_key()))
            .allow_self_tagging()
            .sign_with_keys(&keys)
            .unwrap();
        assert!(matches!(
            FrontCertificate::certificate_from_event(&junk, &keys.public_key()),
            Err(TlsError::Pem(_))
        ));
        // A key backup that belongs to another certificate.
        let second = FrontCertificate::generate(&domains_of(&keys)).unwrap();
        let second_backup = second.key_backup_event(&keys).unwrap();
        assert!(matches!(
            FrontCertificate::from_events(&cert_event, &second_backup, &keys),
            Err(TlsError::Rustls(_))
        ));
    }

    /// Runs a TLS handshake over an in-memory pipe and echoes one message;
    /// returns the client's result and the ALPN protocol the server chose.
    async fn handshake(
        server: &FrontCertificate,
        client: Arc<ClientConfig>,
        name: &str,
    ) -> (Result<Vec<u8>, std::io::Error>, Option<Vec<u8>>) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = server.acceptor().unwrap();
        let connector = TlsConnector::from(client);
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let server_side = async move {
            let mut tls = acceptor.accept(server_io).await?;
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await?;
            tls.write_all(&buf).await?;
            tls.flush().await?;
            Ok::<_, std::io::Error>(alpn)
        };
        let client_side = async move {
            let mut tls = connector.connect(name, client_io).await?;
            tls.write_all(b"hello").await?;
            tls.flush().await?;
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf.to_vec())
        };
        let (server_result, client_result) = tokio::join!(server_side, client_side);
        (client_result, server_result.ok().flatten())
    }

    #[tokio::test]
    async fn handshake_succeeds_with_the_pinned_certificate() {
        let keys = Keys::generate();
        let domains = domains_of(&keys);
        let cert = FrontCertificate::generate(&domains).unwrap();
        let client = client_config_trusting(&cert.cert_pem).unwrap();
        for name in &domains {
            let (echo, _) = handshake(&cert, client.clone(), name).await;
            assert_eq!(echo.unwrap(), b"hello");
        }
        // A client offering ALPN gets http/1.1.
        let mut with_alpn = (*client).clone();
        with_alpn.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let (echo, alpn) = handshake(&cert, Arc::new(with_alpn), &domains[1]).await;
        assert_eq!(echo.unwrap(), b"hello");
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        // A restored certificate serves the same way.
        let restored = FrontCertificate::from_events(
            &cert.certificate_event(&keys).unwrap(),
            &cert.key_backup_event(&keys).unwrap(),
            &keys,
        )
        .unwrap();
        let (echo, _) = handshake(&restored, client, &domains[0]).await;
        assert_eq!(echo.unwrap(), b"hello");
    }

    #[tokio::test]
    async fn handshake_fails_with_another_certificate_or_name() {
        let keys = Keys::generate();
        let domains = domains_of(&keys);
        let cert = FrontCertificate::generate(&domains).unwrap();
        let impostor = FrontCertificate::generate(&domains).unwrap();
        let trusting_other = client_config_trusting(&impostor.cert_pem).unwrap();
        let (echo, _) = handshake(&cert, trusting_other, &domains[0]).await;
        let err = echo.unwrap_err();
        assert!(
            err.to_string().contains("invalid peer certificate"),
            "{err}"
        );

        let trusting = client_config_trusting(&cert.cert_pem).unwrap();
        let (echo, _) = handshake(&cert, trusting, "other.nostr").await;
        assert!(echo.is_err());
    }

    #[test]
    fn client_config_needs_a_certificate() {
        assert!(matches!(
            client_config_trusting("not pem"),
            Err(TlsError::Pem(_))
        ));
        let bad = FrontCertificate {
            cert_pem: String::new(),
            key_pem: String::new(),
        };
        assert!(matches!(bad.server_config(), Err(TlsError::Pem(_))));
    }
}

/// Why [`fetch_certificate`] found no usable certificate.
#[derive(Debug, thiserror::Error)]
pub enum FetchCertificateError {
    /// The name is not a `.nostr` domain, npub or nprofile, or does not decode.
    #[error("`{0}` is not a usable .nostr, npub or nprofile name")]
    BadName(String),
    /// The relays could not be used.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    /// No kind-38334 event of the exit on those relays.
    #[error("no certificate (kind 38334) of {0} on the relays")]
    NotFound(PublicKey),
    /// The newest event does not verify or holds no certificate.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Fetches an exit's front certificate (PEM) from its newest kind-38334
/// event and checks it ([`FrontCertificate::certificate_from_event`]:
/// kind, author = the exit named by `name`, `p` tag, signature).
///
/// `name` is a `.nostr` domain, npub or nprofile; its relays are used, or
/// `relays` if it carries none. Waits at most `timeout` for the relays.
/// (This is the one function of this module that uses the network.)
///
/// # Errors
///
/// [`FetchCertificateError`].
pub async fn fetch_certificate(
    name: &str,
    relays: &[RelayUrl],
    timeout: std::time::Duration,
) -> Result<String, FetchCertificateError> {
    let exit = match crate::names::parse_host(name) {
        Ok(Some(exit)) => exit,
        Ok(None) | Err(_) => return Err(FetchCertificateError::BadName(name.to_string())),
    };
    let relays = if exit.relays.is_empty() {
        relays.to_vec()
    } else {
        exit.relays.clone()
    };
    let transport = crate::transport::Transport::new();
    let filter = nostr::Filter::new()
        .author(exit.public_key)
        .kind(Kind::Custom(KIND_EXIT_CERTIFICATE))
        .pubkey(exit.public_key);
    let fetched = transport.fetch(filter, &relays, timeout).await;
    transport.shutdown().await;
    let events = fetched?;
    let newest = events
        .first()
        .ok_or(FetchCertificateError::NotFound(exit.public_key))?;
    Ok(FrontCertificate::certificate_from_event(
        newest,
        &exit.public_key,
    )?)
}
