//! The HTTP backend behind the exit: a hyper 1 server on 127.0.0.1 in the
//! bench process.
//!
//! * `GET /small`: [`SMALL_BODY`] ([`SMALL_LEN`] bytes), for time to first
//!   byte and the concurrent streams;
//! * `GET /bulk`: the bulk data ([`BulkData`]), with `Content-Length`, in
//!   [`CHUNK`]-sized frames;
//! * `POST /upload`: reads the body, checks it byte for byte against the bulk
//!   data and answers `200 <bytes>` (or `400` at the first wrong byte).
//!
//! Every connection gets `TCP_NODELAY`; each request is served on the
//! connection's own task.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

/// Size of `GET /small`'s body, in bytes.
pub const SMALL_LEN: usize = 300;
/// Body of `GET /small`: [`SMALL_LEN`] bytes of text.
pub const SMALL_BODY: &[u8; SMALL_LEN] = &{
    let mut b = [b'x'; SMALL_LEN];
    b[SMALL_LEN - 1] = b'\n';
    b
};
/// Listen backlog of the backend, in connections.
pub const BACKLOG: u32 = 1024;
/// Frame size of bulk bodies, in bytes (the backend's and the client's).
pub const CHUNK: usize = 256 * 1024;

/// Deterministic pseudo-random bytes served by `/bulk` and expected by
/// `/upload` (incompressible, so no layer can cheat on them).
#[derive(Clone)]
pub struct BulkData(Bytes);

impl BulkData {
    /// `len` bytes from splitmix64 with a fixed seed.
    pub fn new(len: usize) -> Self {
        let mut state: u64 = 0x6e77_735f_6265_6e63;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        out.truncate(len);
        Self(Bytes::from(out))
    }

    /// The bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `chunk` equals the data at `offset` (false past the end).
    pub fn matches_at(&self, offset: usize, chunk: &[u8]) -> bool {
        self.0
            .get(offset..offset.saturating_add(chunk.len()))
            .is_some_and(|expected| expected == chunk)
    }
}

/// A body that sends `data` in [`CHUNK`]-sized frames (slices, no copies)
/// with an exact size hint, so hyper writes a `Content-Length`.
pub struct ChunkedBody {
    data: Bytes,
}

impl ChunkedBody {
    /// The body over `data`.
    pub fn new(data: Bytes) -> Self {
        Self { data }
    }
}

impl Body for ChunkedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.data.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.data.len().min(CHUNK);
        let frame = self.data.split_to(n);
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.len() as u64)
    }
}

/// The running backend; stops when dropped.
pub struct Backend {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Backend {
    /// Listens on a free port of 127.0.0.1 and serves `data` as `/bulk`.
    ///
    /// The listen backlog is [`BACKLOG`]: with tokio's default (128) a burst
    /// of concurrent connects overflows the accept queue whenever the accept
    /// loop falls behind, and the dropped SYNs cost a 1 s retransmission.
    pub async fn start(data: BulkData) -> std::io::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let listener: TcpListener = socket.listen(BACKLOG)?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let sock = match listener.accept().await {
                    Ok((sock, _)) => sock,
                    Err(_) => {
                        // Out of descriptors, say: back off instead of spinning.
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = sock.set_nodelay(true);
                let data = data.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, data.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, task })
    }

    /// Where it listens (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn response(
    status: StatusCode,
    body: impl Body<Data = Bytes, Error = Infallible> + Send + 'static,
) -> Response<BoxBody> {
    let mut r = Response::new(BoxBody::new(body));
    *r.status_mut() = status;
    r
}

fn text(status: StatusCode, s: String) -> Response<BoxBody> {
    response(status, http_body_util::Full::new(Bytes::from(s)))
}

async fn handle(req: Request<Incoming>, data: BulkData) -> Result<Response<BoxBody>, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/small") => response(
            StatusCode::OK,
            http_body_util::Full::new(Bytes::from_static(SMALL_BODY)),
        ),
        (&Method::GET, "/bulk") => response(StatusCode::OK, ChunkedBody::new(data.bytes().clone())),
        (&Method::POST, "/upload") => {
            let mut body = req.into_body();
            let mut received = 0usize;
            loop {
                match body.frame().await {
                    None => break text(StatusCode::OK, format!("{received}\n")),
                    Some(Err(e)) => break text(StatusCode::BAD_REQUEST, format!("body: {e}\n")),
                    Some(Ok(frame)) => {
                        if let Ok(chunk) = frame.into_data() {
                            if !data.matches_at(received, &chunk) {
                                break text(
                                    StatusCode::BAD_REQUEST,
                                    format!("wrong bytes at offset {received}\n"),
                                );
                            }
                            received += chunk.len();
                        }
                    }
                }
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    })
}
