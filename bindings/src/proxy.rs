//! The in-app entry proxy: [`NwsProxy`] wraps core's `EntryProxy` (SOCKS5
//! and HTTP on loopback) with the lifecycle an app needs: start, stop,
//! status, a listener, and a restart on the same ports after the OS took the
//! listening sockets away (iOS does that to suspended apps).

use nws_core::sync::lock;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use nostr::{PublicKey, RelayUrl};
use nws_core::entry::{Credentials, Entry, EntryConfig, EntryProxy};
use nws_core::names::{parse_host, ExitAddress};

use crate::error::NwsError;
use crate::listener::{notify_event, notify_state, set_log_listener, ProxyEvent, ProxyListener};
use crate::runtime::{run, run_to_end, runtime};
use crate::stream::{open_on, NwsStream};

/// Longest user name or password SOCKS5 can carry (RFC 1929), in bytes.
const MAX_CREDENTIAL_LEN: usize = 255;
/// How long the liveness probe of a listening port may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Stream opens and closes within this long become one
/// [`ProxyEvent::StreamsChanged`].
const STREAM_EVENTS_EVERY: Duration = Duration::from_millis(100);
/// Shortest time between two automatic rebinds (a system that keeps
/// invalidating new sockets is not answered with a busy loop).
const REBIND_GAP: Duration = Duration::from_secs(1);

/// How to start a proxy. In Kotlin and Swift every field but `relays` has
/// the default shown.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ProxyConfig {
    /// Relay URLs (`ws://` or `wss://`) for names that carry no relays (an
    /// `npub1…` host); `.nostr` and `nprofile1…` names bring their own. May
    /// be empty if only such names are used.
    pub relays: Vec<String>,
    /// IP address to listen on; `localhost` means `127.0.0.1`. Anything but
    /// loopback exposes the proxy to the network. Default `127.0.0.1`.
    #[uniffi(default = "127.0.0.1")]
    pub listen_host: String,
    /// Serve SOCKS5 (RFC 1928, with RFC 1929 authentication). Default `true`.
    #[uniffi(default = true)]
    pub socks: bool,
    /// SOCKS5 port; 0 picks a free port on the first start and reuses it on
    /// later starts while it is free. Default 0.
    #[uniffi(default = 0)]
    pub socks_port: u16,
    /// Serve the HTTP proxy (`CONNECT` and absolute-form requests). Default `true`.
    #[uniffi(default = true)]
    pub http: bool,
    /// HTTP proxy port; 0 as for `socks_port`. Default 0.
    #[uniffi(default = 0)]
    pub http_port: u16,
    /// Require credentials from clients: fresh random ones on every start
    /// (returned in [`ProxyInfo`]) unless `credentials` is set. Other apps on
    /// the device can reach loopback too; turn this off only for tests.
    /// Default `true`.
    #[uniffi(default = true)]
    pub require_credentials: bool,
    /// Fixed credentials instead of random ones (they are then required even
    /// if `require_credentials` is false). Each field 1 to 255 bytes. Default none.
    #[uniffi(default = None)]
    pub credentials: Option<ProxyCredentials>,
    /// How long to wait for a relay connection, and then for the exit's
    /// answer, when opening a stream, in milliseconds. Default 10 000.
    #[uniffi(default = 10000)]
    pub connect_timeout_ms: u64,
    /// Exits that speak only the legacy wire format of the reference Go
    /// implementation (`npub1…` or hex public keys). Default empty.
    #[uniffi(default = [])]
    pub legacy_exits: Vec<String>,
    /// Send hosts that are not NWS names (`example.org`) through public
    /// exits discovered on `relays` (their kind-38333 announcements), the
    /// name unresolved on the device. Default `false`: such hosts are
    /// refused.
    #[uniffi(default = false)]
    pub public_exits: bool,
    /// Send hosts that are not NWS names through this one exit instead
    /// (`npub1…` or `nprofile1…`; an nprofile's relays are used). Wins over
    /// `public_exits`. Default none.
    #[uniffi(default = None)]
    pub exit: Option<String>,
    /// Answer SOCKS5 and HTTP `CONNECT` clients with success as soon as the
    /// name routes, before the exit has answered, so that their first bytes
    /// (a TLS ClientHello) ride in the stream's opening event: one relay
    /// round trip less before the first byte (about 2 relay round trips
    /// become 1). The price: when the exit refuses (its backend is down, say),
    /// the client sees a reset connection rather than a SOCKS5 reply code or
    /// HTTP status. Default `false`.
    #[uniffi(default = false)]
    pub early_reply: bool,
    /// Also serve a WebView listener: an HTTP proxy (`CONNECT` and
    /// absolute-form requests) for WebViews and browsers, which cannot send
    /// proxy credentials. It asks for none and serves only NWS names
    /// (`.nostr`, `npub1…`, `nprofile1…` hosts) to the exits they name,
    /// never `exit` or public exits (other hosts get HTTP 403), so another
    /// app on the device that finds the port gains nothing it could not get
    /// by running NWS itself. Its port is [`ProxyInfo::webview_port`].
    /// Default `false`.
    #[uniffi(default = false)]
    pub webview: bool,
    /// WebView listener port; 0 as for `socks_port`. Default 0.
    #[uniffi(default = 0)]
    pub webview_port: u16,
}

