//! Device-local TCP targets the relay may reach through the link, and the policy allowing them.
//!
//! Engineers' `-L` forwards and ProxyJump (`-J`) connections arrive as `forwarded-tcpip`
//! channels naming a device-local `host:port`. Only targets listed in `forward.allow` are
//! dialled; everything else is refused before any connection is made.

use tokio::net::TcpStream;

/// Copy buffer per direction of a forward: one read takes a whole 32 KiB SSH data packet, so
/// each goes out as one write and one packet back; tokio's default 8 KiB made four.
pub const COPY_BUFFER: usize = 32 * 1024;

/// One allowed target: a host and a port, or any port of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: Option<u16>,
}

/// The set of device-local targets engineers may reach.
#[derive(Debug, Clone, Default)]
pub struct ForwardPolicy {
    allowed: Vec<Target>,
}

impl ForwardPolicy {
    /// Builds the policy from `forward.allow` entries (`host:port` or `host:*`). Entries that do
    /// not parse are skipped with a warning; the configuration loader already rejects them.
    pub fn new(allow: &[String]) -> Self {
        let allowed = allow
            .iter()
            .filter_map(|entry| {
                let parsed = entry.rsplit_once(':').and_then(|(host, port)| {
                    let host = host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string();
                    match port {
                        "*" => Some(Target { host, port: None }),
                        p => p.parse().ok().map(|p| Target {
                            host,
                            port: Some(p),
                        }),
                    }
                });
                if parsed.is_none() {
                    tracing::warn!("ignoring forward.allow entry {entry:?}: not host:port");
                }
                parsed
            })
            .collect();
        Self { allowed }
    }

    /// Whether `host:port` may be dialled.
    pub fn allows(&self, host: &str, port: u32) -> bool {
        let Ok(port) = u16::try_from(port) else {
            return false;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allowed
            .iter()
            .any(|t| t.host.eq_ignore_ascii_case(host) && t.port.is_none_or(|p| p == port))
    }
}

/// Dials an allowed device-local target.
pub async fn connect(host: &str, port: u32) -> std::io::Result<TcpStream> {
    let port = u16::try_from(port)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "port out of range"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_targets_are_allowed() {
        let p = ForwardPolicy::new(&[
            "127.0.0.1:22".into(),
            "localhost:*".into(),
            "[::1]:80".into(),
        ]);
        assert!(p.allows("127.0.0.1", 22));
        assert!(!p.allows("127.0.0.1", 23));
        assert!(p.allows("localhost", 8080));
        assert!(p.allows("::1", 80));
        assert!(!p.allows("10.0.0.1", 22));
        assert!(!p.allows("127.0.0.1", 70000));
        assert!(!ForwardPolicy::default().allows("127.0.0.1", 22));
    }
}
