//! The byte stream under the device link.
//!
//! The link is SSH; what carries SSH is chosen by the relay URL: raw TCP for `ssh://host:port`,
//! or WebSocket binary messages for `ws://host[:port]/v1/link` and `wss://…` (for networks that
//! only pass HTTP(S)). For `wss://` the agent honours `HTTPS_PROXY` with an HTTP CONNECT tunnel.
//! Everything above this module sees one `AsyncRead + AsyncWrite` stream.

use std::net::IpAddr;
use std::time::Duration;

use tether_protocol::ws::{WsByteStream, link_ws_config};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use url::Url;

/// Default SSH port of the relay.
pub const DEFAULT_SSH_PORT: u16 = 2222;

/// A byte stream the link can run on.
pub trait LinkStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> LinkStream for T {}

/// A parsed relay URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayUrl {
    /// SSH straight over TCP.
    Ssh {
        /// Relay host name or address.
        host: String,
        /// Relay SSH port.
        port: u16,
    },
    /// SSH inside a WebSocket.
    WebSocket {
        /// The full `ws://` or `wss://` URL.
        url: Url,
    },
}

/// Why the relay could not be reached.
#[derive(Debug, Error)]
pub enum TransportError {
    /// The URL is not one the agent understands.
    #[error("bad relay URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// TCP connect failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// host:port dialled.
        addr: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Nothing answered in time.
    #[error("connecting to {0} timed out")]
    Timeout(String),
    /// The HTTP proxy refused or failed the CONNECT.
    #[error("proxy {proxy}: {reason}")]
    Proxy {
        /// The proxy URL.
        proxy: String,
        /// What went wrong.
        reason: String,
    },
    /// The WebSocket handshake failed.
    #[error("websocket handshake with {url} failed: {reason}")]
    WebSocket {
        /// The link URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

impl RelayUrl {
    /// Parses `ssh://host[:port]`, `ws://host[:port]/path` or `wss://host[:port]/path`.
    pub fn parse(text: &str) -> Result<Self, TransportError> {
        let bad = |reason: &str| TransportError::BadUrl {
            url: text.to_string(),
            reason: reason.into(),
        };
        let url = Url::parse(text).map_err(|e| bad(&e.to_string()))?;
        let host = url.host_str().ok_or_else(|| bad("no host"))?.to_string();
        match url.scheme() {
            "ssh" => {
                if !(url.path().is_empty() || url.path() == "/") {
                    return Err(bad("an ssh:// URL has no path"));
                }
                Ok(RelayUrl::Ssh {
                    host,
                    port: url.port().unwrap_or(DEFAULT_SSH_PORT),
                })
            }
            "ws" | "wss" => Ok(RelayUrl::WebSocket { url }),
            other => Err(bad(&format!("scheme {other:?} is not ssh, ws or wss"))),
        }
    }

    /// `host:port` of the first hop, for messages.
    pub fn authority(&self) -> String {
        match self {
            RelayUrl::Ssh { host, port } => format!("{host}:{port}"),
            RelayUrl::WebSocket { url } => format!(
                "{}:{}",
                url.host_str().unwrap_or_default(),
                url.port_or_known_default().unwrap_or(80)
            ),
        }
    }
}

/// Opens the byte stream to the relay within `timeout`, from local address `bind` if given.
pub async fn connect(
    relay: &RelayUrl,
    timeout: Duration,
    bind: Option<IpAddr>,
    tcp_keepalive: Duration,
) -> Result<Box<dyn LinkStream>, TransportError> {
    let what = relay.authority();
    tokio::time::timeout(timeout, connect_inner(relay, bind, tcp_keepalive))
        .await
        .map_err(|_| TransportError::Timeout(what))?
}

async fn connect_inner(
    relay: &RelayUrl,
    bind: Option<IpAddr>,
    tcp_keepalive: Duration,
) -> Result<Box<dyn LinkStream>, TransportError> {
    let arm = |stream: TcpStream| {
        tether_protocol::tcp_keepalive::arm(&stream, tcp_keepalive).map_err(|e| {
            TransportError::Connect {
                addr: relay.authority(),
                source: std::io::Error::from(e),
            }
        })?;
        Ok::<_, TransportError>(stream)
    };
    match relay {
        RelayUrl::Ssh { host, port } => Ok(Box::new(arm(tcp(host, *port, bind).await?)?)),
        RelayUrl::WebSocket { url } => {
            let host = url.host_str().unwrap_or_default().to_string();
            let port = url.port_or_known_default().unwrap_or(80);
            let proxy = if url.scheme() == "wss" {
                https_proxy_for(&host)
            } else {
                None
            };
            let tcp = match proxy {
                Some(proxy) => connect_via_proxy(&proxy, &host, port, bind).await?,
                None => tcp(&host, port, bind).await?,
            };
            let tcp = arm(tcp)?;
            let ws_err = |reason: String| TransportError::WebSocket {
                url: url.to_string(),
                reason,
            };
            let request = url
                .as_str()
                .into_client_request()
                .map_err(|e| ws_err(e.to_string()))?;
            let (ws, _response) = tokio_tungstenite::client_async_tls_with_config(
                request,
                tcp,
                Some(link_ws_config()),
                None,
            )
            .await
            .map_err(|e| ws_err(describe_ws_error(&e)))?;
            Ok(Box::new(WsByteStream::new(ws)))
        }
    }
}

/// A WebSocket handshake failure in words an operator can act on. rustls' certificate errors
/// print as enum names (`Other(OtherError(CaUsedAsEndEntity))`); those say what is wrong with
/// the relay's certificate and how to make the board trust it.
fn describe_ws_error(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as WsError;
    use tokio_tungstenite::tungstenite::error::TlsError;
    let tls = match e {
        WsError::Tls(TlsError::Rustls(r)) => Some(r.as_ref()),
        // tokio-rustls reports a failed handshake as an I/O error around the rustls error.
        WsError::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    match tls {
        Some(tls) => describe_tls_error(tls),
        None => e.to_string(),
    }
}

/// What a rustls error says about the relay's certificate (see [`describe_ws_error`]).
fn describe_tls_error(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    const TRUST: &str = "if the relay uses a private or self-signed certificate, give its CA \
        certificate (PEM) with SSL_CERT_FILE=/path/to/ca.pem or add it to the system's CA store";
    let rustls::Error::InvalidCertificate(cert) = e else {
        return format!("TLS failed: {e}");
    };
    let problem = match cert {
        C::UnknownIssuer => "is signed by a CA this board does not trust".to_string(),
        C::BadSignature => "has a signature that does not verify".to_string(),
        C::Expired | C::ExpiredContext { .. } => "has expired".to_string(),
        C::NotValidYet | C::NotValidYetContext { .. } => "is not valid yet".to_string(),
        C::Revoked => "is revoked".to_string(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "does not name the host of the relay URL".to_string()
        }
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
            "is not meant for a TLS server".to_string()
        }
        // rustls never accepts a CA certificate as a server's own, trusted or not.
        other if format!("{other:?}").contains("CaUsedAsEndEntity") => {
            return "the relay's TLS certificate is a CA certificate (basicConstraints CA:TRUE), \
                which is refused as a server's own; give the relay a server certificate \
                (CA:FALSE) and this board its issuer with SSL_CERT_FILE=/path/to/ca.pem"
                .to_string();
        }
        other => format!("was refused ({other:?})"),
    };
    format!("the relay's TLS certificate {problem}; {TRUST}")
}

/// How long one address of a relay's name may take to accept, before the next one is tried:
/// a relay that went away without a word (its packets dropped) must not use up the whole
/// connect timeout while its siblings under the same name are up.
const ADDRESS_TIMEOUT: Duration = Duration::from_secs(5);

async fn tcp(host: &str, port: u16, bind: Option<IpAddr>) -> Result<TcpStream, TransportError> {
    let addr = format!("{host}:{port}");
    let connect_err = |source| TransportError::Connect {
        addr: addr.clone(),
        source,
    };
    let mut addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(&addr)
        .await
        .map_err(connect_err)?
        .collect();
    // A name with several addresses (a cluster of relays under one DNS name): boards start
    // at a random one, so they spread over the relays instead of all taking the first.
    if addrs.len() > 1 {
        let start = rand::random::<usize>() % addrs.len();
        addrs.rotate_left(start);
    }
    if let Some(bind) = bind {
        // Only the addresses of the bound address's family can be reached from it.
        addrs.retain(|a| a.is_ipv4() == bind.is_ipv4());
    }
    let stream = connect_any(&addrs, bind).await.map_err(connect_err)?;
    // russh does not set TCP_NODELAY on streams it did not open; without it every small
    // packet (keystrokes, handshakes) waits for Nagle's timer.
    stream.set_nodelay(true).map_err(connect_err)?;
    Ok(stream)
}

/// Connects to `to`, from `bind` (any port) when given.
async fn connect_from(
    to: std::net::SocketAddr,
    bind: Option<IpAddr>,
) -> std::io::Result<TcpStream> {
    let Some(bind) = bind else {
        return TcpStream::connect(to).await;
    };
    let socket = if to.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket
        .bind(std::net::SocketAddr::new(bind, 0))
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding to {bind}: {e}")))?;
    socket.connect(to).await
}

/// Connects to the first of `addrs` that accepts within [`ADDRESS_TIMEOUT`], trying them in
/// order; the error is the last address's.
async fn connect_any(
    addrs: &[std::net::SocketAddr],
    bind: Option<IpAddr>,
) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address");
    for a in addrs {
        match tokio::time::timeout(ADDRESS_TIMEOUT, connect_from(*a, bind)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => {
                tracing::debug!("relay address {a}: {e}");
                last = std::io::Error::new(e.kind(), format!("{a}: {e}"));
            }
            Err(_) => {
                tracing::debug!("relay address {a}: no answer");
                last = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{a}: no answer within {}s", ADDRESS_TIMEOUT.as_secs()),
                );
            }
        }
    }
    Err(last)
}

