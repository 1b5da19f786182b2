//! The metrics endpoint of `nws exit` and `nws entry`
//! (`--metrics-listen 127.0.0.1:PORT`): `GET /metrics` answers the node's
//! counters in the OpenMetrics text format (which Prometheus scrapes),
//! written by `prometheus-client`. Loopback only: the figures tell how much
//! a node carries.
//!
//! Every scrape reads the node's counters afresh ([`Snapshot`]); nothing is
//! kept between scrapes.

use nws_core::stats::NodeMetrics;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The media type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A node's counters at one moment (core's [`NodeMetrics`]).
pub type Snapshot = NodeMetrics;

/// Reads a [`Snapshot`] of the node.
pub type Source = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Snapshot> + Send>> + Send + Sync>;

fn counter(value: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(value);
    c
}

fn gauge(value: u64) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    g
}

type Labels = Vec<(String, String)>;

fn by_direction(sent: u64, received: u64) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    f.get_or_create(&vec![("direction".into(), "sent".into())])
        .inc_by(sent);
    f.get_or_create(&vec![("direction".into(), "received".into())])
        .inc_by(received);
    f
}

/// Writes `s` in the OpenMetrics text format; `role` (`exit`, `entry`)
/// labels every metric.
pub fn render(role: &str, s: &Snapshot) -> String {
    let mut registry = Registry::with_prefix_and_labels(
        "nws",
        [(
            std::borrow::Cow::Borrowed("role"),
            std::borrow::Cow::Owned(role.to_string()),
        )]
        .into_iter(),
    );
    registry.register("streams_open", "Streams open now", gauge(s.streams_open));
    registry.register(
        "streams",
        "Streams opened since start",
        counter(s.streams_total),
    );
    registry.register(
        "stream_bytes",
        "Stream bytes since start (bytes): sent to the peer, received from it",
        by_direction(s.bytes_sent, s.bytes_received),
    );
    registry.register(
        "stream_events",
        "Events since start: sent = every event published (stream events, and an exit's heartbeats and announcements), received = stream events (kind 28333) after de-duplication",
        by_direction(s.events_sent, s.events_received),
    );
    let refusals = Family::<Labels, Counter>::default();
    for (reason, n) in &s.refusals {
        refusals
            .get_or_create(&vec![("reason".into(), reason.clone())])
            .inc_by(*n);
    }
    registry.register(
        "refusals",
        "Streams refused or failed before opening, by ERROR reason",
        refusals,
    );
    registry.register(
        "relays_connected",
        "Relays connected now",
        gauge(s.relays_connected),
    );
    registry.register("relays_known", "Relays known", gauge(s.relays_known));
    if let Some((live, active)) = s.instances {
        registry.register(
            "exit_instances_live",
            "Exit instances sharing this key heard within the lapse time, this one included",
            gauge(live),
        );
        registry.register(
            "exit_instances_active",
            "Exit instances live and active (serving new streams) now",
            gauge(active),
        );
    }
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &registry) {
        log::warn!("metrics not encoded: {e}");
    }
    out
}

/// Listens on `addr` (loopback only) and serves `GET /metrics` from
/// `source` until the task is aborted; returns the bound address and the
/// task.
///
/// # Errors
///
/// A message if `addr` is not a loopback address or cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    role: &'static str,
    source: Source,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), String> {
    if !addr.ip().is_loopback() {
        return Err(format!(
            "--metrics-listen {addr}: give a loopback address (127.0.0.1:PORT or [::1]:PORT)"
        ));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--metrics-listen {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("--metrics-listen {addr}: {e}"))?;
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    log::debug!("metrics: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let source = source.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let source = source.clone();
                    async move { answer(req, role, source).await }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    log::debug!("metrics: connection ended: {e}");
                }
            });
        }
    });
    Ok((bound, task))
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    role: &str,
    source: Source,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = if req.uri().path() != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        )
    } else if req.method() != Method::GET && req.method() != Method::HEAD {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".to_string(),
        )
    } else {
        (StatusCode::OK, CONTENT_TYPE, render(role, &source().await))
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_labels() {
        let s = Snapshot {
            streams_open: 2,
            streams_total: 7,
            bytes_sent: 100,
            bytes_received: 2000,
            events_sent: 5,
            events_received: 9,
            refusals: vec![("not-allowed".into(), 3)],
            relays_connected: 1,
            relays_known: 2,
            instances: Some((3, 2)),
        };
        let text = render("exit", &s);
        for line in [
            "nws_streams_open{role=\"exit\"} 2",
            "nws_streams_total{role=\"exit\"} 7",
            "nws_stream_bytes_total{role=\"exit\",direction=\"sent\"} 100",
            "nws_stream_bytes_total{role=\"exit\",direction=\"received\"} 2000",
            "nws_stream_events_total{role=\"exit\",direction=\"received\"} 9",
            "nws_refusals_total{role=\"exit\",reason=\"not-allowed\"} 3",
            "nws_relays_connected{role=\"exit\"} 1",
            "nws_exit_instances_live{role=\"exit\"} 3",
            "# EOF",
        ] {
            assert!(text.contains(line), "no `{line}` in\n{text}");
        }
        assert!(!render("entry", &Snapshot::default()).contains("instances"));
    }
}
