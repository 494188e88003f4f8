//! Backends as vm-memory guest memory (cargo feature `vm-memory`), for VMMs built on
//! rust-vmm.
//!
//! The region points at the backend's own mapping: no copy, no second mmap. Its bitmap
//! slot carries an [`InUse`] hold, so the backend counts as in use (deletion refused)
//! and its memory stays mapped for exactly as long as any region or clone of it exists.
//! memfd and file backends hand vm-memory their fd as the region's `FileOffset`, so a
//! vhost-user back end can map the same pages.

use vm_memory::bitmap::{Bitmap, WithBitmapSlice};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::backend::{Backend, InUse};

/// The bitmap type of hostmem's guest regions: no dirty tracking, it only holds the
/// backend's memory.
#[derive(Debug, Clone)]
pub struct Hold(pub(crate) InUse);

impl Hold {
    /// The hold on the backend this region refers to.
    pub fn in_use(&self) -> &InUse {
        &self.0
    }
}

impl WithBitmapSlice<'_> for Hold {
    type S = ();
}

impl Bitmap for Hold {
    fn mark_dirty(&self, _offset: usize, _len: usize) {}

    fn dirty_at(&self, _offset: usize) -> bool {
        false
    }

    fn slice_at(&self, _offset: usize) {}
}

/// A guest region backed by a hostmem backend.
pub type Region = GuestRegionMmap<Hold>;
/// Guest memory made of hostmem backends.
pub type Memory = GuestMemoryMmap<Hold>;

/// Why a backend could not become guest memory.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The backend refused (not allocated, ...).
    #[error("{0}")]
    Backend(#[from] crate::Error),
    /// vm-memory regions are always writable; read-only memory cannot be one.
    #[error("backend '{id}' is read-only, and vm-memory regions have no read-only mode")]
    ReadOnly {
        /// Object id.
        id: String,
    },
    /// The fd could not be duplicated for the region's FileOffset.
    #[error("cannot duplicate the fd of backend '{id}' for vm-memory: {err}")]
    DupFd {
        /// Object id.
        id: String,
        /// What dup said.
        err: std::io::Error,
    },
    /// vm-memory refused the mapping.
    #[error("vm-memory refused the mapping of backend '{id}': {err}")]
    Mmap {
        /// Object id.
        id: String,
        /// What vm-memory said.
        err: vm_memory::mmap::MmapRegionError,
    },
    /// The region would end beyond the guest address space.
    #[error("backend '{id}' at guest address {base:#x} overflows the guest address space")]
    Overflow {
        /// Object id.
        id: String,
        /// The guest address asked for.
        base: u64,
    },
    /// Regions overlap or are out of order.
    #[error("guest memory layout: {0}")]
    Layout(#[from] vm_memory::GuestRegionCollectionError),
}

impl Backend {
    /// This backend as a vm-memory region at `guest_base`.
    ///
    /// Refused for read-only memory: vm-memory regions have no read-only mode (its
    /// writes do not check the protection), so a region over it could fault.
    pub fn guest_region(&self, guest_base: GuestAddress) -> Result<Region, VmmError> {
        let hold = self.hold()?;
        if !hold.is_writable() {
            return Err(VmmError::ReadOnly {
                id: self.id().to_string(),
            });
        }
        let region = hold.0.clone();
        let file_offset = match region.fd_and_offset() {
            Some((fd, off)) => {
                let dup = fd.try_clone().map_err(|err| VmmError::DupFd {
                    id: self.id().to_string(),
                    err,
                })?;
                Some(FileOffset::new(std::fs::File::from(dup), off))
            }
            None => None,
        };
        let mmap = crate::sys::vmm::held_region(Hold(hold), file_offset).map_err(|err| {
            VmmError::Mmap {
                id: self.id().to_string(),
                err,
            }
        })?;
        GuestRegionMmap::new(mmap, guest_base).ok_or_else(|| VmmError::Overflow {
            id: self.id().to_string(),
            base: guest_base.0,
        })
    }
}

/// Guest memory from backends placed at guest addresses (regions must not overlap).
pub fn guest_memory(layout: &[(&Backend, GuestAddress)]) -> Result<Memory, VmmError> {
    let regions = layout
        .iter()
        .map(|(b, base)| b.guest_region(*base))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(GuestMemoryMmap::from_regions(regions)?)
}
