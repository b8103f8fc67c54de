//! The kernel's process events (the proc connector), so a process group's
//! respawns are counted as they happen, not only as snapshots find them.
//!
//! A snapshot of `/proc` every monitor interval misses a process that
//! lives less than one interval: a crash loop whose process lives 0.3 s
//! is seen by some snapshots only, and its circuit opens late. The kernel
//! tells every `fork`, `exec` and `exit` to a netlink socket of protocol
//! `NETLINK_CONNECTOR` joined to the multicast group `CN_IDX_PROC`
//! (`linux/cn_proc.h`). Listening needs a process in the initial user and
//! pid namespaces (elsewhere the kernel ignores the request, and no answer
//! comes) and, before Linux 6.6, `CAP_NET_ADMIN`.
//!
//! [`parse`] is a pure parser over the bytes one receive gives (netlink
//! messages, each a connector message carrying one `struct proc_event`);
//! [`Listener`] is the thin I/O: the socket, the subscription (confirmed
//! by the kernel's acknowledgement, or refused with why), and receiving.
//! [`spawn`] runs a listener on a thread of its own that reads, for every
//! `exec`, the process and its parent from `/proc` at once (while the
//! process still lives) and hands them to the loop breaker
//! ([`Inbox`]), which decides membership and counts
//! ([`skos_core::chain::tree::GroupTracker::started`]).
//!
//! Only `exec` is read: a process that roots a group's tree got its
//! command line, executable and cgroup by an `exec` (a plain `fork` copies
//! its parent's, and so belongs where its parent does). A root that never
//! `exec`s is counted by the snapshots, as before.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use skos_core::chain::tree::ProcInfo;
use skos_core::timefmt::Timestamp;
use tokio::sync::Notify;

use super::procwatch::{Needs, ProcWatch};
use crate::netlink::{open_group, recv_from_kernel, OpenError, Received};

/// `NLMSG_DONE`: the type of every connector message.
const NLMSG_DONE: u16 = 3;
/// `NLMSG_ERROR`, `NLMSG_NOOP`, `NLMSG_OVERRUN`.
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_OVERRUN: u16 = 4;
/// `struct nlmsghdr`, bytes.
const NLMSG_HDR: usize = 16;
/// `struct cn_msg` (id.idx, id.val, seq, ack, len, flags), bytes.
const CN_MSG: usize = 20;
/// `CN_IDX_PROC` / `CN_VAL_PROC`.
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
/// `PROC_CN_MCAST_LISTEN`.
const MCAST_LISTEN: u32 = 1;
/// `struct proc_event` up to its union: what, cpu, timestamp_ns.
const EVENT_HDR: usize = 16;

const PROC_EVENT_NONE: u32 = 0;
const PROC_EVENT_FORK: u32 = 1;
const PROC_EVENT_EXEC: u32 = 2;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

/// How long the kernel's acknowledgement of the subscription is waited for.
const ACK_WAIT: Duration = Duration::from_secs(1);
/// A receive wakes at least this often, so a listener whose loop breaker
/// is gone ends.
const RECV_TIMEOUT: Duration = Duration::from_secs(1);
/// Receive buffer asked for, bytes: an `exec` storm between two reads of
/// the thread is kept, not dropped.
const RCVBUF: libc::c_int = 4 << 20;
/// Starts waiting for the loop breaker, at most; beyond, they are lost
/// (and counted), and the snapshots still count what they see.
const INBOX: usize = 4096;
/// Stack of the listener's thread, bytes.
const STACK: usize = 256 * 1024;

/// One process event, as the kernel tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcEvent {
    /// The answer to a subscription: `err` 0 when it was taken, else an
    /// errno (`EPERM`). `ack` is one more than the subscription message's
    /// `ack` field (the kernel numbers its messages' `seq` itself).
    Ack { ack: u32, err: u32 },
    /// `parent` (tgid) forked `child` (a thread when its pid differs from
    /// its tgid).
    Fork {
        parent: u32,
        child_pid: u32,
        child_tgid: u32,
    },
    /// Process `tgid` (thread `pid`) ran `execve`.
    Exec { pid: u32, tgid: u32 },
    /// Thread `pid` of process `tgid` ended with `code` (as `wait` gives it).
    Exit { pid: u32, tgid: u32, code: u32 },
    /// Another kind (uid, gid, sid, ptrace, comm, coredump changes), by
    /// its `what` value.
    Other(u32),
}

