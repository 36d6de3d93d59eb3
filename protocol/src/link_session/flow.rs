//! Flow control of a link session: each side drains the channel as soon as the link delivers
//! it ([`Inbox`]), so that no session can hold up the link's other channels, and returns
//! credit for what it passed on; the sender waits for credit ([`Credit`]) before it sends data.
//! What one side holds for a session is so bounded by [`INITIAL_CREDIT`] bytes of data, plus
//! a bounded number of other messages.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use russh::{Channel, ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore};

use super::{CONTROL_EXT, ControlReader};

/// Bytes of data (and stderr) a side may send that the other has not passed on yet.
pub const INITIAL_CREDIT: usize = 1024 * 1024;

/// Credit is returned once this much was passed on, so that a credit frame travels once per
/// 64 KiB of data, not once per packet.
pub const CREDIT_BATCH: usize = 64 * 1024;

/// Largest piece of data sent at once; credit is taken per piece.
pub const MAX_PIECE: usize = 32 * 1024;

/// Messages other than data (window changes, signals, …) held at most; more are dropped.
const MAX_OTHER_HELD: usize = 256;

/// What this side may still send.
#[derive(Clone, Debug)]
pub struct Credit(Arc<Semaphore>);

impl Default for Credit {
    fn default() -> Self {
        Self(Arc::new(Semaphore::new(INITIAL_CREDIT)))
    }
}

