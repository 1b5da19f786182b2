//! Where a stream's bytes go: choosing the target of a destination (the
//! backend, the HTTPS front, or an internet host through the egress
//! policy), dialling it, and joining the stream to it.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::{front, ExitConfig};
use crate::driver::{flush, pump, Conn};
use crate::names::is_nws_host;
use crate::pacing::Pacer;
use crate::policy::EgressPolicy;
use crate::protocol::{ErrorReason, HostPort};
use crate::stats::OpenSlot;

/// A local connection a stream is joined to: a TCP socket, or the near end
/// of the HTTPS front's pipe.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where a stream's destination leads.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// The configured backend.
    Backend,
    /// The HTTPS front.
    Front,
    /// An internet host, through the egress policy (public exits).
    Egress { host: String, port: u16 },
}

/// Chooses where `destination` goes (module docs of [`super`]). A
/// destination that is not `host:port` (port 1 to 65535) is the exit's own.
fn choose_target(config: &ExitConfig, destination: &str) -> Result<Target, ErrorReason> {
    let parsed = HostPort::parse(destination).ok();
    let own = match &parsed {
        Some(dest) => !config.public || is_nws_host(&dest.host),
        None => true,
    };
    if !own {
        let HostPort { host, port } = parsed.ok_or(ErrorReason::NotAllowed)?;
        return Ok(Target::Egress { host, port });
    }
    if let Some(front) = &config.https {
        let port = parsed.as_ref().map(|dest| dest.port);
        if config.backend.is_empty() || port == Some(front.port) {
            return Ok(Target::Front);
        }
    }
    if config.backend.is_empty() {
        return Err(ErrorReason::NotAllowed);
    }
    Ok(Target::Backend)
}

/// Dials `addr` within `timeout`.
async fn dial<A: tokio::net::ToSocketAddrs>(
    addr: A,
    timeout: Duration,
) -> Result<TcpStream, ErrorReason> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(ErrorReason::from_io(&e)),
        Err(_) => Err(ErrorReason::Timeout),
    }
}

/// Resolves `host:port` at the exit, checks every address against the
/// policy, and dials them in turn until one answers, all within `timeout`.
pub(super) async fn dial_checked(
    policy: &EgressPolicy,
    host: &str,
    port: u16,
    timeout: Duration,
    key: &str,
) -> Result<TcpStream, ErrorReason> {
    let work = async {
        let addrs = policy.resolve(host, port).await.map_err(|e| {
            log::info!("stream {key}: {e}");
            e.reason()
        })?;
        let mut last = ErrorReason::HostUnreachable;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => {
                    log::info!("stream {key}: {addr} failed: {e}");
                    last = ErrorReason::from_io(&e);
                }
            }
        }
        Err(last)
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(ErrorReason::Timeout))
}

/// Opens the local end of a stream to `destination`.
pub(super) async fn open_target(
    config: &ExitConfig,
    tls: Option<&tokio_rustls::TlsAcceptor>,
    destination: &str,
    key: &str,
) -> Result<Box<dyn Io>, ErrorReason> {
    let target = choose_target(config, destination).inspect_err(|r| {
        log::info!("stream {key}: destination `{destination}` refused ({r})");
    })?;
    let timeout = config.connect_timeout;
    match target {
        Target::Backend => {
            let s = dial(config.backend.as_str(), timeout)
                .await
                .inspect_err(|r| {
                    log::info!("stream {key}: backend {} failed ({r})", config.backend);
                })?;
            Ok(Box::new(s))
        }
        Target::Egress { host, port } => Ok(Box::new(
            dial_checked(&config.egress, &host, port, timeout, key).await?,
        )),
        Target::Front => {
            let (Some(front), Some(acceptor)) = (&config.https, tls) else {
                return Err(ErrorReason::NotAllowed);
            };
            let upstream = dial(front.target.as_str(), timeout)
                .await
                .inspect_err(|r| {
                    log::info!("stream {key}: HTTPS target {} failed ({r})", front.target);
                })?;
            Ok(Box::new(front::terminate(acceptor, upstream, key)))
        }
    }
}

/// Dials the stream's destination (module docs), answers, and pumps it.
pub(super) async fn serve_stream(
    mut conn: Conn,
    config: &ExitConfig,
    tls: Option<&tokio_rustls::TlsAcceptor>,
    slot: OpenSlot,
) {
    let key = conn.key().to_string();
    let destination = conn.engine.destination().to_string();
    let local = match open_target(config, tls, &destination, &key).await {
        Ok(s) => s,
        Err(reason) => {
            slot.0.refusals.count(&reason);
            conn.engine.backend_failed(reason);
            flush(&mut conn.engine, &conn.link).await;
            return;
        }
    };
    conn.engine.backend_connected(Instant::now());
    if conn.engine.dialect() == crate::engine::Dialect::Legacy {
        // A legacy entry reorders events that arrive close together and
        // subscribes only when it first writes: pace (`crate::pacing`).
        *conn.legacy_pacer() = Pacer::new(config.legacy_pacing.clone());
        conn.legacy_pacer().backend_connected();
    }
    log::debug!("stream {key}: open to `{destination}`");
    let end = pump(conn, local, Vec::new(), config.idle_timeout, slot).await;
    log::debug!("stream {key}: ended ({end:?})");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::HttpsFront;
    use nostr::Keys;

    fn config(backend: &str, public: bool, https: Option<u16>) -> ExitConfig {
        let mut c = ExitConfig::new(Vec::new(), Keys::generate(), backend);
        c.public = public;
        c.https = https.map(|port| HttpsFront {
            port,
            target: "127.0.0.1:1".into(),
        });
        c
    }

    #[test]
    fn private_exit_dials_its_backend_whatever_the_destination() {
        let c = config("127.0.0.1:8080", false, None);
        for d in ["example.org:80", "127.0.0.1:22", "x.nostr:80", "garbage"] {
            assert_eq!(choose_target(&c, d), Ok(Target::Backend), "{d}");
        }
    }

    #[test]
    fn public_exit_sends_ordinary_hosts_through_the_policy() {
        let c = config("127.0.0.1:8080", true, None);
        assert_eq!(
            choose_target(&c, "example.org:443"),
            Ok(Target::Egress {
                host: "example.org".into(),
                port: 443
            })
        );
        assert_eq!(
            choose_target(&c, "[::1]:80"),
            Ok(Target::Egress {
                host: "::1".into(),
                port: 80
            })
        );
        assert_eq!(choose_target(&c, "abc.nostr:80"), Ok(Target::Backend));
        let bare = config("", true, None);
        assert_eq!(
            choose_target(&bare, "abc.nostr:80"),
            Err(ErrorReason::NotAllowed)
        );
    }

    #[test]
    fn https_front_takes_its_port_or_everything_without_backend() {
        let both = config("127.0.0.1:8080", false, Some(8443));
        assert_eq!(choose_target(&both, "abc.nostr:8443"), Ok(Target::Front));
        assert_eq!(choose_target(&both, "abc.nostr:80"), Ok(Target::Backend));
        let front = config("", false, Some(443));
        assert_eq!(choose_target(&front, "abc.nostr:80"), Ok(Target::Front));
    }
}
