//! The memory of a live backend and the holds consumers take on it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::kind::{FdSize, Mapped};

/// The memory of a live backend. It stays mapped while any [`InUse`] handle or the
/// backend refers to it.
#[derive(Debug)]
pub(crate) struct Region {
    pub mapped: Mapped,
    pub page_size: u64,
    pub hugetlb: bool,
    /// Mapped MAP_SHARED: other mappings of the fd see the same bytes.
    pub shared: bool,
    /// Ranges of the memory that are guest regions now (`backend/claim.rs`).
    #[cfg_attr(not(feature = "vm-memory"), allow(dead_code))]
    pub claims: std::sync::Mutex<Vec<super::claim::Claimed>>,
    /// A first touch of any page cannot fail for want of backing (SIGBUS): the kind's
    /// answer (`KindOps::faults_are_backed`).
    #[cfg_attr(not(feature = "vm-memory"), allow(dead_code))]
    pub faults_backed: bool,
    /// The caller promised that the file will not shrink
    /// ([`FileSizePromise`](crate::FileSizePromise)).
    pub size_promised: AtomicBool,
    /// Every page of the mapping was faulted in by a preallocation that succeeded
    /// (what makes memory without a reservation safe to hand to vm-memory).
    pub populated: AtomicBool,
}

/// A consumer's hold on a backend's memory (a guest region, a VMM): while one exists
/// the backend refuses deletion, and the memory stays mapped even if the backend
/// object is dropped.
///
/// Copies in and out are volatile and checked: a write to read-only memory is an
/// error, and memory the kernel cannot fault in (no huge page left, a full file system)
/// is an error instead of SIGBUS. Clones may copy at the same time from several
/// threads, as a guest's vCPUs do: concurrent writes to the same bytes leave either
/// value, never undefined behaviour in this process. One thing no check can prevent:
/// another process truncating a shared file under the mapping between the check and the
/// copy.
#[derive(Debug, Clone)]
pub struct InUse(pub(crate) Arc<Region>);

impl InUse {
    /// Start address of the mapping in this process.
    pub fn host_addr(&self) -> usize {
        self.0.mapped.map.addr()
    }

    /// Length of the mapping in bytes (the size, rounded up to the page for ram).
    pub fn len(&self) -> usize {
        self.0.mapped.map.len()
    }

    /// Never true: a backend has at least one page.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Page size of the memory.
    pub fn page_size(&self) -> u64 {
        self.0.page_size
    }

    /// Whether the memory is mapped shared: other mappings of the fd see the same
    /// bytes (what a vhost-user back end needs).
    pub fn is_shared(&self) -> bool {
        self.0.shared
    }

    /// Whether the memory may be written.
    pub fn is_writable(&self) -> bool {
        self.0.mapped.map.is_writable()
    }

    /// The memfd or file behind the memory, for consumers that map it themselves
    /// (vhost-user back ends), with the offset of this memory in it.
    ///
    /// None for anonymous memory, and for a file that could be shrunk under the mapping:
    /// an unsealed memfd is first sealed against shrinking (F_SEAL_SHRINK; growing
    /// stays possible), while a shm object or a file is handed out only after
    /// [`Backend::trust_file_size`](crate::Backend::trust_file_size).
    pub fn fd(&self) -> Option<(BorrowedFd<'_>, u64)> {
        self.0.shrink_safe_fd().ok()
    }

    /// Copies bytes out of the memory at `offset`.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.mapped.map.read_at(offset, buf)
    }

    /// Copies bytes into the memory at `offset`; an error on read-only memory.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> std::io::Result<()> {
        self.0.mapped.map.write_at(offset, data)
    }

    /// Sets `len` bytes at `offset` to `byte`; an error on read-only memory.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> std::io::Result<()> {
        self.0.mapped.map.fill(offset, len, byte)
    }
}

/// Why [`Region::shrink_safe_fd`] gave no descriptor.
#[derive(Debug)]
pub(crate) enum NoSafeFd {
    /// Anonymous memory.
    None,
    /// A file that cannot be sealed, and no promise.
    CanShrink,
    /// Sealing the memfd failed.
    Seal(std::io::Error),
}

impl Region {
    pub(crate) fn fd_and_offset(&self) -> Option<(&OwnedFd, u64)> {
        self.mapped.fd.as_ref().map(|f| (f, self.mapped.fd_offset))
    }

    /// The descriptor and the memory's offset in it, where handing it out cannot let
    /// its holder shrink the file under the mapping: a sealed memfd, an unsealed one
    /// once sealed against shrinking here, a file the caller promised about.
    pub(crate) fn shrink_safe_fd(&self) -> Result<(BorrowedFd<'_>, u64), NoSafeFd> {
        let (fd, offset) = self.fd_and_offset().ok_or(NoSafeFd::None)?;
        match self.mapped.fd_size {
            FdSize::Fixed => {}
            FdSize::Sealable => {
                // Idempotent: a second call adds the seal that is already there.
                crate::sys::add_seals(fd, crate::sys::memfd::SEAL_SHRINK)
                    .map_err(NoSafeFd::Seal)?;
            }
            FdSize::Unsealable if self.size_promised.load(Ordering::Acquire) => {}
            FdSize::Unsealable => return Err(NoSafeFd::CanShrink),
        }
        Ok((fd.as_fd(), offset))
    }
}
