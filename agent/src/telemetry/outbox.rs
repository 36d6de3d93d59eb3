//! The device outbox: telemetry, logs and events kept in SQLite until the relay has stored them.
//!
//! A record is appended with a sequence number that is never reused (SQLite `AUTOINCREMENT`
//! survives deletes and restarts) and is acknowledged to its producer only after the
//! transaction is durable (WAL with `synchronous=FULL`). The relay acknowledges by sequence
//! number; acknowledged records are deleted. The outbox is bounded in rows and bytes: when an
//! append would exceed a bound, the oldest records are dropped in the same transaction, the drop
//! is counted, and a `tether/outbox/dropped` warning event is appended so the relay learns of
//! it. Nothing is lost silently and the disk use stays bounded.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use tether_protocol::clock::now_ms;
use tether_protocol::telemetry::{Kind, Level, Record};
use thiserror::Error;

use crate::config::TelemetryConfig;

/// Topic of the event that reports dropped records.
pub const DROPPED_TOPIC: &str = "tether/outbox/dropped";

/// File name of the outbox inside the state directory.
pub const OUTBOX_FILE: &str = "outbox.db";

/// Why an outbox operation failed.
#[derive(Debug, Error)]
pub enum OutboxError {
    /// SQLite failed.
    #[error("outbox: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The outbox file could not be created.
    #[error("creating the outbox {path}: {source}")]
    Create {
        /// The outbox file.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A record is larger than the outbox may hold at all.
    #[error("record of {size} bytes exceeds the outbox size limit of {limit} bytes")]
    TooLarge {
        /// Size of the record.
        size: u64,
        /// The byte bound.
        limit: u64,
    },
    /// A stored record could not be decoded (the file was altered outside the agent).
    #[error("outbox record {seq} is corrupt: {message}")]
    Corrupt {
        /// Its sequence number.
        seq: u64,
        /// What is wrong.
        message: String,
    },
}

/// Bounds of the outbox.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most records kept.
    pub max_rows: u64,
    /// Most bytes of topic and payload kept.
    pub max_bytes: u64,
}

impl Limits {
    /// The bounds `telemetry.max_rows` and `telemetry.max_bytes` set.
    pub fn from_config(cfg: &TelemetryConfig) -> Self {
        Self {
            max_rows: cfg.max_rows,
            max_bytes: cfg.max_bytes,
        }
    }
}

/// A record to append (the outbox assigns the sequence number).
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// Producer timestamp, ms since the Unix epoch.
    pub ts_ms: i64,
    /// What it is.
    pub kind: Kind,
    /// Topic.
    pub topic: String,
    /// Level, for events.
    pub level: Option<Level>,
    /// Payload as JSON text.
    pub payload: String,
}

impl NewRecord {
    fn size(&self) -> u64 {
        (self.topic.len() + self.payload.len()) as u64
    }
}

/// What `agent telemetry status` shows.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct OutboxStatus {
    /// Records waiting for the relay.
    pub queued_rows: u64,
    /// Their bytes (topic and payload).
    pub queued_bytes: u64,
    /// Producer timestamp of the oldest waiting record.
    pub oldest_ts_ms: Option<i64>,
    /// Records dropped because the outbox was full, since it was created.
    pub dropped_total: u64,
    /// Highest sequence number the relay acknowledged.
    pub acked_upto: u64,
    /// When the relay last acknowledged (ms since the Unix epoch).
    pub last_ack_ms: Option<i64>,
    /// Highest sequence number ever assigned.
    pub last_seq: u64,
    /// Age of the oldest waiting record in milliseconds (by its producer timestamp).
    pub oldest_age_ms: Option<i64>,
    /// Records acknowledged per second over the last measuring window (0 when idle).
    pub upload_rate: f64,
}

/// Upload rate is measured over windows of at least this long, so it is stable to read.
const RATE_WINDOW_MS: i64 = 5_000;

/// A rate older than this is stale: the upload stalled or finished.
const RATE_STALE_MS: i64 = 3 * RATE_WINDOW_MS;

/// The outbox.
pub struct Outbox {
    conn: Connection,
    limits: Limits,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms   INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    topic   TEXT NOT NULL,
    level   TEXT,
    payload TEXT NOT NULL,
    size    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value) VALUES
    ('rows', 0), ('bytes', 0), ('dropped_total', 0), ('dropped_unreported', 0),
    ('acked_upto', 0), ('last_ack_ms', 0),
    ('rate_since_ms', 0), ('rate_count', 0), ('rate_milli_per_s', 0);
