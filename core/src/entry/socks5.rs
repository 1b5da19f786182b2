//! The SOCKS5 proxy's socket side: runs the sans-IO handshake
//! ([`nws_protocol::socks5::Handshake`], RFC 1928 with RFC 1929
//! username/password) over a client connection and writes replies.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use crate::protocol::credentials::Credentials;
use crate::protocol::socks5::{Handshake, Step};
pub use crate::protocol::socks5::{ReplyCode, Socks5Error, TargetAddr};

/// Size of one read from the client during the handshake, in bytes.
const READ_CHUNK: usize = 1024;

/// Why a SOCKS5 handshake over a socket failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Reading from or writing to the client failed.
    #[error("SOCKS5 I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol, failed authentication or closed early;
    /// where the protocol has a way to say so, it was told.
    #[error(transparent)]
    Socks5(#[from] Socks5Error),
}

/// Runs the server side of a SOCKS5 handshake on `stream` and returns the
/// address the client asked for, and any bytes it sent after its request
/// (its first stream bytes; they belong to the stream).
///
/// On success nothing has been written for the request: the caller must
/// answer with [`reply`] (usually [`ReplyCode::Succeeded`] once the stream is
/// open). What the handshake answers on the way, and on failure, is written
/// here (see [`Socks5Error`] for which failures are answered and how).
///
/// # Errors
///
/// [`HandshakeError::Io`] for a failed read or write;
/// [`HandshakeError::Socks5`] otherwise ([`Socks5Error::Truncated`] when the
/// client closed mid-handshake).
pub async fn accept<S>(
    stream: &mut S,
    credentials: Option<&Credentials>,
) -> Result<(TargetAddr, Vec<u8>), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut handshake = Handshake::new(credentials);
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        match handshake.step(&buf) {
            Ok(Some((Step::Answer(bytes), used))) => {
                buf.drain(..used);
                write_flush(stream, &bytes).await?;
            }
            Ok(Some((Step::Request(target), used))) => {
                buf.drain(..used);
                return Ok((target, buf));
            }
            Ok(None) => {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(Socks5Error::Truncated.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(failure) => {
                if !failure.answer.is_empty() {
                    write_flush(stream, &failure.answer).await?;
                }
                return Err(failure.error.into());
            }
        }
    }
}

/// Writes a SOCKS5 reply (RFC 1928 §6; [`crate::protocol::socks5::reply`])
/// with `code` and flushes.
///
/// # Errors
///
/// Any I/O error from writing or flushing `stream`.
pub async fn reply<S>(stream: &mut S, code: ReplyCode) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    write_flush(stream, &crate::protocol::socks5::reply(code)).await
}

