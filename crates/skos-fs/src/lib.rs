//! Files pinned to what the configuration names.
//!
//! Every file SKOS writes, and every directory it cleans, is reached
//! through this crate:
//!
//! * [`open_dir`] opens a configured directory without following a symlink
//!   at any component (`openat2` with `RESOLVE_NO_SYMLINKS` where the kernel
//!   has it, a component-by-component `O_NOFOLLOW` walk where not);
//! * [`open_beneath`] reopens a path inside an open directory without
//!   following a symlink and without leaving its mount (`RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV`, or the same walk comparing
//!   mount ids);
//! * [`mount_id`] and [`stat_at`] tell mounts apart by mount id (`statx`
//!   `STATX_MNT_ID`, or `/proc/self/fdinfo`), so a bind mount of the same
//!   filesystem is still another mount;
//! * [`Dir::private`] opens (creating it `0700` when missing) a directory
//!   SKOS keeps its own files in, and refuses one owned by someone else or
//!   writable by group or others;
//! * [`Dir::write_atomic`], [`Dir::open_append`], [`Dir::read`] and
//!   [`Dir::remove`] work relative to that directory handle: new files are
//!   created exclusively (`O_CREAT | O_EXCL | O_NOFOLLOW`), mode `0600`, and
//!   replace their target by `renameat` inside the same directory;
//! * [`unsafe_ancestor`] names the parent of a directory that someone other
//!   than root (or SKOS's own user) could rename or replace.

mod dir;
mod error;
mod mount;
mod open;
mod trust;

pub use dir::{append_private, read_nofollow, remove_private, write_private, write_snapshot, Dir};
pub use error::{Error, Result};
pub use mount::{mount_id, stat_at, Entry};
pub use open::{open_beneath, open_dir, DIR_FLAGS};
pub use trust::{euid, unsafe_ancestor, UnsafeParent};
