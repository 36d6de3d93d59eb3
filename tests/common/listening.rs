//! Whether a TCP port has a listener, read from the kernel instead of probed.

/// Whether a socket of this network namespace listens on TCP `port` (any address).
///
/// Read from the kernel's socket tables rather than probed with a connect: a probe of a port
/// nobody has bound yet can pick that same port as its own ephemeral source and connect to
/// itself, which both reports the port open and holds it so that the real listener's bind
/// fails.
pub fn is_listening(port: u16) -> bool {
    const LISTEN: &str = "0A";
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let mut fields = line.split_whitespace().skip(1);
                let local = fields.next().unwrap_or_default();
                let state = fields.nth(1).unwrap_or_default();
                state == LISTEN
                    && local
                        .rsplit_once(':')
                        .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok())
                        == Some(port)
            })
        })
    })
}
