//! The NWS protocol without I/O: what an entry node and an exit node say to
//! each other, and the per-stream state machine that makes their streams
//! reliable. No tokio, no sockets, no clock: callers pass time in and take
//! outputs back (the shape of `quinn-proto`), so everything here is tested
//! deterministically and fuzzed directly.
//!
//! - [`message`]: event kinds, the JSON [`Message`] inside a stream event,
//!   `ERROR` reasons ([`ErrorReason`]).
//! - [`codec`]: NIP-44 v2 sealing of messages ([`Cipher`]) and the signed
//!   kind-28333 stream event; [`open_stream_event`] proves a stream
//!   event's author.
//! - [`frame`]: version 3's binary frame inside the NIP-44 payload.
//! - [`names`]: `.nostr` domains, `npub1…` and `nprofile1…` hosts (NIP-19).
//! - [`engine`]: the sans-IO stream engine (offsets, acknowledgements,
//!   retransmission, flow control, close), and its legacy dialect.
//! - [`addr`]: the one `host:port` parser and printer.
//! - [`credentials`], [`socks5`] and [`http`]: the entry proxy's client
//!   requests, parsed from buffers (`parse(&[u8]) -> Result<Option<(_, used)>, _>`).
//! - [`reverse`]: the reverse-connect (`CONNECTR`) handshake's constants.
//!
//! The wire format is written down in `docs/PROTOCOL.md`; the crates and how
//! one stream's bytes flow through them in `docs/ARCHITECTURE.md`.

pub mod addr;
pub mod codec;
pub mod credentials;
pub mod engine;
pub mod frame;
pub mod http;
pub mod message;
pub mod names;
pub mod reverse;
pub mod socks5;

pub use addr::{AddrError, HostPort};
pub use codec::{
    build_stream_event, event_id, open_stream_event, recipient, Cipher, CodecError, Framing,
};
pub use frame::Sender;
pub use message::*;
