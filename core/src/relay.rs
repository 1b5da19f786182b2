//! An embedded Nostr relay (nostr-relay-builder) for local use: `nws relay`,
//! `nws demo`, and tests. It keeps events in memory only.
//!
//! The builder's default rate limit (60 events per minute per connection) is
//! far below what one stream needs, so it is raised to limits that suit a
//! relay on loopback.

use std::net::SocketAddr;

use nostr::RelayUrl;
use nostr_relay_builder::prelude::{LocalRelay, RateLimit, RelayBuilder};

/// Events per minute one connection may publish to the embedded relay.
pub const EVENTS_PER_MINUTE: u32 = 1_000_000;
/// Subscriptions one connection may hold on the embedded relay.
pub const MAX_SUBSCRIPTIONS: usize = 10_000;

/// Errors starting the embedded relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The relay could not listen on the address.
    #[error("cannot start the embedded relay on {addr}: {reason}")]
    Start {
        /// The address asked for.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
}

/// A running embedded relay; it stops when [`EmbeddedRelay::shutdown`] is
/// called or the value is dropped.
#[derive(Debug)]
pub struct EmbeddedRelay {
    relay: LocalRelay,
    url: RelayUrl,
}

impl EmbeddedRelay {
    /// Starts a relay listening on `addr` (port 0 picks a free port).
    pub async fn start(addr: SocketAddr) -> Result<Self, RelayError> {
        let mut builder = RelayBuilder::default()
            .addr(addr.ip())
            .rate_limit(RateLimit {
                max_reqs: MAX_SUBSCRIPTIONS,
                notes_per_minute: EVENTS_PER_MINUTE,
            });
        if addr.port() != 0 {
            builder = builder.port(addr.port());
        }
        let relay = LocalRelay::new(builder);
        relay.run().await.map_err(|e| RelayError::Start {
            addr,
            reason: e.to_string(),
        })?;
        let url = relay.url().await;
        Ok(Self { relay, url })
    }

    /// The relay's websocket URL (`ws://127.0.0.1:PORT`).
    pub fn url(&self) -> &RelayUrl {
        &self.url
    }

    /// Stops accepting connections.
    pub fn shutdown(&self) {
        self.relay.shutdown();
    }
}

impl Drop for EmbeddedRelay {
    fn drop(&mut self) {
        self.relay.shutdown();
    }
}
