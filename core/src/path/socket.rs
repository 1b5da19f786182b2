//! The websocket transport the relay pool connects with ([`RelaySockets`]):
//! a plain tokio-tungstenite connection (rustls for `wss://`, with the
//! Mozilla roots and any extra CA given to [`crate::relay_tls`]) whose
//! frames pass through a tap on their way to and from the pool.
//!
//! The tap is where a relay connection is learned (see [`super`]):
//! - every `["EVENT", …]` sent is remembered (id, size, kind) until the
//!   relay answers; an `OK` whose id is empty or unknown is matched to the
//!   oldest event still waiting (relays answer in order) and handed to the
//!   pool rewritten with that id, so that nothing upstream loses it;
//! - `OK false` answers and `NOTICE`s feed the size search and the pacer;
//! - an event refused with `auth-required:` is sent again once the pool
//!   has authenticated (NIP-42), and so is the prober's subscription;
//! - the prober's own subscription, probes and their echoes never reach
//!   the pool;
//! - stream events (kind 28333) go straight to [`StreamEvents`], past the
//!   pool: the pool would check every id and signature, which a
//!   version-3 frame does not need (`docs/PROTOCOL.md`, "Authenticating
//!   stream events"), and copy each event twice.
//!
//! A writer task owns the socket's write half: it paces events when the
//! relay asked for fewer ([`super::Pacer`]) and runs the size prober.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_wsocket::Message as PoolMessage;
use futures_util::{Sink, SinkExt, StreamExt};
use nostr::{ClientMessage, EventBuilder, JsonUtil, Keys, Kind, Tag, Url};
use nostr_sdk::pool::transport::error::TransportError as WsError;
use nostr_sdk::pool::transport::websocket::{WebSocketSink, WebSocketStream, WebSocketTransport};
use nostr_sdk::pool::ConnectionMode;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WireMessage;
use tokio_util::sync::PollSender;

use super::{is_not_about_size, is_rate_signal, Pacer, SizeSearch};
use crate::protocol::KIND_STREAM;
use crate::sync::lock;

/// Events remembered per connection while they wait for an answer.
const MAX_WAITING: usize = 4096;
/// An event unanswered for this long gets no answer any more.
const UNANSWERED_AFTER: Duration = Duration::from_secs(120);
/// Bytes of refused events kept to send again after authentication.
const MAX_HELD_BYTES: usize = 4 * 1024 * 1024;
/// Where stream events read from any relay connection go (set once by the
/// transport), unverified: the receiver proves each one
/// ([`crate::protocol::open_stream_event`]).
#[derive(Default)]
pub struct StreamEvents {
    sink: std::sync::OnceLock<Box<StreamSink>>,
}

type StreamSink = dyn Fn(nostr::Event) + Send + Sync;

impl std::fmt::Debug for StreamEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamEvents")
    }
}

impl StreamEvents {
    /// Sets where stream events go; only the first call counts.
    pub fn set(&self, sink: impl Fn(nostr::Event) + Send + Sync + 'static) {
        let _ = self.sink.set(Box::new(sink));
    }

    /// Hands over an `["EVENT", <sub>, <event>]` frame if it carries a
    /// stream event and a sink is set; false leaves it to the pool.
    fn take(&self, text: &str) -> bool {
        let Some(sink) = self.sink.get() else {
            return false;
        };
        if field_num(text, "\"kind\":") != Some(KIND_STREAM) {
            return false;
        }
        match serde_json::from_str::<(&str, serde::de::IgnoredAny, nostr::Event)>(text) {
            Ok(("EVENT", _, event)) if event.kind.as_u16() == KIND_STREAM => {
                sink(event);
                true
            }
            _ => false,
        }
    }
}

/// Frames the pool may queue for the writer before its sink waits.
const WRITER_QUEUE: usize = 64;
/// How long the first control event may take to be answered before the
/// prober gives up on this connection (the relay answers nothing of ours).
const FIRST_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a probe's answer (a relay that throttles after a
/// refusal may sleep a while first); without one, nothing is concluded.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the prober waits for the relay's NIP-11 figure before probing.
const NIP11_WAIT: Duration = Duration::from_secs(2);
/// An unanswered first control event goes again after this long.
const CONTROL_RETRY: Duration = Duration::from_secs(1);
/// A probe whose control did not come back either goes again after this long.
const PROBE_RETRY: Duration = Duration::from_secs(2);
/// How often the prober looks at the answers while it waits.
const POLL: Duration = Duration::from_millis(50);
/// After its echo, how long an event's `OK` may take before the relay
/// counts as one that does not answer ephemeral events.
const OK_AFTER_ECHO: Duration = Duration::from_secs(1);

