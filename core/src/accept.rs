//! The one accept loop for every TCP listener (the entry's SOCKS5 and HTTP
//! proxies, the entry's reverse-connect address, the embedded relay): it
//! accepts until cancelled, backs off (bounded) on passing errors such as
//! running out of file descriptors, stops when the OS takes the listening
//! socket away, sets `TCP_NODELAY`, and serves each connection in its own
//! task under a connection cap.
//!
//! The cap is a semaphore (the mini-redis way): a client past it waits for
//! a free slot for up to [`Cap::wait`], and then is handed to the refusal
//! handler; at most [`Cap::waiting`] clients wait at once, further ones are
//! closed unanswered. Clients already served are never disturbed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Listen backlog of every listener made by [`listen`], in connections.
///
/// `tokio::net::TcpListener::bind` asks for 128, and a client app that opens
/// 200 connections at once overflows that queue: the kernel drops the SYNs it
/// has no room for and the client retries one second later (measured with
/// `nws-bench`'s 200 concurrent streams: 25-66 `ListenDrops` in 2 of 3 runs,
/// p99 up to 11.5x the median). The kernel caps it at `net.core.somaxconn`.
pub const BACKLOG: u32 = 1024;

/// Binds a TCP listener on `addr` (port 0 picks a free port) with
/// `SO_REUSEADDR`, as `TcpListener::bind` does, but a backlog of [`BACKLOG`].
///
/// # Errors
/// The socket, bind or listen call's error (address in use, not permitted).
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// A connection cap.
#[derive(Debug, Clone, Copy)]
pub struct Cap {
    /// Connections served at once.
    pub connections: usize,
    /// Clients past the cap that may wait for a slot at once.
    pub waiting: usize,
    /// How long a client past the cap waits for a slot before it is refused.
    pub wait: Duration,
}

/// Why an accept loop returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It was cancelled.
    Cancelled,
    /// The OS closed or invalidated the listening socket (iOS does so in
    /// the background).
    ListenerGone,
}

/// Accepts connections on `listener` until `cancel` (see the module docs).
///
/// `serve(socket, peer)` runs in a task of its own for each connection
/// admitted; `refuse(socket, peer)` for each client that waited past the
/// cap (for a clear answer, such as SOCKS5 reply 1 or HTTP 503). Both are
/// cut short by `cancel`. `cap` of `None` admits every connection. Each
/// connection's semaphore permit is shared by all loops given the same
/// `limit` ([`Cap::semaphore`]).
pub async fn accept_loop<S, SF, R, RF>(
    listener: TcpListener,
    name: &'static str,
    cancel: CancellationToken,
    cap: Option<(Cap, Arc<Semaphore>)>,
    serve: S,
    refuse: R,
) -> Stopped
where
    S: Fn(TcpStream, SocketAddr) -> SF + Send + Sync + 'static,
    SF: Future<Output = ()> + Send + 'static,
    R: Fn(TcpStream, SocketAddr) -> RF + Send + Sync + 'static,
    RF: Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    let refuse = Arc::new(refuse);
    let waiting = Arc::new(Semaphore::new(cap.as_ref().map_or(0, |(c, _)| c.waiting)));
    let mut failures = 0u32;
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => {
                    failures = 0;
                    x
                }
                Err(e) if listener_is_gone(&e) => {
                    log::warn!("{name}: listener closed by the system ({e})");
                    return Stopped::ListenerGone;
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, bounded.
                    failures += 1;
                    log::warn!("{name}: accept failed: {e}");
                    let wait = Duration::from_millis(50 << failures.min(6));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = cancel.cancelled() => return Stopped::Cancelled,
                    }
                    continue;
                }
            },
            _ = cancel.cancelled() => return Stopped::Cancelled,
        };
        let _ = sock.set_nodelay(true);
        let cancel = cancel.clone();
        let Some((cap, limit)) = cap.clone() else {
            let serve = serve.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = serve(sock, peer) => {}
                    _ = cancel.cancelled() => {}
                }
            });
            continue;
        };
        let ready = limit.clone().try_acquire_owned().ok();
        let wait = match ready {
            Some(_) => None,
            None => match waiting.clone().try_acquire_owned() {
                Ok(w) => Some(w),
                Err(_) => {
                    log::warn!(
                        "{name}: client {peer}: too many clients waiting for a slot, closed"
                    );
                    continue;
                }
            },
        };
        let (serve, refuse) = (serve.clone(), refuse.clone());
        tokio::spawn(async move {
            let permit = match ready {
                Some(p) => p,
                None => {
                    let slot = tokio::select! {
                        p = tokio::time::timeout(cap.wait, limit.acquire_owned()) => {
                            p.ok().and_then(Result::ok)
                        }
                        _ = cancel.cancelled() => return,
                    };
                    drop(wait);
                    match slot {
                        Some(p) => p,
                        None => {
                            log::warn!(
                                "{name}: client {peer}: {} connections already served, refused",
                                cap.connections
                            );
                            tokio::select! {
                                _ = refuse(sock, peer) => {}
                                _ = cancel.cancelled() => {}
                            }
                            return;
                        }
                    }
                }
            };
            tokio::select! {
                _ = serve(sock, peer) => {}
                _ = cancel.cancelled() => {}
            }
            log::trace!("{name}: client {peer} done");
            drop(permit);
        });
    }
}

impl Cap {
    /// The semaphore that counts connections against this cap (share it
    /// between listeners that share the cap).
    pub fn semaphore(&self) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(self.connections))
    }
}

/// Whether an accept error means the listening socket itself is gone
/// (closed or invalidated by the OS) rather than a passing condition.
fn listener_is_gone(e: &std::io::Error) -> bool {
    e.raw_os_error()
        .is_some_and(|code| [libc::EBADF, libc::EINVAL, libc::ENOTSOCK].contains(&code))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 300 clients connecting at once to a listener that accepts none of
    /// them yet all complete their handshake: the kernel queues them (with
    /// tokio's default backlog of 128, the SYNs past 129 are dropped and
    /// those clients only retry a second later, past the bound here).
    #[tokio::test]
    async fn backlog_holds_a_burst_of_connects() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..300 {
            set.spawn(async move {
                tokio::time::timeout(Duration::from_millis(800), TcpStream::connect(addr)).await
            });
        }
        let mut connected = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(Ok(sock)) = r.unwrap() {
                connected.push(sock);
            }
        }
        assert_eq!(connected.len(), 300);
        drop(listener);
    }

    /// A listening socket shut down from outside the loop (as the OS does
    /// to a suspended iOS app's) ends the loop with `ListenerGone`, and
    /// the port can be bound again.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_listener_shut_down_from_outside_is_reported_gone() {
        use std::os::fd::AsRawFd;
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let fd = listener.as_raw_fd();
        let cancel = CancellationToken::new();
        let serve = |_sock, _peer| async {};
        let looping = tokio::spawn(accept_loop(
            listener,
            "test",
            cancel.clone(),
            None,
            serve,
            serve,
        ));
        // Served while it listens.
        TcpStream::connect(addr).await.unwrap();
        // SAFETY: `fd` is the open listening socket owned by the loop.
        assert_eq!(unsafe { libc::shutdown(fd, libc::SHUT_RDWR) }, 0);
        let stopped = tokio::time::timeout(Duration::from_secs(5), looping)
            .await
            .expect("the loop noticed")
            .unwrap();
        assert_eq!(stopped, Stopped::ListenerGone);
        listen(addr).expect("the port is free again");
    }
}
