//! Test harness for NWS end-to-end tests.
//!
//! Everything here talks to 127.0.0.1 only:
//!
//! * [`HttpBackend`]: a real HTTP/1.1 server (hyper 1) serving fixed files, used as the
//!   service behind an exit node.
//! * [`ThirdPartyRelay`]: a `nostr-rs-relay` child process with an in-memory database,
//!   used as an independent relay implementation.
//! * [`curl`] / [`curl_http`]: run the real `curl` binary against an entry proxy.
//! * [`http_client`] / [`http_client_via`]: a reqwest client (plain HTTP, SOCKS5 and
//!   HTTP proxies supported).
//! * [`process`]: the real `nws` binary as child processes (relay, exit, entry).
//! * [`legacy`]: emulators of the reference implementation's legacy exit and entry.

pub mod faulty;
pub mod hostile;
pub mod legacy;
pub mod process;

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::fs::OpenOptions;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::task::{JoinHandle, JoinSet};

// ---------------------------------------------------------------------------
// Fixed backend files
// ---------------------------------------------------------------------------

/// Body of `GET /hello`.
pub const HELLO_BODY: &[u8] = b"hello from the nws backend\n";

/// The pseudo-random files served by [`HttpBackend`]: (name, size in bytes).
/// Each has its own seed, so no file is a prefix of another.
pub const RANDOM_FILES: &[(&str, usize)] = &[
    ("1k", 1024),
    ("64k", 64 * 1024),
    ("1m", 1024 * 1024),
    ("10m", 10 * 1024 * 1024),
    ("50m", 50 * 1024 * 1024),
];

/// Names of every file served (without the leading `/`).
pub const FILE_NAMES: &[&str] = &["hello", "1k", "64k", "1m", "10m", "50m"];

static RANDOM_DATA: [OnceLock<Vec<u8>>; 5] = [
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
];
static FILE_SHAS: [OnceLock<String>; 6] = [
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
];

/// Deterministic pseudo-random bytes (splitmix64; fast even in debug builds).
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = vec![0u8; len];
    let mut chunks = out.chunks_exact_mut(8);
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for chunk in &mut chunks {
        chunk.copy_from_slice(&next().to_le_bytes());
    }
    let rest = chunks.into_remainder();
    let tail = next().to_le_bytes();
    let n = rest.len();
    rest.copy_from_slice(&tail[..n]);
    out
}

fn normalize_name(name: &str) -> &str {
    name.trim_start_matches('/')
}

fn file_index(name: &str) -> Option<usize> {
    let name = normalize_name(name);
    FILE_NAMES.iter().position(|n| *n == name)
}

/// The bytes of a backend file by name (`"hello"`, `"1k"`, `"64k"`, `"1m"`, `"10m"`, `"50m"`; a
/// leading `/` is accepted). Generated once per process. `None` for unknown names.
pub fn backend_file(name: &str) -> Option<&'static [u8]> {
    let idx = file_index(name)?;
    if idx == 0 {
        return Some(HELLO_BODY);
    }
    let (_, size) = RANDOM_FILES[idx - 1];
    let data = RANDOM_DATA[idx - 1]
        .get_or_init(|| pseudo_random_bytes(size, 0x6E77_735F_7465_7374 ^ (idx as u64)));
    Some(data.as_slice())
}

/// SHA-256 (lower-case hex) of a backend file; cached per process.
pub fn backend_file_sha256(name: &str) -> Option<String> {
    let idx = file_index(name)?;
    Some(
        FILE_SHAS[idx]
            .get_or_init(|| sha256_hex(backend_file(name).expect("known file")))
            .clone(),
    )
}

/// SHA-256 of `bytes` as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

// ---------------------------------------------------------------------------
// HttpBackend
// ---------------------------------------------------------------------------

