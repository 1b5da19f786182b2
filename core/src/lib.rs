//! Nostr Web Services (NWS) on tokio: the relay transport, the async driver
//! of the sans-IO stream engine, the entry node (a local SOCKS5 and HTTP
//! proxy) and the exit node (which dials the real backend).
//!
//! The protocol itself (messages, NIP-44 sealing, names, the stream engine)
//! is the [`nws_protocol`] crate, re-exported here as [`protocol`], with
//! [`engine`] and [`names`] at the top as well. See `docs/ARCHITECTURE.md`
//! for the crates and rooms and how one stream's bytes flow through them.
//!
//! Features: `entry` (the proxy, discovery of public exits, reverse
//! connect) and `exit` (the exit node, its egress policy, the HTTPS front's
//! certificate generation); both are on by default. The mobile library
//! builds with `entry` only.

pub use nws_protocol as protocol;
pub use nws_protocol::{engine, names};

pub mod accept;
pub mod demux;
pub mod discovery;
pub mod driver;
#[cfg(feature = "entry")]
pub mod entry;
#[cfg(feature = "exit")]
pub mod exit;
pub mod link;
pub mod nip11;
pub mod pacing;
pub mod path;
#[cfg(feature = "exit")]
pub mod policy;
pub mod relay_tls;
pub mod stats;
pub mod sync;
pub mod tls;
pub mod transport;
