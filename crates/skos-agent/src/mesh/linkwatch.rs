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
//! Looks are asked for at most once per [`LOOK_GAP`]: a flapping link does
//! not keep `ip` and `wg` running back to back.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::netlink::{open_group, recv_from_kernel, OpenError, Received};

/// `RTMGRP_LINK`: the link group's bit in `nl_groups`.
const RTMGRP_LINK: u32 = 1;
/// The watch wakes at least this often (its `poll` times out), so a watch
/// whose healer is gone ends.
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
        let fd =
            open_group(libc::SOCK_RAW, libc::NETLINK_ROUTE, RTMGRP_LINK).map_err(|e| match e {
                OpenError::Socket(e) => LinkWatchError::Socket(e),
                OpenError::Bind(e) => LinkWatchError::Bind(e),
            })?;
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
    let mut pacer = Pacer::default();
    loop {
        let ready = match readable(fd, pacer.wait(Instant::now())) {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => false,
            Err(e) => {
                tracing::warn!(error = %e, "link watch: waiting for link changes failed; links are read every monitor interval only from now on");
                return;
            }
        };
        let Some(flag) = changed.upgrade() else {
            return;
        };
        let heard = if ready {
            match recv_from_kernel(fd, &mut buf) {
                Ok(Received::Kernel(_)) => true,
                // Not a link change: another process wrote to the socket.
                Ok(Received::Forged { port }) => {
                    if !said_forged {
                        tracing::warn!(port, "link watch: a message not from the kernel dropped (another process wrote to the socket; /proc/net/netlink names the port's owner)");
                        said_forged = true;
                    }
                    false
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN | libc::EINTR) => false,
                    // Messages were dropped: something changed all the same.
                    Some(libc::ENOBUFS) => true,
                    _ => {
                        tracing::warn!(error = %e, "link watch: receive failed; links are read every monitor interval only from now on");
                        return;
                    }
                },
            }
        } else {
            false
        };
        let now = Instant::now();
        let ask = if heard {
            pacer.heard(now)
        } else {
            pacer.due(now)
        };
        if ask {
            flag.store(true, Ordering::Release);
            arrivals.notify_one();
        }
    }
}

/// Whether `fd` has a message to read within `wait` (`poll(2)`).
fn readable(fd: &OwnedFd, wait: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(wait.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is one live pollfd, and one is the count passed.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n > 0)
}

/// The shortest time between two looks the watch asks for: a flapping
/// link, or links coming and going by the hundred, asks for at most one
/// look per gap; the last change of a burst is asked for at most one gap
/// late, and a lone change at once.
const LOOK_GAP: Duration = Duration::from_millis(100);

/// When to ask for a look, from the changes heard (times in, answers out).
#[derive(Debug, Default)]
struct Pacer {
    /// When a look was last asked for.
    asked: Option<Instant>,
    /// A change heard and not asked for yet.
    waiting: bool,
}

impl Pacer {
    /// A change was heard at `now`: whether to ask for a look now.
    fn heard(&mut self, now: Instant) -> bool {
        self.waiting = true;
        self.due(now)
    }

    /// Whether a change heard earlier is to be asked for at `now`.
    fn due(&mut self, now: Instant) -> bool {
        let gap_over = self
            .asked
            .is_none_or(|t| now.saturating_duration_since(t) >= LOOK_GAP);
        if self.waiting && gap_over {
            self.asked = Some(now);
            self.waiting = false;
            return true;
        }
        false
    }

    /// How long to wait for the next change: until a waiting change is
    /// due, else [`RECV_TIMEOUT`].
    fn wait(&self, now: Instant) -> Duration {
        match (self.waiting, self.asked) {
            (true, Some(t)) => LOOK_GAP.saturating_sub(now.saturating_duration_since(t)),
            _ => RECV_TIMEOUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_change_is_asked_for_at_once_and_a_burst_once_per_gap() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut p = Pacer::default();
        assert_eq!(p.wait(t0), RECV_TIMEOUT, "nothing waits");
        assert!(p.heard(ms(0)), "a lone change: at once");
        // A flap: changes every 5 ms are not asked for within the gap...
        for n in (5..100).step_by(5) {
            assert!(!p.heard(ms(n)), "asked again {n} ms after the last look");
        }
        assert_eq!(p.wait(ms(95)), Duration::from_millis(5));
        assert!(!p.due(ms(99)));
        // ...but the last of them is, once the gap is over, heard or not.
        assert!(p.due(ms(100)));
        assert!(!p.due(ms(300)), "nothing new: nothing to ask");
        assert_eq!(p.wait(ms(300)), RECV_TIMEOUT);
        assert!(p.heard(ms(400)), "the next lone change: at once");
    }
}