/// A real HTTP/1.1 server on `127.0.0.1:<random port>` (keep-alive enabled).
///
/// Routes:
/// * `GET /hello` → `"hello from the nws backend\n"` (text/plain)
/// * `GET /1k`, `/64k`, `/1m`, `/10m` → fixed pseudo-random bytes (application/octet-stream)
/// * `/echo` (any method, normally POST) → the request body (application/octet-stream)
/// * `/sha256` and `/sha256/<anything>` (any method, normally POST) → the SHA-256 of the
///   request body as lower-case hex and a newline (text/plain), so that an upload can be
///   checked without sending it back
/// * anything else → 404 (files with a method other than GET/HEAD → 405)
///
/// Every response carries `Content-Length`. Requests are counted, in all and per path
/// ([`HttpBackend::request_count`], [`HttpBackend::path_count`]). Dropping the backend stops
/// the server and closes all its connections.
pub struct HttpBackend {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    per_path: Arc<Mutex<HashMap<String, usize>>>,
    task: JoinHandle<()>,
}

impl HttpBackend {
    /// Bind 127.0.0.1:0 and start serving. Must be called inside a tokio runtime.
    pub async fn start() -> HttpBackend {
        Self::start_on(Ipv4Addr::LOCALHOST).await
    }

    /// Like [`HttpBackend::start`] on another loopback address
    /// (`127.0.0.2`, say: Linux routes all of 127.0.0.0/8 to `lo`; or `::1`).
    pub async fn start_on(ip: impl Into<IpAddr>) -> HttpBackend {
        let ip = ip.into();
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .unwrap_or_else(|e| panic!("bind HttpBackend on {ip}:0: {e}"));
        let addr = listener.local_addr().expect("local_addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let per_path = Arc::new(Mutex::new(HashMap::new()));
        let paths = per_path.clone();
        let task = tokio::spawn(async move {
            // Connection tasks live in this JoinSet: aborting the accept task drops it,
            // which aborts every open connection as well.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let (stream, _) = match accepted {
                            Ok(x) => x,
                            Err(_) => {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        };
                        let _ = stream.set_nodelay(true);
                        let counter = counter.clone();
                        let paths = paths.clone();
                        conns.spawn(async move {
                            let svc = service_fn(move |req: Request<Incoming>| {
                                counter.fetch_add(1, Ordering::SeqCst);
                                *nws_core::sync::lock(&paths)
                                    .entry(req.uri().path().to_string())
                                    .or_insert(0) += 1;
                                handle(req)
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .keep_alive(true)
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        HttpBackend {
            addr,
            requests,
            per_path,
            task,
        }
    }

    /// `http://IP:PORT/<path>` (`[IP]` for IPv6; path with or without a leading `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, normalize_name(path))
    }

    /// `IP:PORT` as a string (what an exit node / CONNECT target is given).
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// Bytes of a served file (`"hello"`, `"1k"`, `"64k"`, `"1m"`, `"10m"`, leading `/` ok).
    /// Panics on an unknown name.
    pub fn file(&self, name: &str) -> &[u8] {
        backend_file(name).unwrap_or_else(|| panic!("HttpBackend has no file {name:?}"))
    }

    /// SHA-256 hex of a served file. Panics on an unknown name.
    pub fn sha256(&self, name: &str) -> String {
        backend_file_sha256(name).unwrap_or_else(|| panic!("HttpBackend has no file {name:?}"))
    }

    /// Number of HTTP requests the backend has received so far (all routes, incl. 404s).
    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Number of HTTP requests the backend has received so far for `path` (the request
    /// target's path without the query; a leading `/` is added if missing), any method.
    pub fn path_count(&self, path: &str) -> usize {
        let path = format!("/{}", normalize_name(path));
        nws_core::sync::lock(&self.per_path)
            .get(&path)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond(status: StatusCode, content_type: &str, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .header(hyper::header::CONTENT_LENGTH, body.len())
        .body(Full::new(body))
        .expect("valid response")
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/sha256" || path.starts_with("/sha256/") {
        return Ok(match req.into_body().collect().await {
            Ok(collected) => respond(
                StatusCode::OK,
                "text/plain",
                Bytes::from(format!("{}\n", sha256_hex(&collected.to_bytes()))),
            ),
            Err(e) => respond(
                StatusCode::BAD_REQUEST,
                "text/plain",
                Bytes::from(format!("error reading body: {e}\n")),
            ),
        });
    }
    if path == "/echo" {
        return Ok(match req.into_body().collect().await {
            Ok(collected) => respond(
                StatusCode::OK,
                "application/octet-stream",
                collected.to_bytes(),
            ),
            Err(e) => respond(
                StatusCode::BAD_REQUEST,
                "text/plain",
                Bytes::from(format!("error reading body: {e}\n")),
            ),
        });
    }
    let name = path.strip_prefix('/').unwrap_or(&path);
    let Some(body) = backend_file(name).filter(|_| !name.starts_with('/')) else {
        return Ok(respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found\n"),
        ));
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            Bytes::from_static(b"method not allowed\n"),
        ));
    }
    let content_type = if path == "/hello" {
        "text/plain"
    } else {
        "application/octet-stream"
    };
    Ok(respond(
        StatusCode::OK,
        content_type,
        Bytes::from_static(body),
    ))
}

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

/// A currently free TCP port on 127.0.0.1 (bind port 0, read it, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Poll until `addr` accepts a TCP connection, or `timeout` elapses.
pub async fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// ThirdPartyRelay (nostr-rs-relay)
// ---------------------------------------------------------------------------

const RELAY_HINT: &str = "nostr-rs-relay 0.8.12 is required by the end-to-end tests; \
     install it with `scripts/install-test-deps.sh` (or set NOSTR_RS_RELAY=/path/to/nostr-rs-relay)";

/// How long to wait for nostr-rs-relay to accept TCP connections after spawning it.
pub const RELAY_START_TIMEOUT: Duration = Duration::from_secs(30);

/// A `nostr-rs-relay` child process listening on `ws://127.0.0.1:PORT`, with an in-memory
/// database and limits raised for tunnelling (1 MiB+ events/messages/frames, no rate
/// limits). Its output goes to [`ThirdPartyRelay::log_path`]. Killed on drop.
pub struct ThirdPartyRelay {
    /// `ws://127.0.0.1:PORT`
    pub url: String,
    pub port: u16,
    binary: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// Limits written to the relay's config (bytes).
pub const RELAY_MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;
pub const RELAY_MAX_WS_BYTES: usize = 8 * 1024 * 1024;

/// The `[limits]` of a [`ThirdPartyRelay`] that tests may change
/// ([`ThirdPartyRelay::start_with`]); [`Default`] is what [`ThirdPartyRelay::start`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// `messages_per_sec`: nostr-rs-relay's one rate limit for the whole relay (not per
    /// connection): its database writer sleeps once more than `60 × rate` events were
    /// written in a minute, ephemeral events included; it answers nothing and sends no
    /// `NOTICE` about it, events just queue (up to `event_persist_buffer`) and then the
    /// connections stop being read. `None`: unset, no limit.
    pub messages_per_sec: Option<u32>,
    /// `max_event_bytes`: longest `["EVENT", …]` message taken, in bytes; a longer one is
    /// dropped with a `NOTICE` ("event exceeded max size") and no `OK`.
    pub max_event_bytes: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            messages_per_sec: None,
            max_event_bytes: RELAY_MAX_EVENT_BYTES,
        }
    }
}

impl ThirdPartyRelay {
    /// Locate the nostr-rs-relay binary: `$NOSTR_RS_RELAY`, then `PATH`, then
    /// `~/.cargo/bin/nostr-rs-relay`.
    pub fn binary() -> Result<PathBuf, String> {
        if let Some(p) = std::env::var_os("NOSTR_RS_RELAY").filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            if is_executable(&p) {
                return Ok(p);
            }
            return Err(format!(
                "NOSTR_RS_RELAY={} is not an executable file; {RELAY_HINT}",
                p.display()
            ));
        }
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                let p = dir.join("nostr-rs-relay");
                if is_executable(&p) {
                    return Ok(p);
                }
            }
        }
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
        if let Some(home) = cargo_home {
            let p = home.join("bin").join("nostr-rs-relay");
            if is_executable(&p) {
                return Ok(p);
            }
        }
        Err(format!(
            "nostr-rs-relay not found (checked $NOSTR_RS_RELAY, PATH, ~/.cargo/bin); {RELAY_HINT}"
        ))
    }

