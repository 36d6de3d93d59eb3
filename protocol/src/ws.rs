//! The SSH byte stream carried in WebSocket binary messages.
//!
//! [`WsByteStream`] turns a WebSocket (client or server side) into an `AsyncRead + AsyncWrite`
//! byte stream that russh can run on. One write becomes one binary message; reads hand out the
//! bytes of binary messages in order. Text messages are a protocol error; pings are answered by
//! tungstenite itself; a close message or the end of the stream is end-of-file.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Largest WebSocket message accepted from the peer. SSH packets are at most 256 KiB, and russh
/// writes one packet (or a few) per write, so 4 MiB leaves ample room while bounding memory.
pub const MAX_WS_MESSAGE: usize = 4 * 1024 * 1024;

/// WebSocket settings for the link. The write buffer must be zero: russh writes its version
/// line without flushing, and a buffering WebSocket would hold it back forever.
pub fn link_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .write_buffer_size(0)
        .max_message_size(Some(MAX_WS_MESSAGE))
        .max_frame_size(Some(MAX_WS_MESSAGE))
}

/// A WebSocket seen as a byte stream.
pub struct WsByteStream<S> {
    /// The underlying WebSocket.
    ws: WebSocketStream<S>,
    /// Unread rest of the last binary message.
    pending: Bytes,
    /// Set once the peer closed; further reads return end-of-file.
    eof: bool,
}

impl<S> WsByteStream<S> {
    /// Wraps an established WebSocket.
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            pending: Bytes::new(),
            eof: false,
        }
    }
}

fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed")
        }
        other => io::Error::other(other),
    }
}

impl<S> AsyncRead for WsByteStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => self.eof = true,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message on the binary link websocket",
                    )));
                }
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => self.eof = true,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S> AsyncWrite for WsByteStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(to_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;

    #[tokio::test]
    async fn bytes_cross_in_both_directions() -> io::Result<()> {
        let (a, b) = tokio::io::duplex(1024);
        let client = WebSocketStream::from_raw_socket(a, Role::Client, Some(link_ws_config()));
        let server = WebSocketStream::from_raw_socket(b, Role::Server, Some(link_ws_config()));
        let (client, server) = tokio::join!(client, server);
        let mut client = WsByteStream::new(client);
        let mut server = WsByteStream::new(server);
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await?;
            client.flush().await?;
            client.shutdown().await?;
            io::Result::Ok(())
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await?;
        writer.await.map_err(io::Error::other)??;
        assert_eq!(got, payload);
        Ok(())
    }
}
