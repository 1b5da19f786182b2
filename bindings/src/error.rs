//! The one error type of the bindings: every fallible call returns
//! `NwsError` (an exception `NwsException` in Kotlin, an `Error` in Swift).
//!
//! Each variant carries `detail`, the whole human-readable sentence (what
//! `Display` prints), and the structured fields an app may branch on. The
//! conversions from core's errors live here so that the exported functions
//! only ever write `?`.

use std::time::Duration;

use nws_core::driver::StreamError;
use nws_core::entry::{EntryError, OpenError};
use nws_core::names::NameError;
use nws_core::protocol::ErrorReason;
use nws_core::transport::TransportError;

/// Why a call into NWS failed.
///
/// Kotlin: `message` (and `toString()`) is the `detail` sentence; Swift: the
/// `description`, and so `errorDescription` (`LocalizedError`; the
/// conformance to `CustomStringConvertible` is in `NwsError+Description.swift`)
/// is the same sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
#[uniffi::export(Display)]
pub enum NwsError {
    /// `name` looks like an NWS name (`.nostr`, `npub1…`, `nprofile1…`) but
    /// does not decode.
    #[error("{detail}")]
    BadName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        detail: String,
    },
    /// `host` is not an NWS name, and neither public exits nor a pinned exit
    /// are configured (`ProxyConfig.public_exits`, `ProxyConfig.exit`), so
    /// nothing can route it.
    #[error("{detail}")]
    NotNwsName {
        /// The host as given.
        host: String,
        /// A sentence saying so.
        detail: String,
    },
    /// None of the relays could be connected within the connect timeout (or
    /// no relay was known for a name that carries none).
    #[error("{detail}")]
    NoRelayReachable {
        /// Which relays were tried.
        detail: String,
    },
    /// A relay or the relay pool refused an operation (a rejected publish,
    /// say).
    #[error("{detail}")]
    Relay {
        /// What the relay pool reported.
        detail: String,
    },
    /// The exit answered the stream's `CONNECT` with an `ERROR`, or aborted
    /// the stream later.
    #[error("{detail}")]
    ExitRefused {
        /// The wire code (`connection-refused`, `host-unreachable`,
        /// `network-unreachable`, `not-allowed`, `too-many-streams`,
        /// `timeout`, `protocol-error`, or another code as received).
        reason: String,
        /// A sentence with the reason.
        detail: String,
    },
    /// The exit did not answer within the connect timeout.
    #[error("{detail}")]
    Timeout {
        /// The timeout that ran out, in milliseconds.
        timeout_ms: u64,
        /// A sentence with the timeout.
        detail: String,
    },
    /// The proxy (or the stream) is stopped or closed: start it, or open a
    /// new stream.
    #[error("{detail}")]
    Stopped {
        /// What was stopped.
        detail: String,
    },
    /// The call was cancelled by the caller (see
    /// [`NwsStream::interrupt_read`](crate::NwsStream::interrupt_read)).
    #[error("{detail}")]
    Cancelled {
        /// What was cancelled.
        detail: String,
    },
    /// The configuration or an argument is invalid (a relay URL that does
    /// not parse, a listen host that is not an IP address, a destination
    /// without a port, …).
    #[error("{detail}")]
    InvalidConfig {
        /// What is wrong.
        detail: String,
    },
    /// An operating-system I/O error, such as a listen port already in use.
    #[error("{detail}")]
    Io {
        /// The OS error, with the address when there is one.
        detail: String,
    },
    /// A bug: a panic inside the library, caught before it could cross the
    /// FFI boundary. The library stays usable; please report the detail.
    #[error("{detail}")]
    Internal {
        /// The panic message.
        detail: String,
    },
}

impl NwsError {
    pub(crate) fn invalid(detail: impl Into<String>) -> Self {
        Self::InvalidConfig {
            detail: detail.into(),
        }
    }

    pub(crate) fn stopped(detail: impl Into<String>) -> Self {
        Self::Stopped {
            detail: detail.into(),
        }
    }

    pub(crate) fn cancelled(detail: impl Into<String>) -> Self {
        Self::Cancelled {
            detail: detail.into(),
        }
    }

