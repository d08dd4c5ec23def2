//! `--listen ADDR`: `/metrics` (Prometheus exposition of the watch's
//! registry), `/healthz` (200 while every stream is up and caught up, 503
//! with the reasons otherwise: for readiness and alerts) and `/livez` (200
//! while the run loop turns, 503 once it has stopped for
//! [`super::service::LIVENESS_LIMIT`]: for a liveness probe), over HTTP/1.1
//! with `hyper`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::metrics::WatchMetrics;
use super::service::Liveness;
use crate::error::{Error, Result};

/// Binds `addr` (so that a taken port is a start-up error) and serves until
/// the process ends.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<WatchMetrics>,
    liveness: Arc<Liveness>,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Usage(format!("--listen {addr}: {e}")))?;
    let bound = listener.local_addr().unwrap_or(addr);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = Arc::clone(&metrics);
            let liveness = Arc::clone(&liveness);
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let metrics = Arc::clone(&metrics);
                    let liveness = Arc::clone(&liveness);
                    async move { Ok::<_, Infallible>(answer(&request, &metrics, &liveness)) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

fn answer(
    request: &Request<Incoming>,
    metrics: &WatchMetrics,
    liveness: &Liveness,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => match metrics.health() {
            Ok(()) => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
            Err(reasons) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                reasons.join("\n") + "\n",
            ),
        },
        "/livez" => match liveness.check(std::time::Instant::now()) {
            Ok(()) => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
            Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", reason + "\n"),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz or /livez\n".to_owned(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a static response is valid")
}
