//! Names that address an NWS exit node (see `docs/PROTOCOL.md`, "Names that
//! address an exit").
//!
//! Three forms are accepted as the host part of a proxied address:
//!
//! * `npub1…` — a NIP-19 public key; no relay hints.
//! * `nprofile1…` — a NIP-19 profile: public key plus relay hints.
//! * `<relay label>.….<pubkey label>.nostr` — a `.nostr` domain. Every label
//!   is lower-case RFC 4648 §7 base32hex ("extended hex", alphabet `0-9a-v`)
//!   without padding. The label just before `.nostr` is the 32-byte x-only
//!   public key (52 characters); each label before it is one relay URL's
//!   UTF-8 bytes. Relay labels that do not decode are skipped.
//!
//! All forms are matched case-insensitively and may end in a single trailing
//! dot (a fully qualified DNS name). Nothing here touches the network or DNS.

use data_encoding::BASE32HEX_NOPAD;
use nostr::nips::nip19::{self, FromBech32, Nip19Profile};
use nostr::{PublicKey, RelayUrl};

/// Top-level label of `.nostr` domains.
const NOSTR_TLD: &str = ".nostr";
/// Human-readable prefix (plus separator) of a NIP-19 public key.
const NPUB_PREFIX: &str = "npub1";
/// Human-readable prefix (plus separator) of a NIP-19 profile.
const NPROFILE_PREFIX: &str = "nprofile1";
/// Longest DNS label in octets (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// Where streams for a name go: the exit node's public key and the relays
/// it listens on (possibly none, in which case the caller's default relays
/// are used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitAddress {
    /// The exit node's x-only (BIP-340) public key.
    pub public_key: PublicKey,
    /// Relay hints carried by the name, in the order they appear.
    pub relays: Vec<RelayUrl>,
}

/// Why a name that looks like an NWS name could not be decoded or encoded.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    /// The `.nostr` domain has no label before `.nostr`, so it names no public key.
    #[error("`.nostr` name has no public key label")]
    MissingPublicKeyLabel,
    /// The label before `.nostr` is not 52 characters of unpadded base32hex.
    #[error("public key label `{label}` is not 52 characters of base32hex (0-9a-v)")]
    BadPublicKeyLabel {
        /// The offending label, lower-cased.
        label: String,
    },
    /// The public key label decodes to 32 bytes that are not a valid x-only public key.
    #[error("public key label `{label}` is not a valid secp256k1 x-only public key")]
    InvalidPublicKey {
        /// The offending label, lower-cased.
        label: String,
    },
    /// An `npub1…` or `nprofile1…` host is not a valid NIP-19 entity of that kind.
    #[error("`{name}` is not a valid NIP-19 {kind}: {source}")]
    BadNip19 {
        /// The offending name, lower-cased.
        name: String,
        /// `"npub"` or `"nprofile"`.
        kind: &'static str,
        /// What rust-nostr reported.
        #[source]
        source: nip19::Error,
    },
    /// A relay URL is too long to fit in one 63-character DNS label once encoded.
    #[error(
        "relay URL `{relay}` needs a {label_len}-character label, over the DNS limit of 63 \
         (relay URLs of at most 39 bytes fit)"
    )]
    RelayUrlTooLong {
        /// The relay URL as it would have been encoded.
        relay: String,
        /// Length of the base32hex label it would need, in characters.
        label_len: usize,
    },
}

/// Normalizes a host for matching: ASCII lower case, one trailing dot removed.
fn normalize(host: &str) -> String {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.to_ascii_lowercase()
}

/// Classifies an already-normalized host.
fn is_nws_normalized(host: &str) -> bool {
    host.ends_with(NOSTR_TLD) || host.starts_with(NPUB_PREFIX) || host.starts_with(NPROFILE_PREFIX)
}

