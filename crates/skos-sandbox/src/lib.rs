//! A fake machine, for `skos demo` and the tests (`skos-testsupport`
//! builds its trees with these functions): a sysfs tree with the kernel's
//! shape under a root of its own, and a small tmpfs to fill.
//!
//! * [`sysfs`]: hwmon devices (`devices/.../hwmon/hwmonN`, linked from
//!   `class/hwmon/hwmonN` by a relative symlink), temperatures as integer
//!   millidegrees with a newline, heated as wholes ([`sysfs::heat`]); and
//!   cpufreq policies (`devices/system/cpu/cpufreq/policyN`).
//! * [`tmpfs`]: a tmpfs of a given size mounted on a dir of the sandbox
//!   (mount(2); needs root), detached on drop.
//!
//! Nothing here touches a path outside the root it is given.

pub mod sysfs;
pub mod tmpfs;

use std::path::PathBuf;

/// What failed, and on which path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mount a tmpfs on {}: {source} (mounting needs root)", .path.display())]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
