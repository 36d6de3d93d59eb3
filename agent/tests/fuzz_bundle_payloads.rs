//! Property tests of the agent's reader of bundle image payloads
//! (`tether_agent::ota::image_copy::copy_image_any`), which decompresses zstd payloads straight
//! from a download: every payload the writer's settings produce reads back as its image and
//! consumes exactly its stored size; a damaged payload is refused or yields exactly the image
//! that was signed; arbitrary bytes as a payload are refused without a panic.
//!
//! Each property runs [`CASES`] cases; set `TETHER_FUZZ_CASES` to run more, e.g.
//! `TETHER_FUZZ_CASES=20000 cargo test -p tether-agent --test fuzz_bundle_payloads`.

mod common;

use common::fail;
use std::io::Cursor;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use sha2::{Digest, Sha256};
use tether_agent::ota::image_copy::copy_image_any;
use tether_protocol::bundle::{Compression, ImageEntry, ZSTD_LEVEL, ZSTD_WINDOW_LOG_MAX};

/// Cases per property: 1024. A case compresses and decompresses at most a few KiB, well under
/// a millisecond in a debug build (zstd itself is optimized C), so each property takes about
/// a second on a 2-core machine and the file stays well under the 30 s budget of a bounded run.
const CASES: u32 = 1024;

fn config() -> ProptestConfig {
    common::config(CASES)
}

/// Images that compress (repeated runs) and images that do not (noise).
fn image() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        prop::collection::vec((any::<u8>(), 1usize..200), 0..20)
            .prop_map(|runs| runs.into_iter().flat_map(|(b, n)| vec![b; n]).collect()),
    ]
}

/// The image compressed as `agent bundle create` does (its level and window).
fn compress(data: &[u8]) -> Result<Vec<u8>, TestCaseError> {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL).map_err(fail)?;
    encoder.window_log(ZSTD_WINDOW_LOG_MAX).map_err(fail)?;
    std::io::Write::write_all(&mut encoder, data).map_err(fail)?;
    encoder.finish().map_err(fail)
}

fn entry(data: &[u8], payload: &[u8], compression: Compression) -> ImageEntry {
    ImageEntry {
        class: "rootfs".into(),
        size: data.len() as u64,
        sha256: hex::encode(Sha256::digest(data)),
        stored_size: payload.len() as u64,
        compression,
    }
}

/// Reads one image from `stream` as the installer does; also how far it read.
fn read(stream: &[u8], entry: &ImageEntry) -> (Result<Vec<u8>, String>, u64) {
    let mut r = Cursor::new(stream);
    let mut out = Vec::new();
    let result = copy_image_any(&mut r, entry, &mut out, &mut |_| {})
        .map(|_| out)
        .map_err(|e| e.to_string());
    (result, r.position())
}

proptest! {
    #![proptest_config(config())]

    /// Every payload, compressed or not, reads back as its image and consumes exactly its
    /// stored size, whatever follows it in the bundle.
    #[test]
    fn payloads_round_trip(data in image(), zstd in any::<bool>(), next in prop::collection::vec(any::<u8>(), 0..16)) {
        let (payload, compression) = if zstd {
            (compress(&data)?, Compression::Zstd)
        } else {
            (data.clone(), Compression::None)
        };
        let e = entry(&data, &payload, compression);
        let mut stream = payload.clone();
        stream.extend_from_slice(&next);
        let (result, consumed) = read(&stream, &e);
        prop_assert_eq!(result.map_err(fail)?, data);
        prop_assert_eq!(consumed, payload.len() as u64);
    }

    /// A damaged compressed payload (a flipped bit, a cut, bytes added, or a stored size off
    /// by some) is refused, or yields exactly the image that was signed.
    #[test]
    fn damaged_payloads_are_refused_or_exact(
        data in image(),
        at in any::<usize>(),
        bit in 0u8..8,
        how in 0u8..4,
        delta in 1u64..64,
    ) {
        let payload = compress(&data)?;
        let mut e = entry(&data, &payload, Compression::Zstd);
        let mut bad = payload.clone();
        match how {
            0 => {
                let i = at % bad.len();
                bad[i] ^= 1 << bit;
            }
            1 => bad.truncate(at % bad.len()),
            2 => {
                bad.extend(std::iter::repeat_n(0u8, delta as usize));
                e.stored_size += delta;
            }
            _ => e.stored_size = e.stored_size.saturating_sub(delta),
        }
        if let (Ok(out), _) = read(&bad, &e) {
            prop_assert_eq!(out, data);
        }
    }

    /// Arbitrary bytes as a payload, for any entry, are refused or yield an image of exactly
    /// the entry's size and hash.
    #[test]
    fn arbitrary_payloads(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        size in 0u64..4096,
        stored in 0u64..600,
        zstd in any::<bool>(),
    ) {
        let e = ImageEntry {
            class: "rootfs".into(),
            size,
            sha256: hex::encode(Sha256::digest(&bytes)),
            stored_size: stored,
            compression: if zstd { Compression::Zstd } else { Compression::None },
        };
        if let (Ok(out), consumed) = read(&bytes, &e) {
            prop_assert_eq!(out.len() as u64, size);
            prop_assert_eq!(hex::encode(Sha256::digest(&out)), e.sha256);
            prop_assert_eq!(consumed, stored);
        }
    }
}