/// What a receive held that is not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("netlink message of {len} bytes at offset {at} runs past the {total} received")]
    Truncated { at: usize, len: usize, total: usize },
    #[error("netlink error {errno} at offset {at}")]
    Netlink { at: usize, errno: i32 },
    #[error("the kernel dropped messages (overrun)")]
    Overrun,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The events in what one receive gave: netlink messages (4-byte
/// aligned), each a connector message; messages for another connector
/// (not `CN_IDX_PROC`/`CN_VAL_PROC`) and `NLMSG_NOOP` are skipped, a
/// connector message too short for its event is skipped. Host byte order,
/// as the kernel writes them.
///
/// # Errors
/// A netlink message longer than the bytes received, a netlink error
/// message, or an overrun; the events before it are returned with it.
pub fn parse(buf: &[u8]) -> (Vec<ProcEvent>, Option<ParseError>) {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDR <= buf.len() {
        let (Some(len), Some(kind)) = (u32_at(buf, at), u16_at(buf, at + 4)) else {
            break;
        };
        let len = len as usize;
        if len < NLMSG_HDR || at + len > buf.len() {
            let e = ParseError::Truncated {
                at,
                len,
                total: buf.len(),
            };
            return (out, Some(e));
        }
        let body = &buf[at + NLMSG_HDR..at + len];
        match kind {
            NLMSG_DONE => out.extend(connector(body)),
            NLMSG_ERROR => {
                let errno = u32_at(body, 0).map_or(0, |e| e as i32);
                if errno != 0 {
                    return (out, Some(ParseError::Netlink { at, errno }));
                }
            }
            NLMSG_OVERRUN => return (out, Some(ParseError::Overrun)),
            NLMSG_NOOP => {}
            _ => {}
        }
        at += (len + 3) & !3;
    }
    (out, None)
}

/// One connector message (`struct cn_msg` and its data).
fn connector(body: &[u8]) -> Option<ProcEvent> {
    let (idx, val) = (u32_at(body, 0)?, u32_at(body, 4)?);
    if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC) {
        return None;
    }
    let ack = u32_at(body, 12)?;
    let data_len = usize::from(u16_at(body, 16)?);
    let ev = body.get(CN_MSG..CN_MSG + data_len)?;
    let what = u32_at(ev, 0)?;
    let d = |i: usize| u32_at(ev, EVENT_HDR + 4 * i);
    Some(match what {
        PROC_EVENT_NONE => ProcEvent::Ack { ack, err: d(0)? },
        PROC_EVENT_FORK => ProcEvent::Fork {
            parent: d(1)?,
            child_pid: d(2)?,
            child_tgid: d(3)?,
        },
        PROC_EVENT_EXEC => ProcEvent::Exec {
            pid: d(0)?,
            tgid: d(1)?,
        },
        PROC_EVENT_EXIT => ProcEvent::Exit {
            pid: d(0)?,
            tgid: d(1)?,
            code: d(2)?,
        },
        other => ProcEvent::Other(other),
    })
}

/// The subscription message: a netlink message carrying a connector
/// message whose data is `PROC_CN_MCAST_LISTEN`; `token` goes in its
/// `seq` and `ack` fields (the kernel answers with `ack` one more).
pub fn listen_message(token: u32) -> Vec<u8> {
    let total = NLMSG_HDR + CN_MSG + 4;
    let mut m = Vec::with_capacity(total);
    m.extend_from_slice(&(total as u32).to_ne_bytes());
    m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    m.extend_from_slice(&token.to_ne_bytes());
    m.extend_from_slice(&std::process::id().to_ne_bytes());
    m.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    m.extend_from_slice(&token.to_ne_bytes());
    m.extend_from_slice(&token.to_ne_bytes()); // ack
    m.extend_from_slice(&4u16.to_ne_bytes()); // len
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    m.extend_from_slice(&MCAST_LISTEN.to_ne_bytes());
    m
}

