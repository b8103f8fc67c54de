//! Receiving on a netlink socket only what the kernel sent.
//!
//! A process with `CAP_NET_ADMIN` over the network namespace may send a
//! datagram to another netlink socket's port id (the port ids are listed
//! in `/proc/net/netlink`; the kernel refuses an unprivileged user's
//! unicast): another container's root sharing the host's namespace, a
//! tool mis-addressing its request. A socket that listens to the kernel
//! (process events, link changes) would otherwise believe such a message:
//! an `exec` the kernel never told, a link change that never was. The
//! kernel's messages come from port 0; anything else is dropped here, and
//! said to the caller.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// What one receive gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// `n` bytes the kernel sent (its port 0), at the start of the buffer.
    Kernel(usize),
    /// A datagram another process sent, from its `port`: dropped.
    Forged { port: u32 },
}

/// Why a netlink socket could not be opened and joined to its group.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `socket(2)` failed.
    #[error("cannot open the netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// `bind(2)` to the multicast group failed.
    #[error("cannot join the netlink group: {0}")]
    Bind(#[source] io::Error),
}

/// A netlink socket of `kind` (`SOCK_RAW`, `SOCK_DGRAM`) and `protocol`
/// (`NETLINK_ROUTE`, `NETLINK_CONNECTOR`), close-on-exec, bound to the
/// multicast `groups` (a bit mask), with a port id the kernel picks.
///
/// # Errors
/// [`OpenError`]: which of the two calls failed, with the OS error.
pub fn open_group(
    kind: libc::c_int,
    protocol: libc::c_int,
    groups: u32,
) -> Result<OwnedFd, OpenError> {
    // SAFETY: socket(2) with plain integer arguments; the fd it returns
    // is owned below.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, kind | libc::SOCK_CLOEXEC, protocol) };
    if raw < 0 {
        return Err(OpenError::Socket(io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a new fd nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: a zeroed sockaddr_nl is valid; fields set after.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = groups;
    // SAFETY: `addr` is a sockaddr_nl of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(OpenError::Bind(io::Error::last_os_error()));
    }
    Ok(fd)
}

/// One `recvfrom(2)` on the netlink socket `fd` into `buf`.
///
/// # Errors
/// The receive's own error (a timeout is `WouldBlock`; `ENOBUFS` says the
/// kernel dropped messages).
pub fn recv_from_kernel(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: a zeroed sockaddr_nl is valid; the kernel fills it.
    let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    let mut from_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: `buf` is a live buffer of the length passed; `from` is a
    // sockaddr_nl of the length passed in `from_len`.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            (&mut from as *mut libc::sockaddr_nl).cast(),
            &mut from_len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if from.nl_pid != 0 {
        return Ok(Received::Forged { port: from.nl_pid });
    }
    Ok(Received::Kernel(n as usize))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    /// An unbound netlink socket of `protocol` (the kernel gives it a port
    /// at its first send).
    pub(crate) fn socket(protocol: libc::c_int) -> OwnedFd {
        // SAFETY: socket(2) with constant arguments; the fd is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        assert!(raw >= 0, "{}", io::Error::last_os_error());
        // SAFETY: `raw` is a new fd nothing else owns.
        unsafe { OwnedFd::from_raw_fd(raw) }
    }

    /// The port id the kernel gave `fd`.
    pub(crate) fn port(fd: &OwnedFd) -> u32 {
        // SAFETY: a zeroed sockaddr_nl is valid; the kernel fills it.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `addr` is a sockaddr_nl of the length passed.
        let rc = unsafe {
            libc::getsockname(
                fd.as_raw_fd(),
                (&mut addr as *mut libc::sockaddr_nl).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        addr.nl_pid
    }

    /// Send `msg` to netlink port `to_port` of `protocol` from another
    /// socket of this process (a process that is not the kernel), on a
    /// thread that first drops to user and group 65534 when `nobody` (the
    /// raw system calls change the calling thread's credentials only).
    /// The sender's port, or the send's error.
    pub(crate) fn send_from(
        protocol: libc::c_int,
        to_port: u32,
        msg: Vec<u8>,
        nobody: bool,
    ) -> io::Result<u32> {
        std::thread::spawn(move || {
            if nobody {
                // SAFETY: setresgid/setresuid on this thread only.
                let rc = unsafe {
                    libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534)
                        | libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534)
                };
                assert_eq!(rc, 0, "{}", io::Error::last_os_error());
            }
            let fd = socket(protocol);
            // SAFETY: a zeroed sockaddr_nl is valid; fields set after.
            let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            to.nl_pid = to_port;
            // SAFETY: `msg` is a live buffer of the length passed; `to`
            // a sockaddr_nl of the length passed.
            let sent = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    msg.as_ptr().cast(),
                    msg.len(),
                    0,
                    (&to as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if sent < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(port(&fd))
        })
        .join()
        .expect("the sending thread")
    }

    /// `RTM_GETLINK` for every link, as a dump request: the kernel answers
    /// from port 0.
    fn getlink_dump() -> Vec<u8> {
        const RTM_GETLINK: u16 = 18;
        let mut m = Vec::new();
        m.extend_from_slice(&32u32.to_ne_bytes());
        m.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&1u32.to_ne_bytes()); // seq
        m.extend_from_slice(&0u32.to_ne_bytes()); // pid
        m.extend_from_slice(&[0u8; 16]); // struct ifinfomsg, any family
        m
    }

    /// A link message another process sent is told apart from the
    /// kernel's answer that follows it. (Only a process with
    /// `CAP_NET_ADMIN` over the namespace may send one: the kernel refuses
    /// an unprivileged user's.)
    #[test]
    fn a_message_from_another_process_is_not_the_kernels() {
        skos_testsupport::require!(
            "root (CAP_NET_ADMIN: only a privileged process may write to another's netlink socket)",
            skos_testsupport::require::root()
        );
        let fd = socket(libc::NETLINK_ROUTE);
        // Its port: the first send binds it.
        let req = getlink_dump();
        // SAFETY: `req` is a live buffer of the length passed; to the
        // kernel (a zeroed address).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let send = |m: &[u8]| {
            // SAFETY: as above.
            let sent = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    m.as_ptr().cast(),
                    m.len(),
                    0,
                    (&kernel as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            assert_eq!(sent, m.len() as isize, "{}", io::Error::last_os_error());
        };
        send(&req);
        let mut buf = vec![0u8; 65536];
        // Drain the first answer so the forged message comes next.
        loop {
            let Received::Kernel(n) = recv_from_kernel(&fd, &mut buf).unwrap() else {
                panic!("only the kernel has sent so far");
            };
            if n >= 6 && u16::from_ne_bytes([buf[4], buf[5]]) == libc::NLMSG_DONE as u16 {
                break;
            }
        }
        // A forged RTM_NEWLINK (16), then the kernel's answer again.
        let mut forged = getlink_dump();
        forged[4..6].copy_from_slice(&16u16.to_ne_bytes());
        let refused = send_from(libc::NETLINK_ROUTE, port(&fd), forged.clone(), true);
        assert_eq!(
            refused.map_err(|e| e.raw_os_error()),
            Err(Some(libc::EPERM)),
            "an unprivileged user writes to another's socket"
        );
        let sender = send_from(libc::NETLINK_ROUTE, port(&fd), forged, false).unwrap();
        assert_ne!(sender, 0);
        send(&req);
        assert_eq!(
            recv_from_kernel(&fd, &mut buf).unwrap(),
            Received::Forged { port: sender }
        );
        assert!(matches!(
            recv_from_kernel(&fd, &mut buf).unwrap(),
            Received::Kernel(n) if n > 0
        ));
    }
}
