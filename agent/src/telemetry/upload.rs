//! Upload of the outbox over the link's `tether-telemetry` channel.
//!
//! The agent sends batches in sequence order and keeps up to `telemetry.window` batches in
//! flight; the relay acknowledges a sequence number only after its sink committed the batch,
//! and the agent then deletes up to it. After any reconnect upload starts again at the oldest
//! record still in the outbox, so a batch whose acknowledgement was lost is sent again and the
//! relay's sink, which deduplicates on (device, seq), stores it once.
//!
//! The relay may close the telemetry channel while the link stays up (its sink kept failing,
//! say, on a full disk). [`supervise`] then opens a new one on the same link after a capped,
//! jittered backoff, so upload resumes by itself once the relay can commit again instead of
//! waiting for the link to drop.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::Channel;
use russh::client::Msg;
use tether_protocol::telemetry::{Frame, FrameError, read_frame, write_frame};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};

use crate::backoff::Backoff;
use crate::config::TelemetryConfig;
use crate::telemetry::outbox::{Limits, Outbox, OutboxError};
use crate::telemetry::outbox_watch::OutboxWatch;

/// First wait before a closed telemetry channel is reopened on the same link.
const REOPEN_FIRST: Duration = Duration::from_millis(200);
/// Longest wait before a closed telemetry channel is reopened.
const REOPEN_MAX: Duration = Duration::from_secs(10);

/// Where the link puts a telemetry channel it opened for the uploader, or `None` if it could
/// not open one.
pub type ChannelReply = oneshot::Sender<Option<Channel<Msg>>>;

/// How the uploader asks the link for a new telemetry channel. The link's task owns the SSH
/// handle, so it opens the channels.
pub type ChannelRequests = mpsc::Sender<ChannelReply>;

/// Uploads over telemetry channels of one link for as long as the link lives: whenever a
/// channel closes or fails, asks `open` for a new one after a backoff (reset by a channel that
/// got an acknowledgement). Returns when the link no longer answers requests.
pub async fn supervise(open: ChannelRequests, outbox_path: PathBuf, cfg: TelemetryConfig) {
    let mut backoff = Backoff::new(REOPEN_FIRST, REOPEN_MAX);
    // A relay that keeps closing the channel is reported once, until a channel works again.
    let mut reported = false;
    loop {
        let (tx, rx) = oneshot::channel();
        if open.send(tx).await.is_err() {
            return;
        }
        let Ok(channel) = rx.await else {
            return;
        };
        let why = match channel {
            Some(channel) => match run(channel, outbox_path.clone(), cfg.clone()).await {
                Ok(acks) => {
                    if acks > 0 {
                        backoff.reset();
                        reported = false;
                    }
                    "the relay closed the telemetry channel".to_string()
                }
                Err(e) => format!("telemetry upload stopped: {e}"),
            },
            None => "cannot open a telemetry channel".to_string(),
        };
        let delay = backoff.next_delay();
        if reported {
            tracing::debug!("{why}; reopening it in {:.1}s", delay.as_secs_f64());
        } else {
            tracing::warn!(
                "{why}; reopening it in {:.1}s (records stay in the outbox)",
                delay.as_secs_f64()
            );
            reported = true;
        }
        tokio::time::sleep(delay).await;
    }
}

/// Why the upload stopped.
#[derive(Debug, Error)]
pub enum UploadError {
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The channel failed or carried garbage.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The relay sent something other than acknowledgements.
    #[error("unexpected frame from the relay")]
    Unexpected,
    /// A blocking task died.
    #[error("outbox task failed: {0}")]
    Task(String),
}

async fn with_outbox<T: Send + 'static>(
    outbox: &Arc<Mutex<Outbox>>,
    f: impl FnOnce(&mut Outbox) -> Result<T, OutboxError> + Send + 'static,
) -> Result<T, UploadError> {
    let outbox = outbox.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = outbox.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    })
    .await
    .map_err(|e| UploadError::Task(e.to_string()))?
    .map_err(UploadError::from)
}

/// Uploads until the channel closes; returns how many acknowledgements the relay sent on it.
pub async fn run(
    channel: Channel<Msg>,
    outbox_path: PathBuf,
    cfg: TelemetryConfig,
) -> Result<u64, UploadError> {
    let limits = Limits::from_config(&cfg);
    // Watching starts before the first read, so no record committed after that read is missed.
    let mut changes = OutboxWatch::new(&outbox_path);
    let open = |path: PathBuf| tokio::task::spawn_blocking(move || Outbox::open(&path, limits));
    let writer_box = Arc::new(Mutex::new(
        open(outbox_path.clone())
            .await
            .map_err(|e| UploadError::Task(e.to_string()))??,
    ));
    let acker_box = Arc::new(Mutex::new(
        open(outbox_path)
            .await
            .map_err(|e| UploadError::Task(e.to_string()))??,
    ));
    let (mut rd, mut wr) = tokio::io::split(channel.into_stream());
    let (acked_tx, mut acked_rx) = watch::channel(0u64);
    let acks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let acks_seen = acks.clone();

    let acker = tokio::spawn(async move {
        loop {
            match read_frame(&mut rd).await? {
                Some(Frame::Ack { upto }) => {
                    with_outbox(&acker_box, move |o| o.ack(upto)).await?;
                    acks_seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = acked_tx.send(upto);
                }
                Some(Frame::Batch { .. }) => return Err(UploadError::Unexpected),
                None => return Ok(()),
            }
        }
    });

    let mut sent_upto = 0u64;
    let mut in_flight: VecDeque<u64> = VecDeque::new();
    let result = loop {
        if acker.is_finished() {
            break Ok(());
        }
        let acked = *acked_rx.borrow_and_update();
        while in_flight.front().is_some_and(|last| *last <= acked) {
            in_flight.pop_front();
        }
        if in_flight.len() >= cfg.window {
            if acked_rx.changed().await.is_err() {
                break Ok(());
            }
            continue;
        }
        let (after, n, bytes) = (sent_upto, cfg.batch_records, cfg.batch_bytes);
        let batch = match with_outbox(&writer_box, move |o| {
            o.report_drops()?;
            o.batch_after(after, n, bytes)
        })
        .await
        {
            Ok(b) => b,
            Err(e) => break Err(e),
        };
        let Some(last) = batch.last().map(|r| r.seq) else {
            tokio::select! {
                () = changes.changed() => {}
                changed = acked_rx.changed() => if changed.is_err() { break Ok(()); },
            }
            continue;
        };
        if let Err(e) = write_frame(&mut wr, &Frame::Batch { records: batch }).await {
            break Err(e.into());
        }
        sent_upto = last;
        in_flight.push_back(last);
    };
    acker.abort();
    result.map(|()| acks.load(std::sync::atomic::Ordering::Relaxed))
}