/// Why process events cannot be heard; the snapshots count alone.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("cannot open a NETLINK_CONNECTOR socket: {0}")]
    Socket(#[source] io::Error),
    #[error(
        "cannot join the process events group (before Linux 6.6 this needs CAP_NET_ADMIN): {0}"
    )]
    Bind(#[source] io::Error),
    #[error("cannot ask for process events: {0}")]
    Send(#[source] io::Error),
    #[error("the kernel refused process events: {0}")]
    Refused(#[source] io::Error),
    #[error("no answer to the request for process events within {0:?} (not in the initial pid and user namespace, or no CONFIG_PROC_EVENTS)")]
    NoAnswer(Duration),
    #[error("{0} is not this machine's procfs: its processes are not the kernel's events")]
    NotLive(String),
    #[error("cannot start the process events thread: {0}")]
    Thread(#[source] io::Error),
}

/// A subscribed proc connector socket.
pub struct Listener {
    fd: OwnedFd,
    /// Events received while waiting for the acknowledgement.
    early: Vec<ProcEvent>,
    /// Datagrams another process sent to this socket (not the kernel's:
    /// any local user may unicast to it), dropped unread, since opened.
    pub forged: u64,
    /// The port the last of them came from (`/proc/net/netlink` names its
    /// owner).
    pub forged_from: Option<u32>,
}

fn setsockopt(fd: &OwnedFd, opt: libc::c_int, value: &[u8]) -> io::Result<()> {
    // SAFETY: `fd` is an open socket; `value` is a live buffer of the
    // length passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_timeout(fd: &OwnedFd, d: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(d.subsec_micros() as i32),
    };
    // SAFETY: a timeval is plain data; viewed as its bytes for the call.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&tv as *const libc::timeval).cast::<u8>(),
            std::mem::size_of::<libc::timeval>(),
        )
    };
    setsockopt(fd, libc::SO_RCVTIMEO, bytes)
}

impl Listener {
    /// Open the socket, join `CN_IDX_PROC`, ask for events and wait (at
    /// most [`ACK_WAIT`]) for the kernel's acknowledgement.
    ///
    /// # Errors
    /// [`EventsError`]: which step failed and why.
    pub fn open() -> Result<Self, EventsError> {
        let fd = open_group(libc::SOCK_DGRAM, libc::NETLINK_CONNECTOR, CN_IDX_PROC).map_err(
            |e| match e {
                OpenError::Socket(e) => EventsError::Socket(e),
                OpenError::Bind(e) => EventsError::Bind(e),
            },
        )?;
        // A larger buffer is best effort: the default still works.
        let _ = setsockopt(&fd, libc::SO_RCVBUF, &RCVBUF.to_ne_bytes());
        // Another listener's subscription is answered to every listener
        // too: ours is told by its token.
        let token = std::process::id().wrapping_mul(2_654_435_761) & 0x7fff_ffff;
        let msg = listen_message(token);
        // SAFETY: `msg` is a live buffer of the length passed.
        let sent = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(EventsError::Send(io::Error::last_os_error()));
        }
        let mut l = Listener {
            fd,
            early: Vec::new(),
            forged: 0,
            forged_from: None,
        };
        let until = Instant::now() + ACK_WAIT;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(EventsError::NoAnswer(ACK_WAIT));
            }
            set_timeout(&l.fd, left).map_err(EventsError::Socket)?;
            let (events, _) = match l.recv() {
                Ok(r) => r,
                Err(e) if is_timeout(&e) => continue,
                Err(e) => return Err(EventsError::Socket(e)),
            };
            let mut acked = None;
            for ev in events {
                match ev {
                    ProcEvent::Ack { ack, err } if ack == token.wrapping_add(1) => {
                        acked = Some(err)
                    }
                    ProcEvent::Ack { .. } => {}
                    other => l.early.push(other),
                }
            }
            match acked {
                Some(0) => break,
                Some(err) => {
                    return Err(EventsError::Refused(io::Error::from_raw_os_error(
                        err as i32,
                    )))
                }
                None => {}
            }
        }
        set_timeout(&l.fd, RECV_TIMEOUT).map_err(EventsError::Socket)?;
        Ok(l)
    }

    /// One receive: the events it held and what else it held
    /// ([`parse`]). A timeout is an error of kind `WouldBlock` or
    /// `TimedOut`; `ENOBUFS` says events were dropped. A datagram another
    /// process sent is dropped unread and counted ([`Listener::forged`]):
    /// only the kernel tells process events.
    pub fn recv(&mut self) -> io::Result<(Vec<ProcEvent>, Option<ParseError>)> {
        let mut buf = [0u8; 8192];
        let n = match recv_from_kernel(&self.fd, &mut buf)? {
            Received::Kernel(n) => n,
            Received::Forged { port } => {
                self.forged += 1;
                self.forged_from = Some(port);
                0
            }
        };
        let mut out = std::mem::take(&mut self.early);
        let (events, trouble) = parse(&buf[..n]);
        out.extend(events);
        Ok((out, trouble))
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) || e.raw_os_error() == Some(libc::EINTR)
}

