//! Public-exit announcements (kind 38333, [`crate::discovery`]): one now and
//! one every [`ANNOUNCE_INTERVAL`] while the exit runs, and a short-lived
//! one on stop so that entries stop picking the exit soon instead of when
//! the last announcement ages out.

use std::time::Duration;

use nostr::{Keys, RelayUrl};
use tokio_util::sync::CancellationToken;

use super::ExitConfig;
use crate::discovery::{
    announcement_event, ANNOUNCE_INTERVAL, ANNOUNCE_LIFETIME, WITHDRAWAL_LIFETIME,
};
use crate::transport::Transport;

/// How long a withdrawal waits for the relays to confirm it.
const WITHDRAWAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Publishes the first announcement now and the next ones every
/// [`ANNOUNCE_INTERVAL`] until `cancel`; returns the task doing so.
pub(super) async fn announce(
    transport: &Transport,
    config: &ExitConfig,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let publish = {
        let transport = transport.clone();
        let keys = config.keys.clone();
        let relays = config.relays.clone();
        move || {
            let transport = transport.clone();
            let keys = keys.clone();
            let relays = relays.clone();
            async move {
                match announcement_event(&keys, ANNOUNCE_LIFETIME) {
                    Ok(ev) => {
                        if let Err(e) = transport.publish(&ev, &relays).await {
                            log::warn!("cannot publish the exit announcement: {e}");
                        }
                    }
                    Err(e) => log::warn!("cannot sign the exit announcement: {e}"),
                }
            }
        }
    };
    publish().await;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(ANNOUNCE_INTERVAL) => publish().await,
                _ = cancel.cancelled() => return,
            }
        }
    })
}

/// Publishes an announcement that expires [`WITHDRAWAL_LIFETIME`] from now,
/// replacing the last one, and waits up to [`WITHDRAWAL_TIMEOUT`] for the
/// relays. Failures are logged: the exit stops anyway.
pub(super) async fn withdraw(transport: &Transport, keys: &Keys, relays: &[RelayUrl]) {
    match announcement_event(keys, WITHDRAWAL_LIFETIME) {
        Ok(ev) => match transport
            .publish_confirmed(&ev, relays, WITHDRAWAL_TIMEOUT)
            .await
        {
            Ok(_) => log::info!("announcement withdrawn"),
            Err(e) => log::warn!("cannot withdraw the exit announcement: {e}"),
        },
        Err(e) => log::warn!("cannot sign the announcement withdrawal: {e}"),
    }
}
