//! Making one region: the checks, the claim on the backend's range, the FileOffset.

use vm_memory::bitmap::{Bitmap, NewBitmap};
use vm_memory::{FileOffset, GuestAddress};

use super::{Region, VmmError};
use crate::backend::claim::Claim;
use crate::Backend;

impl Backend {
    /// `len` bytes of this backend from `offset`, as a guest region at `guest_base`,
    /// with a new dirty bitmap of type `B` (`()`: no tracking; vm-memory's
    /// `AtomicBitmap`: one bit per host base page).
    ///
    /// `offset` and `len` are whole pages of the backend (huge pages for hugetlb
    /// memory), `guest_base` whole base pages; the range lies inside the backend and
    /// is no other live region's. The whole backend is
    /// `(0, backend.mapped_len(), base)`.
    pub fn guest_region<B: NewBitmap>(
        &self,
        offset: u64,
        len: u64,
        guest_base: GuestAddress,
    ) -> Result<Region<B>, VmmError> {
        self.guest_region_with_bitmap(offset, len, guest_base, B::with_len(len as usize))
    }

    /// As [`Backend::guest_region`], with a bitmap the caller made (for
    /// `Option<AtomicBitmap>`, which has no default: `None` turns tracking off for
    /// this region). The bitmap covers the region: offset 0 is the region's start.
    pub fn guest_region_with_bitmap<B: Bitmap>(
        &self,
        offset: u64,
        len: u64,
        guest_base: GuestAddress,
        bitmap: B,
    ) -> Result<Region<B>, VmmError> {
        let id = || self.id().to_string();
        let hold = self.hold()?;
        if !hold.is_writable() {
            return Err(VmmError::ReadOnly { id: id() });
        }
        let page = hold.page_size();
        let base_page = crate::sys::page_size() as u64;
        for (what, value, page) in [
            ("region offset", offset, page),
            ("region length", len, page),
            ("guest address", guest_base.0, base_page),
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
        // The FileOffset only for memory another process sees the guest's writes in.
        let file_offset = match hold.0.fd_and_offset() {
            Some((fd, fd_offset)) if self.is_shareable() => {
                let dup = fd
                    .try_clone()
                    .map_err(|err| VmmError::DupFd { id: id(), err })?;
                Some(FileOffset::new(
                    std::fs::File::from(dup),
                    fd_offset + offset,
                ))
            }
            _ => None,
        };
        let size = hold.len() as u64;
        let claim = Claim::new(hold, offset, len, guest_base.0).map_err(|c| match c {
            None => VmmError::OutOfRange {
                id: id(),
                offset,
                len,
                size,
            },
            Some(c) => VmmError::Aliased {
                id: id(),
                offset,
                len,
                other_offset: c.offset,
                other_len: c.len,
                other_guest: c.guest,
            },
        })?;
        Region::new(claim, id(), guest_base, bitmap, file_offset)
            .map_err(|err| VmmError::Mmap { id: id(), err })?
            .ok_or_else(|| VmmError::Overflow {
                id: id(),
                base: guest_base.0,
                len,
            })
    }
}