impl ProxyConfig {
    /// The defaults above with these relays (for Rust callers; Kotlin and
    /// Swift get the defaults from the generated constructor).
    pub fn new(relays: Vec<String>) -> Self {
        Self {
            relays,
            listen_host: "127.0.0.1".into(),
            socks: true,
            socks_port: 0,
            http: true,
            http_port: 0,
            require_credentials: true,
            credentials: None,
            connect_timeout_ms: 10_000,
            legacy_exits: Vec::new(),
            public_exits: false,
            exit: None,
            early_reply: false,
            webview: false,
            webview_port: 0,
        }
    }
}

/// A user name and password for the proxy: SOCKS5 username/password
/// authentication (RFC 1929) and HTTP `Proxy-Authorization: Basic` (RFC 7617).
///
/// Its Kotlin `toString()` and Swift `description` / `debugDescription`
/// never show the password (they are this type's Rust `Display` and `Debug`).
#[derive(Clone, PartialEq, Eq, uniffi::Record)]
#[uniffi::export(Debug, Display)]
pub struct ProxyCredentials {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Display for ProxyCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ProxyCredentials(username={}, password=<redacted>)",
            self.username
        )
    }
}

impl std::fmt::Debug for ProxyCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl From<&Credentials> for ProxyCredentials {
    fn from(c: &Credentials) -> Self {
        Self {
            username: c.username.clone(),
            password: c.password.clone(),
        }
    }
}

/// Where a started proxy listens, and what clients must present.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ProxyInfo {
    /// The listen address (`127.0.0.1` by default), as an IP literal.
    pub host: String,
    /// The SOCKS5 port, if SOCKS5 is on.
    pub socks_port: Option<u16>,
    /// The HTTP proxy port, if the HTTP proxy is on.
    pub http_port: Option<u16>,
    /// The WebView listener's port, if it is on (`ProxyConfig::webview`);
    /// it takes no credentials.
    pub webview_port: Option<u16>,
    /// The credentials clients must present, if any (new on every `start()`
    /// after a `stop()`; kept by `restart()`).
    pub credentials: Option<ProxyCredentials>,
}

/// Lifecycle state of a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ProxyState {
    /// Not listening (before the first start, after `stop()`, or after a
    /// failed start).
    Stopped,
    /// Binding its ports and setting up relays.
    Starting,
    /// Listening and serving clients.
    Running,
    /// Closing its listeners, client connections and relay connections.
    Stopping,
}

/// A snapshot of a proxy's state and counters. Counters start at zero on
/// every start.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ProxyStatus {
    /// The lifecycle state.
    pub state: ProxyState,
    /// Relays connected now.
    pub relays_connected: u32,
    /// Relays known (configured, or learnt from names used so far).
    pub relays_known: u32,
    /// Streams open now.
    pub streams_open: u32,
    /// Streams opened since start.
    pub streams_total: u64,
    /// Bytes sent from local clients towards exits, since start.
    pub bytes_sent: u64,
    /// Bytes received from exits and delivered to local clients, since start.
    pub bytes_received: u64,
}

/// The configuration, checked and converted once.
struct Settings {
    relays: Vec<RelayUrl>,
    host: IpAddr,
    socks_port: Option<u16>,
    http_port: Option<u16>,
    webview_port: Option<u16>,
    require_credentials: bool,
    credentials: Option<Credentials>,
    connect_timeout: Duration,
    legacy_exits: Vec<PublicKey>,
    public_exits: bool,
    exit: Option<ExitAddress>,
    early_reply: bool,
}