    pub(crate) fn io(detail: impl Into<String>) -> Self {
        Self::Io {
            detail: detail.into(),
        }
    }

    pub(crate) fn internal(detail: impl Into<String>) -> Self {
        Self::Internal {
            detail: detail.into(),
        }
    }

    pub(crate) fn bad_name(name: &str, source: &NameError) -> Self {
        Self::BadName {
            name: name.to_string(),
            detail: format!("bad NWS name `{name}`: {source}"),
        }
    }

    pub(crate) fn not_nws(host: &str) -> Self {
        Self::NotNwsName {
            host: host.to_string(),
            detail: format!(
                "`{host}` is not an NWS name (.nostr, npub1…, nprofile1…) and public exits \
                 are not enabled"
            ),
        }
    }

    pub(crate) fn exit_refused(reason: &ErrorReason) -> Self {
        Self::ExitRefused {
            reason: reason.as_str().to_string(),
            detail: format!("the exit refused the stream: {reason}"),
        }
    }

    pub(crate) fn timeout(timeout: Duration) -> Self {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        Self::Timeout {
            timeout_ms,
            detail: format!("the exit did not answer within {timeout_ms} ms"),
        }
    }
}

impl From<TransportError> for NwsError {
    fn from(e: TransportError) -> Self {
        let detail = e.to_string();
        match e {
            TransportError::NoRelayReachable(_) | TransportError::NoRelays => {
                Self::NoRelayReachable { detail }
            }
            TransportError::Pool(_) | TransportError::NotPublished(_) => Self::Relay { detail },
            TransportError::Shutdown => Self::Stopped { detail },
        }
    }
}

impl From<OpenError> for NwsError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::BadName { host, source } => Self::bad_name(&host, &source),
            OpenError::NotNws(host) => Self::not_nws(&host),
            OpenError::NamesOnly(host) => Self::NotNwsName {
                detail: OpenError::NamesOnly(host.clone()).to_string(),
                host,
            },
            OpenError::Transport(t) => t.into(),
            OpenError::Codec(c) => Self::Relay {
                detail: c.to_string(),
            },
            OpenError::Refused(reason) => Self::exit_refused(&reason),
            OpenError::Timeout(t) => Self::timeout(t),
            OpenError::NoPublicExit(t) => {
                let detail = format!("{}", OpenError::NoPublicExit(t));
                Self::Timeout {
                    timeout_ms: u64::try_from(t.as_millis()).unwrap_or(u64::MAX),
                    detail,
                }
            }
        }
    }
}

impl From<StreamError> for NwsError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::Aborted(reason) => Self::exit_refused(&reason),
            StreamError::Shutdown => Self::stopped("the proxy is stopping"),
            other => Self::Relay {
                detail: other.to_string(),
            },
        }
    }
}

impl From<EntryError> for NwsError {
    fn from(e: EntryError) -> Self {
        match e {
            EntryError::Bind { .. } => Self::io(e.to_string()),
            EntryError::Transport(t) => t.into(),
        }
    }
}

impl From<std::io::Error> for NwsError {
    fn from(e: std::io::Error) -> Self {
        Self::io(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_keeps_the_wire_code() {
        let e: NwsError = OpenError::Refused(ErrorReason::ConnectionRefused).into();
        assert_eq!(
            e,
            NwsError::ExitRefused {
                reason: "connection-refused".into(),
                detail: "the exit refused the stream: connection-refused".into(),
            }
        );
    }

    #[test]
    fn timeout_is_in_milliseconds() {
        let e: NwsError = OpenError::Timeout(Duration::from_secs(3)).into();
        assert!(matches!(
            e,
            NwsError::Timeout {
                timeout_ms: 3000,
                ..
            }
        ));
        assert_eq!(e.to_string(), "the exit did not answer within 3000 ms");
    }

    #[test]
    fn transport_shutdown_means_stopped() {
        let e: NwsError = TransportError::Shutdown.into();
        assert!(matches!(e, NwsError::Stopped { .. }));
        let e: NwsError = TransportError::NoRelays.into();
        assert!(matches!(e, NwsError::NoRelayReachable { .. }));
    }
}
