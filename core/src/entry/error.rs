//! Why an entry could not open a stream ([`OpenError`], with its SOCKS5
//! reply code and HTTP status) or could not start ([`EntryError`]).

use std::net::SocketAddr;
use std::time::Duration;

use crate::link::SendError;
use crate::names::NameError;
use crate::protocol::{CodecError, ErrorReason};
use crate::transport::TransportError;

use super::socks5;

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The host looks like an NWS name but does not decode.
    #[error("bad NWS name `{host}`: {source}")]
    BadName {
        /// The host as the client gave it.
        host: String,
        /// What is wrong with it.
        source: NameError,
    },
    /// The host is not an NWS name, and public exits are not enabled.
    #[error(
        "`{0}` is not an NWS name (.nostr, npub1…, nprofile1…) and public exits are not enabled"
    )]
    NotNws(String),
    /// The host is not an NWS name, and the listener it came through (the
    /// WebView listener) serves only those.
    #[error(
        "`{0}` is not an NWS name (.nostr, npub1…, nprofile1…): this listener serves only those"
    )]
    NamesOnly(String),
    /// No relay of the exit could be reached, or none took the `CONNECT`.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The stream's messages could not be sealed (no conversation key with
    /// the exit's public key, say).
    #[error("cannot seal messages for this exit: {0}")]
    Codec(#[from] CodecError),
    /// The exit refused the stream.
    #[error("the exit refused the stream: {0}")]
    Refused(ErrorReason),
    /// The exit did not answer in time.
    #[error("the exit did not answer within {0:?}")]
    Timeout(Duration),
    /// Public exits are enabled but none has announced itself recently.
    #[error("no public exit announced within {0:?}")]
    NoPublicExit(Duration),
}

impl OpenError {
    /// The SOCKS5 reply code for this error (RFC 1928 §6).
    pub fn socks_reply(&self) -> socks5::ReplyCode {
        use socks5::ReplyCode as R;
        match self {
            Self::BadName { .. } => R::HostUnreachable,
            Self::NotNws(_) | Self::NamesOnly(_) => R::ConnectionNotAllowed,
            Self::Transport(_) | Self::NoPublicExit(_) => R::NetworkUnreachable,
            Self::Codec(_) => R::GeneralFailure,
            Self::Timeout(_) => R::HostUnreachable,
            Self::Refused(reason) => match reason {
                ErrorReason::ConnectionRefused => R::ConnectionRefused,
                ErrorReason::HostUnreachable => R::HostUnreachable,
                ErrorReason::NetworkUnreachable => R::NetworkUnreachable,
                ErrorReason::NotAllowed => R::ConnectionNotAllowed,
                ErrorReason::Timeout => R::TtlExpired,
                _ => R::GeneralFailure,
            },
        }
    }

    /// A short code for this error, as counted in the entry's refusals
    /// (the metrics endpoint): the exit's wire reason for a refusal
    /// (`connection-refused`, `not-allowed`, …), else `bad-name`, `not-nws`,
    /// `names-only`, `no-relay`, `codec`, `timeout` or `no-public-exit`.
    pub fn code(&self) -> &str {
        match self {
            Self::BadName { .. } => "bad-name",
            Self::NotNws(_) => "not-nws",
            Self::NamesOnly(_) => "names-only",
            Self::Transport(_) => "no-relay",
            Self::Codec(_) => "codec",
            Self::Refused(reason) => reason.as_str(),
            Self::Timeout(_) => "timeout",
            Self::NoPublicExit(_) => "no-public-exit",
        }
    }

    /// The HTTP status for this error: 403 for a host that is not routed
    /// or that the exit is not allowed to reach, 504 when the exit did not
    /// answer, 502 otherwise (including failure to connect).
    pub fn http_status(&self) -> u16 {
        match self {
            Self::NotNws(_) | Self::NamesOnly(_) | Self::Refused(ErrorReason::NotAllowed) => 403,
            Self::Timeout(_) => 504,
            _ => 502,
        }
    }
}

/// Errors starting the entry proxy.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The relays could not be used.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl From<SendError> for OpenError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Codec(c) => Self::Codec(c),
            SendError::Transport(t) => Self::Transport(t),
        }
    }
}
