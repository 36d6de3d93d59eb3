//! Property tests of the WebSocket transport of the device link (`tether_protocol::ws`):
//! whatever raw bytes a peer sends, the byte stream ends or fails, promptly and without a
//! panic; binary messages read as their bytes in order, a text message is an error after the
//! bytes before it, pings are invisible; every write becomes one binary message.
//!
//! Each property runs [`CASES`] cases; set `TETHER_FUZZ_CASES` to run more, e.g.
//! `TETHER_FUZZ_CASES=20000 cargo test -p tether-protocol --test fuzz_ws`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::fail;
use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use tether_protocol::ws::{WsByteStream, link_ws_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Cases per property: 256. A case runs a WebSocket handshake-free exchange of a few messages
/// over an in-memory pipe, well under a millisecond in a debug build, so each property takes
/// about a second on a 2-core machine and the file stays well under the 30 s budget of a
/// bounded run.
const CASES: u32 = 256;

/// How long one exchange may take before it counts as hung.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(5);

fn runtime() -> Result<tokio::runtime::Runtime, TestCaseError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(fail)
}

/// What a peer sends on the link.
#[derive(Debug, Clone)]
enum Sent {
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Text(String),
}

/// A WebSocket peer (the agent's side, as a client) and the relay's byte stream over it,
/// joined by an in-memory pipe.
async fn link_pair() -> (
    WebSocketStream<tokio::io::DuplexStream>,
    WsByteStream<tokio::io::DuplexStream>,
) {
    let (theirs, ours) = tokio::io::duplex(1 << 16);
    let (peer, ws) = tokio::join!(
        WebSocketStream::from_raw_socket(theirs, Role::Client, Some(link_ws_config())),
        WebSocketStream::from_raw_socket(ours, Role::Server, Some(link_ws_config())),
    );
    (peer, WsByteStream::new(ws))
}

fn sent() -> impl Strategy<Value = Sent> {
    prop_oneof![
        6 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Sent::Binary),
        1 => prop::collection::vec(any::<u8>(), 0..20).prop_map(Sent::Ping),
        1 => ".{0,10}".prop_map(Sent::Text),
    ]
}

proptest! {
    #![proptest_config(common::config(CASES))]

    /// Raw bytes that are not (or not only) WebSocket frames end the stream or fail it, and
    /// promptly: the reader never panics and never waits for what will not come.
    #[test]
    fn raw_bytes_end_or_fail_promptly(
        raw in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            // A valid masked binary frame header with a length that may lie, then noise.
            (0u8..=127, prop::collection::vec(any::<u8>(), 0..150)).prop_map(|(len, tail)| {
                let mut b = vec![0x82, 0x80 | len, 1, 2, 3, 4];
                b.extend(tail);
                b
            }),
        ]
    ) {
        let rt = runtime()?;
        let outcome = rt.block_on(async {
            let (mut peer, ours) = tokio::io::duplex(4096);
            let ws = WebSocketStream::from_raw_socket(ours, Role::Server, Some(link_ws_config())).await;
            let mut stream = WsByteStream::new(ws);
            let writer = async move {
                let _ = peer.write_all(&raw).await;
                let _ = peer.shutdown().await;
                // Keep reading whatever the server answers until it is done.
                let mut sink = Vec::new();
                let _ = peer.read_to_end(&mut sink).await;
            };
            let reader = async {
                let mut got = Vec::new();
                let result = stream.read_to_end(&mut got).await;
                drop(stream);
                (result, got)
            };
            tokio::time::timeout(EXCHANGE_LIMIT, async { tokio::join!(writer, reader).1 }).await
        });
        let (_result, got) = outcome.map_err(|_| fail("the reader hung"))?;
        prop_assert!(got.len() <= 200);
    }

    /// Binary messages read as their bytes in order, pings are invisible, and a text message
    /// is an error after the bytes that came before it.
    #[test]
    fn messages_read_as_their_bytes(messages in prop::collection::vec(sent(), 0..8)) {
        let rt = runtime()?;
        let sent_messages = messages.clone();
        let outcome = rt.block_on(async move {
            let (mut peer, mut stream) = link_pair().await;
            let writer = async move {
                for m in sent_messages {
                    let msg = match m {
                        Sent::Binary(b) => Message::Binary(Bytes::from(b)),
                        Sent::Ping(b) => Message::Ping(Bytes::from(b)),
                        Sent::Text(t) => Message::Text(t.into()),
                    };
                    if peer.send(msg).await.is_err() {
                        return;
                    }
                }
                let _ = peer.close(None).await;
                while let Some(Ok(_)) = peer.next().await {}
            };
            let reader = async move {
                let mut got = Vec::new();
                let result = stream.read_to_end(&mut got).await;
                // Dropping the stream ends the pipe, which ends the peer's wait for a reply to
                // its close.
                drop(stream);
                (result.map(|_| ()), got)
            };
            tokio::time::timeout(EXCHANGE_LIMIT, async { tokio::join!(writer, reader).1 }).await
        });
        let (result, got) = outcome.map_err(|_| fail("the exchange hung"))?;
        let text_at = messages.iter().position(|m| matches!(m, Sent::Text(_)));
        let expected: Vec<u8> = messages[..text_at.unwrap_or(messages.len())]
            .iter()
            .flat_map(|m| match m {
                Sent::Binary(b) => b.clone(),
                _ => Vec::new(),
            })
            .collect();
        prop_assert_eq!(got, expected);
        match (text_at, result) {
            (None, Ok(())) => {}
            (Some(_), Err(e)) => prop_assert_eq!(e.kind(), std::io::ErrorKind::InvalidData),
            (text_at, result) => prop_assert!(false, "text at {:?} but {:?}", text_at, result),
        }
    }

    /// Every write becomes exactly one binary message with its bytes.
    #[test]
    fn writes_are_binary_messages(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..8)) {
        let rt = runtime()?;
        let to_send = chunks.clone();
        let outcome = rt.block_on(async move {
            let (mut peer, mut stream) = link_pair().await;
            let writer = async move {
                for c in &to_send {
                    stream.write_all(c).await?;
                }
                stream.flush().await?;
                stream.shutdown().await?;
                std::io::Result::Ok(())
            };
            let reader = async {
                let mut got = Vec::new();
                while let Some(Ok(m)) = peer.next().await {
                    match m {
                        Message::Binary(b) => got.push(b.to_vec()),
                        Message::Close(_) => break,
                        other => got.push(format!("unexpected {other:?}").into_bytes()),
                    }
                }
                got
            };
            tokio::time::timeout(EXCHANGE_LIMIT, async { tokio::join!(writer, reader) }).await
        });
        let (written, got) = outcome.map_err(|_| fail("the exchange hung"))?;
        written.map_err(fail)?;
        prop_assert_eq!(got, chunks);
    }
}
