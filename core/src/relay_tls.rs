//! TLS for relay connections (`wss://`) and NIP-11 fetches: rustls with the
//! `ring` provider, the Mozilla root store (webpki-roots), and optionally
//! extra certificate authorities an operator trusts (a private relay, a
//! test CA): PEM files named by [`add_extra_ca_file`] or by the
//! `NWS_RELAY_CA` environment variable (one path, or several separated by
//! the platform's path separator, `:` on Unix).

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// Extra CA certificates (DER) added with [`add_extra_ca_file`].
static EXTRA: Mutex<Vec<rustls::pki_types::CertificateDer<'static>>> = Mutex::new(Vec::new());
/// The client configuration, built on first use and again after a CA is added.
static CONFIG: Mutex<Option<Arc<rustls::ClientConfig>>> = Mutex::new(None);

/// Errors reading an extra CA file.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The file could not be read.
    #[error("cannot read CA file {0}: {1}")]
    Read(String, std::io::Error),
    /// The file holds no PEM certificate, or one that does not parse.
    #[error("no usable PEM certificate in {0}")]
    NoCertificate(String),
}

/// Trusts the CA certificates in the PEM file at `path` for every relay
/// connection opened from now on, besides the Mozilla roots. Returns how
/// many certificates were added.
///
/// # Errors
///
/// [`CaError`] when the file cannot be read or holds no certificate.
pub fn add_extra_ca_file(path: &Path) -> Result<usize, CaError> {
    let name = path.display().to_string();
    let pem = std::fs::read(path).map_err(|e| CaError::Read(name.clone(), e))?;
    let certs = parse_pem(&pem);
    if certs.is_empty() {
        return Err(CaError::NoCertificate(name));
    }
    let n = certs.len();
    lock(&EXTRA).extend(certs);
    *lock(&CONFIG) = None;
    Ok(n)
}

fn parse_pem(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// The TLS client configuration for relays.
pub fn client_config() -> Arc<rustls::ClientConfig> {
    let mut config = lock(&CONFIG);
    if let Some(c) = config.as_ref() {
        return Arc::clone(c);
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in lock(&EXTRA).iter() {
        if let Err(e) = roots.add(cert.clone()) {
            log::warn!("extra CA certificate not usable: {e}");
        }
    }
    if let Some(paths) = std::env::var_os("NWS_RELAY_CA") {
        for path in std::env::split_paths(&paths) {
            match std::fs::read(&path) {
                Ok(pem) => {
                    for cert in parse_pem(&pem) {
                        if let Err(e) = roots.add(cert) {
                            log::warn!("NWS_RELAY_CA {}: {e}", path.display());
                        }
                    }
                }
                Err(e) => log::warn!("NWS_RELAY_CA {}: {e}", path.display()),
            }
        }
    }
    let built = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let built = Arc::new(built);
    *config = Some(Arc::clone(&built));
    built
}
