//! Length-prefixed, versioned JSON frames: the framing of the telemetry and control channels.
//!
//! A frame is a 4-byte big-endian length, then that many bytes: one version byte and a JSON
//! body. The length covers version and body and is bounded by [`MAX_FRAME`], so a corrupt or
//! hostile length can neither allocate without bound nor desynchronise the reader silently.

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Version byte of every frame this code writes (and the only one it reads).
pub const FRAME_VERSION: u8 = 1;

/// Largest frame accepted, version byte and body included.
pub const MAX_FRAME: usize = 8 * 1024 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The stream failed.
    #[error("channel: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix is zero or above [`MAX_FRAME`].
    #[error("frame length {0} out of range (1..={MAX_FRAME})")]
    Length(usize),
    /// The version byte is not one this code speaks.
    #[error("frame version {0} not supported (expected {FRAME_VERSION})")]
    Version(u8),
    /// The body is not a valid frame.
    #[error("malformed frame: {0}")]
    Body(#[from] serde_json::Error),
}

/// Encodes a frame.
pub fn encode<T: Serialize>(frame: &T) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(frame)?;
    let len = body.len() + 1;
    if len > MAX_FRAME {
        return Err(FrameError::Length(len));
    }
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(FRAME_VERSION);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Writes one frame and flushes.
pub async fn write<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    frame: &T,
) -> Result<(), FrameError> {
    w.write_all(&encode(frame)?).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` at a clean end of stream between frames.
pub async fn read<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    // Only an end before the first byte of the length is a clean end: a stream that stops
    // inside the length was cut in the middle of a frame.
    let mut got = 0;
    while got < len.len() {
        match r.read(&mut len[got..]).await {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(FrameError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("stream ended after {got} of the 4 bytes of a frame length"),
                )));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(FrameError::Length(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    if buf[0] != FRAME_VERSION {
        return Err(FrameError::Version(buf[0]));
    }
    Ok(Some(serde_json::from_slice(&buf[1..])?))
}
