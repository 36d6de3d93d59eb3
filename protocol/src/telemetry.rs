//! Telemetry, logs and events on the wire: the records and the frames of the
//! `tether-telemetry` channel.
//!
//! A frame is a 4-byte big-endian length, then one version byte, then a JSON body. The length
//! covers version and body and is bounded by [`MAX_FRAME`], so a corrupt or hostile length can
//! neither exhaust memory nor desynchronise the stream silently: the reader rejects it and the
//! channel is closed.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

/// Session subsystem of the telemetry channel (device → relay).
pub const TELEMETRY_SUBSYSTEM: &str = "tether-telemetry";

pub use crate::frame::{FRAME_VERSION, MAX_FRAME};

/// What a record is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A measurement.
    Metric,
    /// A log line.
    Log,
    /// A notification with a level.
    Event,
}

impl Kind {
    /// The lower-case name used on the wire and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Metric => "metric",
            Kind::Log => "log",
            Kind::Event => "event",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "metric" => Ok(Kind::Metric),
            "log" => Ok(Kind::Log),
            "event" => Ok(Kind::Event),
            other => Err(format!(
                "unknown kind {other:?} (expected metric, log or event)"
            )),
        }
    }
}

/// Severity of an event.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Informational.
    Info,
    /// Needs attention.
    Warning,
    /// Needs action now.
    Critical,
}

impl Level {
    /// The lower-case name used on the wire and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Critical => "critical",
        }
    }
}

impl std::str::FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "info" => Ok(Level::Info),
            "warning" => Ok(Level::Warning),
            "critical" => Ok(Level::Critical),
            other => Err(format!(
                "unknown level {other:?} (expected info, warning or critical)"
            )),
        }
    }
}

/// One record as it travels from the device outbox to the relay's sink.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Monotonic per-device sequence number, never reused.
    pub seq: u64,
    /// Producer timestamp, milliseconds since the Unix epoch (UTC).
    pub ts_ms: i64,
    /// What the record is.
    pub kind: Kind,
    /// Topic (metric name, log source, event name).
    pub topic: String,
    /// Level, for events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
    /// The payload, JSON.
    pub payload: serde_json::Value,
}

/// A message on the telemetry channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Frame {
    /// Device → relay: records in ascending `seq` order.
    Batch {
        /// The records.
        records: Vec<Record>,
    },
    /// Relay → device: every record up to and including `upto` is committed in storage.
    Ack {
        /// Highest committed sequence number.
        upto: u64,
    },
}

pub use crate::frame::FrameError;

/// Encodes a frame.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    crate::frame::encode(frame)
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
) -> Result<(), FrameError> {
    crate::frame::write(w, frame).await
}

/// Reads one frame; `Ok(None)` at a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, FrameError> {
    crate::frame::read(r).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> Record {
        Record {
            seq,
            ts_ms: 1_700_000_000_000,
            kind: Kind::Event,
            topic: "door".into(),
            level: Some(Level::Warning),
            payload: serde_json::json!({"open": true}),
        }
    }

    #[tokio::test]
    async fn frames_round_trip() -> Result<(), FrameError> {
        let frames = vec![
            Frame::Batch {
                records: vec![record(1), record(2)],
            },
            Frame::Ack { upto: 2 },
        ];
        let mut bytes = Vec::new();
        for f in &frames {
            write_frame(&mut bytes, f).await?;
        }
        let mut r = &bytes[..];
        for f in &frames {
            assert_eq!(read_frame(&mut r).await?.as_ref(), Some(f));
        }
        assert!(read_frame(&mut r).await?.is_none());
        Ok(())
    }

    #[tokio::test]
    async fn float_payloads_arrive_exactly() -> Result<(), FrameError> {
        // Values that JSON's shortest decimal form carries exactly, but that a parser which
        // is not correctly rounded reads back one unit in the last place off.
        // (-8.200421741784317e-22, -4.8214852579471443e83 and 6.872828076840475e-242, as bits
        // so that the test does not depend on how the literals are parsed.)
        for bits in [
            0xbb8e_faf6_1527_a5ed_u64,
            0xd14f_c4a5_f7fb_32b2,
            0x0ddd_547a_895a_21d2,
        ] {
            let value = f64::from_bits(bits);
            let frame = Frame::Batch {
                records: vec![Record {
                    payload: serde_json::json!({ "v": value }),
                    ..record(1)
                }],
            };
            let bytes = encode(&frame)?;
            assert_eq!(read_frame(&mut &bytes[..]).await?, Some(frame), "{value:e}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn bad_frames_are_rejected() {
        let huge = (MAX_FRAME as u32 + 1).to_be_bytes();
        assert!(matches!(
            read_frame(&mut &huge[..]).await,
            Err(FrameError::Length(_))
        ));
        let zero = 0u32.to_be_bytes();
        assert!(matches!(
            read_frame(&mut &zero[..]).await,
            Err(FrameError::Length(0))
        ));
        let mut v2 = 3u32.to_be_bytes().to_vec();
        v2.extend_from_slice(&[2, b'{', b'}']);
        assert!(matches!(
            read_frame(&mut &v2[..]).await,
            Err(FrameError::Version(2))
        ));
        let mut junk = 4u32.to_be_bytes().to_vec();
        junk.extend_from_slice(&[1, b'x', b'y', b'z']);
        assert!(matches!(
            read_frame(&mut &junk[..]).await,
            Err(FrameError::Body(_))
        ));
        // Cut inside the length prefix: an error, not a clean end of the stream.
        let cut = [0u8, 0, 0];
        assert!(matches!(
            read_frame(&mut &cut[..]).await,
            Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof
        ));
        let truncated = [0u8, 0, 0, 9, 1, b'{'];
        assert!(matches!(
            read_frame(&mut &truncated[..]).await,
            Err(FrameError::Io(_))
        ));
    }
}
