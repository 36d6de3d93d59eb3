//! Resumable downloads of update bundles over `https://` (and `http://` on trusted networks):
//! HTTP/1.1 GET with `Range: bytes=N-`, retried from where the last attempt stopped.
//!
//! The bundle's signature and image hashes are checked when it is installed, so the download
//! itself needs no digest; it only has to survive links that drop. Trust for TLS comes from
//! `SSL_CERT_FILE`, else the system bundle (`/etc/ssl/certs/ca-certificates.crt`), as for the
//! agent's `wss://` link. Responses must carry a `Content-Length` (static file servers and
//! object stores do); chunked responses are refused by name.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

/// Attempts before a download gives up.
const ATTEMPTS: u32 = 8;

/// Time allowed for connecting and for each read.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a download failed.
#[derive(Debug, Error)]
pub enum DownloadError {
    /// The URL is not usable.
    #[error("{url}: {message}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The server answered with something other than the file.
    #[error("{url}: {message}")]
    Http {
        /// The URL.
        url: String,
        /// What it answered.
        message: String,
    },
    /// Every attempt failed.
    #[error("{url}: gave up after {attempts} attempts ({bytes} bytes received): {last}")]
    GaveUp {
        /// The URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// Bytes on disk.
        bytes: u64,
        /// The last error.
        last: String,
    },
    /// The local file failed.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Downloads `url` into `dest` (resuming `dest.partial` if an earlier run left one);
/// `progress` gets (bytes so far, total when known).
pub fn fetch(
    url: &str,
    dest: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<PathBuf, DownloadError> {
    let parsed = url::Url::parse(url).map_err(|e| DownloadError::Url {
        url: url.to_string(),
        message: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(DownloadError::Url {
            url: url.to_string(),
            message: "only https:// (or http://) URLs are downloaded".into(),
        });
    }
    let partial = dest.with_extension("partial");
    let file_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DownloadError::File { path, source }
    };
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        match get_range(&parsed, have) {
            Ok((mut body, start, total)) => {
                let mut out = std::fs::OpenOptions::new()
                    .create(true)
                    .append(start > 0)
                    .write(true)
                    .truncate(start == 0)
                    .open(&partial)
                    .map_err(file_err(&partial))?;
                let mut got = start;
                let mut buf = vec![0u8; 256 * 1024];
                let result = loop {
                    match body.read(&mut buf) {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            out.write_all(&buf[..n]).map_err(file_err(&partial))?;
                            got += n as u64;
                            progress(got, total);
                        }
                        Err(e) => break Err(e),
                    }
                };
                out.sync_all().map_err(file_err(&partial))?;
                match (result, total) {
                    (Ok(()), Some(t)) if got == t => {
                        std::fs::rename(&partial, dest).map_err(file_err(dest))?;
                        return Ok(dest.to_path_buf());
                    }
                    (Ok(()), Some(t)) => last = format!("connection ended at byte {got} of {t}"),
                    (Ok(()), None) => last = "no Content-Length".into(),
                    (Err(e), _) => last = format!("reading at byte {got}: {e}"),
                }
            }
            Err(Fatal(e)) => return Err(e),
            Err(Retry(e)) => last = e,
        }
        tracing::warn!("downloading {url}: {last}; attempt {attempt} of {ATTEMPTS}");
        std::thread::sleep(Duration::from_millis(250 * u64::from(attempt)));
    }
    Err(DownloadError::GaveUp {
        url: url.to_string(),
        attempts: ATTEMPTS,
        bytes: std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0),
        last,
    })
}

/// Errors of one attempt: worth retrying, or not.
enum AttemptError {
    Retry(String),
    Fatal(DownloadError),
}
use AttemptError::{Fatal, Retry};

/// One response: the body, the byte it starts at, and the file's total size when known.
type Response = (Box<dyn Read>, u64, Option<u64>);