/// The proxy for `host` from `HTTPS_PROXY`/`https_proxy`, unless `NO_PROXY` exempts it.
fn https_proxy_for(host: &str) -> Option<Url> {
    let raw = std::env::var("HTTPS_PROXY")
        .or_else(|_| std::env::var("https_proxy"))
        .ok()?;
    if raw.trim().is_empty() {
        return None;
    }
    let no_proxy = std::env::var("NO_PROXY")
        .or_else(|_| std::env::var("no_proxy"))
        .unwrap_or_default();
    let exempt = no_proxy
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .any(|pat| {
            pat == "*"
                || host == pat.trim_start_matches('.')
                || host.ends_with(&format!(".{}", pat.trim_start_matches('.')))
        });
    if exempt {
        return None;
    }
    let with_scheme = if raw.contains("://") {
        raw
    } else {
        format!("http://{raw}")
    };
    Url::parse(&with_scheme).ok()
}

/// Opens a tunnel to `host:port` through an HTTP proxy with `CONNECT`.
async fn connect_via_proxy(
    proxy: &Url,
    host: &str,
    port: u16,
    bind: Option<IpAddr>,
) -> Result<TcpStream, TransportError> {
    let perr = |reason: String| TransportError::Proxy {
        proxy: proxy.to_string(),
        reason,
    };
    let phost = proxy
        .host_str()
        .ok_or_else(|| perr("no host in proxy URL".into()))?;
    let pport = proxy.port_or_known_default().unwrap_or(3128);
    let mut stream = tcp(phost, pport, bind).await?;
    let mut request = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n");
    if !proxy.username().is_empty() {
        use base64::Engine;
        let user = proxy.username();
        let pass = proxy.password().unwrap_or_default();
        let cred = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        request.push_str(&format!("Proxy-Authorization: Basic {cred}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| perr(e.to_string()))?;
    // Read the response head byte-exactly: anything after it belongs to the tunnel.
    let mut reader = BufReader::with_capacity(1, &mut stream);
    let mut status = String::new();
    reader
        .read_line(&mut status)
        .await
        .map_err(|e| perr(e.to_string()))?;
    let code = status
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    if code != "200" {
        return Err(perr(format!(
            "CONNECT {host}:{port} answered {:?}",
            status.trim()
        )));
    }
    let mut header_bytes = 0usize;
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .await
            .map_err(|e| perr(e.to_string()))?;
        header_bytes += n;
        if n == 0 {
            return Err(perr("connection closed during CONNECT".into()));
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        if header_bytes > 64 * 1024 {
            return Err(perr("CONNECT response headers too long".into()));
        }
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_addresses_of_a_name_are_tried_one_by_one() -> Result<(), Box<dyn std::error::Error>>
    {
        // Two relays under one name: the first address refuses (nothing listens there), the
        // second accepts.
        let up = tokio::net::TcpListener::bind("127.0.0.2:0").await?;
        let port = up.local_addr()?.port();
        let down: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let stream = connect_any(&[down, up.local_addr()?], None).await?;
        assert_eq!(stream.peer_addr()?, up.local_addr()?);
        drop(up);
        let e = match connect_any(&[down], None).await {
            Ok(_) => return Err("connected to nothing".into()),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(&down.to_string()), "{e}");
        Ok(())
    }

    #[tokio::test]
    async fn the_link_leaves_from_the_bind_address() -> Result<(), Box<dyn std::error::Error>> {
        let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let to = relay.local_addr()?;
        let from: IpAddr = "127.0.0.3".parse()?;
        let _stream = connect_any(&[to], Some(from)).await?;
        let (_, peer) = relay.accept().await?;
        assert_eq!(peer.ip(), from);
        // An address this machine does not have is named in the error.
        let e = match connect_any(&[to], Some("192.0.2.1".parse()?)).await {
            Ok(_) => return Err("bound to an address the machine lacks".into()),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("binding to 192.0.2.1"), "{e}");
        Ok(())
    }

    #[test]
    fn parses_relay_urls() {
        assert_eq!(
            RelayUrl::parse("ssh://relay.example:2200").ok(),
            Some(RelayUrl::Ssh {
                host: "relay.example".into(),
                port: 2200
            })
        );
        assert_eq!(
            RelayUrl::parse("ssh://relay.example").ok(),
            Some(RelayUrl::Ssh {
                host: "relay.example".into(),
                port: DEFAULT_SSH_PORT
            })
        );
        assert!(matches!(
            RelayUrl::parse("wss://r.example/v1/link"),
            Ok(RelayUrl::WebSocket { .. })
        ));
        for bad in ["http://x/", "relay:2222", "ssh://", "ssh://h:1/path"] {
            assert!(RelayUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn certificate_errors_read_as_advice_not_enum_names() {
        use tokio_tungstenite::tungstenite::Error as WsError;
        let wrapped = |cert: rustls::CertificateError| {
            WsError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(cert),
            ))
        };
        let unknown = describe_ws_error(&wrapped(rustls::CertificateError::UnknownIssuer));
        assert!(
            unknown.contains("CA this board does not trust"),
            "{unknown}"
        );
        assert!(unknown.contains("SSL_CERT_FILE"), "{unknown}");
        assert!(!unknown.contains("UnknownIssuer"), "{unknown}");
        let expired = describe_ws_error(&wrapped(rustls::CertificateError::Expired));
        assert!(expired.contains("has expired"), "{expired}");
        // webpki's error behind rustls' OtherError, as a CA:TRUE server certificate gives.
        #[derive(Debug)]
        struct CaUsedAsEndEntity;
        impl std::fmt::Display for CaUsedAsEndEntity {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("CaUsedAsEndEntity")
            }
        }
        impl std::error::Error for CaUsedAsEndEntity {}
        let ca = describe_ws_error(&wrapped(rustls::CertificateError::Other(
            rustls::OtherError(std::sync::Arc::new(CaUsedAsEndEntity)),
        )));
        assert!(
            ca.contains("CA:TRUE") && ca.contains("SSL_CERT_FILE"),
            "{ca}"
        );
        assert!(!ca.contains("OtherError"), "{ca}");
        let plain = describe_ws_error(&WsError::ConnectionClosed);
        assert_eq!(plain, WsError::ConnectionClosed.to_string());
    }
}
