//! The exit node: it listens on its relays for stream events addressed to
//! its key and turns each stream into a TCP connection.
//!
//! Where a stream goes ([`ExitConfig`]):
//! * a **private-service** exit dials its one configured backend, whatever
//!   the `CONNECT`'s destination says;
//! * a **public** exit (`public`) also dials ordinary `host:port`
//!   destinations, resolving names itself and checking every address
//!   against its [`EgressPolicy`](crate::policy::EgressPolicy);
//!   `.nostr`/npub/nprofile destinations still go to its backend;
//! * with an **HTTPS front** (`https`), a stream whose destination port is
//!   the front's port (or every stream, without a backend) goes to an
//!   in-process TLS terminator that serves the exit's
//!   [`FrontCertificate`](crate::tls::FrontCertificate) and forwards the
//!   decrypted bytes to the front's target, as the reference
//!   implementation's `HTTPS_PORT`/`HTTPS_TARGET`.
//!
//! A `CONNECTR` (reverse connect, `PROTOCOL.md`) makes the exit dial the
//! entry's public address, write the stream's key, wait for the entry's
//! acceptance byte ([`crate::protocol::reverse`]), and copy raw bytes
//! between that connection and the destination: plain TCP, no Nostr, no
//! encryption added.
//!
//! Each entry author gets one conversation key, derived on its first
//! `CONNECT` and kept while it has streams open; every stream runs in its own
//! task through the shared [`driver`](crate::driver).
//!
//! Rooms: [`config`](ExitConfig) and [errors](ExitError); the
//! [node](ExitNode) that starts and stops everything; `dispatch` (the one
//! event loop, which never awaits network I/O); `admission` (who may open a
//! stream now); `target` (where a stream's bytes go, and dialling there);
//! `reverse` (`CONNECTR`); `front` (the HTTPS front's certificate and TLS
//! terminator); `announce` (public-exit announcements); `instances` and
//! `heartbeat` (several processes sharing one key: who is live, which
//! instance owns a stream); `refusals` (counted for the metrics).

mod admission;
mod announce;
mod config;
mod dispatch;
mod error;
mod front;
mod heartbeat;
pub mod instances;
pub mod journal;
mod node;
mod reverse;
mod target;

pub use crate::stats::Refusals;
pub use config::{ExitConfig, HttpsFront};
pub use error::ExitError;
pub use heartbeat::{heartbeat_event, heartbeat_filter, read_heartbeat};
pub use node::ExitNode;
