//! What an entry node is configured with ([`EntryConfig`]).

use std::net::SocketAddr;
use std::time::Duration;

use nostr::{Keys, PublicKey, RelayUrl};

use crate::engine::StreamConfig;
use crate::names::ExitAddress;
use crate::pacing::LegacyPacing;

use super::Credentials;

/// Configuration of an entry node.
#[derive(Debug, Clone)]
pub struct EntryConfig {
    /// Relays used for names that carry none (an `npub1…` host, say).
    pub relays: Vec<RelayUrl>,
    /// Where the SOCKS5 proxy listens (`None`: no SOCKS5).
    pub socks_listen: Option<SocketAddr>,
    /// Where the HTTP proxy listens (`None`: no HTTP proxy).
    pub http_listen: Option<SocketAddr>,
    /// Where the WebView listener listens (`None`: none): an HTTP proxy
    /// (`CONNECT` and absolute-form requests) for WebViews and browsers,
    /// which cannot send proxy credentials. It asks for none and serves only
    /// NWS names (`.nostr`, `npub1…`, `nprofile1…` hosts) to the exits they
    /// name: never `exit` or public exits, so a local app that finds it
    /// gains nothing it could not get by running NWS itself. Other hosts get
    /// HTTP 403.
    pub webview_listen: Option<SocketAddr>,
    /// Credentials clients must present (SOCKS5 RFC 1929, HTTP
    /// `Proxy-Authorization: Basic`); `None` accepts every local client.
    pub credentials: Option<Credentials>,
    /// How long to wait for a relay connection and then for the exit's answer.
    pub connect_timeout: Duration,
    /// How long a client may take to send its proxy request.
    pub handshake_timeout: Duration,
    /// A stream with no traffic either way for this long is aborted.
    pub idle_timeout: Duration,
    /// Exits known to speak only the legacy format (the reference implementation).
    pub legacy_exits: Vec<PublicKey>,
    /// Speak the legacy format to every exit.
    pub legacy_all: bool,
    /// How streams in the legacy format pace their data events
    /// (`docs/PROTOCOL.md`, "What we do toward legacy peers").
    pub legacy_pacing: LegacyPacing,
    /// Most client connections served at once. A client past the cap waits
    /// for a free slot for up to `handshake_timeout` (so a flood of silent
    /// clients delays others by at most that long); then it is refused with
    /// SOCKS5 reply 1 "general failure" or HTTP 503 and a log line. The
    /// connections already served are not disturbed.
    pub max_connections: usize,
    /// A persistent key for every stream (for exits that allow only listed
    /// entries); `None` (the default) uses a fresh key per stream, so
    /// streams cannot be linked to each other.
    pub keys: Option<Keys>,
    /// Per-stream limits.
    pub stream: StreamConfig,
    /// Send hosts that are not NWS names through public exits discovered
    /// from their kind-38333 announcements on `relays`.
    pub public_exits: bool,
    /// Send hosts that are not NWS names through this exit (a public exit
    /// named by npub or nprofile; its relays, else `relays`). Wins over
    /// `public_exits`.
    pub exit: Option<ExitAddress>,
    /// Reverse connect (`CONNECTR`): listen on this address, put it in
    /// every stream's `entryPublicAddress`, and take the stream's bytes
    /// over the plain TCP connection the exit makes to it (no Nostr, no
    /// encryption). Bound by [`EntryProxy::start`](super::EntryProxy::start) or
    /// [`Entry::listen_public`](super::Entry::listen_public).
    pub public_address: Option<SocketAddr>,
    /// Answer SOCKS5 `CONNECT` and HTTP `CONNECT` clients with success as
    /// soon as the name routes ([`Entry::check_route`](super::Entry::check_route)),
    /// before the exit has answered, so that the client's first bytes (a
    /// TLS ClientHello, an HTTP request) ride in the stream's `CONNECT`
    /// (0-RTT): one relay round trip less to the first byte. The price: a
    /// refusal by the exit (backend down, policy, too many streams) reaches
    /// the client as a reset connection instead of a SOCKS5 reply code or
    /// an HTTP status. Off by default.
    pub early_reply: bool,
}

impl EntryConfig {
    /// Defaults: no listeners, no credentials, 10 s connect and handshake
    /// timeouts, 5 min idle timeout, 512 connections.
    pub fn new(relays: Vec<RelayUrl>) -> Self {
        Self {
            relays,
            socks_listen: None,
            http_listen: None,
            webview_listen: None,
            credentials: None,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            legacy_exits: Vec::new(),
            legacy_all: false,
            legacy_pacing: LegacyPacing::default(),
            max_connections: 512,
            keys: None,
            stream: StreamConfig::default(),
            public_exits: false,
            exit: None,
            public_address: None,
            early_reply: false,
        }
    }
}
