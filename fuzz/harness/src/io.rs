//! An in-memory client socket for the async parsers, and a one-poll
//! executor: with every byte already in memory, a parser future must finish
//! on its first poll (a `Pending` would mean it waits for input that can
//! never come, which is a bug in the parser or in this harness).

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A client that sends `input` in reads of the sizes in `reads` (cycled;
/// an empty list means "as much as the reader asks for"), then end of file;
/// everything the server writes lands in `written`.
pub struct MockClient<'a> {
    input: &'a [u8],
    pos: usize,
    reads: Vec<usize>,
    next_read: usize,
    pub written: Vec<u8>,
}

impl<'a> MockClient<'a> {
    pub fn new(input: &'a [u8], reads: Vec<usize>) -> Self {
        Self {
            input,
            pos: 0,
            reads,
            next_read: 0,
            written: Vec::new(),
        }
    }

    /// Bytes the server has read so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }
}

impl AsyncRead for MockClient<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let rest = &me.input[me.pos..];
        let mut n = rest.len().min(buf.remaining());
        if !me.reads.is_empty() {
            let limit = me.reads[me.next_read % me.reads.len()].max(1);
            me.next_read += 1;
            n = n.min(limit);
        }
        buf.put_slice(&rest[..n]);
        me.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MockClient<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Polls `fut` once and returns its output.
///
/// # Panics
///
/// If the future is not ready after one poll.
pub fn ready<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("parser waits for input although all of it is in memory"),
    }
}