    /// Start a relay on a free port and wait (≤ 30 s) until it accepts TCP connections.
    /// Errors (binary missing, relay exited, timeout) carry a message meant to be shown
    /// as a test failure.
    pub async fn start() -> Result<ThirdPartyRelay, String> {
        Self::start_with(RelayLimits::default()).await
    }

    /// Like [`ThirdPartyRelay::start`] with other `[limits]` in the relay's config.
    pub async fn start_with(limits: RelayLimits) -> Result<ThirdPartyRelay, String> {
        let binary = Self::binary()?;
        let dir = tempfile::Builder::new()
            .prefix("nws-nostr-rs-relay-")
            .tempdir()
            .map_err(|e| format!("creating temp dir for nostr-rs-relay: {e}"))?;
        let config_path = dir.path().join("config.toml");
        let log_path = dir.path().join("relay.log");
        let mut relay = ThirdPartyRelay {
            url: String::new(),
            port: 0,
            binary,
            config_path,
            log_path,
            child: None,
            dir,
        };
        // The free port can be taken between free_port() and the relay binding it; retry
        // with a fresh port a few times.
        let mut last_err = String::new();
        for _attempt in 0..3 {
            relay.port = free_port();
            relay.url = format!("ws://127.0.0.1:{}", relay.port);
            std::fs::write(&relay.config_path, relay_config(relay.port, &limits))
                .map_err(|e| format!("writing {}: {e}", relay.config_path.display()))?;
            match relay.spawn_and_wait().await {
                Ok(()) => return Ok(relay),
                Err(e) => {
                    relay.stop();
                    last_err = e;
                }
            }
        }
        Err(last_err)
    }

