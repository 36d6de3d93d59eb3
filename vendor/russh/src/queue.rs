//! Tokio's mpsc queues with each message boxed in its slot.
//!
//! A tokio queue allocates its first block of 32 slots when it is created, whatever its
//! capacity: with messages of 130 bytes every queue costs 4 KiB before anything is sent,
//! and an idle connection holds two per session and one per channel. Boxed, a slot is a
//! pointer and a block 256 bytes; a message costs one allocation while it is queued.
//!
//! The types keep tokio's names and the methods this crate uses, so that a module switches
//! by changing its `use`.

use tokio::sync::mpsc;

pub mod error {
    //! The errors of tokio's queues, with the message given back unboxed.
    pub use tokio::sync::mpsc::error::{SendError, TryRecvError, TrySendError};
}

use error::{SendError, TryRecvError, TrySendError};

fn unbox_send<T>(e: SendError<Box<T>>) -> SendError<T> {
    SendError(*e.0)
}

fn unbox_try_send<T>(e: TrySendError<Box<T>>) -> TrySendError<T> {
    match e {
        TrySendError::Full(v) => TrySendError::Full(*v),
        TrySendError::Closed(v) => TrySendError::Closed(*v),
    }
}

/// A bounded queue of `buffer` messages.
pub fn channel<T>(buffer: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = mpsc::channel(buffer);
    (Sender(tx), Receiver(rx))
}

/// An unbounded queue.
pub fn unbounded_channel<T>() -> (UnboundedSender<T>, UnboundedReceiver<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (UnboundedSender(tx), UnboundedReceiver(rx))
}

/// The sending half of a bounded queue.
pub struct Sender<T>(mpsc::Sender<Box<T>>);

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<T> Sender<T> {
    /// Waits for a free slot, then queues `value`.
    pub async fn send(&self, value: T) -> Result<(), SendError<T>> {
        self.0.send(Box::new(value)).await.map_err(unbox_send)
    }

    /// Queues `value` if a slot is free now.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        self.0.try_send(Box::new(value)).map_err(unbox_try_send)
    }

    /// Queues `value` from outside the runtime, waiting for a slot.
    pub fn blocking_send(&self, value: T) -> Result<(), SendError<T>> {
        self.0.blocking_send(Box::new(value)).map_err(unbox_send)
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    /// Completes when the receiver is gone.
    pub async fn closed(&self) {
        self.0.closed().await
    }

    /// The number of free slots.
    pub fn capacity(&self) -> usize {
        self.0.capacity()
    }

    /// The queue's capacity.
    pub fn max_capacity(&self) -> usize {
        self.0.max_capacity()
    }

    /// Whether both senders feed the same queue.
    pub fn same_channel(&self, other: &Self) -> bool {
        self.0.same_channel(&other.0)
    }

    /// Waits for a free slot and holds it, consuming this sender.
    pub async fn reserve_owned(self) -> Result<OwnedPermit<T>, SendError<()>> {
        self.0.reserve_owned().await.map(OwnedPermit)
    }
}

/// A slot held in a bounded queue.
pub struct OwnedPermit<T>(mpsc::OwnedPermit<Box<T>>);

impl<T> OwnedPermit<T> {
    /// Queues `value` in the held slot and gives the sender back.
    pub fn send(self, value: T) -> Sender<T> {
        Sender(self.0.send(Box::new(value)))
    }

    /// Gives the slot back unused.
    pub fn release(self) -> Sender<T> {
        Sender(self.0.release())
    }
}

/// The receiving half of a bounded queue.
pub struct Receiver<T>(mpsc::Receiver<Box<T>>);

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<T> Receiver<T> {
    /// The next message; `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<T> {
        self.0.recv().await.map(|v| *v)
    }

    /// The next message if one is queued.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.0.try_recv().map(|v| *v)
    }

    /// Polls for the next message.
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx).map(|v| v.map(|v| *v))
    }

    /// Refuses further messages; those queued can still be received.
    pub fn close(&mut self) {
        self.0.close()
    }

    /// The number of queued messages.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no message is queued.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The sending half of an unbounded queue.
pub struct UnboundedSender<T>(mpsc::UnboundedSender<Box<T>>);

impl<T> Clone for UnboundedSender<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> std::fmt::Debug for UnboundedSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<T> UnboundedSender<T> {
    /// Queues `value`.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        self.0.send(Box::new(value)).map_err(unbox_send)
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    /// Completes when the receiver is gone.
    pub async fn closed(&self) {
        self.0.closed().await
    }

    /// Whether both senders feed the same queue.
    pub fn same_channel(&self, other: &Self) -> bool {
        self.0.same_channel(&other.0)
    }
}

/// The receiving half of an unbounded queue.
pub struct UnboundedReceiver<T>(mpsc::UnboundedReceiver<Box<T>>);

impl<T> std::fmt::Debug for UnboundedReceiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<T> UnboundedReceiver<T> {
    /// The next message; `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<T> {
        self.0.recv().await.map(|v| *v)
    }

    /// The next message if one is queued.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.0.try_recv().map(|v| *v)
    }

    /// Polls for the next message.
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx).map(|v| v.map(|v| *v))
    }

    /// Refuses further messages; those queued can still be received.
    pub fn close(&mut self) {
        self.0.close()
    }

    /// The number of queued messages.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no message is queued.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
