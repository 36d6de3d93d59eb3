//! Property tests of the boot environment backends (`tether_agent::ota::bootenv`), through their
//! public API on files: U-Boot environment blocks (single and redundant) and `fw_env.config`
//! files, GRUB environment blocks and plain `name=value` files. Whatever bytes the files hold,
//! reading returns variables or an error, never a panic; a write followed by a read gives
//! exactly the old variables with the change applied (the variables not changed survive
//! untouched); numbers in `fw_env.config` are read the way `fw_printenv` reads them.
//!
//! Each property runs [`CASES`] cases; set `TETHER_FUZZ_CASES` to run more, e.g.
//! `TETHER_FUZZ_CASES=20000 cargo test -p tether-agent --test fuzz_bootenv`.

mod common;

use common::fail;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tether_agent::ota::bootenv::{BootEnv, BootEnvError, FileEnv, GrubEnv, UbootCopy, UbootEnv};

/// Cases per property: 256. A case writes, reads and rewrites a small file or two (a few
/// hundred microseconds each in a debug build), so each property takes about a second on a
/// 2-core machine and the file stays well under the 30 s budget of a bounded run.
const CASES: u32 = 256;

/// ENV_SIZE of the U-Boot environments under test: small, so that random data fills them.
const ENV_SIZE: usize = 0x100;

fn config() -> ProptestConfig {
    common::config(CASES)
}

/// A change set: variables to set (`Some`) or delete (`None`).
type Changes = BTreeMap<String, Option<String>>;

/// What reading should give after `changes` are applied to `old` (for U-Boot, an empty value
/// deletes, as U-Boot has no empty variables).
fn applied(
    old: &BTreeMap<String, String>,
    changes: &Changes,
    empty_deletes: bool,
) -> BTreeMap<String, String> {
    let mut new = old.clone();
    for (name, value) in changes {
        match value {
            Some(v) if !(empty_deletes && v.is_empty()) => {
                new.insert(name.clone(), v.clone());
            }
            _ => {
                new.remove(name);
            }
        }
    }
    new
}

/// Names every backend can hold (and some it cannot, to see them refused).
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z_][A-Za-z0-9_]{0,8}",
        1 => "[ -~]{1,6}",
    ]
}

/// Values, mostly printable, sometimes with the characters some backends refuse.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[ -~]{0,10}",
        1 => "[ -~\\\\\r\n\t\u{0}\u{e9}]{0,6}",
    ]
}

fn changes() -> impl Strategy<Value = Changes> {
    prop::collection::btree_map(name(), prop::option::of(value()), 1..4)
}

/// Writes `bytes` to a fresh file in `dir` and returns its path.
fn file(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, TestCaseError> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(fail)?;
    Ok(path)
}

/// A U-Boot copy block (`[crc][flags]?[data]`) holding `data`, padded with `pad` to
/// [`ENV_SIZE`]; its CRC is right unless `bad_crc`.
fn uboot_block(data: &[u8], pad: u8, flags: Option<u8>, bad_crc: bool) -> Vec<u8> {
    let header = if flags.is_some() { 5 } else { 4 };
    let mut area = data.to_vec();
    area.resize(ENV_SIZE - header, pad);
    area.truncate(ENV_SIZE - header);
    let mut crc = crc32fast::hash(&area);
    if bad_crc {
        crc ^= 1;
    }
    let mut block = crc.to_le_bytes().to_vec();
    block.extend(flags);
    block.extend_from_slice(&area);
    block
}