/// What is known about one relay, shared by its successive connections and
/// by every stream that publishes through it.
#[derive(Debug)]
pub struct PathState {
    /// The relay, as `scheme://host:port/path` without a trailing slash.
    pub name: String,
    inner: Mutex<PathInner>,
}

#[derive(Debug)]
struct PathInner {
    size: SizeSearch,
    /// Whether the relay answers ephemeral events with `OK` (`None`: not known yet).
    answers_ok: Option<bool>,
    pacer: Pacer,
    /// The NIP-11 fetch ended (with or without a figure).
    nip11_done: bool,
    /// Events refused as too large at a size that passed before.
    shrinks: u64,
}

impl PathState {
    fn new(name: String) -> Self {
        Self {
            name,
            inner: Mutex::new(PathInner {
                size: SizeSearch::default(),
                answers_ok: None,
                pacer: Pacer::new(Instant::now()),
                nip11_done: false,
                shrinks: 0,
            }),
        }
    }

    /// The size search as it stands (message bytes).
    pub fn size(&self) -> SizeSearch {
        lock(&self.inner).size.clone()
    }

    /// Largest `["EVENT", …]` message known to pass, in bytes.
    pub fn confirmed(&self) -> usize {
        lock(&self.inner).size.confirmed
    }

    /// Whether the relay answers ephemeral events with `OK` (`None` while unknown).
    pub fn answers_ok(&self) -> Option<bool> {
        lock(&self.inner).answers_ok
    }

    /// Events per second the relay is held to, once it asked for fewer.
    pub fn pace(&self) -> Option<f64> {
        lock(&self.inner).pacer.rate()
    }

    /// The relay's NIP-11 document was read: `limit` is its message limit
    /// in bytes, if it publishes one.
    pub fn nip11(&self, limit: Option<usize>) {
        let mut inner = lock(&self.inner);
        if let Some(limit) = limit {
            inner.size.published(limit);
        }
        inner.nip11_done = true;
    }

    fn accepted(&self, size: usize, kind: u16, by_ok: bool) {
        let mut inner = lock(&self.inner);
        inner.size.accepted(size);
        if by_ok && is_ephemeral(kind) {
            inner.answers_ok = Some(true);
        }
    }

    fn rejected(&self, size: usize, message: &str) {
        let mut inner = lock(&self.inner);
        if is_rate_signal(message) {
            inner.pacer.slow_down(Instant::now());
            log::info!(
                "relay {}: \"{message}\": paced to {:.1} events/s",
                self.name,
                inner.pacer.rate().unwrap_or(0.0)
            );
            return;
        }
        if is_not_about_size(message) {
            return;
        }
        let before = inner.size.clone();
        if inner.size.rejected(size) {
            inner.shrinks += 1;
        }
        if inner.size != before {
            log::info!(
                "relay {}: refused a {size}-byte event (\"{message}\"): sizes now {:?}",
                self.name,
                inner.size
            );
        }
    }

    fn no_ok(&self) {
        let mut inner = lock(&self.inner);
        if inner.answers_ok.is_none() {
            inner.answers_ok = Some(false);
            log::info!(
                "relay {}: does not answer ephemeral events with OK; not waiting for it",
                self.name
            );
        }
    }

    fn rate_notice(&self, message: &str) {
        let mut inner = lock(&self.inner);
        inner.pacer.slow_down(Instant::now());
        log::info!(
            "relay {}: NOTICE \"{message}\": paced to {:.1} events/s",
            self.name,
            inner.pacer.rate().unwrap_or(0.0)
        );
    }

    fn reserve(&self) -> Instant {
        lock(&self.inner).pacer.reserve(Instant::now())
    }

    fn nip11_done(&self) -> bool {
        lock(&self.inner).nip11_done
    }

    fn next_probe(&self) -> Option<usize> {
        lock(&self.inner).size.next_probe()
    }
}

fn is_ephemeral(kind: u16) -> bool {
    (20_000..30_000).contains(&kind)
}

/// `scheme://host:port/path` without a trailing slash, the key of a relay's
/// [`PathState`].
pub fn path_name(url: &str) -> String {
    url.trim_end_matches('/').to_ascii_lowercase()
}

/// The relays' [`PathState`]s, by [`path_name`].
#[derive(Debug, Default)]
pub struct Paths {
    map: Mutex<HashMap<String, Arc<PathState>>>,
}

