//! Nostr Web Services (NWS) core: TCP streams carried as NIP-44-encrypted
//! ephemeral Nostr events between an entry node (a local proxy) and an exit
//! node (which dials the real backend).
//!
//! Layers, top to bottom (see `DESIGN.md`): [`entry`] (SOCKS5 and HTTP proxy),
//! [`names`] (`.nostr`, npub, nprofile), the sans-IO stream [`engine`], the
//! message [`protocol`] codec, and the relay [`transport`]; [`exit`] is the
//! other end, and [`relay`] an embedded relay for local use and tests.

pub mod discovery;
pub mod driver;
pub mod engine;
pub mod entry;
pub mod exit;
pub mod names;
pub mod nip11;
pub mod policy;
pub mod protocol;
pub mod relay;
pub mod sync;
pub mod tls;
pub mod transport;
