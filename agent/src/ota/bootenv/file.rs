//! A plain `name=value` file as a boot environment.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use super::{BootEnv, BootEnvError, check_common_name, io_err, read_optional, replace_file};

/// A plain key=value file for tests and boards whose boot script reads a file (written to a temp
/// file, fsynced, renamed, directory fsynced).
///
/// The file holds `name=value` lines (UTF-8); empty lines and lines starting with `#` are
/// skipped when reading, and a later line overrides an earlier one. Writes produce the
/// variables sorted by name, one per line (comments are not kept). A missing file is an empty
/// environment. Values cannot contain newlines or carriage returns.
#[derive(Debug)]
pub struct FileEnv {
    path: PathBuf,
    guard: Mutex<()>,
}

impl FileEnv {
    /// The environment file at `path` (created by the first write).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            guard: Mutex::new(()),
        }
    }

    fn load(&self) -> Result<BTreeMap<String, String>, BootEnvError> {
        let Some(bytes) = read_optional(&self.path)
            .map_err(io_err(format!("reading {}", self.path.display())))?
        else {
            return Ok(BTreeMap::new());
        };
        let corrupt = |message: String| BootEnvError::Corrupt {
            env: self.describe(),
            message,
        };
        let text = String::from_utf8(bytes).map_err(|_| corrupt("not UTF-8 text".into()))?;
        let mut vars = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once('=') {
                Some((name, value)) if !name.is_empty() => {
                    vars.insert(name.to_owned(), value.to_owned());
                }
                _ => {
                    return Err(corrupt(format!(
                        "line {}: expected name=value, found {line:?}",
                        index + 1
                    )));
                }
            }
        }
        Ok(vars)
    }
}

impl BootEnv for FileEnv {
    fn read(&self) -> Result<BTreeMap<String, String>, BootEnvError> {
        self.load()
    }

    fn write(&self, changes: &BTreeMap<String, Option<String>>) -> Result<(), BootEnvError> {
        let env = self.describe();
        for (name, value) in changes {
            check_common_name(&env, name)?;
            if let Some(value) = value {
                let reason = if value.contains('\n') {
                    "contains a newline"
                } else if value.contains('\r') {
                    // Lines are read with their `\r\n` ending removed, so a value ending in a
                    // carriage return would not read back as written.
                    "contains a carriage return"
                } else if value.contains('\0') {
                    "contains a NUL byte"
                } else {
                    continue;
                };
                return Err(BootEnvError::InvalidValue {
                    env,
                    name: name.clone(),
                    reason,
                });
            }
        }
        let _guard = self
            .guard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = self.load()?;
        let mut vars = old.clone();
        for (name, value) in changes {
            match value {
                Some(value) => vars.insert(name.clone(), value.clone()),
                None => vars.remove(name),
            };
        }
        if vars == old {
            return Ok(());
        }
        let text: String = vars
            .iter()
            .map(|(name, value)| format!("{name}={value}\n"))
            .collect();
        replace_file(&self.path, text.as_bytes())
            .map_err(io_err(format!("{env}: replacing {}", self.path.display())))
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ota::bootenv::test_support::set;
    use std::error::Error;

    type TestResult = Result<(), Box<dyn Error>>;

    #[test]
    fn round_trip_creates_sorts_and_deletes() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bootenv");
        let env = FileEnv::new(path.clone());
        assert!(env.read()?.is_empty());
        env.write(&set(&[
            ("BOOT_ORDER", Some("A B")),
            ("BOOT_B_LEFT", Some("3")),
            ("BOOT_A_LEFT", Some("3")),
        ]))?;
        assert_eq!(
            std::fs::read_to_string(&path)?,
            "BOOT_A_LEFT=3\nBOOT_B_LEFT=3\nBOOT_ORDER=A B\n"
        );
        env.write(&set(&[("BOOT_B_LEFT", None), ("BOOT_A_LEFT", Some("a=b"))]))?;
        let read = env.read()?;
        assert_eq!(read.get("BOOT_A_LEFT").map(String::as_str), Some("a=b"));
        assert_eq!(read.len(), 2);
        assert_eq!(env.describe(), format!("file {}", path.display()));
        Ok(())
    }

    #[test]
    fn comments_and_blank_lines_are_skipped_and_bad_lines_reported() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bootenv");
        std::fs::write(&path, "# slots\n\nBOOT_ORDER=A B\nBOOT_ORDER=B A\n")?;
        let env = FileEnv::new(path.clone());
        assert_eq!(
            env.read()?.get("BOOT_ORDER").map(String::as_str),
            Some("B A")
        );
        std::fs::write(&path, "BOOT_ORDER=A B\ngarbage\n")?;
        let err = env.read().err().ok_or("read succeeded")?;
        assert_eq!(
            err.to_string(),
            format!(
                "file {}: line 2: expected name=value, found \"garbage\"",
                path.display()
            )
        );
        Ok(())
    }

    #[test]
    fn newlines_in_values_are_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bootenv");
        let env = FileEnv::new(path.clone());
        let err = env
            .write(&set(&[("a", Some("1")), ("b", Some("x\ny"))]))
            .err()
            .ok_or("write succeeded")?;
        assert!(
            err.to_string()
                .contains("invalid value for b: contains a newline"),
            "{err}"
        );
        assert!(!path.exists(), "nothing was written");
        Ok(())
    }

    #[test]
    fn carriage_returns_in_values_are_refused() -> TestResult {
        // Found by a property test: `a` set to "\r" was written as "a=\r\n" and read back as
        // "" (the line ending \r\n is removed whole).
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bootenv");
        let env = FileEnv::new(path.clone());
        let err = env
            .write(&set(&[("a", Some("\r"))]))
            .err()
            .ok_or("write succeeded")?;
        assert!(
            err.to_string()
                .contains("invalid value for a: contains a carriage return"),
            "{err}"
        );
        assert!(!path.exists(), "nothing was written");
        Ok(())
    }
}