impl Paths {
    /// The state of the relay at `url`, created on first use.
    pub fn get(&self, url: &str) -> Arc<PathState> {
        let name = path_name(url);
        Arc::clone(
            lock(&self.map)
                .entry(name.clone())
                .or_insert_with(|| Arc::new(PathState::new(name))),
        )
    }

    /// The state of the relay at `url`, if it was ever connected or named.
    pub fn find(&self, url: &str) -> Option<Arc<PathState>> {
        lock(&self.map).get(&path_name(url)).cloned()
    }
}

/// nostr-sdk's websocket transport for our relay pool (see the module
/// documentation).
#[derive(Debug, Clone)]
pub struct RelaySockets {
    paths: Arc<Paths>,
    tls: Arc<rustls::ClientConfig>,
    events: Arc<StreamEvents>,
}

impl RelaySockets {
    /// Sockets that record what they learn into `paths` and hand stream
    /// events to `events`.
    pub fn new(paths: Arc<Paths>, events: Arc<StreamEvents>) -> Self {
        Self {
            paths,
            tls: crate::relay_tls::client_config(),
            events,
        }
    }
}

impl WebSocketTransport for RelaySockets {
    fn support_ping(&self) -> bool {
        true
    }

    fn connect<'a>(
        &'a self,
        url: &'a Url,
        _mode: &'a ConnectionMode,
        timeout: Duration,
    ) -> nostr::util::BoxedFuture<'a, Result<(WebSocketSink, WebSocketStream), WsError>> {
        Box::pin(async move {
            let ws = tokio::time::timeout(timeout, open(url, &self.tls))
                .await
                .map_err(|_| WsError::backend(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
                .map_err(WsError::backend)?;
            let (write, read) = ws.split();
            let path = self.paths.get(url.as_str());
            let (inject_tx, inject_rx) = mpsc::unbounded_channel();
            let tap = Arc::new(Tap::new(path, inject_tx, Arc::clone(&self.events)));
            let (to_writer, from_pool) = mpsc::channel(WRITER_QUEUE);
            tokio::spawn(writer(Arc::clone(&tap), from_pool, inject_rx, write));
            let sink: WebSocketSink = Box::new(PoolSink(PollSender::new(to_writer)));
            let stream = read.filter_map(move |frame| {
                let tap = Arc::clone(&tap);
                async move { from_relay(&tap, frame) }
            });
            Ok((sink, Box::pin(stream) as WebSocketStream))
        })
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<QuickAck>>;

/// A relay's TCP connection that acknowledges every segment it reads at
/// once (Linux and Android `TCP_QUICKACK`, which the kernel clears again
/// by itself, so it is set after every read).
///
/// Relays that leave Nagle's algorithm on (nostr-rs-relay does) hold a
/// small frame while an earlier one is unacknowledged; with delayed
/// acknowledgements here that cost about 40 ms per request (an `OK`, then
/// the exit's answer right behind it).
struct QuickAck(tokio::net::TcpStream);

impl QuickAck {
    fn quick_ack(&self) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use std::os::fd::AsRawFd;
            let one: libc::c_int = 1;
            // SAFETY: a valid socket and a c_int option of the right size;
            // failure only means the kernel acknowledges as it would anyway.
            unsafe {
                libc::setsockopt(
                    self.0.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_QUICKACK,
                    std::ptr::addr_of!(one).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
}

impl tokio::io::AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.0).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.quick_ack();
        }
        r
    }
}

impl tokio::io::AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

async fn open(
    url: &Url,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let host = url.host_str().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "relay URL without host")
    })?;
    let port = url.port_or_known_default().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "relay URL without port")
    })?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::net::TcpStream::connect((bare, port)).await?;
    let _ = tcp.set_nodelay(true);
    let connector = if url.scheme() == "wss" {
        tokio_tungstenite::Connector::Rustls(Arc::clone(tls))
    } else {
        tokio_tungstenite::Connector::Plain
    };
    let tcp = QuickAck(tcp);
    tcp.quick_ack();
    let (ws, _) =
        tokio_tungstenite::client_async_tls_with_config(url.as_str(), tcp, None, Some(connector))
            .await?;
    Ok(ws)
}

/// The pool's end of the writer's queue.
struct PoolSink(PollSender<PoolMessage>);

