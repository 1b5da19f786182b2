//! HTTP proxy request heads (RFC 9112), arriving in fuzzed pieces.

use nws_protocol::credentials::Credentials;
use nws_protocol::http::{error_response, parse, HttpProxyError, ProxyRequest, MAX_HEAD_BYTES};

/// Feeds `input` to the parser the way the entry's socket reader does: in
/// pieces of `read_size` bytes (0: all at once), parsing after each, until
/// the head is complete, the input ends (`ClosedEarly`) or 64 KiB are held
/// without a complete head. Returns the outcome and the bytes taken in.
fn read_in_pieces(
    input: &[u8],
    read_size: usize,
    credentials: Option<&Credentials>,
) -> (Result<ProxyRequest, HttpProxyError>, usize) {
    let step = if read_size == 0 {
        usize::MAX
    } else {
        read_size
    };
    let mut held = 0usize;
    loop {
        if held == input.len() {
            return (Err(HttpProxyError::ClosedEarly), held);
        }
        held = held.saturating_add(step).min(input.len());
        match parse(&input[..held], credentials) {
            Ok(Some((request, _))) => return (Ok(request), held),
            Ok(None) if held >= MAX_HEAD_BYTES => {
                return (Err(HttpProxyError::HeaderTooLarge), held)
            }
            Ok(None) => {}
            Err(e) => return (Err(e), held),
        }
    }
}

/// Credentials used when the first input byte asks for authentication;
/// `Basic YWxpY2U6cGE6c3M=` matches.
fn creds() -> Credentials {
    Credentials {
        username: "alice".into(),
        password: "pa:ss".into(),
    }
}

/// Target `http_request`: bit 0 of the first byte turns credentials on, the
/// second byte sets the size of each read (0: one read of everything), the
/// rest is what the client sends.
pub fn http_request(data: &[u8]) {
    let (Some(&flags), Some(&read_size)) = (data.first(), data.get(1)) else {
        return;
    };
    let input = &data[2..];
    let credentials = (flags & 1 == 1).then(creds);
    let (got, consumed) = read_in_pieces(input, usize::from(read_size), credentials.as_ref());
    // Parsing stops at the end of the head: the outcome does not depend on
    // how the client's bytes were split.
    let (once, _) = read_in_pieces(input, 0, credentials.as_ref());
    same_outcome(&got, &once);

    match got {
        Ok(request) => check_request(&request, &input[..consumed], credentials.is_some()),
        Err(e) => check_error(&e),
    }
}

fn same_outcome(
    a: &Result<ProxyRequest, HttpProxyError>,
    b: &Result<ProxyRequest, HttpProxyError>,
) {
    match (a, b) {
        (Ok(x), Ok(y)) => {
            assert_eq!(
                (x.host(), x.port()),
                (y.host(), y.port()),
                "target depends on read sizes"
            );
            if let (
                ProxyRequest::Forward { head: hx, .. },
                ProxyRequest::Forward { head: hy, .. },
            ) = (x, y)
            {
                assert_eq!(hx, hy, "forwarded head depends on read sizes");
            }
            assert_eq!(
                matches!(x, ProxyRequest::Connect { .. }),
                matches!(y, ProxyRequest::Connect { .. })
            );
        }
        (Err(x), Err(y)) => {
            // A head over the size limit may be noticed before or after the
            // parser sees a malformed byte, depending on the read sizes.
            let big = |e: &HttpProxyError| matches!(e, HttpProxyError::HeaderTooLarge);
            if !big(x) && !big(y) {
                assert_eq!(x.status(), y.status(), "{x} vs {y}");
            }
        }
        (x, y) => panic!("read sizes change the outcome: {x:?} vs {y:?}"),
    }
}

fn check_request(request: &ProxyRequest, read: &[u8], authenticated: bool) {
    assert!(!request.host().is_empty(), "empty host accepted");
    assert_ne!(request.port(), 0, "port 0 accepted");
    assert!(
        !request.host().bytes().any(|b| b.is_ascii_uppercase()),
        "host not lower-cased: {}",
        request.host()
    );
    // `leftover` is exactly what was read past the client's head.
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = parsed.parse(read) else {
        panic!("accepted a head that httparse does not complete");
    };
    if authenticated {
        let ok = parsed.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("proxy-authorization")
                && std::str::from_utf8(h.value)
                    .map(|v| {
                        v.split_whitespace()
                            .nth(1)
                            .is_some_and(|t| t.trim_end_matches('=') == "YWxpY2U6cGE6c3M")
                    })
                    .unwrap_or(false)
        });
        assert!(ok, "accepted without the right Proxy-Authorization");
    }
    match request {
        ProxyRequest::Connect { leftover, .. } => assert_eq!(&leftover[..], &read[head_len..]),
        ProxyRequest::Forward { head, leftover, .. } => {
            assert_eq!(&leftover[..], &read[head_len..]);
            check_forwarded_head(head);
        }
    }
}

/// The head sent to the origin is one well-formed request, in origin form,
/// with `Host` first, no `Proxy-*` header, and `Connection: close` last.
fn check_forwarded_head(head: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(
            n,
            head.len(),
            "forwarded head holds more than one head: {:?}",
            String::from_utf8_lossy(head)
        ),
        other => panic!(
            "forwarded head does not parse ({other:?}): {:?}",
            String::from_utf8_lossy(head)
        ),
    }
    assert!(
        parsed.path.is_some_and(|p| p.starts_with('/')),
        "not origin form"
    );
    let names: Vec<String> = parsed
        .headers
        .iter()
        .map(|h| h.name.to_ascii_lowercase())
        .collect();
    assert_eq!(names.first().map(String::as_str), Some("host"));
    assert_eq!(
        names.iter().filter(|n| *n == "host").count(),
        1,
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.starts_with("proxy-")), "{names:?}");
    assert_eq!(names.last().map(String::as_str), Some("connection"));
    assert!(head.ends_with(b"Connection: close\r\n\r\n"));
}

/// The error answer is one well-formed response whose body holds the message.
fn check_error(e: &HttpProxyError) {
    let status = e.status();
    assert!(
        [400, 407, 431, 501].contains(&status),
        "status {status} for {e}"
    );
    let out = error_response(status, &e.to_string());
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(n)) = response.parse(&out) else {
        panic!(
            "error answer does not parse: {:?}",
            String::from_utf8_lossy(&out)
        );
    };
    assert_eq!(response.code, Some(status));
    let length: usize = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
        .expect("Content-Length");
    assert_eq!(
        length,
        out.len() - n,
        "body length differs from Content-Length"
    );
}
