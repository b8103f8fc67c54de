//! Reading and writing single-value sysfs and cgroupfs files, and keeping
//! every path inside its root.

use skos_core::escape::ShowPath;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Writes `value` to an existing sysfs/cgroupfs file in one write.
pub(super) fn write_value(path: &Path, value: &str) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    file.write_all(value.as_bytes())
        .map_err(|e| Error::io(path, e))
}

pub(super) fn read_trimmed(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map(|text| text.trim().to_string())
        .map_err(|e| Error::io(path, e))
}

pub(super) fn parse_u64_at(path: &Path, text: &str) -> Result<u64> {
    text.trim()
        .parse()
        .map_err(|e: std::num::ParseIntError| Error::Parse {
            path: path.to_path_buf(),
            text: text.to_string(),
            reason: e.to_string(),
        })
}

pub(super) fn read_u64(path: &Path) -> Result<u64> {
    parse_u64_at(path, &read_trimmed(path)?)
}

/// Fails with [`Error::OutsideRoot`] unless `path`, symlinks resolved, is
/// inside `base`, symlinks resolved.
pub(super) fn ensure_inside(path: &Path, base: &Path) -> Result<()> {
    let real_base = fs::canonicalize(base).map_err(|e| Error::io(base, e))?;
    let real = fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
    if real.starts_with(&real_base) {
        Ok(())
    } else {
        tracing::warn!(path = %path.escaped(), resolved = %real.escaped(), root = %base.escaped(), "path escapes its root");
        Err(Error::OutsideRoot {
            path: path.to_path_buf(),
            root: base.to_path_buf(),
        })
    }
}