/// Cheap check, without decoding, whether `host` is meant as an NWS name:
/// it ends in `.nostr` or starts with `npub1` / `nprofile1` (case-insensitive,
/// one trailing dot allowed). A `true` answer does not mean the name decodes;
/// use [`parse_host`] for that.
pub fn is_nws_host(host: &str) -> bool {
    is_nws_normalized(&normalize(host))
}

/// Resolves a proxied host name to an exit address, without network access.
///
/// * `Ok(None)`: an ordinary host name or IP literal, not an NWS name.
/// * `Ok(Some(_))`: a `.nostr` domain (see [`decode_nostr_domain`]), an
///   `npub1…` host (NIP-19 public key, no relays) or an `nprofile1…` host
///   (NIP-19 profile with its relay hints). Matching is case-insensitive and
///   a single trailing dot is allowed.
///
/// # Errors
///
/// The host looks like an NWS name (see [`is_nws_host`]) but does not decode;
/// the [`NameError`] says what is wrong.
pub fn parse_host(host: &str) -> Result<Option<ExitAddress>, NameError> {
    let name = normalize(host);
    if name.ends_with(NOSTR_TLD) {
        return decode_normalized_domain(&name).map(Some);
    }
    if name.starts_with(NPROFILE_PREFIX) {
        let profile = Nip19Profile::from_bech32(&name).map_err(|source| NameError::BadNip19 {
            name: name.clone(),
            kind: "nprofile",
            source,
        })?;
        return Ok(Some(ExitAddress {
            public_key: profile.public_key,
            relays: profile.relays,
        }));
    }
    if name.starts_with(NPUB_PREFIX) {
        let public_key = PublicKey::from_bech32(&name).map_err(|source| NameError::BadNip19 {
            name: name.clone(),
            kind: "npub",
            source,
        })?;
        return Ok(Some(ExitAddress {
            public_key,
            relays: Vec::new(),
        }));
    }
    Ok(None)
}

/// Decodes a `.nostr` domain `<relay label>.….<pubkey label>.nostr` (format
/// in the module docs; matching is case-insensitive, one trailing dot is
/// allowed). Relay labels that are not base32hex, not UTF-8 or not a
/// `ws://`/`wss://` URL are skipped (logged at debug level); the relays that
/// remain are returned left to right.
///
/// # Errors
///
/// [`NameError::MissingPublicKeyLabel`] if `name` does not end in
/// `<label>.nostr`, [`NameError::BadPublicKeyLabel`] if that label is not
/// base32hex for 32 bytes, [`NameError::InvalidPublicKey`] if those bytes are
/// not a valid x-only public key.
pub fn decode_nostr_domain(name: &str) -> Result<ExitAddress, NameError> {
    decode_normalized_domain(&normalize(name))
}

/// [`decode_nostr_domain`] on a name already passed through [`normalize`].
fn decode_normalized_domain(name: &str) -> Result<ExitAddress, NameError> {
    let labels = name
        .strip_suffix(NOSTR_TLD)
        .ok_or(NameError::MissingPublicKeyLabel)?;
    let (relay_labels, key_label) = match labels.rsplit_once('.') {
        Some((relays, key)) => (Some(relays), key),
        None => (None, labels),
    };
    if key_label.is_empty() {
        return Err(NameError::MissingPublicKeyLabel);
    }
    let key_bytes = decode_label(key_label)
        .filter(|bytes| bytes.len() == PublicKey::LEN)
        .ok_or_else(|| NameError::BadPublicKeyLabel {
            label: key_label.to_owned(),
        })?;
    let public_key =
        PublicKey::from_slice(&key_bytes).map_err(|_| NameError::InvalidPublicKey {
            label: key_label.to_owned(),
        })?;

    let relays = relay_labels
        .into_iter()
        .flat_map(|labels| labels.split('.'))
        .filter_map(|label| {
            let relay = decode_relay_label(label);
            if relay.is_none() {
                log::debug!(
                    "skipping relay label `{label}` in `{name}`: not a base32hex relay URL"
                );
            }
            relay
        })
        .collect();
    Ok(ExitAddress { public_key, relays })
}