impl Sink<PoolMessage> for PoolSink {
    type Error = WsError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Pin::new(&mut self.0)
            .poll_ready(cx)
            .map_err(|_| WsError::backend(closed()))
    }

    fn start_send(mut self: Pin<&mut Self>, item: PoolMessage) -> Result<(), WsError> {
        Pin::new(&mut self.0)
            .start_send(item)
            .map_err(|_| WsError::backend(closed()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Pin::new(&mut self.0)
            .poll_flush(cx)
            .map_err(|_| WsError::backend(closed()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Pin::new(&mut self.0)
            .poll_close(cx)
            .map_err(|_| WsError::backend(closed()))
    }
}

fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "relay connection closed")
}

/// An event sent on this connection and not answered yet.
struct Waiting {
    id: String,
    size: usize,
    kind: u16,
    /// The frame, kept while the relay wants authentication first.
    text: Option<Arc<str>>,
    /// When it was sent.
    at: Instant,
}

/// What the relay said about one of the prober's events.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// `OK true`.
    Ok,
    /// The event came back on the prober's subscription.
    Echo,
    /// `OK false` with this message.
    Refused(String),
}

#[derive(Default)]
struct TapState {
    waiting: VecDeque<Waiting>,
    /// Refused with `auth-required:`: sent again after authentication.
    held: Vec<Arc<str>>,
    held_bytes: usize,
    /// The relay sent an `AUTH` challenge.
    challenged: bool,
    /// Ids of our `AUTH` events waiting for their `OK`.
    auth_ids: Vec<String>,
    /// The prober's subscription was closed with `auth-required:`.
    req_refused: bool,
    /// Controls echoed without an `OK` yet, and when to give up on it.
    ok_check: Option<(Vec<String>, Instant)>,
    /// The prober's events by id: their size and what came of them.
    probe_ids: HashMap<String, (usize, Vec<(Answer, Instant)>)>,
}

/// What one connection's frames teach (see the module documentation).
struct Tap {
    path: Arc<PathState>,
    probe_keys: Keys,
    sub_id: String,
    state: Mutex<TapState>,
    /// An answer to a probe arrived.
    wake: Notify,
    /// Frames the tap wants sent (resends after authentication).
    inject: mpsc::UnboundedSender<Arc<str>>,
    /// Where stream events go past the pool.
    events: Arc<StreamEvents>,
}

/// What becomes of a frame from the relay.
enum Verdict {
    Pass,
    Rewrite(String),
    Swallow,
}

impl Tap {
    fn new(
        path: Arc<PathState>,
        inject: mpsc::UnboundedSender<Arc<str>>,
        events: Arc<StreamEvents>,
    ) -> Self {
        Self {
            events,
            path,
            probe_keys: Keys::generate(),
            sub_id: format!("nws-path-{}", uuid::Uuid::new_v4().simple()),
            state: Mutex::new(TapState::default()),
            wake: Notify::new(),
            inject,
        }
    }

    /// Notes a frame going to the relay; returns whether it is an event.
    fn outgoing(&self, text: &str) -> bool {
        if text.starts_with("[\"EVENT\"") {
            let Some(id) = field_str(text, "\"id\":\"") else {
                return true;
            };
            let kind = field_num(text, "\"kind\":").unwrap_or(0);
            let mut st = lock(&self.state);
            let keep = st.challenged;
            let now = Instant::now();
            st.waiting.push_back(Waiting {
                id: id.to_string(),
                size: text.len(),
                kind,
                text: keep.then(|| Arc::from(text)),
                at: now,
            });
            // Events long unanswered will get no answer (relays that send
            // no OK for ephemeral events).
            while st
                .waiting
                .front()
                .is_some_and(|w| now > w.at + UNANSWERED_AFTER)
                || st.waiting.len() > MAX_WAITING
            {
                st.waiting.pop_front();
            }
            return true;
        }
        if text.starts_with("[\"AUTH\"") {
            if let Some(id) = field_str(text, "\"id\":\"") {
                lock(&self.state).auth_ids.push(id.to_string());
            }
        }
        false
    }