impl Settings {
    fn parse(c: ProxyConfig) -> Result<Self, NwsError> {
        let relays = c
            .relays
            .iter()
            .map(|r| {
                RelayUrl::parse(r).map_err(|e| NwsError::invalid(format!("relay URL `{r}`: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let host = if c.listen_host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            c.listen_host.parse().map_err(|_| {
                NwsError::invalid(format!(
                    "listen host `{}` is not an IP address",
                    c.listen_host
                ))
            })?
        };
        if !c.socks && !c.http && !c.webview {
            return Err(NwsError::invalid(
                "neither SOCKS5, HTTP nor the WebView listener is enabled",
            ));
        }
        if c.connect_timeout_ms == 0 {
            return Err(NwsError::invalid("connect timeout must be above 0 ms"));
        }
        let credentials = match c.credentials {
            Some(p) => {
                for (what, v) in [("user name", &p.username), ("password", &p.password)] {
                    if v.is_empty() || v.len() > MAX_CREDENTIAL_LEN {
                        return Err(NwsError::invalid(format!(
                            "proxy {what} must be 1 to {MAX_CREDENTIAL_LEN} bytes"
                        )));
                    }
                }
                Some(Credentials {
                    username: p.username,
                    password: p.password,
                })
            }
            None => None,
        };
        let legacy_exits = c
            .legacy_exits
            .iter()
            .map(|k| {
                PublicKey::parse(k)
                    .map_err(|e| NwsError::invalid(format!("legacy exit `{k}`: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let exit = match &c.exit {
            None => None,
            Some(name) => match parse_host(name) {
                Ok(Some(exit)) if !name.to_ascii_lowercase().ends_with(".nostr") => Some(exit),
                _ => {
                    return Err(NwsError::invalid(format!(
                        "exit `{name}` is not an npub or nprofile"
                    )))
                }
            },
        };
        Ok(Self {
            relays,
            host,
            socks_port: c.socks.then_some(c.socks_port),
            http_port: c.http.then_some(c.http_port),
            webview_port: c.webview.then_some(c.webview_port),
            require_credentials: c.require_credentials,
            credentials,
            connect_timeout: Duration::from_millis(c.connect_timeout_ms),
            legacy_exits,
            public_exits: c.public_exits,
            exit,
            early_reply: c.early_reply,
        })
    }

    /// The credentials for a fresh start.
    fn fresh_credentials(&self) -> Option<Credentials> {
        match &self.credentials {
            Some(c) => Some(c.clone()),
            None => self.require_credentials.then(Credentials::random),
        }
    }
}

struct Running {
    proxy: EntryProxy,
    credentials: Option<Credentials>,
    info: ProxyInfo,
    /// Which start this is (see [`Lifecycle::starts`]).
    generation: u64,
    /// Watches relays, streams and listeners; aborted with the run.
    _monitor: AbortOnDrop,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Default)]
struct Lifecycle {
    running: Option<Running>,
    /// Ports bound by the last start, reused by the next one while free.
    last_socks_port: Option<u16>,
    last_http_port: Option<u16>,
    last_webview_port: Option<u16>,
    /// Starts so far (each run's `generation`).
    starts: u64,
    /// The credentials of a run that stopped on its own (its listeners lost
    /// and a new start failed), kept for `app_resumed()`.
    kept_credentials: Option<Option<Credentials>>,
    /// When the last automatic rebind began.
    last_rebind: Option<tokio::time::Instant>,
}

struct Snapshot {
    state: ProxyState,
    info: Option<ProxyInfo>,
    /// The running entry, for calls that must not wait behind a start or
    /// stop (`status()`, `open_stream()`, `network_changed()`).
    entry: Option<Entry>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// An NWS entry proxy inside the app: SOCKS5 and/or HTTP on loopback,
/// routing `.nostr`, `npub1…` and `nprofile1…` hosts to their exit through
/// relays. Point the app's HTTP client at it with the address, ports and
/// credentials [`start`](NwsProxy::start) returns.
///
/// All methods may be called from any thread; `start`, `restart` and `stop`
/// are serialized.
#[derive(uniffi::Object)]
pub struct NwsProxy {
    id: u64,
    settings: Settings,
    lifecycle: tokio::sync::Mutex<Lifecycle>,
    snapshot: Mutex<Snapshot>,
    listener: Mutex<Option<Arc<dyn ProxyListener>>>,
}

#[uniffi::export]
impl NwsProxy {
    /// A stopped proxy with this configuration; nothing listens yet.
    ///
    /// # Errors
    ///
    /// [`NwsError::InvalidConfig`] if a relay URL or legacy exit key does not
    /// parse, the listen host is not an IP address, neither protocol is on,
    /// the timeout is 0, or fixed credentials are empty or over 255 bytes.
    #[uniffi::constructor]
    pub fn new(config: ProxyConfig) -> Result<Arc<Self>, NwsError> {
        crate::listener::install();
        Ok(Arc::new(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            settings: Settings::parse(config)?,
            lifecycle: tokio::sync::Mutex::new(Lifecycle::default()),
            snapshot: Mutex::new(Snapshot {
                state: ProxyState::Stopped,
                info: None,
                entry: None,
            }),
            listener: Mutex::new(None),
        }))
    }

    /// Sets (or with `None` removes) the listener for this proxy's state
    /// changes and for the library's log lines.
    pub fn set_listener(&self, listener: Option<Arc<dyn ProxyListener>>) {
        set_log_listener(self.id, listener.clone());
        *lock(&self.listener) = listener;
    }

    /// Starts listening and returns where. If the proxy is already running
    /// and its ports still accept connections, returns the same [`ProxyInfo`]
    /// and changes nothing; if the OS closed its listening sockets, restarts
    /// it as [`restart`](NwsProxy::restart) does. After a `stop()`, ports
    /// configured as 0 come back on the previous port numbers when those are
    /// free, and new random credentials are made.
    ///
    /// # Errors
    ///
    /// [`NwsError::Io`] if a port cannot be bound (say a fixed port in use),
    /// [`NwsError::Relay`] if the relay pool refuses the relays.
    ///
    /// Cancelling the call (a cancelled coroutine or Swift `Task`) leaves the
    /// proxy stopped: the start runs to its end and is then undone.
    pub async fn start(self: Arc<Self>) -> Result<ProxyInfo, NwsError> {
        self.start_call(false).await
    }

    /// Stops the proxy if it runs and starts it again on the same ports (when
    /// free) with the same credentials, so that clients configured before
    /// keep working. Call it when the app returns to the foreground on iOS.
    /// Open client connections are closed.
    ///
    /// # Errors
    ///
    /// As [`start`](NwsProxy::start).
    pub async fn restart(self: Arc<Self>) -> Result<ProxyInfo, NwsError> {
        self.start_call(true).await
    }

    /// Stops listening, closes every client connection and stream, and
    /// disconnects from the relays. Does nothing if the proxy is stopped.
    ///
    /// # Errors
    ///
    /// [`NwsError::Internal`] only if the runtime failed.
    pub async fn stop(self: Arc<Self>) -> Result<(), NwsError> {
        run(async move {
            self.stop_inner().await;
            Ok(())
        })
        .await
    }

    /// Tell the proxy that the device's network changed (Wi-Fi to cellular,
    /// back online): relays that are not connected are tried again at once
    /// instead of after their reconnection backoff (which grows from
    /// 0.5 s to 60 s while a relay stays unreachable). Does nothing while
    /// the proxy is stopped. Call it from Android's
    /// `ConnectivityManager.NetworkCallback` or iOS's `NWPathMonitor`.
    ///
    /// # Errors
    ///
    /// [`NwsError::Internal`] only if the runtime failed.
    pub async fn network_changed(self: Arc<Self>) -> Result<(), NwsError> {
        run(async move {
            if let Some(entry) = self.entry().await {
                entry.network_changed();
            }
            Ok(())
        })
        .await
    }

    /// Waits until at least one relay is connected (the proxy can open
    /// streams to names that use the configured relays), for at most
    /// `timeout_ms` milliseconds. Returns the number of relays connected.
    /// With no relays configured (only `.nostr` and `nprofile1…` names, which
    /// bring their own) there is nothing to wait for: returns 0 at once.
    ///
    /// # Errors
    ///
    /// [`NwsError::Stopped`] if the proxy is not running,
    /// [`NwsError::Timeout`] if no relay connected in time.
    pub async fn await_ready(self: Arc<Self>, timeout_ms: u64) -> Result<u32, NwsError> {
        run(async move {
            let entry = self
                .entry()
                .await
                .ok_or_else(|| NwsError::stopped("the proxy is not running"))?;
            if self.settings.relays.is_empty() {
                return Ok(0);
            }
            // Subscribed before the first count, so no change falls between.
            let mut changes = entry.relay_changes();
            let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
            loop {
                let (connected, _) = entry.relay_counts().await;
                if connected > 0 {
                    return Ok(u32::try_from(connected).unwrap_or(u32::MAX));
                }
                match tokio::time::timeout_at(deadline, changes.recv()).await {
                    Err(_) => {
                        return Err(NwsError::Timeout {
                            timeout_ms,
                            detail: format!("no relay connected within {timeout_ms} ms"),
                        })
                    }
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                        return Err(NwsError::stopped("the proxy stopped"))
                    }
                    Ok(_) => {}
                }
            }
        })
        .await
    }

    /// Call when the app returns to the foreground (Android `onStart` of the
    /// first activity, iOS `sceneWillEnterForeground`). If the proxy runs
    /// but the system closed its listening sockets meanwhile (iOS does so
    /// to suspended apps), it listens again on the same ports with the same
    /// credentials; if it stopped on its own (its listeners were lost and
    /// listening again failed), it starts again, also with the same
    /// credentials. Then relays not connected are tried at once, as
    /// [`network_changed`](NwsProxy::network_changed) does. A proxy stopped
    /// by `stop()` stays stopped. Returns where it listens, or `None` when
    /// it is stopped.
    ///
    /// # Errors
    ///
    /// As [`start`](NwsProxy::start), when listening again fails.
    pub async fn app_resumed(self: Arc<Self>) -> Result<Option<ProxyInfo>, NwsError> {
        run_to_end(async move {
            let mut lifecycle = self.lifecycle.lock().await;
            let running = lifecycle.running.as_ref().map(|r| r.info.clone());
            let info = match running {
                Some(info) if self.listening(&info).await => info,
                Some(_) => {
                    self.emit(ProxyEvent::ListenersLost {
                        reason: "a listening port no longer accepts connections".into(),
                    });
                    let info = self.start_locked(&mut lifecycle, true).await?;
                    self.emit(ProxyEvent::Rebound { info: info.clone() });
                    info
                }
                None if lifecycle.kept_credentials.is_some() => {
                    let info = self.start_locked(&mut lifecycle, false).await?;
                    self.emit(ProxyEvent::Rebound { info: info.clone() });
                    info
                }
                None => return Ok(None),
            };
            if let Some(r) = &lifecycle.running {
                r.proxy.entry().network_changed();
            }
            Ok(Some(info))
        })
        .await
    }

    /// The state and counters now (relay counts ask the relay pool). Does
    /// not wait behind a `start()` or `stop()` in progress: during one it
    /// reports that state with zero counters.
    ///
    /// # Errors
    ///
    /// [`NwsError::Internal`] only if the runtime failed.
    pub async fn status(self: Arc<Self>) -> Result<ProxyStatus, NwsError> {
        run(async move {
            let entry = self.entry().await;
            let state = self.state();
            let Some(entry) = entry else {
                return Ok(ProxyStatus {
                    state,
                    relays_connected: 0,
                    relays_known: 0,
                    streams_open: 0,
                    streams_total: 0,
                    bytes_sent: 0,
                    bytes_received: 0,
                });
            };
            let (connected, known) = entry.relay_counts().await;
            let stats = entry.stats();
            let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            Ok(ProxyStatus {
                state,
                relays_connected: count(connected),
                relays_known: count(known),
                streams_open: count(stats.streams_open.load(Ordering::Relaxed)),
                streams_total: stats.streams_total.load(Ordering::Relaxed),
                bytes_sent: stats.bytes_sent.load(Ordering::Relaxed),
                bytes_received: stats.bytes_received.load(Ordering::Relaxed),
            })
        })
        .await
    }

    /// The lifecycle state now, without waiting.
    pub fn state(&self) -> ProxyState {
        lock(&self.snapshot).state
    }

    /// Where the proxy listens while it runs (`None` when it is not running),
    /// without waiting.
    pub fn info(&self) -> Option<ProxyInfo> {
        lock(&self.snapshot).info.clone()
    }

    /// Opens a stream through the running proxy's relays to `destination`,
    /// `host:port` where host is an NWS name, for bytes without a proxy
    /// client. Counted in [`status`](NwsProxy::status); closed by `stop()`.
    ///
    /// # Errors
    ///
    /// [`NwsError::Stopped`] if the proxy is not running; otherwise as
    /// [`open_stream`](crate::open_stream).
    pub async fn open_stream(
        self: Arc<Self>,
        destination: String,
    ) -> Result<Arc<NwsStream>, NwsError> {
        run(async move {
            let entry = self
                .entry()
                .await
                .ok_or_else(|| NwsError::stopped("the proxy is not running"))?;
            open_on(entry, false, &destination).await
        })
        .await
    }
}

/// Where a `start()` or `restart()` call is, shared by the call's future and
/// its task (see [`NwsProxy::start_call`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartCall {
    /// The task is starting the proxy; the caller waits.
    Waiting,
    /// The caller stopped waiting: the task stops the proxy when it is done.
    Cancelled,
    /// The task is done (its result may not have reached the caller).
    Finished,
}

/// Undoes a start whose caller stopped waiting (dropped before
/// [`CancelledStart::disarm`]).
struct CancelledStart {
    proxy: Arc<NwsProxy>,
    call: Arc<Mutex<StartCall>>,
    armed: bool,
}

impl Drop for CancelledStart {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut call = lock(&self.call);
        match *call {
            StartCall::Waiting => *call = StartCall::Cancelled,
            StartCall::Finished => {
                // Started, but the caller never saw it: stop it again.
                let proxy = self.proxy.clone();
                if let Ok(rt) = runtime() {
                    rt.spawn(async move { proxy.stop_inner().await });
                }
            }
            StartCall::Cancelled => {}
        }
    }
}

impl NwsProxy {
    /// `start()` and `restart()`: the start runs to its end in a task; if
    /// the caller stopped waiting meanwhile, the proxy is stopped again, so
    /// that a cancelled start never leaves it running.
    async fn start_call(self: Arc<Self>, restart: bool) -> Result<ProxyInfo, NwsError> {
        let call = Arc::new(Mutex::new(StartCall::Waiting));
        let mut guard = CancelledStart {
            proxy: self.clone(),
            call: call.clone(),
            armed: true,
        };
        let result = run_to_end(async move {
            let result = self.start_inner(restart).await;
            let cancelled =
                std::mem::replace(&mut *lock(&call), StartCall::Finished) == StartCall::Cancelled;
            if cancelled {
                log::info!("start cancelled by the caller: stopping again");
                self.stop_inner().await;
                return Err(NwsError::stopped("the start was cancelled"));
            }
            result
        })
        .await;
        guard.armed = false;
        result
    }

    async fn stop_inner(&self) {
        let mut lifecycle = self.lifecycle.lock().await;
        lifecycle.kept_credentials = None;
        if let Some(running) = lifecycle.running.take() {
            self.set_state(ProxyState::Stopping, None);
            running.proxy.stop().await;
            self.set_state(ProxyState::Stopped, None);
            log::info!("proxy stopped");
        }
    }

    /// The running entry, without waiting for a start or stop in progress
    /// (`None` while stopping, stopped or starting).
    async fn entry(&self) -> Option<Entry> {
        lock(&self.snapshot).entry.clone()
    }

    async fn start_inner(self: &Arc<Self>, restart: bool) -> Result<ProxyInfo, NwsError> {
        let mut lifecycle = self.lifecycle.lock().await;
        self.start_locked(&mut lifecycle, restart).await
    }

    /// `start_inner` with the lifecycle locked by the caller.
    async fn start_locked(
        self: &Arc<Self>,
        lifecycle: &mut Lifecycle,
        restart: bool,
    ) -> Result<ProxyInfo, NwsError> {
        let kept = lifecycle.kept_credentials.take();
        let credentials = match lifecycle.running.take() {
            Some(running) => {
                if !restart && self.listening(&running.info).await {
                    let info = running.info.clone();
                    lifecycle.running = Some(running);
                    return Ok(info);
                }
                if !restart {
                    log::warn!("proxy listeners are gone (closed by the OS?): restarting");
                }
                self.set_state(ProxyState::Stopping, None);
                let Running {
                    proxy, credentials, ..
                } = running;
                proxy.stop().await;
                credentials
            }
            None => kept
                .clone()
                .unwrap_or_else(|| self.settings.fresh_credentials()),
        };
        self.set_state(ProxyState::Starting, None);
        let s = &self.settings;
        let mut config = EntryConfig::new(s.relays.clone());
        let socks_port = s
            .socks_port
            .map(|p| reusable_port(s.host, p, lifecycle.last_socks_port));
        let http_port = s
            .http_port
            .map(|p| reusable_port(s.host, p, lifecycle.last_http_port));
        config.socks_listen = socks_port.map(|p| SocketAddr::new(s.host, p));
        config.http_listen = http_port.map(|p| SocketAddr::new(s.host, p));
        let webview_port = s
            .webview_port
            .map(|p| reusable_port(s.host, p, lifecycle.last_webview_port));
        config.webview_listen = webview_port.map(|p| SocketAddr::new(s.host, p));
        config.credentials = credentials.clone();
        config.connect_timeout = s.connect_timeout;
        config.legacy_exits = s.legacy_exits.clone();
        config.public_exits = s.public_exits;
        config.exit = s.exit.clone();
        config.early_reply = s.early_reply;
        let proxy = match EntryProxy::start(config).await {
            Ok(p) => p,
            Err(e) => {
                self.set_state(ProxyState::Stopped, None);
                log::warn!("proxy did not start: {e}");
                if kept.is_some() || restart {
                    // A rebind or resume: keep the credentials for the next try.
                    lifecycle.kept_credentials = Some(credentials);
                }
                self.emit(ProxyEvent::StartFailed {
                    reason: e.to_string(),
                });
                return Err(e.into());
            }
        };
        lifecycle.last_socks_port = proxy.socks_addr().map(|a| a.port());
        lifecycle.last_http_port = proxy.http_addr().map(|a| a.port());
        lifecycle.last_webview_port = proxy.webview_addr().map(|a| a.port());
        let info = ProxyInfo {
            host: s.host.to_string(),
            socks_port: lifecycle.last_socks_port,
            http_port: lifecycle.last_http_port,
            webview_port: lifecycle.last_webview_port,
            credentials: credentials.as_ref().map(ProxyCredentials::from),
        };
        log::info!(
            "proxy running on {}: SOCKS5 port {:?}, HTTP port {:?}, WebView port {:?}",
            info.host,
            info.socks_port,
            info.http_port,
            info.webview_port
        );
        lifecycle.starts += 1;
        let generation = lifecycle.starts;
        let monitor = runtime()?.spawn(monitor(
            Arc::downgrade(self),
            proxy.entry().clone(),
            proxy.listener_lost(),
            generation,
        ));
        lifecycle.running = Some(Running {
            proxy,
            credentials,
            info: info.clone(),
            generation,
            _monitor: AbortOnDrop(monitor),
        });
        lock(&self.snapshot).entry = lifecycle.running.as_ref().map(|r| r.proxy.entry().clone());
        self.set_state(ProxyState::Running, Some(info.clone()));
        Ok(info)
    }

    /// Whether every listening port of `info` still accepts a TCP connection.
    async fn listening(&self, info: &ProxyInfo) -> bool {
        let host = match self.settings.host {
            IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            a => a,
        };
        for port in [info.socks_port, info.http_port, info.webview_port]
            .into_iter()
            .flatten()
        {
            let connect = tokio::net::TcpStream::connect(SocketAddr::new(host, port));
            match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
                Ok(Ok(_)) => {}
                _ => return false,
            }
        }
        true
    }

    /// Hands `event` to the listener, if any.
    fn emit(&self, event: ProxyEvent) {
        if let Some(l) = lock(&self.listener).clone() {
            notify_event(l, event);
        }
    }

    /// Listens again after run `generation` lost a listener (unless that run
    /// has ended meanwhile): same ports, same credentials.
    ///
    /// Boxed: the future starts a run whose monitor spawns this future, a
    /// cycle the compiler cannot see through otherwise.
    fn rebind(
        self: Arc<Self>,
        generation: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            let mut lifecycle = self.lifecycle.lock().await;
            if lifecycle.running.as_ref().map(|r| r.generation) != Some(generation) {
                return;
            }
            if let Some(last) = lifecycle.last_rebind {
                let wait = REBIND_GAP.saturating_sub(last.elapsed());
                if !wait.is_zero() {
                    drop(lifecycle);
                    tokio::time::sleep(wait).await;
                    lifecycle = self.lifecycle.lock().await;
                    if lifecycle.running.as_ref().map(|r| r.generation) != Some(generation) {
                        return;
                    }
                }
            }
            lifecycle.last_rebind = Some(tokio::time::Instant::now());
            log::warn!("the system closed a listening socket: listening again on the same ports");
            self.emit(ProxyEvent::ListenersLost {
                reason: "the system closed or invalidated a listening socket".into(),
            });
            match self.start_locked(&mut lifecycle, true).await {
                Ok(info) => self.emit(ProxyEvent::Rebound { info }),
                Err(e) => log::warn!("listening again failed, the proxy is stopped: {e}"),
            }
        })
    }

    fn set_state(&self, state: ProxyState, info: Option<ProxyInfo>) {
        {
            let mut snapshot = lock(&self.snapshot);
            if state != ProxyState::Running {
                snapshot.entry = None;
            }
            if snapshot.state == state && snapshot.info == info {
                return;
            }
            snapshot.state = state;
            snapshot.info = info;
        }
        if let Some(l) = lock(&self.listener).clone() {
            notify_state(l, state);
        }
    }
}

