//! The bytes of a U-Boot environment copy, as U-Boot and libubootenv lay them out: a CRC32,
//! for a redundant environment a flags byte, then `name=value\0` entries, an empty entry, and
//! padding. Which of two copies is current, parsing a data area the way U-Boot imports it, and
//! serialising variables into one. Pure functions over bytes.

use std::collections::BTreeMap;

use super::BootEnvError;

/// Variables as stored: name bytes → value bytes (values keep their bytes as they are, so the
/// variables the agent does not change are written back untouched).
pub(super) type RawVars = BTreeMap<Vec<u8>, Vec<u8>>;

/// A copy as read from its device.
pub(super) struct CopyState {
    /// The flags byte (0 for a single environment).
    pub(super) flags: u8,
    /// The data area, if the CRC is valid.
    pub(super) data: Option<Vec<u8>>,
}

/// Checks a block's CRC and splits off its flags.
pub(super) fn decode(block: &[u8], header: usize) -> CopyState {
    let stored = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
    let flags = if header == 5 { block[4] } else { 0 };
    let data = &block[header..];
    CopyState {
        flags,
        data: (crc32fast::hash(data) == stored).then(|| data.to_vec()),
    }
}

/// The current copy, as U-Boot's `env_import_redund` chooses it.
pub(super) fn select_current(states: &[CopyState]) -> Option<usize> {
    match states {
        [only] => only.data.is_some().then_some(0),
        [a, b] => match (a.data.is_some(), b.data.is_some()) {
            (false, false) => None,
            (true, false) => Some(0),
            (false, true) => Some(1),
            (true, true) => Some(newer_of(a.flags, b.flags)),
        },
        _ => None,
    }
}

/// Of two valid copies with these flags, the index of the newer one.
pub(super) fn newer_of(first: u8, second: u8) -> usize {
    match (first, second) {
        (0xff, 0) => 1,
        (0, 0xff) => 0,
        (a, b) if b > a => 1,
        _ => 0,
    }
}

/// Parses a data area as U-Boot's `himport_r` does: NUL-terminated entries up to an empty one;
/// leading blanks skipped; `#` entries are comments; `name` and `name=` delete `name`; a later
/// entry overrides an earlier one. Values are kept as stored (U-Boot would also unescape
/// backslashes; `fw_printenv` does not).
pub(super) fn parse_data(data: &[u8]) -> Result<RawVars, String> {
    let mut vars = RawVars::new();
    let mut rest = data;
    while let Some((&first, _)) = rest.split_first() {
        if first == 0 {
            break;
        }
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        let mut entry = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or_default();
        while let [b' ' | b'\t', tail @ ..] = entry {
            entry = tail;
        }
        if entry.first() == Some(&b'#') {
            continue;
        }
        match entry.iter().position(|&b| b == b'=') {
            None => {
                vars.remove(entry);
            }
            Some(0) => {
                return Err(format!(
                    "entry {:?} has an empty name (U-Boot rejects such an environment)",
                    String::from_utf8_lossy(entry)
                ));
            }
            Some(eq) if eq + 1 == entry.len() => {
                vars.remove(&entry[..eq]);
            }
            Some(eq) => {
                vars.insert(entry[..eq].to_vec(), entry[eq + 1..].to_vec());
            }
        }
    }
    Ok(vars)
}

/// Serialises variables into a data area of `size` bytes, sorted by name, padded with `0x00`.
pub(super) fn encode(env: &str, vars: &RawVars, size: usize) -> Result<Vec<u8>, BootEnvError> {
    let needed = vars
        .iter()
        .map(|(name, value)| name.len() + 1 + value.len() + 1)
        .sum::<usize>()
        + 1;
    if needed > size {
        return Err(BootEnvError::Full {
            env: env.to_owned(),
            needed,
            available: size,
        });
    }
    let mut data = Vec::with_capacity(size);
    for (name, value) in vars {
        data.extend_from_slice(name);
        data.push(b'=');
        data.extend_from_slice(value);
        data.push(0);
    }
    data.resize(size, 0);
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redundant_selection_follows_u_boot() {
        let state = |valid: bool, flags: u8| CopyState {
            flags,
            data: valid.then(Vec::new),
        };
        let pick =
            |a: (bool, u8), b: (bool, u8)| select_current(&[state(a.0, a.1), state(b.0, b.1)]);
        assert_eq!(pick((true, 1), (true, 2)), Some(1));
        assert_eq!(pick((true, 7), (true, 6)), Some(0));
        assert_eq!(pick((true, 0xff), (true, 0)), Some(1), "0 follows 255");
        assert_eq!(pick((true, 0), (true, 0xff)), Some(0), "0 follows 255");
        assert_eq!(pick((true, 0xfe), (true, 0xff)), Some(1));
        assert_eq!(
            pick((true, 5), (true, 5)),
            Some(0),
            "a tie goes to the first copy"
        );
        assert_eq!(pick((false, 9), (true, 1)), Some(1));
        assert_eq!(pick((true, 1), (false, 9)), Some(0));
        assert_eq!(pick((false, 1), (false, 2)), None);
        assert_eq!(select_current(&[state(true, 0)]), Some(0));
        assert_eq!(select_current(&[state(false, 0)]), None);
    }

    #[test]
    fn data_area_is_parsed_like_u_boot() -> Result<(), String> {
        let parsed =
            parse_data(b"b=1\0  a=2\0#comment=x\0c=\0d=4\0d\0e=5\0b=6\0f=x=y\0\0g=ignored\0")?;
        let expected: RawVars = [("a", "2"), ("b", "6"), ("e", "5"), ("f", "x=y")]
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(parsed, expected);
        assert_eq!(parse_data(b"\0a=1\0")?, RawVars::new());
        assert_eq!(
            parse_data(b"a=1")?.len(),
            1,
            "unterminated at the end of the area"
        );
        assert!(parse_data(b"=x\0\0").is_err());
        Ok(())
    }
}