    /// The relay's WebSocket URL (`ws://127.0.0.1:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The relay's temp directory (config, log; deleted on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The generated config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// File receiving the relay's stdout and stderr (appended across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the relay has logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether the child process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kill the relay (SIGKILL) and reap it. Idempotent. All stored events are lost
    /// (in-memory database); open WebSocket connections are reset.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stop (if running) and start again on the same port, waiting (≤ 30 s) until it
    /// accepts TCP connections. The new instance starts with an empty database.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.stop();
        let deadline = Instant::now() + RELAY_START_TIMEOUT;
        loop {
            match self.spawn_and_wait().await {
                Ok(()) => return Ok(()),
                // e.g. the port is momentarily unavailable: retry until the deadline.
                Err(_) if Instant::now() < deadline => {
                    self.stop();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    self.stop();
                    return Err(e);
                }
            }
        }
    }

    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| format!("opening {}: {e}", self.log_path.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("cloning log handle: {e}"))?;
        let db_dir = self.dir.path();
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config_path)
            .arg("--db")
            .arg(db_dir)
            .current_dir(db_dir)
            .env(
                "RUST_LOG",
                std::env::var("NWS_TEST_RELAY_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| {
                format!(
                    "spawning {} failed: {e}; {RELAY_HINT}",
                    self.binary.display()
                )
            })?;
        self.child = Some(child);

        let deadline = Instant::now() + RELAY_START_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!(
                    "nostr-rs-relay exited during startup ({status}) on port {}; log:\n{}",
                    self.port,
                    tail(&self.log(), 4000)
                ));
            }
            if let Ok(Ok(_)) = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(self.addr()),
            )
            .await
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "nostr-rs-relay did not accept connections on port {} within {:?}; log:\n{}",
                    self.port,
                    RELAY_START_TIMEOUT,
                    tail(&self.log(), 4000)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ThirdPartyRelay {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for ThirdPartyRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThirdPartyRelay")
            .field("url", &self.url)
            .field("binary", &self.binary)
            .field("log_path", &self.log_path)
            .field("running", &self.child.is_some())
            .finish()
    }
}

