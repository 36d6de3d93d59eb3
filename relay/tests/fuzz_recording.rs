//! Property tests of the session recording decoders (`tether_relay::recording`): the
//! asciicast reader takes any bytes to a recording or an error naming a line, never a panic,
//! and reads back exactly what the writer wrote, however the output was cut into packets; the
//! SFTP observer, which reads both directions of an engineer's sftp stream, takes any bytes
//! in any chunking without panicking, notes a bounded number of operations, and counts an
//! upload's bytes exactly whatever the chunking.
//!
//! Each property runs [`CASES`] cases; set `TETHER_FUZZ_CASES` to run more, e.g.
//! `TETHER_FUZZ_CASES=100000 cargo test -p tether-relay --test fuzz_recording`.

mod common;

use std::time::Duration;

use proptest::prelude::*;
use tether_relay::recording::cast::{self, CastWriter, Utf8Stream};
use tether_relay::recording::sftp::{MAX_OPS, SftpObserver};

/// Cases per property: 256. A case writes or reads a few KiB, about a millisecond in a debug
/// build, so the file runs in a few seconds on a 2-core machine.
const CASES: u32 = 256;

fn config() -> ProptestConfig {
    common::config(CASES)
}

/// Splits `data` at the given cut points.
fn chunks(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    let mut start = 0;
    for p in points {
        out.push(data[start..p].to_vec());
        start = p;
    }
    out.push(data[start..].to_vec());
    out
}

fn sftp_packet(kind: u8, id: u32, fields: &[&[u8]]) -> Vec<u8> {
    let mut body = vec![kind];
    body.extend_from_slice(&id.to_be_bytes());
    for f in fields {
        body.extend_from_slice(f);
    }
    let mut p = (body.len() as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&body);
    p
}

fn sftp_string(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_are_a_recording_or_a_line_error(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Err(e) = cast::read(&data[..]) {
            prop_assert!(e.to_string().contains("line") || e.to_string().contains("reading"), "{e}");
        }
    }

    #[test]
    fn events_after_a_valid_header_never_panic(lines in proptest::collection::vec(".{0,40}", 0..20)) {
        let text = format!("{{\"version\": 2, \"width\": 80, \"height\": 24}}\n{}", lines.join("\n"));
        if let Ok((_, events)) = cast::read(text.as_bytes()) {
            let mut out = Vec::new();
            prop_assert!(cast::play(&events, &mut out, f64::INFINITY, Duration::ZERO).is_ok());
        }
    }

    #[test]
    fn output_reads_back_exactly_however_it_was_cut(
        text in "\\PC{0,300}",
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut buf = Vec::new();
        {
            let header = CastWriter::<Vec<u8>>::header(80, 24, "xterm", "t".into());
            let mut w = CastWriter::new(&mut buf, &header).map_err(|e| TestCaseError::fail(e.to_string()))?;
            for c in chunks(text.as_bytes(), &cuts) {
                w.output(&c).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            w.finish().map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        let (_, events) = cast::read(&buf[..]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut played = Vec::new();
        cast::play(&events, &mut played, f64::INFINITY, Duration::ZERO)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(String::from_utf8_lossy(&played), text);
    }

    #[test]
    fn utf8_decoding_does_not_depend_on_chunking(
        data in proptest::collection::vec(any::<u8>(), 0..200),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut s = Utf8Stream::default();
        let mut got: String = chunks(&data, &cuts).iter().map(|c| s.decode(c)).collect();
        got.push_str(&s.finish());
        prop_assert_eq!(got, String::from_utf8_lossy(&data).into_owned());
    }

    #[test]
    fn the_sftp_observer_takes_any_stream(
        client in proptest::collection::vec(any::<u8>(), 0..4096),
        server in proptest::collection::vec(any::<u8>(), 0..4096),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let mut o = SftpObserver::default();
        for (a, b) in chunks(&client, &cuts).iter().zip(chunks(&server, &cuts).iter()) {
            o.client_bytes(a);
            o.server_bytes(b);
        }
        let (ops, _) = o.finish();
        prop_assert!(ops.len() <= MAX_OPS);
    }

    #[test]
    fn uploads_are_counted_exactly_however_they_are_cut(
        sizes in proptest::collection::vec(0usize..70_000, 1..4),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let mut o = SftpObserver::default();
        let open = sftp_packet(3, 1, &[&sftp_string(b"/tmp/f"), &0x1au32.to_be_bytes(), &0u32.to_be_bytes()]);
        o.client_bytes(&open);
        o.server_bytes(&sftp_packet(102, 1, &[&sftp_string(b"h")]));
        let mut writes = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            let data = vec![0x5au8; *n];
            writes.extend(sftp_packet(6, 2 + i as u32, &[&sftp_string(b"h"), &0u64.to_be_bytes(), &sftp_string(&data)]));
        }
        writes.extend(sftp_packet(4, 99, &[&sftp_string(b"h")]));
        for c in chunks(&writes, &cuts) {
            o.client_bytes(&c);
        }
        let (ops, _) = o.finish();
        let total: usize = sizes.iter().sum();
        prop_assert_eq!(ops.len(), 1);
        prop_assert_eq!(ops[0].bytes, total as u64);
        prop_assert_eq!(&ops[0].path, "/tmp/f");
    }
}
