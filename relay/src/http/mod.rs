//! The relay's HTTP port: the WebSocket transport of the device link at `/v1/link`, the JSON
//! API, and optional TLS.
//!
//! Connections are served with hyper directly (rather than `axum::serve`) so that TLS can be
//! layered under the same router and each request learns its peer address. Behind a
//! TLS-terminating reverse proxy the relay serves plain HTTP and, when told to trust it, takes
//! the client address from `X-Forwarded-For`.
//!
//! Layout: [`server`] accepts and serves connections, [`tls`] builds the TLS acceptor,
//! `link` upgrades `/v1/link` to the device link, `peer` says where a request comes from, and
//! [`api`] holds the JSON API, one module per resource. [`router`] puts the routes together,
//! with `/healthz` and `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tether_protocol::names::WS_LINK_PATH;

use crate::ssh::Front;

pub mod api;
mod link;
mod peer;
pub mod server;
pub mod tls;

pub use server::{DRAIN_TIMEOUT, serve};
pub use tls::{TlsError, tls_acceptor};

/// The complete router: API routes plus the WebSocket link and a health check.
pub fn router(api: Router, front: Arc<Front>, trust_forwarded_for: bool) -> Router {
    let metrics_front = front.clone();
    let state = link::LinkState {
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
            get(move |req: Request| link::link(state.clone(), req)),
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
