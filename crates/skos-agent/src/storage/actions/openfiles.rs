//! Which files are held open for writing, read once per action run from
//! `<proc_root>/<pid>/fd/<fd>` (the link, followed by `stat`, gives the
//! open file's device and inode) and `<proc_root>/<pid>/fdinfo/<fd>` (its
//! `flags:` line, octal; access mode `O_WRONLY` or `O_RDWR` means writing).
//! A descriptor whose fdinfo cannot be read counts as open for writing (the
//! safe guess).

use skos_core::escape::ShowPath;
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const O_ACCMODE: u32 = 0o3;
const O_WRONLY: u32 = 0o1;
const O_RDWR: u32 = 0o2;

/// (device, inode) of every file open for writing, with one pid holding it.
#[derive(Debug, Default)]
pub(crate) struct OpenFiles {
    writers: HashMap<(u64, u64), u32>,
    /// Why open files are (partly) unknowable, when they are.
    pub unknown: Option<String>,
}

fn numeric(name: &std::ffi::OsStr) -> Option<u32> {
    let s = name.to_str()?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The `flags:` value of an fdinfo text.
pub(crate) fn parse_fdinfo_flags(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
}

impl OpenFiles {
    pub fn scan(proc_root: &Path) -> OpenFiles {
        let mut out = OpenFiles::default();
        let entries = match fs::read_dir(proc_root) {
            Ok(e) => e,
            Err(e) => {
                out.unknown = Some(format!(
                    "{} is unreadable ({e}): files open for writing cannot be known",
                    proc_root.escaped()
                ));
                return out;
            }
        };
        let mut pids = 0u64;
        let mut denied = 0u64;
        for entry in entries.flatten() {
            let Some(pid) = numeric(&entry.file_name()) else {
                continue;
            };
            pids += 1;
            let pid_dir = entry.path();
            let fds = match fs::read_dir(pid_dir.join("fd")) {
                Ok(f) => f,
                Err(e) => {
                    if e.kind() == std::io::ErrorKind::PermissionDenied {
                        denied += 1;
                    }
                    continue;
                }
            };
            for fd in fds.flatten() {
                let name = fd.file_name();
                if numeric(&name).is_none() {
                    continue;
                }
                let writing = match fs::read_to_string(pid_dir.join("fdinfo").join(&name)) {
                    Ok(text) => parse_fdinfo_flags(&text)
                        .map(|f| matches!(f & O_ACCMODE, O_WRONLY | O_RDWR))
                        .unwrap_or(true),
                    Err(_) => true,
                };
                if !writing {
                    continue;
                }
                // Follows the magic link to the open file itself.
                if let Ok(m) = fs::metadata(fd.path()) {
                    out.writers.entry((m.dev(), m.ino())).or_insert(pid);
                }
            }
        }
        if pids == 0 {
            out.unknown = Some(format!(
                "{} lists no processes: files open for writing cannot be known",
                proc_root.escaped()
            ));
        } else if denied > 0 {
            out.unknown = Some(format!(
                "the open files of {denied} of {pids} processes are unreadable: files they hold open for writing cannot be known"
            ));
        }
        out
    }

    /// A pid holding (dev, ino) open for writing.
    pub fn writer(&self, dev: u64, ino: u64) -> Option<u32> {
        self.writers.get(&(dev, ino)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_flags_are_octal() {
        let text = "pos:\t0\nflags:\t0102001\nmnt_id:\t25\nino:\t12\n";
        let f = parse_fdinfo_flags(text).unwrap();
        assert_eq!(f & O_ACCMODE, O_WRONLY);
        assert_eq!(
            parse_fdinfo_flags("flags:\t0100000\n").unwrap() & O_ACCMODE,
            0
        );
        assert_eq!(
            parse_fdinfo_flags("flags:\t02\n").unwrap() & O_ACCMODE,
            O_RDWR
        );
        assert_eq!(parse_fdinfo_flags("pos: 0\n"), None);
    }
}
