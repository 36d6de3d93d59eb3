//! Kernel TCP keepalive on a link's socket: how both ends notice a dead path without waking.
//!
//! An idle link costs each end one wake-up per SSH keepalive round trip, and at thousands of
//! links those wake-ups are most of an idle relay's CPU. The kernel's own keepalive probes a
//! silent connection without waking either process, so the SSH keepalive can be slow (it only
//! has to show that the peer *process* still answers, and keep HTTP proxies from timing the
//! link out) while a dead network path or a powered-off board is still noticed quickly.

use std::os::fd::AsFd;
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};

/// Unanswered probes after which the kernel drops the connection.
pub const PROBES: u32 = 3;

/// Arms the kernel's keepalive on `socket`: after `idle` without anything received, a probe
/// every `idle / 6` (at least 1 s), and the connection reset after [`PROBES`] unanswered
/// ones, so a dead path is noticed within `idle * 1.5`. Data sent and not acknowledged for
/// that long also resets it (`TCP_USER_TIMEOUT`), which keepalive probes alone would not
/// catch while data is in flight. A zero `idle` leaves the socket as it was.
pub fn arm(socket: &impl AsFd, idle: Duration) -> nix::Result<()> {
    if idle.is_zero() {
        return Ok(());
    }
    let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX).max(1);
    let interval = (idle / 6).max(Duration::from_secs(1));
    setsockopt(socket, sockopt::KeepAlive, &true)?;
    setsockopt(socket, sockopt::TcpKeepIdle, &secs(idle))?;
    setsockopt(socket, sockopt::TcpKeepInterval, &secs(interval))?;
    setsockopt(socket, sockopt::TcpKeepCount, &PROBES)?;
    let deadline = idle + interval * PROBES;
    let ms = u32::try_from(deadline.as_millis()).unwrap_or(u32::MAX);
    setsockopt(socket, sockopt::TcpUserTimeout, &ms)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::getsockopt;

    #[test]
    fn arms_probes_and_user_timeout() -> Result<(), Box<dyn std::error::Error>> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let stream = std::net::TcpStream::connect(listener.local_addr()?)?;
        arm(&stream, Duration::from_secs(60))?;
        assert!(getsockopt(&stream, sockopt::KeepAlive)?);
        assert_eq!(getsockopt(&stream, sockopt::TcpKeepIdle)?, 60);
        assert_eq!(getsockopt(&stream, sockopt::TcpKeepInterval)?, 10);
        assert_eq!(getsockopt(&stream, sockopt::TcpKeepCount)?, PROBES);
        assert_eq!(getsockopt(&stream, sockopt::TcpUserTimeout)?, 90_000);

        let untouched = std::net::TcpStream::connect(listener.local_addr()?)?;
        arm(&untouched, Duration::ZERO)?;
        assert!(!getsockopt(&untouched, sockopt::KeepAlive)?);
        Ok(())
    }
}