    /// Reads a frame from the relay.
    fn incoming(&self, text: &str) -> Verdict {
        // The frame's type is at its start (a byte range: the text may hold
        // multi-byte characters anywhere after it).
        let head = text;
        if head.starts_with("[\"OK\"") {
            return self.on_ok(text);
        }
        if head.starts_with("[\"EVENT\"") {
            let ours = text
                .get(8..)
                .map(|rest| rest.trim_start().trim_start_matches(',').trim_start())
                .is_some_and(|rest| rest.starts_with(&format!("\"{}\"", self.sub_id)));
            if !ours {
                if self.events.take(text) {
                    return Verdict::Swallow;
                }
                return Verdict::Pass;
            }
            if let Some(id) = field_str(text, "\"id\":\"") {
                self.probe_answer(id, Answer::Echo);
            }
            return Verdict::Swallow;
        }
        if head.starts_with("[\"EOSE\"") || head.starts_with("[\"CLOSED\"") {
            let Ok(v) = serde_json::from_str::<Vec<serde_json::Value>>(text) else {
                return Verdict::Pass;
            };
            if v.get(1).and_then(|s| s.as_str()) != Some(self.sub_id.as_str()) {
                return Verdict::Pass;
            }
            let message = v.get(2).and_then(|m| m.as_str()).unwrap_or("");
            if message.starts_with("auth-required:") {
                lock(&self.state).req_refused = true;
            }
            return Verdict::Swallow;
        }
        if head.starts_with("[\"NOTICE\"") {
            if let Ok(v) = serde_json::from_str::<Vec<serde_json::Value>>(text) {
                let message = v.get(1).and_then(|m| m.as_str()).unwrap_or("");
                log::debug!("relay {}: NOTICE {message}", self.path.name);
                if is_rate_signal(message) {
                    self.path.rate_notice(message);
                }
            }
            return Verdict::Pass;
        }
        if head.starts_with("[\"AUTH\"") {
            lock(&self.state).challenged = true;
        }
        Verdict::Pass
    }

    fn on_ok(&self, text: &str) -> Verdict {
        let Ok(v) = serde_json::from_str::<Vec<serde_json::Value>>(text) else {
            return Verdict::Pass;
        };
        let id = v.get(1).and_then(|s| s.as_str()).unwrap_or("");
        let status = v.get(2).and_then(|s| s.as_bool()).unwrap_or(false);
        let message = v.get(3).and_then(|m| m.as_str()).unwrap_or("").to_string();
        let mut st = lock(&self.state);
        if let Some(i) = st.auth_ids.iter().position(|a| a == id) {
            st.auth_ids.remove(i);
            if status {
                self.after_auth(&mut st);
            }
            return Verdict::Pass;
        }
        // The event this answers: by id; for an id that is not one (empty,
        // say), the oldest event still waiting that is larger than the relay
        // is known to take (refusals are about size far more often than
        // not), else the oldest. A well-formed id nobody waits for is
        // passed on as it is: it must not take another event's place.
        let well_formed = id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
        let by_id = st.waiting.iter().position(|w| w.id == id);
        let matched = match by_id {
            Some(i) => st.waiting.remove(i),
            None if well_formed => None,
            None => {
                let confirmed = self.path.confirmed();
                let i = st
                    .waiting
                    .iter()
                    .position(|w| w.size > confirmed)
                    .unwrap_or(0);
                st.waiting.remove(i)
            }
        };
        let Some(event) = matched else {
            return Verdict::Pass;
        };
        if status {
            self.path.accepted(event.size, event.kind, true);
        } else {
            if message.starts_with("auth-required:") {
                if let Some(t) = event.text.clone() {
                    if st.held_bytes + t.len() <= MAX_HELD_BYTES {
                        st.held_bytes += t.len();
                        st.held.push(t);
                    }
                }
            }
            self.path.rejected(event.size, &message);
        }
        let probe = st.probe_ids.contains_key(&event.id);
        drop(st);
        if probe {
            let answer = if status {
                Answer::Ok
            } else {
                Answer::Refused(message)
            };
            self.probe_answer(&event.id, answer);
            return Verdict::Swallow;
        }
        if by_id.is_some() {
            Verdict::Pass
        } else {
            log::debug!(
                "relay {}: OK with id \"{id}\" taken as the answer to {}",
                self.path.name,
                event.id
            );
            let fixed = serde_json::json!(["OK", event.id, status, message]);
            Verdict::Rewrite(fixed.to_string())
        }
    }

    /// The pool authenticated: what the relay refused for want of it goes again.
    fn after_auth(&self, st: &mut TapState) {
        log::info!("relay {}: authenticated (NIP-42)", self.path.name);
        st.challenged = false;
        st.held_bytes = 0;
        for t in st.held.drain(..) {
            let _ = self.inject.send(t);
        }
        if std::mem::take(&mut st.req_refused) {
            let _ = self.inject.send(Arc::from(self.probe_req()));
        }
    }

    fn probe_answer(&self, id: &str, answer: Answer) {
        let mut st = lock(&self.state);
        if let Some((size, answers)) = st.probe_ids.get_mut(id) {
            if answer == Answer::Echo {
                // An echo is acceptance, whatever the OK says.
                self.path.accepted(*size, 0, false);
            }
            answers.push((answer, Instant::now()));
            drop(st);
            self.wake.notify_one();
        }
    }