/// Writes all of `bytes` and flushes.
async fn write_flush<S>(stream: &mut S, bytes: &[u8]) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    stream.write_all(bytes).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::socks5::Socks5Error;
    use std::net::Ipv6Addr;
    use tokio::io::{duplex, DuplexStream};

    fn creds() -> Credentials {
        Credentials {
            username: "alice".into(),
            password: "s3cret".into(),
        }
    }

    /// Runs `accept` against a client that sends `input` then closes its
    /// write side; returns the result and every byte the server wrote.
    async fn run(
        input: &[u8],
        credentials: Option<&Credentials>,
    ) -> (Result<TargetAddr, Socks5Error>, Vec<u8>) {
        let (mut client, mut server): (DuplexStream, DuplexStream) = duplex(4096);
        client.write_all(input).await.expect("write input");
        client.shutdown().await.expect("shutdown");
        let result = match accept(&mut server, credentials).await {
            Ok((target, _)) => Ok(target),
            Err(HandshakeError::Socks5(e)) => Err(e),
            Err(HandshakeError::Io(e)) => panic!("in-memory socket failed: {e}"),
        };
        drop(server);
        let mut written = Vec::new();
        client.read_to_end(&mut written).await.expect("read output");
        (result, written)
    }

    const NO_AUTH_GREETING: [u8; 3] = [5, 1, 0];

    fn with_greeting(greeting: &[u8], request: &[u8]) -> Vec<u8> {
        [greeting, request].concat()
    }

    #[tokio::test]
    async fn accepts_no_auth_domain_request() {
        let mut input = NO_AUTH_GREETING.to_vec();
        input.extend_from_slice(&[5, 1, 0, 3, 11]);
        input.extend_from_slice(b"example.com");
        input.extend_from_slice(&443u16.to_be_bytes());
        let (result, written) = run(&input, None).await;
        let target = result.expect("accepted");
        assert_eq!(target, TargetAddr::Domain("example.com".into(), 443));
        assert_eq!(target.host(), "example.com");
        assert_eq!(target.port(), 443);
        assert_eq!(target.to_string(), "example.com:443");
        assert_eq!(written, vec![5, 0]);
    }

    #[tokio::test]
    async fn accepts_no_auth_ipv4_request() {
        let input = with_greeting(&NO_AUTH_GREETING, &[5, 1, 0, 1, 127, 0, 0, 1, 0x1f, 0x90]);
        let (result, written) = run(&input, None).await;
        let target = result.expect("accepted");
        assert_eq!(
            target,
            TargetAddr::Ip("127.0.0.1:8080".parse().expect("addr"))
        );
        assert_eq!(target.host(), "127.0.0.1");
        assert_eq!(target.to_string(), "127.0.0.1:8080");
        assert_eq!(written, vec![5, 0]);
    }

    #[tokio::test]
    async fn accepts_no_auth_ipv6_request() {
        let mut request = vec![5, 1, 0, 4];
        request.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        request.extend_from_slice(&80u16.to_be_bytes());
        let (result, _) = run(&with_greeting(&NO_AUTH_GREETING, &request), None).await;
        let target = result.expect("accepted");
        assert_eq!(target.host(), "::1");
        assert_eq!(target.port(), 80);
        assert_eq!(target.to_string(), "[::1]:80");
    }

    #[tokio::test]
    async fn leaves_bytes_after_the_request_unread() {
        let (mut client, mut server) = duplex(4096);
        let mut input = with_greeting(&NO_AUTH_GREETING, &[5, 1, 0, 1, 10, 0, 0, 1, 0, 80]);
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        client.write_all(&input).await.expect("write");
        client.shutdown().await.expect("shutdown");
        let (_, mut rest) = accept(&mut server, None).await.expect("accepted");
        // Bytes read past the request come back as the stream's first bytes.
        server.read_to_end(&mut rest).await.expect("read rest");
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn accepts_correct_credentials() {
        let mut input = vec![5, 2, 0, 2, 1, 5];
        input.extend_from_slice(b"alice");
        input.push(6);
        input.extend_from_slice(b"s3cret");
        input.extend_from_slice(&[5, 1, 0, 3, 4]);
        input.extend_from_slice(b"a.io");
        input.extend_from_slice(&[0, 80]);
        let (result, written) = run(&input, Some(&creds())).await;
        assert_eq!(
            result.expect("accepted"),
            TargetAddr::Domain("a.io".into(), 80)
        );
        assert_eq!(written, vec![5, 2, 1, 0]);
    }

    #[tokio::test]
    async fn rejects_wrong_password_with_status_1() {
        let mut input = vec![5, 1, 2, 1, 5];
        input.extend_from_slice(b"alice");
        input.push(5);
        input.extend_from_slice(b"wrong");
        let (result, written) = run(&input, Some(&creds())).await;
        assert!(matches!(result, Err(Socks5Error::AuthFailed)), "{result:?}");
        assert_eq!(written, vec![5, 2, 1, 1]);
    }

    #[tokio::test]
    async fn rejects_bad_auth_version() {
        let (result, written) = run(&[5, 1, 2, 5, 0, 0], Some(&creds())).await;
        assert!(
            matches!(result, Err(Socks5Error::BadAuthVersion(5))),
            "{result:?}"
        );
        assert_eq!(written, vec![5, 2, 1, 1]);
    }

    #[tokio::test]
    async fn answers_ff_when_client_offers_no_auth_but_credentials_required() {
        let (result, written) = run(&NO_AUTH_GREETING, Some(&creds())).await;
        assert!(
            matches!(result, Err(Socks5Error::NoAcceptableMethod)),
            "{result:?}"
        );
        assert_eq!(written, vec![5, 0xFF]);
    }

    #[tokio::test]
    async fn answers_ff_when_client_offers_only_gssapi() {
        let (result, written) = run(&[5, 1, 1], None).await;
        assert!(
            matches!(result, Err(Socks5Error::NoAcceptableMethod)),
            "{result:?}"
        );
        assert_eq!(written, vec![5, 0xFF]);
    }

    #[tokio::test]
    async fn answers_ff_to_empty_method_list() {
        let (result, written) = run(&[5, 0], None).await;
        assert!(
            matches!(result, Err(Socks5Error::NoAcceptableMethod)),
            "{result:?}"
        );
        assert_eq!(written, vec![5, 0xFF]);
    }

    #[tokio::test]
    async fn replies_7_to_bind() {
        let input = with_greeting(&NO_AUTH_GREETING, &[5, 2, 0, 1, 127, 0, 0, 1, 0, 80]);
        let (result, written) = run(&input, None).await;
        assert!(
            matches!(result, Err(Socks5Error::CommandNotSupported(2))),
            "{result:?}"
        );
        assert_eq!(written, vec![5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn replies_7_to_udp_associate() {
        let input = with_greeting(&NO_AUTH_GREETING, &[5, 3, 0, 1, 0, 0, 0, 0, 0, 0]);
        let (result, written) = run(&input, None).await;
        assert!(
            matches!(result, Err(Socks5Error::CommandNotSupported(3))),
            "{result:?}"
        );
        assert_eq!(written[2..4], [5, 7]);
    }

    #[tokio::test]
    async fn replies_8_to_unknown_address_type() {
        let input = with_greeting(&NO_AUTH_GREETING, &[5, 1, 0, 9, 1, 2, 3]);
        let (result, written) = run(&input, None).await;
        assert!(
            matches!(result, Err(Socks5Error::AddressTypeNotSupported(9))),
            "{result:?}"
        );
        assert_eq!(written, vec![5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn rejects_empty_and_non_utf8_domains() {
        for name in [&b""[..], &[0xff, 0xfe][..]] {
            let mut request = vec![5, 1, 0, 3, name.len() as u8];
            request.extend_from_slice(name);
            request.extend_from_slice(&[0, 80]);
            let (result, written) = run(&with_greeting(&NO_AUTH_GREETING, &request), None).await;
            assert!(matches!(result, Err(Socks5Error::BadDomain)), "{result:?}");
            assert_eq!(written[2..4], [5, 1]);
        }
    }

    #[tokio::test]
    async fn truncated_input_is_an_error_at_every_length() {
        let mut full = NO_AUTH_GREETING.to_vec();
        full.extend_from_slice(&[5, 1, 0, 3, 4]);
        full.extend_from_slice(b"a.io");
        full.extend_from_slice(&[0, 80]);
        for cut in 0..full.len() {
            let (result, _) = run(&full[..cut], None).await;
            match result {
                Err(Socks5Error::Truncated) => {}
                other => panic!("cut {cut}: unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn truncated_auth_is_an_error() {
        let (result, _) = run(&[5, 1, 2, 1, 5, b'a', b'l'], Some(&creds())).await;
        assert!(matches!(result, Err(Socks5Error::Truncated)), "{result:?}");
    }

    #[tokio::test]
    async fn rejects_wrong_version_byte_without_answering() {
        let (result, written) = run(&[4, 1, 0, 80, 127, 0, 0, 1, 0], None).await;
        assert!(
            matches!(result, Err(Socks5Error::NotSocks5 { version: 4 })),
            "{result:?}"
        );
        assert!(written.is_empty());
    }

    #[tokio::test]
    async fn rejects_wrong_version_byte_in_request() {
        let input = with_greeting(&NO_AUTH_GREETING, &[4, 1, 0, 1, 127, 0, 0, 1, 0, 80]);
        let (result, _) = run(&input, None).await;
        assert!(
            matches!(result, Err(Socks5Error::NotSocks5 { version: 4 })),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn reply_writes_ten_bytes_with_zero_bound_address() {
        let (mut client, mut server) = duplex(64);
        reply(&mut server, ReplyCode::HostUnreachable)
            .await
            .expect("reply");
        drop(server);
        let mut written = Vec::new();
        client.read_to_end(&mut written).await.expect("read");
        assert_eq!(written, vec![5, 4, 0, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn credentials_match_only_exact_values() {
        let c = creds();
        assert!(c.matches(b"alice", b"s3cret"));
        assert!(!c.matches(b"alice", b"s3cres"));
        assert!(!c.matches(b"alice", b"s3cret!"));
        assert!(!c.matches(b"bob", b"s3cret"));
        assert!(!c.matches(b"", b""));
    }

    #[test]
    fn credentials_debug_redacts_password() {
        let shown = format!("{:?}", creds());
        assert!(shown.contains("alice"));
        assert!(!shown.contains("s3cret"));
    }
}
