//! The exit's one event loop: every event addressed to the exit goes
//! through [`Server::dispatch`], which hands it to its stream (through the
//! [`Demux`]) or starts a stream on `CONNECT`/`CONNECTR`.
//!
//! The loop never awaits network I/O: refusals, answers and dials happen in
//! each stream's own task, so one slow relay or backend cannot stall every
//! other stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nostr::{Event, PublicKey};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::admission::Admission;
use super::instances::Membership;
use super::journal::{Journal, Verdict};
use super::target::serve_stream;
use super::ExitConfig;
use crate::demux::{Demux, Routed};
use crate::driver::{flush, Conn, Inbox};
use crate::engine::Stream;
use crate::link::Link;
use crate::protocol::{Cipher, ErrorReason, Message, MessageType};
use crate::stats::{OpenSlot, Stats};
use crate::sync::lock;
use crate::transport::Transport;

/// Shortest time between two `unknown-stream` answers to one author.
const UNKNOWN_STREAM_HOLDOFF: Duration = Duration::from_secs(1);
/// Authors remembered for that hold-off; past it the oldest are forgotten.
const UNKNOWN_STREAM_AUTHORS: usize = 4096;

/// What the event loop and the streams it starts share.
pub(super) struct Server {
    /// The HTTPS front's TLS acceptor.
    pub(super) tls: Option<tokio_rustls::TlsAcceptor>,
    pub(super) config: Arc<ExitConfig>,
    transport: Transport,
    demux: Arc<Demux>,
    admission: Admission,
    pub(super) stats: Arc<Stats>,
    pub(super) cancel: CancellationToken,
    /// When each author was last told `unknown-stream`.
    unknown_answered: Mutex<HashMap<PublicKey, Instant>>,
    /// Streams served, across restarts: no `CONNECT` is served twice.
    journal: Journal,
    /// The instances sharing the exit key, and which streams are ours.
    membership: Arc<Mutex<Membership>>,
}

impl Server {
    /// A server for `config`, with a fresh demultiplexer and admission
    /// state.
    pub(super) fn new(
        tls: Option<tokio_rustls::TlsAcceptor>,
        config: ExitConfig,
        transport: Transport,
        stats: Arc<Stats>,
        cancel: CancellationToken,
        journal: Journal,
        membership: Arc<Mutex<Membership>>,
    ) -> Self {
        Self {
            tls,
            demux: Demux::new(config.keys.clone(), false, crate::protocol::Sender::Entry),
            config: Arc::new(config),
            transport,
            admission: Admission::default(),
            stats,
            cancel,
            unknown_answered: Mutex::default(),
            journal,
            membership,
        }
    }

    /// Dispatches events from `inbox` until it closes or the exit stops.
    pub(super) async fn run(self, mut inbox: mpsc::Receiver<Event>) {
        loop {
            let ev = tokio::select! {
                ev = inbox.recv() => match ev { Some(ev) => ev, None => return },
                _ = self.cancel.cancelled() => return,
            };
            self.dispatch(ev);
        }
    }

    /// Hands one event to its stream, or starts a stream on `CONNECT`.
    /// Never waits on the network: refusals and answers go out from the
    /// stream's own task, so one slow publish cannot stall every stream.
    fn dispatch(&self, ev: Event) {
        let created_at = ev.created_at.as_secs();
        match self.demux.route(&ev) {
            Routed::Delivered | Routed::Dropped => {}
            Routed::Unclaimed {
                author,
                cipher,
                msg,
            } => match msg.kind {
                MessageType::Connect | MessageType::ConnectReverse => {
                    if created_at + super::journal::CLOCK_SKEW >= self.journal.started_at()
                        && !lock(&self.membership).on_connect(
                            &author,
                            &msg.key,
                            created_at,
                            Instant::now(),
                        )
                    {
                        log::debug!(
                            "stream {}: {} for another exit instance: ignored",
                            msg.key,
                            msg.kind
                        );
                        return;
                    }
                    match self.journal.admit(&author, &msg.key, created_at) {
                        Verdict::Fresh if msg.kind == MessageType::Connect => {
                            self.accept(author, cipher, msg)
                        }
                        Verdict::Fresh => self.accept_reverse(author, cipher, msg),
                        Verdict::BeforeStart => log::warn!(
                            "stream {}: {} created {} s before this exit started: a replay, dropped",
                            msg.key,
                            msg.kind,
                            self.journal.started_at().saturating_sub(created_at)
                        ),
                        Verdict::Served => {
                            log::info!(
                                "stream {}: {} of a stream already served: not served again",
                                msg.key,
                                msg.kind
                            );
                            // A version-2 entry still waiting learns the stream is gone.
                            if msg.version.is_some() {
                                self.unknown_stream(author, cipher, msg);
                            }
                        }
                    }
                }
                _ => self.unknown_stream(author, cipher, msg),
            },
        }
    }