";

fn counter(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT value FROM counters WHERE name = ?1",
        params![name],
        |r| r.get(0),
    )
}

fn add_counter(conn: &Connection, name: &str, delta: i64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE counters SET value = value + ?2 WHERE name = ?1",
        params![name, delta],
    )?;
    Ok(())
}

impl Outbox {
    /// Opens (creating if needed) the outbox at `path`.
    ///
    /// A new file is created with mode 0600 before SQLite opens it: the outbox holds what the
    /// board's applications report, and SQLite gives its -wal and -shm files the database's mode.
    pub fn open(path: &Path, limits: Limits) -> Result<Self, OutboxError> {
        tether_protocol::private_fs::create_file(path).map_err(|source| OutboxError::Create {
            path: path.to_path_buf(),
            source,
        })?;
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: an acknowledged record survives a power cut, not only a crash of the agent.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn, limits })
    }

    /// Appends records durably in one transaction and returns their sequence numbers.
    pub fn append(&mut self, records: &[NewRecord]) -> Result<Vec<u64>, OutboxError> {
        for r in records {
            if r.size() > self.limits.max_bytes {
                return Err(OutboxError::TooLarge {
                    size: r.size(),
                    limit: self.limits.max_bytes,
                });
            }
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut seqs = Vec::with_capacity(records.len());
        let mut bytes = 0i64;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO records (ts_ms, kind, topic, level, payload, size) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for r in records {
                insert.execute(params![
                    r.ts_ms,
                    r.kind.as_str(),
                    r.topic,
                    r.level.map(Level::as_str),
                    r.payload,
                    r.size() as i64
                ])?;
                seqs.push(tx.last_insert_rowid() as u64);
                bytes += r.size() as i64;
            }
        }
        add_counter(&tx, "rows", records.len() as i64)?;
        add_counter(&tx, "bytes", bytes)?;
        let dropped = enforce_limits(&tx, self.limits)?;
        if dropped > 0 {
            tracing::warn!("outbox full: dropped the {dropped} oldest records");
        }
        tx.commit()?;
        Ok(seqs)
    }

    /// Turns drops not yet reported into one `tether/outbox/dropped` warning event (appended
    /// like any record, so it reaches the relay exactly once); returns the count reported.
    /// The uploader calls this, so many drops while the relay is unreachable become one event.
    pub fn report_drops(&mut self) -> Result<u64, OutboxError> {
        // Looked at without the write lock first: the uploader asks before every batch, and an
        // IMMEDIATE transaction there would wait on every producer's commit.
        if counter(&self.conn, "dropped_unreported")? <= 0 {
            return Ok(0);
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let unreported = counter(&tx, "dropped_unreported")?.max(0) as u64;
        if unreported == 0 {
            return Ok(0);
        }
        // The report needs room too; what it pushes out is counted in the report itself, so
        // a full outbox does not produce a chain of reports.
        let placeholder =
            serde_json::json!({ "dropped": u64::MAX, "dropped_total": u64::MAX }).to_string();
        let size = (DROPPED_TOPIC.len() + placeholder.len()) as i64;
        tx.execute(
            "INSERT INTO records (ts_ms, kind, topic, level, payload, size) VALUES (?1, 'event', ?2, 'warning', ?3, ?4)",
            params![now_ms(), DROPPED_TOPIC, placeholder, size],
        )?;
        let report_seq = tx.last_insert_rowid();
        add_counter(&tx, "rows", 1)?;
        add_counter(&tx, "bytes", size)?;
        let pushed_out = enforce_limits(&tx, self.limits)?;
        let dropped = unreported + pushed_out;
        let total = counter(&tx, "dropped_total")?;
        let payload = serde_json::json!({ "dropped": dropped, "dropped_total": total }).to_string();
        tx.execute(
            "UPDATE records SET payload = ?2 WHERE seq = ?1",
            params![report_seq, payload],
        )?;
        tx.execute(
            "UPDATE counters SET value = 0 WHERE name = 'dropped_unreported'",
            [],
        )?;
        tx.commit()?;
        Ok(dropped)
    }

    /// Records with `seq > after`, oldest first, at most `max_records` and about `max_bytes`.
    ///
    /// A row that no longer decodes (the file was altered outside the agent, or a disk bit
    /// flipped) would otherwise stop every later record from ever leaving the board; it is
    /// deleted instead and counted as dropped, so it is reported like any other loss.
    pub fn batch_after(
        &self,
        after: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, OutboxError> {
        let mut out = Vec::new();
        let mut corrupt = Vec::new();
        {
            let mut stmt = self.conn.prepare_cached(
                "SELECT seq, ts_ms, kind, topic, level, payload, size FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let mut rows = stmt.query(params![after as i64, max_records as i64])?;
            let mut bytes = 0usize;
            while let Some(row) = rows.next()? {
                let seq = row.get::<_, i64>(0)? as u64;
                let size = row.get::<_, i64>(6).map_or(0, |s| s.max(0) as usize);
                if !out.is_empty() && bytes + size > max_bytes {
                    break;
                }
                match decode(row, seq) {
                    Ok(r) => {
                        out.push(r);
                        bytes += size;
                    }
                    Err(e) => {
                        tracing::error!("{e}; dropping it");
                        corrupt.push(seq);
                    }
                }
            }
        }
        if !corrupt.is_empty() {
            self.drop_corrupt(&corrupt)?;
        }
        Ok(out)
    }

    /// Deletes undecodable rows and counts them as dropped (and not yet reported).
    fn drop_corrupt(&self, seqs: &[u64]) -> Result<(), OutboxError> {
        // IMMEDIATE: take the write lock up front, so a producer committing meanwhile makes
        // this wait (busy timeout) instead of failing the upgrade from a read snapshot.
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let mut n = 0i64;
        for seq in seqs {
            let size: Option<i64> = tx
                .query_row(
                    "SELECT size FROM records WHERE seq = ?1",
                    params![*seq as i64],
                    |r| r.get(0),
                )
                .optional()
                .unwrap_or(None);
            if tx.execute("DELETE FROM records WHERE seq = ?1", params![*seq as i64])? > 0 {
                n += 1;
                add_counter(&tx, "bytes", -size.unwrap_or(0).max(0))?;
            }
        }
        add_counter(&tx, "rows", -n)?;
        add_counter(&tx, "dropped_total", n)?;
        add_counter(&tx, "dropped_unreported", n)?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes everything up to and including `upto`, which the relay has stored.
    pub fn ack(&mut self, upto: u64) -> Result<u64, OutboxError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (rows, bytes): (i64, i64) = tx.query_row(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records WHERE seq <= ?1",
            params![upto as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        tx.execute("DELETE FROM records WHERE seq <= ?1", params![upto as i64])?;
        add_counter(&tx, "rows", -rows)?;
        add_counter(&tx, "bytes", -bytes)?;
        tx.execute(
            "UPDATE counters SET value = MAX(value, ?1) WHERE name = 'acked_upto'",
            params![upto as i64],
        )?;
        let now = now_ms();
        tx.execute(
            "UPDATE counters SET value = ?1 WHERE name = 'last_ack_ms'",
            params![now],
        )?;
        update_rate(&tx, rows, now)?;
        tx.commit()?;
        Ok(rows as u64)
    }

    /// Current state, for `agent telemetry status`.
    pub fn status(&self) -> Result<OutboxStatus, OutboxError> {
        let c = |name| counter(&self.conn, name).map(|v| v.max(0) as u64);
        let oldest: Option<i64> = self
            .conn
            .query_row("SELECT ts_ms FROM records ORDER BY seq LIMIT 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        let last_seq: Option<i64> = self
            .conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'records'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let last_ack = c("last_ack_ms")? as i64;
        let now = now_ms();
        let upload_rate = if last_ack > 0 && now - last_ack < RATE_STALE_MS {
            c("rate_milli_per_s")? as f64 / 1000.0
        } else {
            0.0
        };
        Ok(OutboxStatus {
            queued_rows: c("rows")?,
            queued_bytes: c("bytes")?,
            oldest_ts_ms: oldest,
            dropped_total: c("dropped_total")?,
            acked_upto: c("acked_upto")?,
            last_ack_ms: (last_ack > 0).then_some(last_ack),
            last_seq: last_seq.unwrap_or(0).max(0) as u64,
            oldest_age_ms: oldest.map(|ts| (now - ts).max(0)),
            upload_rate,
        })
    }
}

/// One outbox row as a record; the error names the row.
fn decode(row: &rusqlite::Row<'_>, seq: u64) -> Result<Record, OutboxError> {
    let corrupt = |message: String| OutboxError::Corrupt { seq, message };
    let text = |i: usize| row.get::<_, String>(i).map_err(|e| corrupt(e.to_string()));
    let kind: Kind = text(2)?.parse().map_err(corrupt)?;
    let level = match row
        .get::<_, Option<String>>(4)
        .map_err(|e| corrupt(e.to_string()))?
    {
        Some(l) => Some(l.parse::<Level>().map_err(corrupt)?),
        None => None,
    };
    let payload = serde_json::from_str(&text(5)?).map_err(|e| corrupt(e.to_string()))?;
    Ok(Record {
        seq,
        ts_ms: row.get(1).map_err(|e| corrupt(e.to_string()))?,
        kind,
        topic: text(3)?,
        level,
        payload,
    })
}

/// Counts `acked` records into the current rate window; a window of at least
/// [`RATE_WINDOW_MS`] closes into `rate_milli_per_s` (records per second, times 1000, since
/// the counters are integers).
fn update_rate(conn: &Connection, acked: i64, now: i64) -> rusqlite::Result<()> {
    let since = counter(conn, "rate_since_ms")?;
    let count = counter(conn, "rate_count")? + acked;
    let set = |name: &str, value: i64| {
        conn.execute(
            "UPDATE counters SET value = ?2 WHERE name = ?1",
            params![name, value],
        )
    };
    // A first ack, or one after a stall, starts a fresh window.
    if since <= 0 || now - since > RATE_STALE_MS {
        set("rate_since_ms", now)?;
        set("rate_count", acked)?;
        return Ok(());
    }
    let elapsed = now - since;
    if elapsed >= RATE_WINDOW_MS {
        set(
            "rate_milli_per_s",
            count.saturating_mul(1_000_000) / elapsed,
        )?;
        set("rate_since_ms", now)?;
        set("rate_count", 0)?;
    } else {
        set("rate_count", count)?;
    }
    Ok(())
}

/// Drops the oldest records until both bounds hold; returns how many were dropped.
fn enforce_limits(conn: &Connection, limits: Limits) -> rusqlite::Result<u64> {
    let rows = counter(conn, "rows")?.max(0) as u64;
    let bytes = counter(conn, "bytes")?.max(0) as u64;
    if rows <= limits.max_rows && bytes <= limits.max_bytes {
        return Ok(0);
    }
    let mut excess_rows = rows.saturating_sub(limits.max_rows);
    let mut excess_bytes = bytes.saturating_sub(limits.max_bytes) as i64;
    let mut stmt = conn.prepare("SELECT seq, size FROM records ORDER BY seq")?;
    let mut rows_iter = stmt.query([])?;
    let mut last = None;
    let (mut n, mut freed) = (0u64, 0i64);
    while excess_rows > 0 || excess_bytes > 0 {
        let Some(row) = rows_iter.next()? else { break };
        let (seq, size): (i64, i64) = (row.get(0)?, row.get(1)?);
        last = Some(seq);
        n += 1;
        freed += size;
        excess_rows = excess_rows.saturating_sub(1);
        excess_bytes -= size;
    }
    drop(rows_iter);
    drop(stmt);
    if let Some(last) = last {
        conn.execute("DELETE FROM records WHERE seq <= ?1", params![last])?;
        add_counter(conn, "rows", -(n as i64))?;
        add_counter(conn, "bytes", -freed)?;
        add_counter(conn, "dropped_total", n as i64)?;
        add_counter(conn, "dropped_unreported", n as i64)?;
    }
    Ok(n)
}

/// Path of the outbox in `state_dir`.
pub fn path(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join(OUTBOX_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    type R = Result<(), Box<dyn std::error::Error>>;

    fn rec(i: usize) -> NewRecord {
        NewRecord {
            ts_ms: 1_000 + i as i64,
            kind: Kind::Metric,
            topic: "t".into(),
            level: None,
            payload: format!("{i}"),
        }
    }

    const BIG: Limits = Limits {
        max_rows: 1_000_000,
        max_bytes: 1 << 30,
    };

    #[test]
    fn append_batch_ack_and_sequence_survive_reopen() -> R {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("o.db");
        let mut o = Outbox::open(&p, BIG)?;
        let seqs = o.append(&(0..10).map(rec).collect::<Vec<_>>())?;
        assert_eq!(seqs, (1..=10).collect::<Vec<u64>>());
        let batch = o.batch_after(3, 4, 1 << 20)?;
        assert_eq!(
            batch.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![4, 5, 6, 7]
        );
        assert_eq!(batch[0].payload, serde_json::json!(3));
        assert_eq!(o.ack(10)?, 10);
        drop(o);
        let mut o = Outbox::open(&p, BIG)?;
        // Sequence numbers are never reused, even after everything was deleted.
        assert_eq!(o.append(&[rec(0)])?, vec![11]);
        let st = o.status()?;
        assert_eq!((st.queued_rows, st.acked_upto, st.last_seq), (1, 10, 11));
        Ok(())
    }

    #[test]
    fn a_corrupt_row_is_dropped_and_counted_not_a_stall() -> R {
        let dir = tempfile::tempdir()?;
        let mut o = Outbox::open(&dir.path().join("o.db"), BIG)?;
        o.append(&(0..5).map(rec).collect::<Vec<_>>())?;
        o.conn
            .execute("UPDATE records SET payload = '{broken' WHERE seq = 2", [])?;
        o.conn
            .execute("UPDATE records SET kind = 'blob' WHERE seq = 4", [])?;
        let batch = o.batch_after(0, 100, 1 << 20)?;
        assert_eq!(
            batch.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 3, 5]
        );
        let st = o.status()?;
        assert_eq!((st.queued_rows, st.dropped_total), (3, 2));
        assert_eq!(st.queued_bytes, 3 * 2);
        assert_eq!(o.report_drops()?, 2);
        Ok(())
    }

    #[test]
    fn upload_rate_is_measured_over_windows() -> R {
        let dir = tempfile::tempdir()?;
        let o = Outbox::open(&dir.path().join("o.db"), BIG)?;
        let rate = |o: &Outbox| counter(&o.conn, "rate_milli_per_s");
        update_rate(&o.conn, 100, 1_000_000)?;
        update_rate(&o.conn, 2_000, 1_002_000)?;
        assert_eq!(rate(&o)?, 0, "window still open");
        update_rate(&o.conn, 3_000, 1_005_000)?;
        // 5,100 records over 5 s: 1020 records/s.
        assert_eq!(rate(&o)?, 1_020_000);
        // After a stall a new window starts rather than averaging over the silence.
        update_rate(&o.conn, 10, 1_100_000)?;
        update_rate(&o.conn, 490, 1_105_000)?;
        assert_eq!(rate(&o)?, 100_000);
        Ok(())
    }

    #[test]
    fn bounds_drop_the_oldest_and_report_it() -> R {
        let dir = tempfile::tempdir()?;
        let mut o = Outbox::open(
            &dir.path().join("o.db"),
            Limits {
                max_rows: 5,
                max_bytes: 1 << 20,
            },
        )?;
        for i in 0..8 {
            o.append(&[rec(i)])?;
        }
        let st = o.status()?;
        assert_eq!((st.queued_rows, st.dropped_total), (5, 3));
        let kept = o.batch_after(0, 100, 1 << 20)?;
        assert_eq!(
            kept.first().map(|r| r.payload.clone()),
            Some(serde_json::json!(3))
        );
        // Many drops become one report, which makes room for itself and counts that too.
        assert_eq!(o.report_drops()?, 4);
        let kept = o.batch_after(0, 100, 1 << 20)?;
        let last = kept.last().ok_or("empty")?;
        assert_eq!(last.topic, DROPPED_TOPIC);
        assert_eq!(last.payload["dropped"], 4);
        assert_eq!(o.status()?.dropped_total, 4);
        assert_eq!(o.report_drops()?, 0);
        let mut small = Outbox::open(
            &dir.path().join("b.db"),
            Limits {
                max_rows: 100,
                max_bytes: 10,
            },
        )?;
        let big = NewRecord {
            payload: "x".repeat(20),
            ..rec(0)
        };
        assert!(matches!(
            small.append(&[big]),
            Err(OutboxError::TooLarge { .. })
        ));
        Ok(())
    }
}