/// Decodes one lower-case base32hex label (no padding) to bytes.
fn decode_label(label: &str) -> Option<Vec<u8>> {
    BASE32HEX_NOPAD
        .decode(label.to_ascii_uppercase().as_bytes())
        .ok()
}

/// Decodes one relay label to a relay URL, or `None` if it is not one.
/// A URL whose normal form would not parse again (URL parsing can turn
/// `c:\\r` into `c://r`, which rust-nostr refuses) is not one: every relay
/// we decode must survive being written into a name again.
fn decode_relay_label(label: &str) -> Option<RelayUrl> {
    let bytes = decode_label(label)?;
    let url = String::from_utf8(bytes).ok()?;
    let relay = RelayUrl::parse(&url).ok()?;
    let again = RelayUrl::parse(relay_text(&relay)).ok()?;
    (again == relay).then_some(relay)
}

/// The text written for a relay URL: [`RelayUrl::as_str`], minus the `/`
/// that URL parsing adds for an empty path (so `ws://host:1` stays 11 bytes
/// and round-trips exactly).
fn relay_text(relay: &RelayUrl) -> &str {
    // The URL's own serialization: `RelayUrl::as_str` drops a trailing
    // slash of any path, which would name another URL (`ws://o/a/` is not
    // `ws://o/a`).
    let url: &nostr::Url = relay.into();
    let text = url.as_str();
    if url.path() == "/" && url.query().is_none() && url.fragment().is_none() {
        text.strip_suffix('/').unwrap_or(text)
    } else {
        text
    }
}

