//! [`Uffd`]: a userfaultfd (userfaultfd(2), `Documentation/admin-guide/mm/userfaultfd.rst`)
//! with its ioctls as safe methods, for the lazy restore (`snapshot::lazy`).
//!
//! Why our own and not the `userfaultfd` crate: it has no UFFDIO_POISON (Linux 6.6),
//! which is what lets a page that cannot be served raise SIGBUS in the toucher instead of
//! hanging it, and the ioctls are a handful of fixed-layout structs.
//!
//! Why the methods can be safe. Every ioctl that writes memory (COPY, ZEROPAGE,
//! CONTINUE, POISON) acts only on ranges registered with this userfaultfd, and only on
//! pages that are *missing* there (the kernel answers EEXIST for a present page, never
//! overwriting it). The ranges are registered either by another process that sent us
//! the fd (Firecracker: its own guest memory, in its own address space, which no Rust
//! object of ours lives in), or by [`Uffd::register`], which takes a [`RawMapping`]:
//! memory this process mapped for guests and never hands out Rust references into. So no
//! Rust object's bytes can change under it. Addresses are plain `u64`s of the uffd's
//! address space, which need not be ours.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::{check, last_err, RawMapping};

const UFFD_API: u64 = 0xAA;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (UFFD_API << 8) | nr
}

#[repr(C)]
#[derive(Default)]
struct ApiArg {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Range {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct RegisterArg {
    range: Range,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct CopyArg {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// ZEROPAGE, CONTINUE and POISON share this layout: a range, a mode, a result.
#[repr(C)]
#[derive(Default)]
struct RangeOpArg {
    range: Range,
    mode: u64,
    result: i64,
}

const IOC_API: u64 = ioc(IOC_READ | IOC_WRITE, 0x3F, std::mem::size_of::<ApiArg>());
const IOC_REGISTER: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0x00,
    std::mem::size_of::<RegisterArg>(),
);
const IOC_WAKE: u64 = ioc(IOC_READ, 0x02, std::mem::size_of::<Range>());
const IOC_COPY: u64 = ioc(IOC_READ | IOC_WRITE, 0x03, std::mem::size_of::<CopyArg>());
const IOC_ZEROPAGE: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0x04,
    std::mem::size_of::<RangeOpArg>(),
);
const IOC_CONTINUE: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0x07,
    std::mem::size_of::<RangeOpArg>(),
);
const IOC_POISON: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0x08,
    std::mem::size_of::<RangeOpArg>(),
);
/// `/dev/userfaultfd`'s one ioctl: a new userfaultfd (_IO(0xAA, 0)).
const IOC_NEW: u64 = UFFD_API << 8;

/// UFFDIO_API features hostmem may ask for.
pub(crate) mod feature {
    pub const EVENT_REMOVE: u64 = 1 << 3;
    pub const MISSING_HUGETLBFS: u64 = 1 << 4;
    pub const MISSING_SHMEM: u64 = 1 << 5;
    pub const MINOR_HUGETLBFS: u64 = 1 << 9;
    pub const MINOR_SHMEM: u64 = 1 << 10;
    pub const POISON: u64 = 1 << 14;
}

/// UFFDIO_REGISTER modes.
pub(crate) mod mode {
    pub const MISSING: u64 = 1;
    pub const MINOR: u64 = 1 << 2;
}

const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_REMOVE: u8 = 0x15;
const EVENT_UNMAP: u8 = 0x16;
const FLAG_WRITE: u64 = 1;
const FLAG_MINOR: u64 = 4;
/// struct uffd_msg: 32 bytes, an event byte then a 24-byte union at offset 8.
const MSG: usize = 32;

/// One message read from a userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// A thread touched a page registered here: missing (no page), or minor (the page
    /// cache has it, the page tables do not). `addr` is the faulting address (rounded
    /// down to the base page by the kernel).
    Fault { addr: u64, write: bool, minor: bool },
    /// `[start, end)` was discarded (MADV_DONTNEED/REMOVE): it reads as zeros now.
    Remove { start: u64, end: u64 },
    /// `[start, end)` was unmapped.
    Unmap { start: u64, end: u64 },
    /// An event hostmem did not ask for.
    Other(u8),
}

fn decode(m: &[u8]) -> Event {
    let u = |at: usize| u64::from_le_bytes(m[at..at + 8].try_into().unwrap_or_default());
    match m[0] {
        EVENT_PAGEFAULT => {
            let flags = u(8);
            Event::Fault {
                addr: u(16),
                write: flags & FLAG_WRITE != 0,
                minor: flags & FLAG_MINOR != 0,
            }
        }
        EVENT_REMOVE => Event::Remove {
            start: u(8),
            end: u(16),
        },
        EVENT_UNMAP => Event::Unmap {
            start: u(8),
            end: u(16),
        },
        e => Event::Other(e),
    }
}

