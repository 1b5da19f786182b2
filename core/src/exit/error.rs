//! Why an exit node could not start.

use crate::names::NameError;
use crate::tls::TlsError;
use crate::transport::TransportError;

/// Errors starting an exit node.
#[derive(Debug, thiserror::Error)]
pub enum ExitError {
    /// The relays could not be used.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The exit's `.nostr` name cannot be written with these relays.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The HTTPS front's certificate could not be made, restored or used.
    #[error("HTTPS front: {0}")]
    Tls(#[from] TlsError),
    /// Nothing to dial: no backend, not public, no HTTPS front.
    #[error("the exit has nothing to serve: give a backend, the public mode or an HTTPS front")]
    NothingToServe,
    /// The instance id given is empty or too long.
    #[error("bad exit instance id: {0}")]
    Instance(#[from] super::instances::HeartbeatError),
}