/// The relay's config file for `port` with `limits`.
fn relay_config(port: u16, limits: &RelayLimits) -> String {
    let rate = match limits.messages_per_sec {
        Some(n) => format!("messages_per_sec = {n}"),
        None => "# messages_per_sec / subscriptions_per_min left unset: no rate limits".into(),
    };
    format!(
        r#"# generated by nws-tests for nostr-rs-relay 0.8.12
[info]
relay_url = "ws://127.0.0.1:{port}/"
name = "nws-tests nostr-rs-relay"
description = "nostr-rs-relay started by the NWS end-to-end tests"

[database]
engine = "sqlite"
in_memory = true
min_conn = 1
max_conn = 4

[network]
address = "127.0.0.1"
port = {port}

[options]
# accept any created_at (NIP-59 style randomised timestamps included)

[limits]
{rate}
max_event_bytes = {max_event}
max_ws_message_bytes = {max_ws}
max_ws_frame_bytes = {max_ws}
broadcast_buffer = 65536
event_persist_buffer = 16384

[authorization]
nip42_auth = false

[verified_users]
mode = "disabled"
"#,
        max_event = limits.max_event_bytes,
        max_ws = RELAY_MAX_WS_BYTES,
    )
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

// ---------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------

/// Result of running `curl`.
#[derive(Clone)]
pub struct CurlOutput {
    /// curl's exit code (0 = success; 7 = couldn't connect; 28 = timeout;
    /// 52 = empty reply; 56 = receive failure, incl. an HTTP proxy refusing CONNECT;
    /// 97 = SOCKS proxy handshake failure). -1 if killed by a signal.
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl CurlOutput {
    pub fn success(&self) -> bool {
        self.status == 0
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl fmt::Debug for CurlOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CurlOutput")
            .field("status", &self.status)
            .field("stdout_len", &self.stdout.len())
            .field("stdout_head", &preview(&self.stdout))
            .field("stderr", &self.stderr)
            .finish()
    }
}

/// Result of [`curl_http`]: body and HTTP status separated.
#[derive(Clone)]
pub struct CurlHttp {
    /// curl's exit code (see [`CurlOutput::status`]).
    pub status: i32,
    /// `%{http_code}`: the status of the last HTTP response received (0 if none).
    pub http_code: u16,
    /// `%{http_connect}`: the status an HTTP proxy answered to CONNECT (0 if no CONNECT).
    pub connect_code: u16,
    /// The response body (curl's `--output`).
    pub body: Vec<u8>,
    pub stderr: String,
}

impl CurlHttp {
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

impl fmt::Debug for CurlHttp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CurlHttp")
            .field("status", &self.status)
            .field("http_code", &self.http_code)
            .field("connect_code", &self.connect_code)
            .field("body_len", &self.body.len())
            .field("body_head", &preview(&self.body))
            .field("stderr", &self.stderr)
            .finish()
    }
}

fn preview(b: &[u8]) -> String {
    let n = b.len().min(200);
    String::from_utf8_lossy(&b[..n]).into_owned()
}

const PROXY_ENV: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
];