/// What an ioctl that fills pages did.
#[derive(Debug)]
pub(crate) enum Fill {
    /// Every byte asked for.
    Done,
    /// `done` bytes filled, then a page that is already present (EEXIST) at
    /// `start + done`: nothing of it was changed.
    Exists { done: u64 },
    /// `done` bytes filled, then the error.
    Failed { done: u64, err: io::Error },
}

/// A userfaultfd: ours (created here, API done) or one received from another process
/// with its ranges registered there.
#[derive(Debug)]
pub(crate) struct Uffd {
    fd: OwnedFd,
}

/// The features this kernel's userfaultfd offers, asked once of a scratch userfaultfd.
pub(crate) fn supported_features() -> io::Result<u64> {
    static FEATURES: std::sync::OnceLock<Result<u64, i32>> = std::sync::OnceLock::new();
    let r = FEATURES.get_or_init(|| {
        let fd = new_fd().map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        let mut a = ApiArg {
            api: UFFD_API,
            ..ApiArg::default()
        };
        ioctl(fd.as_fd(), IOC_API, &mut a).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        Ok(a.features)
    });
    r.map_err(io::Error::from_raw_os_error)
}

fn ioctl<T>(fd: BorrowedFd<'_>, req: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: `req` is one of the UFFDIO requests above, each of which reads and writes
    // exactly the `#[repr(C)]` struct its number encodes, and `arg` is that struct, alive
    // and exclusively ours for the call. The memory the request may fill is only missing
    // pages of ranges registered with this fd (see the module comment).
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) })?;
    Ok(())
}