    /// A message for a stream this exit does not know (it restarted, or
    /// the stream ended long ago): a version-2 peer is told so with an
    /// `ERROR` `unknown-stream`, like a TCP reset, at most once a second
    /// per author. An `ERROR` is never answered, nor a legacy peer's data
    /// (it would not understand).
    fn unknown_stream(&self, author: PublicKey, cipher: Cipher, msg: Message) {
        let v2 = msg.seq.is_some()
            || msg.ack.is_some()
            || msg.version.is_some()
            || matches!(
                msg.kind,
                MessageType::Ping | MessageType::Ack | MessageType::Close
            );
        if msg.kind == MessageType::Error || !v2 {
            log::debug!(
                "stream {}: {} for an unknown stream: dropped",
                msg.key,
                msg.kind
            );
            return;
        }
        // With other instances live, the stream may be another's.
        if !lock(&self.membership).answers_unknown(&author, &msg.key, Instant::now()) {
            log::debug!(
                "stream {}: {} for a stream of another exit instance: not answered",
                msg.key,
                msg.kind
            );
            return;
        }
        let now = Instant::now();
        {
            let mut answered = lock(&self.unknown_answered);
            if answered
                .get(&author)
                .is_some_and(|t| now < *t + UNKNOWN_STREAM_HOLDOFF)
            {
                return;
            }
            if answered.len() >= UNKNOWN_STREAM_AUTHORS {
                answered.retain(|_, t| now < *t + UNKNOWN_STREAM_HOLDOFF);
                if answered.len() >= UNKNOWN_STREAM_AUTHORS {
                    return;
                }
            }
            answered.insert(author, now);
        }
        log::info!(
            "stream {}: {} for an unknown stream: answering unknown-stream",
            msg.key,
            msg.kind
        );
        let link = self.link(author, cipher);
        let error = Message::error(msg.key, &ErrorReason::UnknownStream);
        tokio::spawn(async move {
            if let Err(e) = link.send(&error).await {
                log::debug!("unknown-stream answer not sent: {e}");
            }
        });
    }

    /// Why a new stream from `author` must be refused, if it must (see
    /// [`Admission::check`]).
    pub(super) fn admission(&self, author: &PublicKey) -> Option<ErrorReason> {
        self.admission
            .check(&self.config, &self.stats, &self.demux, author)
    }

    /// The link back to `author` for one of its streams.
    pub(super) fn link(&self, author: PublicKey, cipher: Cipher) -> Link {
        Link::new(
            &self.transport,
            self.config.keys.clone(),
            author,
            cipher,
            self.config.relays.clone(),
        )
    }

    /// Starts a stream from a `CONNECT`: admits it (or refuses it with an
    /// `ERROR` sent from its own task), registers it with the demultiplexer
    /// and serves it in a task of its own.
    fn accept(&self, author: PublicKey, cipher: Cipher, mut connect: Message) {
        let key = connect.key.clone();
        if self.config.legacy {
            connect.version = None;
        }
        let mut engine = match Stream::accept(self.config.stream.clone(), connect, Instant::now()) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("stream {key}: {e}");
                return;
            }
        };
        if engine.dialect() == crate::engine::Dialect::Legacy {
            log::info!("stream {key}: legacy entry (CONNECT without version)");
        } else {
            log::debug!(
                "stream {key}: speaking version {} ({:?})",
                engine.version(),
                engine.framing()
            );
        }
        let link = self.link(author, cipher.clone());
        if let Some(reason) = self.admission(&author) {
            log::warn!("stream {key} from {author}: refused ({reason})");
            self.stats.refusals.count(&reason);
            engine.backend_failed(reason);
            tokio::spawn(async move { flush(&mut engine, &link).await });
            return;
        }
        let (rx, registration) = self.demux.register(author, cipher, &key);
        let slot = OpenSlot::new(self.stats.clone());
        let config = self.config.clone();
        let tls = self.tls.clone();
        let cancel = self.cancel.clone();
        // The registration lives until the stream has ended and lingered.
        let conn = Conn::new(engine, link, Inbox::Messages(rx), Box::new(registration));
        tokio::spawn(async move {
            tokio::select! {
                _ = serve_stream(conn, &config, tls.as_ref(), slot) => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
}
