//! The relay end of a device's `tether-telemetry` channel: read batches, commit them to the
//! sink, acknowledge.
//!
//! A malformed frame or a batch that breaks the rules (sequence numbers not ascending) closes
//! this channel with a logged error; the device's link and other devices are unaffected, and the
//! device resends from its oldest unacknowledged record on its next channel.

use std::sync::Arc;

use tether_protocol::telemetry::{Frame, Kind, read_frame, write_frame};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::metrics::Metrics;
use crate::sink::Sink;

/// Serves one telemetry channel of `device_id` until it closes.
pub async fn serve<S>(
    stream: S,
    device_id: String,
    tenant_id: i64,
    sink: Arc<dyn Sink>,
    metrics: Arc<Metrics>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut last_seq = 0u64;
    loop {
        let frame = match read_frame(&mut rd).await {
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
        let committed =
            tokio::task::spawn_blocking(move || sink.commit(&id, tenant_id, &records)).await;
        match committed {
            Ok(Ok(_new)) => {
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
        let (device_side, relay_side) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(serve(
            relay_side,
            "dev_1".into(),
            tenant.id,
            Arc::new(SqliteSink::new(store.clone())),
            Metrics::new(),
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
}