    fn probe_req(&self) -> String {
        serde_json::json!([
            "REQ",
            self.sub_id,
            {"kinds": [KIND_STREAM], "authors": [self.probe_keys.public_key().to_hex()], "limit": 0}
        ])
        .to_string()
    }

    /// Builds one of the prober's events, `size` bytes as a whole frame.
    fn probe_event(&self, size: usize) -> Option<(String, String)> {
        let pk = self.probe_keys.public_key();
        let build = |content: String| {
            EventBuilder::new(Kind::Custom(KIND_STREAM), content)
                .tag(Tag::public_key(pk))
                .sign_with_keys(&self.probe_keys)
                .ok()
        };
        let overhead = ClientMessage::event(build(String::new())?).as_json().len();
        let n = size.saturating_sub(overhead);
        let mut raw = vec![0u8; n * 3 / 4 + 3];
        rand::Rng::fill(&mut rand::rng(), raw.as_mut_slice());
        use base64::Engine as _;
        let mut content = base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw);
        content.truncate(n);
        let ev = build(content)?;
        let id = ev.id.to_hex();
        let frame = ClientMessage::event(ev).as_json();
        lock(&self.state)
            .probe_ids
            .insert(id.clone(), (frame.len(), Vec::new()));
        Some((id, frame))
    }

    /// Whether a control echoed without an `OK` got one in time; if not,
    /// the relay does not answer ephemeral events.
    fn check_ok(&self, now: Instant) {
        let mut st = lock(&self.state);
        let Some((ids, by)) = st.ok_check.as_ref() else {
            return;
        };
        let ok = ids.iter().any(|id| {
            st.probe_ids
                .get(id)
                .is_some_and(|(_, a)| a.iter().any(|(x, _)| *x == Answer::Ok))
        });
        if ok {
            st.ok_check = None;
        } else if now >= *by {
            st.ok_check = None;
            drop(st);
            self.path.no_ok();
        }
    }

    /// The answers to probe `id` so far.
    fn answers(&self, id: &str) -> Vec<(Answer, Instant)> {
        lock(&self.state)
            .probe_ids
            .get(id)
            .map(|(_, a)| a.clone())
            .unwrap_or_default()
    }
}

/// The value of a JSON string field (`"id":"…"`) in the first part of a frame.
fn field_str<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let end = text[start..].find('"')? + start;
    Some(&text[start..end])
}

