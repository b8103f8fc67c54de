//! Who could rename or replace a directory: its parents' owners and modes.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The effective uid SKOS runs as.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Whether `uid` is trusted with SKOS's files: root or SKOS's own user.
fn trusted(uid: u32) -> bool {
    uid == 0 || uid == euid()
}

/// A parent of a configured directory that someone other than root (or
/// SKOS's own user) could rename or replace, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsafeParent {
    /// The offending parent (or the directory itself, when it is a symlink).
    pub parent: PathBuf,
    /// Why: "owned by uid 1000", "writable by group or others (mode 0777)",
    /// "a symlink".
    pub reason: String,
}

impl std::fmt::Display for UnsafeParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is {}", self.parent.display(), self.reason)
    }
}

/// The first parent of `dir` (from `/` down) that someone other than root
/// or SKOS's own user could use to swap `dir` for something else: one owned
/// by another user, one writable by group (other than group root) or
/// others (unless sticky, and then the next component on the way must be
/// owned by root or SKOS's user), or a symlink on the way (`dir` included).
/// Components that do not exist end the check. `None`: nothing found.
pub fn unsafe_ancestor(dir: &Path) -> Option<UnsafeParent> {
    let dir = std::path::absolute(dir).ok()?;
    let mut chain: Vec<PathBuf> = Vec::new();
    let mut cur = PathBuf::new();
    for c in dir.components() {
        cur.push(c);
        chain.push(cur.clone());
    }
    let last = chain.len().saturating_sub(1);
    for (i, p) in chain.iter().enumerate() {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return None;
        };
        if m.file_type().is_symlink() {
            return Some(UnsafeParent {
                parent: p.clone(),
                reason: "a symlink".into(),
            });
        }
        if i == last {
            break;
        }
        if !trusted(m.uid()) {
            return Some(UnsafeParent {
                parent: p.clone(),
                reason: format!("owned by uid {}", m.uid()),
            });
        }
        let mode = m.mode() & 0o7777;
        let writable = mode & 0o002 != 0 || (mode & 0o020 != 0 && m.gid() != 0);
        if !writable {
            continue;
        }
        if mode & 0o1000 == 0 {
            return Some(UnsafeParent {
                parent: p.clone(),
                reason: format!("writable by group or others (mode {mode:04o})"),
            });
        }
        // Sticky: others may add entries but not rename one they do not
        // own; the next component must be root's (or SKOS's).
        let Some(next) = chain.get(i + 1) else {
            break;
        };
        match std::fs::symlink_metadata(next) {
            Ok(n) if !trusted(n.uid()) => {
                return Some(UnsafeParent {
                    parent: p.clone(),
                    reason: format!(
                        "writable by others (mode {mode:04o}) and {} in it is owned by uid {}",
                        next.display(),
                        n.uid()
                    ),
                });
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_parent_writable_by_others_is_named() {
        let t = tempfile::tempdir().unwrap();
        let parent = t.path().join("p");
        let dir = parent.join("d");
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(unsafe_ancestor(&dir), None);
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o777)).unwrap();
        let u = unsafe_ancestor(&dir).unwrap();
        assert_eq!(u.parent, parent);
        assert!(u.reason.contains("0777"), "{u}");
        // Sticky and the child is ours: fine.
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(unsafe_ancestor(&dir), None);
        // A symlink on the way.
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&parent, t.path().join("l")).unwrap();
        let u = unsafe_ancestor(&t.path().join("l/d")).unwrap();
        assert_eq!(u.parent, t.path().join("l"));
        // What does not exist yet is not judged.
        assert_eq!(unsafe_ancestor(&dir.join("x/y")), None);
    }
}
