//! Making a front certificate (exit only: rcgen is not linked into the
//! entry side).

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::{FrontCertificate, TlsError, VALIDITY_DAYS};

/// How far back a generated certificate's validity starts, in minutes, to
/// tolerate clocks that run behind.
const BACKDATE_MINUTES: i64 = 60;

/// Normalizes and checks a domain for a certificate: ASCII lower case, no
/// trailing dot, a valid DNS name (at most 253 octets, labels of at most
/// 63).
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
}