/// U-Boot data areas: `name=value\0` entries of all kinds (blanks, comments, deletions,
/// duplicates, missing `=`) or raw bytes.
fn uboot_data() -> impl Strategy<Value = Vec<u8>> {
    let entry = prop_oneof![
        ("[A-Za-z_]{1,6}", "[ -~]{0,8}").prop_map(|(n, v)| format!("{n}={v}").into_bytes()),
        "[ \t]{1,2}[a-z]{1,3}=[a-z]{0,3}".prop_map(String::into_bytes),
        "#[ -~]{0,6}".prop_map(String::into_bytes),
        "[a-z]{1,3}=?".prop_map(String::into_bytes),
        prop::collection::vec(1u8..=255, 1..8),
    ];
    prop_oneof![
        3 => prop::collection::vec(entry, 0..8).prop_map(|entries| {
            let mut data = Vec::new();
            for e in entries {
                data.extend_from_slice(&e);
                data.push(0);
            }
            data
        }),
        1 => prop::collection::vec(any::<u8>(), 0..ENV_SIZE),
    ]
}

fn single(device: &Path) -> UbootEnv {
    UbootEnv::new(vec![UbootCopy {
        device: device.to_owned(),
        offset: 0,
        size: ENV_SIZE,
    }])
    .with_lock_file(None)
}

fn redundant(device: &Path) -> UbootEnv {
    UbootEnv::new(vec![
        UbootCopy {
            device: device.to_owned(),
            offset: 0,
            size: ENV_SIZE,
        },
        UbootCopy {
            device: device.to_owned(),
            offset: ENV_SIZE as u64,
            size: ENV_SIZE,
        },
    ])
    .with_lock_file(None)
}

