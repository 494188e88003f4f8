//! Making one region: every check on the caller's numbers first, then the claim on the
//! backend's range, then the dirty bitmap (sized from the checked length), then the
//! FileOffset.

use vm_memory::bitmap::{Bitmap, NewBitmap};
use vm_memory::{FileOffset, GuestAddress};

use super::{Region, VmmError};
use crate::backend::claim::{Claim, Refused, PROTECTED};
use crate::backend::InUse;
use crate::Backend;

impl Backend {
    /// `len` bytes of this backend from `offset`, as a guest region at `guest_base`,
    /// with a new dirty bitmap of type `B` (`()`: no tracking; vm-memory's
    /// `AtomicBitmap`: one bit per host base page) covering exactly the region.
    ///
    /// `offset` and `len` are whole pages of the backend (huge pages for hugetlb
    /// memory), `guest_base` whole pages too (base pages; huge pages for hugetlb memory,
    /// which KVM could otherwise map only with small pages); the range lies inside the
    /// backend and is no other live region's. Memory that a first touch could find
    /// without backing (huge pages with `reserve=off`) must be preallocated first.
    /// Every check is made before anything is allocated. The whole backend is
    /// `(0, backend.mapped_len(), base)`.
    pub fn guest_region<B: NewBitmap>(
        &self,
        offset: u64,
        len: u64,
        guest_base: GuestAddress,
    ) -> Result<Region<B>, VmmError> {
        self.region_with(offset, len, guest_base, B::with_len)
    }

    /// As [`Backend::guest_region`], with dirty tracking switched on or off for this
    /// region (Firecracker's `Option<AtomicBitmap>`: `None` when `tracked` is false).
    pub fn guest_region_tracked<B: NewBitmap>(
        &self,
        offset: u64,
        len: u64,
        guest_base: GuestAddress,
        tracked: bool,
    ) -> Result<Region<Option<B>>, VmmError> {
        self.region_with(offset, len, guest_base, |len| {
            tracked.then(|| B::with_len(len))
        })
    }

    /// Checks the range, claims it, and only then makes its bitmap with
    /// `bitmap(len)`: a length is allocated for only once it is known to be inside
    /// the backend.
    pub(crate) fn region_with<B: Bitmap>(
        &self,
        offset: u64,
        len: u64,
        guest_base: GuestAddress,
        bitmap: impl FnOnce(usize) -> B,
    ) -> Result<Region<B>, VmmError> {
        let id = || self.id().to_string();
        let hold = self.hold()?;
        check_usable(self, &hold)?;
        let page = hold.page_size();
        let base_page = crate::sys::page_size() as u64;
        // Huge pages reach the guest as huge mappings only where the guest address is
        // aligned like the host address.
        let guest_page = if hold.0.hugetlb { page } else { base_page };
        for (what, value, page) in [
            ("region offset", offset, page),
            ("region length", len, page),
            ("guest address", guest_base.0, guest_page),
        ] {
            if value % page != 0 {
                return Err(VmmError::NotAligned {
                    id: id(),
                    what,
                    value,
                    page,
                });
            }
        }
        if guest_base.0.checked_add(len).is_none() {
            return Err(VmmError::Overflow {
                id: id(),
                base: guest_base.0,
                len,
            });
        }
        let size = hold.len() as u64;
        let page_size = hold.page_size();
        let claim = Claim::new(hold, offset, len, guest_base.0).map_err(|c| match c {
            Refused::Unbacked => VmmError::Unbacked {
                id: id(),
                page: page_size,
            },
            Refused::OutOfRange => VmmError::OutOfRange {
                id: id(),
                offset,
                len,
                size,
            },
            Refused::Overlap(c) if c.guest == PROTECTED => VmmError::Unplugged {
                id: id(),
                offset,
                len,
                // The first protected byte inside the range asked for.
                block_offset: c.offset.max(offset),
            },
            Refused::Overlap(c) => VmmError::Aliased {
                id: id(),
                offset,
                len,
                other_offset: c.offset,
                other_len: c.len,
                other_guest: c.guest,
            },
        })?;
        let file_offset = self.file_offset(claim.hold(), offset)?;
        // The claim keeps `len` inside the mapping, which fits the address space.
        let bitmap = bitmap(claim.len());
        Region::new(claim, id(), guest_base, bitmap, file_offset)
            .map_err(|err| VmmError::Mmap { id: id(), err })?
            .ok_or_else(|| VmmError::Overflow {
                id: id(),
                base: guest_base.0,
                len,
            })
    }

    /// The FileOffset, only for memory another process sees the guest's writes in,
    /// and only where its holder cannot shrink the file (`Backend::dup_fd`): a shm
    /// object or file without the caller's promise gives a region without one.
    fn file_offset(&self, hold: &InUse, offset: u64) -> Result<Option<FileOffset>, VmmError> {
        if !self.is_shareable() {
            return Ok(None);
        }
        let (fd, fd_offset) = match hold.0.shrink_safe_fd() {
            Ok(fd) => fd,
            Err(crate::backend::NoSafeFd::CanShrink) => return Ok(None),
            Err(e) => return Err(VmmError::Backend(self.no_safe_fd(e))),
        };
        let dup = fd.try_clone_to_owned().map_err(|err| VmmError::DupFd {
            id: self.id().to_string(),
            err,
        })?;
        Ok(Some(FileOffset::new(
            std::fs::File::from(dup),
            fd_offset + offset,
        )))
    }
}

/// Memory vm-memory may write at all: writable. (Whether a first touch is backed is
/// the claim's to check, under the lock unplug takes: `backend/claim.rs`.)
fn check_usable(b: &Backend, hold: &InUse) -> Result<(), VmmError> {
    if !hold.is_writable() {
        return Err(VmmError::ReadOnly {
            id: b.id().to_string(),
        });
    }
    Ok(())
}
