//! UniFFI bindings of NWS for mobile apps (Kotlin on Android and the JVM,
//! Swift on iOS and macOS): a thin layer over `nws-core` that holds no
//! protocol logic of its own (see `../shared/DESIGN.md` beside the repository, "The mobile interface", and
//! `docs/MOBILE.md`).
//!
//! What it exports:
//!
//! * [`NwsProxy`]: the in-app entry proxy (SOCKS5 and HTTP on loopback),
//!   configured with a [`ProxyConfig`]; `start()` returns a [`ProxyInfo`]
//!   (address, ports, credentials), `stop()`, `restart()`, `status()`, and a
//!   [`ProxyListener`] for state changes and log lines;
//! * [`resolve`]: an NWS name to the exit's public key and relays, offline;
//! * [`open_stream`]: an [`NwsStream`] to read and write bytes without a proxy;
//! * [`fetch_certificate`]: an exit's HTTPS front certificate (PEM), to pin;
//! * [`NwsError`]: every error, typed; a panic is caught and returned as
//!   [`NwsError::Internal`], never unwound into foreign code;
//! * [`set_log_level`] and [`version`].
//!
//! Async functions (`suspend` in Kotlin, `async` in Swift) run on one
//! process-wide tokio runtime with two worker threads (`runtime.rs`).

#![warn(missing_docs)]

mod cert;
mod error;
mod listener;
mod names;
mod proxy;
mod runtime;
mod stream;

pub use cert::fetch_certificate;
pub use error::NwsError;
pub use listener::{LogLevel, ProxyEvent, ProxyListener};
pub use names::{resolve, ResolvedName};
pub use proxy::{NwsProxy, ProxyConfig, ProxyCredentials, ProxyInfo, ProxyState, ProxyStatus};
pub use stream::{open_stream, NwsStream};

uniffi::setup_scaffolding!();

/// Sets the most verbose log level that reaches logcat (on Android) and the
/// listeners, for the whole process. The default is [`LogLevel::Info`].
#[uniffi::export]
pub fn set_log_level(level: LogLevel) {
    listener::set_level(level);
}

/// How many calls into this library are still running on its runtime
/// (diagnostics and tests: a cancelled call, such as a `read` under
/// `withTimeout`, leaves none behind; the proxy's own listeners and streams
/// are not counted).
#[uniffi::export]
pub fn active_call_count() -> u32 {
    u32::try_from(runtime::active_tasks()).unwrap_or(u32::MAX)
}

/// The version of this library (the `nws-bindings` crate), such as `0.1.0`.
#[uniffi::export]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
