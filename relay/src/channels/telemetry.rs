//! The relay end of a device's `tether-telemetry` channel: read batches, commit them to the
//! sink, acknowledge.
//!
//! A malformed frame or a batch that breaks the rules (sequence numbers not ascending) closes
//! this channel with a logged error; the device's link and other devices are unaffected, and the
//! device resends from its oldest unacknowledged record on its next channel.
//!
//! A failing sink (a full disk, a database restarting) does not close the channel at once: the
//! batch stays unacknowledged and its commit is retried with capped, jittered backoff for up to
//! [`RETRY_FOR`]. Meanwhile nothing more is read from the channel, so SSH flow control holds the
//! device's further batches on the device and the relay holds one batch per channel. Past that
//! the channel is closed and the device reopens one later and resends; either way the records
//! stay on the device until a commit succeeds.
//!
//! When the relay stops, a channel reads no further batch, but the batch it is committing is
//! committed and acknowledged before the channel ends: the connection waits for that before it
//! says goodbye, so the device need not send it again to the next relay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tether_protocol::shutdown::stopped;
use tether_protocol::telemetry::{Frame, Kind, Record, read_frame, write_frame};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::sink::Sink;

/// First wait before a failed commit is tried again; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between two commits of the same batch.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How long one channel keeps retrying a batch before it closes and leaves the resend to the
/// device: a channel the device has given up on must not hold its batch forever.
pub const RETRY_FOR: Duration = Duration::from_secs(10);

