//! Link changes as the kernel tells them, so the mesh healer looks at its
//! links at once rather than at the next monitor interval.
//!
//! A netlink socket (`NETLINK_ROUTE`) joined to the `RTNLGRP_LINK` group
//! receives a message whenever any link of the agent's network namespace
//! is added, removed or changes state (wireguard-go's tun device vanishing
//! with its process, `ip link set wg0 down`). Nothing is parsed: any such
//! message only asks for a look at the links (`ip`, `wg`), which judges
//! them as every look does. Joining the group needs no privilege. Only
//! the kernel's messages count ([`crate::netlink`]).
//!
//! The thread ends once the [`LinkWatch`] is dropped (within a second).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use crate::netlink::{recv_from_kernel, Received};

/// `RTMGRP_LINK`: the link group's bit in `nl_groups`.
const RTMGRP_LINK: u32 = 1;
/// A receive wakes at least this often, so a watch whose healer is gone ends.
const RECV_TIMEOUT: Duration = Duration::from_secs(1);
/// Stack of the watch's thread, bytes.
const STACK: usize = 128 * 1024;

/// Why link changes cannot be heard; the links are read every monitor
/// interval alone.
#[derive(Debug, thiserror::Error)]
pub enum LinkWatchError {
    #[error("cannot open a NETLINK_ROUTE socket: {0}")]
    Socket(#[source] io::Error),
    #[error("cannot join the link group: {0}")]
    Bind(#[source] io::Error),
    #[error("cannot start the link watch thread: {0}")]
    Thread(#[source] io::Error),
}

/// A link changed since the last [`LinkWatch::take`].
pub struct LinkWatch {
    changed: Arc<AtomicBool>,
}

impl LinkWatch {
    /// Listen for link changes on a thread of its own; each sets the flag
    /// and signals `arrivals`.
    ///
    /// # Errors
    /// [`LinkWatchError`]: which step failed.
    pub fn start(arrivals: Arc<Notify>) -> Result<Self, LinkWatchError> {
        // SAFETY: socket(2) with constant arguments; the fd is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(LinkWatchError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a new fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: a zeroed sockaddr_nl is valid; fields set after.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = RTMGRP_LINK;
        // SAFETY: `addr` is a sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(LinkWatchError::Bind(io::Error::last_os_error()));
        }
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: `tv` is a live timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(LinkWatchError::Socket(io::Error::last_os_error()));
        }
        let changed = Arc::new(AtomicBool::new(false));
        let weak = Arc::downgrade(&changed);
        std::thread::Builder::new()
            .name("skos-linkwatch".into())
            .stack_size(STACK)
            .spawn(move || watch(&fd, &weak, &arrivals))
            .map_err(LinkWatchError::Thread)?;
        Ok(LinkWatch { changed })
    }

    /// Whether a link changed since the last call.
    pub fn take(&self) -> bool {
        self.changed.swap(false, Ordering::AcqRel)
    }
}

fn watch(fd: &OwnedFd, changed: &Weak<AtomicBool>, arrivals: &Notify) {
    let mut buf = [0u8; 16384];
    let mut said_forged = false;
    loop {
        let received = recv_from_kernel(fd, &mut buf);
        let Some(flag) = changed.upgrade() else {
            return;
        };
        match received {
            Ok(Received::Kernel(_)) => {}
            // Not a link change: another process wrote to the socket.
            Ok(Received::Forged { port }) => {
                if !said_forged {
                    tracing::warn!(port, "link watch: a message not from the kernel dropped (another process wrote to the socket; /proc/net/netlink names the port's owner)");
                    said_forged = true;
                }
                continue;
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => continue,
                // Messages were dropped: something changed all the same.
                Some(libc::ENOBUFS) => {}
                _ => {
                    tracing::warn!(error = %e, "link watch: receive failed; links are read every monitor interval only from now on");
                    return;
                }
            },
        }
        flag.store(true, Ordering::Release);
        arrivals.notify_one();
    }
}
