//! Streams without a proxy: [`open_stream`] (and `NwsProxy::open_stream`)
//! give the app an [`NwsStream`] to read and write bytes directly.
//!
//! Core joins an NWS stream to anything that is `AsyncRead + AsyncWrite`;
//! here that is one end of an in-memory pipe (`tokio::io::duplex`), run by a
//! task on the shared runtime, and the [`NwsStream`] object reads and writes
//! the other end.

use nws_core::sync::lock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nostr::RelayUrl;
use nws_core::driver::StreamError;
use nws_core::entry::{Entry, EntryConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;

use crate::error::NwsError;
use crate::runtime::run;

/// Bytes buffered in the pipe between the app and the stream, each way.
const PIPE_BYTES: usize = 64 * 1024;
/// Largest read, in bytes (bigger requests are cut to this).
const MAX_READ: u32 = 1024 * 1024;
/// Most bytes one `wait_readable` takes from the pipe, in bytes (the pipe
/// holds at most [`PIPE_BYTES`]).
const READ_CHUNK: usize = PIPE_BYTES;
/// How long a read that saw the end of the stream waits to learn whether
/// the stream was aborted rather than closed.
const OUTCOME_WAIT: Duration = Duration::from_millis(50);

/// One open NWS stream: an ordered, reliable byte stream to the exit's
/// backend, like a TCP connection.
///
/// `read` and `write` may run concurrently (one reader and one writer at a
/// time each). Dropping the object closes the stream as `close` does.
#[derive(uniffi::Object)]
pub struct NwsStream {
    destination: String,
    reader: tokio::sync::Mutex<Option<ReadHalf<DuplexStream>>>,
    writer: tokio::sync::Mutex<Option<WriteHalf<DuplexStream>>>,
    task: Mutex<Option<JoinHandle<Result<(), StreamError>>>>,
    aborted: Mutex<Option<StreamError>>,
    /// Bytes read from the stream and not yet taken by `read_now`.
    ready: Mutex<std::collections::VecDeque<u8>>,
    /// Set by [`NwsStream::interrupt_read`]; taken by the `read` it ends.
    interrupted: AtomicBool,
    /// Wakes a pending `read` for [`NwsStream::interrupt_read`].
    interrupt: tokio::sync::Notify,
}

/// Opens a stream to `destination`, `host:port` where host is an NWS name
/// (`.nostr`, `npub1…`, `nprofile1…`), over its own relay connections: the
/// name's relays, or `relays` (`ws://`/`wss://` URLs) for a name without
/// any. Waits up to 10 s for a relay and then for the exit's answer. The
/// relay connections close with the stream. To share relays with a running
/// proxy, use `NwsProxy::open_stream` instead.
///
/// # Errors
///
/// [`NwsError::InvalidConfig`] if `destination` has no valid port or a relay
/// URL does not parse; [`NwsError::BadName`] or [`NwsError::NotNwsName`] for
/// the host; [`NwsError::NoRelayReachable`]; [`NwsError::ExitRefused`] with
/// the exit's reason; [`NwsError::Timeout`] if the exit did not answer.
#[uniffi::export]
pub async fn open_stream(
    destination: String,
    relays: Vec<String>,
) -> Result<Arc<NwsStream>, NwsError> {
    run(async move {
        let relays = relays
            .iter()
            .map(|r| {
                RelayUrl::parse(r).map_err(|e| NwsError::invalid(format!("relay URL `{r}`: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let entry = Entry::new(EntryConfig::new(relays)).await?;
        // Shut down if the stream does not open, and if the call is
        // cancelled meanwhile (the task is then aborted mid-open).
        let mut pending = ShutdownOnDrop(Some(entry.clone()));
        let opened = open_on(entry, true, &destination).await;
        if opened.is_ok() {
            // The stream's own task shuts the entry down when it ends.
            pending.0 = None;
        }
        opened
    })
    .await
}

/// Opens a stream on `entry` (to be called on the runtime); with `owned`,
/// the entry is shut down when the stream ends.
pub(crate) async fn open_on(
    entry: Entry,
    owned: bool,
    destination: &str,
) -> Result<Arc<NwsStream>, NwsError> {
    let (host, port) = split_destination(destination)?;
    let stream = entry.open(host, port).await?;
    log::debug!("stream {} to {destination} open", stream.key());
    let (app_end, core_end) = tokio::io::duplex(PIPE_BYTES);
    let task = tokio::spawn(async move {
        let result = stream.run(core_end, Vec::new()).await;
        if owned {
            entry.shutdown().await;
        }
        result
    });
    let (reader, writer) = tokio::io::split(app_end);
    Ok(Arc::new(NwsStream {
        destination: destination.to_string(),
        reader: tokio::sync::Mutex::new(Some(reader)),
        writer: tokio::sync::Mutex::new(Some(writer)),
        task: Mutex::new(Some(task)),
        aborted: Mutex::new(None),
        ready: Mutex::new(std::collections::VecDeque::new()),
        interrupted: AtomicBool::new(false),
        interrupt: tokio::sync::Notify::new(),
    }))
}

/// Shuts its entry down (in a task of its own) when dropped, unless taken.
struct ShutdownOnDrop(Option<Entry>);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        if let Some(entry) = self.0.take() {
            if let Ok(rt) = crate::runtime::runtime() {
                rt.spawn(async move { entry.shutdown().await });
            }
        }
    }
}

/// Splits `host:port`.
fn split_destination(destination: &str) -> Result<(&str, u16), NwsError> {
    let bad = || {
        NwsError::invalid(format!(
            "destination `{destination}` is not host:port with a port from 1 to 65535"
        ))
    };
    let (host, port) = destination.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host, port))
}

#[uniffi::export]
impl NwsStream {
    /// The destination as given when opening, `host:port`.
    pub fn destination(&self) -> String {
        self.destination.clone()
    }

    /// Waits until bytes from the backend are ready for [`read_now`]
    /// (`true`), or the backend has closed its side and every byte was read
    /// (`false`). The Kotlin and Swift `read(maxBytes)` (hand-written, in
    /// `NwsStreamRead.kt` and `NwsStream+Read.swift`) loop on this and
    /// `read_now`.
    ///
    /// Cancel-safe: bytes it takes from the stream are kept in the stream
    /// before it returns, so a call cancelled at any point (even after it
    /// completed, before the caller saw the result) loses none.
    ///
    /// # Errors
    ///
    /// [`NwsError::ExitRefused`] if the exit aborted the stream (with its
    /// reason), [`NwsError::Stopped`] after `close()`,
    /// [`NwsError::Cancelled`] after [`interrupt_read`](Self::interrupt_read).
    ///
    /// [`read_now`]: Self::read_now
    pub async fn wait_readable(self: Arc<Self>) -> Result<bool, NwsError> {
        if !lock(&self.ready).is_empty() {
            return Ok(true);
        }
        let n = {
            let mut guard = self.reader.lock().await;
            let reader = guard
                .as_mut()
                .ok_or_else(|| NwsError::stopped("the stream is closed"))?;
            if !lock(&self.ready).is_empty() {
                return Ok(true);
            }
            let interrupted = self.interrupt.notified();
            tokio::pin!(interrupted);
            interrupted.as_mut().enable();
            if self.interrupted.swap(false, Ordering::SeqCst) {
                return Err(NwsError::cancelled("the read was interrupted"));
            }
            // Polled by the caller's executor, not spawned: the in-memory
            // pipe needs no runtime. What `read` returns is put into `ready`
            // in the same poll, before this future can be dropped.
            let mut buf = vec![0u8; READ_CHUNK];
            tokio::select! {
                n = reader.read(&mut buf) => {
                    let n = n?;
                    lock(&self.ready).extend(&buf[..n]);
                    n
                }
                _ = interrupted => {
                    self.interrupted.store(false, Ordering::SeqCst);
                    return Err(NwsError::cancelled("the read was interrupted"));
                }
            }
        };
        if n == 0 {
            let this = self.clone();
            let reason = run(async move { Ok(this.abort_reason(OUTCOME_WAIT).await) }).await?;
            if let Some(reason) = reason {
                return Err(reason.into());
            }
            return Ok(false);
        }
        Ok(true)
    }

    /// Takes up to `max_bytes` (at least 1, at most 1 MiB) of the bytes
    /// [`wait_readable`](Self::wait_readable) made ready, without waiting;
    /// empty if there are none.
    pub fn read_now(&self, max_bytes: u32) -> Vec<u8> {
        let mut ready = lock(&self.ready);
        let n = ready.len().min(max_bytes.clamp(1, MAX_READ) as usize);
        ready.drain(..n).collect()
    }

    /// Ends the [`wait_readable`](Self::wait_readable) (and so the `read`)
    /// that is waiting now, or if none is the next one, with
    /// [`NwsError::Cancelled`], taking no bytes: the next `read` returns
    /// them. For callers whose executor cannot cancel a call: the Swift
    /// `read` calls it from `withTaskCancellationHandler`
    /// (`NwsStream+Read.swift`), because a generated Swift `async` call runs
    /// on after its `Task` is cancelled.
    pub fn interrupt_read(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
        self.interrupt.notify_waiters();
    }

    /// Sends all of `data` (returns once it is queued for the stream, which
    /// applies back-pressure: a slow peer makes this wait). A `write`
    /// cancelled while it waits may have queued a first part of `data`;
    /// the stream stays usable, with that part sent.
    ///
    /// # Errors
    ///
    /// [`NwsError::ExitRefused`] if the exit aborted the stream,
    /// [`NwsError::Stopped`] if the stream is closed.
    pub async fn write(self: Arc<Self>, data: Vec<u8>) -> Result<(), NwsError> {
        run(async move {
            let mut guard = self.writer.lock().await;
            let writer = guard
                .as_mut()
                .ok_or_else(|| NwsError::stopped("the stream is closed for writing"))?;
            if writer.write_all(&data).await.is_err() {
                return Err(match self.abort_reason(OUTCOME_WAIT).await {
                    Some(reason) => reason.into(),
                    None => NwsError::stopped("the stream is closed"),
                });
            }
            Ok(())
        })
        .await
    }

    /// Closes the stream: the backend sees the end of the stream after the
    /// bytes already written, and bytes not yet read are discarded. If the
    /// backend still sends after this, the stream is aborted instead
    /// (`connection-reset`), which may cut bytes still in flight: read the
    /// reply before closing. Later reads and writes fail with
    /// [`NwsError::Stopped`]. Closing twice does nothing.
    ///
    /// # Errors
    ///
    /// [`NwsError::Internal`] only if the runtime failed.
    pub async fn close(self: Arc<Self>) -> Result<(), NwsError> {
        run(async move {
            if let Some(mut writer) = self.writer.lock().await.take() {
                let _ = writer.shutdown().await;
            }
            self.reader.lock().await.take();
            Ok(())
        })
        .await
    }
}

impl NwsStream {
    /// Why the stream was aborted, if its task ended with an abort within
    /// `wait` (the task ends right after it drops its end of the pipe).
    async fn abort_reason(&self, wait: Duration) -> Option<StreamError> {
        if let Some(reason) = lock(&self.aborted).clone() {
            return Some(reason);
        }
        let mut task = lock(&self.task).take()?;
        match tokio::time::timeout(wait, &mut task).await {
            Ok(Ok(Err(reason))) => {
                *lock(&self.aborted) = Some(reason.clone());
                Some(reason)
            }
            Ok(_) => None,
            Err(_) => {
                // Still running: the peer only closed its direction.
                *lock(&self.task) = Some(task);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_needs_host_and_port() {
        assert_eq!(
            split_destination("abc.nostr:80").unwrap(),
            ("abc.nostr", 80)
        );
        for bad in [
            "abc.nostr",
            "abc.nostr:",
            ":80",
            "abc.nostr:0",
            "abc.nostr:70000",
        ] {
            assert!(
                matches!(split_destination(bad), Err(NwsError::InvalidConfig { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn opening_a_stream_to_a_non_nws_host_is_refused_without_network() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let r = rt.block_on(open_stream("example.com:80".into(), vec![]));
        assert!(matches!(r, Err(NwsError::NotNwsName { .. })));
    }
}
