//! Messages on a Unix socket that carry file descriptors (SCM_RIGHTS), and the peer's
//! credentials: how Firecracker hands its userfaultfd to a page-fault handler.
//!
//! Why rustix and not libc here: `recvmsg` with ancillary data is the one place where
//! hand-written code gets the `cmsghdr` alignment, the truncation flag and the
//! ownership of received descriptors subtly wrong (a descriptor received but not
//! wrapped leaks; one wrapped twice is closed twice). rustix's `RecvAncillaryBuffer`
//! does all three and hands out `OwnedFd`s, safely; it is already in hostmem's
//! dependency graph (the CLI and the tests use it), so no new crate comes in.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    recvmsg, sendmsg, sockopt, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

/// Descriptors one message may bring: room for more than a sender we understand sends
/// (Firecracker's mainline sends 1, its secret-hiding branch 3), so that a message
/// with extra descriptors is seen (and refused by the caller) rather than cut short.
pub(crate) const MAX_FDS: usize = 8;

/// One message received: its length in the caller's buffer and its descriptors.
#[derive(Debug)]
pub(crate) struct Received {
    /// Bytes written to the buffer; 0 when the peer closed the connection.
    pub len: usize,
    /// Descriptors that came with the message, close-on-exec, owned by the caller.
    pub fds: Vec<OwnedFd>,
    /// The kernel dropped descriptors that did not fit (MSG_CTRUNC): more than
    /// [`MAX_FDS`] were sent.
    pub truncated: bool,
}

/// `recvmsg(2)` into `buf`, taking any SCM_RIGHTS descriptors (with MSG_CMSG_CLOEXEC, so
/// none leaks into a child). Retries on EINTR; a read timeout set on the socket
/// (`SO_RCVTIMEO`) ends it with `WouldBlock`.
pub(crate) fn recv_with_fds(sock: impl AsFd, buf: &mut [u8]) -> io::Result<Received> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match recvmsg(
            sock.as_fd(),
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            r => break r?,
        }
    };
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            fds.extend(it);
        }
    }
    Ok(Received {
        len: msg.bytes,
        fds,
        truncated: msg.flags.contains(ReturnFlags::CTRUNC),
    })
}

/// `sendmsg(2)` of `bytes` with `fds` as SCM_RIGHTS, in one message (what Firecracker's
/// `send_with_fd` does). Returns the bytes sent.
pub(crate) fn send_with_fds(
    sock: impl AsFd,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if fds.len() > MAX_FDS || !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    loop {
        match sendmsg(
            sock.as_fd(),
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            r => return Ok(r?),
        }
    }
}

/// The process at the other end of a connected Unix socket, as it was when it
/// connected (`SO_PEERCRED`): pid, uid, gid.
pub(crate) fn peer_credentials(sock: impl AsFd) -> io::Result<(i32, u32, u32)> {
    let c = sockopt::socket_peercred(sock)?;
    Ok((c.pid.as_raw_nonzero().get(), c.uid.as_raw(), c.gid.as_raw()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn descriptors_cross_a_socket_pair_and_extra_ones_are_counted() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        send_with_fds(&a, b"hello", &[f.as_fd(), f.as_fd()]).unwrap();
        let mut buf = [0u8; 16];
        let r = recv_with_fds(&b, &mut buf).unwrap();
        assert_eq!(&buf[..r.len], b"hello");
        assert_eq!(r.fds.len(), 2);
        assert!(!r.truncated);
        let link = std::fs::read_link(format!("/proc/self/fd/{}", r.fds[0].as_raw_fd()));
        assert_eq!(link.unwrap(), std::path::Path::new("/dev/null"));
        let (pid, _, _) = peer_credentials(&b).unwrap();
        assert_eq!(pid as u32, std::process::id());
        drop(a);
        let r = recv_with_fds(&b, &mut buf).unwrap();
        assert_eq!((r.len, r.fds.len()), (0, 0));
    }
}
