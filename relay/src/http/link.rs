//! `/v1/link`: the device link carried over WebSocket, for networks that pass only HTTP(S).
//! The upgraded connection's binary messages carry the same SSH byte stream as the SSH port,
//! and the SSH front serves it like a TCP connection.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tether_protocol::ws::{WsByteStream, link_ws_config};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::peer::{PeerAddr, forwarded_for};
use crate::ssh::Front;

/// State the link route needs.
#[derive(Clone)]
pub(super) struct LinkState {
    /// The SSH front that serves the link.
    pub(super) front: Arc<Front>,
    /// Whether the client address may be taken from `X-Forwarded-For`.
    pub(super) trust_forwarded_for: bool,
}

/// Upgrades `/v1/link` to a WebSocket and serves the SSH front on it.
pub(super) async fn link(state: LinkState, mut req: Request) -> Response {
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
