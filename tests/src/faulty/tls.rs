//! [`TestCa`]: a throwaway certificate authority and the `127.0.0.1`/`localhost`
//! server certificate it signed, for a [`FaultyRelay`](super::FaultyRelay)
//! listening with TLS; and [`Rewind`], a stream that gives back bytes already
//! read from it.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Names the server certificate is valid for.
pub const TEST_CA_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// A test certificate authority (fresh ECDSA P-256 keys, generated with rcgen)
/// and one server certificate it signed for [`TEST_CA_NAMES`]
/// (`localhost` and `127.0.0.1`).
///
/// Give it to [`FaultyRelay::start_tls`](super::FaultyRelay::start_tls); tell
/// clients to trust [`TestCa::ca_pem`] (written to a file with
/// [`TestCa::write_pem`], or as a rustls config with [`TestCa::client_config`]).
#[derive(Clone)]
pub struct TestCa {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl TestCa {
    /// Generates a CA and a server certificate signed by it.
    ///
    /// # Panics
    ///
    /// If rcgen fails (it does not with these fixed parameters).
    pub fn new() -> TestCa {
        Self::generate().expect("TestCa: rcgen failed")
    }

    fn generate() -> Result<TestCa, rcgen::Error> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "nws-tests CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let names: Vec<String> = TEST_CA_NAMES.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "nws-tests faulty relay");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        Ok(TestCa {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The server certificate (signed by the CA), PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes the CA certificate as PEM to `path` (created or replaced).
    ///
    /// # Errors
    ///
    /// Those of [`std::fs::write`].
    pub fn write_pem(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, &self.ca_pem)
    }

    /// A rustls server configuration (`ring` provider, TLS 1.2 and 1.3, no
    /// client authentication, no ALPN) serving the server certificate.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let cert = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .expect("TestCa: own certificate PEM");
        let key =
            PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("TestCa: own key PEM");
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("TestCa: key matches certificate");
        Arc::new(config)
    }

    /// A rustls client configuration (`ring` provider) trusting this CA and
    /// nothing else.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        let ca =
            CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).expect("TestCa: own CA PEM");
        roots.add(ca).expect("TestCa: CA is a valid trust anchor");
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("names", &TEST_CA_NAMES)
            .finish_non_exhaustive()
    }
}

/// The `ring` crypto provider (no aws-lc-rs).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A stream whose first reads return `prefix` (bytes already read from
/// `inner`), then read from `inner`; writes go to `inner`.
pub(super) struct Rewind<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub(super) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
