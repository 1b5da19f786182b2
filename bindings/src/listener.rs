//! Log lines and state changes for the app: the [`ProxyListener`] foreign
//! trait, the `log` logger that feeds it, and the thread that calls it.
//!
//! Core logs through the `log` facade. This module installs one logger for
//! the process (unless the app installed its own first): on Android it writes
//! every line to logcat (tag `nws`) through `android_logger`, and everywhere it
//! queues the line for each registered listener. A single thread,
//! `nws-listener`, delivers queued log lines and state changes in order, so
//! foreign code never runs on the runtime's workers and a slow listener never
//! stalls the proxy (past [`MAX_QUEUED_LOGS`] queued lines, new lines are
//! dropped). The thread blocks on its queue when there is nothing to deliver.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Once, RwLock};

use log::{LevelFilter, Log, Metadata, Record};
use once_cell::sync::Lazy;

use crate::proxy::{ProxyInfo, ProxyState};

/// Log lines queued for listeners above which new lines are dropped.
const MAX_QUEUED_LOGS: usize = 1024;
/// Stack size of the listener thread, in bytes.
const LISTENER_STACK: usize = 256 * 1024;

/// Severity of a log line, most severe first (the `log` crate's levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, uniffi::Enum)]
pub enum LogLevel {
    /// Something failed.
    Error,
    /// Something unexpected that NWS recovered from.
    Warn,
    /// One line per notable event (a client refused, a relay lost).
    Info,
    /// Details for debugging.
    Debug,
    /// Everything, per message.
    Trace,
}

impl From<log::Level> for LogLevel {
    fn from(l: log::Level) -> Self {
        match l {
            log::Level::Error => Self::Error,
            log::Level::Warn => Self::Warn,
            log::Level::Info => Self::Info,
            log::Level::Debug => Self::Debug,
            log::Level::Trace => Self::Trace,
        }
    }
}

impl From<LogLevel> for LevelFilter {
    fn from(l: LogLevel) -> Self {
        match l {
            LogLevel::Error => LevelFilter::Error,
            LogLevel::Warn => LevelFilter::Warn,
            LogLevel::Info => LevelFilter::Info,
            LogLevel::Debug => LevelFilter::Debug,
            LogLevel::Trace => LevelFilter::Trace,
        }
    }
}

/// What happened to a running proxy, for [`ProxyListener::on_event`]: its
/// health (relays, streams) and what it did on its own.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum ProxyEvent {
    /// A relay connection came up. `connected` and `known` count the
    /// proxy's relays after the change.
    RelayConnected {
        /// The relay URL (`wss://…`).
        url: String,
        /// Relays connected now.
        connected: u32,
        /// Relays known (configured, or learnt from names used so far).
        known: u32,
    },
    /// A relay connection ended (it is retried with backoff, or at once
    /// after `networkChanged()`).
    RelayDisconnected {
        /// The relay URL.
        url: String,
        /// Relays connected now.
        connected: u32,
        /// Relays known.
        known: u32,
    },
    /// Streams were opened or closed: the counts now. Changes within
    /// 100 ms come as one event.
    StreamsChanged {
        /// Streams open now.
        open: u32,
        /// Streams opened since start.
        total: u64,
    },
    /// A start (by `start()`, `restart()`, `appResumed()` or a rebind)
    /// failed; the proxy is stopped.
    StartFailed {
        /// Why, as a sentence.
        reason: String,
    },
    /// The system closed or invalidated a listening socket (iOS does so to
    /// suspended apps). The proxy listens again on the same ports with the
    /// same credentials at once (state `Starting`, then `Running`, or
    /// [`ProxyEvent::StartFailed`] and `Stopped`); open client connections
    /// are closed.
    ListenersLost {
        /// What was seen, as a sentence.
        reason: String,
    },
    /// The proxy listens again after [`ProxyEvent::ListenersLost`] or
    /// `appResumed()`, here (the same ports unless another program took
    /// one meanwhile).
    Rebound {
        /// Where it listens now.
        info: ProxyInfo,
    },
}

/// Receives a proxy's state changes and the library's log lines; implemented
/// by the app (a Kotlin or Swift class).
///
/// Calls come from one background thread (`nws-listener`), in order, never
/// from the thread that called into NWS: hop to the UI thread yourself. Keep
/// the methods short; an exception thrown from them is caught and ignored.
#[uniffi::export(with_foreign)]
pub trait ProxyListener: Send + Sync {
    /// The proxy moved to `state`.
    fn on_state_changed(&self, state: ProxyState);
    /// Something happened to the proxy: a relay connected or disconnected,
    /// streams opened or closed, a failed start, lost listeners.
    fn on_event(&self, event: ProxyEvent);
    /// A log line at `level` from the Rust module `target` (for example
    /// `nws_core::entry`), at or above the level set with
    /// [`set_log_level`](crate::set_log_level).
    fn on_log(&self, level: LogLevel, target: String, message: String);
}

enum Note {
    Log {
        level: LogLevel,
        target: String,
        message: String,
    },
    State {
        listener: Arc<dyn ProxyListener>,
        state: ProxyState,
    },
    Event {
        listener: Arc<dyn ProxyListener>,
        event: ProxyEvent,
    },
}