/// A new userfaultfd (close-on-exec, non-blocking, user and kernel faults): through
/// `/dev/userfaultfd` (which needs only its file mode, not vm.unprivileged_userfaultfd)
/// or else the syscall.
fn new_fd() -> io::Result<OwnedFd> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    if let Ok(dev) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")
    {
        // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value and returns a new fd.
        let fd = unsafe { libc::ioctl(dev.as_raw_fd(), IOC_NEW as _, flags) };
        if fd >= 0 {
            // SAFETY: the kernel just gave us this fd; nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    // SAFETY: userfaultfd(2) takes its flags by value and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 {
        return Err(last_err());
    }
    // SAFETY: as above, a new fd of ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl Uffd {
    /// A new userfaultfd with the `wanted` features this kernel has (UFFDIO_API); the
    /// features it got are returned with it.
    pub(crate) fn new(wanted: u64) -> io::Result<(Uffd, u64)> {
        let features = wanted & supported_features()?;
        let fd = new_fd()?;
        let mut a = ApiArg {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        ioctl(fd.as_fd(), IOC_API, &mut a)?;
        Ok((Uffd { fd }, features))
    }

    /// A userfaultfd another process made, its API done and its ranges registered
    /// there. Made non-blocking, so a read never hangs a serving thread.
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<Uffd> {
        // SAFETY: F_GETFL/F_SETFL on an fd we own change only its status flags.
        unsafe {
            let fl = check(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
            check(libc::fcntl(
                fd.as_raw_fd(),
                libc::F_SETFL,
                fl | libc::O_NONBLOCK,
            ))?;
        }
        Ok(Uffd { fd })
    }

    /// Registers `[off, off+len)` of our own mapping in `mode` (MISSING).
    /// Taking the [`RawMapping`] is what keeps registration away from memory Rust
    /// objects live in. Returns the ioctls the kernel allows on the range.
    pub(crate) fn register(
        &self,
        map: &RawMapping,
        off: usize,
        len: usize,
        mode: u64,
    ) -> io::Result<u64> {
        map.range_ok(off, len)?;
        let mut r = RegisterArg {
            range: Range {
                start: (map.addr() + off) as u64,
                len: len as u64,
            },
            mode,
            ioctls: 0,
        };
        ioctl(self.fd.as_fd(), IOC_REGISTER, &mut r)?;
        Ok(r.ioctls)
    }

    /// Waits up to `timeout_ms` for a message; false on timeout.
    pub(crate) fn poll(&self, timeout_ms: i32) -> io::Result<bool> {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, ours, for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        match n {
            n if n > 0 => Ok(true),
            0 => Ok(false),
            _ => {
                let e = last_err();
                if e.kind() == io::ErrorKind::Interrupted {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Reads the messages waiting (up to `max`); empty when there are none.
    pub(crate) fn read_events(&self, max: usize) -> io::Result<Vec<Event>> {
        let mut buf = vec![0u8; MSG * max.max(1)];
        // SAFETY: reads at most buf.len() bytes into our own buffer.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        };
        if n < 0 {
            let e = last_err();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(Vec::new()),
                _ => Err(e),
            };
        }
        Ok(buf[..n as usize].chunks_exact(MSG).map(decode).collect())
    }

    /// Copies `src` into the missing pages at `dst` (the uffd's address space, whole
    /// pages of the range's page size) and wakes the threads waiting on them. The
    /// pages are allocated there under that memory's policy.
    pub(crate) fn copy(&self, dst: u64, src: &[u8]) -> Fill {
        let mut a = CopyArg {
            dst,
            src: src.as_ptr() as u64,
            len: src.len() as u64,
            mode: 0,
            copy: 0,
        };
        let r = ioctl(self.fd.as_fd(), IOC_COPY, &mut a);
        filled(r, a.copy, src.len() as u64)
    }

    /// Maps the zero page at the missing pages `[start, start+len)` (not on hugetlb:
    /// there copy a huge page of zeros).
    pub(crate) fn zeropage(&self, start: u64, len: u64) -> Fill {
        self.range_op(IOC_ZEROPAGE, start, len)
    }

    /// Maps the page cache's pages at `[start, start+len)` after minor faults.
    pub(crate) fn continue_(&self, start: u64, len: u64) -> Fill {
        self.range_op(IOC_CONTINUE, start, len)
    }

    /// Marks the missing pages `[start, start+len)` poisoned: a touch raises SIGBUS
    /// (BUS_MCEERR_AR) instead of waiting or reading anything (Linux 6.6+).
    pub(crate) fn poison(&self, start: u64, len: u64) -> Fill {
        self.range_op(IOC_POISON, start, len)
    }

    fn range_op(&self, req: u64, start: u64, len: u64) -> Fill {
        let mut a = RangeOpArg {
            range: Range { start, len },
            mode: 0,
            result: 0,
        };
        let r = ioctl(self.fd.as_fd(), req, &mut a);
        filled(r, a.result, len)
    }

    /// Wakes the threads waiting on `[start, start+len)` (pages filled by someone else).
    pub(crate) fn wake(&self, start: u64, len: u64) -> io::Result<()> {
        let mut r = Range { start, len };
        ioctl(self.fd.as_fd(), IOC_WAKE, &mut r)
    }
}

/// An ioctl's answer as a [`Fill`]: the kernel puts the bytes done (or -errno) in the
/// struct's result field.
fn filled(r: io::Result<()>, result: i64, len: u64) -> Fill {
    match r {
        Ok(()) => Fill::Done,
        Err(err) => {
            let done = if result > 0 { result as u64 } else { 0 };
            if err.raw_os_error() == Some(libc::EEXIST) {
                Fill::Exists { done }
            } else if done >= len {
                Fill::Done
            } else {
                Fill::Failed { done, err }
            }
        }
    }
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::MapOptions;

    #[test]
    fn request_numbers_match_the_kernel_headers() {
        // From <linux/userfaultfd.h> on x86_64 and arm64.
        assert_eq!(IOC_API, 0xc018_aa3f);
        assert_eq!(IOC_REGISTER, 0xc020_aa00);
        assert_eq!(IOC_WAKE, 0x8010_aa02);
        assert_eq!(IOC_COPY, 0xc028_aa03);
        assert_eq!(IOC_ZEROPAGE, 0xc020_aa04);
        assert_eq!(IOC_CONTINUE, 0xc020_aa07);
        assert_eq!(IOC_POISON, 0xc020_aa08);
    }

    #[test]
    fn copy_fills_a_missing_page_and_refuses_a_present_one() {
        let page = crate::sys::page_size();
        let map = RawMapping::map(4 * page, None, 0, MapOptions::default()).unwrap();
        let (u, _) = Uffd::new(feature::POISON).unwrap();
        u.register(&map, 0, 4 * page, mode::MISSING).unwrap();
        let data = vec![0xabu8; page];
        let at = map.addr() as u64;
        assert!(matches!(u.copy(at, &data), Fill::Done));
        assert!(matches!(u.copy(at, &data), Fill::Exists { done: 0 }));
        assert!(matches!(
            u.zeropage(at + page as u64, page as u64),
            Fill::Done
        ));
        let mut back = vec![0u8; 2 * page];
        map.read_at(0, &mut back).unwrap();
        assert!(back[..page].iter().all(|&b| b == 0xab));
        assert!(back[page..].iter().all(|&b| b == 0));
        assert!(u.read_events(4).unwrap().is_empty());
    }
}