/// Encodes an exit address as a `.nostr` domain:
/// `<relay label>.….<pubkey label>.nostr`, relays in the given order, all
/// labels lower-case unpadded base32hex (format in the module docs). The
/// result decodes back with [`decode_nostr_domain`].
///
/// # Errors
///
/// [`NameError::RelayUrlTooLong`], naming the relay, if a relay URL is longer
/// than 39 bytes and so needs a label over the 63-character DNS limit
/// (RFC 1035 §2.3.4).
pub fn encode_nostr_domain(
    public_key: &PublicKey,
    relays: &[RelayUrl],
) -> Result<String, NameError> {
    let mut labels = Vec::with_capacity(relays.len() + 2);
    for relay in relays {
        let text = relay_text(relay);
        let label = BASE32HEX_NOPAD.encode(text.as_bytes()).to_ascii_lowercase();
        if label.len() > MAX_LABEL_LEN {
            return Err(NameError::RelayUrlTooLong {
                relay: text.to_owned(),
                label_len: label.len(),
            });
        }
        labels.push(label);
    }
    labels.push(
        BASE32HEX_NOPAD
            .encode(public_key.as_bytes())
            .to_ascii_lowercase(),
    );
    labels.push("nostr".to_owned());
    Ok(labels.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_whose_normal_form_does_not_parse_again_is_skipped() {
        // `\\` becomes `/` in a ws URL's path: `c:\\r` would be written back
        // as `c://r`, which rust-nostr refuses (found by the `names` fuzz target).
        let text = "wss://h/c:\\\\r";
        assert!(RelayUrl::parse(text).is_ok(), "the raw text parses");
        let label = BASE32HEX_NOPAD.encode(text.as_bytes()).to_ascii_lowercase();
        assert_eq!(decode_relay_label(&label), None);
        let good = BASE32HEX_NOPAD
            .encode(b"ws://good.example")
            .to_ascii_lowercase();
        let pk = nostr::Keys::generate().public_key();
        let key = encode_nostr_domain(&pk, &[]).unwrap();
        let exit = decode_nostr_domain(&format!("{label}.{good}.{key}")).unwrap();
        assert_eq!(
            exit.relays,
            vec![RelayUrl::parse("ws://good.example").unwrap()]
        );
    }
    use nostr::nips::nip19::ToBech32;

    const VECTOR: &str = "etpjkbpf60n30bhg5oo3kdpn6srg.\
                          7rqkr7rul8t6vbtekq0b3k274i696g47eo1765t9add20llitt9g.nostr";
    const VECTOR_KEY: &str = "3ef54d9f7eaa3a6fafaea680b1d047248c93408776027317a9535a2056b2ef53";
    const VECTOR_RELAY: &str = "ws://0.0.0.0:7777";

    fn vector_key() -> PublicKey {
        PublicKey::from_hex(VECTOR_KEY).expect("test vector key is valid")
    }

    fn relay(url: &str) -> RelayUrl {
        RelayUrl::parse(url).expect("test relay URL is valid")
    }

    #[test]
    fn decodes_draft_test_vector() {
        let exit = decode_nostr_domain(VECTOR).expect("vector decodes");
        assert_eq!(exit.public_key.to_hex(), VECTOR_KEY);
        assert_eq!(exit.relays, vec![relay(VECTOR_RELAY)]);
        assert_eq!(exit.relays[0].as_str(), VECTOR_RELAY);
    }

    #[test]
    fn encodes_draft_test_vector_exactly() {
        let name = encode_nostr_domain(&vector_key(), &[relay(VECTOR_RELAY)]).expect("encodes");
        assert_eq!(name, VECTOR);
    }

    #[test]
    fn encodes_relay_written_with_trailing_slash_without_it() {
        let name =
            encode_nostr_domain(&vector_key(), &[relay("ws://0.0.0.0:7777/")]).expect("encodes");
        assert_eq!(name, VECTOR);
    }

    #[test]
    fn round_trips_several_relays_in_order() {
        let relays = vec![relay("wss://relay.damus.io"), relay("ws://10.0.0.1:80/r")];
        let name = encode_nostr_domain(&vector_key(), &relays).expect("encodes");
        assert_eq!(name.split('.').count(), 4);
        let exit = parse_host(&name).expect("decodes").expect("is an NWS name");
        assert_eq!(exit.public_key, vector_key());
        assert_eq!(exit.relays, relays);
    }

    #[test]
    fn encodes_pubkey_only_domain() {
        let name = encode_nostr_domain(&vector_key(), &[]).expect("encodes");
        assert_eq!(
            name,
            "7rqkr7rul8t6vbtekq0b3k274i696g47eo1765t9add20llitt9g.nostr"
        );
        let exit = decode_nostr_domain(&name).expect("decodes");
        assert!(exit.relays.is_empty());
    }

    #[test]
    fn parses_nostr_domain_host() {
        let exit = parse_host(VECTOR)
            .expect("decodes")
            .expect("is an NWS name");
        assert_eq!(exit.public_key.to_hex(), VECTOR_KEY);
        assert_eq!(exit.relays, vec![relay(VECTOR_RELAY)]);
    }

    #[test]
    fn parses_uppercase_domain_with_trailing_dot() {
        let host = format!("{}.", VECTOR.to_ascii_uppercase());
        assert!(is_nws_host(&host));
        let exit = parse_host(&host).expect("decodes").expect("is an NWS name");
        assert_eq!(exit.public_key.to_hex(), VECTOR_KEY);
        assert_eq!(exit.relays, vec![relay(VECTOR_RELAY)]);
    }

    #[test]
    fn parses_npub_host() {
        let npub = vector_key().to_bech32().expect("npub encodes");
        let exit = parse_host(&npub).expect("decodes").expect("is an NWS name");
        assert_eq!(exit.public_key, vector_key());
        assert!(exit.relays.is_empty());
        let upper = format!("{}.", npub.to_ascii_uppercase());
        let exit = parse_host(&upper)
            .expect("decodes")
            .expect("is an NWS name");
        assert_eq!(exit.public_key, vector_key());
    }

    #[test]
    fn parses_nprofile_host_with_relays() {
        let relays = vec![relay("wss://relay.example.com"), relay(VECTOR_RELAY)];
        let nprofile = Nip19Profile::new(vector_key(), relays.clone())
            .to_bech32()
            .expect("nprofile encodes");
        let exit = parse_host(&nprofile)
            .expect("decodes")
            .expect("is an NWS name");
        assert_eq!(exit.public_key, vector_key());
        assert_eq!(exit.relays, relays);
    }

    #[test]
    fn rejects_bad_npub() {
        let err = parse_host("npub1qqqqqqq").expect_err("not a valid npub");
        assert!(
            matches!(err, NameError::BadNip19 { kind: "npub", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn rejects_bad_nprofile() {
        let err = parse_host("nprofile1zzzz").expect_err("not a valid nprofile");
        assert!(
            matches!(
                err,
                NameError::BadNip19 {
                    kind: "nprofile",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn rejects_bad_pubkey_label() {
        // `w` is outside the base32hex alphabet.
        let err = parse_host("etpjkbpf60n30bhg5oo3kdpn6srg.wwww.nostr").expect_err("bad key");
        assert!(
            matches!(&err, NameError::BadPublicKeyLabel { label } if label == "wwww"),
            "{err:?}"
        );
        // Valid base32hex, but 17 bytes instead of 32.
        let err = decode_nostr_domain("etpjkbpf60n30bhg5oo3kdpn6srg.nostr").expect_err("short");
        assert!(
            matches!(err, NameError::BadPublicKeyLabel { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn rejects_foo_nostr() {
        let err = parse_host("foo.nostr").expect_err("foo is not a public key");
        assert!(
            matches!(&err, NameError::BadPublicKeyLabel { label } if label == "foo"),
            "{err:?}"
        );
        assert!(err.to_string().contains("foo"));
    }

    #[test]
    fn rejects_domain_without_pubkey_label() {
        let err = parse_host(".nostr").expect_err("no key label");
        assert!(matches!(err, NameError::MissingPublicKeyLabel), "{err:?}");
    }

    #[test]
    fn skips_undecodable_relay_labels() {
        let name = format!("not-base32.{VECTOR}");
        let exit = decode_nostr_domain(&name).expect("decodes");
        assert_eq!(exit.relays, vec![relay(VECTOR_RELAY)]);
        // "http://a" is UTF-8 but not a relay URL.
        let http = BASE32HEX_NOPAD.encode(b"http://a").to_ascii_lowercase();
        let name = format!("{http}.{VECTOR}");
        let exit = decode_nostr_domain(&name).expect("decodes");
        assert_eq!(exit.relays, vec![relay(VECTOR_RELAY)]);
    }

    #[test]
    fn rejects_too_long_relay_url_naming_it() {
        let long = "wss://relay-name-of-40-bytes.example.org"; // one byte over
        assert_eq!(long.len(), 40);
        let err = encode_nostr_domain(&vector_key(), &[relay(long)]).expect_err("too long");
        match &err {
            NameError::RelayUrlTooLong { relay, label_len } => {
                assert_eq!(relay, long);
                assert_eq!(*label_len, 64);
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains(long));
    }

    #[test]
    fn accepts_relay_url_of_exactly_39_bytes() {
        let url = "wss://relay-name-of-39-bytes.example.io"; // 39 bytes
        assert_eq!(url.len(), 39);
        let name = encode_nostr_domain(&vector_key(), &[relay(url)]).expect("fits");
        assert_eq!(name.split('.').next().map(str::len), Some(63));
    }

    #[test]
    fn ordinary_hosts_are_not_nws_names() {
        for host in [
            "example.com",
            "localhost",
            "127.0.0.1",
            "::1",
            "nostr",
            "nostr.com",
            "",
        ] {
            assert!(!is_nws_host(host), "{host}");
            assert!(parse_host(host).expect("ordinary host").is_none(), "{host}");
        }
    }

    #[test]
    fn cheap_check_recognizes_nws_shapes() {
        assert!(is_nws_host("foo.nostr"));
        assert!(is_nws_host("FOO.NOSTR."));
        assert!(is_nws_host("npub1xyz"));
        assert!(is_nws_host("NPROFILE1xyz"));
    }
}