impl Drop for NwsProxy {
    /// A proxy dropped while running is stopped in the background.
    fn drop(&mut self) {
        set_log_listener(self.id, None);
        if let Some(running) = self.lifecycle.get_mut().running.take() {
            if let Ok(rt) = runtime() {
                rt.spawn(running.proxy.stop());
            }
        }
    }
}

/// Watches one run of the proxy (`generation`) until it ends: relay changes
/// and stream counts become [`ProxyEvent`]s, and a lost listener starts a
/// rebind (in a task of its own, since the rebind ends this run and aborts
/// this task).
async fn monitor(
    proxy: Weak<NwsProxy>,
    entry: Entry,
    lost: impl std::future::Future<Output = ()>,
    generation: u64,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut changes = entry.relay_changes();
    let stats = entry.stats().clone();
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    // Relays that connected before the subscription above are reported
    // from a snapshot; `up` keeps a relay seen in both from counting twice.
    let mut up = std::collections::HashSet::new();
    let known = count(entry.relay_counts().await.1);
    let connected = entry.connected_relays().await;
    for (i, url) in connected.iter().enumerate() {
        up.insert(url.clone());
        let Some(p) = proxy.upgrade() else { return };
        p.emit(ProxyEvent::RelayConnected {
            url: url.to_string(),
            connected: count(i + 1),
            known,
        });
    }
    tokio::pin!(lost);
    loop {
        tokio::select! {
            _ = &mut lost => {
                if let (Some(p), Ok(rt)) = (proxy.upgrade(), runtime()) {
                    rt.spawn(p.rebind(generation));
                }
                return;
            }
            change = changes.recv() => {
                let change = match change {
                    Ok(c) => c,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                };
                let changed = if change.connected {
                    up.insert(change.url.clone())
                } else {
                    up.remove(&change.url)
                };
                if !changed {
                    continue;
                }
                let (connected, known) = entry.relay_counts().await;
                let Some(p) = proxy.upgrade() else { return };
                let (url, connected, known) = (change.url.to_string(), count(connected), count(known));
                p.emit(if change.connected {
                    ProxyEvent::RelayConnected { url, connected, known }
                } else {
                    ProxyEvent::RelayDisconnected { url, connected, known }
                });
            }
            _ = stats.changed.notified() => {
                tokio::time::sleep(STREAM_EVENTS_EVERY).await;
                let Some(p) = proxy.upgrade() else { return };
                p.emit(ProxyEvent::StreamsChanged {
                    open: count(stats.streams_open.load(Ordering::Relaxed)),
                    total: stats.streams_total.load(Ordering::Relaxed),
                });
            }
        }
    }
}

