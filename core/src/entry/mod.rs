//! The entry node: a local proxy (SOCKS5 and HTTP) that turns each client
//! TCP connection into an NWS stream to the exit its host names.
//!
//! One concept per file:
//! - [`config`]: the [`EntryConfig`];
//! - [`error`]: [`OpenError`] (with its SOCKS5 reply and HTTP status) and
//!   [`EntryError`];
//! - [`opener`]: [`Entry`], which routes a host to its exit and opens the
//!   stream;
//! - [`subscriptions`]: how a stream hears the exit's answers (one
//!   subscription per exit, a route per stream key, or the demultiplexer of
//!   a persistent key);
//! - [`stream`]: [`EntryStream`], an open stream joined to a local socket;
//! - [`proxy`]: [`EntryProxy`], the listeners;
//! - [`socks5`] and [`http`]: the two proxy protocols' sockets (their
//!   parsers are sans-IO, in `nws_protocol`);
//! - [`reverse`]: reverse connect (`CONNECTR`).

pub mod config;
pub mod error;
pub mod http;
pub mod opener;
pub mod proxy;
mod reverse;
pub mod socks5;
pub mod stream;
mod subscriptions;

pub use config::EntryConfig;
pub use error::{EntryError, OpenError};
pub use opener::Entry;
pub use proxy::EntryProxy;
pub use socks5::Credentials;
pub use stream::EntryStream;
