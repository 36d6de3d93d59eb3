//! Loopback networking for tests: free ports, waiting for a port to accept connections, and
//! a bare HTTP/1.0 GET to a component's port.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};

use super::listening::is_listening;
use super::process::wait_until;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until something listens for TCP connections on `port`.
pub fn wait_for_port(port: u16) -> Result<()> {
    wait_until(Duration::from_secs(30), &format!("port {port}"), || {
        is_listening(port)
    })
}

/// The body of `GET /` on 127.0.0.1:`port` (HTTP/1.0, trimmed), as an application serves it.
pub fn http_body(port: u16) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default())
}

/// Waits (20 s at most) until `GET /` on `port` answers `expect`.
pub fn wait_http(port: u16, expect: &str) -> Result<()> {
    let mut last = String::new();
    wait_until(
        Duration::from_secs(20),
        &format!("HTTP says {expect}"),
        || {
            last = http_body(port).unwrap_or_default();
            last == expect
        },
    )
    .with_context(|| format!("last answer {last:?}"))
}

/// A TCP echo server on a free loopback port (up to 16 connections); returns the port.
pub fn echo_server() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(port)
}
