//! The relay's HTTP port: the WebSocket transport of the device link at `/v1/link`, the JSON
//! API, and optional TLS.
//!
//! Connections are served with hyper directly (rather than `axum::serve`) so that TLS can be
//! layered under the same router and each request learns its peer address. Behind a
//! TLS-terminating reverse proxy the relay serves plain HTTP and, when told to trust it, takes
//! the client address from `X-Forwarded-For`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use tether_protocol::names::WS_LINK_PATH;
use tether_protocol::shutdown::stopped;
use tether_protocol::ws::{WsByteStream, link_ws_config};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tower_service::Service;

use crate::limits::Limits;
use crate::ssh::Front;

/// How long a client may take to send its request head (or finish TLS).
const HEADER_TIMEOUT: Duration = Duration::from_secs(15);

/// How long, once the relay is stopping, requests in progress may take to finish. A client that
/// sends its body slower than that is cut off; nothing it sent was acknowledged.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why TLS could not be set up.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The files hold no usable certificate or key.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Builds a TLS acceptor from PEM certificate chain and private key files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Io {
            path: p.display().to_string(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let invalid = |p: &Path, message: String| TlsError::Invalid {
        path: p.display().to_string(),
        message,
    };
    let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid(cert, "no certificate in PEM file".into()));
    }
    let key_der = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| invalid(key, e.to_string()))?
        .ok_or_else(|| invalid(key, "no private key in PEM file".into()))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| invalid(cert, e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// State the link route needs.
#[derive(Clone)]
struct LinkState {
    front: Arc<Front>,
    trust_forwarded_for: bool,
}

/// Peer address of the HTTP connection a request came on.
#[derive(Clone, Copy)]
struct PeerAddr(SocketAddr);

/// The complete router: API routes plus the WebSocket link and a health check.
pub fn router(api: Router, front: Arc<Front>, trust_forwarded_for: bool) -> Router {
    let metrics_front = front.clone();
    let state = LinkState {
        front,
        trust_forwarded_for,
    };
    api.route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let front = metrics_front.clone();
                async move { metrics_page(&front) }
            }),
        )
        .route(
            WS_LINK_PATH,
            get(move |req: Request| link(state.clone(), req)),
        )
}

/// `GET /metrics`: Prometheus text exposition. Unauthenticated like `/healthz`, as is usual
/// for scrape endpoints; it carries counts, never tenant or device names.
fn metrics_page(front: &Front) -> Response {
    let online = i64::try_from(front.registry.len()).unwrap_or(i64::MAX);
    front.metrics.devices_online.set(online);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        front.metrics.render(),
    )
        .into_response()
}

/// Upgrades `/v1/link` to a WebSocket and serves the SSH front on it.
async fn link(state: LinkState, mut req: Request) -> Response {
    let headers = req.headers();
    let upgrade_ok = header_has(headers, header::UPGRADE, "websocket")
        && header_has(headers, header::CONNECTION, "upgrade");
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec())
    else {
        return (
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade (Sec-WebSocket-Key missing)\n",
        )
            .into_response();
    };
    if !upgrade_ok || !version_ok {
        return (
            StatusCode::BAD_REQUEST,
            "expected a WebSocket version 13 upgrade\n",
        )
            .into_response();
    }
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0);
    let forwarded = state
        .trust_forwarded_for
        .then(|| forwarded_for(req.headers()))
        .flatten();
    let Some(remote) = forwarded.or(peer) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no peer address\n").into_response();
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(link_ws_config()),
                )
                .await;
                state
                    .front
                    .serve(WsByteStream::new(ws), remote, "websocket")
                    .await;
            }
            Err(e) => tracing::info!("websocket upgrade from {remote} failed: {e}"),
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(&key)) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// The client address a trusted reverse proxy reports (first entry of X-Forwarded-For).
fn forwarded_for(headers: &HeaderMap) -> Option<SocketAddr> {
    let value = headers.get("x-forwarded-for")?.to_str().ok()?;
    let first = value.split(',').next()?.trim();
    first.parse::<SocketAddr>().ok().or_else(|| {
        first
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 0))
    })
}

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
