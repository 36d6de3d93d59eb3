//! Property tests of the frame reader (`tether_protocol::frame`) and of the telemetry channel's
//! frames (`tether_protocol::telemetry`): whatever bytes a peer sends, the reader returns a
//! frame or an error and never panics; every frame the encoder writes reads back unchanged; a
//! damaged frame is refused or reads as something the encoder would write again.
//!
//! Each property runs [`CASES`] cases; set `TETHER_FUZZ_CASES` to run more, e.g.
//! `TETHER_FUZZ_CASES=100000 cargo test -p tether-protocol --test fuzz_frames`.

mod common;

use std::io::Cursor;

use common::{fail, json_value, mutation};
use proptest::prelude::*;
use serde_json::Value;
use tether_protocol::frame::{self, FRAME_VERSION, FrameError, MAX_FRAME};
use tether_protocol::telemetry::{self, Frame, Kind, Level, Record};

/// Cases per property: 512 keeps each property under a second in a debug build on a 2-core
/// machine (a frame is a few hundred bytes of JSON), so the file stays well under the 30 s
/// budget of a bounded run.
const CASES: u32 = 512;

/// Runs a future to completion on a fresh single-threaded runtime (the reader is async).
fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(fail)?;
    Ok(runtime.block_on(future))
}

/// Reads one frame from `bytes`; also returns how many bytes the reader consumed.
fn read_value(bytes: &[u8]) -> Result<(Result<Option<Value>, FrameError>, u64), TestCaseError> {
    let mut cursor = Cursor::new(bytes);
    let result = block_on(frame::read::<_, Value>(&mut cursor))?;
    Ok((result, cursor.position()))
}

fn read_telemetry(bytes: &[u8]) -> Result<Result<Option<Frame>, FrameError>, TestCaseError> {
    block_on(telemetry::read_frame(&mut &bytes[..]))
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Metric), Just(Kind::Log), Just(Kind::Event)]
}

fn level() -> impl Strategy<Value = Level> {
    prop_oneof![
        Just(Level::Info),
        Just(Level::Warning),
        Just(Level::Critical)
    ]
}

fn record() -> impl Strategy<Value = Record> {
    (
        any::<u64>(),
        any::<i64>(),
        kind(),
        ".{0,16}",
        prop::option::of(level()),
        json_value(),
    )
        .prop_map(|(seq, ts_ms, kind, topic, level, payload)| Record {
            seq,
            ts_ms,
            kind,
            topic,
            level,
            payload,
        })
}

/// Any telemetry frame.
fn telemetry_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        prop::collection::vec(record(), 0..4).prop_map(|records| Frame::Batch { records }),
        any::<u64>().prop_map(|upto| Frame::Ack { upto }),
    ]
}

/// Bytes shaped like a frame, so that the reader gets past the length check: a length that is
/// right, or off by a little, or anything; a version byte that is usually right; a body that is
/// JSON, almost-JSON or noise.
fn frame_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let body = prop_oneof![
        json_value().prop_map(|v| v.to_string().into_bytes()),
        json_value().prop_map(|v| {
            let mut text = v.to_string().into_bytes();
            text.truncate(text.len() / 2);
            text
        }),
        prop::collection::vec(any::<u8>(), 0..64),
    ];
    let version = prop_oneof![4 => Just(FRAME_VERSION), 1 => any::<u8>()];
    let length = prop_oneof![
        4 => Just(None),
        1 => (-2i64..=2).prop_map(Some),
        1 => any::<u32>().prop_map(|n| Some(i64::from(n) + i64::from(u32::MAX))),
    ];
    let tail = prop::collection::vec(any::<u8>(), 0..8);
    (body, version, length, tail).prop_map(|(body, version, length, tail)| {
        let right = body.len() as i64 + 1;
        let len = match length {
            None => right,
            // Values past u32::MAX wrap to an arbitrary prefix.
            Some(n) if n > i64::from(u32::MAX) => n - i64::from(u32::MAX),
            Some(delta) => (right + delta).max(0),
        };
        let mut out = (len as u32).to_be_bytes().to_vec();
        out.push(version);
        out.extend_from_slice(&body);
        out.extend_from_slice(&tail);
        out
    })
}