/// Reads `env`, writes `changes`, and checks what a read then gives: the old variables with the
/// change applied, or the old variables if the write was refused.
fn check_write(
    env: &dyn BootEnv,
    changes: &Changes,
    empty_deletes: bool,
) -> Result<(), TestCaseError> {
    let Ok(old) = env.read() else {
        return Ok(());
    };
    match env.write(changes) {
        Ok(()) => {
            let new = env.read().map_err(fail)?;
            prop_assert_eq!(
                new,
                applied(&old, changes, empty_deletes),
                "{}",
                env.describe()
            );
        }
        Err(e) => {
            prop_assert!(e.to_string().contains(&env.describe()), "{e}");
            prop_assert_eq!(
                env.read().map_err(fail)?,
                old,
                "a refused write changed the environment"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// A single U-Boot environment of any bytes reads as variables or an error; the variables
    /// it yields are ones U-Boot can hold.
    #[test]
    fn uboot_blocks_of_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2 * ENV_SIZE)) {
        let dir = tempfile::tempdir().map_err(fail)?;
        let env = single(&file(dir.path(), "env.img", &bytes)?);
        match env.read() {
            Ok(vars) => {
                prop_assert!(bytes.len() >= ENV_SIZE);
                for (name, value) in &vars {
                    prop_assert!(!name.is_empty() && !name.contains(['=', '\0']), "{name:?}");
                    prop_assert!(!value.is_empty() && !value.contains('\0'), "{value:?}");
                }
            }
            Err(BootEnvError::TooSmall { .. }) => prop_assert!(bytes.len() < ENV_SIZE),
            Err(_) => {}
        }
    }

    /// A single U-Boot environment with a valid CRC over any data: a write followed by a read
    /// gives the old variables with the change applied.
    #[test]
    fn uboot_single_writes_keep_the_rest(data in uboot_data(), pad in any::<u8>(), changes in changes()) {
        let dir = tempfile::tempdir().map_err(fail)?;
        let block = uboot_block(&data, pad, None, false);
        let env = single(&file(dir.path(), "env.img", &block)?);
        check_write(&env, &changes, true)?;
    }

    /// A redundant U-Boot environment in any state (each copy valid or not, any flags): reads
    /// pick the copy U-Boot picks, a write goes to the other copy, leaves the current one
    /// untouched, and reads back as the old variables with the change applied.
    #[test]
    fn uboot_redundant_writes_keep_the_rest(
        copies in prop::collection::vec((uboot_data(), any::<u8>(), any::<bool>()), 2),
        changes in changes(),
    ) {
        let dir = tempfile::tempdir().map_err(fail)?;
        let mut image = Vec::new();
        for (data, flags, bad_crc) in &copies {
            image.extend(uboot_block(data, 0, Some(*flags), *bad_crc));
        }
        let path = file(dir.path(), "env.img", &image)?;
        let env = redundant(&path);
        let (valid_a, valid_b) = (!copies[0].2, !copies[1].2);
        let (fa, fb) = (copies[0].1, copies[1].1);
        let current = match (valid_a, valid_b) {
            (false, false) => None,
            (true, false) => Some(0),
            (false, true) => Some(1),
            // U-Boot: 0 beats 255 (wraparound), else the higher flags, a tie to the first.
            (true, true) if (fa, fb) == (0xff, 0) => Some(1),
            (true, true) if (fa, fb) == (0, 0xff) => Some(0),
            (true, true) => Some(usize::from(fb > fa)),
        };
        match current {
            None => {
                let bad_crc = matches!(env.read(), Err(BootEnvError::BadCrc { .. }));
                prop_assert!(bad_crc, "read without a valid copy");
            }
            Some(current) => {
                let before = std::fs::read(&path).map_err(fail)?;
                check_write(&env, &changes, true)?;
                let after = std::fs::read(&path).map_err(fail)?;
                let range = current * ENV_SIZE..(current + 1) * ENV_SIZE;
                prop_assert_eq!(&after[range.clone()], &before[range], "the current copy was overwritten");
            }
        }
    }

    /// `fw_env.config` text of any kind is copies or an error, never a panic.
    #[test]
    fn fw_env_config_of_any_text(text in prop_oneof![
        ".{0,80}",
        "([ \t]{0,2}(/dev/[a-z0-9]{1,6}|[a-z#]{1,4})([ \t]{1,2}[-+0-9a-fxX]{1,12}){0,6}[ \t]{0,2}(#[ -~]{0,5})?\n){0,4}",
    ]) {
        let dir = tempfile::tempdir().map_err(fail)?;
        let path = file(dir.path(), "fw_env.config", text.as_bytes())?;
        match UbootEnv::from_config(&path) {
            Ok(env) => {
                let copies = env.copies();
                prop_assert!(copies.len() == 1 || copies.len() == 2);
                prop_assert!(copies.iter().all(|c| c.size == copies[0].size && c.size > 0));
            }
            Err(e) => prop_assert!(e.to_string().contains("fw_env.config"), "{e}"),
        }
    }

    /// Numbers in `fw_env.config` are read like `fw_printenv` reads them: OFFSET as a C integer
    /// (decimal, `0x` hexadecimal or `0` octal), ENV_SIZE and SECTOR_SIZE always hexadecimal.
    #[test]
    fn fw_env_config_numbers(
        offset in 0u64..(1 << 40),
        offset_radix in 0u8..3,
        size in 1u64..(1 << 24),
        size_prefix in any::<bool>(),
        sector in prop::option::of(1u64..(1 << 20)),
        comment in prop::option::of("[ -~]{0,10}"),
    ) {
        let dir = tempfile::tempdir().map_err(fail)?;
        let offset_text = match offset_radix {
            0 => offset.to_string(),
            1 => format!("0x{offset:x}"),
            _ => format!("0{offset:o}"),
        };
        let size_text = if size_prefix { format!("0x{size:X}") } else { format!("{size:x}") };
        let mut line = format!("/dev/mmcblk0 {offset_text}\t{size_text}");
        if let Some(sector) = sector {
            line.push_str(&format!(" {sector:x}"));
        }
        if let Some(comment) = comment {
            line.push_str(&format!(" #{comment}"));
        }
        let path = file(dir.path(), "fw_env.config", format!("# board\n{line}\n").as_bytes())?;
        let env = UbootEnv::from_config(&path).map_err(fail)?;
        prop_assert_eq!(
            env.copies(),
            &[UbootCopy {
                device: PathBuf::from("/dev/mmcblk0"),
                offset,
                size: size as usize,
            }][..],
            "{}", line
        );
    }

    /// A configuration of any ENV_SIZE and OFFSET pointing at a small file reads as variables
    /// or an error: never an attempt to allocate what the file cannot hold.
    #[test]
    fn fw_env_config_sizes_are_checked_before_reading(
        size in prop_oneof![1u64..0x1000, any::<u64>()],
        offset in prop_oneof![0u64..0x1000, any::<u64>()],
        file_len in 0usize..0x2000,
    ) {
        let dir = tempfile::tempdir().map_err(fail)?;
        let device = file(dir.path(), "env.img", &vec![0u8; file_len])?;
        let config = format!("{} {offset:#x} {size:x}\n", device.display());
        let path = file(dir.path(), "fw_env.config", config.as_bytes())?;
        if let Ok(env) = UbootEnv::from_config(&path) {
            let env = env.with_lock_file(None);
            if let Err(e) = env.read() {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }

    /// A GRUB environment file of any bytes reads as variables or an error.
    #[test]
    fn grub_blocks_of_any_bytes(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(any::<u8>(), 0..200).prop_map(|tail| {
            let mut b = b"# GRUB Environment Block\n".to_vec();
            b.extend(tail);
            b
        }),
    ]) {
        let dir = tempfile::tempdir().map_err(fail)?;
        let env = GrubEnv::new(file(dir.path(), "grubenv", &bytes)?);
        let result = env.read();
        prop_assert_eq!(
            result.is_ok(),
            bytes.starts_with(b"# GRUB Environment Block\n"),
            "{:?}", result
        );
    }

    /// A GRUB block of any lines (comments, escapes, duplicates, junk at the end): a write
    /// followed by a read gives the old variables with the change applied, and the block keeps
    /// its size.
    #[test]
    fn grub_writes_keep_the_rest(
        lines in prop::collection::vec(prop_oneof![
            ("[A-Za-z_]{1,6}", "[ -~]{0,8}").prop_map(|(n, v)| format!("{n}={v}\n")),
            "[a-z]{1,3}=[a-z\\\\]{0,3}\\\\\n[a-z]{0,3}\n",
            "#[ -~]{0,10}\n",
            "[ -~\n]{0,10}",
        ], 0..6),
        changes in changes(),
    ) {
        let dir = tempfile::tempdir().map_err(fail)?;
        let mut block = b"# GRUB Environment Block\n".to_vec();
        for l in &lines {
            block.extend_from_slice(l.as_bytes());
        }
        let size = block.len().max(1024);
        block.resize(size, b'#');
        let path = file(dir.path(), "grubenv", &block)?;
        let env = GrubEnv::new(path.clone());
        check_write(&env, &changes, false)?;
        prop_assert_eq!(std::fs::metadata(&path).map_err(fail)?.len(), size as u64);
    }

    /// A plain environment file of any bytes reads as variables or an error.
    #[test]
    fn plain_files_of_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..100)) {
        let dir = tempfile::tempdir().map_err(fail)?;
        let _ = FileEnv::new(file(dir.path(), "bootenv", &bytes)?).read();
    }

    /// A plain environment file: a write followed by a read gives the old variables with the
    /// change applied.
    #[test]
    fn plain_file_writes_keep_the_rest(
        initial in prop::collection::btree_map("[A-Za-z_]{1,6}", "[ -~]{0,8}", 0..4),
        changes in changes(),
    ) {
        let dir = tempfile::tempdir().map_err(fail)?;
        let text: String = initial.iter().map(|(n, v)| format!("{n}={v}\n")).collect();
        let env = FileEnv::new(file(dir.path(), "bootenv", text.as_bytes())?);
        prop_assert_eq!(env.read().map_err(fail)?, initial);
        check_write(&env, &changes, false)?;
    }
}