/// A process that `exec`ed, read from `/proc` when the event came.
#[derive(Debug, Clone)]
pub struct Started {
    pub proc: ProcInfo,
    /// Its parent as read just after (`None` when already gone).
    pub parent: Option<ProcInfo>,
    /// When the event was received.
    pub at: Timestamp,
}

/// What the listener's thread hands the loop breaker.
#[derive(Debug, Default)]
pub struct Inbox {
    pub started: VecDeque<Started>,
    /// Events the kernel or the inbox dropped (a storm faster than they
    /// were read), since the listener started.
    pub lost: u64,
    /// Processes that ended before they could be read.
    pub unread: u64,
    /// Messages another process sent to the listener's socket, dropped
    /// ([`Listener::forged`]).
    pub forged: u64,
}

/// Start listening on a thread of its own: each `exec` is read from
/// `procs` (the fields `needs` names) with its parent, queued in the
/// returned inbox, and `arrivals` is signalled. The thread ends once the
/// inbox is dropped.
///
/// # Errors
/// Why events cannot be heard ([`EventsError`]).
pub fn spawn(
    procs: ProcWatch,
    needs: Needs,
    arrivals: Arc<Notify>,
) -> Result<Arc<Mutex<Inbox>>, EventsError> {
    if !procs.is_live() {
        return Err(EventsError::NotLive(procs.root().display().to_string()));
    }
    let mut listener = Listener::open()?;
    let inbox = Arc::new(Mutex::new(Inbox::default()));
    let weak = Arc::downgrade(&inbox);
    std::thread::Builder::new()
        .name("skos-procevents".into())
        .stack_size(STACK)
        .spawn(move || listen(&mut listener, &procs, needs, &weak, &arrivals))
        .map_err(EventsError::Thread)?;
    Ok(inbox)
}

fn lock(inbox: &Mutex<Inbox>) -> std::sync::MutexGuard<'_, Inbox> {
    inbox.lock().unwrap_or_else(|e| e.into_inner())
}