/// Checks what the reader made of `bytes` against the format: a frame only from a well-formed
/// prefix (consuming exactly that prefix), the error the format calls for otherwise, and a
/// clean end only for an empty stream.
fn check_read(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (result, consumed) = read_value(bytes)?;
    let prefix_len = bytes
        .get(..4)
        .map(|p| u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize);
    match result {
        Ok(None) => prop_assert!(bytes.is_empty(), "clean end reported for {bytes:?}"),
        Ok(Some(value)) => {
            let len = prefix_len.ok_or_else(|| fail("a frame from under 4 bytes"))?;
            prop_assert!((1..=MAX_FRAME).contains(&len));
            prop_assert_eq!(
                consumed,
                4 + len as u64,
                "consumed more or less than the frame"
            );
            prop_assert_eq!(bytes[4], FRAME_VERSION);
            let body: Value = serde_json::from_slice(&bytes[5..4 + len]).map_err(fail)?;
            prop_assert_eq!(&body, &value);
            // What was read, written again, reads back the same.
            let again = frame::encode(&value).map_err(fail)?;
            prop_assert_eq!(read_value(&again)?.0.map_err(fail)?, Some(value));
        }
        Err(FrameError::Length(len)) => {
            prop_assert_eq!(Some(len), prefix_len);
            prop_assert!(len == 0 || len > MAX_FRAME);
        }
        Err(FrameError::Version(v)) => {
            prop_assert_eq!(Some(&v), bytes.get(4));
            prop_assert_ne!(v, FRAME_VERSION);
        }
        Err(FrameError::Io(e)) => {
            prop_assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
            let whole = prefix_len.map(|len| 4 + len);
            prop_assert!(
                whole.is_none_or(|whole| bytes.len() < whole),
                "end of stream reported for a complete frame"
            );
        }
        Err(FrameError::Body(_)) => {
            let len = prefix_len.ok_or_else(|| fail("a body error from under 4 bytes"))?;
            prop_assert!(serde_json::from_slice::<Value>(&bytes[5..4 + len]).is_err());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(common::config(CASES))]

    /// Arbitrary bytes: a frame, or the error the format calls for.
    #[test]
    fn arbitrary_bytes_read_as_the_format_says(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        check_read(&bytes)?;
    }

    /// Bytes shaped like a frame reach the version and body checks.
    #[test]
    fn frame_like_bytes_read_as_the_format_says(bytes in frame_like_bytes()) {
        check_read(&bytes)?;
    }

    /// Every telemetry frame, encoded, reads back unchanged, and a stream of them reads back
    /// in order and then ends cleanly.
    #[test]
    fn telemetry_frames_round_trip(frames in prop::collection::vec(telemetry_frame(), 1..4)) {
        let mut stream = Vec::new();
        for f in &frames {
            stream.extend(telemetry::encode(f).map_err(fail)?);
        }
        let mut r = &stream[..];
        for f in &frames {
            let got = block_on(telemetry::read_frame(&mut r))?.map_err(fail)?;
            prop_assert_eq!(got.as_ref(), Some(f));
        }
        prop_assert!(block_on(telemetry::read_frame(&mut r))?.map_err(fail)?.is_none());
    }

    /// A damaged telemetry frame is refused, or reads as a frame that the encoder writes and
    /// reads back unchanged. A cut frame is never taken for a clean end of the stream.
    #[test]
    fn damaged_telemetry_frames_are_refused_or_consistent(
        f in telemetry_frame(),
        m in mutation(),
    ) {
        let good = telemetry::encode(&f).map_err(fail)?;
        let bad = m.apply(&good);
        check_read(&bad)?;
        match read_telemetry(&bad)? {
            Ok(None) => prop_assert!(bad.is_empty()),
            Ok(Some(decoded)) => {
                let again = telemetry::encode(&decoded).map_err(fail)?;
                prop_assert_eq!(read_telemetry(&again)?.map_err(fail)?, Some(decoded));
            }
            Err(_) => {}
        }
    }
}

/// A stream that ends inside the 4-byte length prefix was cut in the middle of a frame: that
/// is an error, not the clean end of the stream.
#[test]
fn a_cut_length_prefix_is_an_error() -> Result<(), TestCaseError> {
    for cut in [&[0u8][..], &[0, 0], &[0, 0, 0]] {
        let result = read_telemetry(cut)?;
        assert!(
            matches!(&result, Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof),
            "{cut:?}: {result:?}"
        );
    }
    assert!(read_telemetry(&[])?.map_err(fail)?.is_none());
    Ok(())
}
