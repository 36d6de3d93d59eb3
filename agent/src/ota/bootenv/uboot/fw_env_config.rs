//! The classic `fw_env.config` format that `fw_printenv` and `fw_setenv` read: which device
//! holds each copy of the environment, at which offset, and how large it is, with numbers read
//! exactly as those tools read them (see [`super::UbootEnv::from_config`]).

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{BootEnvError, MAX_ENV_SIZE, UbootCopy};

/// Parses the classic `fw_env.config` format (see [`UbootEnv::from_config`]).
pub(super) fn parse_config(path: &Path, text: &str) -> Result<Vec<UbootCopy>, BootEnvError> {
    let line_err = |line: usize, message: String| BootEnvError::ConfigLine {
        path: path.to_owned(),
        line,
        message,
    };
    let mut copies: Vec<UbootCopy> = Vec::new();
    let mut first_line = 0;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let fields: Vec<&str> = raw
            .split_whitespace()
            .take_while(|field| !field.starts_with('#'))
            .collect();
        if fields.is_empty() {
            continue;
        }
        if fields.len() < 3 {
            return Err(line_err(
                line,
                format!(
                    "expected DEVICE OFFSET ENV_SIZE [SECTOR_SIZE [NUM_SECTORS]], found {} field{}",
                    fields.len(),
                    if fields.len() == 1 { "" } else { "s" }
                ),
            ));
        }
        if fields.len() > 6 {
            return Err(line_err(
                line,
                format!(
                    "expected DEVICE OFFSET ENV_SIZE [SECTOR_SIZE [NUM_SECTORS]], found {} fields",
                    fields.len()
                ),
            ));
        }
        if copies.len() == 2 {
            return Err(line_err(
                line,
                "a third environment line; one line is a single environment, two a redundant one"
                    .into(),
            ));
        }
        let device = PathBuf::from(fields[0]);
        if fields[0].starts_with("/dev/mtd") || fields[0].starts_with("/dev/ubi") {
            return Err(line_err(
                line,
                format!("{}: MTD and UBI devices are not supported", fields[0]),
            ));
        }
        let offset = parse_c_integer(fields[1]).ok_or_else(|| {
            line_err(
                line,
                format!(
                    "OFFSET {:?} is not a number (0x… hexadecimal, 0… octal, or decimal)",
                    fields[1]
                ),
            )
        })?;
        let size = parse_hex(fields[2]).ok_or_else(|| {
            line_err(
                line,
                format!(
                    "ENV_SIZE {:?} is not a hexadecimal number (fw_printenv reads it as hexadecimal, with or without 0x)",
                    fields[2]
                ),
            )
        })?;
        let size = usize::try_from(size)
            .ok()
            .filter(|&size| size > 0)
            .ok_or_else(|| line_err(line, format!("ENV_SIZE {:?} is out of range", fields[2])))?;
        if size > MAX_ENV_SIZE {
            return Err(line_err(
                line,
                format!(
                    "ENV_SIZE {:?} is larger than the {MAX_ENV_SIZE:#x} bytes a U-Boot environment may have here",
                    fields[2]
                ),
            ));
        }
        for (name, field) in ["SECTOR_SIZE", "NUM_SECTORS"].iter().zip(&fields[3..]) {
            if parse_hex(field).is_none() {
                return Err(line_err(
                    line,
                    format!("{name} {field:?} is not a hexadecimal number"),
                ));
            }
        }
        if let Some(field) = fields.get(5)
            && field.parse::<i32>().is_err()
        {
            return Err(line_err(
                line,
                format!("the sixth field {field:?} is not a decimal number"),
            ));
        }
        let offset = if offset < 0 {
            let device_size = File::open(&device)
                .and_then(|mut f| f.seek(SeekFrom::End(0)))
                .map_err(|e| {
                    line_err(
                        line,
                        format!(
                            "negative OFFSET needs the size of {}: {e}",
                            device.display()
                        ),
                    )
                })?;
            let resolved = i128::from(device_size) + i128::from(offset);
            u64::try_from(resolved).map_err(|_| {
                line_err(
                    line,
                    format!(
                        "OFFSET {offset} is before the start of {} ({device_size} bytes)",
                        device.display()
                    ),
                )
            })?
        } else {
            offset.unsigned_abs()
        };
        if let Some(first) = copies.first()
            && first.size != size
        {
            return Err(line_err(
                line,
                format!(
                    "ENV_SIZE {size:#x} differs from line {first_line}'s {:#x}; both copies must have the same size",
                    first.size
                ),
            ));
        }
        if copies.is_empty() {
            first_line = line;
        }
        copies.push(UbootCopy {
            device,
            offset,
            size,
        });
    }
    if copies.is_empty() {
        return Err(BootEnvError::Config {
            what: path.display().to_string(),
            message: "no environment line (DEVICE OFFSET ENV_SIZE)".into(),
        });
    }
    Ok(copies)
}