/// Listeners that receive log lines, by the id of the proxy that registered them.
static LOG_LISTENERS: RwLock<Vec<(u64, Arc<dyn ProxyListener>)>> = RwLock::new(Vec::new());
/// Whether [`LOG_LISTENERS`] is non-empty (checked on every log line).
static HAVE_LOG_LISTENERS: AtomicBool = AtomicBool::new(false);
static QUEUED_LOGS: AtomicUsize = AtomicUsize::new(0);

/// The sender half of the listener thread's queue, started on first use.
static QUEUE: Lazy<Option<Sender<Note>>> = Lazy::new(|| {
    let (tx, rx) = channel();
    let started = std::thread::Builder::new()
        .name("nws-listener".into())
        .stack_size(LISTENER_STACK)
        .spawn(move || deliver(rx));
    started.ok().map(|_| tx)
});

fn deliver(rx: Receiver<Note>) {
    for note in rx {
        match note {
            Note::Log {
                level,
                target,
                message,
            } => {
                QUEUED_LOGS.fetch_sub(1, Ordering::Relaxed);
                let listeners: Vec<_> = read(&LOG_LISTENERS)
                    .iter()
                    .map(|(_, l)| l.clone())
                    .collect();
                for l in listeners {
                    let (t, m) = (target.clone(), message.clone());
                    let _ = catch_unwind(AssertUnwindSafe(|| l.on_log(level, t, m)));
                }
            }
            Note::State { listener, state } => {
                let _ = catch_unwind(AssertUnwindSafe(|| listener.on_state_changed(state)));
            }
            Note::Event { listener, event } => {
                let _ = catch_unwind(AssertUnwindSafe(|| listener.on_event(event)));
            }
        }
    }
}

fn send(note: Note) -> bool {
    QUEUE.as_ref().is_some_and(|tx| tx.send(note).is_ok())
}

/// Queues a state change for `listener`.
pub(crate) fn notify_state(listener: Arc<dyn ProxyListener>, state: ProxyState) {
    send(Note::State { listener, state });
}

/// Queues an event for `listener`.
pub(crate) fn notify_event(listener: Arc<dyn ProxyListener>, event: ProxyEvent) {
    send(Note::Event { listener, event });
}

/// Registers (or, with `None`, removes) the listener of proxy `id` for log lines.
pub(crate) fn set_log_listener(id: u64, listener: Option<Arc<dyn ProxyListener>>) {
    let mut all = LOG_LISTENERS.write().unwrap_or_else(|e| e.into_inner());
    all.retain(|(i, _)| *i != id);
    if let Some(l) = listener {
        all.push((id, l));
    }
    HAVE_LOG_LISTENERS.store(!all.is_empty(), Ordering::Release);
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

struct NwsLogger {
    #[cfg(target_os = "android")]
    logcat: android_logger::AndroidLogger,
}

impl Log for NwsLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        #[cfg(target_os = "android")]
        self.logcat.log(record);
        if !HAVE_LOG_LISTENERS.load(Ordering::Acquire) {
            return;
        }
        if QUEUED_LOGS.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED_LOGS {
            QUEUED_LOGS.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let note = Note::Log {
            level: record.level().into(),
            target: record.target().to_string(),
            message: record.args().to_string(),
        };
        if !send(note) {
            QUEUED_LOGS.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn flush(&self) {}
}

static LOGGER: Lazy<NwsLogger> = Lazy::new(|| NwsLogger {
    #[cfg(target_os = "android")]
    logcat: android_logger::AndroidLogger::new(
        android_logger::Config::default()
            .with_tag("nws")
            .with_max_level(LevelFilter::Trace),
    ),
});

static INSTALL: Once = Once::new();

/// Installs the logger for the process, once, at level `Info`. If the app
/// already installed a `log` logger, that one stays and gets the lines
/// instead (listeners then receive none).
pub(crate) fn install() {
    INSTALL.call_once(|| {
        if log::set_logger(&*LOGGER).is_ok() {
            log::set_max_level(LevelFilter::Info);
        }
    });
}

/// Sets the most verbose level that reaches logcat and listeners (process
/// wide; the default is `Info`).
pub(crate) fn set_level(level: LogLevel) {
    install();
    log::set_max_level(level.into());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{sync_channel, SyncSender};
    use std::sync::Mutex;
    use std::time::Duration;

    struct Collect(Mutex<SyncSender<(LogLevel, String, String)>>);

    impl ProxyListener for Collect {
        fn on_state_changed(&self, _state: ProxyState) {}
        fn on_event(&self, _event: ProxyEvent) {}
        fn on_log(&self, level: LogLevel, target: String, message: String) {
            // Other tests in this binary log too.
            if target == "nws_test" {
                let _ = self.0.lock().unwrap().send((level, target, message));
            }
        }
    }

    #[test]
    fn log_lines_reach_the_listener_at_or_above_the_level() {
        let (tx, rx) = sync_channel(16);
        set_log_listener(9_999, Some(Arc::new(Collect(Mutex::new(tx)))));
        set_level(LogLevel::Info);
        log::debug!(target: "nws_test", "hidden");
        log::warn!(target: "nws_test", "shown {}", 42);
        let got = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            got,
            (
                LogLevel::Warn,
                "nws_test".to_string(),
                "shown 42".to_string()
            )
        );
        set_log_listener(9_999, None);
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    }
}
