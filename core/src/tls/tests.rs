//! Tests of the front certificate: generation, events, handshakes.

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use nostr::{EventBuilder, Keys, Kind, Tag};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::*;
use crate::protocol::{Cipher, KIND_EXIT_CERTIFICATE, KIND_EXIT_KEY_BACKUP};

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
    let untagged = EventBuilder::new(Kind::Custom(KIND_EXIT_CERTIFICATE), cert.cert_pem.clone())
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
