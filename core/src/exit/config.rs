//! What an exit is told to do: its relays and keys, where streams may go,
//! and its limits.

use std::path::PathBuf;
use std::time::Duration;

use nostr::{Keys, PublicKey, RelayUrl};

use crate::engine::StreamConfig;
use crate::pacing::LegacyPacing;
use crate::policy::EgressPolicy;

/// The HTTPS front of an exit: TLS for its `.nostr` names, terminated in
/// the exit, the decrypted bytes forwarded to `target`.
#[derive(Debug, Clone)]
pub struct HttpsFront {
    /// Destination port that selects the front (the port in the
    /// application's `https://<name>.nostr:<port>/` URL; 443 by default).
    pub port: u16,
    /// Where the decrypted bytes go, `host:port` (plain TCP, typically the
    /// HTTP backend).
    pub target: String,
}

/// Configuration of an exit node.
#[derive(Debug, Clone)]
pub struct ExitConfig {
    /// Relays the exit listens and answers on.
    pub relays: Vec<RelayUrl>,
    /// The exit's long-term keys (its public key is its address).
    pub keys: Keys,
    /// The backend that streams to the exit's own names are dialled to
    /// (`host:port`); for a private-service exit, every stream. Empty: none
    /// (a public exit or an HTTPS front alone).
    pub backend: String,
    /// Public exit: dial ordinary `host:port` destinations (through
    /// `egress`) and announce the exit (kind 38333) every 10 s.
    pub public: bool,
    /// Which destinations a public exit may dial, and which entry public
    /// addresses a `CONNECTR` may make it dial.
    pub egress: EgressPolicy,
    /// Optional HTTPS front.
    pub https: Option<HttpsFront>,
    /// Most streams open at once; a `CONNECT` beyond it is refused with
    /// `too-many-streams`.
    pub max_streams: usize,
    /// How long a backend dial may take.
    pub connect_timeout: Duration,
    /// A stream with no traffic either way for this long is aborted.
    pub idle_timeout: Duration,
    /// How long to wait for a first relay connection at start.
    pub relay_timeout: Duration,
    /// Per-stream limits.
    pub stream: StreamConfig,
    /// Answer every entry in the legacy format, as the reference exit does
    /// (for interoperability tests).
    pub legacy: bool,
    /// How streams in the legacy format pace their data events
    /// (`docs/PROTOCOL.md`, "What we do toward legacy peers").
    pub legacy_pacing: LegacyPacing,
    /// Events whose `created_at` is further than this from now are dropped
    /// (replay protection; default 60 s).
    pub replay_window: Duration,
    /// Entry keys allowed to open streams (`None`: anyone). Useful with
    /// entries that use a persistent key.
    pub allowed_entries: Option<Vec<PublicKey>>,
    /// Most streams one entry key may have open at once.
    pub max_streams_per_entry: usize,
    /// Most new streams one entry key may open per minute.
    pub max_new_streams_per_minute: u32,
    /// Directory of the journal of served streams
    /// ([`journal`](super::journal)), so that no request is served twice
    /// across restarts; `None` keeps it in memory only.
    pub state_dir: Option<PathBuf>,
    /// This process's instance id among the exit processes that share the
    /// key (`docs/PROTOCOL.md`, section 8); `None`: random per start. At
    /// most 64 bytes.
    pub instance: Option<String>,
}

impl ExitConfig {
    /// A configuration with defaults: 256 streams (64 per entry key, 600 new
    /// ones per entry key and minute), anyone may connect, 10 s dial
    /// timeout, 5 min idle timeout, 10 s relay timeout, 60 s replay window.
    pub fn new(relays: Vec<RelayUrl>, keys: Keys, backend: impl Into<String>) -> Self {
        Self {
            relays,
            keys,
            backend: backend.into(),
            public: false,
            egress: EgressPolicy::default(),
            https: None,
            max_streams: 256,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            relay_timeout: Duration::from_secs(10),
            stream: StreamConfig::default(),
            legacy: false,
            legacy_pacing: LegacyPacing::default(),
            replay_window: crate::transport::DEFAULT_REPLAY_WINDOW,
            allowed_entries: None,
            max_streams_per_entry: 64,
            max_new_streams_per_minute: 600,
            state_dir: None,
            instance: None,
        }
    }
}