/// Run `curl --silent --show-error --max-time 120 <args...>` (proxy environment variables
/// removed, so only explicit `--proxy`/`--socks5-hostname` options apply).
///
/// Typical uses:
/// `curl(&["--socks5-hostname", &socks, &backend.url("/hello")])`,
/// `curl(&["--proxytunnel", "--proxy", &http_proxy, &url])`.
/// Panics if curl cannot be spawned.
pub async fn curl(args: &[&str]) -> CurlOutput {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["--silent", "--show-error", "--max-time", "120"])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for v in PROXY_ENV {
        cmd.env_remove(v);
    }
    let out = cmd.output().await.unwrap_or_else(|e| {
        panic!("failed to run curl ({e}); install it with scripts/install-test-deps.sh")
    });
    CurlOutput {
        status: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Like [`curl`], but writes the body to a temp file (`--output`) and the HTTP status to
/// stdout (`--write-out '%{http_code} %{http_connect}'`), returning them separately. Do not pass
/// `--output`/`-o` or `--write-out`/`-w` yourself.
pub async fn curl_http(args: &[&str]) -> CurlHttp {
    let tmp = tempfile::NamedTempFile::new().expect("temp file for curl output");
    let path = tmp.path().to_str().expect("utf-8 temp path").to_string();
    let mut full: Vec<&str> = vec![
        "--output",
        &path,
        "--write-out",
        "%{http_code} %{http_connect}",
    ];
    full.extend_from_slice(args);
    let out = curl(&full).await;
    let body = std::fs::read(tmp.path()).unwrap_or_default();
    let codes = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut codes = codes.split_whitespace().map(|c| c.parse().unwrap_or(0));
    CurlHttp {
        status: out.status,
        http_code: codes.next().unwrap_or(0),
        connect_code: codes.next().unwrap_or(0),
        body,
        stderr: out.stderr,
    }
}

// ---------------------------------------------------------------------------
// reqwest
// ---------------------------------------------------------------------------

/// A plain-HTTP reqwest client that ignores proxy environment variables.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("build reqwest client")
}

/// A reqwest client sending every request through `proxy_url`:
/// `"socks5h://127.0.0.1:PORT"` (hostname resolved by the proxy), `"socks5://…"`
/// (resolved locally) or `"http://127.0.0.1:PORT"` (HTTP proxy: absolute-form requests
/// for `http://` URLs; CONNECT only for `https://`).
pub fn http_client_via(proxy_url: &str) -> reqwest::Client {
    let proxy = reqwest::Proxy::all(proxy_url)
        .unwrap_or_else(|e| panic!("invalid proxy url {proxy_url:?}: {e}"));
    reqwest::Client::builder()
        .no_proxy()
        .proxy(proxy)
        .timeout(Duration::from_secs(120))
        .build()
        .expect("build reqwest client")
}

// ---------------------------------------------------------------------------
// hyper over tokio-socks (reqwest's SOCKS support needs a TLS backend)
// ---------------------------------------------------------------------------

/// GETs (or POSTs, with `body`) an `http://host[:port]/path` URL through the
/// SOCKS5 proxy at `proxy`, handing the host name to the proxy unresolved
/// (like `socks5h`), with hyper's HTTP/1.1 client. Returns status and body.
pub async fn socks5_request(
    proxy: &str,
    url: &str,
    body: Option<Vec<u8>>,
) -> Result<(u16, Vec<u8>), String> {
    use http_body_util::BodyExt;
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad url {url}: {e}"))?;
    let host = uri.host().ok_or("url without host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio_socks::tcp::Socks5Stream::connect(proxy, (host.as_str(), port))
        .await
        .map_err(|e| format!("socks5 connect: {e}"))?;
    let io = hyper_util::rt::TokioIo::new(stream.into_inner());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let method = if body.is_some() { "POST" } else { "GET" };
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, host)
        .body(http_body_util::Full::new(Bytes::from(
            body.unwrap_or_default(),
        )))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, bytes.to_vec()))
}

/// The SOCKS5 reply code (RFC 1928 §6) that curl reports as "(N)" at the end
/// of its error message for a refused SOCKS5 connection.
pub fn socks_code(curl_stderr: &str) -> Option<u8> {
    let open = curl_stderr.rfind('(')?;
    let close = curl_stderr[open..].find(')')? + open;
    curl_stderr[open + 1..close].parse().ok()
}
