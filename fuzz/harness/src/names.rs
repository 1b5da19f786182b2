//! Names: `.nostr` domains, `npub1…` and `nprofile1…` hosts.

use nostr::nips::nip19::ToBech32;
use nws_protocol::names::{
    decode_nostr_domain, encode_nostr_domain, is_nws_host, parse_host, ExitAddress,
};

/// Whether two decodings name the same exit and the same relays.
fn same_exit(a: &ExitAddress, b: &ExitAddress) -> bool {
    a == b
}

/// Target `names`: `data` (lossy UTF-8) as the host a proxy client asked for.
pub fn names(data: &[u8]) {
    let host = String::from_utf8_lossy(data);
    let host = host.as_ref();
    let parsed = parse_host(host);
    let looks = is_nws_host(host);
    match &parsed {
        Ok(None) => assert!(!looks, "`{host}` looks like an NWS name but is not routed"),
        Ok(Some(_)) | Err(_) => assert!(looks, "`{host}` is routed but does not look NWS"),
    }

    // Matching is case-insensitive (ASCII) and ignores one trailing dot.
    let upper = parse_host(&host.to_ascii_uppercase());
    assert_same(host, &parsed, &upper, "upper case");
    if !host.ends_with('.') {
        let dotted = parse_host(&format!("{host}."));
        assert_same(host, &parsed, &dotted, "trailing dot");
    }

    let Ok(Some(exit)) = parsed else {
        return;
    };
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    if lower.ends_with(".nostr") {
        let direct = decode_nostr_domain(host).expect("parse_host accepted it");
        assert_eq!(direct, exit);
        // What decodes re-encodes (when every relay fits a label) to a name
        // for the same exit and relays.
        if let Ok(name) = encode_nostr_domain(&exit.public_key, &exit.relays) {
            let back = decode_nostr_domain(&name)
                .unwrap_or_else(|e| panic!("own name `{name}` does not decode: {e}"));
            assert!(
                same_exit(&back, &exit),
                "`{host}` -> `{name}` changed the exit: {exit:?} -> {back:?}"
            );
        }
    } else if lower.starts_with("npub1") {
        assert!(exit.relays.is_empty());
        let npub = exit.public_key.to_bech32().expect("bech32");
        let back = parse_host(&npub).expect("own npub parses");
        assert_eq!(back, Some(exit));
    }
}

fn assert_same<T: PartialEq + std::fmt::Debug, E>(
    host: &str,
    a: &Result<Option<T>, E>,
    b: &Result<Option<T>, E>,
    what: &str,
) {
    match (a, b) {
        (Ok(x), Ok(y)) => assert_eq!(x, y, "`{host}`: {what} changes the result"),
        (Err(_), Err(_)) => {}
        _ => panic!("`{host}`: {what} turns an error into a success or back"),
    }
}
