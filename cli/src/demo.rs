//! `nws demo`: the whole path on loopback — an embedded relay, a small web
//! backend with no public address, an exit node in front of it, and an entry
//! proxy — then one page fetched through all of it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use nostr::Keys;
use nws_core::entry::{Credentials, EntryConfig, EntryProxy};
use nws_core::exit::{ExitConfig, ExitNode};
use nws_relay::EmbeddedRelay;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The page the demo backend serves at `/`.
pub const DEMO_PAGE: &str = "<!doctype html>\n<html><head><title>Hello from a .nostr service</title></head>\n<body><h1>Hello from a .nostr service</h1>\n<p>This page came from a backend with no public address, through an NWS exit node, a Nostr relay and an NWS entry proxy.</p></body></html>\n";

#[derive(Args)]
pub struct DemoArgs {
    /// Where the embedded relay listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    relay_listen: SocketAddr,
    /// Where the entry's SOCKS5 proxy listens.
    #[arg(long, default_value = "127.0.0.1:1080")]
    socks: SocketAddr,
    /// Where the entry's HTTP proxy listens.
    #[arg(long, default_value = "127.0.0.1:3128")]
    http: SocketAddr,
    /// Exit after the first fetch instead of running until Ctrl-C.
    #[arg(long)]
    once: bool,
}

pub async fn run(args: DemoArgs) -> Result<(), String> {
    // With --once, Ctrl-C keeps its default effect.
    let stop = (!args.once).then(crate::shutdown_signal);
    let relay = EmbeddedRelay::start(args.relay_listen)
        .await
        .map_err(|e| e.to_string())?;
    let backend = start_backend().await?;
    let exit = ExitNode::start(ExitConfig::new(
        vec![relay.url().clone()],
        Keys::generate(),
        backend.to_string(),
    ))
    .await
    .map_err(|e| e.to_string())?;
    let domain = exit.nostr_domain().map_err(|e| e.to_string())?;

    let mut config = EntryConfig::new(vec![relay.url().clone()]);
    config.socks_listen = Some(args.socks);
    config.http_listen = Some(args.http);
    // Random per-start credentials, as for `nws entry` and the mobile proxy.
    let creds = Credentials::random();
    config.credentials = Some(creds.clone());
    let proxy = match EntryProxy::start(config.clone()).await {
        Ok(p) => p,
        Err(e) => {
            // The usual ports may be taken: fall back to free ones.
            log::warn!("{e}; using free ports instead");
            config.socks_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            config.http_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            EntryProxy::start(config).await.map_err(|e| e.to_string())?
        }
    };
    let (socks, http) = match (proxy.socks_addr(), proxy.http_addr()) {
        (Some(s), Some(h)) => (s, h),
        _ => return Err("the entry did not start both proxies".into()),
    };

    println!("relay: {}", relay.url());
    println!("backend: http://{backend}/ (loopback only; reached through the exit)");
    println!("exit: {}", exit.nprofile());
    println!("domain: {domain}");
    println!("socks5: {socks}");
    println!("http: {http}");
    println!("proxy-user: {}", creds.username);
    println!("proxy-password: {}", creds.password);
    let userinfo = format!("{}:{}", creds.username, creds.password);

    let started = Instant::now();
    let (status, body) = fetch_through_http_proxy(http, &userinfo, &domain).await?;
    println!(
        "fetched: http://{domain}/ -> {status}, {} bytes in {} ms",
        body.len(),
        started.elapsed().as_millis()
    );
    if status != 200 || body != DEMO_PAGE.as_bytes() {
        return Err(format!("the demo page came back wrong (status {status})"));
    }
    println!("\nTry it yourself:");
    println!("  curl --proxy socks5h://{userinfo}@{socks} http://{domain}/");
    println!("  curl --proxy http://{userinfo}@{http} http://{domain}/");
    println!("ready");
    if let Some(stop) = stop {
        stop.await;
    }
    proxy.stop().await;
    exit.stop().await;
    relay.shutdown();
    Ok(())
}

async fn start_backend() -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot start the demo backend: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(serve);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn serve(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match req.uri().path() {
        "/" => (200, DEMO_PAGE),
        _ => (404, "not found\n"),
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    Ok(resp)
}

/// GETs `http://<domain>/` through the HTTP proxy; returns status and body.
async fn fetch_through_http_proxy(
    proxy: SocketAddr,
    userinfo: &str,
    domain: &str,
) -> Result<(u16, Vec<u8>), String> {
    let fetch = async {
        let mut sock = TcpStream::connect(proxy)
            .await
            .map_err(|e| format!("cannot reach the entry proxy: {e}"))?;
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(userinfo);
        let req = format!(
            "GET http://{domain}/ HTTP/1.1\r\nHost: {domain}\r\nProxy-Authorization: Basic {auth}\r\n\r\n"
        );
        sock.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        // The proxy forwards with `Connection: close`: the body ends at EOF.
        let mut raw = Vec::new();
        sock.read_to_end(&mut raw)
            .await
            .map_err(|e| e.to_string())?;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&raw) {
            Ok(httparse::Status::Complete(n)) => Ok((resp.code.unwrap_or(0), raw[n..].to_vec())),
            _ => Err("malformed response from the proxy".to_string()),
        }
    };
    tokio::time::timeout(Duration::from_secs(30), fetch)
        .await
        .map_err(|_| "the fetch through the proxy timed out".to_string())?
}
