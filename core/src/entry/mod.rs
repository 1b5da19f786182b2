//! The entry node: a local proxy that turns TCP connections into NWS streams.

pub mod http;
pub mod socks5;
