//! The HTTPS front: the certificate the exit serves for its `.nostr` names
//! (restored from its own events, or made and published once), and the
//! in-process TLS terminator a front stream is joined to.
//!
//! Restoring first matters: entries and applications pin the published
//! certificate, so a restart must not silently replace it.

use std::time::Duration;

use nostr::{Filter, Keys, Kind, RelayUrl};
use tokio::io::DuplexStream;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::ExitError;
use crate::names::encode_nostr_domain;
use crate::protocol::{KIND_EXIT_CERTIFICATE, KIND_EXIT_KEY_BACKUP};
use crate::tls::{front_domains, FrontCertificate};
use crate::transport::Transport;

/// How long the exit waits for its own certificate events at start.
const CERTIFICATE_FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// Buffer of the in-memory pipe between a stream and its TLS terminator, in
/// bytes.
const PIPE_BUFFER: usize = 64 * 1024;

/// The front certificate: the one the exit published earlier (its newest
/// kind-38334 and kind-38335 events on its relays), or a new one for its
/// `.nostr` names, published before it is used.
pub(super) async fn front_certificate(
    transport: &Transport,
    keys: &Keys,
    relays: &[RelayUrl],
) -> Result<FrontCertificate, ExitError> {
    let own = keys.public_key();
    let filter = Filter::new()
        .author(own)
        .kinds([
            Kind::Custom(KIND_EXIT_CERTIFICATE),
            Kind::Custom(KIND_EXIT_KEY_BACKUP),
        ])
        .pubkey(own);
    match transport
        .fetch(filter, relays, CERTIFICATE_FETCH_TIMEOUT)
        .await
    {
        Ok(events) => {
            // Newest first: the first of each kind is the current one.
            let cert = events
                .iter()
                .find(|e| e.kind.as_u16() == KIND_EXIT_CERTIFICATE);
            let key = events
                .iter()
                .find(|e| e.kind.as_u16() == KIND_EXIT_KEY_BACKUP);
            if let (Some(cert), Some(key)) = (cert, key) {
                match FrontCertificate::from_events(cert, key, keys) {
                    Ok(c) => {
                        log::info!("HTTPS front: reusing the published certificate");
                        return Ok(c);
                    }
                    Err(e) => log::warn!(
                        "HTTPS front: published certificate unusable ({e}); making a new one"
                    ),
                }
            }
        }
        Err(e) => log::warn!("HTTPS front: cannot fetch the published certificate ({e})"),
    }
    let domains = match front_domains(&own, relays) {
        Ok(d) => d,
        Err(_) => vec![encode_nostr_domain(&own, &[])?],
    };
    let cert = match FrontCertificate::generate(&domains) {
        Ok(c) => c,
        // With many relays the full name is too long for DNS: bare name only.
        Err(_) => FrontCertificate::generate(&[encode_nostr_domain(&own, &[])?])?,
    };
    for event in [cert.certificate_event(keys)?, cert.key_backup_event(keys)?] {
        let report = transport
            .publish_confirmed(&event, relays, Duration::from_secs(5))
            .await?;
        if report.accepted.is_empty() {
            log::warn!(
                "HTTPS front: no relay confirmed event kind {} ({:?})",
                event.kind.as_u16(),
                report.rejected
            );
        }
    }
    log::info!("HTTPS front: new certificate for {}", domains.join(", "));
    Ok(cert)
}

/// Terminates TLS for one front stream: returns the near end of a pipe to
/// join the stream to, and serves the far end with `acceptor` in a task of
/// its own, copying the decrypted bytes to and from `upstream` (the front's
/// target, already dialled) until either side closes.
pub(super) fn terminate(
    acceptor: &TlsAcceptor,
    mut upstream: TcpStream,
    key: &str,
) -> DuplexStream {
    let (near, far) = tokio::io::duplex(PIPE_BUFFER);
    let acceptor = acceptor.clone();
    let key = key.to_string();
    tokio::spawn(async move {
        match acceptor.accept(far).await {
            Ok(mut tls) => {
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            }
            Err(e) => log::info!("stream {key}: TLS handshake failed: {e}"),
        }
    });
    near
}