impl Credit {
    /// The credit a session starts with.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits until `bytes` may be sent and takes them; `false` once the session is over.
    /// Callers send pieces of at most [`MAX_PIECE`]; more than the whole credit could never be
    /// granted, so a larger request takes the whole credit instead of waiting forever.
    pub async fn take(&self, bytes: usize) -> bool {
        let n = u32::try_from(bytes.min(INITIAL_CREDIT)).unwrap_or(INITIAL_CREDIT as u32);
        match self.0.acquire_many(n).await {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// The peer passed on `bytes` more.
    pub fn give(&self, bytes: u64) {
        // A peer that returns more than it ever got cannot overflow the semaphore.
        let room = Semaphore::MAX_PERMITS.saturating_sub(self.0.available_permits());
        let n = usize::try_from(bytes).unwrap_or(usize::MAX).min(room);
        self.0.add_permits(n);
    }

    /// Ends the session: waiting senders give up.
    pub fn close(&self) {
        self.0.close();
    }
}

/// Sends the control frames of one side of a session, one whole frame at a time: frames
/// from different tasks must not interleave on the control stream.
pub struct ControlTx<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> {
    writer: Arc<ChannelWriteHalf<S>>,
    lock: tokio::sync::Mutex<()>,
}

impl<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> ControlTx<S> {
    /// Control frames on `writer`'s channel.
    pub fn new(writer: Arc<ChannelWriteHalf<S>>) -> Self {
        Self {
            writer,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Sends one encoded frame; `false` when the channel is gone.
    pub async fn send(&self, frame: Vec<u8>) -> bool {
        let _whole = self.lock.lock().await;
        self.writer
            .extended_data_bytes(CONTROL_EXT, frame)
            .await
            .is_ok()
    }
}

/// One side's end of a link session channel, set up the same way on both sides: the writer,
/// its control frames, the credit for sending, and the drained inbox.
pub struct SessionEnds<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> {
    /// Data, stderr, EOF and close towards the peer.
    pub writer: Arc<ChannelWriteHalf<S>>,
    /// Control frames towards the peer.
    pub control: Arc<ControlTx<S>>,
    /// What data this side may still send.
    pub credit: Credit,
    /// What the peer sent.
    pub inbox: Inbox<S>,
}

impl<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> SessionEnds<S> {
    /// Splits `channel` and starts draining it. `on_control` turns each control frame from the
    /// peer (`T`) into the message to hold, if any, and may give this side credit;
    /// `encode_credit` writes the credit this side returns.
    pub fn open<T, F>(
        channel: Channel<S>,
        mut on_control: F,
        encode_credit: fn(u64) -> Option<Vec<u8>>,
    ) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        F: FnMut(T, &Credit) -> Option<ChannelMsg> + Send + 'static,
    {
        let (reader, writer) = channel.split();
        let writer = Arc::new(writer);
        let control = Arc::new(ControlTx::new(writer.clone()));
        let credit = Credit::new();
        let given = credit.clone();
        let inbox = Inbox::start::<T, _>(
            reader,
            move |frame| on_control(frame, &given),
            control.clone(),
            encode_credit,
        );
        Self {
            writer,
            control,
            credit,
            inbox,
        }
    }
}

/// The frame handler of a channel whose only control frames are credit (a credited forward):
/// credit is given, anything else ignored.
pub fn credit_only<T: super::CreditFrame>(frame: T, credit: &Credit) -> Option<ChannelMsg> {
    if let Some(bytes) = frame.credit() {
        credit.give(bytes);
    }
    None
}

/// Carries a byte stream between `local` and the link channel of `ends` (a credited forward)
/// until both directions ended or the channel closed: data goes to the peer only against
/// credit, data from it is drained at once. Returns the bytes sent to the peer and the bytes
/// received from it.
pub async fn bridge<S, L>(ends: SessionEnds<S>, local: L) -> (u64, u64)
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
    L: AsyncRead + AsyncWrite + Unpin + Send,
{
    let SessionEnds {
        writer,
        credit,
        mut inbox,
        ..
    } = ends;
    let (mut from_local, mut to_local) = tokio::io::split(local);
    let mut sent = 0u64;
    let up = async {
        let mut buf = vec![0u8; MAX_PIECE];
        loop {
            let n = match from_local.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !credit.take(n).await
                || writer
                    .data_bytes(Bytes::copy_from_slice(&buf[..n]))
                    .await
                    .is_err()
            {
                break;
            }
            sent += n as u64;
        }
        let _ = writer.eof().await;
    };
    // Ends with whether the channel is gone (as opposed to only half-closed by an EOF).
    let down = async {
        let mut total = 0u64;
        let gone = loop {
            match inbox.next().await {
                Some(ChannelMsg::Data { data }) => {
                    if to_local.write_all(&data).await.is_err() {
                        break true;
                    }
                    total += data.len() as u64;
                }
                Some(ChannelMsg::Eof) => break false,
                Some(ChannelMsg::Close) | None => break true,
                Some(_) => {}
            }
        };
        let _ = to_local.shutdown().await;
        (total, gone)
    };
    let mut up = Box::pin(up);
    tokio::pin!(down);
    let (mut up_done, mut received) = (false, None);
    while !up_done || received.is_none() {
        tokio::select! {
            () = &mut up, if !up_done => up_done = true,
            (n, gone) = &mut down, if received.is_none() => {
                received = Some(n);
                if gone {
                    break;
                }
            }
        }
    }
    drop(up);
    let _ = writer.close().await;
    credit.close();
    (sent, received.unwrap_or(0))
}

/// What the draining task has read and the session has not taken yet.
#[derive(Default)]
struct Held {
    msgs: VecDeque<ChannelMsg>,
    /// Data and stderr bytes held.
    bytes: usize,
    /// Other messages held.
    others: usize,
    /// The channel ended (or the peer broke the rules); nothing more comes.
    ended: bool,
}

impl Held {
    /// Holds `msg`; `false` if the peer sent more data than it was credited.
    fn hold(&mut self, msg: ChannelMsg) -> bool {
        match msg {
            ChannelMsg::Data { data } => self.hold_data(None, data),
            ChannelMsg::ExtendedData { data, ext } => self.hold_data(Some(ext), data),
            ChannelMsg::WindowChange { .. }
                if matches!(self.msgs.back(), Some(ChannelMsg::WindowChange { .. })) =>
            {
                // Only the latest size matters.
                if let Some(last) = self.msgs.back_mut() {
                    *last = msg;
                }
                true
            }
            ChannelMsg::Eof | ChannelMsg::Close => {
                self.msgs.push_back(msg);
                true
            }
            other => {
                if self.others < MAX_OTHER_HELD {
                    self.others += 1;
                    self.msgs.push_back(other);
                }
                true
            }
        }
    }

    fn hold_data(&mut self, ext: Option<u32>, data: Bytes) -> bool {
        self.bytes += data.len();
        if self.bytes > INITIAL_CREDIT {
            return false;
        }
        // Small pieces are joined, so that a peer writing a byte at a time holds bytes, not
        // a message per byte.
        let joined = match self.msgs.back_mut() {
            Some(ChannelMsg::Data { data: last }) if ext.is_none() => Some(last),
            Some(ChannelMsg::ExtendedData { data: last, ext: e }) if ext == Some(*e) => Some(last),
            _ => None,
        };
        match joined {
            Some(last) if last.len() + data.len() <= MAX_PIECE => {
                let mut both = BytesMut::with_capacity(last.len() + data.len());
                both.extend_from_slice(last);
                both.extend_from_slice(&data);
                *last = both.freeze();
            }
            _ => self.msgs.push_back(match ext {
                None => ChannelMsg::Data { data },
                Some(ext) => ChannelMsg::ExtendedData { data, ext },
            }),
        }
        true
    }
}

struct Shared {
    held: Mutex<Held>,
    ready: Notify,
}

impl Shared {
    fn held(&self) -> MutexGuard<'_, Held> {
        // Every update leaves `Held` consistent, so a poisoned lock is still usable.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn end(&self) {
        self.held().ended = true;
        self.ready.notify_one();
    }
}

/// One side's reading of a session channel: drained by a task of its own from the moment it
/// is created, the control frames decoded (`T` is what the peer sends), and credit returned
/// for data as it is taken.
pub struct Inbox<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    control: Arc<ControlTx<S>>,
    encode_credit: fn(u64) -> Option<Vec<u8>>,
    unreturned: usize,
}

impl<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> Inbox<S> {
    /// Starts draining `reader`. Each control frame goes to `on_control`, which acts on it
    /// (credit for this side's sending, say) and returns the message to hold for the session,
    /// if any. Credit for taken data goes back on `control` as `encode_credit` writes it.
    pub fn start<T, F>(
        mut reader: ChannelReadHalf,
        mut on_control: F,
        control: Arc<ControlTx<S>>,
        encode_credit: fn(u64) -> Option<Vec<u8>>,
    ) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        F: FnMut(T) -> Option<ChannelMsg> + Send + 'static,
    {
        let shared = Arc::new(Shared {
            held: Mutex::new(Held::default()),
            ready: Notify::new(),
        });
        let drained = shared.clone();
        let task = tokio::spawn(async move {
            let mut frames = ControlReader::new();
            while let Some(msg) = reader.wait().await {
                let mut incoming = Vec::new();
                match msg {
                    ChannelMsg::ExtendedData { ext, data } if ext == CONTROL_EXT => {
                        match frames.push::<T>(&data) {
                            Ok(decoded) => {
                                incoming.extend(decoded.into_iter().filter_map(&mut on_control))
                            }
                            Err(e) => {
                                tracing::warn!("link session: bad control frame: {e}");
                                break;
                            }
                        }
                    }
                    ChannelMsg::WindowAdjusted { .. } => continue,
                    other => incoming.push(other),
                }
                let kept = {
                    let mut held = drained.held();
                    incoming.into_iter().all(|m| held.hold(m))
                };
                if !kept {
                    tracing::warn!(
                        "link session: the peer sent more than its {INITIAL_CREDIT} bytes of credit"
                    );
                    break;
                }
                drained.ready.notify_one();
            }
            drained.end();
        });
        Self {
            shared,
            task,
            control,
            encode_credit,
            unreturned: 0,
        }
    }

    /// The next message, in the order the peer sent it; `None` once the channel ended.
    pub async fn next(&mut self) -> Option<ChannelMsg> {
        loop {
            let taken = {
                let mut held = self.shared.held();
                match held.msgs.pop_front() {
                    Some(msg) => {
                        match &msg {
                            ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => {
                                held.bytes -= data.len();
                                self.unreturned += data.len();
                            }
                            ChannelMsg::Eof | ChannelMsg::Close => {}
                            _ => held.others -= 1,
                        }
                        Some(msg)
                    }
                    None if held.ended => return None,
                    None => None,
                }
            };
            if let Some(msg) = taken {
                if self.unreturned >= CREDIT_BATCH {
                    if let Some(frame) = (self.encode_credit)(self.unreturned as u64) {
                        self.control.send(frame).await;
                    }
                    self.unreturned = 0;
                }
                return Some(msg);
            }
            self.shared.ready.notified().await;
        }
    }
}

impl<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> Drop for Inbox<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> ChannelMsg {
        ChannelMsg::Data {
            data: Bytes::from(vec![b'x'; n]),
        }
    }

    #[test]
    fn tiny_pieces_are_held_as_bytes_not_as_messages() {
        let mut held = Held::default();
        for _ in 0..100_000 {
            assert!(held.hold(data(1)));
        }
        assert_eq!(held.bytes, 100_000);
        assert!(
            held.msgs.len() <= 100_000 / MAX_PIECE + 1,
            "{}",
            held.msgs.len()
        );
    }

    #[test]
    fn more_than_the_credit_is_a_violation() {
        let mut held = Held::default();
        for _ in 0..INITIAL_CREDIT / MAX_PIECE {
            assert!(held.hold(data(MAX_PIECE)));
        }
        assert!(!held.hold(data(1)));
    }

    #[test]
    fn a_flood_of_resizes_and_signals_is_bounded() {
        let mut held = Held::default();
        for i in 0..10_000 {
            held.hold(ChannelMsg::WindowChange {
                col_width: i,
                row_height: 24,
                pix_width: 0,
                pix_height: 0,
            });
        }
        assert_eq!(held.msgs.len(), 1);
        for _ in 0..10_000 {
            held.hold(ChannelMsg::Signal {
                signal: russh::Sig::INT,
            });
        }
        assert!(held.msgs.len() <= MAX_OTHER_HELD + 1);
    }

    #[tokio::test]
    async fn credit_holds_a_sender_back_until_it_is_given() {
        let credit = Credit::new();
        for _ in 0..INITIAL_CREDIT / MAX_PIECE {
            assert!(credit.take(MAX_PIECE).await);
        }
        let waiting = tokio::spawn({
            let credit = credit.clone();
            async move { credit.take(10).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        credit.give(10);
        assert!(matches!(waiting.await, Ok(true)));
        credit.give(u64::MAX);
        credit.close();
        assert!(!credit.take(1).await);
    }
}
