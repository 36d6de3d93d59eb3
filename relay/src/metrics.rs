//! The relay's Prometheus metrics, served as text at `GET /metrics`.

use std::pin::Pin;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Label set: a list of name/value pairs.
type Labels = Vec<(String, String)>;

/// Every metric the relay exports.
pub struct Metrics {
    registry: Registry,
    /// Devices with a live link (set when scraped).
    pub devices_online: Gauge<i64, AtomicI64>,
    /// Telemetry records newly committed, by kind.
    pub records_ingested: Family<Labels, Counter>,
    /// Telemetry batches acknowledged to devices.
    pub batches_acked: Counter,
    /// Time from receiving a batch to acknowledging it.
    pub ack_latency: Histogram,
    /// Commit attempts the sink failed (each retry of a batch counts).
    pub sink_errors: Counter,
    /// 1 while the sink is failing (from its first failed commit to its next successful one).
    pub sink_failing: Gauge<i64, AtomicI64>,
    /// When the current sink outage began and how many commits failed since; `None` while
    /// the sink is healthy. Kept so the outage is logged once, not once per batch.
    sink_outage: Mutex<Option<Outage>>,
    /// Records a device sent again that the sink already held: their acknowledgement was lost
    /// (a link cut or a relay stop between commit and ack).
    pub records_duplicate: Counter,
    /// Bytes through the SSH front, by transport and direction.
    pub link_bytes: Family<Labels, Counter>,
    /// Change notifications between relays, by kind (`device`, `access`) and outcome (`sent`,
    /// `received`, `dropped`, `malformed`).
    pub cluster_notifications: Family<Labels, Counter>,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("tether");
        let devices_online = Gauge::<i64, AtomicI64>::default();
        let records_ingested = Family::<Labels, Counter>::default();
        let batches_acked = Counter::default();
        let ack_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let sink_errors = Counter::default();
        let sink_failing = Gauge::<i64, AtomicI64>::default();
        let records_duplicate = Counter::default();
        let link_bytes = Family::<Labels, Counter>::default();
        let cluster_notifications = Family::<Labels, Counter>::default();
        registry.register(
            "devices_online",
            "Devices with a live link to this relay",
            devices_online.clone(),
        );
        registry.register(
            "telemetry_records_ingested",
            "Telemetry records committed to the sink",
            records_ingested.clone(),
        );
        registry.register(
            "telemetry_records_duplicate",
            "Telemetry records sent again that the sink already held (acknowledgement lost)",
            records_duplicate.clone(),
        );
        registry.register(
            "telemetry_batches_acked",
            "Telemetry batches acknowledged to devices",
            batches_acked.clone(),
        );
        registry.register(
            "telemetry_ack_latency_seconds",
            "Time from receiving a batch to acknowledging it",
            ack_latency.clone(),
        );
        registry.register(
            "telemetry_sink_errors",
            "Telemetry commit attempts the sink failed (retries included)",
            sink_errors.clone(),
        );
        registry.register(
            "telemetry_sink_failing",
            "1 while the telemetry sink fails to commit batches, 0 once it commits again",
            sink_failing.clone(),
        );
        registry.register(
            "link_bytes",
            "Bytes through the SSH port and the WebSocket link",
            link_bytes.clone(),
        );
        registry.register(
            "cluster_notifications",
            "Change notifications between the relays of a cluster, by kind and outcome",
            cluster_notifications.clone(),
        );
        Arc::new(Self {
            registry,
            devices_online,
            records_ingested,
            batches_acked,
            ack_latency,
            sink_errors,
            sink_failing,
            sink_outage: Mutex::new(None),
            records_duplicate,
            link_bytes,
            cluster_notifications,
        })
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!("encoding metrics failed: {e}");
        }
        out
    }

    /// Counter of records committed for one kind (`metric`, `log`, `event`).
    pub fn ingested(&self, kind: &str) -> Counter {
        self.records_ingested
            .get_or_create(&vec![("kind".into(), kind.into())])
            .clone()
    }

    /// Records a failed commit. The first failure of an outage is logged (once, whichever
    /// device's batch hit it) and raises `tether_telemetry_sink_failing`; later ones only count.
    pub fn sink_failed(&self, error: &dyn std::fmt::Display) {
        self.sink_errors.inc();
        let mut outage = self.sink_outage.lock().unwrap_or_else(|p| p.into_inner());
        match outage.as_mut() {
            Some(o) => o.failed += 1,
            None => {
                *outage = Some(Outage {
                    since: Instant::now(),
                    failed: 1,
                });
                self.sink_failing.set(1);
                tracing::error!(
                    "telemetry sink failing: {error}; devices keep their records and batches are \
                     retried until it commits again"
                );
            }
        }
    }

    /// Records a successful commit; ends an outage, if any, with one log line.
    pub fn sink_committed(&self) {
        // The common case, a healthy sink, takes no lock.
        if self.sink_failing.get() == 0 {
            return;
        }
        let ended = self
            .sink_outage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(o) = ended {
            self.sink_failing.set(0);
            tracing::info!(
                "telemetry sink recovered after {:.1} s, {} batches retried",
                o.since.elapsed().as_secs_f64(),
                o.failed
            );
        }
    }

    /// Counter of cluster notifications of one kind and outcome.
    pub fn cluster_notes(&self, kind: &str, outcome: &str) -> Counter {
        self.cluster_notifications
            .get_or_create(&vec![
                ("kind".into(), kind.into()),
                ("outcome".into(), outcome.into()),
            ])
            .clone()
    }

    /// Counter of bytes for one transport and direction.
    pub fn bytes(&self, transport: &str, direction: &str) -> Counter {
        self.link_bytes
            .get_or_create(&vec![
                ("transport".into(), transport.into()),
                ("direction".into(), direction.into()),
            ])
            .clone()
    }
}

/// A sink outage in progress.
struct Outage {
    since: Instant,
    /// Commits that failed since it began; each was (or will be) retried.
    failed: u64,
}

/// A stream that counts the bytes read from and written to it.
pub struct Counted<S> {
    inner: S,
    read: Counter,
    written: Counter,
}

impl<S> Counted<S> {
    /// Counts `inner`'s traffic into `read` (bytes in) and `written` (bytes out).
    pub fn new(inner: S, read: Counter, written: Counter) -> Self {
        Self {
            inner,
            read,
            written,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.read.inc_by(n as u64);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.written.inc_by(*n as u64);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
