//! Serving the HTTP port: accepting connections within the limits, TLS when configured, one
//! hyper connection each (so TLS layers under the same router and each request learns its
//! peer address), the API's refused tokens counted against their source like failed SSH
//! logins, and the drain when the relay stops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use hyper_util::rt::{TokioIo, TokioTimer};
use tether_protocol::shutdown::stopped;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use super::peer::{PeerAddr, forwarded_for};
use crate::limits::Limits;

/// How long a client may take to send its request head (or finish TLS).
const HEADER_TIMEOUT: Duration = Duration::from_secs(15);

/// How long, once the relay is stopping, requests in progress may take to finish. A client that
/// sends its body slower than that is cut off; nothing it sent was acknowledged.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts HTTP(S) connections until `shutdown` turns true, within `limits`.
///
/// When `shutdown` fires the listener is closed first (new connections are refused), then every
/// connection finishes the request it is serving, answers it and closes; idle keep-alive
/// connections close at once. A request whose handler committed something therefore always
/// gets its answer, for at most [`DRAIN_TIMEOUT`]. WebSocket links have left hyper by then;
/// the SSH front closes them.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: Arc<Limits>,
    trust_forwarded_for: bool,
    tcp_keepalive: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("http accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            // Reap finished connections so the set holds only live ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = stopped(&mut shutdown) => break,
        };
        let _ = tcp.set_nodelay(true);
        // WebSocket links arrive here: a dead board is noticed by the kernel, as on the SSH port.
        if let Err(e) = tether_protocol::tcp_keepalive::arm(&tcp, tcp_keepalive) {
            tracing::debug!("tcp keepalive on the connection from {peer}: {e}");
        }
        let permit = match limits.http_connection(peer.ip()) {
            Ok(p) => p,
            Err(hit) => {
                tracing::warn!("http connection from {peer} refused: {hit}");
                tokio::spawn(refuse_connection(tcp, hit.0));
                continue;
            }
        };
        let router = router.clone();
        let tls = tls.clone();
        let limits = limits.clone();
        let stop = shutdown.clone();
        connections.spawn(async move {
            let guard = AuthGuard {
                limits,
                trust_forwarded_for,
            };
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_connection(stream, peer, router, guard, stop).await,
                        Ok(Err(e)) => tracing::debug!("tls handshake from {peer} failed: {e}"),
                        Err(_) => tracing::debug!("tls handshake from {peer} timed out"),
                    }
                }
                None => serve_connection(tcp, peer, router, guard, stop).await,
            }
            drop(permit);
        });
    }
    drop(listener);
    let busy = connections.len();
    if busy == 0 {
        return;
    }
    tracing::info!("letting {busy} HTTP connections finish their requests");
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "{} HTTP connections still busy after {DRAIN_TIMEOUT:?}; closing them",
            connections.len()
        );
    }
}

/// Answers a connection over the limits with 503 and closes it, without waiting long for a
/// client that does not read (a plain-HTTP answer; a TLS client sees the connection close).
async fn refuse_connection(mut tcp: tokio::net::TcpStream, message: String) {
    use tokio::io::AsyncWriteExt;
    let body = format!("{{\"error\": {}}}\n", serde_json::Value::String(message));
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 10\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = tcp.write_all(answer.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

/// Counts the API's refused tokens against the caller's address and refuses addresses that
/// failed too often, like failed SSH logins.
#[derive(Clone)]
struct AuthGuard {
    limits: Arc<Limits>,
    trust_forwarded_for: bool,
}

impl AuthGuard {
    /// The address failures are counted against.
    fn source(&self, peer: SocketAddr, headers: &HeaderMap) -> std::net::IpAddr {
        self.trust_forwarded_for
            .then(|| forwarded_for(headers))
            .flatten()
            .unwrap_or(peer)
            .ip()
    }
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    guard: AuthGuard,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(PeerAddr(peer));
            let mut router = router.clone();
            let guard = guard.clone();
            async move {
                let source = guard.source(peer, req.headers());
                let bearer = req.headers().contains_key(header::AUTHORIZATION);
                if bearer && let Some(hit) = guard.limits.auth_refused(source) {
                    let mut refused = (
                        StatusCode::TOO_MANY_REQUESTS,
                        axum::Json(serde_json::json!({ "error": hit.0 })),
                    )
                        .into_response();
                    refused
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
                    return Ok(refused);
                }
                let response = router.call(req.map(Body::new)).await;
                if let Ok(r) = &response
                    && r.status() == StatusCode::UNAUTHORIZED
                    && let Some(hit) = guard.limits.auth_failed(source)
                {
                    tracing::warn!("http: {hit}");
                }
                response
            }
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stopped(&mut shutdown) => {
            // Finish the request in progress (answering it with Connection: close), then end.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!("http connection from {peer}: {e}");
    }
}
