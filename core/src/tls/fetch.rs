//! Fetching an exit's published front certificate, for entries and
//! applications that pin it.

use nostr::{Kind, PublicKey, RelayUrl};

use super::{FrontCertificate, TlsError};
use crate::protocol::KIND_EXIT_CERTIFICATE;

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