fn listen(
    listener: &mut Listener,
    procs: &ProcWatch,
    needs: Needs,
    inbox: &Weak<Mutex<Inbox>>,
    arrivals: &Notify,
) {
    let mut said_lost = false;
    let mut said_forged = 0;
    loop {
        let received = listener.recv();
        let Some(inbox) = inbox.upgrade() else {
            return;
        };
        if listener.forged != said_forged {
            if said_forged == 0 {
                tracing::warn!(port = ?listener.forged_from, "process events: a message not from the kernel dropped (another local process wrote to the socket; /proc/net/netlink names the port's owner)");
            }
            said_forged = listener.forged;
            lock(&inbox).forged = said_forged;
        }
        let events = match received {
            Ok((events, trouble)) => {
                if let Some(t) = trouble {
                    tracing::debug!(error = %t, "process events: part of a message skipped");
                }
                events
            }
            Err(e) if is_timeout(&e) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                lock(&inbox).lost += 1;
                if !said_lost {
                    tracing::warn!(error = %e, "process events dropped by the kernel (a storm); the snapshots still count what they see");
                    said_lost = true;
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "process events: receive failed; respawns are counted from snapshots only from now on");
                return;
            }
        };
        let mut queued = false;
        for ev in events {
            let ProcEvent::Exec { tgid, .. } = ev else {
                continue;
            };
            let at = chrono::Utc::now();
            let Some(proc) = procs.read_one(tgid, needs) else {
                lock(&inbox).unread += 1;
                continue;
            };
            let parent = procs.read_one(proc.ppid, needs);
            let mut ib = lock(&inbox);
            if ib.started.len() >= INBOX {
                ib.lost += 1;
                continue;
            }
            ib.started.push_back(Started { proc, parent, at });
            queued = true;
        }
        if queued {
            arrivals.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink message carrying one connector message with `event`.
    fn message(idx: u32, what: u32, data: &[u32]) -> Vec<u8> {
        let mut ev = Vec::new();
        ev.extend_from_slice(&what.to_ne_bytes());
        ev.extend_from_slice(&3u32.to_ne_bytes()); // cpu
        ev.extend_from_slice(&123_456_789u64.to_ne_bytes());
        for d in data {
            ev.extend_from_slice(&d.to_ne_bytes());
        }
        let total = NLMSG_HDR + CN_MSG + ev.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(total as u32).to_ne_bytes());
        m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        m.extend_from_slice(&[0; 2 + 4 + 4]);
        m.extend_from_slice(&idx.to_ne_bytes());
        m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        m.extend_from_slice(&77u32.to_ne_bytes()); // seq
        m.extend_from_slice(&78u32.to_ne_bytes()); // ack
        m.extend_from_slice(&(ev.len() as u16).to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&ev);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    #[test]
    fn fork_exec_exit_and_ack_are_read() {
        let mut buf = message(CN_IDX_PROC, PROC_EVENT_FORK, &[10, 10, 20, 20]);
        buf.extend(message(CN_IDX_PROC, PROC_EVENT_EXEC, &[20, 20]));
        buf.extend(message(
            CN_IDX_PROC,
            PROC_EVENT_EXIT,
            &[20, 20, 256, 17, 10, 10],
        ));
        buf.extend(message(CN_IDX_PROC, PROC_EVENT_NONE, &[0]));
        buf.extend(message(CN_IDX_PROC, 0x200, &[20, 20, 0, 0, 0, 0, 0, 0]));
        let (events, trouble) = parse(&buf);
        assert_eq!(trouble, None);
        assert_eq!(
            events,
            vec![
                ProcEvent::Fork {
                    parent: 10,
                    child_pid: 20,
                    child_tgid: 20
                },
                ProcEvent::Exec { pid: 20, tgid: 20 },
                ProcEvent::Exit {
                    pid: 20,
                    tgid: 20,
                    code: 256
                },
                ProcEvent::Ack { ack: 78, err: 0 },
                ProcEvent::Other(0x200),
            ]
        );
    }

    #[test]
    fn other_connectors_short_events_and_noops_are_skipped() {
        let mut buf = message(7, PROC_EVENT_EXEC, &[20, 20]);
        // An exec without its tgid.
        buf.extend(message(CN_IDX_PROC, PROC_EVENT_EXEC, &[20]));
        let mut noop = vec![0u8; NLMSG_HDR];
        noop[..4].copy_from_slice(&(NLMSG_HDR as u32).to_ne_bytes());
        noop[4..6].copy_from_slice(&NLMSG_NOOP.to_ne_bytes());
        buf.extend(noop);
        buf.extend(message(CN_IDX_PROC, PROC_EVENT_EXEC, &[30, 30]));
        assert_eq!(
            parse(&buf),
            (vec![ProcEvent::Exec { pid: 30, tgid: 30 }], None)
        );
        assert_eq!(parse(&[]), (vec![], None));
        assert_eq!(parse(&[1, 2, 3]), (vec![], None));
    }

    #[test]
    fn a_truncated_message_an_error_and_an_overrun_are_said() {
        let good = message(CN_IDX_PROC, PROC_EVENT_EXEC, &[20, 20]);
        let mut buf = good.clone();
        buf.extend_from_slice(&good[..good.len() - 4]);
        let (events, trouble) = parse(&buf);
        assert_eq!(events, vec![ProcEvent::Exec { pid: 20, tgid: 20 }]);
        assert!(matches!(trouble, Some(ParseError::Truncated { at, .. }) if at == good.len()));
        // A length below the header's own is never looped on.
        let mut zero = vec![0u8; NLMSG_HDR];
        zero[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        assert!(matches!(
            parse(&zero).1,
            Some(ParseError::Truncated { len: 0, .. })
        ));
        let mut err = vec![0u8; NLMSG_HDR + 4];
        err[..4].copy_from_slice(&((NLMSG_HDR + 4) as u32).to_ne_bytes());
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[NLMSG_HDR..].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(
            parse(&err).1,
            Some(ParseError::Netlink {
                at: 0,
                errno: -libc::EPERM
            })
        );
        let mut over = vec![0u8; NLMSG_HDR];
        over[..4].copy_from_slice(&(NLMSG_HDR as u32).to_ne_bytes());
        over[4..6].copy_from_slice(&NLMSG_OVERRUN.to_ne_bytes());
        assert_eq!(parse(&over).1, Some(ParseError::Overrun));
    }

    #[test]
    fn the_subscription_is_a_listen_request_to_the_proc_connector() {
        let m = listen_message(9);
        assert_eq!(m.len(), NLMSG_HDR + CN_MSG + 4);
        assert_eq!(u32_at(&m, 0), Some(m.len() as u32));
        assert_eq!(u16_at(&m, 4), Some(NLMSG_DONE));
        assert_eq!(u32_at(&m, NLMSG_HDR), Some(CN_IDX_PROC));
        assert_eq!(u32_at(&m, NLMSG_HDR + 4), Some(CN_VAL_PROC));
        assert_eq!(
            u32_at(&m, NLMSG_HDR + 12),
            Some(9),
            "the token, answered + 1"
        );
        assert_eq!(u16_at(&m, NLMSG_HDR + 16), Some(4));
        assert_eq!(u32_at(&m, NLMSG_HDR + CN_MSG), Some(MCAST_LISTEN));
    }

    #[test]
    fn the_kernel_tells_an_exec_as_it_happens() {
        skos_testsupport::require!(
            "root in the initial namespaces (the proc connector)",
            skos_testsupport::require::root()
        );
        let mut l = Listener::open().expect("subscribe to process events as root");
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let mut child = child;
        child.wait().unwrap();
        let mut seen = (false, false);
        for _ in 0..100 {
            let Ok((events, _)) = l.recv() else { continue };
            for ev in events {
                match ev {
                    ProcEvent::Exec { tgid, .. } if tgid == pid => seen.0 = true,
                    ProcEvent::Exit { tgid, .. } if tgid == pid => seen.1 = true,
                    _ => {}
                }
            }
            if seen == (true, true) {
                return;
            }
        }
        panic!("exec and exit of pid {pid} not heard: {seen:?}");
    }

    /// Another process may write to the listener's socket (one with
    /// `CAP_NET_ADMIN` over the network namespace: another container's
    /// root sharing the host's, a tool mis-addressing its request; the
    /// kernel refuses an unprivileged user's): an `exec` it forged, for a
    /// process that never ran one, is dropped and counted; the kernel's
    /// own events, after it, are still heard.
    #[test]
    fn an_exec_forged_by_another_process_is_not_heard() {
        skos_testsupport::require!(
            "root in the initial namespaces (the proc connector)",
            skos_testsupport::require::root()
        );
        let mut l = Listener::open().expect("subscribe to process events as root");
        let me = std::process::id();
        let forged = message(CN_IDX_PROC, PROC_EVENT_EXEC, &[me, me]);
        let port = crate::netlink::tests::port(&l.fd);
        let refused =
            crate::netlink::tests::send_from(libc::NETLINK_CONNECTOR, port, forged.clone(), true);
        assert_eq!(
            refused.map_err(|e| e.raw_os_error()),
            Err(Some(libc::EPERM))
        );
        let sender = crate::netlink::tests::send_from(libc::NETLINK_CONNECTOR, port, forged, false)
            .expect("a privileged process writes to the listener");
        // Queued after the forged message: its exec ends the reading.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let mut heard = Vec::new();
        for _ in 0..100 {
            let Ok((events, _)) = l.recv() else { continue };
            heard.extend(events.iter().filter_map(|ev| match ev {
                ProcEvent::Exec { tgid, .. } if *tgid == me || *tgid == pid => Some(*tgid),
                _ => None,
            }));
            if heard.contains(&pid) {
                break;
            }
        }
        assert_eq!(heard, vec![pid], "the forged exec of {me} believed");
        assert_eq!((l.forged, l.forged_from), (1, Some(sender)));
    }
}