/// The port to bind: the configured one, or for a configured 0 the port of
/// the last start while it is free (so that clients configured with it keep
/// working), else 0 for a new free port.
fn reusable_port(host: IpAddr, configured: u16, last: Option<u16>) -> u16 {
    match (configured, last) {
        (0, Some(port)) => {
            // Binding and closing at once is how to ask "is it free?";
            // SO_REUSEADDR (set by std and tokio on Unix) lets the real bind
            // follow right away.
            if std::net::TcpListener::bind(SocketAddr::new(host, port)).is_ok() {
                port
            } else {
                log::warn!("port {port} is taken now: listening on a new free port");
                0
            }
        }
        (configured, _) => configured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `start()` whose caller stops waiting at various moments ends with
    /// the proxy stopped; one left alone ends running.
    #[test]
    fn a_cancelled_start_leaves_the_proxy_stopped() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for wait_us in [0u64, 50, 200, 1000, 5000] {
            let proxy = NwsProxy::new(ProxyConfig::new(vec![])).unwrap();
            rt.block_on(async {
                let call = proxy.clone().start();
                let r = tokio::time::timeout(Duration::from_micros(wait_us), call).await;
                if let Ok(started) = r {
                    // It finished before the caller gave up: not cancelled.
                    started.unwrap();
                    proxy.clone().stop().await.unwrap();
                }
                for _ in 0..200 {
                    if proxy.state() == ProxyState::Stopped && proxy.info().is_none() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
            assert_eq!(
                proxy.state(),
                ProxyState::Stopped,
                "cancelled after {wait_us} us"
            );
            assert!(proxy.info().is_none());
        }
    }

    #[test]
    fn rejects_a_relay_url_that_does_not_parse() {
        let r = NwsProxy::new(ProxyConfig::new(vec!["not a url".into()]));
        assert!(matches!(r, Err(NwsError::InvalidConfig { .. })));
    }

    #[test]
    fn rejects_a_host_name_as_listen_host() {
        let mut c = ProxyConfig::new(vec![]);
        c.listen_host = "example.com".into();
        assert!(matches!(
            NwsProxy::new(c),
            Err(NwsError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn rejects_a_proxy_with_no_protocol() {
        let mut c = ProxyConfig::new(vec![]);
        c.socks = false;
        c.http = false;
        assert!(matches!(
            NwsProxy::new(c),
            Err(NwsError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn credentials_are_random_per_start_unless_fixed() {
        let s = Settings::parse(ProxyConfig::new(vec![])).unwrap();
        let (a, b) = (
            s.fresh_credentials().unwrap(),
            s.fresh_credentials().unwrap(),
        );
        assert_ne!(a.password, b.password);

        let mut c = ProxyConfig::new(vec![]);
        c.require_credentials = false;
        assert!(Settings::parse(c.clone())
            .unwrap()
            .fresh_credentials()
            .is_none());
        c.credentials = Some(ProxyCredentials {
            username: "u".into(),
            password: "p".into(),
        });
        let fixed = Settings::parse(c).unwrap().fresh_credentials().unwrap();
        assert_eq!(
            (fixed.username.as_str(), fixed.password.as_str()),
            ("u", "p")
        );
    }

    #[test]
    fn a_free_previous_port_is_reused_and_a_taken_one_is_not() {
        let host = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let taken = std::net::TcpListener::bind((host, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        assert_eq!(reusable_port(host, 0, Some(port)), 0);
        drop(taken);
        assert_eq!(reusable_port(host, 0, Some(port)), port);
        assert_eq!(reusable_port(host, 0, None), 0);
        assert_eq!(reusable_port(host, 4321, Some(port)), 4321);
    }
}
