//! The HTTPS front certificate of an exit, for apps that pin it (OkHttp
//! `HandshakeCertificates`, a URLSession delegate): see `docs/MOBILE.md`.

use std::time::Duration;

use nostr::RelayUrl;
use nws_core::tls::{fetch_certificate as fetch, FetchCertificateError};

use crate::error::NwsError;
use crate::runtime::run;

/// How long to wait for the relays, at most.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Fetches the HTTPS front certificate of the exit named `name` (a `.nostr`
/// domain, `npub1…` or `nprofile1…`) from its kind-38334 event, checked
/// against the exit's key (author, `p` tag, signature), and returns it as
/// PEM (one `-----BEGIN CERTIFICATE-----` block). The certificate's names
/// are the exit's `.nostr` domains: use it as the only trust anchor for
/// `https://<domain>.nostr/` through the proxy.
///
/// `relays` (`ws://` or `wss://` URLs) are used for a name that carries
/// none (an npub); otherwise the name's own relays are. Waits at most 10 s.
///
/// # Errors
///
/// [`NwsError::BadName`] if `name` is not an NWS name;
/// [`NwsError::InvalidConfig`] for a relay URL that does not parse;
/// [`NwsError::NoRelayReachable`]; [`NwsError::Relay`] if no certificate
/// was found or it does not verify.
#[uniffi::export]
pub async fn fetch_certificate(name: String, relays: Vec<String>) -> Result<String, NwsError> {
    run(async move {
        let relays = relays
            .iter()
            .map(|r| {
                RelayUrl::parse(r).map_err(|e| NwsError::invalid(format!("relay URL `{r}`: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        fetch(&name, &relays, FETCH_TIMEOUT)
            .await
            .map_err(|e| match e {
                FetchCertificateError::BadName(n) => NwsError::BadName {
                    name: n.clone(),
                    detail: format!("`{n}` is not a .nostr, npub or nprofile name"),
                },
                FetchCertificateError::Transport(t) => t.into(),
                other => NwsError::Relay {
                    detail: other.to_string(),
                },
            })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr::Keys;
    use nws_core::exit::{ExitConfig, ExitNode, HttpsFront};
    use nws_relay::EmbeddedRelay;

    /// An exit with an HTTPS front publishes its certificate; the binding
    /// returns exactly that PEM for the exit's npub.
    #[test]
    fn fetches_the_certificate_an_exit_published() {
        let rt = crate::runtime::runtime().unwrap();
        let (exit_pem, npub, relay_url, relay, exit) = rt.block_on(async {
            let relay = EmbeddedRelay::start("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            let url = relay.url().clone();
            let mut config = ExitConfig::new(vec![url.clone()], Keys::generate(), "");
            config.https = Some(HttpsFront {
                port: 443,
                target: "127.0.0.1:1".into(),
            });
            let exit = ExitNode::start(config).await.unwrap();
            let pem = exit.front_certificate().unwrap().cert_pem.clone();
            use nostr::nips::nip19::ToBech32;
            let npub = exit.public_key().to_bech32().unwrap();
            (pem, npub, url.to_string(), relay, exit)
        });
        let got = rt
            .block_on(fetch_certificate(npub, vec![relay_url]))
            .unwrap();
        assert_eq!(got, exit_pem);
        let bad = rt.block_on(fetch_certificate("example.org".into(), Vec::new()));
        assert!(matches!(bad, Err(NwsError::BadName { .. })), "{bad:?}");
        rt.block_on(exit.stop());
        relay.shutdown();
    }
}