/// A C integer as `strtoll(…, 0)` reads it: optional sign, then `0x…` hexadecimal, `0…` octal or
/// decimal. The whole text must be the number.
pub(super) fn parse_c_integer(text: &str) -> Option<i64> {
    let (negative, unsigned) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(hex) = unsigned
        .strip_prefix("0x")
        .or_else(|| unsigned.strip_prefix("0X"))
    {
        (16, hex)
    } else if unsigned.len() > 1 && unsigned.starts_with('0') {
        (8, &unsigned[1..])
    } else {
        (10, unsigned)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let value = i64::try_from(u64::from_str_radix(digits, radix).ok()?).ok()?;
    Some(if negative { -value } else { value })
}

/// A hexadecimal number as `%x` reads it: with or without `0x`. The whole text must be the
/// number.
pub(super) fn parse_hex(text: &str) -> Option<u64> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn config_lines_are_read_like_fw_printenv() -> TestResult {
        let path = Path::new("/etc/fw_env.config");
        let copies = parse_config(
            path,
            "# MMC environment\n\
             \n\
             /dev/mmcblk0 0x3c0000 0x20000   # first copy\n\
             \t/dev/mmcblk0\t3932160 20000 200 1\n",
        )?;
        assert_eq!(
            copies,
            vec![
                UbootCopy {
                    device: "/dev/mmcblk0".into(),
                    offset: 0x3c0000,
                    size: 0x20000,
                },
                UbootCopy {
                    device: "/dev/mmcblk0".into(),
                    offset: 3932160,
                    size: 0x20000,
                },
            ]
        );
        let copies = parse_config(path, "/dev/mmcblk0boot1 010 0X4000\n")?;
        assert_eq!(copies[0].offset, 8, "a leading 0 is octal, as with %lli");
        assert_eq!(copies[0].size, 0x4000);
        Ok(())
    }

    #[test]
    fn config_errors_carry_line_numbers() {
        let path = Path::new("/etc/fw_env.config");
        let cases = [
            (
                "# c\n/dev/mmcblk0 0x0\n",
                "line 2: expected DEVICE OFFSET ENV_SIZE",
            ),
            (
                "/dev/mmcblk0 zero 0x4000\n",
                "line 1: OFFSET \"zero\" is not a number",
            ),
            (
                "/dev/mmcblk0 0 16k\n",
                "line 1: ENV_SIZE \"16k\" is not a hexadecimal number",
            ),
            (
                "/dev/mmcblk0 0 0\n",
                "line 1: ENV_SIZE \"0\" is out of range",
            ),
            (
                "/dev/mmcblk0 0 4000 sector\n",
                "line 1: SECTOR_SIZE \"sector\"",
            ),
            (
                "/dev/mmcblk0 0 4000 1 2 3 4\n",
                "line 1: expected DEVICE OFFSET ENV_SIZE",
            ),
            (
                "/dev/mtd1 0 4000\n",
                "line 1: /dev/mtd1: MTD and UBI devices are not supported",
            ),
            (
                "/dev/a 0 4000\n/dev/b 0 8000\n",
                "line 2: ENV_SIZE 0x8000 differs from line 1's 0x4000",
            ),
            (
                "/dev/a 0 4000\n/dev/b 0 4000\n#\n/dev/c 0 4000\n",
                "line 4: a third environment line",
            ),
            ("# nothing\n\n", "no environment line"),
        ];
        for (text, expected) in cases {
            match parse_config(path, text) {
                Ok(copies) => panic!("{text:?} parsed as {copies:?}"),
                Err(err) => {
                    let message = err.to_string();
                    assert!(message.starts_with("/etc/fw_env.config"), "{message}");
                    assert!(message.contains(expected), "{message} lacks {expected}");
                }
            }
        }
    }

    #[test]
    fn numbers_are_parsed_like_c() {
        assert_eq!(parse_c_integer("0x10"), Some(16));
        assert_eq!(parse_c_integer("-0x10"), Some(-16));
        assert_eq!(parse_c_integer("010"), Some(8));
        assert_eq!(parse_c_integer("0"), Some(0));
        assert_eq!(parse_c_integer("42"), Some(42));
        assert_eq!(parse_c_integer("0x"), None);
        assert_eq!(parse_c_integer("09"), None);
        assert_eq!(parse_c_integer("-"), None);
        assert_eq!(parse_c_integer("--1"), None);
        assert_eq!(parse_hex("4000"), Some(0x4000));
        assert_eq!(parse_hex("0x4000"), Some(0x4000));
        assert_eq!(parse_hex("0x"), None);
        assert_eq!(parse_hex("-1"), None);
    }
}
