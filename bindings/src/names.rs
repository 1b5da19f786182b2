//! `resolve`: what an NWS name addresses, decoded locally (no network, no
//! DNS). The format of the names is in `docs/PROTOCOL.md`, "Names that
//! address an exit".

use nostr::nips::nip19::ToBech32;
use nws_core::names::parse_host;

use crate::error::NwsError;

/// The exit node an NWS name addresses.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ResolvedName {
    /// The exit's x-only public key, 64 lower-case hex characters.
    pub pubkey_hex: String,
    /// The same key as a NIP-19 `npub1…`.
    pub npub: String,
    /// The relays the name carries, in order (`ws://` or `wss://` URLs);
    /// empty for an `npub1…`, whose streams use the configured relays.
    pub relays: Vec<String>,
}

/// Decodes `name` (a `<relay labels>.<pubkey label>.nostr` domain, an
/// `npub1…` or an `nprofile1…`; case-insensitive, one trailing dot allowed)
/// to the exit's public key and relays, without any network access.
///
/// # Errors
///
/// [`NwsError::BadName`] if `name` looks like an NWS name but does not
/// decode; [`NwsError::NotNwsName`] for any other host name or address.
#[uniffi::export]
pub fn resolve(name: String) -> Result<ResolvedName, NwsError> {
    let exit = match parse_host(&name) {
        Ok(Some(exit)) => exit,
        Ok(None) => return Err(NwsError::not_nws(&name)),
        Err(e) => return Err(NwsError::bad_name(&name, &e)),
    };
    let npub = exit
        .public_key
        .to_bech32()
        .map_err(|e| NwsError::internal(format!("cannot encode npub: {e}")))?;
    Ok(ResolvedName {
        pubkey_hex: exit.public_key.to_hex(),
        npub,
        relays: exit.relays.iter().map(|r| r.to_string()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of the NWS draft.
    const DRAFT_DOMAIN: &str =
        "etpjkbpf60n30bhg5oo3kdpn6srg.7rqkr7rul8t6vbtekq0b3k274i696g47eo1765t9add20llitt9g.nostr";

    #[test]
    fn resolves_the_draft_test_vector() {
        let r = resolve(DRAFT_DOMAIN.into()).unwrap();
        assert_eq!(
            r.pubkey_hex,
            "3ef54d9f7eaa3a6fafaea680b1d047248c93408776027317a9535a2056b2ef53"
        );
        assert!(r.npub.starts_with("npub1"));
        assert_eq!(r.relays, vec!["ws://0.0.0.0:7777".to_string()]);
    }

    #[test]
    fn npub_resolves_to_the_same_key_without_relays() {
        let a = resolve(DRAFT_DOMAIN.into()).unwrap();
        let b = resolve(a.npub.to_uppercase()).unwrap();
        assert_eq!(b.pubkey_hex, a.pubkey_hex);
        assert!(b.relays.is_empty());
    }

    #[test]
    fn ordinary_hosts_are_not_nws_names() {
        assert!(matches!(
            resolve("example.com".into()),
            Err(NwsError::NotNwsName { .. })
        ));
    }

    #[test]
    fn broken_names_are_bad_names() {
        assert!(matches!(
            resolve("abc.nostr".into()),
            Err(NwsError::BadName { .. })
        ));
        assert!(matches!(
            resolve("npub1xyz".into()),
            Err(NwsError::BadName { .. })
        ));
    }
}
