//! The relay end of a device's `tether-telemetry` channel: read batches, commit them to the
//! sink, acknowledge.
//!
//! A malformed frame or a batch that breaks the rules (sequence numbers not ascending) closes
//! this channel with a logged error; the device's link and other devices are unaffected, and the
//! device resends from its oldest unacknowledged record on its next channel.
//!
//! When the relay stops, a channel reads no further batch, but the batch it is committing is
//! committed and acknowledged before the channel ends: the connection waits for that before it
//! says goodbye, so the device need not send it again to the next relay.

use std::sync::Arc;

use tether_protocol::telemetry::{Frame, Kind, read_frame, write_frame};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::sink::Sink;
use crate::ssh_front::stopped;

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
        let (sink, id) = (sink.clone(), device_id.clone());
        let count = records.len();
        let committed =
            tokio::task::spawn_blocking(move || sink.commit(&id, tenant_id, &records)).await;
        match committed {
            Ok(Ok(new)) => {
                metrics
                    .records_duplicate
                    .inc_by(count.saturating_sub(new) as u64);
                for kind in [Kind::Metric, Kind::Log, Kind::Event] {
                    let n = per_kind[kind as usize];
                    if n > 0 {
                        metrics.ingested(kind.as_str()).inc_by(n);
                    }
                }
            }
            Ok(Err(e)) => {
                metrics.sink_errors.inc();
                // Without an ack the device keeps the records and sends them again.
                tracing::error!(
                    "device {device_id}: sink failed: {e}; closing its telemetry channel"
                );
                return;
            }
            Err(e) => {
                tracing::error!("device {device_id}: sink task failed: {e}");
                return;
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
}
