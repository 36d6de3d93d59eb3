//! Where a request comes from: the peer address of its connection, or, behind a reverse
//! proxy the relay is told to trust, the client address the proxy reports.

use std::net::SocketAddr;

use axum::http::HeaderMap;

/// Peer address of the HTTP connection a request came on.
#[derive(Clone, Copy)]
pub(super) struct PeerAddr(pub(super) SocketAddr);

/// The client address a trusted reverse proxy reports (first entry of X-Forwarded-For).
pub(super) fn forwarded_for(headers: &HeaderMap) -> Option<SocketAddr> {
    let value = headers.get("x-forwarded-for")?.to_str().ok()?;
    let first = value.split(',').next()?.trim();
    first.parse::<SocketAddr>().ok().or_else(|| {
        first
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 0))
    })
}