/// Commits `records`, retrying while the sink fails. Returns how many were new, or `None` when
/// the channel is to close without an acknowledgement: the relay is stopping, the sink kept
/// failing for [`RETRY_FOR`], or the commit task died.
async fn commit_retrying(
    sink: &Arc<dyn Sink>,
    device_id: &str,
    tenant_id: i64,
    records: Vec<Record>,
    metrics: &Metrics,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<usize> {
    let started = Instant::now();
    let mut delay = RETRY_FIRST;
    let mut records = records;
    loop {
        let (sink, id) = (sink.clone(), device_id.to_string());
        let committed = tokio::task::spawn_blocking(move || {
            let r = sink.commit(&id, tenant_id, &records);
            (records, r)
        })
        .await;
        let e = match committed {
            Ok((_, Ok(new))) => return Some(new),
            Ok((back, Err(e))) => {
                records = back;
                e
            }
            Err(e) => {
                tracing::error!("device {device_id}: sink task failed: {e}");
                return None;
            }
        };
        // Logged once per outage, not here for every batch and device.
        metrics.sink_failed(&e);
        if started.elapsed() >= RETRY_FOR {
            tracing::debug!(
                "device {device_id}: sink still failing after {:.0} s ({e}); closing its \
                 telemetry channel, the device resends",
                started.elapsed().as_secs_f64()
            );
            return None;
        }
        // Full jitter in [delay/2, delay], so devices that failed together do not retry in step.
        let wait = delay / 2
            + Duration::from_millis(
                rand::thread_rng().gen_range(0..=(delay / 2).as_millis() as u64),
            );
        delay = (delay * 2).min(RETRY_MAX);
        tracing::debug!("device {device_id}: sink failed: {e}; retrying in {wait:?}");
        tokio::select! {
            biased;
            _ = stopped(shutdown) => {
                tracing::debug!(
                    "device {device_id}: relay stopping while the sink fails; batch left to resend"
                );
                return None;
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Serves one telemetry channel of `device_id` until it closes or `shutdown` fires between
/// batches.
pub async fn serve<S>(
    stream: S,
    device_id: String,
    tenant_id: i64,
    sink: Arc<dyn Sink>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut last_seq = 0u64;
    loop {
        // Only the wait for the next batch is cut short by a stop, never a commit or its ack.
        // Biased: once the relay is stopping, a batch already waiting is not started either.
        let read = tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => {
                tracing::debug!(
                    "device {device_id}: relay stopping; telemetry acknowledged up to {last_seq}"
                );
                return;
            }
            read = read_frame(&mut rd) => read,
        };
        let frame = match read {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("device {device_id}: {e}; closing its telemetry channel");
                return;
            }
        };
        let records = match frame {
            Frame::Batch { records } => records,
            Frame::Ack { .. } => {
                tracing::error!(
                    "device {device_id}: sent an acknowledgement; closing its telemetry channel"
                );
                return;
            }
        };
        let Some(upto) = records.last().map(|r| r.seq) else {
            continue;
        };
        let ascending = records.windows(2).all(|w| w[0].seq < w[1].seq);
        if !ascending {
            tracing::error!(
                "device {device_id}: batch with unordered sequence numbers; closing its telemetry channel"
            );
            return;
        }
        if upto < last_seq {
            tracing::warn!("device {device_id}: batch goes back from {last_seq} to {upto}");
        }
        let received = std::time::Instant::now();
        let mut per_kind = [0u64; 3];
        for r in &records {
            per_kind[r.kind as usize] += 1;
        }
        let count = records.len();
        let Some(new) = commit_retrying(
            &sink,
            &device_id,
            tenant_id,
            records,
            &metrics,
            &mut shutdown,
        )
        .await
        else {
            return;
        };
        metrics.sink_committed();
        metrics
            .records_duplicate
            .inc_by(count.saturating_sub(new) as u64);
        for kind in [Kind::Metric, Kind::Log, Kind::Event] {
            let n = per_kind[kind as usize];
            if n > 0 {
                metrics.ingested(kind.as_str()).inc_by(n);
            }
        }
        last_seq = upto;
        if let Err(e) = write_frame(&mut wr, &Frame::Ack { upto }).await {
            tracing::info!("device {device_id}: telemetry channel closed: {e}");
            return;
        }
        metrics.batches_acked.inc();
        metrics
            .ack_latency
            .observe(received.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::SqliteSink;
    use crate::store::{Store, TelemetryQuery};
    use std::time::Duration;
    use tether_protocol::telemetry::{Kind, Record, encode};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn record(seq: u64) -> Record {
        Record {
            seq,
            ts_ms: 1,
            kind: Kind::Metric,
            topic: "t".into(),
            level: None,
            payload: serde_json::json!(seq),
        }
    }

    #[tokio::test]
    async fn acks_after_commit_and_closes_on_garbage() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(Store::open(&dir.path().join("relay.db"))?);
        let tenant = store.add_tenant("acme")?;
        // The sender stays alive: a dropped sender counts as "stopping".
        let (_stop, running) = watch::channel(false);
        let (device_side, relay_side) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(serve(
            relay_side,
            "dev_1".into(),
            tenant.id,
            Arc::new(SqliteSink::new(store.clone())),
            Metrics::new(),
            running.clone(),
        ));
        let (mut rd, mut wr) = tokio::io::split(device_side);
        write_frame(
            &mut wr,
            &Frame::Batch {
                records: vec![record(1), record(2)],
            },
        )
        .await?;
        assert_eq!(read_frame(&mut rd).await?, Some(Frame::Ack { upto: 2 }));
        let q = TelemetryQuery {
            device_id: "dev_1",
            limit: 10,
            ..Default::default()
        };
        assert_eq!(store.telemetry(&q)?.len(), 2);
        // Unordered sequence numbers are refused without an ack; nothing is stored.
        wr.write_all(&encode(&Frame::Batch {
            records: vec![record(4), record(3)],
        })?)
        .await?;
        let mut rest = Vec::new();
        rd.read_to_end(&mut rest).await?;
        assert!(rest.is_empty(), "an ack was sent for a bad batch");
        task.await?;
        assert_eq!(store.telemetry(&q)?.len(), 2);

        // A corrupt frame closes the channel too.
        let (device_side, relay_side) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(serve(
            relay_side,
            "dev_1".into(),
            tenant.id,
            Arc::new(SqliteSink::new(store.clone())),
            Metrics::new(),
            running.clone(),
        ));
        let (mut rd, mut wr) = tokio::io::split(device_side);
        wr.write_all(&[0, 0, 0, 5, 1, b'{', b'x', b'y', b'z'])
            .await?;
        let mut rest = Vec::new();
        rd.read_to_end(&mut rest).await?;
        assert!(rest.is_empty());
        task.await?;
        Ok(())
    }

    /// A sink that tells when a commit starts and finishes it only when released.
    struct HeldSink {
        entered: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
        release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Sink for HeldSink {
        fn commit(
            &self,
            _device_id: &str,
            _tenant_id: i64,
            records: &[Record],
        ) -> Result<usize, crate::sink::SinkError> {
            if let Ok(tx) = self.entered.lock() {
                let _ = tx.send(());
            }
            if let Ok(rx) = self.release.lock() {
                let _ = rx.recv_timeout(std::time::Duration::from_secs(10));
            }
            Ok(records.len())
        }
    }

    #[tokio::test]
    async fn a_stop_during_a_commit_still_acknowledges_it() -> Result<(), Box<dyn std::error::Error>>
    {
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel();
        let sink = Arc::new(HeldSink {
            entered: std::sync::Mutex::new(entered_tx),
            release: std::sync::Mutex::new(release_rx),
        });
        let (stop, running) = watch::channel(false);
        let (device_side, relay_side) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(serve(
            relay_side,
            "dev_1".into(),
            1,
            sink,
            Metrics::new(),
            running,
        ));
        let (mut rd, mut wr) = tokio::io::split(device_side);
        write_frame(
            &mut wr,
            &Frame::Batch {
                records: vec![record(1), record(2)],
            },
        )
        .await?;
        tokio::task::spawn_blocking(move || entered_rx.recv_timeout(Duration::from_secs(10)))
            .await??;
        // The relay stops while the batch is being committed; a second batch is never read.
        stop.send(true)?;
        write_frame(
            &mut wr,
            &Frame::Batch {
                records: vec![record(3)],
            },
        )
        .await?;
        release_tx.send(())?;
        assert_eq!(read_frame(&mut rd).await?, Some(Frame::Ack { upto: 2 }));
        tokio::time::timeout(Duration::from_secs(5), task).await??;
        let mut rest = Vec::new();
        rd.read_to_end(&mut rest).await?;
        assert!(
            rest.is_empty(),
            "the batch read after the stop was acknowledged"
        );
        Ok(())
    }

    /// A sink that fails its first `failures` commits, then stores into `store`.
    struct FlakySink {
        failures: std::sync::atomic::AtomicUsize,
        inner: SqliteSink,
    }

    impl Sink for FlakySink {
        fn commit(
            &self,
            device_id: &str,
            tenant_id: i64,
            records: &[Record],
        ) -> Result<usize, crate::sink::SinkError> {
            let left = self.failures.load(std::sync::atomic::Ordering::SeqCst);
            if left > 0 {
                self.failures
                    .store(left - 1, std::sync::atomic::Ordering::SeqCst);
                return Err(crate::store::StoreError::Invalid("disk full".into()).into());
            }
            self.inner.commit(device_id, tenant_id, records)
        }
    }

    #[tokio::test]
    async fn a_failing_sink_is_retried_and_the_batch_acknowledged_once_it_commits()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(Store::open(&dir.path().join("relay.db"))?);
        let tenant = store.add_tenant("acme")?;
        let sink = Arc::new(FlakySink {
            failures: std::sync::atomic::AtomicUsize::new(3),
            inner: SqliteSink::new(store.clone()),
        });
        let metrics = Metrics::new();
        let (_stop, running) = watch::channel(false);
        let (device_side, relay_side) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(serve(
            relay_side,
            "dev_1".into(),
            tenant.id,
            sink,
            metrics.clone(),
            running,
        ));
        let (mut rd, mut wr) = tokio::io::split(device_side);
        write_frame(
            &mut wr,
            &Frame::Batch {
                records: vec![record(1), record(2)],
            },
        )
        .await?;
        // The channel stays open through the failures and acknowledges once the commit succeeds.
        let ack = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut rd)).await??;
        assert_eq!(ack, Some(Frame::Ack { upto: 2 }));
        assert_eq!(metrics.sink_errors.get(), 3);
        assert_eq!(metrics.sink_failing.get(), 0, "recovery not noticed");
        let q = TelemetryQuery {
            device_id: "dev_1",
            limit: 10,
            ..Default::default()
        };
        assert_eq!(store.telemetry(&q)?.len(), 2);
        drop(wr);
        drop(rd);
        tokio::time::timeout(Duration::from_secs(5), task).await??;
        Ok(())
    }

    #[tokio::test]
    async fn a_stop_ends_sink_retries_without_an_acknowledgement()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(Store::open(&dir.path().join("relay.db"))?);
        let sink = Arc::new(FlakySink {
            failures: std::sync::atomic::AtomicUsize::new(usize::MAX),
            inner: SqliteSink::new(store),
        });
        let metrics = Metrics::new();
        let (stop, running) = watch::channel(false);
        let (device_side, relay_side) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(serve(
            relay_side,
            "dev_1".into(),
            1,
            sink,
            metrics.clone(),
            running,
        ));
        let (mut rd, mut wr) = tokio::io::split(device_side);
        write_frame(
            &mut wr,
            &Frame::Batch {
                records: vec![record(1)],
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(metrics.sink_failing.get(), 1);
        // A stop ends the retries at once, without an acknowledgement.
        stop.send(true)?;
        tokio::time::timeout(Duration::from_secs(5), task).await??;
        let mut rest = Vec::new();
        rd.read_to_end(&mut rest).await?;
        assert!(rest.is_empty(), "a batch never committed was acknowledged");
        assert_eq!(metrics.sink_failing.get(), 1);
        Ok(())
    }
}