/// The body reader of one GET from byte `from`, the byte it really starts at, and the total.
fn get_range(url: &url::Url, from: u64) -> Result<Response, AttemptError> {
    let host = url
        .host_str()
        .ok_or_else(|| {
            Fatal(DownloadError::Url {
                url: url.to_string(),
                message: "no host".into(),
            })
        })?
        .to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .map_err(|e| Retry(format!("resolving {host}: {e}")))?
        .next()
        .ok_or_else(|| Retry(format!("{host} has no address")))?;
    let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| Retry(format!("connecting to {host}:{port}: {e}")))?;
    let _ = tcp.set_read_timeout(Some(IO_TIMEOUT));
    let _ = tcp.set_write_timeout(Some(IO_TIMEOUT));
    let mut stream: Box<dyn ReadWrite> = if url.scheme() == "https" {
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| {
            Fatal(DownloadError::Url {
                url: url.to_string(),
                message: format!("host name: {e}"),
            })
        })?;
        let conn = rustls::ClientConnection::new(Arc::new(tls_config().map_err(Fatal)?), name)
            .map_err(|e| Retry(format!("TLS: {e}")))?;
        Box::new(rustls::StreamOwned::new(conn, tcp))
    } else {
        Box::new(tcp)
    };
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nRange: bytes={from}-\r\nUser-Agent: tether-agent/{}\r\nConnection: close\r\n\r\n",
        crate::VERSION
    );
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.flush())
        .map_err(|e| Retry(format!("sending the request: {e}")))?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .map_err(|e| Retry(format!("reading the response: {e}")))?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Retry(format!("not an HTTP response: {:?}", status_line.trim())))?;
    let mut length = None;
    let mut range_start = None;
    let mut range_total = None;
    loop {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| Retry(format!("reading the headers: {e}")))?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<u64>().ok(),
            "transfer-encoding" if !value.eq_ignore_ascii_case("identity") => {
                return Err(Fatal(DownloadError::Http {
                    url: url.to_string(),
                    message: format!(
                        "Transfer-Encoding {value} is not supported; serve the file with a Content-Length"
                    ),
                }));
            }
            "content-range" => {
                // bytes START-END/TOTAL
                let spec = value.trim_start_matches("bytes").trim();
                if let Some((range, total)) = spec.split_once('/') {
                    range_start = range.split('-').next().and_then(|s| s.trim().parse().ok());
                    range_total = total.trim().parse::<u64>().ok();
                }
            }
            _ => {}
        }
    }
    let (start, total) = match status {
        200 => (0, length),
        206 => (range_start.unwrap_or(from), range_total),
        416 if from > 0 => {
            // What we have is already everything (or more): start over.
            return Err(Retry("range not satisfiable; starting over".into()));
        }
        500..=599 => return Err(Retry(format!("server error {status}"))),
        other => {
            return Err(Fatal(DownloadError::Http {
                url: url.to_string(),
                message: format!("HTTP status {other}"),
            }));
        }
    };
    if start != 0 && start != from {
        return Err(Retry(format!("asked for byte {from}, got {start}")));
    }
    let body: Box<dyn Read> = match length {
        Some(n) => Box::new(reader.take(n)),
        None => Box::new(reader),
    };
    Ok((body, start, total))
}

/// A stream that reads and writes (TCP or TLS over TCP).
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// TLS trust: `SSL_CERT_FILE`, else the system bundle.
fn tls_config() -> Result<rustls::ClientConfig, DownloadError> {
    let path = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    let pem = std::fs::read(&path).map_err(|source| DownloadError::File {
        path: path.clone(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]).flatten() {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(DownloadError::File {
            path,
            source: std::io::Error::other("no certificates in it"),
        });
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_are_fetched() {
        let dir = std::env::temp_dir().join("tether-download-test");
        let e = fetch("ftp://x/y", &dir, &mut |_, _| {})
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("only https://"), "{e}");
    }
}