/// The value of a JSON number field (`"kind":28333`).
fn field_num(text: &str, key: &str) -> Option<u16> {
    let start = text.find(key)? + key.len();
    let digits: String = text[start..]
        .chars()
        .skip_while(|c| c.is_whitespace())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

fn from_relay(
    tap: &Tap,
    frame: Result<WireMessage, tokio_tungstenite::tungstenite::Error>,
) -> Option<Result<PoolMessage, WsError>> {
    let msg = match frame {
        Err(e) => return Some(Err(WsError::backend(e))),
        Ok(m) => m,
    };
    Some(Ok(match msg {
        WireMessage::Text(t) => match tap.incoming(t.as_str()) {
            Verdict::Pass => PoolMessage::Text(t.as_str().to_owned()),
            Verdict::Rewrite(s) => PoolMessage::Text(s),
            Verdict::Swallow => return None,
        },
        WireMessage::Binary(b) => PoolMessage::Binary(b.to_vec()),
        WireMessage::Ping(b) => PoolMessage::Ping(b.to_vec()),
        WireMessage::Pong(b) => PoolMessage::Pong(b.to_vec()),
        WireMessage::Close(f) => {
            PoolMessage::Close(f.map(|f| async_wsocket::message::CloseFrame {
                code: f.code.into(),
                reason: f.reason.to_string(),
            }))
        }
        WireMessage::Frame(_) => return None,
    }))
}

fn to_wire(msg: PoolMessage) -> WireMessage {
    match msg {
        PoolMessage::Text(t) => WireMessage::Text(t.into()),
        PoolMessage::Binary(b) => WireMessage::Binary(b.into()),
        PoolMessage::Ping(b) => WireMessage::Ping(b.into()),
        PoolMessage::Pong(b) => WireMessage::Pong(b.into()),
        PoolMessage::Close(f) => WireMessage::Close(f.map(|f| CloseFrame {
            code: CloseCode::from(f.code),
            reason: f.reason.into(),
        })),
    }
}

type WriteHalf = futures_util::stream::SplitSink<Socket, WireMessage>;

/// Owns the socket's write half: the pool's frames (events paced when the
/// relay asked), the tap's resends, and the size prober.
async fn writer(
    tap: Arc<Tap>,
    mut from_pool: mpsc::Receiver<PoolMessage>,
    mut inject: mpsc::UnboundedReceiver<Arc<str>>,
    mut ws: WriteHalf,
) {
    let mut prober = Prober::new();
    loop {
        let deadline = prober
            .deadline()
            .or_else(|| {
                lock(&tap.state)
                    .ok_check
                    .is_some()
                    .then(|| Instant::now() + POLL)
            })
            .map(tokio::time::Instant::from_std);
        let step = tokio::select! {
            m = from_pool.recv() => match m {
                None => break,
                Some(m) => {
                    if let PoolMessage::Text(t) = &m {
                        if tap.outgoing(t) {
                            let at = tap.path.reserve();
                            if at > Instant::now() {
                                tokio::time::sleep_until(at.into()).await;
                            }
                        }
                    }
                    ws.send(to_wire(m)).await.is_ok()
                }
            },
            t = inject.recv() => match t {
                None => true,
                Some(t) => {
                    tap.outgoing(&t);
                    ws.send(WireMessage::Text(t.as_ref().into())).await.is_ok()
                }
            },
            _ = tap.wake.notified() => true,
            _ = sleep_until_opt(deadline) => true,
        };
        if !step {
            break;
        }
        for frame in prober.step(&tap, Instant::now()) {
            tap.outgoing(&frame);
            if ws.send(WireMessage::Text(frame.into())).await.is_err() {
                return;
            }
        }
    }
    let _ = ws.close().await;
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The size prober of one connection (see [`super`]): a control event
/// first, to learn that the relay answers and how fast; then one probe at
/// a time, each followed by a control event. Events get lost for reasons
/// of their own, so a control goes again when unanswered, and a probe size
/// counts as failed only after [`PROBE_TRIES`] probes of it vanished while
/// their controls came back (RFC 8899's MAX_PROBES), or at once when the
/// relay refuses it.
enum Prober {
    /// Waiting for the relay's NIP-11 figure (at most [`NIP11_WAIT`]).
    Start { since: Instant },
    /// Control events are out (ids and when each went; the first at `since`).
    First {
        controls: Vec<(String, Instant)>,
        since: Instant,
    },
    /// Probes of `size` bytes and their control events are out.
    Probe {
        probes: Vec<String>,
        controls: Vec<String>,
        size: usize,
        /// When the latest probe went.
        sent: Instant,
        /// Round trip of the first control event.
        rtt: Duration,
    },
    /// The relay asked for fewer events or for authentication: the next
    /// probe waits.
    Pause { until: Instant, rtt: Duration },
    /// Nothing more to learn on this connection.
    Done,
}

/// Probes of one size that may vanish before the size counts as failed.
const PROBE_TRIES: usize = 3;
/// Size of a control event (a whole frame), bytes.
const CONTROL_SIZE: usize = 200;

impl Prober {
    fn new() -> Self {
        Prober::Start {
            since: Instant::now(),
        }
    }

    /// When to look again (answers also wake the writer at once).
    fn deadline(&self) -> Option<Instant> {
        match self {
            Prober::Done => None,
            _ => Some(Instant::now() + POLL),
        }
    }

    /// Moves on with what has been answered; returns frames to send.
    fn step(&mut self, tap: &Tap, now: Instant) -> Vec<String> {
        tap.check_ok(now);
        let mut out = Vec::new();
        match self {
            Prober::Start { since } => {
                if !tap.path.nip11_done() && now < *since + NIP11_WAIT {
                    return out;
                }
                out.push(tap.probe_req());
                let Some((id, frame)) = tap.probe_event(CONTROL_SIZE) else {
                    *self = Prober::Done;
                    return out;
                };
                out.push(frame);
                *self = Prober::First {
                    controls: vec![(id, now)],
                    since: now,
                };
            }
            Prober::First { controls, since } => {
                // Refusals for want of authentication are answered again
                // once the pool has authenticated (the tap resends).
                let answers: Vec<(Answer, Instant)> = controls
                    .iter()
                    .flat_map(|(c, _)| tap.answers(c))
                    .filter(|(a, _)| !matches!(a, Answer::Refused(m) if m.starts_with("auth-required:")))
                    .collect();
                let sent = controls.last().map_or(*since, |(_, at)| *at);
                if let Some((Answer::Refused(m), _)) = answers.first() {
                    log::info!(
                        "relay {}: refuses our events (\"{m}\"): size search off",
                        tap.path.name
                    );
                    *self = Prober::Done;
                    return out;
                }
                let Some(first) = answers.iter().map(|(_, at)| *at).min() else {
                    if now >= *since + FIRST_ANSWER_TIMEOUT {
                        log::info!(
                            "relay {}: answers none of our events: size search off",
                            tap.path.name
                        );
                        *self = Prober::Done;
                    } else if now >= sent + CONTROL_RETRY {
                        if let Some((id, frame)) = tap.probe_event(CONTROL_SIZE) {
                            controls.push((id, now));
                            out.push(frame);
                        }
                    }
                    return out;
                };
                if !answers.iter().any(|(a, _)| *a == Answer::Ok) {
                    // Echoed without an OK: if the OK does not follow soon,
                    // the relay does not answer ephemeral events. The search
                    // goes on meanwhile.
                    let ids = controls.iter().map(|(c, _)| c.clone()).collect();
                    lock(&tap.state).ok_check = Some((ids, first + OK_AFTER_ECHO));
                }
                // The round trip of the fastest control answered.
                let rtt = controls
                    .iter()
                    .filter_map(|(c, at)| {
                        let answer = tap.answers(c).first().map(|(_, t)| *t)?;
                        Some(answer.saturating_duration_since(*at))
                    })
                    .min()
                    .unwrap_or(Duration::from_millis(100));
                self.next(tap, now, rtt, &mut out);
            }
            Prober::Probe {
                probes,
                controls,
                size,
                sent,
                rtt,
            } => {
                let rtt = *rtt;
                let size = *size;
                let got: Vec<(Answer, Instant)> =
                    probes.iter().flat_map(|p| tap.answers(p)).collect();
                let control_back = tap
                    .answers(controls.last().map_or("", |c| c.as_str()))
                    .first()
                    .map(|(_, at)| *at);
                let refused = got.iter().find_map(|(a, _)| match a {
                    Answer::Refused(m) => Some(m.clone()),
                    _ => None,
                });
                let taken = got
                    .iter()
                    .any(|(a, _)| matches!(a, Answer::Ok | Answer::Echo));
                if taken {
                    // Accepted (recorded by the tap already).
                } else if let Some(m) = refused {
                    if is_not_about_size(&m) {
                        // Rates or authentication: try again later.
                        *self = Prober::Pause {
                            until: now + Duration::from_secs(2),
                            rtt,
                        };
                        return out;
                    }
                    // Refused: the tap recorded the rejection.
                } else {
                    let grace = (rtt * 2).max(Duration::from_millis(100));
                    let vanished = match control_back {
                        // The control came back, the probe did not.
                        Some(at) => now >= at + grace,
                        // Neither: both lost, or the relay is sleeping.
                        None => now >= *sent + PROBE_RETRY.max(rtt * 8),
                    };
                    if !vanished {
                        if now >= *sent + PROBE_TIMEOUT {
                            *self = Prober::Done;
                        }
                        return out;
                    }
                    if probes.len() < PROBE_TRIES {
                        if let (Some((p, pf)), Some((c, cf))) =
                            (tap.probe_event(size), tap.probe_event(CONTROL_SIZE))
                        {
                            probes.push(p);
                            controls.push(c);
                            out.push(pf);
                            out.push(cf);
                            *sent = now;
                        }
                        return out;
                    }
                    if control_back.is_some() {
                        // Small events pass, this size never does: a black hole.
                        tap.path.rejected(size, "no answer (black hole)");
                    } else {
                        *self = Prober::Done;
                        return out;
                    }
                }
                self.next(tap, now, rtt, &mut out);
            }
            Prober::Pause { until, rtt } => {
                if now >= *until {
                    let rtt = *rtt;
                    self.next(tap, now, rtt, &mut out);
                }
            }
            Prober::Done => {}
        }
        out
    }

    fn next(&mut self, tap: &Tap, now: Instant, rtt: Duration, out: &mut Vec<String>) {
        let Some(size) = tap.path.next_probe() else {
            log::debug!(
                "relay {}: size search done: {:?}",
                tap.path.name,
                tap.path.size()
            );
            *self = Prober::Done;
            return;
        };
        let (Some((probe, p)), Some((control, c))) = (tap.probe_event(size), tap.probe_event(200))
        else {
            *self = Prober::Done;
            return;
        };
        out.push(p);
        out.push(c);
        *self = Prober::Probe {
            probes: vec![probe],
            controls: vec![control],
            size,
            sent: now,
            rtt,
        };
    }
}
